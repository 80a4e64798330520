/* providers/: Debian repositories. InRelease (or Release and Release.gpg) is verified against
 * the repository's keyring; the Packages indexes it lists are fetched by hash into a
 * content-addressed cache, checked, loaded into libsolv and cached as a .solv file, with the
 * base sets (Essential: yes, Priority: required/important) beside it.
 *
 * Cache layout below ctx->cache_dir:
 *   metadata/<sha256 of "uri suite">/InRelease (or Release, Release.gpg)
 *   metadata/sha256/<hex>[.xz|.gz]   Packages indexes, named by the digest the Release gives
 *   solv/<key>.solv, solv/<key>.sets  key: sha256 over the index digests, arch, libsolv version
 * A .sets file is "mosaic-deb-sets 1" and then one "essential|required|important NAME" a line. */
#include "providers/internal.h"

#include <string.h>
#include <time.h>

#include <solv/solvversion.h>

#include "fragments/fragment.h"

#define RELEASE_MAX      (16u << 20)
#define PACKAGES_MAX     ((size_t)1 << 30)
#define DEB_CACHE_FORMAT "mosaic-deb-1" /* bump when what goes into the .solv changes */
#define SETS_HEADER      "mosaic-deb-sets 1\n"


static bool strv_contains(char *const *v, const char *s)
{
	for (char *const *p = v; p && *p; p++)
		if (!strcmp(*p, s))
			return true;
	return false;
}

static void push(char ***v, size_t *n, const char *s, size_t len)
{
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[(*n)++] = xstrndup(s, len);
}

/* Sorted, without duplicates, NULL-terminated; takes the strings. */
static char **finish_set(char **v, size_t n)
{
	qsort_safe(v, n, sizeof(*v), strcmp_ptr);
	char **out = xcalloc(n + 1, sizeof(*out));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (k && !strcmp(out[k - 1], v[i]))
			free(v[i]);
		else
			out[k++] = v[i];
	}
	free(v);
	return out;
}

static void sets_to_repo(struct deb_sets *s, struct repo *r)
{
	r->essential = finish_set(s->essential, s->n_essential);
	r->required = finish_set(s->required, s->n_required);
	r->important = finish_set(s->important, s->n_important);
	*s = (struct deb_sets){0};
}

static int write_sets(void *ctx, FILE *f)
{
	const struct repo *r = ctx;
	fputs(SETS_HEADER, f);
	for (char **n = r->essential; *n; n++)
		fprintf(f, "essential %s\n", *n);
	for (char **n = r->required; *n; n++)
		fprintf(f, "required %s\n", *n);
	for (char **n = r->important; *n; n++)
		fprintf(f, "important %s\n", *n);
	return ferror(f) ? -EIO : 0;
}

static bool read_sets(const char *path, struct repo *r)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	if (read_file(path, 64u << 20, &text, &len) < 0 ||
	    strncmp(text, SETS_HEADER, strlen(SETS_HEADER)) != 0)
		return false;
	struct deb_sets s = {0};
	for (char *l = text + strlen(SETS_HEADER); *l;) {
		char *nl = strchrnul(l, '\n');
		char *sp = memchr(l, ' ', nl - l);
		if (!sp) {
			deb_sets_clear(&s);
			return false;
		}
		size_t kl = sp - l, vl = nl - sp - 1;
		if (kl == 9 && !strncmp(l, "essential", 9))
			push(&s.essential, &s.n_essential, sp + 1, vl);
		else if (kl == 8 && !strncmp(l, "required", 8))
			push(&s.required, &s.n_required, sp + 1, vl);
		else if (kl == 9 && !strncmp(l, "important", 9))
			push(&s.important, &s.n_important, sp + 1, vl);
		else {
			deb_sets_clear(&s);
			return false;
		}
		l = *nl ? nl + 1 : nl;
	}
	sets_to_repo(&s, r);
	return true;
}

/* ---- loading --------------------------------------------------------------------------------- */

/* The signed root file: InRelease, or Release with Release.gpg where there is no InRelease. On
 * success *text is the signed text and r->root_digest the digest of the file that holds it. */
