/* providers/: what the two repository types share: picking the provider for a type, the cache
 * layout, and freeing configs, loaded repositories and packages. */
#include "providers/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include <solv/chksum.h>
#include <solv/repo_solv.h>
#include <solv/repo_write.h>
#include <solv/solv_xfopen.h>

const struct provider *provider_for(enum repo_type t)
{
	return t == REPO_RPM ? &provider_rpm : &provider_deb;
}

char *provider_cache_path(const struct provider_ctx *ctx, const char *kind, const char *name)
{
	return xasprintf("%s/%s/%s", ctx->cache_dir, kind, name);
}


void repo_config_clear(struct repo_config *c)
{
	free(c->name);
	free(c->uri);
	free(c->suite);
	strv_freev(c->components);
	free(c->keyring);
	*c = (struct repo_config){0};
}

void repo_free_contents(struct repo *r)
{
	repo_config_clear(&r->cfg);
	strv_freev(r->essential);
	strv_freev(r->required);
	strv_freev(r->important);
	/* The libsolv Repo belongs to the pool, which frees it. */
	*r = (struct repo){0};
}

void package_clear(struct package *p)
{
	free(p->name);
	free(p->version);
	free(p->arch);
	free(p->repository);
	free(p->location);
	free(p->url);
	*p = (struct package){0};
}

/* ---- helpers shared by deb.c and rpm.c ----------------------------------------------------- */

char *strip_trailing_slashes(const char *uri)
{
	size_t n = strlen(uri);
	while (n > 1 && uri[n - 1] == '/')
		n--;
	return xstrndup(uri, n);
}

int file_sha256(const char *path, char hex[SHA256_HEX_LEN + 1], uint64_t *size)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (size)
		*size = (uint64_t)st.st_size;
	return sha256_fd(fd, hex);
}

int read_decompressed(const char *path, size_t max, char **out, size_t *len,
                      struct mosaic_error *err)
{
	FILE *f = solv_xfopen(path, "r");
	if (!f)
		return mosaic_errorf(err, -errno ? -errno : -EIO, "%s: cannot open: %m", path);
	size_t cap = 1 << 20, n = 0;
	char *buf = xmalloc(cap + 1);
	for (;;) {
		if (n == cap) {
			if (cap >= max) {
				fclose(f);
				free(buf);
				return mosaic_errorf(err, -EFBIG, "%s: larger than %zu bytes", path,
				                     max);
			}
			cap = cap * 2 > max ? max : cap * 2;
			buf = xrealloc(buf, cap + 1);
		}
		size_t got = fread(buf + n, 1, cap - n, f);
		if (got == 0) {
			bool bad = ferror(f);
			fclose(f);
			if (bad) {
				free(buf);
				return mosaic_errorf(err, -EBADMSG,
				                     "%s: cannot read or decompress it", path);
			}
			break;
		}
		n += got;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

int write_atomic_stream(const char *path, int (*fill)(void *ctx, FILE *f), void *ctx)
{
	_cleanup_free_ char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		int r = mkdir_p(dir, 0755);
		if (r < 0)
			return r;
	}
	_cleanup_free_ char *tmp = xasprintf("%s.tmp-XXXXXX", path);
	int fd = mkstemp(tmp);
	if (fd < 0)
		return -errno;
	FILE *f = fdopen(fd, "w");
	if (!f) {
		int r = -errno;
		close(fd);
		unlink(tmp);
		return r;
	}
	int r = fill(ctx, f);
	if (r >= 0 && fflush(f) != 0)
		r = -errno;
	if (r >= 0 && fsync(fileno(f)) < 0)
		r = -errno;
	if (fclose(f) != 0 && r >= 0)
		r = -errno;
	if (r >= 0 && chmod(tmp, 0644) < 0)
		r = -errno;
	if (r >= 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r < 0 ? r : 0;
}

int metadata_fetch(struct provider_ctx *ctx, struct download_item *items, size_t n,
                   const char *repo, struct mosaic_error *err)
{
	if (ctx->offline) {
		for (size_t i = 0; i < n; i++) {
			char hex[SHA256_HEX_LEN + 1];
			int r = file_sha256(items[i].dest, hex, NULL);
			if (r == -ENOENT)
				return mosaic_errorf(err, -ENOENT,
				                     "no cached metadata for %s (%s); run once "
				                     "without --offline",
				                     repo, items[i].url);
			if (r < 0)
				return mosaic_errorf(err, r, "%s: %s", items[i].dest, strerror(-r));
			if (items[i].sha256 && strcmp(hex, items[i].sha256) != 0)
				return mosaic_errorf(
				    err, -EBADMSG,
				    "%s: cached copy of %s has sha256 %s, expected "
				    "%s; run once without --offline",
				    repo, items[i].url, hex, items[i].sha256);
			items[i].result = 0;
			items[i].cached = true;
		}
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *dir = xstrdup(items[i].dest);
		char *slash = strrchr(dir, '/');
		if (slash && slash != dir) {
			*slash = '\0';
			int r = mkdir_p(dir, 0755);
			if (r < 0)
				return mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
		}
	}
	/* download_run keeps an existing dest that has neither a digest nor a date to check it by;
	 * those (the detached signatures) are fetched beside it and renamed over it instead. */
	char **fresh = xcalloc(n, sizeof(*fresh));
	const char **dests = xcalloc(n, sizeof(*dests));
	for (size_t i = 0; i < n; i++) {
		dests[i] = items[i].dest;
		if (!items[i].sha256 && !items[i].conditional) {
			fresh[i] = xasprintf("%s.new", items[i].dest);
			unlink(fresh[i]);
			items[i].dest = fresh[i];
		}
	}
	struct download_options o = ctx->dl;
	o.what = "metadata";
	struct download_stats st = {0};
	int r = download_run(items, n, &o, &st, err);
	for (size_t i = 0; i < n; i++) {
		items[i].dest = dests[i];
		if (fresh[i] && items[i].result >= 0 && r >= 0 && rename(fresh[i], dests[i]) < 0)
			r = mosaic_errorf(err, -errno, "%s: %m", dests[i]);
		if (fresh[i])
			unlink(fresh[i]);
		free(fresh[i]);
	}
	free(fresh);
	free(dests);
	if (r < 0) {
		mosaic_error_prefix(err, "repository %s", repo);
		return r;
	}
	return 0;
}

Repo *solv_cache_load(Pool *pool, const char *name, const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f)
		return NULL;
	Repo *repo = repo_create(pool, name);
	if (repo_add_solv(repo, f, 0) != 0) {
		repo_free(repo, 1);
		return NULL;
	}
	return repo;
}

static int write_solv(void *ctx, FILE *f)
{
	return repo_write(ctx, f) == 0 ? 0 : -EIO;
}

void repo_attach(struct repo *r, Repo *repo)
{
	repo->priority = r->cfg.priority;
	repo->appdata = r;
	r->solv = repo;
	r->packages = (unsigned)repo->nsolvables;
}

int solv_cache_write(Repo *repo, const char *path)
{
	return write_atomic_stream(path, write_solv, repo);
}
