/* An upper directory (kernel overlayfs's format) against the index below it: what the upper adds,
 * modifies and deletes, path by path, for 'mosaic diff' and 'mosaic origin'. */
#include "compose/compose.h"
#include "fragments/fragment.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define OVL_PREFIX "trusted.overlay."
#define CHUNK      (128 * 1024)

const char *compose_change_name(enum compose_change c)
{
	switch (c) {
	case COMPOSE_UNTOUCHED:
		return "untouched";
	case COMPOSE_ADDED:
		return "added";
	case COMPOSE_MODIFIED:
		return "modified";
	case COMPOSE_DELETED:
		return "deleted";
	case COMPOSE_UNCHANGED:
		return "unchanged";
	}
	return "?";
}

struct differ {
	const struct compose_index *idx;
	char *const *images;
	struct fragment_image **open; /* [fragment], opened on the first content comparison */
	bool all;
	struct compose_diff_entry *v;
	size_t n, cap;
	struct mosaic_error *err;
};

static void differ_clear(struct differ *d)
{
	uint32_t nf = compose_index_fragments(d->idx);
	for (uint32_t i = 0; d->open && i < nf; i++)
		fragment_image_close(d->open[i]);
	free(d->open);
}

static void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

static bool is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

static bool is_opaque(const char *path)
{
	char v[2];
	return lgetxattr(path, OVL_PREFIX "opaque", v, sizeof(v)) == 1 && v[0] == 'y';
}

static void add(struct differ *d, const char *path, enum compose_change c, mode_t type,
                unsigned what, uint32_t ino)
{
	if (d->n == d->cap) {
		d->cap = d->cap ? d->cap * 2 : 64;
		d->v = xrealloc(d->v, d->cap * sizeof(*d->v));
	}
	d->v[d->n++] = (struct compose_diff_entry){.path = xstrdup(*path ? path : "/"),
	                                           .change = c,
	                                           .type = type & S_IFMT,
	                                           .what = what,
	                                           .ino = ino};
}

/* ---- comparing one upper object with its index inode ---------------------------------------- */

static int xattrs_differ(const struct compose_index *idx, uint32_t ino, const char *upath)
{
	uint32_t n;
	const struct compose_xattr *x = compose_index_xattrs(idx, ino, &n);
	ssize_t len = llistxattr(upath, NULL, 0);
	if (len < 0)
		return errno == ENOTSUP ? n > 0 : -errno;
	_cleanup_free_ char *names = xmalloc(len + 1);
	len = llistxattr(upath, names, len);
	if (len < 0)
		return -errno;
	/* overlayfs's own xattrs (opaque, origin, impure) are not part of what the view shows */
	uint32_t upper_count = 0;
	for (char *p = names; p < names + len; p += strlen(p) + 1)
		upper_count += strncmp(p, OVL_PREFIX, strlen(OVL_PREFIX)) != 0;
	if (upper_count != n)
		return 1;
	for (uint32_t i = 0; i < n; i++) {
		_cleanup_free_ char *name =
		    xstrndup(compose_index_string(idx, x[i].name_off), x[i].name_len);
		_cleanup_free_ char *value = xmalloc(x[i].value_len + 1);
		ssize_t l = lgetxattr(upath, name, value, x[i].value_len + 1);
		if (l < 0 && errno != ENODATA && errno != ERANGE)
			return -errno;
		if (l != (ssize_t)x[i].value_len ||
		    memcmp(value, compose_index_string(idx, x[i].value_off), l) != 0)
			return 1;
	}
	return 0;
}

