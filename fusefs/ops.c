/* The read-only view's request handlers: every metadata answer comes from the mapped index;
 * a fragment is opened (and verified) only when a file in it is opened. Nothing here
 * allocates more than one reply's worth or takes a global lock. */
#include "fusefs/internal.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

static struct daemon *D(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_READDIRPLUS | FUSE_CAP_PARALLEL_DIROPS |
	                FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_EXPORT_SUPPORT;
	conn->want |= conn->capable & want;
	/* Plain readdir for a listing the kernel has cached; readdirplus when it has not. */
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	conn->max_readahead = 1 << 20;
}

/* Every handler reads the view under d->live (FUSEFS_LOCKED below), so a switch never shows
 * it half done. */
static void live_lock(struct daemon *d)
{
	pthread_rwlock_rdlock(&d->live);
}

static void live_unlock(struct daemon *d)
{
	pthread_rwlock_unlock(&d->live);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct daemon *d = D(req);
	struct fuse_entry_param e = {.attr_timeout = d->timeout, .entry_timeout = d->timeout};
	struct gen *g;
	uint32_t dino;
	const struct compose_inode *dir = view_get(d, parent, &g, &dino);
	int r = !dir ? ENOENT : !S_ISDIR(dir->mode) ? ENOTDIR : 0;
	/* A directory the served composition no longer has is empty, as a removed one is. */
	if (r == 0 && g != d->cur)
		r = ENOENT;
	if (r)
		return (void)fuse_reply_err(req, r);
	uint32_t ino = strcmp(name, ".") == 0 ? dino
	               : strcmp(name, "..") == 0
	                   ? dir->parent
	                   : compose_index_lookup(g->idx, dino, name, strlen(name));
	if (ino) {
		e.ino = view_ino(g, ino);
		fusefs_index_stat(compose_index_inode(g->idx, ino), e.ino, &e.attr);
		view_ref(d, e.ino);
	}
	/* ino 0 with a timeout: the kernel caches the negative answer (a switch that adds the
	 * name invalidates it). */
	fuse_reply_entry(req, &e);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct daemon *d = D(req);
	view_forget(d, ino, nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct daemon *d = D(req);
	for (size_t i = 0; i < count; i++)
		view_forget(d, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t x;
	const struct compose_inode *in = view_get(d, ino, &g, &x);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	struct stat st;
	fusefs_index_stat(in, ino, &st);
	fuse_reply_attr(req, &st, d->timeout);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t x;
	const struct compose_inode *in = view_get(d, ino, &g, &x);
	if (!in || !S_ISLNK(in->mode)) {
		return (void)fuse_reply_err(req, in ? EINVAL : ENOENT);
	}
	char buf[PATH_MAX + 1];
	size_t n = in->data_len < PATH_MAX ? in->data_len : PATH_MAX;
	memcpy(buf, compose_index_string(g->idx, in->data_off), n);
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

/* The view changes only with a switch, which tells the kernel what changed, so the kernel needs
 * no open of a directory or file: ENOSYS makes it stop sending OPEN/OPENDIR and RELEASE
 * altogether (fuse no_open/no_opendir, Linux >= 5.1) and keep page cache and cached listings
 * by default. A warm read or find then never reaches the daemon. */
static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t x;
	const struct compose_inode *in = view_get(d, ino, &g, &x);
	int r = !in ? ENOENT : !S_ISDIR(in->mode) ? ENOTDIR : ENOSYS;
	fuse_reply_err(req, r);
}

/* Offsets: 1 is ".", 2 is "..", 3 + i is the i-th entry. With d->live held. */
void fusefs_index_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus,
                          const struct fusefs_readdir_hooks *hooks)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t dino;
	char *buf = malloc(size);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	const struct compose_inode *dir = view_get(d, ino, &g, &dino);
	if (!dir) {
		free(buf);
		return (void)fuse_reply_err(req, ENOENT);
	}
	uint32_t n = 0;
	const struct compose_dirent *de = compose_index_dirents(g->idx, dino, &n);
	if (g != d->cur)
		n = 0; /* gone from the served composition: empty */
	size_t used = 0;
	char name[256];
	for (off_t i = off; i < (off_t)n + 2; i++) {
		struct fuse_entry_param e = {.attr_timeout = d->timeout,
		                             .entry_timeout = d->timeout};
		const char *nm;
		uint32_t x;
		if (i == 0 || i == 1) {
			nm = i == 0 ? "." : "..";
			x = i == 0 ? dino : dir->parent;
		} else {
			const struct compose_dirent *y = &de[i - 2];
			size_t l = y->name_len < 255 ? y->name_len : 255;
			memcpy(name, compose_index_string(g->idx, y->name_off), l);
			name[l] = '\0';
			nm = name;
			x = y->ino;
		}
		e.ino = view_ino(g, x);
		fusefs_index_stat(compose_index_inode(g->idx, x), e.ino, &e.attr);
		if (plus && hooks && i >= 2)
			e.ino = hooks->nodeid(d, e.ino, ino, i - 2);
		size_t rem = size - used, need;
		if (plus && i >= 2)
			need = fuse_add_direntry_plus(req, buf + used, rem, nm, &e, i + 1);
		else if (plus) {
			/* "." and ".." take no lookup reference: no attributes for them. */
			struct fuse_entry_param none = {.attr = e.attr};
			none.attr.st_ino = e.ino;
			need = fuse_add_direntry_plus(req, buf + used, rem, nm, &none, i + 1);
		} else
			need = fuse_add_direntry(req, buf + used, rem, nm, &e.attr, i + 1);
		if (need > rem)
			break;
		used += need;
		if (plus && i >= 2) {
			if (hooks)
				hooks->looked_up(d, e.ino, ino, i - 2);
			else
				view_ref(d, e.ino);
		}
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
	fusefs_index_readdir(req, ino, size, off, false, NULL);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
	fusefs_index_readdir(req, ino, size, off, true, NULL);
}

/* ---- file data ---------------------------------------------------------------------------- */

/* With d->live held. */
void fusefs_index_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t x;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return (void)fuse_reply_err(req, EROFS);
	const struct compose_inode *in = view_get(d, ino, &g, &x);
	struct open_file *of = NULL;
	int r = in ? fusefs_frag_open(d, g, in, &of) : -ENOENT;
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	of->ino = ino;
	of->open_flags = fi->flags;
	fi->fh = handle_put(d, of, HANDLE_FILE);
	/* Fragment content never changes: keep the page cache across opens. */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t x;
	const struct compose_inode *in = view_get(d, ino, &g, &x);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return (void)fuse_reply_err(req, EROFS);
	fuse_reply_err(req, ENOSYS); /* see fs_opendir */
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct open_file *of = fi ? handle_get(d, fi->fh) : NULL;
	if (of && of->fd >= 0) {
		/* An upper file (--writable=fuse): libfuse splices straight from it. */
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = of->fd;
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	}
	char stackbuf[128 * 1024];
	char *buf = size <= sizeof(stackbuf) ? stackbuf : malloc(size);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	ssize_t n;
	if (of)
		n = fusefs_frag_pread(of, buf, size, off);
	else {
		/* The read-only view: the file the node id means, in its own generation (an old
		 * one for a file opened before a switch). */
		struct gen *g;
		uint32_t x;
		live_lock(d);
		n = view_get(d, ino, &g, &x) ? fusefs_index_read(d, g, x, buf, size, off) : -ENOENT;
		live_unlock(d);
	}
	if (n < 0)
		fuse_reply_err(req, -n);
	else
		fuse_reply_buf(req, buf, n);
	if (buf != stackbuf)
		free(buf);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fusefs_open_file_free(handle_take(D(req), fi->fh));
	fuse_reply_err(req, 0);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct daemon *d = D(req);
	struct statvfs sv = {
	    .f_bsize = 4096,
	    .f_frsize = 4096,
	    .f_blocks = (d->cur->total_bytes + 4095) / 4096,
	    .f_files = compose_index_inodes(d->cur->idx),
	    .f_namemax = 255,
	};
	fuse_reply_statfs(req, &sv);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t n = 0, y;
	const struct compose_xattr *x =
	    view_get(d, ino, &g, &y) ? compose_index_xattrs(g->idx, y, &n) : NULL;
	size_t nl = strlen(name);
	for (uint32_t i = 0; i < n; i++) {
		if (x[i].name_len != nl ||
		    memcmp(compose_index_string(g->idx, x[i].name_off), name, nl))
			continue;
		if (size == 0)
			return (void)fuse_reply_xattr(req, x[i].value_len);
		if (size < x[i].value_len)
			return (void)fuse_reply_err(req, ERANGE);
		return (void)fuse_reply_buf(req, compose_index_string(g->idx, x[i].value_off),
		                            x[i].value_len);
	}
	fuse_reply_err(req, ENODATA);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct daemon *d = D(req);
	struct gen *g;
	uint32_t n = 0, y;
	const struct compose_xattr *x =
	    view_get(d, ino, &g, &y) ? compose_index_xattrs(g->idx, y, &n) : NULL;
	size_t total = 0;
	for (uint32_t i = 0; i < n; i++)
		total += x[i].name_len + 1;
	if (size == 0)
		return (void)fuse_reply_xattr(req, total);
	if (size < total)
		return (void)fuse_reply_err(req, ERANGE);
	char *buf = malloc(total ? total : 1), *p = buf;
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	for (uint32_t i = 0; i < n; i++) {
		memcpy(p, compose_index_string(g->idx, x[i].name_off), x[i].name_len);
		p += x[i].name_len;
		*p++ = '\0';
	}
	fuse_reply_buf(req, buf, total);
	free(buf);
}

