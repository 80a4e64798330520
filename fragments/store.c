/* The content-addressed store: <root>/sha256/<hh>/<hex>.sqfs named by the image's SHA-256, with
 * <hex>.json (descriptor) and <hex>.json.sig beside it; refs/ and roots/ keep fragments alive
 * through gc; tmp/ holds images being written. Layout in docs/formats.md. */
#include "fragments/internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>

#define STORE_MARKER  "mosaic-store"
#define STORE_VERSION "1\n"
#define STALE_SECONDS 3600

struct store {
	char *root;
};

char *store_default_path(void)
{
	return mosaic_config_get("MOSAIC_STORE", "store", "/var/lib/mosaic/store");
}

const char *store_root(const struct store *s)
{
	return s->root;
}

int store_open(const char *path, bool create, struct store **out, struct mosaic_error *err)
{
	_cleanup_free_ char *marker = path_join(path, STORE_MARKER);
	int r;
	if (create) {
		const char *subdirs[] = {"sha256", "tmp", "refs", "roots"};
		for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
			_cleanup_free_ char *d = path_join(path, subdirs[i]);
			if ((r = mkdir_p(d, 0755)) < 0)
				return mosaic_errorf(err, r, "store %s: cannot create %s: %s", path,
				                     d, strerror(-r));
		}
		if (access(marker, F_OK) < 0 &&
		    (r = write_file_atomic(marker, STORE_VERSION, strlen(STORE_VERSION), 0644)) < 0)
			return mosaic_errorf(err, r, "store %s: %s", path, strerror(-r));
	}
	_cleanup_free_ char *version = NULL;
	r = read_file(marker, 64, &version, NULL);
	if (r < 0)
		return mosaic_errorf(err, -ENOENT,
		                     "%s is not a mosaic store (no %s file); make one with 'mosaic "
		                     "fragment create SRC -o %s'",
		                     path, STORE_MARKER, path);
	if (strcmp(version, STORE_VERSION) != 0)
		return mosaic_errorf(
		    err, -EPROTONOSUPPORT,
		    "store %s has layout version %.8s; this mosaic reads version 1", path, version);
	struct store *s = xcalloc(1, sizeof(*s));
	s->root = xstrdup(path);
	*out = s;
	return 0;
}

void store_free(struct store *s)
{
	if (!s)
		return;
	free(s->root);
	free(s);
}

char *store_object_path(const struct store *s, const char *digest, const char *suffix)
{
	return xasprintf("%s/sha256/%.2s/%s%s", s->root, digest, digest, suffix);
}

char *store_tmp_path(const struct store *s, const char *suffix)
{
	static unsigned counter;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return xasprintf("%s/tmp/%d-%ld%09ld-%u%s", s->root, getpid(), (long)ts.tv_sec, ts.tv_nsec,
	                 __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED), suffix);
}

/* gc takes the lock exclusively; commits take it shared, so gc never sees a fragment between
 * its rename into place and its ref. */
static int store_lock(const struct store *s, int op)
{
	_cleanup_free_ char *p = path_join(s->root, "lock");
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	while (flock(fd, op) < 0)
		if (errno != EINTR) {
			int r = -errno;
			close(fd);
			return r;
		}
	return fd;
}

static int write_tmp(const struct store *s, const void *data, size_t len, char **out)
{
	_cleanup_free_ char *p = store_tmp_path(s, "");
	_cleanup_close_ int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int r = write_all(fd, data, len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0) {
		unlink(p);
		return r;
	}
	*out = TAKE_PTR(p);
	return 0;
}

static bool file_equals(const char *path, const void *data, size_t len)
{
	_cleanup_free_ char *cur = NULL;
	size_t n;
	return read_file(path, len + 1, &cur, &n) == 0 && n == len && memcmp(cur, data, len) == 0;
}

static int set_ref_locked(struct store *s, const char *name, const char *digest,
                          struct mosaic_error *err)
{
	if (!*name || strchr(name, '/') || name[0] == '.')
		return mosaic_errorf(err, -EINVAL, "invalid ref name '%s'", name);
	_cleanup_free_ char *p = xasprintf("%s/refs/%s", s->root, name);
	_cleanup_free_ char *line = xasprintf("%s\n", digest);
	if (file_equals(p, line, strlen(line)))
		return 0;
	int r = write_file_atomic(p, line, strlen(line), 0644);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", p, strerror(-r));
	return 0;
}

