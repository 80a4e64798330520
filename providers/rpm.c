/* providers/: RPM repositories (rpm-md). repomd.xml is verified against the repository's
 * keyring with its detached repomd.xml.asc; the primary and filelists it names are fetched by
 * their SHA-256 into the content-addressed cache, loaded into libsolv and cached as a .solv
 * file. Packages are checked again after download: their header signature against the keyring.
 *
 * Cache layout below ctx->cache_dir:
 *   metadata/<sha256 of the baseurl>/repomd.xml, repomd.xml.asc
 *   metadata/sha256/<hex>[.gz|.xz|.zst|.bz2]
 *   solv/<key>.solv   key: sha256 over the primary and filelists digests, arch, libsolv version */
#include "providers/internal.h"

#include <string.h>

#include <solv/solv_xfopen.h>
#include <solv/solvversion.h>

#include "fragments/fragment.h"

#define REPOMD_MAX       (16u << 20)
#define RPM_CACHE_FORMAT "mosaic-rpm-1" /* bump when what goes into the .solv changes */

static const char *compression_suffix(const char *location)
{
	static const char *const known[] = {".gz", ".xz", ".zst", ".bz2"};
	const char *dot = strrchr(location, '.');
	for (size_t i = 0; dot && i < ARRAY_SIZE(known); i++)
		if (!strcmp(dot, known[i]))
			return known[i];
	return "";
}

static int verify_repomd(struct repo *r, const char *xml_path, const char *asc_path,
                         const char *url, struct mosaic_error *err)
{
	const struct repo_config *c = &r->cfg;
	if (!c->keyring)
		return mosaic_errorf(err, -ENOKEY,
		                     "repository %s has no keyring to check repomd.xml against",
		                     c->name);
	_cleanup_free_ char *xml = NULL, *asc = NULL;
	size_t xml_len, asc_len;
	int ret = read_file(xml_path, REPOMD_MAX, &xml, &xml_len);
	if (ret >= 0)
		ret = read_file(asc_path, REPOMD_MAX, &asc, &asc_len);
	if (ret < 0)
		return mosaic_errorf(err, ret, "repository %s: reading the cached repomd.xml: %s",
		                     c->name, strerror(-ret));
	struct keyring *k = NULL;
	if ((ret = keyring_open(c->keyring, &k, err)) < 0) {
		mosaic_error_prefix(err, "repository %s", c->name);
		return ret;
	}
	ret = keyring_verify_metadata(k, xml, xml_len, asc, asc_len, NULL, err);
	keyring_free(k);
	if (ret < 0) {
		mosaic_error_prefix(err, "repository %s: %s", c->name, url);
		return ret;
	}
	sha256_buffer(xml, xml_len, r->root_digest);
	return 0;
}

