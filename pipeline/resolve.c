/* pipeline/: the resolve step: the manifest's repositories loaded (signatures and checksums
 * checked by providers/), its packages resolved with libsolv, or a lock checked against them. */
#include "pipeline/internal.h"

#include <string.h>

void repos_clear(struct repos *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		repo_free_contents(&rs->r[i]);
	free(rs->r);
	*rs = (struct repos){0};
}

static struct repo *repos_push(struct repos *rs)
{
	rs->r = xrealloc(rs->r, (rs->n + 1) * sizeof(*rs->r));
	struct repo *r = &rs->r[rs->n++];
	*r = (struct repo){0};
	return r;
}

/* The host's apt sources for a repository with host: true, one config per matching entry. */
static int repos_from_host(json_object *o, char **suites, struct repos *rs,
                           struct mosaic_error *err)
{
	const char *name = model_str(o, "name");
	struct repo_config *hc = NULL;
	size_t nh = 0;
	int r = apt_host_sources("/", suites, &hc, &nh, err);
	if (r < 0)
		return r;
	if (nh == 0)
		return mosaic_errorf(
		    err, -ENOENT,
		    "repository '%s': the host's apt sources have no matching 'deb' "
		    "entry",
		    name);
	for (size_t k = 0; k < nh; k++) {
		struct repo *rp = repos_push(rs);
		rp->cfg = hc[k];
		const char *sfx = strchr(hc[k].name, '/');
		rp->cfg.name = xasprintf("%s%s", name, sfx ? sfx : "");
		free(hc[k].name);
		rp->cfg.priority = json_object_get_int(model_get(o, "priority"));
		rp->cfg.check_valid_until =
		    rp->cfg.check_valid_until && model_bool(o, "check_valid_until", true);
		if (model_str(o, "keyring")) {
			free(rp->cfg.keyring);
			rp->cfg.keyring = xstrdup(model_str(o, "keyring"));
		}
	}
	free(hc);
	return 0;
}

/* The manifest's repositories as configs: one per suite for Debian, the host's apt sources
 * expanded; all of one type (one libsolv pool resolves one distribution). */
static int repos_from_model(json_object *model, struct repos *rs, struct mosaic_error *err)
{
	json_object *list = model_get(model, "repositories");
	size_t n = list ? json_object_array_length(list) : 0;
	if (n == 0)
		return mosaic_errorf(err, -EINVAL, "the manifest names no repositories");
	for (size_t i = 0; i < n; i++) {
		json_object *o = json_object_array_get_idx(list, i);
		const char *name = model_str(o, "name"), *type = model_str(o, "type");
		enum repo_type t = strcmp(type, "rpm") == 0 ? REPO_RPM : REPO_DEB;
		if (i > 0 && t != rs->type)
			return mosaic_errorf(err, -EINVAL,
			                     "repository '%s' is %s but '%s' is %s: one manifest "
			                     "resolves from one kind of repository",
			                     name, type,
			                     model_str(json_object_array_get_idx(list, 0), "name"),
			                     rs->type == REPO_RPM ? "rpm" : "deb");
		rs->type = t;
		_cleanup_strv_ char **suites = model_strv(model_get(o, "suites"));
		if (t == REPO_DEB && model_bool(o, "host", false)) {
			int r = repos_from_host(o, suites, rs, err);
			if (r < 0)
				return r;
			continue;
		}
		size_t ns = 0;
		while (t == REPO_DEB && suites && suites[ns])
			ns++;
		for (size_t k = 0; k < (t == REPO_DEB ? ns : 1); k++) {
			struct repo *r = repos_push(rs);
			r->cfg.type = t;
			r->cfg.priority = json_object_get_int(model_get(o, "priority"));
			r->cfg.check_valid_until = model_bool(o, "check_valid_until", true);
			r->cfg.keyring = xstrdup(model_str(o, "keyring"));
			if (t == REPO_DEB) {
				r->cfg.name = xasprintf("%s/%s", name, suites[k]);
				r->cfg.uri = xstrdup(model_str(o, "uri"));
				r->cfg.suite = xstrdup(suites[k]);
				r->cfg.components = model_strv(model_get(o, "components"));
			} else {
				r->cfg.name = xstrdup(name);
				r->cfg.uri = xstrdup(model_str(o, "baseurl"));
			}
			/* No trailing slash: locations are joined with one. */
			size_t l = strlen(r->cfg.uri);
			while (l > 1 && r->cfg.uri[l - 1] == '/')
				r->cfg.uri[--l] = 0;
		}
	}
	return 0;
}

