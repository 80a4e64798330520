/* pipeline/: configuring a composition. For the configure command: a running writable mount, or
 * a built manifest's own mount made first. For the build: the config fragment, made by mounting
 * the fragments with a scratch upper, configuring and committing, once per configure_key, so
 * that a second build runs no script. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>

/* configure's events, passed on as the pipeline's. */
static void pass_on(const struct configure_event *e, void *data)
{
	struct pipeline_events *ev = data;
	if (!ev || !ev->fn)
		return;
	const struct pipeline_event pe = {
	    .kind = PIPELINE_CONFIGURE, .step = "configure", .configure = e};
	ev->fn(&pe, ev->data);
}

static bool mosaic_mounted(const char *mountpoint)
{
	json_object *st;
	if (fusefs_status(mountpoint, &st, NULL) < 0)
		return false;
	json_object_put(st);
	return true;
}

/* Mounts a composition at mnt with upper, as 'mosaic mount SOURCE MNT --upper DIR' does. */
static int mount_with_upper(const struct pipeline_source *src, const char *mnt, const char *upper,
                            struct pipeline_events *ev, struct mosaic_error *err)
{
	_cleanup_free_ char *up = xstrdup(upper);
	int r = mkdir_p(mnt, 0755);
	if (r == 0)
		r = mkdir_p(dirname(up), 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: making %s: %s", mnt, strerror(-r));
	const struct fusefs_options fo = {
	    .mountpoint = mnt, .upper = upper, .writable = FUSEFS_WRITABLE_AUTO};
	struct pipeline_mount_result res = {0};
	r = pipeline_mount(src, &fo, &res, ev, err);
	free(res.fallback);
	return r;
}

void pipeline_configure_result_clear(struct pipeline_configure_result *res)
{
	free(res->mountpoint);
	free(res->upper);
	*res = (struct pipeline_configure_result){0};
}

/* Configures the running writable mount at mountpoint with model's config: and run:. */
static int configure_mount(const char *mountpoint, json_object *model,
                           const struct configure_options *co, struct pipeline_events *ev,
                           struct mosaic_error *err)
{
	_cleanup_free_ char *real = NULL, *upper = NULL, *mode = NULL;
	int r = pipeline_writable_mount(mountpoint, &real, &upper, &mode, err);
	if (r < 0)
		return r;
	struct configure_options o = *co;
	o.event = pass_on;
	o.data = ev;
	return configure_root(real, model, &o, err);
}

int pipeline_configure(const struct pipeline_configure_options *o,
                       struct pipeline_configure_result *res, struct pipeline_events *ev,
                       struct mosaic_error *err)
{
	*res = (struct pipeline_configure_result){0};
	if (!o->manifest) {
		res->mountpoint = xstrdup(o->mountpoint);
		return configure_mount(o->mountpoint, NULL, &o->configure, ev, err);
	}
	json_object *model = NULL;
	int r = pipeline_manifest_load(o->manifest, o->facts, &model, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *lock =
	    o->lock ? xstrdup(o->lock) : pipeline_lock_path(o->manifest, model, o->facts);
	_cleanup_free_ char *lock_dir = xstrdup(lock);
	_cleanup_free_ char *abs_dir = realpath(dirname(lock_dir), NULL);
	_cleanup_free_ char *history = pipeline_history_name(o->manifest, model, o->facts);
	/* Beside the lock, under the manifest's history (its name, and its facts when given): a
	 * mount of its own per manifest and role. */
	_cleanup_free_ char *base = xasprintf("%s/roots/%s", abs_dir ? abs_dir : lock_dir, history);
	res->mountpoint = o->mountpoint ? xstrdup(o->mountpoint) : path_join(base, "mnt");
	res->upper = o->upper ? xstrdup(o->upper) : path_join(base, "upper");
	if (!mosaic_mounted(res->mountpoint)) {
		const struct pipeline_source src = {.args = (char *const[]){(char *)o->manifest},
		                                    .n_args = 1,
		                                    .store = o->store,
		                                    .keyring = o->keyring,
		                                    .lock = o->lock,
		                                    .facts = o->facts};
		r = mount_with_upper(&src, res->mountpoint, res->upper, ev, err);
		res->mounted = r == 0;
	} else if (o->upper) {
		r = mosaic_errorf(
		    err, -EINVAL,
		    "%s is mounted already: --upper is for a mount that configure makes",
		    res->mountpoint);
	}
	if (r == 0)
		r = configure_mount(res->mountpoint, model, &o->configure, ev, err);
	json_object_put(model);
	return r;
}

/* ---- the build's config fragment ----------------------------------------------------------- */

/* The fragment a key was made into, if the store still has it: the cache, or the lock of an
 * earlier build (on another machine, or with another cache). */
static bool find_made(struct store *s, const char *lock_path, const char *key,
                      char digest[SHA256_HEX_LEN + 1])
{
	if (compose_generated_find(s, "configure", key, digest))
		return true;
	struct lock l = {0};
	bool found = false;
	if (lock_read(lock_path, &l, NULL) == 0 && l.fragments) {
		for (size_t i = 0; i < json_object_array_length(l.fragments) && !found; i++) {
			json_object *e = json_object_array_get_idx(l.fragments, i);
			const char *src = model_str(e, "source"), *d = model_str(e, "digest");
			if (src && d && strcmp(src, key) == 0 && is_sha256_hex(d) &&
			    store_has(s, d)) {
				memcpy(digest, d, SHA256_HEX_LEN + 1);
				found = true;
			}
		}
	}
	lock_clear(&l);
	return found;
}

/* The date every file the scripts wrote gets in reproducible mode. nftw passes no data. */
static struct timespec clamp_to;
static int clamp_errno;
static char clamp_path[4096];

static int clamp_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)type;
	(void)ftw;
	if (st->st_mtim.tv_sec < clamp_to.tv_sec ||
	    (st->st_mtim.tv_sec == clamp_to.tv_sec && st->st_mtim.tv_nsec == 0))
		return 0;
	const struct timespec times[2] = {{.tv_nsec = UTIME_OMIT}, clamp_to};
	if (utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) < 0) {
		clamp_errno = errno;
		snprintf(clamp_path, sizeof(clamp_path), "%s", path);
		return -1;
	}
	return 0;
}

