/* libFuzzer target for the composition index reader: the daemon maps an index file and trusts
 * every offset after compose_index_open, so a corrupt index must be refused, never crash.
 * The harness fixes up the header checksum first, or the fuzzer would never get past it. */
#include "compose/index-format.h"

#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads land here so the compiler keeps them. */
volatile char sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	if (size >= sizeof(struct index_header)) {
		struct index_header *h = (void *)copy;
		char hex[SHA256_HEX_LEN + 1];
		size_t hs = h->header_size <= size ? h->header_size : size;
		sha256_buffer(copy + hs, size - hs, hex);
		for (int i = 0; i < SHA256_LEN; i++)
			sscanf(hex + 2 * i, "%2hhx", &h->checksum[i]);
	}
	struct compose_index *x;
	struct mosaic_error err = {0};
	if (compose_index_open_buffer(copy, size, &x, &err) == 0) {
		/* Everything a FUSE handler may touch. */
		uint32_t n = compose_index_inodes(x);
		for (uint32_t ino = 1; ino <= n; ino++) {
			const struct compose_inode *in = compose_index_inode(x, ino);
			uint32_t c;
			const struct compose_dirent *d = compose_index_dirents(x, ino, &c);
			for (uint32_t i = 0; i < c; i++) {
				const char *name = compose_index_string(x, d[i].name_off);
				if (!compose_index_inode(x, d[i].ino))
					__builtin_trap();
				(void)compose_index_lookup(x, ino, name, d[i].name_len);
			}
			const struct compose_xattr *a = compose_index_xattrs(x, ino, &c);
			for (uint32_t i = 0; i < c; i++) {
				const char *v = compose_index_string(x, a[i].value_off);
				for (uint32_t k = 0; k < a[i].value_len; k++)
					sink ^= v[k];
			}
			if (S_ISLNK(in->mode) && in->data_len) {
				sink ^= compose_index_string(x, in->data_off)[in->data_len - 1];
			}
			if (S_ISDIR(in->mode) && !compose_index_inode(x, in->parent))
				__builtin_trap();
		}
		(void)compose_index_resolve(x, "/usr/bin/../lib//x");
		char dg[65];
		for (uint32_t i = 0; i < compose_index_fragments(x); i++)
			compose_index_fragment_digest(x, i, dg);
		compose_index_close(x);
	} else if (!err.msg[0]) {
		__builtin_trap();
	}
	free(copy);
	return 0;
}