/* The digest of what resolution depends on: a changed manifest makes --locked fail. */
static void input_digest(json_object *model, char out[SHA256_HEX_LEN + 1])
{
	static const char *const keys[] = {"arch",     "repositories", "base",
	                                   "packages", "exclude",      "recommends"};
	json_object *o = json_object_new_object();
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		json_object *v = model_get(model, keys[i]);
		if (v)
			json_object_object_add(o, keys[i], json_object_get(v));
	}
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	sha256_buffer(s, strlen(s), out);
	json_object_put(o);
}

static json_object *repos_json(const struct repos *rs)
{
	json_object *a = json_object_new_array();
	for (size_t i = 0; i < rs->n; i++) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(rs->r[i].cfg.name));
		json_object_object_add(o, "type",
		                       json_object_new_string(provider_for(rs->type)->type));
		json_object_object_add(o, "root_digest",
		                       json_object_new_string(rs->r[i].root_digest));
		json_object_array_add(a, o);
	}
	return a;
}

/* --locked: the lock must still match the manifest and be found in the repositories. */
static int check_lock(struct build *b, const char *input, struct mosaic_error *err)
{
	int r = lock_read(b->lock_path, &b->lock, err);
	if (r < 0)
		return r;
	if (strcmp(b->lock.input, input) != 0)
		return mosaic_errorf(err, -ESTALE,
		                     "%s: the manifest's packages, base, exclude or repositories "
		                     "changed since the lock was written; run 'mosaic resolve' "
		                     "without --locked",
		                     b->lock_path);
	if ((r = resolve_locked(&b->ctx, b->lock.packages, b->lock.n_packages, err)) < 0)
		return mosaic_error_prefix(err, "%s", b->lock_path);
	json_object_put(b->lock.repositories);
	b->lock.repositories = repos_json(&b->rs);
	return 0;
}

int step_resolve(struct build *b, struct mosaic_error *err)
{
	int r = repos_from_model(b->model, &b->rs, err);
	if (r < 0)
		return r;
	provider_pool_new(&b->ctx, b->rs.type);
	double t0 = now_s();
	unsigned total = 0;
	for (size_t i = 0; i < b->rs.n; i++) {
		b->rs.r[i].cfg.type = b->rs.type;
		if ((r = provider_for(b->rs.type)->load(&b->ctx, &b->rs.r[i], err)) < 0)
			return r;
		total += b->rs.r[i].packages;
	}
	pipeline_say(b->ev, PIPELINE_INFO, "resolve",
	             "metadata: %zu repositories, %u packages, loaded in %.2f s", b->rs.n, total,
	             now_s() - t0);
	char input[SHA256_HEX_LEN + 1];
	input_digest(b->model, input);
	if (b->o->locked)
		return check_lock(b, input, err);

	json_object *pk = model_get(b->model, "packages");
	size_t np = pk ? json_object_array_length(pk) : 0;
	_cleanup_free_ struct package_request *req = xcalloc(np ? np : 1, sizeof(*req));
	for (size_t i = 0; i < np; i++) {
		json_object *o = json_object_array_get_idx(pk, i);
		req[i] = (struct package_request){model_str(o, "name"), model_str(o, "op"),
		                                  model_str(o, "version")};
	}
	_cleanup_strv_ char **exclude = model_strv(model_get(b->model, "exclude"));
	json_object *base = model_get(b->model, "base");
	const struct resolve_request rq = {
	    .packages = req,
	    .n_packages = np,
	    .exclude = exclude,
	    .base_set = base ? model_str(base, "set") : NULL,
	    .recommends = b->o->recommends || model_bool(b->model, "recommends", false),
	};
	t0 = now_s();
	struct package *pkgs = NULL;
	size_t n = 0;
	if ((r = resolve(&b->ctx, &rq, &pkgs, &n, err)) < 0)
		return r;
	size_t nb = 0;
	for (size_t i = 0; i < n; i++)
		nb += pkgs[i].base;
	pipeline_say(b->ev, PIPELINE_INFO, "resolve",
	             "resolved: %zu packages (%zu in the base set) in %.2f s", n, nb, now_s() - t0);

	/* Keep what an earlier build recorded for packages that did not change. */
	struct lock old = {0};
	if (lock_read(b->lock_path, &old, NULL) == 0) {
		for (size_t i = 0; i < n; i++)
			for (size_t k = 0; k < old.n_packages; k++)
				if (strcmp(old.packages[k].sha256, pkgs[i].sha256) == 0)
					memcpy(pkgs[i].fragment, old.packages[k].fragment,
					       sizeof(pkgs[i].fragment));
		b->lock.fragments = json_object_get(old.fragments);
		lock_clear(&old);
	}
	b->lock.name = xstrdup(model_str(b->model, "name"));
	b->lock.arch = xstrdup(b->ctx.arch);
	memcpy(b->lock.input, input, sizeof(input));
	b->lock.repositories = repos_json(&b->rs);
	b->lock.packages = pkgs;
	b->lock.n_packages = n;
	return 0;
}