int store_set_ref(struct store *s, const char *name, const char *digest, struct mosaic_error *err)
{
	_cleanup_close_ int lock = store_lock(s, LOCK_SH);
	if (lock < 0)
		return mosaic_errorf(err, lock, "store %s: cannot lock: %s", s->root,
		                     strerror(-lock));
	return set_ref_locked(s, name, digest, err);
}

int store_commit(struct store *s, const char *tmp_image, const char *digest, const char *ref,
                 const char *desc, size_t desc_len, const void *sig, size_t sig_len,
                 struct mosaic_error *err)
{
	_cleanup_free_ char *img = store_object_path(s, digest, ".sqfs");
	_cleanup_free_ char *json = store_object_path(s, digest, ".json");
	_cleanup_free_ char *sigp = store_object_path(s, digest, ".json.sig");
	_cleanup_free_ char *dir = xasprintf("%s/sha256/%.2s", s->root, digest);
	_cleanup_free_ char *tmp_json = NULL, *tmp_sig = NULL;
	int r;

	{
		_cleanup_close_ int fd = open(tmp_image, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fsync(fd) < 0)
			return mosaic_errorf(err, -errno, "%s: %m", tmp_image);
	}
	if ((r = mkdir_p(dir, 0755)) < 0)
		return mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
	_cleanup_close_ int lock = store_lock(s, LOCK_SH);
	if (lock < 0)
		return mosaic_errorf(err, lock, "store %s: cannot lock: %s", s->root,
		                     strerror(-lock));

	/* The image is named by its content: if it is there already, it is this one. */
	if (access(img, F_OK) == 0)
		unlink(tmp_image);
	else if (rename(tmp_image, img) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", img);

	/* Two commits of one image with different descriptors (one package under two names) may
	 * run at once, on threads or in processes, each holding the store lock shared: the
	 * descriptor and its signature are replaced as a pair under the image's own lock, else one
	 * commit's descriptor could end up beside the other's signature. */
	_cleanup_close_ int pair_lock = open(img, O_RDONLY | O_CLOEXEC);
	if (pair_lock < 0)
		return mosaic_errorf(err, -errno, "%s: %m", img);
	while (flock(pair_lock, LOCK_EX) < 0)
		if (errno != EINTR)
			return mosaic_errorf(err, -errno, "%s: cannot lock: %m", img);

	bool same = file_equals(json, desc, desc_len) &&
	            (sig ? file_equals(sigp, sig, sig_len) : access(sigp, F_OK) < 0);
	if (!same) {
		if ((r = write_tmp(s, desc, desc_len, &tmp_json)) < 0 ||
		    (sig && (r = write_tmp(s, sig, sig_len, &tmp_sig)) < 0)) {
			if (tmp_json)
				unlink(tmp_json);
			return mosaic_errorf(err, r, "store %s: writing descriptor: %s", s->root,
			                     strerror(-r));
		}
		/* A stale signature would not match the new descriptor: drop it first. */
		unlink(sigp);
		if (rename(tmp_json, json) < 0 || (tmp_sig && rename(tmp_sig, sigp) < 0)) {
			r = mosaic_errorf(err, -errno, "store %s: %m", s->root);
			unlink(tmp_json);
			if (tmp_sig)
				unlink(tmp_sig);
			return r;
		}
	}
	if ((r = fsync_parent(img)) < 0)
		return mosaic_errorf(err, r, "%s: fsync: %s", dir, strerror(-r));
	if (ref)
		return set_ref_locked(s, ref, digest, err);
	return 0;
}

static int copy_fd(int in, int out)
{
	for (;;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
		if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL)) {
			char buf[1 << 16];
			n = read(in, buf, sizeof(buf));
			if (n > 0 && write_all(out, buf, n) < 0)
				return -errno;
		}
		if (n < 0)
			return -errno;
		if (n == 0)
			return 0;
	}
}

