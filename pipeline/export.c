/* pipeline/: exporting a composition as an image, for the export command and for a manifest's
 * export: targets at the end of its build, in this process and the same way. */
#include "pipeline/internal.h"

#include <string.h>
#include <sys/stat.h>

struct export_progress {
	struct pipeline_events *ev;
	const char *output;
};

static void export_progress(uint64_t bytes, uint64_t total, void *data)
{
	struct export_progress *p = data;
	pipeline_progress(p->ev, "export", p->output, bytes, total, bytes, total);
}

int pipeline_export(const struct pipeline_source *src, const char *upper,
                    const struct export_options *o_in, struct export_tar_result *res,
                    struct pipeline_events *ev, struct mosaic_error *err)
{
	struct pipeline_source s = *src;
	s.mountpoints = true;
	s.open_index = true;
	struct composition *c = NULL;
	int r = pipeline_open(&s, &c, ev, err);
	if (r < 0)
		return r;
	struct export_options o = *o_in;
	struct lock lock = {0};
	bool have_lock = false;
	struct keyring *k = NULL;
	struct export_reader *reader = NULL;
	if (upper && c->kind == PIPELINE_FROM_MOUNT) {
		r = mosaic_errorf(err, -EINVAL, "a MOUNTPOINT has its own upper: no --upper");
		goto out;
	}
	/* A live directory changes while it is read, and nothing signs it. */
	for (size_t i = 0; i < c->n_images; i++) {
		struct stat st;
		if (stat(c->images[i], &st) == 0 && S_ISDIR(st.st_mode)) {
			r = mosaic_errorf(
			    err, -EINVAL,
			    "%s serves the live dev directory %s, which export never reads: "
			    "freeze it first ('mosaic build' of the manifest, or 'mosaic fragment "
			    "create %s') and export that",
			    src->args[0], c->images[i], c->images[i]);
			goto out;
		}
	}
	/* The SBOM lists the locked packages: the manifest's lock, or the one given. */
	const char *lock_path = c->lock_path ? c->lock_path : src->lock;
	if (!o.lock && lock_path) {
		if ((r = lock_read(lock_path, &lock, err)) < 0)
			goto out;
		have_lock = true;
		o.lock = &lock;
	}
	json_object *config = c->model ? model_get(c->model, "config") : NULL;
	if (!o.kernel_cmdline && config)
		o.kernel_cmdline = model_str(config, "kernel_cmdline");
	if (!c->verified) {
		_cleanup_free_ char *def = src->keyring ? NULL : keyring_default_path();
		if ((r = keyring_open(src->keyring ? src->keyring : def, &k, err)) < 0)
			goto out;
	}
	struct export_progress ep = {ev, o.output};
	const struct export_reader_options ro = {.idx = c->idx,
	                                         .images = c->images,
	                                         .upper = upper ? upper : c->upper,
	                                         .keyring = k,
	                                         .progress = export_progress,
	                                         .progress_data = &ep};
	if ((r = export_reader_open(&ro, &reader, err)) < 0)
		goto out;
	r = export_run(reader, &o, res, err);
out:
	export_reader_free(reader);
	keyring_free(k);
	if (have_lock)
		lock_clear(&lock);
	composition_free(c);
	return r;
}

/* A target's partitions: MOUNTPOINT with an optional size, or swap with a size. */
static int target_partitions(json_object *t, const char *output,
                             struct export_partition_spec *parts, size_t *n,
                             struct mosaic_error *err)
{
	json_object *list = model_get(t, "partitions");
	size_t np = list ? json_object_array_length(list) : 0;
	if (np > EXPORT_MAX_PARTITIONS - 3)
		return mosaic_errorf(err, -EINVAL, "export target %s: at most %d partitions",
		                     output, EXPORT_MAX_PARTITIONS - 3);
	for (size_t j = 0; j < np; j++) {
		json_object *p = json_object_array_get_idx(list, j);
		const char *type = model_str(p, "type"), *mp = model_str(p, "mountpoint");
		const char *size = model_str(p, "size");
		bool swap = type && strcmp(type, "swap") == 0;
		parts[j] = (struct export_partition_spec){.mountpoint = swap ? NULL : mp};
		if ((type && !swap && strcmp(type, "ext4") != 0) || (swap && (mp || !size)) ||
		    (!swap && (!mp || mp[0] != '/')) ||
		    (size && (export_parse_size(size, &parts[j].size) < 0 || !parts[j].size)))
			return mosaic_errorf(
			    err, -EINVAL,
			    "export target %s: partition %zu: give a mountpoint (type "
			    "ext4, the default) or type swap with a size",
			    output, j + 1);
	}
	*n = np;
	return 0;
}

/* The manifest's export: targets, each exactly as 'mosaic export MANIFEST' would make it. */
int step_export(struct build *b, struct mosaic_error *err)
{
	json_object *targets = model_get(b->model, "export");
	size_t n = b->o->export && targets ? json_object_array_length(targets) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *t = json_object_array_get_idx(targets, i);
		const char *format = model_str(t, "format"), *output = model_str(t, "output");
		if (!output)
			return mosaic_errorf(err, -EINVAL, "export target %zu (%s) names no output",
			                     i + 1, format);
		struct export_partition_spec parts[EXPORT_MAX_PARTITIONS];
		struct export_options o = {.format = format,
		                           .output = output,
		                           .source_date_epoch = b->epoch,
		                           .free_space = 256 * EXPORT_MIB,
		                           .filesystem = model_str(t, "filesystem"),
		                           .bootloader = model_str(t, "bootloader"),
		                           .partitions = parts};
		int r = target_partitions(t, output, parts, &o.n_partitions, err);
		if (r == 0 && model_str(t, "size") &&
		    (export_parse_size(model_str(t, "size"), &o.size) < 0 || !o.size))
			r = mosaic_errorf(err, -EINVAL, "export target %s: bad size '%s'", output,
			                  model_str(t, "size"));
		if (r == 0 && model_str(t, "free_space") &&
		    export_parse_size(model_str(t, "free_space"), &o.free_space) < 0)
			r = mosaic_errorf(err, -EINVAL, "export target %s: bad free_space '%s'",
			                  output, model_str(t, "free_space"));
		const char *slash = strrchr(output, '/');
		_cleanup_free_ char *dir = slash ? xstrndup(output, slash - output) : NULL;
		if (r == 0 && dir && *dir && mkdir_p(dir, 0755) < 0)
			r = mosaic_errorf(err, -errno, "export target %s: %s: %s", output, dir,
			                  strerror(errno));
		if (r < 0)
			return r;
		pipeline_say(b->ev, PIPELINE_INFO, "export", "export: %s as %s", output, format);
		const struct pipeline_source src = {.args = (char *const[]){(char *)b->o->manifest},
		                                    .n_args = 1,
		                                    .store = store_root(b->store),
		                                    .keyring = b->o->keyring,
		                                    .lock = b->lock_path,
		                                    .facts = b->o->facts};
		struct export_tar_result res = {0};
		if ((r = pipeline_export(&src, NULL, &o, &res, b->ev, err)) < 0)
			return mosaic_error_prefix(err, "export target %s", output);
		pipeline_say(b->ev, PIPELINE_INFO, "export", "%s %s %ju bytes, %ju entries%s",
		             output, res.sha256, (uintmax_t)res.size, (uintmax_t)res.entries,
		             res.skipped ? " (sockets left out)" : "");
	}
	return 0;
}
