/* pipeline/: "a composition" opened from what a command was given: a built MANIFEST, a prebuilt
 * INDEX, FRAGMENTs (refs, digests or images, verified) or the MOUNTPOINT of a running mount.
 * Mount, export, configure, diff and commit all open theirs here. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

void composition_free(struct composition *c)
{
	if (!c)
		return;
	free(c->index_path);
	compose_index_close(c->idx);
	strv_free(c->images, c->n_images);
	free(c->upper);
	free(c->mountpoint);
	free(c->mode);
	json_object_put(c->model);
	free(c->lock_path);
	free(c);
}

static int open_store(const char *path, bool create, struct store **out, struct mosaic_error *err)
{
	_cleanup_free_ char *def = path ? NULL : store_default_path();
	return store_open(path ? path : def, create, out, err);
}

static int open_keyring(const char *path, struct keyring **out, struct mosaic_error *err)
{
	_cleanup_free_ char *def = path ? NULL : keyring_default_path();
	return keyring_open(path ? path : def, out, err);
}

int pipeline_fragment_path(const char *arg, const char *store, char **out, struct mosaic_error *err)
{
	size_t l = strlen(arg);
	if ((l > 5 && strcmp(arg + l - 5, ".sqfs") == 0) || strchr(arg, '/')) {
		if (access(arg, F_OK) < 0)
			return mosaic_errorf(err, -errno, "%s: %s", arg, strerror(errno));
		*out = xstrdup(arg);
		return 0;
	}
	struct store *s;
	int r = open_store(store, false, &s, err);
	if (r < 0)
		return r;
	char digest[SHA256_HEX_LEN + 1];
	r = store_resolve(s, arg, digest, err);
	if (r == 0)
		*out = store_object_path(s, digest, ".sqfs");
	store_free(s);
	return r;
}

struct inputs {
	struct compose_input *in;
	size_t n;
};

static void inputs_clear(struct inputs *ci)
{
	for (size_t i = 0; i < ci->n; i++) {
		free((char *)ci->in[i].image_path);
		free((char *)ci->in[i].digest);
		free((char *)ci->in[i].name);
	}
	free(ci->in);
	*ci = (struct inputs){0};
}

/* The fragments args names, each verified against the keyring. */
static int inputs_resolve(char *const *args, size_t n, const char *store, const char *keyring,
                          struct inputs *out, struct mosaic_error *err)
{
	struct keyring *k;
	int r = open_keyring(keyring, &k, err);
	if (r < 0)
		return r;
	out->in = xcalloc(n ? n : 1, sizeof(*out->in));
	out->n = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		char *path = NULL;
		struct fragment_descriptor d;
		if ((r = pipeline_fragment_path(args[i], store, &path, err)) < 0)
			break;
		if ((r = fragment_verify(k, path, &d, err)) < 0) {
			free(path);
			break;
		}
		out->in[out->n++] = (struct compose_input){
		    .image_path = path,
		    .digest = xstrdup(d.digest),
		    .name = xstrdup(d.name),
		    .package = d.kind == FRAGMENT_PACKAGE,
		};
		fragment_descriptor_clear(&d);
	}
	keyring_free(k);
	if (r < 0)
		inputs_clear(out);
	return r;
}

static int from_fragments(char *const *args, size_t n, const struct pipeline_source *src,
                          struct composition *c, struct pipeline_events *ev,
                          struct mosaic_error *err)
{
	struct inputs ci = {0};
	int r = inputs_resolve(args, n, src->store, src->keyring, &ci, err);
	if (r < 0)
		return r;
	r = pipeline_index_cached(ci.in, ci.n, &c->index_path, ev, err);
	if (r == 0) {
		c->n_images = ci.n;
		c->images = xcalloc(ci.n ? ci.n : 1, sizeof(*c->images));
		for (size_t i = 0; i < ci.n; i++)
			c->images[i] = xstrdup(ci.in[i].image_path);
		c->verified = true;
	}
	inputs_clear(&ci);
	return r;
}

/* A prebuilt index: its fragments are found in the store by digest, and verified by whoever
 * reads them first. */
static int from_index(const char *path, const struct pipeline_source *src, struct composition *c,
                      struct mosaic_error *err)
{
	int r = compose_index_open(path, &c->idx, err);
	if (r < 0)
		return r;
	c->index_path = xstrdup(path);
	struct store *s;
	if ((r = open_store(src->store, false, &s, err)) < 0)
		return r;
	c->n_images = compose_index_fragments(c->idx);
	c->images = xcalloc(c->n_images ? c->n_images : 1, sizeof(*c->images));
	for (size_t i = 0; i < c->n_images; i++) {
		char dg[SHA256_HEX_LEN + 1];
		compose_index_fragment_digest(c->idx, i, dg);
		c->images[i] = store_object_path(s, dg, ".sqfs");
	}
	store_free(s);
	return 0;
}