int store_add(struct store *s, struct keyring *k, const char *image_path,
              char digest[SHA256_HEX_LEN + 1], struct mosaic_error *err)
{
	struct fragment_descriptor d = {0};
	int r = fragment_verify(k, image_path, &d, err);
	if (r < 0)
		return r;
	size_t n = strlen(image_path) - strlen(".sqfs");
	_cleanup_free_ char *json = xasprintf("%.*s.json", (int)n, image_path);
	_cleanup_free_ char *sigp = xasprintf("%.*s.json.sig", (int)n, image_path);
	_cleanup_free_ char *desc = NULL, *sig = NULL;
	size_t desc_len, sig_len;
	_cleanup_free_ char *tmp = store_tmp_path(s, ".sqfs");
	if ((r = read_file(json, 16u << 20, &desc, &desc_len)) < 0 ||
	    (r = read_file(sigp, 1u << 20, &sig, &sig_len)) < 0) {
		r = mosaic_errorf(err, r, "%s: %s", image_path, strerror(-r));
		goto out;
	}
	{
		_cleanup_close_ int in = open(image_path, O_RDONLY | O_CLOEXEC);
		_cleanup_close_ int outfd =
		    open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (in < 0 || outfd < 0 || (r = copy_fd(in, outfd)) < 0) {
			r = mosaic_errorf(err, r < 0 ? r : -errno, "copying %s into the store: %m",
			                  image_path);
			unlink(tmp);
			goto out;
		}
	}
	r = store_commit(s, tmp, d.digest, d.name, desc, desc_len, sig, sig_len, err);
	if (r < 0)
		unlink(tmp);
	else
		memcpy(digest, d.digest, SHA256_HEX_LEN + 1);
out:
	fragment_descriptor_clear(&d);
	return r;
}

/* ---- listing and lookup ------------------------------------------------------------------- */

static int list_objects(const struct store *s, const char *prefix, char ***out, size_t *n_out)
{
	_cleanup_free_ char *top = path_join(s->root, "sha256");
	char **v = NULL;
	size_t n = 0;
	DIR *d = opendir(top);
	if (!d)
		return -errno;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strlen(de->d_name) != 2 ||
		    (prefix &&
		     strncmp(de->d_name, prefix, strlen(prefix) < 2 ? strlen(prefix) : 2)))
			continue;
		_cleanup_free_ char *sub = path_join(top, de->d_name);
		DIR *sd = opendir(sub);
		if (!sd)
			continue;
		struct dirent *e;
		while ((e = readdir(sd))) {
			size_t l = strlen(e->d_name);
			if (l != SHA256_HEX_LEN + 5 || strcmp(e->d_name + SHA256_HEX_LEN, ".sqfs"))
				continue;
			char *hex = xstrndup(e->d_name, SHA256_HEX_LEN);
			_cleanup_free_ char *json = xasprintf("%s/%s.json", sub, hex);
			if (!is_sha256_hex(hex) || access(json, F_OK) < 0 ||
			    (prefix && strncmp(hex, prefix, strlen(prefix)))) {
				free(hex);
				continue;
			}
			v = xrealloc(v, (n + 1) * sizeof(*v));
			v[n++] = hex;
		}
		closedir(sd);
	}
	closedir(d);
	qsort_safe(v, n, sizeof(*v), strcmp_ptr);
	*out = v;
	*n_out = n;
	return 0;
}

int store_list(const struct store *s, char ***digests, size_t *n, struct mosaic_error *err)
{
	int r = list_objects(s, NULL, digests, n);
	if (r < 0)
		return mosaic_errorf(err, r, "store %s: %s", s->root, strerror(-r));
	return 0;
}

int store_resolve(const struct store *s, const char *ref, char digest[SHA256_HEX_LEN + 1],
                  struct mosaic_error *err)
{
	size_t skip = strncmp(ref, "sha256:", 7) == 0 ? 7 : 0;
	const char *hex = ref + skip;
	size_t l = strlen(ref) - skip;
	bool hexish = l >= 4 && l <= SHA256_HEX_LEN && strspn(hex, "0123456789abcdef") == l;
	if (hexish) {
		char **v;
		size_t n;
		if (list_objects(s, hex, &v, &n) == 0) {
			if (n == 1)
				memcpy(digest, v[0], SHA256_HEX_LEN + 1);
			strv_free(v, n);
			if (n == 1)
				return 0;
			if (n > 1)
				return mosaic_errorf(
				    err, -EINVAL, "'%s' is ambiguous: %zu fragments start with it",
				    ref, n);
		}
	}
	if (!strchr(ref, '/') && ref[0] != '.') {
		_cleanup_free_ char *p = xasprintf("%s/refs/%s", s->root, ref);
		_cleanup_free_ char *line = NULL;
		if (read_file(p, 256, &line, NULL) == 0) {
			line[strcspn(line, "\n")] = '\0';
			if (is_sha256_hex(line)) {
				memcpy(digest, line, SHA256_HEX_LEN + 1);
				return 0;
			}
		}
	}
	return mosaic_errorf(err, -ENOENT, "no fragment '%s' in store %s (try 'mosaic store list')",
	                     ref, s->root);
}