/* Reproducible mode: what the scripts wrote is dated when they ran, so every mtime in the upper
 * later than the epoch becomes the epoch, as GNU tar's --clamp-mtime does. Older mtimes (copied
 * up from a package) are kept. */
static int clamp_mtimes(const char *upper, int64_t epoch, struct mosaic_error *err)
{
	clamp_to = (struct timespec){.tv_sec = epoch};
	clamp_errno = 0;
	if (nftw(upper, clamp_visit, 32, FTW_PHYS) == 0)
		return 0;
	int e = clamp_errno ? clamp_errno : errno;
	return mosaic_errorf(err, -e, "build: %s: %s", clamp_errno ? clamp_path : upper,
	                     strerror(e));
}

/* Mounts digests with the upper in work/upper at work/mnt, configures, unmounts, and commits
 * the upper. The upper stays when configure fails, so the next build carries on from it; it
 * goes once its fragment is in the store. */
static int configure_and_commit(struct build *b, char *const *digests, size_t n, const char *work,
                                char digest[SHA256_HEX_LEN + 1], struct mosaic_error *err)
{
	_cleanup_free_ char *mnt = path_join(work, "mnt");
	_cleanup_free_ char *upper = path_join(work, "upper");
	if (mkdir_p(mnt, 0755) < 0 || mkdir_p(upper, 0755) < 0)
		return mosaic_errorf(err, -errno, "build: %s: %s", work, strerror(errno));
	const struct pipeline_source src = {
	    .args = digests, .n_args = n, .store = store_root(b->store), .keyring = b->o->keyring};
	const struct fusefs_options fo = {
	    .mountpoint = mnt, .upper = upper, .writable = FUSEFS_WRITABLE_AUTO};
	struct pipeline_mount_result mres = {0};
	int r = pipeline_mount(&src, &fo, &mres, b->ev, err);
	free(mres.fallback);
	if (r < 0)
		return r;
	pipeline_say(b->ev, PIPELINE_INFO, "configure", "configure: %s (upper %s)", mnt, upper);
	const struct configure_options co = {.timeout = b->o->step_timeout,
	                                     .source_date_epoch = b->epoch,
	                                     .event = pass_on,
	                                     .data = b->ev};
	r = configure_root(mnt, b->model, &co, err);
	/* Unmounted first, so the upper is complete on disk and nothing writes it under the
	 * clamping below. */
	struct mosaic_error uerr = {0};
	if (fusefs_umount(mnt, false, &uerr) < 0 && r == 0) {
		*err = uerr;
		r = uerr.code;
	}
	if (r == 0 && b->epoch >= 0)
		r = clamp_mtimes(upper, b->epoch, err);
	struct fragment_info info = {0};
	if (r == 0) {
		const struct fragment_create_options fo = {
		    .name = "config",
		    .kind = FRAGMENT_CONFIG,
		    .sign_key = b->sign_key,
		    .source_date_epoch = b->epoch >= 0 ? b->epoch : 0,
		    .overlay_upper = true,
		    .workers = pipeline_cpus(),
		};
		r = fragment_create(b->store, upper, &fo, &info, err);
	}
	if (r == 0) {
		memcpy(digest, info.digest, SHA256_HEX_LEN + 1);
		pipeline_say(b->ev, PIPELINE_INFO, "configure",
		             "config fragment: %.12s, %" PRIu64 " files", info.digest,
		             (uint64_t)info.files);
	} else {
		mosaic_error_prefix(err,
		                    "build: configure stopped; its upper stays in %s and the next "
		                    "'mosaic build %s' carries on from it",
		                    upper, b->o->manifest);
	}
	fragment_info_clear(&info);
	return r;
}