static int rpm_load(struct provider_ctx *ctx, struct repo *r, struct mosaic_error *err)
{
	const struct repo_config *c = &r->cfg;
	Pool *pool = ctx->pool;
	if (!c->uri)
		return mosaic_errorf(err, -EINVAL, "repository %s: needs a baseurl", c->name);
	_cleanup_free_ char *uri = strip_trailing_slashes(c->uri);
	char key[SHA256_HEX_LEN + 1];
	sha256_buffer(uri, strlen(uri), key);
	_cleanup_free_ char *mdir = provider_cache_path(ctx, "metadata", key);
	_cleanup_free_ char *xml_path = path_join(mdir, "repomd.xml");
	_cleanup_free_ char *asc_path = path_join(mdir, "repomd.xml.asc");
	_cleanup_free_ char *xml_url = xasprintf("%s/repodata/repomd.xml", uri);
	_cleanup_free_ char *asc_url = xasprintf("%s/repodata/repomd.xml.asc", uri);

	struct download_item root[] = {
	    {.url = xml_url, .dest = xml_path, .conditional = true},
	    {.url = asc_url, .dest = asc_path},
	};
	int ret = metadata_fetch(ctx, root, ARRAY_SIZE(root), c->name, err);
	if (ret < 0)
		return ret;
	if ((ret = verify_repomd(r, xml_path, asc_path, xml_url, err)) < 0)
		return ret;

	_cleanup_free_ char *xml = NULL;
	size_t xml_len;
	if ((ret = read_file(xml_path, REPOMD_MAX, &xml, &xml_len)) < 0)
		return mosaic_errorf(err, ret, "%s: %s", xml_path, strerror(-ret));
	struct repomd_file files[2] = {{0}};
	if ((ret = repomd_parse(xml, xml_len, &files[0], &files[1], err)) < 0) {
		mosaic_error_prefix(err, "repository %s", c->name);
		return ret;
	}
	size_t nf = files[1].location ? 2 : 1;

	struct sha256 *h = sha256_new();
	sha256_update(h, RPM_CACHE_FORMAT "\n", strlen(RPM_CACHE_FORMAT) + 1);
	sha256_update(h, LIBSOLV_VERSION_STRING "\n", strlen(LIBSOLV_VERSION_STRING) + 1);
	sha256_update(h, ctx->arch, strlen(ctx->arch) + 1);
	char *urls[2] = {NULL}, *dests[2] = {NULL};
	for (size_t i = 0; i < nf; i++) {
		urls[i] = xasprintf("%s/%s", uri, files[i].location);
		_cleanup_free_ char *name = xasprintf("sha256/%s%s", files[i].sha256,
		                                      compression_suffix(files[i].location));
		dests[i] = provider_cache_path(ctx, "metadata", name);
		sha256_update(h, files[i].sha256, SHA256_HEX_LEN);
	}
	char solv_key[SHA256_HEX_LEN + 1];
	sha256_final(h, solv_key);
	_cleanup_free_ char *solv_name = xasprintf("%s.solv", solv_key);
	_cleanup_free_ char *solv_path = provider_cache_path(ctx, "solv", solv_name);

	Repo *repo = solv_cache_load(pool, c->name, solv_path);
	if (!repo) {
		struct download_item items[2];
		for (size_t i = 0; i < nf; i++)
			items[i] = (struct download_item){.url = urls[i],
			                                  .dest = dests[i],
			                                  .sha256 = files[i].sha256,
			                                  .size = files[i].size};
		ret = metadata_fetch(ctx, items, nf, c->name, err);
		if (ret >= 0)
			repo = repo_create(pool, c->name);
		for (size_t i = 0; i < nf && ret >= 0; i++) {
			_cleanup_free_ char *what =
			    xasprintf("repository %s: %s", c->name, urls[i]);
			FILE *f = solv_xfopen(dests[i], "r");
			if (!f) {
				ret =
				    mosaic_errorf(err, -EIO, "%s: cannot open %s", what, dests[i]);
				break;
			}
			ret = rpmmd_add(repo, f, i == 1, what, err);
			fclose(f);
		}
		if (ret >= 0) {
			repo_internalize(repo);
			solv_cache_write(repo, solv_path); /* only a cache */
		} else if (repo) {
			repo_free(repo, 1);
			repo = NULL;
		}
	}
	for (size_t i = 0; i < nf; i++) {
		free(urls[i]);
		free(dests[i]);
		repomd_file_clear(&files[i]);
	}
	if (ret < 0)
		return ret;
	repo_attach(r, repo);
	return 0;
}

static int rpm_verify_package(struct provider_ctx *ctx, const struct repo *r, const char *path,
                              const struct package *p, struct mosaic_error *err)
{
	const char *what = p && p->name ? p->name : path;
	if (!r->cfg.keyring)
		return mosaic_errorf(err, -ENOKEY, "%s: repository %s has no keyring to check it",
		                     what, r->cfg.name);
	struct keyring *k = NULL;
	int ret = keyring_open(r->cfg.keyring, &k, err);
	if (ret < 0) {
		mosaic_error_prefix(err, "repository %s", r->cfg.name);
		return ret;
	}
	const char *status = NULL;
	_cleanup_free_ char *keyid = NULL;
	ret = rpm_signature_check(k, path, &status, &keyid, err);
	keyring_free(k);
	if (ret < 0)
		return ret;
	if (!strcmp(status, "ok"))
		return 0;
	if (!strcmp(status, "nokey"))
		return mosaic_errorf(err, -ENOKEY,
		                     "package %s (%s): signature status nokey: signed by key %s, "
		                     "which is not in the repository's keyring %s",
		                     what, path, keyid ? keyid : "(unknown)", r->cfg.keyring);
	if (!strcmp(status, "unsigned"))
		return mosaic_errorf(err, -EKEYREJECTED,
		                     "package %s (%s): signature status unsigned: the package is "
		                     "not signed, and repository %s requires signatures",
		                     what, path, r->cfg.name);
	return mosaic_errorf(
	    err, -EKEYREJECTED, "package %s (%s): signature status %s%s", what, path, status,
	    !strcmp(status, "bad") ? ": the package or its signature was modified" : "");
}

const struct provider provider_rpm = {
    .type = "rpm",
    .suffix = ".rpm",
    .disttype = DISTTYPE_RPM,
    .load = rpm_load,
    .verify_package = rpm_verify_package,
};
