/* Reading images back through libsquashfuse: the "does it parse" check and inspect. Kept
 * apart from writer.c: libsquashfuse and libsquashfs both use the sqfs_ prefix. */
#include "fragments/internal.h"

#include <fcntl.h>
#include <limits.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <squashfuse/squashfuse.h>

struct image {
	int fd;
	sqfs fs;
	bool inited;
};

static void image_close(struct image *im)
{
	if (im->inited) {
		sqfs_destroy(&im->fs);
		/* libsquashfuse 0.1.105's sqfs_destroy forgets the xattr table. */
		sqfs_table_destroy(&im->fs.xattr_table);
	}
	if (im->fd >= 0)
		close(im->fd);
}

static int image_open(const char *path, struct image *im, struct mosaic_error *err)
{
	im->inited = false;
	im->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (im->fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	struct stat st;
	if (fstat(im->fd, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	sqfs_err e = sqfs_init(&im->fs, im->fd, 0);
	if (e != SQFS_OK) {
		if (e == SQFS_BADFORMAT)
			return mosaic_errorf(err, -EBADMSG, "%s: not a squashfs image", path);
		if (e == SQFS_BADVERSION || e == SQFS_BADCOMP || e == SQFS_UNSUP)
			return mosaic_errorf(err, -EPROTONOSUPPORT,
			                     "%s: squashfs image uses an unsupported version or "
			                     "compressor",
			                     path);
		return mosaic_errorf(err, -EBADMSG,
		                     "%s: corrupt squashfs image (tables unreadable)", path);
	}
	im->inited = true;
	if ((uint64_t)st.st_size < im->fs.sb.bytes_used)
		return mosaic_errorf(err, -EBADMSG,
		                     "%s: truncated squashfs image (%jd of %ju bytes)", path,
		                     (intmax_t)st.st_size, (uintmax_t)im->fs.sb.bytes_used);
	return 0;
}

/* libsquashfuse 0.1.105 (bookworm) names type 1 "security." and type 2 "trusted.", the wrong
 * way round (fixed upstream in squashfuse#83), so the prefix is named here from the type. */
static const char *const xattr_prefixes[] = {"user.", "trusted.", "security."};

struct walk_state {
	struct fragment_xattr *xattrs;
	size_t n_xattrs, cap_xattrs;
	char link[PATH_MAX + 1];
};

static void xattrs_clear(struct walk_state *ws)
{
	for (size_t i = 0; i < ws->n_xattrs; i++) {
		free(ws->xattrs[i].name);
		free(ws->xattrs[i].value);
	}
	ws->n_xattrs = 0;
}

static int read_xattrs(sqfs *fs, sqfs_inode *inode, struct walk_state *ws)
{
	sqfs_xattr x;
	xattrs_clear(ws);
	if (sqfs_xattr_open(fs, inode, &x) != SQFS_OK)
		return -EBADMSG;
	while (x.remain > 0) {
		if (sqfs_xattr_read(&x) != SQFS_OK)
			return -EBADMSG;
		unsigned type = x.type & SQUASHFS_XATTR_PREFIX_MASK;
		if (type >= ARRAY_SIZE(xattr_prefixes))
			return -EBADMSG;
		size_t nl = sqfs_xattr_name_size(&x), vl, pl = strlen(xattr_prefixes[type]);
		_cleanup_free_ char *name = xcalloc(1, pl + nl + 1);
		memcpy(name, xattr_prefixes[type], pl);
		if (sqfs_xattr_name(&x, name + pl, false) != SQFS_OK ||
		    sqfs_xattr_value_size(&x, &vl) != SQFS_OK)
			return -EBADMSG;
		_cleanup_free_ void *val = xmalloc(vl + 1);
		if (sqfs_xattr_value(&x, val) != SQFS_OK)
			return -EBADMSG;
		if (ws->n_xattrs == ws->cap_xattrs) {
			ws->cap_xattrs = ws->cap_xattrs ? ws->cap_xattrs * 2 : 4;
			ws->xattrs = xrealloc(ws->xattrs, ws->cap_xattrs * sizeof(*ws->xattrs));
		}
		ws->xattrs[ws->n_xattrs++] = (struct fragment_xattr){
		    .name = TAKE_PTR(name), .value = TAKE_PTR(val), .len = vl};
	}
	return 0;
}

static int entry_fill(sqfs *fs, sqfs_inode_id id, struct walk_state *ws, struct fragment_entry *e)
{
	sqfs_inode inode;
	sqfs_id_t uid, gid;
	if (sqfs_inode_get(fs, &inode, id) != SQFS_OK ||
	    sqfs_id_get(fs, inode.base.uid, &uid) != SQFS_OK ||
	    sqfs_id_get(fs, inode.base.guid, &gid) != SQFS_OK)
		return -EBADMSG;
	e->mode = sqfs_mode(inode.base.inode_type) | inode.base.mode;
	e->uid = uid;
	e->gid = gid;
	e->mtime = inode.base.mtime;
	e->nlink = inode.nlink;
	e->inode_id = id;
	e->inode_number = inode.base.inode_number;
	e->size = 0;
	e->rdev = 0;
	e->link = NULL;
	if (S_ISREG(e->mode)) {
		e->size = inode.xtra.reg.file_size;
	} else if (S_ISBLK(e->mode) || S_ISCHR(e->mode)) {
		e->rdev = makedev(inode.xtra.dev.major, inode.xtra.dev.minor);
	} else if (S_ISLNK(e->mode)) {
		size_t n = sizeof(ws->link);
		if (sqfs_readlink(fs, &inode, ws->link, &n) != SQFS_OK)
			return -EBADMSG;
		e->link = ws->link;
		e->size = strlen(ws->link);
	}
	int r = read_xattrs(fs, &inode, ws);
	e->xattrs = ws->xattrs;
	e->n_xattrs = ws->n_xattrs;
	return r;
}

int fragment_walk(const char *image_path, int (*fn)(void *ctx, const struct fragment_entry *e),
                  void *ctx, struct mosaic_error *err)
{
	struct image im;
	struct walk_state ws = {0};
	struct fragment_entry e = {.path = "", .name = ""};
	sqfs_traverse trv;
	sqfs_err se = SQFS_OK;
	bool trv_open = false;
	int r = image_open(image_path, &im, err);
	if (r < 0)
		goto out;
	if (entry_fill(&im.fs, sqfs_inode_root(&im.fs), &ws, &e) < 0 || !S_ISDIR(e.mode)) {
		r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (root inode)",
		                  image_path);
		goto out;
	}
	if (fn && (r = fn(ctx, &e)) < 0)
		goto out;
	if (sqfs_traverse_open(&trv, &im.fs, sqfs_inode_root(&im.fs)) != SQFS_OK) {
		r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (root directory)",
		                  image_path);
		goto out;
	}
	trv_open = true;
	while (sqfs_traverse_next(&trv, &se)) {
		if (trv.dir_end)
			continue;
		if (entry_fill(&im.fs, trv.entry.inode, &ws, &e) < 0) {
			r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (inode of %s)",
			                  image_path, trv.path);
			break;
		}
		e.path = trv.path;
		const char *slash = strrchr(trv.path, '/');
		e.name = slash ? slash + 1 : trv.path;
		e.depth = 1;
		for (const char *c = trv.path; *c; c++)
			e.depth += *c == '/';
		if (fn && (r = fn(ctx, &e)) < 0)
			break;
	}
	if (r == 0 && se != SQFS_OK)
		r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (directory table)",
		                  image_path);
