/* The image writer: an in-memory tree of entries whose file data streams straight into
 * libsquashfs's block processor (zstd), then inode, directory, id, fragment and xattr tables. */
#include "fragments/internal.h"

#include <string.h>
#include <sys/sysmacros.h>

#include <sqfs/block.h>
#include <sqfs/block_processor.h>
#include <sqfs/block_writer.h>
#include <sqfs/compressor.h>
#include <sqfs/dir_writer.h>
#include <sqfs/error.h>
#include <sqfs/frag_table.h>
#include <sqfs/id_table.h>
#include <sqfs/inode.h>
#include <sqfs/io.h>
#include <sqfs/meta_writer.h>
#include <sqfs/super.h>
#include <sqfs/xattr_writer.h>

#define BLOCK_SIZE  (128 * 1024)
#define DEVBLK_SIZE 4096
#define NO_XATTR    0xFFFFFFFFu

struct fnode {
	char *name, *path;
	struct fnode *parent;
	struct fnode **children;
	size_t n_children, cap_children;
	struct fnode *hardlink; /* set on a name that is a hard link to another node */
	mode_t mode;
	uid_t uid;
	gid_t gid;
	uint32_t mtime;
	dev_t rdev;
	char *symlink;
	uint32_t xattr_idx;
	uint32_t nlink, inode_num;
	uint64_t inode_ref;
	bool explicit;               /* listed by the source, not made up as a parent */
	sqfs_inode_generic_t *inode; /* regular files: filled by the block processor */
};

struct fwriter {
	char *image_path;
	uint32_t default_mtime;
	sqfs_file_t *file;
	sqfs_compressor_t *cmp, *uncmp;
	sqfs_super_t super;
	sqfs_block_writer_t *blkwr;
	sqfs_frag_table_t *fragtbl;
	sqfs_block_processor_t *proc;
	sqfs_id_table_t *idtbl;
	sqfs_xattr_writer_t *xwr;
	sqfs_meta_writer_t *im, *dm;
	sqfs_dir_writer_t *dirwr;

	struct fnode *root;
	struct fnode **order; /* every node in the order it was added */
	size_t n_order, cap_order;
	struct fnode **table; /* open-addressing map path -> node */
	size_t table_cap;
	uint64_t content_bytes;
	bool has_xattrs, finished;
	void *buf;
};

static int sqfs_err(struct mosaic_error *err, int r, const char *what, const char *path)
{
	return mosaic_errorf(err, r == SQFS_ERROR_ALLOC ? -ENOMEM : -EIO,
	                     "%s: %s failed (libsquashfs error %d)", path, what, r);
}

static uint32_t clamp_time(int64_t t)
{
	return t < 0 ? 0 : t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* ---- path map ----------------------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static struct fnode **map_slot(struct fwriter *w, const char *path)
{
	size_t i = hash_str(path) & (w->table_cap - 1);
	while (w->table[i] && strcmp(w->table[i]->path, path) != 0)
		i = (i + 1) & (w->table_cap - 1);
	return &w->table[i];
}

static void map_insert(struct fwriter *w, struct fnode *n)
{
	if ((w->n_order + 1) * 2 > w->table_cap) {
		struct fnode **old = w->table;
		size_t old_cap = w->table_cap;
		w->table_cap = old_cap * 2;
		w->table = xcalloc(w->table_cap, sizeof(*w->table));
		for (size_t i = 0; i < old_cap; i++)
			if (old[i])
				*map_slot(w, old[i]->path) = old[i];
		free(old);
	}
	*map_slot(w, n->path) = n;
	if (w->n_order == w->cap_order) {
		w->cap_order = w->cap_order ? w->cap_order * 2 : 256;
		w->order = xrealloc(w->order, w->cap_order * sizeof(*w->order));
	}
	w->order[w->n_order++] = n;
}

static struct fnode *node_new(struct fwriter *w, struct fnode *parent, const char *path,
                              mode_t mode)
{
	struct fnode *n = xcalloc(1, sizeof(*n));
	n->path = xstrdup(path);
	const char *slash = strrchr(path, '/');
	n->name = xstrdup(slash ? slash + 1 : path);
	n->parent = parent;
	n->mode = mode;
	n->mtime = w->default_mtime;
	n->xattr_idx = NO_XATTR;
	n->nlink = 1;
	if (parent) {
		if (parent->n_children == parent->cap_children) {
			parent->cap_children = parent->cap_children ? parent->cap_children * 2 : 8;
			parent->children = xrealloc(parent->children,
			                            parent->cap_children * sizeof(struct fnode *));
		}
		parent->children[parent->n_children++] = n;
		map_insert(w, n);
	}
	return n;
}

static void node_free(struct fnode *n)
{
	for (size_t i = 0; i < n->n_children; i++)
		node_free(n->children[i]);
	free(n->children);
	free(n->name);
	free(n->path);
	free(n->symlink);
	free(n->inode);
	free(n);
}

/* Finds the directory that holds path, creating missing parents; fails if one is not a dir. */
static int parent_dir(struct fwriter *w, const char *path, struct fnode **out,
                      struct mosaic_error *err)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		*out = w->root;
		return 0;
	}
	_cleanup_free_ char *dir = xstrndup(path, slash - path);
	struct fnode *n = *map_slot(w, dir);
	if (!n) {
		struct fnode *p;
		int r = parent_dir(w, dir, &p, err);
		if (r < 0)
			return r;
		n = node_new(w, p, dir, S_IFDIR | 0755);
	}
	if (!S_ISDIR(n->mode))
		return mosaic_errorf(err, -ENOTDIR, "entry '%s': parent '%s' is not a directory",
		                     path, dir);
	*out = n;
	return 0;
}

