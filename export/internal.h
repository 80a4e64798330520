/* Internal to export/: the writers (tar, ext4, raw disk, squashfs, ISO), the SBOM, the scan,
 * the reader's walk, the host tools and the UUIDs, shared between the files of export/. Not
 * part of the module's public interface (export/export.h); tests/unit/test-export.c includes
 * it to test the walk, the writers and the sizing directly. */
#pragma once

#include "export/export.h"

#include <json-c/json.h>
#include <sys/stat.h>

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
	const void *data; /* a file put in by export_reader_put_file: its content */
};

/* Limits what export_walk covers, for a disk of several filesystems: the view's directory
 * subtree ("usr"; "" for the whole view) is walked as if it were the root (paths relative to
 * it, depth 0), and the directories at the view paths cut (the other filesystems' mount points)
 * are reported without what is below them. Until called again. */
void export_reader_restrict(struct export_reader *r, const char *subtree, char *const *cut,
                            size_t n_cut);
/* Puts a regular file (root's, mode bits of mode) with a copy of data at path ("etc/fstab") into
 * what export_walk reports: in place of the view's entry there, or added to its directory. */
void export_reader_put_file(struct export_reader *r, const char *path, const void *data, size_t len,
                            mode_t mode, int64_t mtime);
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

/* ---- what the disk and ISO writers learn of a view first (scan.c) ---------------------------- */

struct export_scan {
	struct sha256 *meta; /* the seed being hashed */
	int64_t epoch;       /* times clamped to it (< 0: none) */
	int64_t newest;      /* the view's newest mtime (INT64_MIN: none yet) */
	uint64_t entries;
	uint64_t boot_bytes; /* the kernels and initrds */
	char *kernel;        /* boot/vmlinuz-VERSION with the highest VERSION, or NULL */
	char **initrds;      /* every boot/initrd.img-VERSION */
	size_t n_initrds;
};
/* Starts a scan: the seed begins with tag (what the image is) and the fragment digests. */
void export_scan_begin(struct export_scan *s, const char *tag, const struct compose_index *idx,
                       int64_t epoch);
/* One entry of export_walk: into the seed (metadata only), and kernels and initrds noted. */
void export_scan_entry(struct export_scan *s, const struct export_entry *e);
/* The initrd of the chosen kernel (boot/initrd.img-VERSION) if the view has it, else NULL;
 * caller frees. */
char *export_scan_initrd(const struct export_scan *s);
/* Ends the hashing: the seed the image's UUIDs derive from. */
void export_scan_seed(struct export_scan *s, uint8_t seed[SHA256_LEN]);
/* The time the image gives what it makes itself: the epoch, else the view's newest mtime. */
int64_t export_scan_time(const struct export_scan *s);
void export_scan_clear(struct export_scan *s);

/* Boot files staged beside the image (kernel, initrd, loader configuration), dated mtime. */
int export_stage_buffer(const char *path, const void *data, size_t len, int64_t mtime,
                        struct mosaic_error *err);
int export_stage_view_file(struct export_reader *r, const char *view_path, const char *path,
                           int64_t mtime, struct mosaic_error *err);
int export_stage_host_file(const char *host_path, const char *path, int64_t mtime,
                           struct mosaic_error *err);
/* The kernel command line: first, then given (the manifest's), else the view's
 * /etc/kernel/cmdline, on one line; caller frees. */
char *export_kernel_cmdline(struct export_reader *r, const char *first, const char *given);
/* The value of KEY= in an os-release text, unquoted; NULL if none; caller frees. */
char *export_os_release_value(const char *text, const char *key);

/* ---- tar (tar.c) -------------------------------------------------------------------------- */

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

/* ---- UUIDs (uuid.c) ----------------------------------------------------------------------- */

/* A UUID derived from a 32-byte seed and a label: the first 16 bytes of SHA-256(seed, label)
 * marked as a version 4 (random) UUID, as systemd-repart derives its UUIDs. */
void export_derive_uuid(const uint8_t seed[SHA256_LEN], const char *label, uint8_t out[16]);
void export_uuid_string(const uint8_t u[16], char out[37]);