/* ---- gc ----------------------------------------------------------------------------------- */

static void collect_roots(const char *dir, char ***keep, size_t *n)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		_cleanup_free_ char *p = path_join(dir, de->d_name);
		_cleanup_free_ char *text = NULL;
		if (read_file(p, 64u << 20, &text, NULL) < 0)
			continue;
		for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
			line += strspn(line, " \t");
			if (strncmp(line, "sha256:", 7) == 0)
				line += 7;
			line[strcspn(line, " \t")] = '\0';
			if (!is_sha256_hex(line))
				continue;
			*keep = xrealloc(*keep, (*n + 1) * sizeof(**keep));
			(*keep)[(*n)++] = xstrdup(line);
		}
	}
	closedir(d);
}

static uint64_t unlink_sized(const char *p, bool dry_run)
{
	struct stat st;
	if (lstat(p, &st) < 0)
		return 0;
	if (!dry_run && unlink(p) < 0)
		return 0;
	return st.st_size;
}

static void gc_dir_files(const char *dir, bool dry_run, time_t now, struct store_gc_stats *st,
                         bool only_tmp)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' && (!de->d_name[1] || de->d_name[1] == '.'))
			continue;
		if (only_tmp && !strstr(de->d_name, ".tmp-"))
			continue;
		_cleanup_free_ char *p = path_join(dir, de->d_name);
		struct stat sb;
		if (lstat(p, &sb) < 0 || !S_ISREG(sb.st_mode) || now - sb.st_mtime < STALE_SECONDS)
			continue;
		st->freed_bytes += unlink_sized(p, dry_run);
		st->removed_temp++;
	}
	closedir(d);
}

int store_gc(struct store *s, bool dry_run, struct store_gc_stats *st, struct mosaic_error *err)
{
	memset(st, 0, sizeof(*st));
	_cleanup_close_ int lock = store_lock(s, LOCK_EX);
	if (lock < 0)
		return mosaic_errorf(err, lock, "store %s: cannot lock: %s", s->root,
		                     strerror(-lock));
	char **keep = NULL;
	size_t n_keep = 0;
	_cleanup_free_ char *refs = path_join(s->root, "refs"),
	                    *roots = path_join(s->root, "roots");
	collect_roots(refs, &keep, &n_keep);
	collect_roots(roots, &keep, &n_keep);
	qsort_safe(keep, n_keep, sizeof(*keep), strcmp_ptr);

	time_t now = time(NULL);
	_cleanup_free_ char *tmp = path_join(s->root, "tmp");
	gc_dir_files(tmp, dry_run, now, st, false);

	_cleanup_free_ char *top = path_join(s->root, "sha256");
	DIR *d = opendir(top);
	if (!d) {
		strv_free(keep, n_keep);
		return mosaic_errorf(err, -errno, "%s: %m", top);
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strlen(de->d_name) != 2)
			continue;
		_cleanup_free_ char *sub = path_join(top, de->d_name);
		gc_dir_files(sub, dry_run, now, st, true);
		DIR *sd = opendir(sub);
		if (!sd)
			continue;
		struct dirent *e;
		while ((e = readdir(sd))) {
			if (strlen(e->d_name) < SHA256_HEX_LEN || strstr(e->d_name, ".tmp-"))
				continue;
			_cleanup_free_ char *hex = xstrndup(e->d_name, SHA256_HEX_LEN);
			const char *suffix = e->d_name + SHA256_HEX_LEN;
			if (!is_sha256_hex(hex) || strcmp(suffix, ".sqfs"))
				continue;
			char *key = hex;
			bool referenced =
			    n_keep && bsearch(&key, keep, n_keep, sizeof(*keep), strcmp_ptr);
			_cleanup_free_ char *json = xasprintf("%s/%s.json", sub, hex);
			if (referenced && access(json, F_OK) == 0) {
				st->kept++;
				continue;
			}
			const char *suffixes[] = {".json.sig", ".json", ".sqfs"};
			for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
				_cleanup_free_ char *p =
				    xasprintf("%s/%s%s", sub, hex, suffixes[i]);
				st->freed_bytes += unlink_sized(p, dry_run);
			}
			st->removed_fragments++;
		}
		closedir(sd);
	}
	closedir(d);
	strv_free(keep, n_keep);
	return 0;
}

bool store_has(const struct store *s, const char *digest)
{
	if (!is_sha256_hex(digest))
		return false;
	_cleanup_free_ char *p = store_object_path(s, digest, ".json.sig");
	return access(p, R_OK) == 0;
}
