/* The index cache: one index per ordered fragment list, named by the hash of that list. */
#include "compose/compose.h"

#include <string.h>

char *compose_index_cache_path(const struct compose_input *in, size_t n)
{
	struct sha256 *h = sha256_new();
	char hex[SHA256_HEX_LEN + 1];
	/* The merge rules count too: an index cached under older rules is another tree. */
	_cleanup_free_ char *salt = xasprintf("mosaic composition index v%d rules %d\n",
	                                      COMPOSE_INDEX_VERSION, COMPOSE_RULES_VERSION);
	sha256_update(h, salt, strlen(salt));
	for (size_t i = 0; i < n; i++) {
		sha256_update(h, in[i].digest, strlen(in[i].digest));
		sha256_update(h, "\n", 1);
	}
	sha256_final(h, hex);
	_cleanup_free_ char *cache = mosaic_cache_dir();
	return xasprintf("%s/index/%s.idx", cache, hex);
}
