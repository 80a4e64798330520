/* export/: the composed view frozen into images (tar, raw disk, qcow2/vmdk/vhdx, ISO) with an
 * SBOM and an image manifest beside each, read straight from a composition's index, fragment
 * images and upper (no mount, no root needed). See docs/export.md. */
#pragma once

#include "common/common.h"

#include <sys/types.h>

struct compose_index;
struct keyring;
struct lock;

/* ---- the reader (reader.c) ---------------------------------------------------------------- */

struct export_reader_options {
	const struct compose_index *idx; /* borrowed; must outlive the reader */
	char *const *images;             /* image path of each index fragment, in index order */
	const char *upper;               /* an overlayfs-format upper over the view, or NULL */
	struct keyring *keyring; /* verifies each fragment before its first read; NULL: the caller
	                          * verified them already */
	/* Called as file content is read for writing (may be NULL): bytes so far, and the
	 * content bytes of the view's index (hard links once), which bytes stays under. */
	void (*progress)(uint64_t bytes, uint64_t total, void *data);
	void *progress_data;
};

struct export_reader;
/* Prepares a reader. With an upper, its changes are read once here (compose_diff's rules:
 * whiteouts, opaque directories, type changes); overlayfs's trusted.* markers need root to
 * be seen, and an upper with redirects or metacopy is refused. */
int export_reader_open(const struct export_reader_options *o, struct export_reader **out,
                       struct mosaic_error *err);
void export_reader_free(struct export_reader *r);

/* ---- one export (run.c) ------------------------------------------------------------------- */

#define EXPORT_MIB (1024ull * 1024)

/* At most: the ESP, the root and 14 more. */
#define EXPORT_MAX_PARTITIONS 16

/* A partition of its own beside the ESP and the root. */
struct export_partition_spec {
	const char *mountpoint; /* an absolute directory of the view ("/var"); NULL for swap */
	uint64_t size;          /* bytes; 0: from the content plus free space (not for swap) */
};

/* Parses "512M", "2G", "1048576" (K, M, G, T: powers of 1024). */
int export_parse_size(const char *s, uint64_t *out);

/* What an image came to (export_tar fills it for a tar; export_run for any format). */
struct export_tar_result {
	char sha256[SHA256_HEX_LEN + 1]; /* of the bytes written */
	uint64_t size, entries;
	uint64_t skipped;     /* sockets: tar cannot hold them */
	int64_t newest_mtime; /* before clamping */
};

struct export_options {
	const char *format;        /* "tar", "raw", "iso", "qcow2", "vmdk" or "vhdx" */
	const char *output;        /* OUT; OUT.spdx.json and OUT.manifest.json go beside it */
	int64_t source_date_epoch; /* < 0: none (the SBOM then takes the newest mtime) */
	const struct lock *lock;   /* may be NULL */
	/* disks (raw, qcow2, vmdk, vhdx) only */
	uint64_t size, free_space;
	const char *filesystem, *bootloader; /* NULL: ext4, systemd-boot */
	const struct export_partition_spec *partitions;
	size_t n_partitions;
	/* disks and iso */
	bool no_bootloader;
	const char *kernel_cmdline;
};
/* Exports the view to o->output with its SBOM and manifest. Each is written to a temp name
 * beside it and renamed into place only when all three are complete: a failure (a full disk)
 * leaves nothing new under those names. res may be NULL. */
int export_run(struct export_reader *r, const struct export_options *o,
               struct export_tar_result *res, struct mosaic_error *err);
