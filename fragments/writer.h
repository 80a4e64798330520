/* fragments/: the squashfs image writer (writer.c, libsquashfs) that fragment sources feed, and
 * that export/ uses for a whole composed view: entries in, a reproducible image out. */
#pragma once

#include "common/common.h"

#include <sys/stat.h>
#include <sys/types.h>

struct fwriter;

struct fxattr {
	const char *key;
	const void *value;
	size_t len;
};

/* One entry as a source describes it. Strings and xattrs are borrowed for the call. */
struct fentry {
	mode_t mode; /* type and permission bits, including setuid/setgid/sticky */
	uid_t uid;
	gid_t gid;
	int64_t mtime;
	dev_t rdev;       /* block and character devices */
	const char *link; /* symlink target */
	const struct fxattr *xattrs;
	size_t n_xattrs;
};

/* Reads up to len bytes of a regular file's content; returns bytes read, 0 at the end, -errno. */
typedef ssize_t (*fwriter_read_fn)(void *ctx, void *buf, size_t len);

struct fwriter_options {
	int64_t mtime;    /* superblock time and time of directories the source did not list */
	unsigned workers; /* compression threads */
	int level;        /* zstd level; 0: default */
};

int fwriter_new(const char *image_path, const struct fwriter_options *o, struct fwriter **out,
                struct mosaic_error *err);
void fwriter_free(struct fwriter *w);

/* Adds path (normalised here; ".." is refused naming the entry). Missing parent directories are
 * created 0755 root:root. A later entry replaces an earlier non-directory at the same path; a
 * directory given again takes the new attributes. For regular files read is called until it
 * returns 0. */
int fwriter_add(struct fwriter *w, const char *path, const struct fentry *e, fwriter_read_fn read,
                void *ctx, struct mosaic_error *err);
/* Adds path as a hard link to target, which must be an earlier non-directory entry. */
int fwriter_add_hardlink(struct fwriter *w, const char *path, const char *target,
                         struct mosaic_error *err);
/* Calls fn for every path added so far that is not a directory-only parent, in the order added
 * (dpkg's .list). Paths are relative, without a leading slash; "" is the root. */
int fwriter_foreach_path(struct fwriter *w, int (*fn)(void *ctx, const char *path, bool is_dir),
                         void *ctx);
/* Writes the tables and superblock. After this the image is complete. */
int fwriter_finish(struct fwriter *w, struct mosaic_error *err);
/* Entries (all but the root) and bytes of regular file content. */
uint64_t fwriter_files(const struct fwriter *w);
uint64_t fwriter_content_bytes(const struct fwriter *w);
