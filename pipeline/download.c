/* pipeline/: the download step: every locked package not yet in the cache fetched (parallel,
 * resumable, checksummed by providers/), then the checks particular to its repository type. */
#include "pipeline/internal.h"

#include <string.h>

void pipeline_download_progress(const struct download_progress *p, void *data)
{
	struct build *b = data;
	pipeline_progress(b->ev, "download", p->what, p->done, p->n_files, p->bytes,
	                  p->total_bytes);
}

/* The summary line of a download run, as providers/ words it. */
static void say_summary(struct build *b, const struct download_stats *st)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return;
	download_print_summary(f, st, "packages");
	fclose(f);
	if (len && text[len - 1] == '\n')
		text[len - 1] = 0;
	pipeline_say(b->ev, PIPELINE_INFO, "download", "%s", text);
	free(text);
}

int step_download(struct build *b, struct mosaic_error *err)
{
	const struct provider *prov = provider_for(b->rs.type);
	_cleanup_free_ char *pkgdir = provider_cache_path(&b->ctx, "packages", "sha256");
	mkdir_p(pkgdir, 0755);
	size_t n = b->lock.n_packages;
	_cleanup_free_ struct download_item *items = xcalloc(n ? n : 1, sizeof(*items));
	b->package_files = xcalloc(n + 1, sizeof(*b->package_files));
	for (size_t i = 0; i < n; i++) {
		const struct package *p = &b->lock.packages[i];
		b->package_files[i] = xasprintf("%s/%s%s", pkgdir, p->sha256, prov->suffix);
		items[i] = (struct download_item){.url = p->url,
		                                  .dest = b->package_files[i],
		                                  .sha256 = p->sha256,
		                                  .size = p->size};
	}
	int r = 0;
	if (b->o->offline) {
		size_t missing = 0;
		const struct package *first = NULL;
		for (size_t i = 0; i < n; i++)
			if (access(b->package_files[i], R_OK) < 0 && missing++ == 0)
				first = &b->lock.packages[i];
		if (missing)
			return mosaic_errorf(err, -ENOENT,
			                     "--offline: %s %s is not in the cache (%zu package%s "
			                     "missing)",
			                     first->name, first->version, missing,
			                     missing == 1 ? "" : "s");
	} else {
		struct download_options dl = b->ctx.dl;
		dl.what = "packages";
		struct download_stats st = {0};
		r = download_run(items, n, &dl, &st, err);
		say_summary(b, &st);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		const struct repo *repo = NULL;
		for (size_t k = 0; k < b->rs.n; k++)
			if (strcmp(b->rs.r[k].cfg.name, b->lock.packages[i].repository) == 0)
				repo = &b->rs.r[k];
		if (prov->verify_package && repo)
			r = prov->verify_package(&b->ctx, repo, b->package_files[i],
			                         &b->lock.packages[i], err);
	}
	return r;
}