static int content_differs(struct differ *d, const struct compose_inode *in, const char *upath,
                           uint64_t upper_size)
{
	if (upper_size != in->size)
		return 1;
	if (in->size == 0)
		return 0;
	if (in->fragment == COMPOSE_NO_FRAGMENT || !d->images)
		return 1; /* nothing to compare with: say changed rather than hide a change */
	if (!d->open)
		d->open = xcalloc(compose_index_fragments(d->idx), sizeof(*d->open));
	if (!d->open[in->fragment]) {
		int r =
		    fragment_image_open(d->images[in->fragment], &d->open[in->fragment], d->err);
		if (r < 0)
			return r;
	}
	_cleanup_close_ int fd = open(upath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return mosaic_errorf(d->err, -errno, "%s: %m", upath);
	_cleanup_free_ char *a = xmalloc(CHUNK), *b = xmalloc(CHUNK);
	for (uint64_t off = 0; off < in->size;) {
		size_t want = in->size - off < CHUNK ? in->size - off : CHUNK;
		size_t got_a = 0, got_b = 0;
		while (got_a < want) {
			ssize_t r = pread(fd, a + got_a, want - got_a, off + got_a);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return mosaic_errorf(d->err, -errno, "reading %s: %m", upath);
			if (r == 0)
				return 1; /* the file shrank under us */
			got_a += r;
		}
		while (got_b < want) {
			ssize_t r = fragment_image_read(d->open[in->fragment], in->frag_inode,
			                                off + got_b, b + got_b, want - got_b);
			if (r < 0)
				return mosaic_errorf(d->err, r, "reading %s from %s: %s", upath,
				                     d->images[in->fragment], strerror(-r));
			if (r == 0)
				return mosaic_errorf(d->err, -EIO, "%s: short read from %s", upath,
				                     d->images[in->fragment]);
			got_b += r;
		}
		if (memcmp(a, b, want) != 0)
			return 1;
		off += want;
	}
	return 0;
}

/* The COMPOSE_DIFF_* bits that differ between the upper object at upath and index inode ino;
 * -errno on a read error. */
static int compare(struct differ *d, uint32_t ino, const char *upath, const struct stat *st)
{
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	if ((st->st_mode & S_IFMT) != (in->mode & S_IFMT))
		return COMPOSE_DIFF_TYPE;
	int what = 0, r;
	if ((st->st_mode & 07777) != (in->mode & 07777))
		what |= COMPOSE_DIFF_MODE;
	if (st->st_uid != in->uid || st->st_gid != in->gid)
		what |= COMPOSE_DIFF_OWNER;
	if ((r = xattrs_differ(d->idx, ino, upath)) < 0)
		return mosaic_errorf(d->err, r, "%s: xattrs: %s", upath, strerror(-r));
	if (r)
		what |= COMPOSE_DIFF_XATTRS;
	if (S_ISLNK(st->st_mode)) {
		char target[4096];
		ssize_t l = readlink(upath, target, sizeof(target));
		if (l < 0)
			return mosaic_errorf(d->err, -errno, "%s: %m", upath);
		if ((size_t)l != in->data_len ||
		    memcmp(target, compose_index_string(d->idx, in->data_off), l) != 0)
			what |= COMPOSE_DIFF_TARGET;
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		if (major(st->st_rdev) != in->rdev >> 20 ||
		    minor(st->st_rdev) != (in->rdev & 0xfffff))
			what |= COMPOSE_DIFF_RDEV;
	} else if (S_ISREG(st->st_mode)) {
		if ((r = content_differs(d, in, upath, st->st_size)) < 0)
			return r;
		if (r)
			what |= COMPOSE_DIFF_CONTENT;
	}
	return what;
}

/* ---- walking the upper ---------------------------------------------------------------------- */

/* ino and everything below it, deleted from the view. */
static void add_deleted(struct differ *d, uint32_t ino, const char *path)
{
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	add(d, path, COMPOSE_DELETED, in->mode, 0, ino);
	uint32_t n;
	const struct compose_dirent *de = compose_index_dirents(d->idx, ino, &n);
	for (uint32_t i = 0; i < n; i++) {
		_cleanup_free_ char *child =
		    xasprintf("%s/%.*s", path, (int)de[i].name_len,
		              compose_index_string(d->idx, de[i].name_off));
		add_deleted(d, de[i].ino, child);
	}
}

static int walk(struct differ *d, const char *upath, const char *vpath, uint32_t lower,
                bool opaque);

/* One upper entry at upath, shown at vpath, over index inode lo (0: none); in_opaque: its
 * directory is opaque or lies in one. */
static int entry(struct differ *d, const char *upath, const char *vpath, uint32_t lo,
                 bool in_opaque)
{
	struct stat st;
	if (lstat(upath, &st) < 0)
		return mosaic_errorf(d->err, -errno, "%s: %m", upath);
	if (is_whiteout(&st)) {
		if (lo)
			add_deleted(d, lo, vpath);
		return 0; /* a whiteout over nothing changes nothing */
	}
	const struct compose_inode *in = lo ? compose_index_inode(d->idx, lo) : NULL;
	if (!lo)
		add(d, vpath, COMPOSE_ADDED, st.st_mode, 0, 0);
	else {
		int what = compare(d, lo, upath, &st);
		if (what < 0)
			return what;
		if (what)
			add(d, vpath, COMPOSE_MODIFIED, st.st_mode, what, lo);
		else if (d->all)
			add(d, vpath, COMPOSE_UNCHANGED, st.st_mode, 0, lo);
		/* a non-directory over a directory hides all of it */
		if (S_ISDIR(in->mode) && !S_ISDIR(st.st_mode)) {
			uint32_t n;
			const struct compose_dirent *de = compose_index_dirents(d->idx, lo, &n);
			for (uint32_t i = 0; i < n; i++) {
				_cleanup_free_ char *child =
				    xasprintf("%s/%.*s", vpath, (int)de[i].name_len,
				              compose_index_string(d->idx, de[i].name_off));
				add_deleted(d, de[i].ino, child);
			}
		}
	}
	if (!S_ISDIR(st.st_mode))
		return 0;
	uint32_t below = in && S_ISDIR(in->mode) ? lo : 0;
	/* a new directory over a directory hides what was below: overlayfs marks it opaque; and
	 * below an opaque directory it looks at no lower layer at any depth, marked or not */
	return walk(d, upath, vpath, below, below && (in_opaque || is_opaque(upath)));
}

static int walk(struct differ *d, const char *upath, const char *vpath, uint32_t lower, bool opaque)
{
	_cleanup_(closedirp) DIR *dir = opendir(upath);
	if (!dir)
		return mosaic_errorf(d->err, -errno, "%s: %m", upath);
	struct dirent *de;
	int r;
	while ((errno = 0, de = readdir(dir))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		_cleanup_free_ char *up = path_join(upath, de->d_name);
		_cleanup_free_ char *vp = xasprintf("%s/%s", vpath, de->d_name);
		uint32_t lo =
		    lower ? compose_index_lookup(d->idx, lower, de->d_name, strlen(de->d_name)) : 0;
		if ((r = entry(d, up, vp, lo, opaque)) < 0)
			return r;
	}
	if (errno)
		return mosaic_errorf(d->err, -errno, "reading %s: %m", upath);
	if (!opaque || !lower)
		return 0;
	/* an opaque directory hides every lower entry it does not have itself */
	uint32_t n;
	const struct compose_dirent *ld = compose_index_dirents(d->idx, lower, &n);
	for (uint32_t i = 0; i < n; i++) {
		_cleanup_free_ char *name =
		    xstrndup(compose_index_string(d->idx, ld[i].name_off), ld[i].name_len);
		_cleanup_free_ char *up = path_join(upath, name);
		_cleanup_free_ char *vp = xasprintf("%s/%s", vpath, name);
		struct stat st;
		if (lstat(up, &st) < 0 && errno == ENOENT)
			add_deleted(d, ld[i].ino, vp);
	}
	return 0;
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct compose_diff_entry *)a)->path,
	              ((const struct compose_diff_entry *)b)->path);
}

