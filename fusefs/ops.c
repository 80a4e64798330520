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

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct daemon *d = D(req);
	struct fuse_entry_param e = {.attr_timeout = d->timeout, .entry_timeout = d->timeout};
	const struct compose_inode *dir = compose_index_inode(d->idx, parent);
	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	if (!S_ISDIR(dir->mode))
		return (void)fuse_reply_err(req, ENOTDIR);
	uint32_t ino = strcmp(name, ".") == 0 ? parent
	               : strcmp(name, "..") == 0
	                   ? dir->parent
	                   : compose_index_lookup(d->idx, parent, name, strlen(name));
	if (ino) {
		e.ino = ino;
		fusefs_index_stat(compose_index_inode(d->idx, ino), ino, &e.attr);
	}
	/* ino 0 with a timeout: the kernel caches the negative answer. */
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	struct stat st;
	fusefs_index_stat(in, ino, &st);
	fuse_reply_attr(req, &st, d->timeout);
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct daemon *d = D(req);
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	if (!in || !S_ISLNK(in->mode))
		return (void)fuse_reply_err(req, in ? EINVAL : ENOENT);
	char buf[PATH_MAX + 1];
	size_t n = in->data_len < PATH_MAX ? in->data_len : PATH_MAX;
	memcpy(buf, compose_index_string(d->idx, in->data_off), n);
	buf[n] = '\0';
	fuse_reply_readlink(req, buf);
}

/* The view never changes while mounted, so the kernel needs no open of a directory or file:
 * ENOSYS makes it stop sending OPEN/OPENDIR and RELEASE altogether (fuse no_open/no_opendir,
 * Linux >= 5.1) and keep page cache and cached listings by default. A warm read or find then
 * never reaches the daemon. */
static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct compose_inode *in = compose_index_inode(D(req)->idx, ino);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	if (!S_ISDIR(in->mode))
		return (void)fuse_reply_err(req, ENOTDIR);
	fuse_reply_err(req, ENOSYS);
}

/* Offsets: 1 is ".", 2 is "..", 3 + i is the i-th entry. */
void fusefs_index_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus,
                          const struct fusefs_readdir_hooks *hooks)
{
	struct daemon *d = D(req);
	const struct compose_inode *dir = compose_index_inode(d->idx, ino);
	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	uint32_t n;
	const struct compose_dirent *de = compose_index_dirents(d->idx, ino, &n);
	char *buf = malloc(size);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	size_t used = 0;
	char name[256];
	for (off_t i = off; i < (off_t)n + 2; i++) {
		struct fuse_entry_param e = {.attr_timeout = d->timeout,
		                             .entry_timeout = d->timeout};
		const char *nm;
		if (i == 0 || i == 1) {
			nm = i == 0 ? "." : "..";
			e.ino = i == 0 ? ino : dir->parent;
		} else {
			const struct compose_dirent *x = &de[i - 2];
			size_t l = x->name_len < 255 ? x->name_len : 255;
			memcpy(name, compose_index_string(d->idx, x->name_off), l);
			name[l] = '\0';
			nm = name;
			e.ino = x->ino;
		}
		fusefs_index_stat(compose_index_inode(d->idx, e.ino), e.ino, &e.attr);
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
		if (plus && hooks && i >= 2)
			hooks->looked_up(d, e.ino, ino, i - 2);
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

void fusefs_index_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return (void)fuse_reply_err(req, EROFS);
	struct open_file *of;
	int r = fusefs_frag_open(d, in, &of);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	fi->fh = (uintptr_t)of;
	/* Fragment content never changes under a mount: keep the page cache across opens. */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	const struct compose_inode *in = compose_index_inode(d->idx, ino);
	if (!in)
		return (void)fuse_reply_err(req, ENOENT);
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return (void)fuse_reply_err(req, EROFS);
	fuse_reply_err(req, ENOSYS); /* see fs_opendir */
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	struct open_file *of = (void *)(uintptr_t)fi->fh;
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
	ssize_t n = of ? fusefs_frag_pread(of, buf, size, off)
	               : fusefs_index_read(D(req), ino, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, -n);
	else
		fuse_reply_buf(req, buf, n);
	if (buf != stackbuf)
		free(buf);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fusefs_open_file_free((void *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct daemon *d = D(req);
	struct statvfs sv = {
	    .f_bsize = 4096,
	    .f_frsize = 4096,
	    .f_blocks = (d->total_bytes + 4095) / 4096,
	    .f_files = compose_index_inodes(d->idx),
	    .f_namemax = 255,
	};
	fuse_reply_statfs(req, &sv);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct daemon *d = D(req);
	uint32_t n;
	const struct compose_xattr *x = compose_index_xattrs(d->idx, ino, &n);
	size_t nl = strlen(name);
	for (uint32_t i = 0; i < n; i++) {
		if (x[i].name_len != nl ||
		    memcmp(compose_index_string(d->idx, x[i].name_off), name, nl))
			continue;
		if (size == 0)
			return (void)fuse_reply_xattr(req, x[i].value_len);
		if (size < x[i].value_len)
			return (void)fuse_reply_err(req, ERANGE);
		return (void)fuse_reply_buf(req, compose_index_string(d->idx, x[i].value_off),
		                            x[i].value_len);
	}
	fuse_reply_err(req, ENODATA);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct daemon *d = D(req);
	uint32_t n;
	const struct compose_xattr *x = compose_index_xattrs(d->idx, ino, &n);
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
		memcpy(p, compose_index_string(d->idx, x[i].name_off), x[i].name_len);
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

const struct fuse_lowlevel_ops fusefs_ops = {
    .init = fs_init,
    .lookup = fs_lookup,
    .getattr = fs_getattr,
    .readlink = fs_readlink,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .readdirplus = fs_readdirplus,
    .open = fs_open,
    .read = fs_read,
    .release = fs_release,
    .statfs = fs_statfs,
    .getxattr = fs_getxattr,
    .listxattr = fs_listxattr,
    .access = fs_access,
};
