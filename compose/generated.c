/* The generated fragments of a composition (the package databases): made from a scratch tree,
 * found again by a key of their inputs. */
#include "compose/compose.h"
#include "fragments/fragment.h"

#include <string.h>
#include <sys/stat.h>

int compose_read_descriptor(struct store *s, struct keyring *k, const char *digest,
                            struct fragment_descriptor *d, struct mosaic_error *err)
{
	_cleanup_free_ char *image = store_object_path(s, digest, ".sqfs");
	if (k)
		return fragment_verify(k, image, d, err);
	/* Our own store, just written by the caller: the descriptor alone. */
	_cleanup_free_ char *jp = store_object_path(s, digest, ".json");
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = read_file(jp, 16 << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", jp, strerror(-r));
	return fragment_descriptor_parse(text, len, d, err);
}

void compose_digests_key(const char *salt, const char *const *digests, size_t n,
                         char hex[SHA256_HEX_LEN + 1])
{
	struct sha256 *h = sha256_new();
	sha256_update(h, salt, strlen(salt));
	for (size_t i = 0; i < n; i++) {
		sha256_update(h, digests[i], strlen(digests[i]));
		sha256_update(h, "\n", 1);
	}
	sha256_final(h, hex);
}

static char *cache_path(const char *kind, const char *key)
{
	_cleanup_free_ char *cache = mosaic_cache_dir();
	return xasprintf("%s/%s/%s", cache, kind, key);
}

bool compose_generated_find(const struct store *s, const char *kind, const char *key,
                            char digest[SHA256_HEX_LEN + 1])
{
	_cleanup_free_ char *path = cache_path(kind, key);
	_cleanup_free_ char *known = NULL;
	if (read_file(path, 128, &known, NULL) < 0 || !store_has(s, known))
		return false;
	memcpy(digest, known, SHA256_HEX_LEN + 1);
	return true;
}

int compose_generated_remember(const char *kind, const char *key, const char *digest,
                               struct mosaic_error *err)
{
	_cleanup_free_ char *path = cache_path(kind, key);
	_cleanup_free_ char *dir = xstrndup(path, strrchr(path, '/') - path);
	int r = mkdir_p(dir, 0755);
	if (r == 0)
		r = write_file_atomic(path, digest, SHA256_HEX_LEN, 0644);
	return r < 0 ? mosaic_errorf(err, r, "could not write %s: %s", path, strerror(-r)) : 0;
}

int compose_generated_make(struct store *s, const struct compose_generated *g,
                           char digest[SHA256_HEX_LEN + 1], struct mosaic_error *err)
{
	const char *tmpdir = getenv("TMPDIR");
	_cleanup_free_ char *tmp =
	    xasprintf("%s/mosaic-%s.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp", g->name);
	if (!mkdtemp(tmp))
		return mosaic_errorf(err, -errno, "%s: %s", tmp, strerror(errno));
	/* A fixed name for the source directory: the descriptor records it. */
	_cleanup_free_ char *root = path_join(tmp, g->name);
	int r =
	    mkdir(root, 0755) < 0 ? mosaic_errorf(err, -errno, "%s: %s", root, strerror(errno)) : 0;
	if (r == 0)
		r = g->fill(root, g->ctx, err);
	if (r == 0) {
		struct fragment_create_options o = {
		    .name = g->name,
		    .version = g->version,
		    .arch = g->arch,
		    .kind = g->kind,
		    .sign_key = g->sign_key,
		    .source_date_epoch = g->epoch,
		    .owner_set = true,
		};
		struct fragment_info info = {0};
		r = fragment_create(s, root, &o, &info, err);
		if (r == 0)
			memcpy(digest, info.digest, SHA256_HEX_LEN + 1);
		fragment_info_clear(&info);
	}
	rm_tree(tmp);
	return r;
}