static const char *state_string(json_object *s, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(s, key, &v) && v ? json_object_get_string(v) : NULL;
}

/* A running mount: its index, its fragment images in index order and its upper, from the state
 * the daemon keeps; the index itself is opened only when asked for (it is checksummed). */
static int from_mount(const char *mountpoint, bool open_index, struct composition *c,
                      struct mosaic_error *err)
{
	json_object *st;
	int r = fusefs_status(mountpoint, &st, err);
	if (r < 0)
		return r;
	json_object *v, *frags;
	const char *index = state_string(st, "index");
	if (!index || !json_object_object_get_ex(st, "fragments", &frags) ||
	    !json_object_is_type(frags, json_type_array)) {
		r = mosaic_errorf(err, -EBADMSG,
		                  "the state of %s names no index or fragments; remount it",
		                  mountpoint);
		goto out;
	}
	c->index_path = xstrdup(index);
	c->mountpoint =
	    xstrdup(state_string(st, "mountpoint") ? state_string(st, "mountpoint") : mountpoint);
	c->mode = state_string(st, "mode") ? xstrdup(state_string(st, "mode")) : NULL;
	c->running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
	if (state_string(st, "upper"))
		c->upper = xstrdup(state_string(st, "upper"));
	size_t n = json_object_array_length(frags);
	c->n_images = n;
	c->images = xcalloc(n ? n : 1, sizeof(*c->images));
	for (size_t i = 0; i < n; i++)
		c->images[i] = xstrdup(json_object_get_string(json_object_array_get_idx(frags, i)));
	if (!open_index)
		goto out;
	if ((r = compose_index_open(index, &c->idx, err)) < 0)
		goto out;
	if (n != compose_index_fragments(c->idx))
		r = mosaic_errorf(err, -EBADMSG,
		                  "%s: the index has %u fragments, the state names %zu", mountpoint,
		                  compose_index_fragments(c->idx), n);
out:
	json_object_put(st);
	return r;
}

/* Generation src->generation of the manifest's history: its fragments from the record, verified
 * as FRAGMENTs are, and their index from the cache (built again if it is gone). */
static int from_generation(const char *manifest, const struct pipeline_source *src,
                           struct composition *c, struct pipeline_events *ev,
                           struct mosaic_error *err)
{
	_cleanup_free_ char *history = pipeline_history_name(manifest, c->model, src->facts);
	struct pipeline_generation g;
	int r = pipeline_generation_get(src->store, history, src->generation, &g, err);
	if (r < 0)
		return r;
	r = from_fragments(g.digests, g.n_fragments, src, c, ev, err);
	/* The lock describes the generation (an export's SBOM reads it) only while it is the one
	 * the generation was built with. */
	_cleanup_free_ char *lock =
	    src->lock ? xstrdup(src->lock) : pipeline_lock_path(manifest, c->model, src->facts);
	_cleanup_close_ int fd = open(lock, O_RDONLY | O_CLOEXEC);
	char hex[SHA256_HEX_LEN + 1];
	if (r == 0 && fd >= 0 && sha256_fd(fd, hex) == 0 && strcmp(hex, g.lock_digest) == 0)
		c->lock_path = TAKE_PTR(lock);
	pipeline_generation_clear(&g);
	return r;
}

static int from_manifest(const char *manifest, const struct pipeline_source *src,
                         struct composition *c, struct pipeline_events *ev,
                         struct mosaic_error *err)
{
	int r = pipeline_manifest_load(manifest, src->facts, &c->model, err);
	if (r < 0)
		return r;
	if (src->generation)
		return from_generation(manifest, src, c, ev, err);
	c->lock_path =
	    src->lock ? xstrdup(src->lock) : pipeline_lock_path(manifest, c->model, src->facts);
	struct lock l = {0};
	if ((r = lock_read(c->lock_path, &l, err)) < 0)
		return mosaic_error_prefix(err, "run 'mosaic build %s' first", manifest);
	char **digests = NULL;
	size_t n = 0;
	r = pipeline_lock_mount_order(&l, c->lock_path, manifest,
	                              model_bool(c->model, "merged_usr", false), true, &digests, &n,
	                              ev, err);
	lock_clear(&l);
	if (r == 0)
		r = from_fragments(digests, n, src, c, ev, err);
	strv_free(digests, n);
	return r;
}