/* ---- writer lifecycle --------------------------------------------------------------------- */

int fwriter_new(const char *image_path, const struct fwriter_options *o, struct fwriter **out,
                struct mosaic_error *err)
{
	struct fwriter *w = xcalloc(1, sizeof(*w));
	sqfs_compressor_config_t cfg;
	int r;

	w->image_path = xstrdup(image_path);
	w->default_mtime = clamp_time(o->mtime);
	w->buf = xmalloc(BLOCK_SIZE);
	w->table_cap = 1024;
	w->table = xcalloc(w->table_cap, sizeof(*w->table));
	w->root = node_new(w, NULL, "", S_IFDIR | 0755);
	w->root->explicit = false;

	w->file = sqfs_open_file(image_path, SQFS_FILE_OPEN_OVERWRITE);
	if (!w->file) {
		r = mosaic_errorf(err, -errno ?: -EIO, "%s: cannot create image: %m", image_path);
		goto fail;
	}
	sqfs_compressor_config_init(&cfg, SQFS_COMP_ZSTD, BLOCK_SIZE, 0);
	if (o->level > 0)
		cfg.level = o->level;
	if ((r = sqfs_compressor_create(&cfg, &w->cmp)) != 0)
		goto fail_sqfs;
	cfg.flags |= SQFS_COMP_FLAG_UNCOMPRESS;
	if ((r = sqfs_compressor_create(&cfg, &w->uncmp)) != 0)
		goto fail_sqfs;
	if ((r = sqfs_super_init(&w->super, BLOCK_SIZE, w->default_mtime, SQFS_COMP_ZSTD)) != 0)
		goto fail_sqfs;
	if ((r = sqfs_super_write(&w->super, w->file)) != 0)
		goto fail_sqfs;
	r = w->cmp->write_options(w->cmp, w->file);
	if (r < 0)
		goto fail_sqfs;
	if (r > 0)
		w->super.flags |= SQFS_FLAG_COMPRESSOR_OPTIONS;

	w->blkwr = sqfs_block_writer_create(w->file, DEVBLK_SIZE, 0);
	w->fragtbl = sqfs_frag_table_create(0);
	w->idtbl = sqfs_id_table_create(0);
	w->xwr = sqfs_xattr_writer_create(0);
	w->im = sqfs_meta_writer_create(w->file, w->cmp, 0);
	w->dm = sqfs_meta_writer_create(w->file, w->cmp, SQFS_META_WRITER_KEEP_IN_MEMORY);
	w->dirwr = w->dm ? sqfs_dir_writer_create(w->dm, 0) : NULL;
	if (!w->blkwr || !w->fragtbl || !w->idtbl || !w->xwr || !w->im || !w->dm || !w->dirwr) {
		r = SQFS_ERROR_ALLOC;
		goto fail_sqfs;
	}

