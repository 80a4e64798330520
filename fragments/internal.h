/* Internal to fragments/: the image writer that sources feed, the sources, and the pieces the
 * descriptor is made from. Not part of the module's public interface. */
#pragma once

#include "common/deb822.h"
#include "fragments/fragment.h"

#include <sys/stat.h>

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
