/* pipeline/: the composition index of an ordered fragment list, built once and cached by that
 * list (compose_index_cache_path), for opening a composition and for recording a generation. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <string.h>
#include <unistd.h>

static void index_progress(size_t done, size_t n, uint64_t entries, void *data)
{
	char item[48];
	snprintf(item, sizeof(item), "%ju entries", (uintmax_t)entries);
	pipeline_progress(data, "index", item, done, n, 0, 0);
}

int pipeline_index_cached(const struct compose_input *in, size_t n, char **index_path,
                          struct pipeline_events *ev, struct mosaic_error *err)
{
	const struct compose_build_options o = {.progress = index_progress, .data = ev};
	_cleanup_free_ char *cached = compose_index_cache_path(in, n);
	if (access(cached, R_OK) < 0) {
		_cleanup_free_ char *dir = xstrndup(cached, strrchr(cached, '/') - cached);
		mkdir_p(dir, 0755);
		int r = compose_index_build(in, n, &o, cached, NULL, err);
		if (r < 0)
			return r;
	}
	*index_path = TAKE_PTR(cached);
	return 0;
}