/* ---- host tools (host-tools.c) ----------------------------------------------------------- */

#define EXPORT_GRUB_DIR "/usr/lib/grub"

/* Runs argv[0] (looked up in PATH, then /usr/sbin and /sbin) with stdin and stdout on
 * /dev/null, LC_ALL=C, TZ=UTC, MTOOLS_SKIP_CHECK=1 and the NULL-terminated "NAME=VALUE"s of
 * env; its stderr becomes the error message. A missing tool is an error naming package. */
int export_run_tool(char *const argv[], const char *package, char *const env[],
                    struct mosaic_error *err);

/* GRUB as one image (grub-mkimage from the host's GRUB, format "x86_64-efi" or
 * "i386-pc-eltorito") with the modules a mosaic image boots with, extra ones and the early
 * configuration early built in. */
int export_grub_mkimage(const char *format, const char *early, const char *out,
                        const char *const extra[], size_t n_extra, struct mosaic_error *err);
/* Converts the raw disk image raw into fmt ("qcow2", "vmdk", "vhdx") at out with qemu-img. */
int export_convert(const char *raw, const char *fmt, const char *out, struct mosaic_error *err);

/* ---- ext4 (ext4.c) ------------------------------------------------------------------------ */

#define EXPORT_EXT4_BLOCK 4096u

/* What the view's entries take in an ext4 filesystem, metadata aside. */
struct export_fs_usage {
	uint64_t inodes; /* distinct inodes (a hard-linked file once) */
	uint64_t blocks; /* 4 KiB blocks of file data, extent trees, long symlinks, xattr blocks */
	uint64_t dirs, dir_bytes; /* directories and the bytes of their entries */
};
/* Adds what entry e takes (a later name of a hard-linked file only its directory entry). */
void export_ext4_account(struct export_fs_usage *u, const struct export_entry *e, bool first_link);
/* Sizing an ext4 filesystem for usage plus free_bytes of room: the inode and block counts to
 * make it with (the journal, inode tables, bitmaps, descriptors, the root reserve of 5% and
 * some slack included). Pure arithmetic. */
void export_ext4_size(const struct export_fs_usage *u, uint64_t free_bytes, uint64_t *blocks,
                      uint64_t *inodes);

struct export_ext4_options {
	const char *path; /* an existing file of zeros, at least offset + blocks * 4 KiB long */
	uint64_t offset;  /* bytes */
	uint64_t blocks, inodes;
	uint8_t uuid[16], hash_seed[16];
	int64_t epoch; /* mtimes are clamped to it (< 0: not); every other time is `now` */
	int64_t now;
	const char *label;
};
/* Writes the view as an ext4 filesystem (libext2fs: the features of Debian's mke2fs.conf for
 * ext4) into o->path at o->offset, as a normal user: owners, modes, devices, xattrs and hard
 * links from the view; the same view and options give the same bytes. -ENOSPC when it does not
 * fit. */
int export_ext4_write(struct export_reader *r, const struct export_ext4_options *o,
                      struct mosaic_error *err);

/* ---- raw disk (disk.c) -------------------------------------------------------------------- */

struct export_partition {
	unsigned number;
	const char *type_guid, *filesystem;
	char name[37];
	const char *mountpoint; /* "/", "/var", …; NULL for the ESP and swap */
	char uuid[37], fs_uuid[37];
	uint64_t start, size; /* bytes */
};

struct export_raw_result {
	struct export_partition parts[EXPORT_MAX_PARTITIONS];
	size_t n_parts;
	char disk_uuid[37];
	uint64_t size, entries;
	int64_t newest_mtime;  /* before clamping */
	char *kernel, *initrd; /* the view's paths copied to the ESP, or NULL */
	char *bootloader;      /* "systemd-boot", "grub" or NULL */
	char *fstab;           /* what the image's /etc/fstab says of its partitions, or NULL */
};
void export_raw_result_clear(struct export_raw_result *res);