int compose_diff(const struct compose_index *idx, char *const *images, const char *upper, bool all,
                 struct compose_diff_entry **out, size_t *n, struct mosaic_error *err)
{
	_cleanup_(differ_clear) struct differ d = {
	    .idx = idx, .images = images, .all = all, .err = err};
	struct stat st;
	if (stat(upper, &st) < 0)
		return mosaic_errorf(err, -errno, "upper %s: %m", upper);
	if (!S_ISDIR(st.st_mode))
		return mosaic_errorf(err, -ENOTDIR, "upper %s: not a directory", upper);
	/* the root is always merged: its attributes are the upper's */
	int r = compare(&d, COMPOSE_ROOT_INO, upper, &st);
	if (r > 0)
		add(&d, "/", COMPOSE_MODIFIED, st.st_mode, r, COMPOSE_ROOT_INO);
	else if (r == 0 && all)
		add(&d, "/", COMPOSE_UNCHANGED, st.st_mode, 0, COMPOSE_ROOT_INO);
	if (r >= 0)
		r = walk(&d, upper, "", COMPOSE_ROOT_INO, is_opaque(upper));
	if (r < 0) {
		compose_diff_free(d.v, d.n);
		return r;
	}
	qsort_safe(d.v, d.n, sizeof(*d.v), entry_cmp);
	*out = d.v;
	*n = d.n;
	return 0;
}

