/* The composition index file (docs/formats.md): header, fragment table, inode table, sorted
 * directory entries, xattrs and one string table. Internal to compose/. */
#pragma once

#include "compose/compose.h"

#define INDEX_MAGIC "MOSAICIX"

struct index_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint64_t file_size;
	uint8_t checksum[SHA256_LEN]; /* SHA-256 of bytes [header_size, file_size) */
	uint32_t n_fragments, n_inodes;
	uint64_t n_dirents, n_xattrs;
	uint64_t fragments_off, inodes_off, dirents_off, xattrs_off, strings_off, strings_size;
};

struct index_fragment {
	uint8_t digest[SHA256_LEN];
};