static void fs_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	/* default_permissions has the kernel check modes; only writing is refused here. */
	fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
}

FUSEFS_LOCKED(fs_lookup, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
FUSEFS_LOCKED(fs_forget, (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup), (req, ino, nlookup))
FUSEFS_LOCKED(fs_forget_multi, (fuse_req_t req, size_t count, struct fuse_forget_data *forgets),
              (req, count, forgets))
FUSEFS_LOCKED(fs_getattr, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
              (req, ino, fi))
FUSEFS_LOCKED(fs_readlink, (fuse_req_t req, fuse_ino_t ino), (req, ino))
FUSEFS_LOCKED(fs_opendir, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
              (req, ino, fi))
FUSEFS_LOCKED(fs_readdir,
              (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
              (req, ino, size, off, fi))
FUSEFS_LOCKED(fs_readdirplus,
              (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
              (req, ino, size, off, fi))
FUSEFS_LOCKED(fs_open, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
FUSEFS_LOCKED(fs_statfs, (fuse_req_t req, fuse_ino_t ino), (req, ino))
FUSEFS_LOCKED(fs_getxattr, (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size),
              (req, ino, name, size))
FUSEFS_LOCKED(fs_listxattr, (fuse_req_t req, fuse_ino_t ino, size_t size), (req, ino, size))

/* The handlers without the lock, for the upper's handlers, which hold it already. */
const struct fuse_lowlevel_ops fusefs_index_ops = {
    .getattr = fs_getattr,
    .readlink = fs_readlink,
    .read = fs_read,
    .release = fs_release,
    .getxattr = fs_getxattr,
    .listxattr = fs_listxattr,
};

const struct fuse_lowlevel_ops fusefs_ops = {
    .init = fs_init,
    .lookup = locked_fs_lookup,
    .forget = locked_fs_forget,
    .forget_multi = locked_fs_forget_multi,
    .getattr = locked_fs_getattr,
    .readlink = locked_fs_readlink,
    .opendir = locked_fs_opendir,
    .readdir = locked_fs_readdir,
    .readdirplus = locked_fs_readdirplus,
    .open = locked_fs_open,
    .read = fs_read,
    .release = fs_release,
    .statfs = locked_fs_statfs,
    .getxattr = locked_fs_getxattr,
    .listxattr = locked_fs_listxattr,
    .access = fs_access,
};
