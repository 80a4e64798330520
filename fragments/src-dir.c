/* Directory sources: a sorted walk that keeps owners, modes, device numbers, hard links,
 * xattrs and mtimes as the directory has them (or one forced owner with --owner), and overlayfs
 * upper directories, whose trusted.overlay.* xattrs are sorted into format and bookkeeping. */
#include "fragments/internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

struct inode_seen {
	dev_t dev;
	ino_t ino;
	char *path;
};

struct walk {
	const char *root;
	/* where entries go: an image being written, or fn (fragment_walk_dir) */
	struct fwriter *w;
	int (*fn)(void *ctx, const struct fragment_entry *e);
	void *ctx;
	const struct fragment_create_options *o;
	struct inode_seen *seen;
	size_t n_seen, cap_seen;
	char *xbuf, *vbuf;
};

static ssize_t fd_read(void *ctx, void *buf, size_t len)
{
	ssize_t n;
	do
		n = read(*(int *)ctx, buf, len);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

/* An overlayfs upper's trusted.overlay.* xattr: 1 keeps it (the opaque marker, part of the
 * format), 0 drops it (bookkeeping that only means something to the mount that wrote it), or
 * an error for state a fragment cannot carry. */
static int upper_xattr(struct walk *wk, const char *rel, const char *key, const char *value,
                       size_t len, struct mosaic_error *err)
{
	static const char *const bookkeeping[] = {"origin", "impure", "nlink",
	                                          "upper",  "uuid",   "protattr"};
	const char *what = key + strlen("trusted.overlay.");
	if (strcmp(what, "opaque") == 0) {
		if (len == 1 && value[0] == 'y')
			return 1;
		return mosaic_errorf(err, -EINVAL,
		                     "%s/%s: trusted.overlay.opaque is '%.*s', not 'y'; only plain "
		                     "opaque directories can be frozen",
		                     wk->root, rel, (int)(len < 8 ? len : 8), value);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bookkeeping); i++)
		if (strcmp(what, bookkeeping[i]) == 0)
			return 0;
	if (strcmp(what, "redirect") == 0)
		return mosaic_errorf(
		    err, -EINVAL,
		    "%s/%s: a directory renamed with overlayfs's redirect_dir=on "
		    "(trusted.overlay.redirect); mosaic mounts with redirect_dir=off "
		    "and cannot freeze a redirect: rename it back and copy it "
		    "(cp -a, then rm -r) instead",
		    wk->root, rel);
	if (strcmp(what, "metacopy") == 0)
		return mosaic_errorf(
		    err, -EINVAL,
		    "%s/%s: a metadata-only copy-up (trusted.overlay.metacopy) whose "
		    "data lies in a lower layer; mosaic mounts with metacopy=off and "
		    "cannot freeze it: write the file once to copy its data up",
		    wk->root, rel);
	return mosaic_errorf(err, -EINVAL,
	                     "%s/%s: overlayfs xattr %s is not one mosaic's upper format has; "
	                     "refusing to freeze what it cannot interpret",
	                     wk->root, rel, key);
}

static int read_xattrs(struct walk *wk, int dfd, const char *name, const char *rel,
                       struct fxattr **out, size_t *n_out, struct mosaic_error *err)
{
	_cleanup_free_ char *proc = xasprintf("/proc/self/fd/%d/%s", dfd, name);
	ssize_t len = llistxattr(proc, wk->xbuf, 65536);
	*n_out = 0;
	if (len < 0) {
		if (errno == ENOTSUP || errno == ENODATA)
			return 0;
		return mosaic_errorf(err, -errno, "%s: listing xattrs: %m", rel);
	}
	size_t n = 0, voff = 0;
	for (char *k = wk->xbuf; k < wk->xbuf + len; k += strlen(k) + 1)
		n++;
	struct fxattr *x = xcalloc(n, sizeof(*x));
	n = 0;
	for (char *k = wk->xbuf; k < wk->xbuf + len; k += strlen(k) + 1) {
		/* system.* (ACLs) and others squashfs cannot hold are left behind. */
		if (strncmp(k, "user.", 5) && strncmp(k, "trusted.", 8) &&
		    strncmp(k, "security.", 9))
			continue;
		ssize_t vl = lgetxattr(proc, k, wk->vbuf + voff, 65536 * 4 - voff);
		if (vl < 0) {
			free(x);
			return mosaic_errorf(err, -errno, "%s: reading xattr %s: %m", rel, k);
		}
		if (wk->o->overlay_upper && strncmp(k, "trusted.overlay.", 16) == 0) {
			int keep = upper_xattr(wk, rel, k, wk->vbuf + voff, vl, err);
			if (keep < 0) {
				free(x);
				return keep;
			}
			if (!keep)
				continue;
		}
		x[n++] = (struct fxattr){.key = k, .value = wk->vbuf + voff, .len = vl};
		voff += vl;
	}
	*out = x;
	*n_out = n;
	return 0;
}