static int fetch_release(struct provider_ctx *ctx, struct repo *r, const char *base,
                         const char *mdir, char **text, size_t *len, struct mosaic_error *err)
{
	const struct repo_config *c = &r->cfg;
	_cleanup_free_ char *in_path = path_join(mdir, "InRelease");
	_cleanup_free_ char *rel_path = path_join(mdir, "Release");
	_cleanup_free_ char *gpg_path = path_join(mdir, "Release.gpg");
	_cleanup_free_ char *in_url = xasprintf("%s/InRelease", base);
	_cleanup_free_ char *rel_url = xasprintf("%s/Release", base);
	_cleanup_free_ char *gpg_url = xasprintf("%s/Release.gpg", base);
	bool clearsigned;
	int ret;

	if (ctx->offline) {
		clearsigned = access(in_path, F_OK) == 0;
		if (!clearsigned && (access(rel_path, F_OK) != 0 || access(gpg_path, F_OK) != 0))
			return mosaic_errorf(
			    err, -ENOENT, "no cached metadata for %s; run once without --offline",
			    c->name);
	} else {
		struct download_item in = {.url = in_url, .dest = in_path, .conditional = true};
		struct mosaic_error e2 = {0};
		ret = metadata_fetch(ctx, &in, 1, c->name, &e2);
		clearsigned = ret >= 0;
		if (ret < 0 && in.result != -ENOENT) {
			*err = e2;
			return ret;
		}
		if (!clearsigned) {
			/* A stale InRelease would win over the Release next time offline. */
			unlink(in_path);
			struct download_item items[] = {
			    /* Not conditional: the pair must come from the same moment. */
			    {.url = rel_url, .dest = rel_path},
			    {.url = gpg_url, .dest = gpg_path},
			};
			ret = metadata_fetch(ctx, items, ARRAY_SIZE(items), c->name, err);
			if (ret < 0)
				return ret;
		}
	}

	if (!c->keyring)
		return mosaic_errorf(err, -ENOKEY,
		                     "repository %s has no keyring to check its Release against",
		                     c->name);
	struct keyring *k = NULL;
	if ((ret = keyring_open(c->keyring, &k, err)) < 0) {
		mosaic_error_prefix(err, "repository %s", c->name);
		return ret;
	}
	_cleanup_free_ char *data = NULL;
	size_t dlen;
	const char *file = clearsigned ? in_path : rel_path;
	const char *url = clearsigned ? in_url : rel_url;
	if ((ret = read_file(file, RELEASE_MAX, &data, &dlen)) < 0) {
		keyring_free(k);
		return mosaic_errorf(err, ret, "%s: %s", file, strerror(-ret));
	}
	if (clearsigned) {
		ret = keyring_verify_clearsigned(k, data, dlen, text, len, NULL, err);
	} else {
		_cleanup_free_ char *sig = NULL;
		size_t slen;
		ret = read_file(gpg_path, RELEASE_MAX, &sig, &slen);
		if (ret < 0)
			mosaic_errorf(err, ret, "%s: %s", gpg_path, strerror(-ret));
		else
			ret = keyring_verify_metadata(k, data, dlen, sig, slen, NULL, err);
		if (ret >= 0) {
			*text = TAKE_PTR(data);
			*len = dlen;
		}
	}
	keyring_free(k);
	if (ret < 0) {
		mosaic_error_prefix(err, "repository %s: %s", c->name, url);
		return ret;
	}
	sha256_buffer(clearsigned ? data : *text, clearsigned ? dlen : *len, r->root_digest);
	return 0;
}

/* One Packages index to load. */
struct index {
	const struct release_file *file;
	char *url, *dest;
};