	sqfs_block_processor_desc_t desc = {
	    .size = sizeof(desc),
	    .max_block_size = BLOCK_SIZE,
	    .num_workers = o->workers ? o->workers : 1,
	    .max_backlog = 10 * (o->workers ? o->workers : 1),
	    .cmp = w->cmp,
	    .wr = w->blkwr,
	    .tbl = w->fragtbl,
	    .file = w->file,
	    .uncmp = w->uncmp,
	};
	if ((r = sqfs_block_processor_create_ex(&desc, &w->proc)) != 0)
		goto fail_sqfs;
	*out = w;
	return 0;

fail_sqfs:
	r = sqfs_err(err, r, "setting up the squashfs writer", image_path);
fail:
	fwriter_free(w);
	return r;
}

void fwriter_free(struct fwriter *w)
{
	if (!w)
		return;
	/* Blocks still in flight hold memory the processor frees only when they land. */
	if (!w->finished && w->proc)
		sqfs_block_processor_sync(w->proc);
	/* The processor references inodes and the file: it goes first. */
	sqfs_destroy(w->proc);
	sqfs_destroy(w->dirwr);
	sqfs_destroy(w->dm);
	sqfs_destroy(w->im);
	sqfs_destroy(w->xwr);
	sqfs_destroy(w->idtbl);
	sqfs_destroy(w->fragtbl);
	sqfs_destroy(w->blkwr);
	sqfs_destroy(w->uncmp);
	sqfs_destroy(w->cmp);
	sqfs_destroy(w->file);
	node_free(w->root);
	free(w->order);
	free(w->table);
	free(w->buf);
	free(w->image_path);
	free(w);
}

/* ---- adding entries ----------------------------------------------------------------------- */

static int xattr_cmp(const void *a, const void *b)
{
	return strcmp(((const struct fxattr *)a)->key, ((const struct fxattr *)b)->key);
}

static bool xattr_key_ok(const char *k)
{
	return strncmp(k, "user.", 5) == 0 || strncmp(k, "trusted.", 8) == 0 ||
	       strncmp(k, "security.", 9) == 0;
}

static int set_xattrs(struct fwriter *w, struct fnode *n, const struct fentry *e,
                      struct mosaic_error *err)
{
	n->xattr_idx = NO_XATTR;
	if (e->n_xattrs == 0)
		return 0;
	/* Sorted so that the same set in any order gives the same image. */
	_cleanup_free_ struct fxattr *x = xmalloc(e->n_xattrs * sizeof(*x));
	memcpy(x, e->xattrs, e->n_xattrs * sizeof(*x));
	qsort_safe(x, e->n_xattrs, sizeof(*x), xattr_cmp);
	int r = sqfs_xattr_writer_begin(w->xwr, 0);
	for (size_t i = 0; r == 0 && i < e->n_xattrs; i++) {
		r = sqfs_xattr_writer_add(w->xwr, x[i].key, x[i].value, x[i].len);
		if (r == SQFS_ERROR_UNSUPPORTED)
			return mosaic_errorf(
			    err, -EOPNOTSUPP,
			    "entry '%s': xattr '%s' has a namespace squashfs cannot "
			    "store (only user., trusted. and security.)",
			    n->path, x[i].key);
	}
	if (r == 0)
		r = sqfs_xattr_writer_end(w->xwr, &n->xattr_idx);
	if (r != 0)
		return sqfs_err(err, r, "recording xattrs", n->path);
	w->has_xattrs = true;
	return 0;
}

static int write_content(struct fwriter *w, struct fnode *n, fwriter_read_fn read, void *ctx,
                         struct mosaic_error *err)
{
	int r = sqfs_block_processor_begin_file(w->proc, &n->inode, NULL, 0);
	if (r != 0)
		return sqfs_err(err, r, "starting file data", n->path);
	for (;;) {
		ssize_t got = read ? read(ctx, w->buf, BLOCK_SIZE) : 0;
		if (got < 0) {
			sqfs_block_processor_end_file(w->proc);
			return mosaic_errorf(err, got, "entry '%s': reading content: %s", n->path,
			                     strerror(-got));
		}
		if (got == 0)
			break;
		w->content_bytes += got;
		r = sqfs_block_processor_append(w->proc, w->buf, got);
		if (r != 0)
			return sqfs_err(err, r, "compressing file data", n->path);
	}
	r = sqfs_block_processor_end_file(w->proc);
	if (r != 0)
		return sqfs_err(err, r, "finishing file data", n->path);
	return 0;
}