/* The configured system as one more fragment on top: made, or found again when nothing it
 * depends on changed. Only a composition with a package database has something to configure. */
int step_configure(struct build *b, struct mosaic_error *err)
{
	bool has_database = false;
	json_object *frags = b->lock.fragments;
	for (size_t i = 0; frags && i < json_object_array_length(frags); i++) {
		const char *role = model_str(json_object_array_get_idx(frags, i), "role");
		has_database |= role && strstr(role, "database") != NULL;
	}
	if (!b->o->configure || !has_database)
		return 0;
	char **digests;
	size_t n;
	int r = pipeline_lock_mount_order(&b->lock, b->lock_path, b->o->manifest,
	                                  model_bool(b->model, "merged_usr", false), false,
	                                  &digests, &n, b->ev, err);
	if (r < 0)
		return r;
	char key[SHA256_HEX_LEN + 1], base[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	r = configure_key(b->model, digests, n, b->epoch, key, err);
	pipeline_base_key(digests, n, base);
	_cleanup_free_ char *work = xasprintf("%s/configure/%s.work", b->cache, key);
	double t0 = now_s();
	if (r < 0) {
	} else if (find_made(b->store, b->lock_path, key, digest)) {
		pipeline_say(b->ev, PIPELINE_INFO, "configure",
		             "configuration: %.12s already in the store; no script runs", digest);
	} else if ((r = configure_and_commit(b, digests, n, work, digest, err)) == 0) {
		struct mosaic_error cerr = {0};
		if (compose_generated_remember("configure", key, digest, &cerr) < 0)
			pipeline_say(b->ev, PIPELINE_WARNING, "configure", "%s", cerr.msg);
		int e = rm_tree(work);
		if (e < 0)
			pipeline_say(b->ev, PIPELINE_WARNING, "configure", "removing %s: %s", work,
			             strerror(-e));
		pipeline_say(b->ev, PIPELINE_INFO, "configure",
		             "configuration: %.12s made in %.2f s", digest, now_s() - t0);
	}
	strv_free(digests, n);
	if (r < 0)
		return r;
	json_object *e = json_object_new_object();
	json_object_object_add(e, "role", json_object_new_string("config"));
	json_object_object_add(e, "source", json_object_new_string(key));
	json_object_object_add(e, "base", json_object_new_string(base));
	json_object_object_add(e, "digest", json_object_new_string(digest));
	json_object_array_add(b->lock.fragments, e);
	return 0;
}