static int walk_dir(struct walk *wk, int dfd, const char *rel, unsigned depth,
                    struct mosaic_error *err);

/* fragment_walk_dir's entry for what add_one found. */
static int visit(struct walk *wk, const char *name, const char *rel, unsigned depth,
                 const struct stat *st, const struct fxattr *xa, size_t nx, const char *target,
                 uint32_t inode_number)
{
	struct fragment_xattr *fx = xcalloc(nx + 1, sizeof(*fx));
	for (size_t i = 0; i < nx; i++)
		fx[i] = (struct fragment_xattr){
		    .name = (char *)xa[i].key, .value = (void *)xa[i].value, .len = xa[i].len};
	struct fragment_entry e = {
	    .path = rel,
	    .name = name,
	    .depth = depth,
	    .mode = st->st_mode,
	    .uid = st->st_uid,
	    .gid = st->st_gid,
	    .size = S_ISREG(st->st_mode) || S_ISLNK(st->st_mode) ? (uint64_t)st->st_size : 0,
	    .mtime = st->st_mtim.tv_sec,
	    .mtime_nsec = st->st_mtim.tv_nsec,
	    .nlink = S_ISDIR(st->st_mode) ? 2 : st->st_nlink,
	    .rdev = st->st_rdev,
	    .link = S_ISLNK(st->st_mode) ? target : NULL,
	    .inode_id = st->st_ino,
	    .inode_number = inode_number,
	    .xattrs = fx,
	    .n_xattrs = nx,
	};
	int r = wk->fn(wk->ctx, &e);
	free(fx);
	return r;
}

static int add_one(struct walk *wk, int dfd, const char *name, const char *rel, unsigned depth,
                   struct mosaic_error *err)
{
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", rel);

	/* Whiteouts are markers, not files: kernel overlayfs links them all to one shared inode in
	 * its work dir, which must not become a hard link in the image. */
	bool whiteout = S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0);
	uint32_t inode_number = 0;
	if (!S_ISDIR(st.st_mode) && st.st_nlink > 1 && !whiteout) {
		for (size_t i = 0; i < wk->n_seen && !inode_number; i++)
			if (wk->seen[i].dev == st.st_dev && wk->seen[i].ino == st.st_ino) {
				if (!wk->fn)
					return fwriter_add_hardlink(wk->w, rel, wk->seen[i].path,
					                            err);
				inode_number = i + 1;
			}
		if (!inode_number) {
			if (wk->n_seen == wk->cap_seen) {
				wk->cap_seen = wk->cap_seen ? wk->cap_seen * 2 : 64;
				wk->seen = xrealloc(wk->seen, wk->cap_seen * sizeof(*wk->seen));
			}
			wk->seen[wk->n_seen++] =
			    (struct inode_seen){st.st_dev, st.st_ino, xstrdup(rel)};
			inode_number = wk->n_seen;
		}
	}

	_cleanup_free_ struct fxattr *xa = NULL;
	size_t nx = 0;
	int r = read_xattrs(wk, dfd, name, rel, &xa, &nx, err);
	if (r < 0)
		return r;
	char target[PATH_MAX + 1] = "";
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(dfd, name, target, PATH_MAX);
		if (n < 0)
			return mosaic_errorf(err, -errno, "%s: readlink: %m", rel);
		target[n] = '\0';
	}
	struct fentry e = {
	    .mode = st.st_mode,
	    .uid = wk->o->owner_set ? wk->o->uid : st.st_uid,
	    .gid = wk->o->owner_set ? wk->o->gid : st.st_gid,
	    .mtime = st.st_mtim.tv_sec,
	    .rdev = st.st_rdev,
	    .link = target,
	    .xattrs = xa,
	    .n_xattrs = nx,
	};
	if (wk->fn) {
		r = visit(wk, name, rel, depth, &st, xa, nx, target, inode_number);
	} else if (S_ISREG(st.st_mode)) {
		_cleanup_close_ int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return mosaic_errorf(err, -errno, "%s: %m", rel);
		return fwriter_add(wk->w, rel, &e, fd_read, &fd, err);
	} else
		r = fwriter_add(wk->w, rel, &e, NULL, NULL, err);
	if (r < 0 || !S_ISDIR(st.st_mode))
		return r;
	_cleanup_close_ int sub =
	    openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (sub < 0)
		return mosaic_errorf(err, -errno, "%s: %m", rel);
	return walk_dir(wk, sub, rel, depth + 1, err);
}

