/* pipeline/: mosaic build and resolve as lists of named steps, each done by its module and
 * written in a file of its own (resolve.c, download.c, fragments.c, databases.c, configure.c,
 * lock.c, generation.c, export.c). This file only says in which order, and holds the state they
 * share. */
#include "pipeline/internal.h"

#include <string.h>

struct step {
	const char *name;
	int (*run)(struct build *b, struct mosaic_error *err);
};

/* mkosi's build_image(), for a manifest: one line per step. */
static const struct step build_steps[] = {
    {"resolve", step_resolve},
    {"download", step_download},
    {"fragments", step_package_fragments},
    {"extra fragments", step_extra_fragments},
    {"merged-usr", step_merged_usr},
    {"dpkg database", step_dpkg_database},
    {"rpm database", step_rpm_database},
    {"configure", step_configure},
    {"lock", step_write_lock},
    {"generation", step_generation},
    {"gc root", step_record_root},
    {"export", step_export},
};

static const struct step resolve_steps[] = {
    {"resolve", step_resolve},
    {"lock", step_write_lock},
};

void pipeline_build_result_clear(struct pipeline_build_result *res)
{
	free(res->lock_path);
	free(res->store);
	free(res->history);
	*res = (struct pipeline_build_result){0};
}

static void build_clear(struct build *b)
{
	store_free(b->store);
	strv_freev(b->package_files);
	lock_clear(&b->lock);
	repos_clear(&b->rs);
	provider_pool_free(&b->ctx);
	json_object_put(b->model);
	free(b->history);
	free(b->lock_path);
	free(b->sign_key);
	free(b->cache);
}

/* What every run needs before its first step: the manifest, the lock's place, the date. */
static int build_open(struct build *b, struct mosaic_error *err)
{
	int r = mosaic_source_date_epoch(&b->epoch, err);
	if (r < 0)
		return r;
	if ((r = pipeline_manifest_load(b->o->manifest, b->o->facts, &b->model, err)) < 0)
		return r;
	b->history = pipeline_history_name(b->o->manifest, b->model, b->o->facts);
	b->lock_path = b->o->lock_path ? xstrdup(b->o->lock_path)
	                               : pipeline_lock_path(b->o->manifest, b->model, b->o->facts);
	b->cache = mosaic_cache_dir();
	b->ctx = (struct provider_ctx){
	    .cache_dir = b->cache,
	    .arch = model_str(b->model, "arch"),
	    .offline = b->o->offline,
	    .dl = {.parallel = b->o->downloads,
	           .progress = b->o->progress ? pipeline_download_progress : NULL,
	           .progress_data = b},
	};
	return 0;
}

static int run_steps(struct build *b, const struct step *steps, size_t n, struct mosaic_error *err)
{
	for (size_t i = 0; i < n; i++) {
		pipeline_say(b->ev, PIPELINE_STEP, steps[i].name, "%s", steps[i].name);
		int r = steps[i].run(b, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static void result_of(const struct build *b, struct pipeline_build_result *res)
{
	res->lock_path = xstrdup(b->lock_path);
	res->store = b->store ? xstrdup(store_root(b->store)) : NULL;
	res->n_packages = b->lock.n_packages;
	res->history = b->history ? xstrdup(b->history) : NULL;
	res->generation = b->generation;
	res->new_generation = b->new_generation;
	res->n_fragments = b->lock.n_packages +
	                   (b->lock.fragments ? json_object_array_length(b->lock.fragments) : 0);
}

int pipeline_resolve(const struct pipeline_build_options *o, struct pipeline_build_result *res,
                     struct pipeline_events *ev, struct mosaic_error *err)
{
	struct build b = {.o = o, .ev = ev};
	*res = (struct pipeline_build_result){0};
	int r = build_open(&b, err);
	/* --locked checks the lock against the repositories and writes nothing. */
	if (r == 0)
		r = run_steps(&b, resolve_steps, o->locked ? 1 : ARRAY_SIZE(resolve_steps), err);
	if (r == 0)
		result_of(&b, res);
	build_clear(&b);
	return r;
}

int pipeline_build(const struct pipeline_build_options *o, struct pipeline_build_result *res,
                   struct pipeline_events *ev, struct mosaic_error *err)
{
	struct build b = {.o = o, .ev = ev};
	*res = (struct pipeline_build_result){0};
	int r = build_open(&b, err);
	if (r == 0) {
		b.sign_key = o->sign_key ? xstrdup(o->sign_key)
		                         : mosaic_config_get("MOSAIC_SIGN_KEY", "sign_key", NULL);
		if (!b.sign_key)
			r = mosaic_errorf(
			    err, -EINVAL,
			    "build signs the fragments it makes: give --sign KEYID (or "
			    "set MOSAIC_SIGN_KEY, or \"sign_key\" in "
			    "/etc/mosaic/config.json)");
	}
	if (r == 0) {
		_cleanup_free_ char *def = o->store ? NULL : store_default_path();
		r = store_open(o->store ? o->store : def, true, &b.store, err);
	}
	if (r == 0)
		r = run_steps(&b, build_steps, ARRAY_SIZE(build_steps), err);
	if (r == 0)
		result_of(&b, res);
	build_clear(&b);
	return r;
}