void compose_diff_free(struct compose_diff_entry *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].path);
	free(v);
}

int compose_diff_path(const struct compose_index *idx, char *const *images, const char *upper,
                      const char *path, struct compose_diff_entry *out, struct mosaic_error *err)
{
	_cleanup_(differ_clear) struct differ d = {.idx = idx, .images = images, .err = err};
	_cleanup_free_ char *norm = xstrdup(path);
	if (path_normalise(norm) < 0)
		return mosaic_errorf(err, -EINVAL, "%s: a path in the view has no '..'", path);
	/* Follow the path down the index and the upper together. While the upper has each
	 * directory, it decides; once it lacks one, the index shows through unless an upper
	 * directory above was opaque, and a whiteout or an upper non-directory hides all below. */
	enum { PRESENT, THROUGH, HIDDEN } state = upper ? PRESENT : THROUGH;
	bool opaque = false; /* an upper directory on the way was opaque: no lower below it */
	uint32_t lo = COMPOSE_ROOT_INO;
	_cleanup_free_ char *up = upper ? xstrdup(upper) : NULL;
	struct stat st;
	if (up && lstat(up, &st) < 0)
		return mosaic_errorf(err, -errno, "upper %s: %m", upper);
	for (char *p = norm, *end; *p; p = *end ? end + 1 : end) {
		end = strchrnul(p, '/');
		char saved = *end;
		*end = '\0';
		lo = lo ? compose_index_lookup(idx, lo, p, strlen(p)) : 0;
		if (state == PRESENT) {
			if (!S_ISDIR(st.st_mode))
				state = HIDDEN;
			else {
				opaque = opaque || is_opaque(up);
				char *next = path_join(up, p);
				free(up);
				up = next;
				if (lstat(up, &st) < 0) {
					if (errno != ENOENT)
						return mosaic_errorf(err, -errno, "%s: %m", up);
					state = opaque ? HIDDEN : THROUGH;
				} else if (is_whiteout(&st))
					state = HIDDEN;
			}
		}
		*end = saved;
	}
	_cleanup_free_ char *vpath = xasprintf("/%s", norm);
	const struct compose_inode *in = lo ? compose_index_inode(idx, lo) : NULL;
	if (state != PRESENT) {
		if (!lo)
			return mosaic_errorf(err, -ENOENT,
			                     "%s: neither the fragments nor the upper "
			                     "have it",
			                     vpath);
		*out = (struct compose_diff_entry){.path = TAKE_PTR(vpath),
		                                   .change = state == THROUGH ? COMPOSE_UNTOUCHED
		                                                              : COMPOSE_DELETED,
		                                   .type = in->mode & S_IFMT,
		                                   .ino = lo};
		return 0;
	}
	int what = 0;
	if (lo && (what = compare(&d, lo, up, &st)) < 0)
		return what;
	*out = (struct compose_diff_entry){.path = TAKE_PTR(vpath),
	                                   .change = !lo    ? COMPOSE_ADDED
	                                             : what ? COMPOSE_MODIFIED
	                                                    : COMPOSE_UNCHANGED,
	                                   .type = st.st_mode & S_IFMT,
	                                   .what = what,
	                                   .ino = lo};
	return 0;
}