out:
	if (trv_open)
		sqfs_traverse_close(&trv);
	xattrs_clear(&ws);
	free(ws.xattrs);
	image_close(&im);
	return r;
}

int fragment_image_check(const char *image_path, struct mosaic_error *err)
{
	return fragment_walk(image_path, NULL, NULL, err);
}

/* ---- content ------------------------------------------------------------------------------ */

struct fragment_image {
	struct image im;
};

struct fragment_file {
	sqfs_inode inode;
};

int fragment_image_open(const char *image_path, struct fragment_image **out,
                        struct mosaic_error *err)
{
	struct fragment_image *fi = xcalloc(1, sizeof(*fi));
	int r = image_open(image_path, &fi->im, err);
	if (r < 0) {
		image_close(&fi->im);
		free(fi);
		return r;
	}
	*out = fi;
	return 0;
}

void fragment_image_close(struct fragment_image *fi)
{
	if (!fi)
		return;
	image_close(&fi->im);
	free(fi);
}

int fragment_file_open(struct fragment_image *fi, uint64_t inode_id, struct fragment_file **out)
{
	struct fragment_file *f = xmalloc(sizeof(*f));
	if (sqfs_inode_get(&fi->im.fs, &f->inode, inode_id) != SQFS_OK ||
	    !S_ISREG(sqfs_mode(f->inode.base.inode_type))) {
		free(f);
		return -EIO;
	}
	*out = f;
	return 0;
}

ssize_t fragment_image_read(struct fragment_image *fi, uint64_t inode_id, off_t off, void *buf,
                            size_t size)
{
	struct fragment_file f;
	if (sqfs_inode_get(&fi->im.fs, &f.inode, inode_id) != SQFS_OK ||
	    !S_ISREG(sqfs_mode(f.inode.base.inode_type)))
		return -EIO;
	return fragment_file_read(fi, &f, off, buf, size);
}

