/* fragments/: signed, immutable squashfs fragments — creation from a directory, tar, .deb or
 * .rpm (one or many at once), the JSON descriptor, OpenPGP signing and verification, the
 * content-addressed store, and the image writer export/ also writes through. */
#pragma once

#include "common/common.h"

#include <sys/stat.h>
#include <sys/types.h>

#include <json-c/json.h>

#define FRAGMENT_FORMAT_VERSION 1

enum fragment_kind {
	FRAGMENT_KIND_AUTO = -1,
	FRAGMENT_BASE,
	FRAGMENT_PACKAGE,
	FRAGMENT_CONFIG,
	FRAGMENT_DEV
};

const char *fragment_kind_to_string(enum fragment_kind k);
/* Returns the kind, or -EINVAL for an unknown name. */
int fragment_kind_from_string(const char *s);

struct store;
struct keyring;

struct fragment_create_options {
	const char *name, *version, *arch; /* NULL: taken from the source (or the file name) */
	enum fragment_kind kind;   /* FRAGMENT_KIND_AUTO: package for .deb/.rpm, else base */
	const char *sign_key;      /* OpenPGP key id in $GNUPGHOME; NULL: unsigned */
	int64_t source_date_epoch; /* < 0: now */
	bool owner_set;            /* directory sources: force this owner on every entry */
	uid_t uid;
	gid_t gid;
	/* directory sources: an overlayfs upper (keep whiteouts and opaque markers, drop
	 * overlayfs's bookkeeping, refuse redirects and metacopy); see docs/formats.md */
	bool overlay_upper;
	struct keyring *keyring; /* checks .rpm header signatures; may be NULL */
	unsigned workers;        /* compression threads for this image (0: 1) */
	int level;               /* zstd level 1..22; 0: 15, as mksquashfs */
};

/* What fragment_create made; strings owned by the struct, freed by fragment_info_clear. */
struct fragment_info {
	char digest[SHA256_HEX_LEN + 1];
	char *name, *version, *arch;
	enum fragment_kind kind;
	uint64_t image_size, source_size, files;
};
void fragment_info_clear(struct fragment_info *info);

/* Creates a fragment from src (directory, tar, .deb or .rpm) and adds it to the store. */
int fragment_create(struct store *s, const char *src, const struct fragment_create_options *o,
                    struct fragment_info *out, struct mosaic_error *err);

struct fragment_job {
	const char *src;
	struct fragment_create_options o;
	struct fragment_info info;
	struct mosaic_error err;
	int r;
};
/* Makes the fragment of each job on n_workers threads, largest source first, each job with its
 * own options. progress (may be NULL) is called after each job, one call at a time, with the
 * number done so far. Returns 0 when every job succeeded, else the code of the first failure in
 * job order (each job's r and err say which failed). */
int fragment_create_many(struct store *s, struct fragment_job *jobs, size_t n, unsigned n_workers,
                         void (*progress)(size_t done, size_t n, const struct fragment_job *job,
                                          void *data),
                         void *data);

/* A parsed, validated descriptor. json is owned (json_object_put it via _clear). */
struct fragment_descriptor {
	json_object *json;
	const char *name, *version, *arch; /* borrowed from json */
	enum fragment_kind kind;
	char digest[SHA256_HEX_LEN + 1];
	uint64_t image_size, files;
	int64_t created;
};
/* Parses untrusted descriptor bytes; rejects unknown versions, missing or mistyped fields. */
int fragment_descriptor_parse(const char *buf, size_t len, struct fragment_descriptor *out,
                              struct mosaic_error *err);
void fragment_descriptor_clear(struct fragment_descriptor *d);

/* The keyring that decides trust: a file of OpenPGP public keys (binary or armored). */
int keyring_open(const char *path, struct keyring **out, struct mosaic_error *err);
void keyring_free(struct keyring *k);
/* The default keyring path ($MOSAIC_KEYRING, config "keyring", /etc/mosaic/keyring.gpg). */
char *keyring_default_path(void);
/* Checks a detached signature over data against the keyring; on success *signer (if not NULL)
 * is the signing key's fingerprint (caller frees). One good signature is enough unless another
 * is bad. Distinct errors: -EBADMSG malformed, -ENOKEY unknown key, -EKEYREJECTED bad
 * signature, -EKEYREVOKED revoked or expired. */
int keyring_verify(struct keyring *k, const void *data, size_t len, const void *sig, size_t sig_len,
                   char **signer, struct mosaic_error *err);
/* The same for repository metadata (Release.gpg, repomd.xml.asc): an unknown key's message says
 * to add it to the repository's keyring (the file k was opened from). */
int keyring_verify_metadata(struct keyring *k, const void *data, size_t len, const void *sig,
                            size_t sig_len, char **signer, struct mosaic_error *err);
/* Checks a clearsigned message (InRelease) that must be alone in data, with the errors of
 * keyring_verify_metadata, and hands back the signed text (NUL-terminated; caller frees). */
int keyring_verify_clearsigned(struct keyring *k, const void *data, size_t len, char **plaintext,
                               size_t *plen, char **signer, struct mosaic_error *err);
/* Checks an .rpm's header digests and signature against k (librpm): status is "ok", "nokey",
 * "nottrusted", "bad" or "unsigned" (static strings); keyid, when not NULL, the signer's key id
 * (16 hex digits, caller frees; NULL when unsigned). Errors only for a corrupt or unreadable
 * package. */
int rpm_signature_check(struct keyring *k, const char *path, const char **status, char **keyid,
                        struct mosaic_error *err);

/* Verifies the fragment whose image is at image_path (descriptor and signature beside it):
 * good signature by a key in k, image digest and size as the descriptor says, image parses.
 * A verified, unchanged fragment is remembered, so verifying it again costs one stat per file.
 * Fills desc when not NULL. */
