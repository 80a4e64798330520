/* The last steps of mosaic build: the composition mounted with a scratch upper, configured in a
 * chroot (configure/, through configure_mount), and the upper frozen into a signed config fragment.
 * The fragment is a function of the fragments under it and of the manifest's config: and run:, so
 * it is made once per such key and found again by it: a second build runs no script. */
#include "tools/build-configure.h"
#include "compose/compose.h"
#include "configure/configure.h"

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

void build_base_key(char *const *digests, size_t n, char hex[SHA256_HEX_LEN + 1])
{
	compose_digests_key("", (const char *const *)digests, n, hex);
}

/* The fragment a key was made into, if the store still has it. */
static bool find_made(struct store *s, const char *lock_path, const char *key,
                      char digest[SHA256_HEX_LEN + 1])
{
	if (compose_generated_find(s, "configure", key, digest))
		return true;
	/* The lock of an earlier build (on another machine, or with another cache). */
	struct lock l = {0};
	bool found = false;
	if (lock_read(lock_path, &l, NULL) == 0 && l.fragments) {
		for (size_t i = 0; i < json_object_array_length(l.fragments) && !found; i++) {
			json_object *e = json_object_array_get_idx(l.fragments, i), *v;
			const char *src = json_object_object_get_ex(e, "source", &v)
			                      ? json_object_get_string(v)
			                      : NULL;
			const char *d = json_object_object_get_ex(e, "digest", &v)
			                    ? json_object_get_string(v)
			                    : NULL;
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

static int clamp_visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)type;
	(void)ftw;
	if (st->st_mtim.tv_sec < clamp_to.tv_sec ||
	    (st->st_mtim.tv_sec == clamp_to.tv_sec && st->st_mtim.tv_nsec == 0))
		return 0;
	const struct timespec times[2] = {{.tv_nsec = UTIME_OMIT}, clamp_to};
	if (utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) < 0) {
		fprintf(stderr, "mosaic: build: %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Reproducible mode (epoch >= 0: $SOURCE_DATE_EPOCH set, as for the rest of the build): what
 * the scripts wrote is dated when they ran, so every mtime in the upper later than the epoch
 * becomes the epoch, as GNU tar's --clamp-mtime does. Older mtimes (copied up from a package)
 * are kept. Without it, the upper is committed as it is. */
static int clamp_mtimes(const char *upper, int64_t epoch)
{
	if (epoch < 0)
		return EXIT_OK;
	clamp_to = (struct timespec){.tv_sec = epoch};
	return nftw(upper, clamp_visit, 32, FTW_PHYS) == 0 ? EXIT_OK : EXIT_FAIL;
}

/* Mounts digests with the upper in work/upper at work/mnt, configures, unmounts, and commits
 * the upper. The upper stays when configure fails, so the next build carries on from it; it
 * goes once its fragment is in the store. */
static int configure_and_commit(const struct build_config *c, struct store *s, char *const *digests,
                                size_t n, int64_t epoch, const char *work,
                                char digest[SHA256_HEX_LEN + 1])
{
	_cleanup_free_ char *mnt = path_join(work, "mnt");
	_cleanup_free_ char *upper = path_join(work, "upper");
	if (mkdir_p(mnt, 0755) < 0 || mkdir_p(upper, 0755) < 0) {
		fprintf(stderr, "mosaic: build: %s: %s\n", work, strerror(errno));
		return EXIT_FAIL;
	}
	struct fusefs_options o = {
	    .mountpoint = mnt,
	    .upper = upper,
	    .writable = FUSEFS_WRITABLE_AUTO,
	};
	enum fusefs_writable picked;
	int r = cli_mount((char **)digests, n, c->store, c->keyring, NULL, &o, &picked);
	if (r != EXIT_OK)
		return r;
	fprintf(stderr, "configure: %s (upper %s)\n", mnt, upper);
	r = configure_mount(mnt, c->model, c->timeout);
	/* Unmounted first, so the upper is complete on disk and nothing writes it under the
	 * clamping below. */
	struct mosaic_error err = {0};
	if (fusefs_umount(mnt, false, &err) < 0) {
		int u = cli_fail(&err);
		if (r == EXIT_OK)
			r = u;
	}
	if (r == EXIT_OK)
		r = clamp_mtimes(upper, epoch);
	struct fragment_info info = {0};
	if (r == EXIT_OK) {
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		struct fragment_create_options fo = {
		    .name = "config",
		    .kind = FRAGMENT_CONFIG,
		    .sign_key = c->sign_key,
		    .source_date_epoch = c->source_date_epoch,
		    .overlay_upper = true,
		    .workers = ncpu > 0 ? (unsigned)ncpu : 1,
		};
		if (fragment_create(s, upper, &fo, &info, &err) < 0)
			r = cli_fail(&err);
	}
	if (r == EXIT_OK) {
		memcpy(digest, info.digest, SHA256_HEX_LEN + 1);
		fprintf(stderr, "config fragment: %.12s, %" PRIu64 " files\n", info.digest,
		        (uint64_t)info.files);
	} else {
		fprintf(stderr,
		        "mosaic: build: configure stopped; its upper stays in %s and the next "
		        "'mosaic build %s' carries on from it\n",
		        upper, c->manifest);
	}
	fragment_info_clear(&info);
	return r;
}

int build_config_fragment(const struct build_config *c, struct store *s, char *const *digests,
                          size_t n, json_object **entry)
{
	struct mosaic_error err = {0};
	char key[SHA256_HEX_LEN + 1], base[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	int64_t epoch;
	if (mosaic_source_date_epoch(&epoch, &err) < 0 ||
	    configure_key(c->model, digests, n, epoch, key, &err) < 0)
		return cli_fail(&err);
	build_base_key(digests, n, base);
	_cleanup_free_ char *cache = mosaic_cache_dir();
	_cleanup_free_ char *work = xasprintf("%s/configure/%s.work", cache, key);
	double t0 = now_s();
	int r = EXIT_OK;
	if (find_made(s, c->lock_path, key, digest)) {
		fprintf(stderr, "configuration: %.12s already in the store; no script runs\n",
		        digest);
	} else {
		r = configure_and_commit(c, s, digests, n, epoch, work, digest);
		if (r == EXIT_OK) {
			compose_generated_remember("configure", key, digest);
			int e = rm_tree(work);
			if (e < 0)
				fprintf(stderr, "mosaic: warning: removing %s: %s\n", work,
				        strerror(-e));
			fprintf(stderr, "configuration: %.12s made in %.2f s\n", digest,
			        now_s() - t0);
		}
	}
	if (r != EXIT_OK)
		return r;
	json_object *e = json_object_new_object();
	json_object_object_add(e, "role", json_object_new_string("config"));
	json_object_object_add(e, "source", json_object_new_string(key));
	json_object_object_add(e, "base", json_object_new_string(base));
	json_object_object_add(e, "digest", json_object_new_string(digest));
	*entry = e;
	return EXIT_OK;
}
