/* pipeline/: what a build records when its fragments are made: the lock (exact versions and the
 * fragment of each package and generated part) and the store's gc root that keeps them. */
#include "pipeline/internal.h"

#include <string.h>

/* Writes the lock: a locked build records the fragments it made too. */
int step_write_lock(struct build *b, struct mosaic_error *err)
{
	return lock_write(b->lock_path, &b->lock, err);
}

/* Records the build's fragments in the store's roots, so that gc keeps them: one root per
 * history (manifest-NAME, or manifest-NAME@FACTS), so that two roles do not drop each other's. */
int step_record_root(struct build *b, struct mosaic_error *err)
{
	const struct lock *l = &b->lock;
	_cleanup_free_ char *dir = path_join(store_root(b->store), "roots");
	_cleanup_free_ char *name = xasprintf("manifest-%s", b->history);
	_cleanup_free_ char *path = path_join(dir, name);
	size_t cap = (l->n_packages + 16) * (SHA256_HEX_LEN + 1) + 1, len = 0;
	_cleanup_free_ char *text = xmalloc(cap);
	text[0] = 0;
	for (size_t i = 0; i < l->n_packages; i++)
		len += snprintf(text + len, cap - len, "%s\n", l->packages[i].fragment);
	for (size_t i = 0; l->fragments && i < json_object_array_length(l->fragments); i++) {
		const char *d = model_str(json_object_array_get_idx(l->fragments, i), "digest");
		if (d && len + SHA256_HEX_LEN + 2 < cap)
			len += snprintf(text + len, cap - len, "%s\n", d);
	}
	/* The build stands without it; only gc would not know to keep its fragments. */
	if (write_file_atomic(path, text, len, 0644) < 0)
		pipeline_say(b->ev, PIPELINE_WARNING, "lock",
		             "could not record the build in %s/roots", store_root(b->store));
	(void)err;
	return 0;
}