int fwriter_add(struct fwriter *w, const char *path, const struct fentry *e, fwriter_read_fn read,
                void *ctx, struct mosaic_error *err)
{
	_cleanup_free_ char *p = xstrdup(path);
	if (path_normalise(p) < 0)
		return mosaic_errorf(
		    err, -EINVAL, "entry '%s': path has a '..' component and could escape the root",
		    path);
	switch (e->mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		break;
	default:
		return mosaic_errorf(err, -EINVAL, "entry '%s': unknown file type 0%o", path,
		                     e->mode & S_IFMT);
	}

	/* Everything that can refuse the entry is checked before the tree changes. */
	for (size_t i = 0; i < e->n_xattrs; i++)
		if (!xattr_key_ok(e->xattrs[i].key))
			return mosaic_errorf(err, -EOPNOTSUPP,
			                     "entry '%s': xattr '%s' has a namespace squashfs cannot "
			                     "store (only user., trusted. and security.)",
			                     p, e->xattrs[i].key);
	struct fnode *n;
	if (*p == '\0') {
		if (!S_ISDIR(e->mode))
			return mosaic_errorf(err, -EINVAL,
			                     "entry '%s': the root must be a directory", path);
		n = w->root;
	} else {
		n = *map_slot(w, p);
		if (n && S_ISDIR(n->mode) && !S_ISDIR(e->mode))
			return mosaic_errorf(
			    err, -EISDIR, "entry '%s': replaces a directory with a non-directory",
			    p);
		if (n && !n->hardlink && n->nlink > 1)
			/* Other names share this inode; tar would keep the old file under them. */
			return mosaic_errorf(err, -EMLINK,
			                     "entry '%s': replaces a file that hard links share", p);
		if (n && n->hardlink) {
			n->hardlink->nlink--;
			n->hardlink = NULL;
		}
		if (n && S_ISREG(n->mode) && n->inode) {
			/* The old blocks stay in the image: tar allows it, it is rare. */
			int r = sqfs_block_processor_sync(w->proc);
			if (r != 0)
				return sqfs_err(err, r, "replacing file data", n->path);
			free(n->inode);
			n->inode = NULL;
		}
		if (!n) {
			struct fnode *parent;
			int r = parent_dir(w, p, &parent, err);
			if (r < 0)
				return r;
			n = node_new(w, parent, p, e->mode);
		}
	}
	n->explicit = true;
	n->mode = e->mode;
	n->uid = e->uid;
	n->gid = e->gid;
	n->mtime = clamp_time(e->mtime);
	n->rdev = e->rdev;
	free(n->symlink);
	n->symlink = NULL;
	if (S_ISLNK(e->mode))
		n->symlink = xstrdup(e->link ? e->link : "");
	int r = set_xattrs(w, n, e, err);
	if (r < 0)
		return r;
	if (S_ISREG(e->mode))
		return write_content(w, n, read, ctx, err);
	return 0;
}

int fwriter_add_hardlink(struct fwriter *w, const char *path, const char *target,
                         struct mosaic_error *err)
{
	_cleanup_free_ char *p = xstrdup(path), *t = xstrdup(target);
	if (path_normalise(p) < 0 || *p == '\0')
		return mosaic_errorf(err, -EINVAL, "entry '%s': invalid hard link path", path);
	if (path_normalise(t) < 0)
		return mosaic_errorf(err, -EINVAL,
		                     "entry '%s': hard link to '%s' points outside the archive",
		                     path, target);
	struct fnode *tn = *t ? *map_slot(w, t) : w->root;
	if (!tn || !tn->explicit)
		return mosaic_errorf(err, -EINVAL,
		                     "entry '%s': hard link to '%s', which is not in the archive "
		                     "before it",
		                     path, target);
	while (tn->hardlink)
		tn = tn->hardlink;
	if (S_ISDIR(tn->mode))
		return mosaic_errorf(err, -EPERM, "entry '%s': hard link to directory '%s'", path,
		                     target);
	if (strcmp(tn->path, p) == 0)
		return 0;

	struct fnode *n = *map_slot(w, p);
	if (n && S_ISDIR(n->mode))
		return mosaic_errorf(err, -EISDIR,
		                     "entry '%s': replaces a directory with a hard link", p);
	if (!n) {
		struct fnode *parent;
		int r = parent_dir(w, p, &parent, err);
		if (r < 0)
			return r;
		n = node_new(w, parent, p, tn->mode);
	} else if (n->hardlink) {
		n->hardlink->nlink--;
	}
	n->explicit = true;
	n->hardlink = tn;
	n->mode = tn->mode;
	tn->nlink++;
	return 0;
}

