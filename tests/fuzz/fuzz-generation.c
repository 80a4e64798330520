/* libFuzzer target for pipeline_generation_parse: generation records live in a store that may be
 * shared, and are read before anything they name is verified. */
#include "pipeline/internal.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pipeline_generation g;
	struct mosaic_error err = {0};
	int r = pipeline_generation_parse((const char *)data, size, &g, &err);
	if (r < 0) {
		/* A rejection carries a negative errno and a NUL-terminated message. */
		if (g.history || g.digests ||
		    strnlen(err.msg, sizeof(err.msg)) == sizeof(err.msg) || !err.msg[0])
			__builtin_trap();
		return 0;
	}
	/* What a caller reads afterwards is there and well formed ... */
	if (g.number < 1 || !pipeline_history_valid(g.history) || !is_sha256_hex(g.lock_digest) ||
	    !is_sha256_hex(g.index_digest) || !is_sha256_hex(g.manifest_digest) || !g.facts ||
	    !*g.manifest || !*g.index_path || (g.n_fragments && !g.digests))
		__builtin_trap();
	for (size_t i = 0; i < g.n_fragments; i++) {
		if (!is_sha256_hex(g.digests[i]) || !*g.names[i] || !*g.kinds[i])
			__builtin_trap();
		const char *optional[] = {g.versions[i], g.archs[i], g.sources[i]};
		for (size_t k = 0; k < ARRAY_SIZE(optional); k++)
			if (optional[k] && !*optional[k])
				__builtin_trap();
	}
	if (g.digests[g.n_fragments] || g.names[g.n_fragments] || g.kinds[g.n_fragments])
		__builtin_trap();
	/* ... and written again it reads back to the same text. */
	char *text = pipeline_generation_format(&g);
	struct pipeline_generation h;
	if (pipeline_generation_parse(text, strlen(text), &h, &err) < 0)
		__builtin_trap();
	char *again = pipeline_generation_format(&h);
	if (strcmp(text, again) != 0)
		__builtin_trap();
	free(again);
	free(text);
	pipeline_generation_clear(&h);
	pipeline_generation_clear(&g);
	return 0;
}
