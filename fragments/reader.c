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

struct entry_info {
	mode_t mode;
	uid_t uid;
	gid_t gid;
	uint64_t size;
	uint32_t mtime;
	int nlink;
	unsigned major, minor;
	char link[PATH_MAX + 1];
};

static int entry_stat(sqfs *fs, sqfs_inode *inode, struct entry_info *e)
{
	sqfs_id_t id;
	memset(e, 0, sizeof(*e));
	e->mode = sqfs_mode(inode->base.inode_type) | inode->base.mode;
	if (sqfs_id_get(fs, inode->base.uid, &id) != SQFS_OK)
		return -EBADMSG;
	e->uid = id;
	if (sqfs_id_get(fs, inode->base.guid, &id) != SQFS_OK)
		return -EBADMSG;
	e->gid = id;
	e->mtime = inode->base.mtime;
	e->nlink = inode->nlink;
	if (S_ISREG(e->mode))
		e->size = inode->xtra.reg.file_size;
	else if (S_ISBLK(e->mode) || S_ISCHR(e->mode)) {
		e->major = inode->xtra.dev.major;
		e->minor = inode->xtra.dev.minor;
	} else if (S_ISLNK(e->mode)) {
		size_t n = sizeof(e->link);
		if (sqfs_readlink(fs, inode, e->link, &n) != SQFS_OK)
			return -EBADMSG;
		e->size = strlen(e->link);
	}
	return 0;
}

typedef int (*visit_fn)(void *ctx, sqfs *fs, const char *path, sqfs_inode *inode,
                        const struct entry_info *e);

static int image_walk(const char *image_path, visit_fn fn, void *ctx, struct mosaic_error *err)
{
	struct image im;
	int r = image_open(image_path, &im, err);
	if (r < 0) {
		image_close(&im);
		return r;
	}
	sqfs_inode inode;
	struct entry_info e;
	if (sqfs_inode_get(&im.fs, &inode, sqfs_inode_root(&im.fs)) != SQFS_OK ||
	    entry_stat(&im.fs, &inode, &e) < 0 || !S_ISDIR(e.mode)) {
		image_close(&im);
		return mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (root inode)",
		                     image_path);
	}
	if (fn && (r = fn(ctx, &im.fs, "", &inode, &e)) < 0) {
		image_close(&im);
		return r;
	}
	sqfs_traverse trv;
	sqfs_err se;
	if (sqfs_traverse_open(&trv, &im.fs, sqfs_inode_root(&im.fs)) != SQFS_OK) {
		image_close(&im);
		return mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (root directory)",
		                     image_path);
	}
	while (sqfs_traverse_next(&trv, &se)) {
		if (trv.dir_end)
			continue;
		if (sqfs_inode_get(&im.fs, &inode, trv.entry.inode) != SQFS_OK ||
		    entry_stat(&im.fs, &inode, &e) < 0) {
			r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (inode of %s)",
			                  image_path, trv.path);
			break;
		}
		if (fn && (r = fn(ctx, &im.fs, trv.path, &inode, &e)) < 0)
			break;
	}
	if (r == 0 && se != SQFS_OK)
		r = mosaic_errorf(err, -EBADMSG, "%s: corrupt squashfs image (directory table)",
		                  image_path);
	sqfs_traverse_close(&trv);
	image_close(&im);
	return r;
}

int fragment_image_check(const char *image_path, struct mosaic_error *err)
{
	return image_walk(image_path, NULL, NULL, err);
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

static json_object *xattrs_json(sqfs *fs, sqfs_inode *inode)
{
	sqfs_xattr x;
	json_object *o = json_object_new_object();
	if (sqfs_xattr_open(fs, inode, &x) != SQFS_OK)
		return o;
	while (x.remain > 0) {
		if (sqfs_xattr_read(&x) != SQFS_OK)
			break;
		/* libsquashfuse 0.1.105 (bookworm) names type 1 "security." and type 2 "trusted.",
		 * the wrong way round (fixed upstream in squashfuse#83): name the prefix here. */
		static const char *const prefixes[] = {"user.", "trusted.", "security."};
		unsigned type = x.type & SQUASHFS_XATTR_PREFIX_MASK;
		if (type >= ARRAY_SIZE(prefixes))
			break;
		size_t nl = sqfs_xattr_name_size(&x), vl;
		size_t pl = strlen(prefixes[type]);
		_cleanup_free_ char *name = xcalloc(1, pl + nl + 1);
		memcpy(name, prefixes[type], pl);
		if (sqfs_xattr_name(&x, name + pl, false) != SQFS_OK ||
		    sqfs_xattr_value_size(&x, &vl) != SQFS_OK)
			break;
		_cleanup_free_ unsigned char *val = xmalloc(vl + 1);
		if (sqfs_xattr_value(&x, val) != SQFS_OK)
			break;
		_cleanup_free_ char *hex = xmalloc(2 * vl + 1);
		for (size_t i = 0; i < vl; i++)
			sprintf(hex + 2 * i, "%02x", val[i]);
		hex[2 * vl] = '\0';
		json_object_object_add(o, name, json_object_new_string(hex));
	}
	return o;
}

static int inspect_visit(void *ctx, sqfs *fs, const char *path, sqfs_inode *inode,
                         const struct entry_info *e)
{
	struct inspect *in = ctx;
	_cleanup_free_ char *abs = xasprintf("/%s", path);
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
			json_object_object_add(o, "major", json_object_new_int(e->major));
			json_object_object_add(o, "minor", json_object_new_int(e->minor));
		}
		json_object *x = xattrs_json(fs, inode);
		if (json_object_object_length(x) > 0)
			json_object_object_add(o, "xattrs", x);
		else
			json_object_put(x);
		json_object_array_add(in->arr, o);
		return 0;
	}
	char ms[11], when[32], size[32];
	mode_string(e->mode, ms);
	time_t t = e->mtime;
	struct tm tm;
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M", gmtime_r(&t, &tm));
	if (S_ISBLK(e->mode) || S_ISCHR(e->mode))
		snprintf(size, sizeof(size), "%u, %u", e->major, e->minor);
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
	int r = image_walk(image_path, inspect_visit, &in, err);
	if (r == 0 && json)
		fprintf(out, "%s\n",
		        json_object_to_json_string_ext(in.arr, JSON_C_TO_STRING_PRETTY |
		                                                   JSON_C_TO_STRING_SPACED |
		                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(in.arr);
	return r;
}