struct export_raw_options {
	const char *path;           /* a fresh empty file to write the disk into */
	uint64_t size;              /* 0: from the content */
	uint64_t free_space;        /* room left in each ext4 filesystem sized from content */
	int64_t source_date_epoch;  /* < 0: none */
	bool no_bootloader;         /* an empty ESP, no kernel needed */
	const char *kernel_cmdline; /* NULL: the view's /etc/kernel/cmdline */
	const char *filesystem;     /* the root's: "ext4" (NULL) or "squashfs" (read-only, with
	                             * a writable /var partition) */
	const char *bootloader;     /* "systemd-boot" (NULL) or "grub" */
	const struct export_partition_spec *partitions;
	size_t n_partitions;
};
/* Writes a GPT disk (libfdisk) into o->path: partition 1 the EFI system partition (FAT32 by
 * mkfs.vfat and mtools, no mount) with systemd-boot or GRUB and the view's kernel, partition 2
 * the root (Discoverable Partitions x86-64 root type) as ext4 written from the view or as a
 * squashfs, then one partition for each of o->partitions: the view's subtree at its mount point
 * as ext4, or swap (mkswap). With partitions of its own, the image's /etc/fstab mounts them.
 * UUIDs derive from the view; the same view and options give the same bytes. */
int export_raw(struct export_reader *r, const struct export_raw_options *o,
               struct export_raw_result *res, struct mosaic_error *err);

/* ---- squashfs (squashfs.c) ---------------------------------------------------------------- */

struct export_squashfs_options {
	const char *path;          /* the image to write (created or truncated) */
	int64_t source_date_epoch; /* mtimes are clamped to it (< 0: not) */
	int64_t mtime;             /* the superblock's time */
	int level;                 /* zstd level; 0: the writer's default */
};
struct export_squashfs_result {
	uint64_t size, entries, content_bytes;
	uint64_t skipped_xattrs; /* system.* (POSIX ACLs): squashfs cannot hold them */
	int64_t newest_mtime;    /* before clamping */
};
/* Writes the view as one squashfs image (zstd) with fragments/'s libsquashfs writer, straight
 * from the reader: owners, modes, clamped mtimes, devices, FIFOs, sockets, symlinks, hard
 * links, user./trusted./security. xattrs. The same view and options give the same bytes. */
int export_squashfs(struct export_reader *r, const struct export_squashfs_options *o,
                    struct export_squashfs_result *res, struct mosaic_error *err);

/* ---- ISO (iso.c) ------------------------------------------------------------------------- */

struct export_iso_options {
	const char *path;           /* a fresh empty file to write the ISO into */
	int64_t source_date_epoch;  /* < 0: none (the view's newest mtime dates the ISO) */
	bool no_bootloader;         /* the squashfs only: no kernel, no GRUB, no live-boot */
	const char *kernel_cmdline; /* after boot=live; NULL: the view's /etc/kernel/cmdline */
};
struct export_iso_result {
	char volume_id[33];
	char id_uuid[37]; /* names the ISO's marker file /.disk/mosaic-UUID GRUB looks for */
	uint64_t size, entries;
	int64_t newest_mtime; /* before clamping */
	struct export_squashfs_result squashfs;
	char squashfs_sha256[SHA256_HEX_LEN + 1];
	char *kernel, *initrd, *cmdline; /* the view's paths and the kernel's command line, or
	                                  * NULL without a boot loader */
};
void export_iso_result_clear(struct export_iso_result *res);
/* Writes a hybrid ISO 9660 image (xorriso) in the Debian live layout: /live/vmlinuz,
 * /live/initrd.img (the view's newest /boot/vmlinuz-* and its initrd.img), and
 * /live/filesystem.squashfs (export_squashfs); GRUB (grub-mkimage from the host) boots it by
 * BIOS and UEFI, from CD and from disk, with boot=live and the command line. The view must
 * have live-boot's initramfs script. The same view and epoch give the same bytes. */
int export_iso(struct export_reader *r, const struct export_iso_options *o,
               struct export_iso_result *res, struct mosaic_error *err);