static int deb_load(struct provider_ctx *ctx, struct repo *r, struct mosaic_error *err)
{
	const struct repo_config *c = &r->cfg;
	Pool *pool = ctx->pool;
	int ret;

	if (!c->suite || !c->uri || !c->components || !c->components[0])
		return mosaic_errorf(err, -EINVAL,
		                     "repository %s: needs a uri, a suite and components", c->name);
	_cleanup_free_ char *uri = strip_trailing_slashes(c->uri);
	_cleanup_free_ char *base = xasprintf("%s/dists/%s", uri, c->suite);
	_cleanup_free_ char *ident = xasprintf("%s %s", uri, c->suite);
	char key[SHA256_HEX_LEN + 1];
	sha256_buffer(ident, strlen(ident), key);
	_cleanup_free_ char *mdir = provider_cache_path(ctx, "metadata", key);

	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	if ((ret = fetch_release(ctx, r, base, mdir, &text, &len, err)) < 0)
		return ret;
	struct release rel = {0};
	if ((ret = release_parse(text, len, &rel, err)) < 0) {
		mosaic_error_prefix(err, "repository %s: %s/%s", c->name, base, "Release");
		return ret;
	}
	if (c->check_valid_until && (ret = release_check_valid_until(&rel, time(NULL), err)) < 0) {
		mosaic_error_prefix(err, "repository %s", c->name);
		release_clear(&rel);
		return ret;
	}

	/* The indexes: each component for the architecture, and binary-all where the archive
	 * keeps Architecture: all packages only there. "No-Support-for-Architecture-all:
	 * Packages" says they are in the architecture's own indexes too (Debian's archive), and
	 * apt then skips binary-all. */
	size_t nc = 0;
	while (c->components[nc])
		nc++;
	struct index *idx = xcalloc(2 * nc, sizeof(*idx));
	size_t ni = 0;
	bool want_all = strcmp(ctx->arch, "all") != 0 && !rel.no_support_arch_all &&
	                strv_contains(rel.architectures, "all");
	for (size_t i = 0; i < nc && ret >= 0; i++) {
		ret = release_packages(&rel, c->components[i], ctx->arch, &idx[ni].file, err);
		if (ret < 0) {
			mosaic_error_prefix(err, "repository %s (%s)", c->name, base);
			break;
		}
		ni++;
		if (want_all &&
		    release_packages(&rel, c->components[i], "all", &idx[ni].file, NULL) == 0)
			ni++;
	}

	struct sha256 *h = sha256_new();
	sha256_update(h, DEB_CACHE_FORMAT "\n", strlen(DEB_CACHE_FORMAT) + 1);
	sha256_update(h, LIBSOLV_VERSION_STRING "\n", strlen(LIBSOLV_VERSION_STRING) + 1);
	sha256_update(h, ctx->arch, strlen(ctx->arch) + 1);
	for (size_t i = 0; i < ni; i++) {
		const char *p = idx[i].file->path;
		const char *suffix = strrchr(p, '.');
		suffix = suffix && (!strcmp(suffix, ".xz") || !strcmp(suffix, ".gz")) ? suffix : "";
		_cleanup_free_ char *fetch = release_fetch_path(&rel, idx[i].file);
		idx[i].url = xasprintf("%s/%s", base, fetch);
		_cleanup_free_ char *name = xasprintf("sha256/%s%s", idx[i].file->sha256, suffix);
		idx[i].dest = provider_cache_path(ctx, "metadata", name);
		sha256_update(h, idx[i].file->sha256, SHA256_HEX_LEN);
	}
	char solv_key[SHA256_HEX_LEN + 1];
	sha256_final(h, solv_key);
	_cleanup_free_ char *solv_name = xasprintf("%s.solv", solv_key);
	_cleanup_free_ char *sets_name = xasprintf("%s.sets", solv_key);
	_cleanup_free_ char *solv_path = provider_cache_path(ctx, "solv", solv_name);
	_cleanup_free_ char *sets_path = provider_cache_path(ctx, "solv", sets_name);

	Repo *repo = NULL;
	if (ret >= 0 && read_sets(sets_path, r)) {
		repo = solv_cache_load(pool, c->name, solv_path);
		if (!repo) {
			strv_freev(r->essential);
			strv_freev(r->required);
			strv_freev(r->important);
			r->essential = r->required = r->important = NULL;
		}
	}
	if (ret >= 0 && !repo) {
		struct download_item *items = xcalloc(ni, sizeof(*items));
		for (size_t i = 0; i < ni; i++)
			items[i] = (struct download_item){.url = idx[i].url,
			                                  .dest = idx[i].dest,
			                                  .sha256 = idx[i].file->sha256,
			                                  .size = idx[i].file->size};
		ret = metadata_fetch(ctx, items, ni, c->name, err);
		free(items);
		repo = ret >= 0 ? repo_create(pool, c->name) : NULL;
		struct deb_sets sets = {0};
		for (size_t i = 0; i < ni && ret >= 0; i++) {
			_cleanup_free_ char *data = NULL;
			size_t dlen;
			_cleanup_free_ char *what =
			    xasprintf("repository %s: %s", c->name, idx[i].url);
			ret = read_decompressed(idx[i].dest, PACKAGES_MAX, &data, &dlen, err);
			if (ret < 0)
				mosaic_error_prefix(err, "repository %s", c->name);
			else
				ret = deb_packages_add(repo, data, dlen, &sets, what, err);
		}
		if (ret >= 0) {
			sets_to_repo(&sets, r);
			/* Only a cache: loading works without it. */
			if (solv_cache_write(repo, solv_path) >= 0)
				write_atomic_stream(sets_path, write_sets, r);
		} else {
			deb_sets_clear(&sets);
			if (repo)
				repo_free(repo, 1);
			repo = NULL;
		}
	}
	for (size_t i = 0; i < ni; i++) {
		free(idx[i].url);
		free(idx[i].dest);
	}
	free(idx);
	release_clear(&rel);
	if (ret < 0)
		return ret;
	repo_attach(r, repo);
	return 0;
}

const struct provider provider_deb = {
    .type = "deb",
    .suffix = ".deb",
    .disttype = DISTTYPE_DEB,
    .load = deb_load,
    .verify_package = NULL,
};