ssize_t fragment_file_read(struct fragment_image *fi, struct fragment_file *f, off_t off, void *buf,
                           size_t size)
{
	uint64_t fsize = f->inode.xtra.reg.file_size;
	if (off < 0)
		return -EINVAL;
	if ((uint64_t)off >= fsize)
		return 0;
	if (size > fsize - off)
		size = fsize - off;
	sqfs_off_t n = size;
	if (sqfs_read_range(&fi->im.fs, &f->inode, off, &n, buf) != SQFS_OK)
		return -EIO;
	return n;
}

/* ---- inspect ------------------------------------------------------------------------------ */

struct inspect {
	FILE *out;
	bool json;
	json_object *arr;
};

static void mode_string(mode_t m, char s[11])
{
	const char *types = "?pc?d?b?-?l?s???";
	s[0] = types[(m >> 12) & 15];
	const char *rwx = "rwxrwxrwx";
	for (int i = 0; i < 9; i++)
		s[1 + i] = (m & (0400 >> i)) ? rwx[i] : '-';
	if (m & S_ISUID)
		s[3] = (m & S_IXUSR) ? 's' : 'S';
	if (m & S_ISGID)
		s[6] = (m & S_IXGRP) ? 's' : 'S';
	if (m & S_ISVTX)
		s[9] = (m & S_IXOTH) ? 't' : 'T';
	s[10] = '\0';
}

static int inspect_visit(void *ctx, const struct fragment_entry *e)
{
	struct inspect *in = ctx;
	_cleanup_free_ char *abs = xasprintf("/%s", e->path);
	if (in->json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "path", json_object_new_string(abs));
		char type[2] = {0};
		char ms[11];
		mode_string(e->mode, ms);
		type[0] = ms[0];
		json_object_object_add(o, "type", json_object_new_string(type));
		json_object_object_add(o, "mode", json_object_new_int(e->mode & 07777));
		json_object_object_add(o, "uid", json_object_new_int64(e->uid));
		json_object_object_add(o, "gid", json_object_new_int64(e->gid));
		json_object_object_add(o, "size", json_object_new_int64(e->size));
		json_object_object_add(o, "mtime", json_object_new_int64(e->mtime));
		json_object_object_add(o, "nlink", json_object_new_int(e->nlink));
		if (S_ISLNK(e->mode))
			json_object_object_add(o, "target", json_object_new_string(e->link));
		if (S_ISBLK(e->mode) || S_ISCHR(e->mode)) {
			json_object_object_add(o, "major", json_object_new_int(major(e->rdev)));
			json_object_object_add(o, "minor", json_object_new_int(minor(e->rdev)));
		}
		if (e->n_xattrs > 0) {
			json_object *x = json_object_new_object();
			for (size_t i = 0; i < e->n_xattrs; i++) {
				const unsigned char *v = e->xattrs[i].value;
				size_t vl = e->xattrs[i].len;
				_cleanup_free_ char *hex = xmalloc(2 * vl + 1);
				for (size_t k = 0; k < vl; k++)
					sprintf(hex + 2 * k, "%02x", v[k]);
				hex[2 * vl] = '\0';
				json_object_object_add(x, e->xattrs[i].name,
				                       json_object_new_string(hex));
			}
			json_object_object_add(o, "xattrs", x);
		}
		json_object_array_add(in->arr, o);
		return 0;
	}
	char ms[11], when[32], size[32];
	mode_string(e->mode, ms);
	time_t t = e->mtime;
	struct tm tm;
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M", gmtime_r(&t, &tm));
	if (S_ISBLK(e->mode) || S_ISCHR(e->mode))
		snprintf(size, sizeof(size), "%u, %u", major(e->rdev), minor(e->rdev));
	else
		snprintf(size, sizeof(size), "%ju", (uintmax_t)e->size);
	fprintf(in->out, "%s %3d %5u %5u %10s %s %s", ms, e->nlink, e->uid, e->gid, size, when,
	        abs);
	if (S_ISLNK(e->mode))
		fprintf(in->out, " -> %s", e->link);
	fputc('\n', in->out);
	return 0;
}

int fragment_inspect(const char *image_path, bool json, FILE *out, struct mosaic_error *err)
{
	struct inspect in = {.out = out, .json = json};
	if (json)
		in.arr = json_object_new_array();
	int r = fragment_walk(image_path, inspect_visit, &in, err);
	if (r == 0 && json)
		fprintf(out, "%s\n",
		        json_object_to_json_string_ext(in.arr, JSON_C_TO_STRING_PRETTY |
		                                                   JSON_C_TO_STRING_SPACED |
		                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(in.arr);
	return r;
}
