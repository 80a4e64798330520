/* export/: the composed view frozen into images. A reader that walks a composition straight from
 * its index, fragment images and upper (no mount, no root needed), the tar writer, and the SBOM
 * (SPDX 2.3) and image manifest beside every image. See docs/export.md. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>
#include <sys/stat.h>

struct compose_index;
struct keyring;
struct lock;

/* ---- the reader (reader.c) ---------------------------------------------------------------- */

struct export_xattr {
	const char *name;
	const void *value;
	size_t len;
};

/* One entry of the composed view as export_walk reports it; everything is borrowed for the
 * call. */
struct export_entry {
	const char *path; /* relative, no leading slash; "" is the root */
	const char *name; /* last component ("" for the root) */
	unsigned depth;   /* 0 for the root */
	mode_t mode;      /* type and permission bits */
	uid_t uid;
	gid_t gid;
	uint64_t size; /* regular files (content bytes) and symlinks (target length) */
	int64_t mtime;
	dev_t rdev;
	uint32_t nlink;
	const char *link;                  /* symlink target, else NULL */
	const struct export_xattr *xattrs; /* sorted by name; overlayfs's own are never here */
	size_t n_xattrs;
	/* Hard-link identity: non-directories with nlink > 1 that are one file share a non-zero
	 * link_id; 0 otherwise. */
	uint64_t link_id;
	/* Where the entry comes from: index inode ino, or (ino 0) the upper's file upper_path. */
	uint32_t ino;
	const char *upper_path;
};

struct export_reader_options {
	const struct compose_index *idx; /* borrowed; must outlive the reader */
	char *const *images;             /* image path of each index fragment, in index order */
	const char *upper;               /* an overlayfs-format upper over the view, or NULL */
	struct keyring *keyring; /* verifies each fragment before its first read; NULL: the caller
	                          * verified them already */
};

struct export_reader;
/* Prepares a reader. With an upper, its changes are read once here (compose_diff's rules:
 * whiteouts, opaque directories, type changes); overlayfs's trusted.* markers need root to
 * be seen, and an upper with redirects or metacopy is refused. */
int export_reader_open(const struct export_reader_options *o, struct export_reader **out,
                       struct mosaic_error *err);
void export_reader_free(struct export_reader *r);
/* What the reader was opened with. */
const struct compose_index *export_reader_index(const struct export_reader *r);
char *const *export_reader_images(const struct export_reader *r);
/* Calls fn for the root and then every entry of the view, depth-first, parents before their
 * children, names sorted bytewise. fn returning < 0 stops the walk with that value. */
int export_walk(struct export_reader *r, int (*fn)(void *ctx, const struct export_entry *e),
                void *ctx, struct mosaic_error *err);
/* Feeds the whole content of regular file e to sink in chunks (exactly e->size bytes, else an
 * error); sink returning < 0 stops with that value. */
int export_read_content(struct export_reader *r, const struct export_entry *e,
                        int (*sink)(void *ctx, const void *buf, size_t len), void *ctx,
                        struct mosaic_error *err);
/* The content of the regular file at path in the view ("etc/passwd"), at most max bytes,
 * NUL-terminated; caller frees. -ENOENT when the view has no regular file there. */
int export_read_path(struct export_reader *r, const char *path, size_t max, char **out, size_t *len,
                     struct mosaic_error *err);

/* ---- tar (tar.c) -------------------------------------------------------------------------- */

struct export_tar_result {
	char sha256[SHA256_HEX_LEN + 1]; /* of the bytes written */
	uint64_t size, entries;
	uint64_t skipped;     /* sockets: tar cannot hold them */
	int64_t newest_mtime; /* before clamping */
};
/* Writes the view to fd as a POSIX pax tar (libarchive): entries in export_walk's order named
 * "./PATH", numeric owners with names from the view's own /etc/passwd and /etc/group, modes,
 * xattrs as SCHILY.xattr (security.capability too), hard links, devices, symlinks; mtimes
 * clamped to source_date_epoch (< 0: not clamped). The same view gives the same bytes. */
int export_tar(struct export_reader *r, int fd, int64_t source_date_epoch,
               struct export_tar_result *res, struct mosaic_error *err);

/* ---- SBOM and image manifest (sbom.c) ----------------------------------------------------- */

struct export_sbom_input {
	const char *image_name; /* the image file's name (no directory) */
	const char *format;     /* "tar" */
	const char *sha256;     /* of the image, hex */
	uint64_t size;
	int64_t created; /* seconds since the epoch */
	const struct compose_index *idx;
	char *const *images;     /* descriptors beside them name the fragments */
	const struct lock *lock; /* NULL: the SBOM lists fragments only */
};
/* The SPDX 2.3 JSON document for an image (docs/export.md has the layout). Caller puts. */
json_object *export_sbom(const struct export_sbom_input *in);
/* The image manifest: version, format, image, size, sha256. Caller puts. */
json_object *export_image_manifest(const struct export_sbom_input *in);

/* ---- one export (run.c) ------------------------------------------------------------------- */

struct export_options {
	const char *format;        /* "tar" */
	const char *output;        /* OUT; OUT.spdx.json and OUT.manifest.json go beside it */
	int64_t source_date_epoch; /* < 0: none (the SBOM then takes the newest mtime) */
	const struct lock *lock;   /* may be NULL */
};
/* Exports the view to o->output with its SBOM and manifest. Each is written to a temp name
 * beside it and renamed into place only when all three are complete: a failure (a full disk)
 * leaves nothing new under those names. res may be NULL. */
int export_run(struct export_reader *r, const struct export_options *o,
               struct export_tar_result *res, struct mosaic_error *err);
