/* compose/: an ordered list of fragments becomes one composition index (docs/formats.md):
 * overlay rules as kernel overlayfs applies them, conflicts, and the mmap-able index reader
 * that answers every metadata question without opening a fragment. */
#pragma once

#include "common/common.h"

#define COMPOSE_INDEX_VERSION 1
#define COMPOSE_ROOT_INO      1
#define COMPOSE_NO_FRAGMENT   UINT32_MAX

/* On-disk records, little-endian, as the index file stores them. */
struct compose_inode {
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	int64_t mtime;
	uint32_t rdev;       /* major << 20 | minor (the kernel's new_encode_dev would not fit) */
	uint32_t fragment;   /* index into the fragment table, COMPOSE_NO_FRAGMENT if none */
	uint64_t frag_inode; /* inode_id inside that fragment (fragment_file_open takes it) */
	uint32_t parent;     /* directories: the parent's ino (the root's is itself) */
	uint32_t data_off;   /* symlinks: target in the string table; dirs: first dirent */
	uint32_t data_len;   /* symlinks: target length; dirs: number of dirents */
	uint32_t xattr_first, xattr_count;
	uint32_t reserved;
};

struct compose_dirent {
	uint32_t name_off, name_len;
	uint32_t ino;
	uint32_t reserved;
};

struct compose_xattr {
	uint32_t name_off, name_len;
	uint32_t value_off, value_len;
};

/* One input fragment, lowest first. */
struct compose_input {
	const char *image_path;
	const char *digest; /* 64 hex */
	const char *name;
	bool package; /* kind package: same-path regular files with other content are conflicts */
};

struct compose_conflict {
	char *path;
	uint32_t lower, upper; /* input indices */
};

struct compose_result {
	uint32_t inodes, directories;
	uint64_t dirents;
	struct compose_conflict *conflicts;
	size_t n_conflicts;
};
void compose_result_clear(struct compose_result *r);

/* Builds the index for the inputs into out_path (atomically). With strict, a conflict fails
 * the build (-EEXIST) and err names the first ones. */
int compose_index_build(const struct compose_input *in, size_t n, bool strict, const char *out_path,
                        struct compose_result *res, struct mosaic_error *err);

/* ---- reading an index -------------------------------------------------------------------- */

struct compose_index;
/* Maps path and checks magic, version, checksum and that every offset stays in bounds. */
int compose_index_open(const char *path, struct compose_index **out, struct mosaic_error *err);
/* The same checks on a buffer the caller owns (the fuzz target uses this). */
int compose_index_open_buffer(const void *data, size_t size, struct compose_index **out,
                              struct mosaic_error *err);
void compose_index_close(struct compose_index *idx);

uint32_t compose_index_fragments(const struct compose_index *idx);
/* The hex digest of fragment i (65 bytes with the NUL, in buf). */
void compose_index_fragment_digest(const struct compose_index *idx, uint32_t i, char buf[65]);
uint32_t compose_index_inodes(const struct compose_index *idx);
/* Inode ino (1..inodes), or NULL when out of range. */
const struct compose_inode *compose_index_inode(const struct compose_index *idx, uint64_t ino);
/* Looks name up in directory dir by binary search; returns the ino or 0. */
uint32_t compose_index_lookup(const struct compose_index *idx, uint64_t dir, const char *name,
                              size_t len);
/* Directory entries of dir, sorted by name (count 0 for a non-directory). */
const struct compose_dirent *compose_index_dirents(const struct compose_index *idx, uint64_t dir,
                                                   uint32_t *count);
const struct compose_xattr *compose_index_xattrs(const struct compose_index *idx, uint64_t ino,
                                                 uint32_t *count);
/* A string-table slice (not NUL-terminated). */
const char *compose_index_string(const struct compose_index *idx, uint32_t off);
/* Resolves a path ("" or "/" is the root) to an ino, or 0. */
uint32_t compose_index_resolve(const struct compose_index *idx, const char *path);

/* Where the index of this ordered fragment list is cached: $MOSAIC_CACHE_DIR/index/<sha256 of
 * the index version and the ordered digests>.idx. Caller frees. */
char *compose_index_cache_path(const struct compose_input *in, size_t n);