int fragment_verify(struct keyring *k, const char *image_path, struct fragment_descriptor *desc,
                    struct mosaic_error *err);
/* ---- reading images (libsquashfuse) ------------------------------------------------------ */

struct fragment_xattr {
	char *name;
	void *value;
	size_t len;
};

/* One entry of an image as fragment_walk reports it; everything is borrowed for the call. */
struct fragment_entry {
	const char *path; /* relative, no leading slash; "" is the root */
	const char *name; /* last component */
	unsigned depth;   /* 0 for the root, 1 for its children, ... */
	mode_t mode;
	uid_t uid;
	gid_t gid;
	uint64_t size; /* regular files and symlinks */
	int64_t mtime;
	uint32_t mtime_nsec; /* fragment_walk_dir only: images keep whole seconds */
	uint32_t nlink;
	dev_t rdev;
	const char *link;      /* symlink target */
	uint64_t inode_id;     /* where the inode lives: fragment_file_open takes it */
	uint32_t inode_number; /* hard links share it */
	const struct fragment_xattr *xattrs;
	size_t n_xattrs;
};
/* Calls fn for the root and then every entry, parents before children, names sorted. */
int fragment_walk(const char *image_path, int (*fn)(void *ctx, const struct fragment_entry *e),
                  void *ctx, struct mosaic_error *err);
/* The same walk of a directory as it is now (a live dev fragment): owners, modes, xattrs and
 * times as the directory has them; inode_id is the file's st_ino and inode_number numbers the
 * hard-linked files from 1. */
int fragment_walk_dir(const char *dir, int (*fn)(void *ctx, const struct fragment_entry *e),
                      void *ctx, struct mosaic_error *err);

/* An open image for reading file content. Not thread-safe: one user at a time. */
struct fragment_image;
struct fragment_file;
int fragment_image_open(const char *image_path, struct fragment_image **out,
                        struct mosaic_error *err);
void fragment_image_close(struct fragment_image *im);
/* A regular file of the image by its inode_id (from fragment_walk); caller frees with free(). */
int fragment_file_open(struct fragment_image *im, uint64_t inode_id, struct fragment_file **out);
/* Reads up to size bytes at off of the regular file inode_id, without an open handle (the
 * daemon's reads when the kernel sends no open); returns bytes read, 0 at the end, or -errno. */
ssize_t fragment_image_read(struct fragment_image *im, uint64_t inode_id, off_t off, void *buf,
                            size_t size);
/* Reads up to size bytes at off; returns bytes read (0 at the end) or -errno. */
ssize_t fragment_file_read(struct fragment_image *im, struct fragment_file *f, off_t off, void *buf,
                           size_t size);

/* Checks that the image parses as squashfs (superblock, tables, every inode and directory). */
int fragment_image_check(const char *image_path, struct mosaic_error *err);
/* Lists the image like ls -lR (or as JSON) to out. */
int fragment_inspect(const char *image_path, bool json, FILE *out, struct mosaic_error *err);

/* ---- the store: <root>/sha256/<hh>/<hex>.{sqfs,json,json.sig}, refs/, tmp/ ---------------- */

int store_open(const char *path, bool create, struct store **out, struct mosaic_error *err);
void store_free(struct store *s);
/* The default store ($MOSAIC_STORE, config "store", /var/lib/mosaic/store); caller frees. */
char *store_default_path(void);
const char *store_root(const struct store *s);
/* Path of a store object: suffix is ".sqfs", ".json" or ".json.sig". Caller frees. */
char *store_object_path(const struct store *s, const char *digest, const char *suffix);
/* Whether digest (hex) names a fragment the store holds with its signed descriptor. */
bool store_has(const struct store *s, const char *digest);
/* Turns a full digest, a unique digest prefix, a ref name or an image path into a digest. */
int store_resolve(const struct store *s, const char *ref, char digest[SHA256_HEX_LEN + 1],
                  struct mosaic_error *err);
/* Moves a finished image (a temp file inside the store) with its descriptor and signature (sig
 * may be NULL) into place atomically and points refs/<ref> at it (ref may be NULL); concurrent
 * commits of the same fragment both succeed and one copy stays. */
int store_commit(struct store *s, const char *tmp_image, const char *digest, const char *ref,
                 const char *desc, size_t desc_len, const void *sig, size_t sig_len,
                 struct mosaic_error *err);
/* A fresh temp file name inside the store (same filesystem as the objects). Caller frees. */
char *store_tmp_path(const struct store *s, const char *suffix);
/* Copies the fragment at image_path (with .json and .json.sig beside it) into the store after
 * verifying it against k. */
int store_add(struct store *s, struct keyring *k, const char *image_path,
              char digest[SHA256_HEX_LEN + 1], struct mosaic_error *err);
/* Points refs/<name> at digest (ostree-style names keep fragments alive through gc). */
int store_set_ref(struct store *s, const char *name, const char *digest, struct mosaic_error *err);
/* All complete fragments (sorted digests); caller frees with strv_free. */
int store_list(const struct store *s, char ***digests, size_t *n, struct mosaic_error *err);
struct store_gc_stats {
	size_t removed_fragments, removed_temp, kept;
	uint64_t freed_bytes;
};
/* Removes fragments no ref or root names, half-written objects and stale temp files. */
int store_gc(struct store *s, bool dry_run, struct store_gc_stats *st, struct mosaic_error *err);

/* ---- the image writer (writer.c, libsquashfs) ----------------------------------------------
 * What fragment sources feed, and what export/ writes a whole composed view through: entries
 * in, a reproducible zstd squashfs image out. */

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