int fwriter_foreach_path(struct fwriter *w, int (*fn)(void *ctx, const char *path, bool is_dir),
                         void *ctx)
{
	int r = fn(ctx, "", true);
	for (size_t i = 0; r == 0 && i < w->n_order; i++)
		if (w->order[i]->explicit)
			r = fn(ctx, w->order[i]->path, S_ISDIR(w->order[i]->mode));
	return r;
}

uint64_t fwriter_files(const struct fwriter *w)
{
	return w->n_order;
}

uint64_t fwriter_content_bytes(const struct fwriter *w)
{
	return w->content_bytes;
}

/* ---- serialising -------------------------------------------------------------------------- */

static int name_cmp(const void *a, const void *b)
{
	return strcmp((*(struct fnode *const *)a)->name, (*(struct fnode *const *)b)->name);
}

/* Numbers every non-directory inode in sorted tree order, then directories in post-order, so
 * that each directory is written after every inode its entries point to. */
static void number_files(struct fnode *d, uint32_t *next)
{
	if (d->n_children > 1)
		qsort_safe(d->children, d->n_children, sizeof(*d->children), name_cmp);
	for (size_t i = 0; i < d->n_children; i++) {
		struct fnode *c = d->children[i];
		if (S_ISDIR(c->mode))
			number_files(c, next);
		else if (!c->hardlink)
			c->inode_num = (*next)++;
	}
}

static void number_dirs(struct fnode *d, uint32_t *next)
{
	d->nlink = 2;
	for (size_t i = 0; i < d->n_children; i++)
		if (S_ISDIR(d->children[i]->mode)) {
			number_dirs(d->children[i], next);
			d->nlink++;
		}
	d->inode_num = (*next)++;
}

static uint32_t encode_dev(dev_t d)
{
	unsigned ma = major(d), mi = minor(d);
	return (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xffu) << 12);
}

static int write_inode(struct fwriter *w, struct fnode *n, sqfs_inode_generic_t *inode,
                       struct mosaic_error *err)
{
	int r;
	inode->base.mode = n->mode;
	inode->base.mod_time = n->mtime;
	inode->base.inode_number = n->inode_num;
	if ((r = sqfs_inode_set_xattr_index(inode, n->xattr_idx)) != 0)
		return sqfs_err(err, r, "setting xattrs", n->path);
	if (n->xattr_idx == NO_XATTR && !S_ISDIR(n->mode) && n->nlink == 1)
		sqfs_inode_make_basic(inode);
	if ((r = sqfs_id_table_id_to_index(w->idtbl, n->uid, &inode->base.uid_idx)) != 0 ||
	    (r = sqfs_id_table_id_to_index(w->idtbl, n->gid, &inode->base.gid_idx)) != 0)
		return sqfs_err(err, r, "recording owner", n->path);
	uint64_t block;
	uint32_t offset;
	sqfs_meta_writer_get_position(w->im, &block, &offset);
	n->inode_ref = (block << 16) | offset;
	if ((r = sqfs_meta_writer_write_inode(w->im, inode)) != 0)
		return sqfs_err(err, r, "writing inode", n->path);
	return 0;
}

