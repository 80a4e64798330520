/* configure/: configure_key, what a config fragment made by configure_root is a function of, so
 * that a build finds the fragment again instead of running any script. */
#include "configure/internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <string.h>

/* Bumped when configure would make another upper from the same inputs. */
#define CONFIGURE_VERSION 2

/* A copy of v without the keys that only say where a run: step is written (a comment added
 * above it moves its line, not what it does). */
static json_object *without_positions(json_object *v)
{
	json_object *copy = NULL;
	if (!v || json_object_deep_copy(v, &copy, NULL) < 0)
		return NULL;
	for (size_t i = 0;
	     json_object_is_type(copy, json_type_array) && i < json_object_array_length(copy);
	     i++) {
		json_object *step = json_object_array_get_idx(copy, i);
		json_object_object_del(step, "file");
		json_object_object_del(step, "line");
	}
	return copy;
}

static void hash_json(struct sha256 *h, const char *what, json_object *v)
{
	const char *s = v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "null";
	sha256_update(h, what, strlen(what) + 1);
	sha256_update(h, s, strlen(s) + 1);
}

int configure_key(json_object *manifest, char *const *digests, size_t n, int64_t source_date_epoch,
                  char hex[SHA256_HEX_LEN + 1], struct mosaic_error *err)
{
	struct sha256 *h = sha256_new();
	_cleanup_free_ char *salt = xasprintf("mosaic configure v%d\n", CONFIGURE_VERSION);
	sha256_update(h, salt, strlen(salt));
	/* In reproducible mode the fragment is a function of the date too: its mtimes are
	 * clamped to it and the initramfs is dated by it. The text is what it was when the date
	 * came straight from the environment, so keys made then still match. */
	if (source_date_epoch >= 0) {
		_cleanup_free_ char *line = xasprintf("epoch %" PRId64 "\n", source_date_epoch);
		sha256_update(h, line, strlen(line));
	}
	for (size_t i = 0; i < n; i++) {
		sha256_update(h, digests[i], strlen(digests[i]));
		sha256_update(h, "\n", 1);
	}
	json_object *config = NULL, *run = NULL, *files = NULL;
	json_object_object_get_ex(manifest, "config", &config);
	json_object_object_get_ex(manifest, "run", &run);
	hash_json(h, "config", config);
	json_object *steps = without_positions(run);
	hash_json(h, "run", steps);
	json_object_put(steps);
	/* A file given by source: is part of the configuration by its content. */
	if (config)
		json_object_object_get_ex(config, "files", &files);
	for (size_t i = 0; files && i < json_object_array_length(files); i++) {
		json_object *src;
		if (!json_object_object_get_ex(json_object_array_get_idx(files, i), "source", &src))
			continue;
		const char *path = json_object_get_string(src);
		_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
		char content[SHA256_HEX_LEN + 1];
		if (fd < 0 || sha256_fd(fd, content) < 0) {
			int e = errno;
			char discard[SHA256_HEX_LEN + 1];
			sha256_final(h, discard);
			return mosaic_errorf(err, -e, "config.files: %s: %s", path, strerror(e));
		}
		sha256_update(h, content, SHA256_HEX_LEN + 1);
	}
	sha256_final(h, hex);
	return 0;
}
