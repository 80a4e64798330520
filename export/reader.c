/* The composed view read without a mount: the index gives every path's attributes, fragment
 * images the content, and an upper directory (overlayfs format) what configuration changed, with
 * the overlay rules compose_diff applies, so export and 'mosaic diff' never disagree. */
#include "compose/compose.h"
#include "export/internal.h"
#include "fragments/fragment.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define OVL_PREFIX "trusted.overlay."
#define CHUNK      (128 * 1024)
/* Fragment images kept open at once: a walk in path order touches fragments in turn, and a
 * system of a thousand packages must not run out of file descriptors. */
#define MAX_OPEN 64

struct open_image {
	struct fragment_image *im;
	uint64_t last_use;
	bool verified;
};

struct export_reader {
	const struct compose_index *idx;
	char *const *images;
	uint32_t n_frags;
	struct keyring *keyring;
	char *upper;
	/* the upper's changes (compose_diff with all), sorted by path, and the indices of the
	 * added ones sorted by parent directory, then name */
	struct compose_diff_entry *diff;
	size_t n_diff;
	size_t *added;
	size_t n_added;
	struct open_image *open;
	unsigned n_open;
	uint64_t clock;
	/* what a walk covers (export_reader_restrict): the view path its root is ("" for "/") and
	 * the view paths it reports but does not descend into */
	char *subtree;
	char **cut;
	size_t n_cut;
	/* files put in by export_reader_put_file, sorted by path */
	struct put_file *put;
	size_t n_put;
	/* content read so far for the progress callback, of the index's content bytes */
	void (*progress)(uint64_t bytes, uint64_t total, void *data);
	void *progress_data;
	uint64_t read_bytes, content_bytes;
};

struct put_file {
	char *vpath; /* "/etc/fstab" */
	void *data;
	size_t len;
	mode_t mode;
	int64_t mtime;
};

/* ---- the upper's changes ----------------------------------------------------------------------
 */

/* Splits a diff path ("/a/b") into its parent ("/a"; "" for "/a") and name. */
static void split(const char *path, const char **parent, size_t *plen, const char **name)
{
	const char *slash = strrchr(path, '/');
	*parent = path;
	*plen = slash - path;
	*name = slash + 1;
}

static int bytes_cmp(const char *a, size_t al, const char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	return c ? c : (al > bl) - (al < bl);
}

static const struct export_reader *sort_reader; /* qsort passes no context */

static int added_cmp(const void *x, const void *y)
{
	const char *pa, *pb, *na, *nb;
	size_t la, lb;
	split(sort_reader->diff[*(const size_t *)x].path, &pa, &la, &na);
	split(sort_reader->diff[*(const size_t *)y].path, &pb, &lb, &nb);
	int c = bytes_cmp(pa, la, pb, lb);
	return c ? c : strcmp(na, nb);
}