static int walk_dir(struct walk *wk, int dfd, const char *rel, unsigned depth,
                    struct mosaic_error *err)
{
	int dup_fd = dup(dfd);
	if (dup_fd < 0)
		return -errno;
	DIR *d = fdopendir(dup_fd);
	if (!d) {
		close(dup_fd);
		return mosaic_errorf(err, -errno, "%s: %m", rel);
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	/* Sorted, so that the same tree always gives the same data block order. */
	qsort_safe(names, n, sizeof(*names), strcmp_ptr);
	int r = 0;
	for (size_t i = 0; r == 0 && i < n; i++) {
		_cleanup_free_ char *child = *rel ? path_join(rel, names[i]) : xstrdup(names[i]);
		r = add_one(wk, dfd, names[i], child, depth, err);
	}
	strv_free(names, n);
	return r;
}

int src_dir_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err)
{
	_cleanup_close_ int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	struct stat st;
	if (fstat(dfd, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	struct walk wk = {
	    .root = path, .w = w, .o = o, .xbuf = xmalloc(65536), .vbuf = xmalloc(65536 * 4)};
	struct fentry root = {
	    .mode = st.st_mode,
	    .uid = o->owner_set ? o->uid : st.st_uid,
	    .gid = o->owner_set ? o->gid : st.st_gid,
	    .mtime = st.st_mtim.tv_sec,
	};
	int r = fwriter_add(w, "", &root, NULL, NULL, err);
	if (r == 0)
		r = walk_dir(&wk, dfd, "", 1, err);
	for (size_t i = 0; i < wk.n_seen; i++)
		free(wk.seen[i].path);
	free(wk.seen);
	free(wk.xbuf);
	free(wk.vbuf);
	if (r < 0)
		return r;
	m->type = xstrdup(o->overlay_upper ? "upper" : "dir");
	_cleanup_free_ char *copy = xstrdup(path);
	char *base = strrchr(copy, '/');
	while (base && base[1] == '\0' && base != copy) {
		*base = '\0';
		base = strrchr(copy, '/');
	}
	m->name = xstrdup(base ? base + 1 : copy);
	return 0;
}

int fragment_walk_dir(const char *dir, int (*fn)(void *ctx, const struct fragment_entry *e),
                      void *ctx, struct mosaic_error *err)
{
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", dir);
	struct stat st;
	if (fstat(dfd, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", dir);
	static const struct fragment_create_options as_is = {0};
	struct walk wk = {.root = dir,
	                  .fn = fn,
	                  .ctx = ctx,
	                  .o = &as_is,
	                  .xbuf = xmalloc(65536),
	                  .vbuf = xmalloc(65536 * 4)};
	_cleanup_free_ struct fxattr *xa = NULL;
	size_t nx = 0;
	int r = read_xattrs(&wk, dfd, ".", "", &xa, &nx, err);
	if (r == 0)
		r = visit(&wk, "", "", 0, &st, xa, nx, "", 0);
	if (r == 0)
		r = walk_dir(&wk, dfd, "", 1, err);
	for (size_t i = 0; i < wk.n_seen; i++)
		free(wk.seen[i].path);
	free(wk.seen);
	free(wk.xbuf);
	free(wk.vbuf);
	return r;
}