int pipeline_open(const struct pipeline_source *src, struct composition **out,
                  struct pipeline_events *ev, struct mosaic_error *err)
{
	struct composition *c = xcalloc(1, sizeof(*c));
	char *const *a = src->args;
	struct stat st;
	int r;
	if (src->n_args == 0) {
		r = mosaic_errorf(err, -EINVAL, "give a MANIFEST, INDEX or FRAGMENTs");
	} else if (src->generation && (src->n_args != 1 || !pipeline_is_manifest(a[0]))) {
		r = mosaic_errorf(err, -EINVAL,
		                  "a generation is one of a MANIFEST's: give one MANIFEST with it");
	} else if (src->n_args == 1 && pipeline_is_manifest(a[0])) {
		c->kind = PIPELINE_FROM_MANIFEST;
		r = from_manifest(a[0], src, c, ev, err);
	} else if (src->n_args == 1 && src->mountpoints && stat(a[0], &st) == 0 &&
	           S_ISDIR(st.st_mode)) {
		c->kind = PIPELINE_FROM_MOUNT;
		r = from_mount(a[0], src->open_index, c, err);
	} else if (src->n_args == 1 && pipeline_is_index(a[0])) {
		c->kind = PIPELINE_FROM_INDEX;
		r = from_index(a[0], src, c, err);
	} else {
		c->kind = PIPELINE_FROM_FRAGMENTS;
		r = from_fragments(a, src->n_args, src, c, ev, err);
	}
	if (r == 0 && src->open_index && !c->idx)
		r = compose_index_open(c->index_path, &c->idx, err);
	if (r < 0) {
		composition_free(c);
		return r;
	}
	*out = c;
	return 0;
}

int pipeline_compose(const struct pipeline_source *src, const char *out_path, bool strict,
                     struct compose_result *res, char ***names, struct mosaic_error *err)
{
	struct inputs ci = {0};
	int r = inputs_resolve(src->args, src->n_args, src->store, src->keyring, &ci, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *scratch = NULL;
	if (!out_path) {
		_cleanup_free_ char *cache = mosaic_cache_dir();
		scratch = xasprintf("%s/conflicts-%d.idx", cache, getpid());
		mkdir_p(cache, 0700);
	}
	const struct compose_build_options o = {.strict = strict};
	r = compose_index_build(ci.in, ci.n, &o, out_path ? out_path : scratch, res, err);
	if (scratch)
		unlink(scratch);
	if (r == 0) {
		char **v = xcalloc(ci.n + 1, sizeof(*v));
		for (size_t i = 0; i < ci.n; i++)
			v[i] = xstrdup(ci.in[i].name);
		*names = v;
	}
	inputs_clear(&ci);
	return r;
}

int pipeline_open_mount(const char *mountpoint, bool open_index, struct composition **out,
                        struct mosaic_error *err)
{
	struct composition *c = xcalloc(1, sizeof(*c));
	c->kind = PIPELINE_FROM_MOUNT;
	int r = from_mount(mountpoint, open_index, c, err);
	if (r < 0) {
		composition_free(c);
		return r;
	}
	*out = c;
	return 0;
}

json_object *pipeline_composition_info(const struct pipeline_source *src,
                                       const struct composition *c)
{
	json_object *o = json_object_new_object();
	static const char *const kinds[] = {"manifest", "index", "fragments", "mount"};
	json_object_object_add(o, "source", json_object_new_string(kinds[c->kind]));
	unsigned number = src->generation;
	if (!number && c->kind == PIPELINE_FROM_MANIFEST && c->model) {
		/* The manifest's lock: its newest generation, when that is what the lock names. */
		_cleanup_free_ char *history =
		    pipeline_history_name(src->args[0], c->model, src->facts);
		struct pipeline_generation g;
		struct mosaic_error ignored = {0};
		if (history && pipeline_generation_get(src->store, history, 0, &g, &ignored) == 0) {
			bool same = g.n_fragments == c->n_images;
			for (size_t i = 0; same && i < c->n_images; i++)
				same = strstr(c->images[i], g.digests[i]) != NULL;
			if (same)
				number = g.number;
			pipeline_generation_clear(&g);
		}
	}
	if (number)
		json_object_object_add(o, "generation", json_object_new_int(number));
	if (c->kind == PIPELINE_FROM_MANIFEST || c->kind == PIPELINE_FROM_INDEX) {
		char real[PATH_MAX];
		json_object_object_add(
		    o, "path",
		    json_object_new_string(realpath(src->args[0], real) ? real : src->args[0]));
	}
	return o;
}