static const struct compose_diff_entry *diff_find(const struct export_reader *r, const char *vpath)
{
	size_t lo = 0, hi = r->n_diff;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(vpath, r->diff[mid].path);
		if (c == 0)
			return &r->diff[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* The first position in r->added whose parent is dir ("" for the root). */
static size_t added_first(const struct export_reader *r, const char *dir)
{
	size_t lo = 0, hi = r->n_added, dl = strlen(dir);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2, pl;
		const char *p, *n;
		split(r->diff[r->added[mid]].path, &p, &pl, &n);
		if (bytes_cmp(p, pl, dir, dl) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool added_in(const struct export_reader *r, size_t i, const char *dir)
{
	if (i >= r->n_added)
		return false;
	const char *p, *n;
	size_t pl;
	split(r->diff[r->added[i]].path, &p, &pl, &n);
	return pl == strlen(dir) && memcmp(p, dir, pl) == 0;
}

int export_reader_open(const struct export_reader_options *o, struct export_reader **out,
                       struct mosaic_error *err)
{
	struct export_reader *r = xcalloc(1, sizeof(*r));
	r->idx = o->idx;
	r->images = o->images;
	r->n_frags = compose_index_fragments(o->idx);
	r->keyring = o->keyring;
	r->open = xcalloc(r->n_frags ? r->n_frags : 1, sizeof(*r->open));
	r->progress = o->progress;
	r->progress_data = o->progress_data;
	for (uint32_t i = 1; o->progress && i <= compose_index_inodes(o->idx); i++) {
		const struct compose_inode *in = compose_index_inode(o->idx, i);
		if (S_ISREG(in->mode))
			r->content_bytes += in->size;
	}
	if (o->upper) {
		r->upper = xstrdup(o->upper);
		int e = compose_diff(o->idx, o->images, o->upper, true, &r->diff, &r->n_diff, err);
		if (e < 0) {
			export_reader_free(r);
			return e;
		}
		r->added = xcalloc(r->n_diff ? r->n_diff : 1, sizeof(*r->added));
		for (size_t i = 0; i < r->n_diff; i++)
			if (r->diff[i].change == COMPOSE_ADDED)
				r->added[r->n_added++] = i;
		sort_reader = r;
		qsort_safe(r->added, r->n_added, sizeof(*r->added), added_cmp);
		sort_reader = NULL;
	}
	*out = r;
	return 0;
}

void export_reader_free(struct export_reader *r)
{
	if (!r)
		return;
	for (uint32_t i = 0; i < r->n_frags; i++)
		fragment_image_close(r->open[i].im);
	free(r->open);
	compose_diff_free(r->diff, r->n_diff);
	free(r->added);
	free(r->upper);
	free(r->subtree);
	strv_free(r->cut, r->n_cut);
	for (size_t i = 0; i < r->n_put; i++) {
		free(r->put[i].vpath);
		free(r->put[i].data);
	}
	free(r->put);
	free(r);
}

void export_reader_restrict(struct export_reader *r, const char *subtree, char *const *cut,
                            size_t n_cut)
{
	free(r->subtree);
	strv_free(r->cut, r->n_cut);
	r->subtree = *subtree ? xasprintf("/%s", subtree) : NULL;
	r->cut = xcalloc(n_cut ? n_cut : 1, sizeof(*r->cut));
	r->n_cut = n_cut;
	for (size_t i = 0; i < n_cut; i++)
		r->cut[i] = xasprintf("/%s", cut[i]);
}

static int put_cmp(const void *a, const void *b)
{
	return strcmp(((const struct put_file *)a)->vpath, ((const struct put_file *)b)->vpath);
}

void export_reader_put_file(struct export_reader *r, const char *path, const void *data, size_t len,
                            mode_t mode, int64_t mtime)
{
	_cleanup_free_ char *vpath = xasprintf("/%s", path);
	struct put_file *p = NULL;
	for (size_t i = 0; i < r->n_put && !p; i++)
		if (strcmp(r->put[i].vpath, vpath) == 0)
			p = &r->put[i];
	if (!p) {
		r->put = xrealloc(r->put, (r->n_put + 1) * sizeof(*r->put));
		p = &r->put[r->n_put++];
		*p = (struct put_file){.vpath = TAKE_PTR(vpath)};
	}
	free(p->data);
	p->data = xmalloc(len ? len : 1);
	memcpy(p->data, data, len);
	p->len = len;
	p->mode = S_IFREG | (mode & 07777);
	p->mtime = mtime;
	qsort_safe(r->put, r->n_put, sizeof(*r->put), put_cmp);
}

static const struct put_file *put_find(const struct export_reader *r, const char *vpath)
{
	for (size_t i = 0; i < r->n_put; i++)
		if (strcmp(r->put[i].vpath, vpath) == 0)
			return &r->put[i];
	return NULL;
}

/* The first put file whose parent is dir, at or after position i (put is sorted by path, so a
 * directory's files are adjacent unless deeper paths sort between them; there are few). */
static size_t put_next(const struct export_reader *r, size_t i, const char *dir)
{
	for (; i < r->n_put; i++) {
		const char *p, *n;
		size_t pl;
		split(r->put[i].vpath, &p, &pl, &n);
		if (pl == strlen(dir) && memcmp(p, dir, pl) == 0)
			return i;
	}
	return r->n_put;
}

const struct compose_index *export_reader_index(const struct export_reader *r)
{
	return r->idx;
}

char *const *export_reader_images(const struct export_reader *r)
{
	return r->images;
}

/* ---- entries ----------------------------------------------------------------------------------
 */

struct walk {
	struct export_reader *r;
	int (*fn)(void *ctx, const struct export_entry *e);
	void *ctx;
	struct mosaic_error *err;
};

static int xattr_cmp(const void *a, const void *b)
{
	return strcmp(((const struct export_xattr *)a)->name,
	              ((const struct export_xattr *)b)->name);
}

/* An index inode as an entry; names and values are copied out (they are not NUL-terminated in
 * the string table) into *store, which the caller frees. */
static void from_index(const struct export_reader *r, uint32_t ino, struct export_entry *e,
                       struct export_xattr **xs, char **target)
{
	const struct compose_inode *in = compose_index_inode(r->idx, ino);
	e->mode = in->mode;
	e->uid = in->uid;
	e->gid = in->gid;
	e->size = S_ISREG(in->mode) || S_ISLNK(in->mode) ? in->size : 0;
	e->mtime = in->mtime;
	e->rdev = makedev(in->rdev >> 20, in->rdev & 0xfffff);
	e->nlink = in->nlink;
	e->ino = ino;
	e->link_id = !S_ISDIR(in->mode) && in->nlink > 1 ? ino : 0;
	if (S_ISLNK(in->mode)) {
		*target = xstrndup(compose_index_string(r->idx, in->data_off), in->data_len);
		e->link = *target;
		e->size = in->data_len;
	}
	uint32_t n;
	const struct compose_xattr *x = compose_index_xattrs(r->idx, ino, &n);
	*xs = xcalloc(n ? n : 1, sizeof(**xs));
	for (uint32_t i = 0; i < n; i++)
		(*xs)[i] = (struct export_xattr){
		    .name = xstrndup(compose_index_string(r->idx, x[i].name_off), x[i].name_len),
		    .value = compose_index_string(r->idx, x[i].value_off),
		    .len = x[i].value_len};
	e->xattrs = *xs;
	e->n_xattrs = n;
}

static void xattrs_free(struct export_xattr *xs, size_t n, bool values)
{
	for (size_t i = 0; xs && i < n; i++) {
		free((char *)xs[i].name);
		if (values)
			free((void *)xs[i].value);
	}
	free(xs);
}

/* An upper object as an entry (its values are allocated: xattrs_free with values). */
static int from_upper(const char *upath, struct export_entry *e, struct export_xattr **xs,
                      size_t *n_xs, char **target, struct mosaic_error *err)
{
	struct stat st;
	if (lstat(upath, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", upath);
	e->mode = st.st_mode;
	e->uid = st.st_uid;
	e->gid = st.st_gid;
	e->size = S_ISREG(st.st_mode) || S_ISLNK(st.st_mode) ? (uint64_t)st.st_size : 0;
	e->mtime = st.st_mtim.tv_sec;
	e->rdev = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? st.st_rdev : 0;
	e->nlink = st.st_nlink;
	e->upper_path = upath;
	/* The upper is one filesystem: its inode numbers, tagged apart from the index's. */
	e->link_id = !S_ISDIR(st.st_mode) && st.st_nlink > 1 ? (1ULL << 63) | st.st_ino : 0;
	if (S_ISLNK(st.st_mode)) {
		char buf[4096];
		ssize_t l = readlink(upath, buf, sizeof(buf));
		if (l < 0)
			return mosaic_errorf(err, -errno, "%s: %m", upath);
		*target = xstrndup(buf, l);
		e->link = *target;
		e->size = l;
	}
	*xs = NULL;
	*n_xs = 0;
	ssize_t len = llistxattr(upath, NULL, 0);
	if (len < 0 && (errno == ENOTSUP || errno == EOPNOTSUPP))
		len = 0;
	if (len < 0)
		return mosaic_errorf(err, -errno, "%s: listing xattrs: %m", upath);
	_cleanup_free_ char *names = xmalloc(len + 1);
	if (len > 0 && (len = llistxattr(upath, names, len)) < 0)
		return mosaic_errorf(err, -errno, "%s: listing xattrs: %m", upath);
	size_t count = 0;
	for (char *p = names; p < names + len; p += strlen(p) + 1)
		count++;
	*xs = xcalloc(count ? count : 1, sizeof(**xs));
	for (char *p = names; p < names + len; p += strlen(p) + 1) {
		if (strncmp(p, OVL_PREFIX, strlen(OVL_PREFIX)) == 0) {
			/* A redirect or metacopy upper needs lower data this reader does not follow
			 * (fragment create refuses them too). */
			if (strcmp(p, OVL_PREFIX "redirect") == 0 ||
			    strcmp(p, OVL_PREFIX "metacopy") == 0)
				return mosaic_errorf(err, -EOPNOTSUPP,
				                     "%s: overlayfs %s is not supported; mount the "
				                     "overlay with redirect_dir=off,metacopy=off",
				                     upath, p + strlen(OVL_PREFIX));
			continue;
		}
		ssize_t vl = lgetxattr(upath, p, NULL, 0);
		if (vl < 0)
			return mosaic_errorf(err, -errno, "%s: xattr %s: %m", upath, p);
		void *v = xmalloc(vl ? vl : 1);
		if ((vl = lgetxattr(upath, p, v, vl)) < 0) {
			free(v);
			return mosaic_errorf(err, -errno, "%s: xattr %s: %m", upath, p);
		}
		(*xs)[(*n_xs)++] = (struct export_xattr){.name = xstrdup(p), .value = v, .len = vl};
	}
	e->xattrs = *xs;
	e->n_xattrs = *n_xs;
	return 0;
}

static int visit(struct walk *w, const char *vpath, const char *name, unsigned depth, uint32_t lo,
                 const struct compose_diff_entry *de);

/* A file put in by export_reader_put_file where the view has none. */
static int visit_put(struct walk *w, const struct put_file *p, const char *name, unsigned depth)
{
	size_t skip = w->r->subtree ? strlen(w->r->subtree) : 0;
	struct export_entry e = {.path = p->vpath + skip + 1,
	                         .name = name,
	                         .depth = depth,
	                         .mode = p->mode,
	                         .size = p->len,
	                         .mtime = p->mtime,
	                         .nlink = 1,
	                         .data = p->data};
	return w->fn(w->ctx, &e);
}

/* The children of a directory of the view at vpath: those of its index directory lower (0:
 * none) that the upper does not delete, merged by name with what the upper adds and with the
 * files put in. changed: the upper has this directory, so children may be changed too. */
static int children(struct walk *w, const char *vpath, unsigned depth, uint32_t lower, bool changed)
{
	struct export_reader *r = w->r;
	uint32_t n = 0;
	const struct compose_dirent *d = lower ? compose_index_dirents(r->idx, lower, &n) : NULL;
	size_t a = changed ? added_first(r, vpath) : r->n_added;
	size_t q = put_next(r, 0, vpath);
	uint32_t i = 0;
	int ret;
	for (;;) {
		bool have_i = i < n, have_a = changed && added_in(r, a, vpath);
		bool have_q = q < r->n_put;
		if (!have_i && !have_a && !have_q)
			return 0;
		_cleanup_free_ char *iname =
		    have_i ? xstrndup(compose_index_string(r->idx, d[i].name_off), d[i].name_len)
		           : NULL;
		const char *p, *aname = NULL, *qname = NULL;
		size_t pl;
		if (have_a)
			split(r->diff[r->added[a]].path, &p, &pl, &aname);
		if (have_q)
			split(r->put[q].vpath, &p, &pl, &qname);
		/* A put file whose name the view has is visited in its place (visit looks it up);
		 * one the view lacks is visited on its own, in name order. */
		const char *first = have_i ? iname : aname;
		if (have_i && have_a && strcmp(aname, iname) < 0)
			first = aname;
		if (have_q && (!first || strcmp(qname, first) < 0)) {
			if ((ret = visit_put(w, &r->put[q], qname, depth + 1)) < 0)
				return ret;
			q = put_next(r, q + 1, vpath);
			continue;
		}
		if (have_q && strcmp(qname, first) == 0)
			q = put_next(r, q + 1, vpath);
		if (have_i && (!have_a || strcmp(iname, aname) < 0)) {
			_cleanup_free_ char *child = xasprintf("%s/%s", vpath, iname);
			const struct compose_diff_entry *cd = changed ? diff_find(r, child) : NULL;
			if (!cd || cd->change != COMPOSE_DELETED || (r->n_put && put_find(r, child)))
				if ((ret = visit(w, child, iname, depth + 1, d[i].ino, cd)) < 0)
					return ret;
			i++;
		} else {
			const struct compose_diff_entry *cd = &r->diff[r->added[a]];
			if ((ret = visit(w, cd->path, aname, depth + 1, 0, cd)) < 0)
				return ret;
			a++;
		}
	}
}

static bool is_cut(const struct export_reader *r, const char *vpath)
{
	for (size_t i = 0; i < r->n_cut; i++)
		if (strcmp(r->cut[i], vpath) == 0)
			return true;
	return false;
}

/* One entry at vpath ("" for the root): the index's inode lo, unless the upper has it (de) or
 * a file was put there. */
static int visit(struct walk *w, const char *vpath, const char *name, unsigned depth, uint32_t lo,
                 const struct compose_diff_entry *de)
{
	struct export_reader *r = w->r;
	const struct put_file *put = r->n_put ? put_find(r, vpath) : NULL;
	if (put)
		return visit_put(w, put, name, depth);
	size_t skip = r->subtree ? strlen(r->subtree) : 0;
	struct export_entry e = {
	    .path = vpath[skip] ? vpath + skip + 1 : "", .name = name, .depth = depth};
	struct export_xattr *xs = NULL;
	size_t n_xs = 0;
	_cleanup_free_ char *target = NULL, *upath = NULL;
	bool upper = de && de->change != COMPOSE_UNTOUCHED;
	int ret;
	if (upper) {
		upath = xasprintf("%s%s", r->upper, vpath);
		ret = from_upper(upath, &e, &xs, &n_xs, &target, w->err);
	} else {
		from_index(r, lo, &e, &xs, &target);
		n_xs = e.n_xattrs;
		ret = 0;
	}
	if (ret == 0) {
		qsort_safe(xs, n_xs, sizeof(*xs), xattr_cmp);
		ret = w->fn(w->ctx, &e);
	}
	xattrs_free(xs, n_xs, upper);
	if (ret < 0 || !S_ISDIR(e.mode) || (depth > 0 && is_cut(r, vpath)))
		return ret;
	const struct compose_inode *in = lo ? compose_index_inode(r->idx, lo) : NULL;
	return children(w, vpath, depth, in && S_ISDIR(in->mode) ? lo : 0, upper);
}

int export_walk(struct export_reader *r, int (*fn)(void *ctx, const struct export_entry *e),
                void *ctx, struct mosaic_error *err)
{
	struct walk w = {.r = r, .fn = fn, .ctx = ctx, .err = err};
	static const struct compose_diff_entry untouched = {.change = COMPOSE_UNTOUCHED};
	const struct compose_diff_entry *de = NULL;
	uint32_t ino = COMPOSE_ROOT_INO;
	const char *root = r->subtree ? r->subtree : "";
	int ret;
	if (r->subtree) {
		/* The subtree's own inode in the index and its change in the upper. */
		struct compose_diff_entry found = {0};
		ret = compose_diff_path(r->idx, r->images, r->upper, r->subtree + 1, &found, err);
		/* Only freed: clang counts a cleanup variable that is never read as unused. */
		_cleanup_free_ __attribute__((unused)) char *found_path = found.path;
		if (ret == 0 && (found.change == COMPOSE_DELETED || !S_ISDIR(found.type)))
			ret = -ENOTDIR;
		if (ret < 0)
			return mosaic_errorf(err, ret, "%s: not a directory of the view", r->subtree);
		ino = found.ino;
		de = r->upper ? diff_find(r, r->subtree) : NULL;
	} else
		/* The upper's root is always merged with the index's: its attributes win. */
		de = r->upper ? diff_find(r, "/") : NULL;
	if (r->upper && !de)
		de = &untouched; /* the root cannot be missing (all lists it); a subtree can */
	ret = visit(&w, root, "", 0, ino, de);
	if (ret < 0 && err && !err->msg[0])
		mosaic_errorf(err, ret, "walking the view: %s", strerror(-ret));
	return ret;
}

/* ---- content ----------------------------------------------------------------------------------
 */

/* Fragment i's image, opened (and verified, with a keyring) on its first use. */
static int image_use(struct export_reader *r, uint32_t i, struct fragment_image **out,
                     struct mosaic_error *err)
{
	struct open_image *o = &r->open[i];
	o->last_use = ++r->clock;
	if (o->im) {
		*out = o->im;
		return 0;
	}
	if (!o->verified && r->keyring) {
		int e = fragment_verify(r->keyring, r->images[i], NULL, err);
		if (e < 0)
			return e;
	}
	o->verified = true;
	if (r->n_open >= MAX_OPEN) {
		uint32_t victim = UINT32_MAX;
		for (uint32_t j = 0; j < r->n_frags; j++)
			if (r->open[j].im && (victim == UINT32_MAX ||
			                      r->open[j].last_use < r->open[victim].last_use))
				victim = j;
		fragment_image_close(r->open[victim].im);
		r->open[victim].im = NULL;
		r->n_open--;
	}
	int e = fragment_image_open(r->images[i], &o->im, err);
	if (e < 0)
		return e;
	r->n_open++;
	*out = o->im;
	return 0;
}

static int read_index_file(struct export_reader *r, uint32_t ino, const char *what,
                           int (*sink)(void *ctx, const void *buf, size_t len), void *ctx,
                           struct mosaic_error *err)
{
	const struct compose_inode *in = compose_index_inode(r->idx, ino);
	if (in->size == 0)
		return 0;
	if (in->fragment >= r->n_frags)
		return mosaic_errorf(err, -EIO, "/%s: no fragment holds its content", what);
	struct fragment_image *im;
	int e = image_use(r, in->fragment, &im, err);
	if (e < 0)
		return e;
	_cleanup_free_ char *buf = xmalloc(CHUNK);
	for (uint64_t off = 0; off < in->size;) {
		size_t want = in->size - off < CHUNK ? in->size - off : CHUNK;
		ssize_t n = fragment_image_read(im, in->frag_inode, off, buf, want);
		if (n < 0)
			return mosaic_errorf(err, n, "/%s: reading from %s: %s", what,
			                     r->images[in->fragment], strerror(-n));
		if (n == 0)
			return mosaic_errorf(err, -EIO, "/%s: %s holds %ju bytes of it, not %ju",
			                     what, r->images[in->fragment], (uintmax_t)off,
			                     (uintmax_t)in->size);
		if ((e = sink(ctx, buf, n)) < 0)
			return e;
		off += n;
	}
	return 0;
}

static int read_upper_file(const char *upath, uint64_t size,
                           int (*sink)(void *ctx, const void *buf, size_t len), void *ctx,
                           struct mosaic_error *err)
{
	_cleanup_close_ int fd = open(upath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", upath);
	_cleanup_free_ char *buf = xmalloc(CHUNK);
	uint64_t off = 0;
	for (;;) {
		ssize_t n = read(fd, buf, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return mosaic_errorf(err, -errno, "reading %s: %m", upath);
		if (n == 0)
			break;
		/* A file that grows while it is read would overrun what the header said. */
		if (off + n > size)
			return mosaic_errorf(err, -EAGAIN, "%s changed while it was exported",
			                     upath);
		int e = sink(ctx, buf, n);
		if (e < 0)
			return e;
		off += n;
	}
	if (off != size)
		return mosaic_errorf(err, -EAGAIN, "%s changed while it was exported", upath);
	return 0;
}

int export_read_content(struct export_reader *r, const struct export_entry *e,
                        int (*sink)(void *ctx, const void *buf, size_t len), void *ctx,
                        struct mosaic_error *err)
{
	if (!S_ISREG(e->mode))
		return mosaic_errorf(err, -EINVAL, "/%s: not a regular file", e->path);
	int ret;
	if (e->data)
		ret = e->size ? sink(ctx, e->data, e->size) : 0;
	else if (e->upper_path)
		ret = read_upper_file(e->upper_path, e->size, sink, ctx, err);
	else
		ret = read_index_file(r, e->ino, e->path, sink, ctx, err);
	if (ret >= 0 && r->progress) {
		/* An upper's new files and a second pass over the same content are not in the
		 * index's sum: the figure stops at it rather than pass it. */
		r->read_bytes += e->size;
		if (r->read_bytes > r->content_bytes)
			r->read_bytes = r->content_bytes;
		r->progress(r->read_bytes, r->content_bytes, r->progress_data);
	}
	return ret;
}

struct membuf {
	char *data;
	size_t len, max;
};

static int mem_sink(void *ctx, const void *buf, size_t len)
{
	struct membuf *m = ctx;
	if (m->len + len > m->max)
		return -EFBIG;
	memcpy(m->data + m->len, buf, len);
	m->len += len;
	return 0;
}

int export_read_path(struct export_reader *r, const char *path, size_t max, char **out, size_t *len,
                     struct mosaic_error *err)
{
	struct compose_diff_entry de = {0};
	int e = compose_diff_path(r->idx, r->images, r->upper, path, &de, err);
	if (e < 0)
		return e;
	_cleanup_free_ char *vpath = de.path;
	if (de.change == COMPOSE_DELETED)
		return -ENOENT;
	struct export_entry ent = {.path = vpath + 1};
	_cleanup_free_ char *upath = NULL;
	if (de.change == COMPOSE_UNTOUCHED) {
		const struct compose_inode *in = compose_index_inode(r->idx, de.ino);
		ent.mode = in->mode;
		ent.size = in->size;
		ent.ino = de.ino;
	} else {
		upath = xasprintf("%s%s", r->upper, vpath);
		struct stat st;
		if (lstat(upath, &st) < 0)
			return mosaic_errorf(err, -errno, "%s: %m", upath);
		ent.mode = st.st_mode;
		ent.size = st.st_size;
		ent.upper_path = upath;
	}
	if (!S_ISREG(ent.mode))
		return -ENOENT;
	if (ent.size > max)
		return mosaic_errorf(err, -EFBIG, "%s: more than %zu bytes", vpath, max);
	struct membuf m = {.data = xmalloc(ent.size + 1), .max = ent.size};
	e = export_read_content(r, &ent, mem_sink, &m, err);
	if (e < 0) {
		free(m.data);
		return e;
	}
	m.data[m.len] = '\0';
	*out = m.data;
	if (len)
		*len = m.len;
	return 0;
}
