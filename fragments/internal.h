/* Internal to fragments/: the image writer that sources feed, the sources, and the pieces the
 * descriptor is made from. Not part of the module's public interface. */
#pragma once

#include "common/deb822.h"
#include "fragments/fragment.h"

#include <sys/stat.h>

/* ---- the image writer (writer.c, libsquashfs) --------------------------------------------- */

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

/* ---- sources ------------------------------------------------------------------------------ */

/* What a source tells about itself, for the descriptor. */
struct src_meta {
	char *type; /* "dir", "tar", "deb", "rpm" */
	char *name, *version, *arch;
	json_object *provides, *requires; /* arrays of strings */
	json_object *extra;               /* "deb" or "rpm" section; may be NULL */
	char *extra_key;
};
void src_meta_clear(struct src_meta *m);

int src_dir_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err);
int src_tar_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err);
int src_deb_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err);
int src_rpm_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err);

/* Feeds every entry of an open libarchive reader to the writer (shared by tar and deb). */
struct archive;
int archive_feed(struct archive *a, const char *what, struct fwriter *w, struct mosaic_error *err);

/* ---- OpenPGP (trust.c, gpgme) -------------------------------------------------------------- */

/* Makes a detached binary signature of data with key_id from the default $GNUPGHOME. */
int openpgp_sign(const char *key_id, const void *data, size_t len, void **sig, size_t *sig_len,
                 struct mosaic_error *err);
/* Exports every public key of the keyring, each as its own binary packet sequence (for librpm). */
int keyring_export_keys(struct keyring *k, void ***keys, size_t **lens, size_t *n,
                        struct mosaic_error *err);

/* ---- descriptor (descriptor.c) ------------------------------------------------------------ */

/* The descriptor's exact bytes for a new fragment; caller frees. */
char *descriptor_build(const struct src_meta *m, const struct fragment_create_options *o,
                       enum fragment_kind kind, const char *digest, uint64_t image_size,
                       uint64_t files, uint64_t content_bytes, const char *source_sha256,
                       uint64_t source_size, const char *source_file, int64_t created);
/* The SHA-256 of the keyring file: part of every remembered verification. */
const char *keyring_hash(const struct keyring *k);