static int write_file_inodes(struct fwriter *w, struct fnode *d, struct mosaic_error *err)
{
	for (size_t i = 0; i < d->n_children; i++) {
		struct fnode *n = d->children[i];
		int r = 0;
		if (S_ISDIR(n->mode)) {
			r = write_file_inodes(w, n, err);
		} else if (!n->hardlink) {
			_cleanup_free_ sqfs_inode_generic_t *inode = NULL;
			size_t extra = n->symlink ? strlen(n->symlink) : 0;
			if (S_ISREG(n->mode)) {
				inode = TAKE_PTR(n->inode);
				if (n->nlink > 1 || n->xattr_idx != NO_XATTR)
					sqfs_inode_make_extended(inode);
				if (inode->base.type == SQFS_INODE_EXT_FILE)
					inode->data.file_ext.nlink = n->nlink;
			} else {
				inode = xcalloc(1, sizeof(*inode) + extra);
				switch (n->mode & S_IFMT) {
				case S_IFLNK:
					inode->base.type = SQFS_INODE_SLINK;
					inode->data.slink.nlink = n->nlink;
					inode->data.slink.target_size = extra;
					memcpy(inode->extra, n->symlink, extra);
					break;
				case S_IFBLK:
				case S_IFCHR:
					inode->base.type =
					    S_ISBLK(n->mode) ? SQFS_INODE_BDEV : SQFS_INODE_CDEV;
					inode->data.dev.nlink = n->nlink;
					inode->data.dev.devno = encode_dev(n->rdev);
					break;
				default:
					inode->base.type =
					    S_ISFIFO(n->mode) ? SQFS_INODE_FIFO : SQFS_INODE_SOCKET;
					inode->data.ipc.nlink = n->nlink;
				}
			}
			r = write_inode(w, n, inode, err);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

static int write_dirs(struct fwriter *w, struct fnode *d, uint32_t parent_ino,
                      struct mosaic_error *err)
{
	int r;
	for (size_t i = 0; i < d->n_children; i++)
		if (S_ISDIR(d->children[i]->mode) &&
		    (r = write_dirs(w, d->children[i], d->inode_num, err)) < 0)
			return r;

	if ((r = sqfs_dir_writer_begin(w->dirwr, 0)) != 0)
		return sqfs_err(err, r, "starting directory", d->path);
	for (size_t i = 0; i < d->n_children; i++) {
		struct fnode *c = d->children[i];
		struct fnode *t = c->hardlink ? c->hardlink : c;
		if ((r = sqfs_dir_writer_add_entry(w->dirwr, c->name, t->inode_num, t->inode_ref,
		                                   t->mode)) != 0)
			return sqfs_err(err, r, "adding directory entry", c->path);
	}
	if ((r = sqfs_dir_writer_end(w->dirwr)) != 0)
		return sqfs_err(err, r, "finishing directory", d->path);
	_cleanup_free_ sqfs_inode_generic_t *inode =
	    sqfs_dir_writer_create_inode(w->dirwr, 0, d->xattr_idx, parent_ino);
	if (!inode)
		return sqfs_err(err, SQFS_ERROR_ALLOC, "making directory inode", d->path);
	if (inode->base.type == SQFS_INODE_DIR)
		inode->data.dir.nlink = d->nlink;
	else
		inode->data.dir_ext.nlink = d->nlink;
	return write_inode(w, d, inode, err);
}

int fwriter_finish(struct fwriter *w, struct mosaic_error *err)
{
	const char *img = w->image_path;
	int r;

	if ((r = sqfs_block_processor_finish(w->proc)) != 0)
		return sqfs_err(err, r, "writing data blocks", img);

	uint32_t next = 1;
	number_files(w->root, &next);
	number_dirs(w->root, &next);
	w->super.inode_count = next - 1;
	w->super.inode_table_start = w->file->get_size(w->file);

	if ((r = write_file_inodes(w, w->root, err)) < 0)
		return r;
	if ((r = write_dirs(w, w->root, next, err)) < 0)
		return r;
	if ((r = sqfs_meta_writer_flush(w->im)) != 0 || (r = sqfs_meta_writer_flush(w->dm)) != 0)
		return sqfs_err(err, r, "flushing metadata", img);
	w->super.root_inode_ref = w->root->inode_ref;
	w->super.directory_table_start = w->file->get_size(w->file);
	if ((r = sqfs_meta_write_write_to_file(w->dm)) != 0)
		return sqfs_err(err, r, "writing directory table", img);
	if ((r = sqfs_frag_table_write(w->fragtbl, w->file, &w->super, w->cmp)) != 0)
		return sqfs_err(err, r, "writing fragment table", img);
	if ((r = sqfs_id_table_write(w->idtbl, w->file, &w->super, w->cmp)) != 0)
		return sqfs_err(err, r, "writing id table", img);
	if (w->has_xattrs) {
		if ((r = sqfs_xattr_writer_flush(w->xwr, w->file, &w->super, w->cmp)) != 0)
			return sqfs_err(err, r, "writing xattr table", img);
	} else {
		w->super.flags |= SQFS_FLAG_NO_XATTRS;
	}
	w->super.bytes_used = w->file->get_size(w->file);
	if ((r = sqfs_super_write(&w->super, w->file)) != 0)
		return sqfs_err(err, r, "writing superblock", img);

	/* Pad to 4 KiB like mksquashfs, so the image can be loop-mounted. */
	uint64_t size = w->super.bytes_used;
	if (size % DEVBLK_SIZE) {
		size_t pad = DEVBLK_SIZE - size % DEVBLK_SIZE;
		_cleanup_free_ void *zero = xcalloc(1, pad);
		if ((r = w->file->write_at(w->file, size, zero, pad)) != 0)
			return sqfs_err(err, r, "padding", img);
	}
	w->finished = true;
	return 0;
}
