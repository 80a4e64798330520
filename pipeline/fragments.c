/* pipeline/: the fragment steps: one signed fragment per package, made once (the cache maps a
 * package's checksum to its fragment), and the manifest's base and extra fragments, made from
 * directories and tarballs again only when they changed. */
#include "pipeline/internal.h"

#include <ftw.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

/* One fragment to make, and where its digest goes. */
struct job {
	char *digest;          /* where the result goes (65 bytes) */
	const char *cache_key; /* remembers it by its source */
	const char *what;      /* names it in an error */
};

struct run {
	struct build *b;
	const char *step;
	uint64_t bytes, total_bytes;
};

static void job_done(size_t done, size_t n, const struct fragment_job *j, void *data)
{
	struct run *rn = data;
	if (j->r == 0)
		rn->bytes += j->info.source_size;
	pipeline_progress(rn->b->ev, rn->step, j->info.name ? j->info.name : j->src, done, n,
	                  rn->bytes, rn->total_bytes);
}

/* Makes the fragments of jobs on the build's threads (fragment_create_many: largest first,
 * librpm and gpgme set up once per process), then records each digest where it goes. */
static int run_jobs(struct build *b, const char *step, struct fragment_job *fj, struct job *jobs,
                    size_t n, struct mosaic_error *err)
{
	if (n == 0)
		return 0;
	struct run rn = {.b = b, .step = step};
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (stat(fj[i].src, &st) == 0 && S_ISREG(st.st_mode))
			rn.total_bytes += st.st_size;
	}
	unsigned workers = b->o->jobs ? b->o->jobs : pipeline_cpus();
	int r = fragment_create_many(b->store, fj, n, workers, job_done, &rn);
	bool told = false;
	for (size_t i = 0; i < n; i++) {
		if (fj[i].r < 0) {
			/* The first failure in job order is the one the pool returns. */
			if (!told)
				mosaic_errorf(err, fj[i].r, "%s: %s", jobs[i].what, fj[i].err.msg);
			told = true;
		} else {
			memcpy(jobs[i].digest, fj[i].info.digest, SHA256_HEX_LEN + 1);
			if (jobs[i].cache_key)
				write_file_atomic(jobs[i].cache_key, jobs[i].digest, SHA256_HEX_LEN,
				                  0644);
		}
		fragment_info_clear(&fj[i].info);
	}
	return r;
}

int step_package_fragments(struct build *b, struct mosaic_error *err)
{
	_cleanup_free_ char *fragdir = provider_cache_path(&b->ctx, "fragments", "by-package");
	mkdir_p(fragdir, 0755);
	size_t n = b->lock.n_packages;
	double t0 = now_s();
	struct job *jobs = xcalloc(n ? n : 1, sizeof(*jobs));
	struct fragment_job *fj = xcalloc(n ? n : 1, sizeof(*fj));
	char **keys = xcalloc(n + 1, sizeof(*keys));
	struct keyring **krs = xcalloc(b->rs.n ? b->rs.n : 1, sizeof(*krs));
	size_t nj = 0, reused = 0;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct package *p = &b->lock.packages[i];
		keys[i] = path_join(fragdir, p->sha256);
		_cleanup_free_ char *known = NULL;
		if (!store_has(b->store, p->fragment) &&
		    read_file(keys[i], 128, &known, NULL) == 0 && is_sha256_hex(known))
			snprintf(p->fragment, sizeof(p->fragment), "%s", known);
		if (store_has(b->store, p->fragment)) {
			reused++;
			continue;
		}
		/* An RPM package's header signature is checked against its repository's keys. */
		struct keyring *k = NULL;
		for (size_t q = 0; q < b->rs.n && b->rs.type == REPO_RPM && r == 0; q++)
			if (strcmp(b->rs.r[q].cfg.name, p->repository) == 0) {
				if (!krs[q])
					r = keyring_open(b->rs.r[q].cfg.keyring, &krs[q], err);
				k = krs[q];
			}
		jobs[nj] =
		    (struct job){.digest = p->fragment, .cache_key = keys[i], .what = p->name};
		fj[nj++] = (struct fragment_job){
		    .src = b->package_files[i],
		    .o = {.kind = FRAGMENT_PACKAGE,
		          .sign_key = b->sign_key,
		          /* Package fragments are a pure function of the package: the same .deb
		           * gives the same image on every machine, so they are worth sharing. */
		          .source_date_epoch = b->epoch >= 0 ? b->epoch : 0,
		          .keyring = k,
		          .workers = 1},
		};
	}
	if (r == 0)
		r = run_jobs(b, "fragments", fj, jobs, nj, err);
	if (r == 0)
		pipeline_say(b->ev, PIPELINE_INFO, "fragments",
		             "fragments: %zu made, %zu already in the store, in %.2f s", nj, reused,
		             now_s() - t0);
	for (size_t i = 0; i < b->rs.n; i++)
		keyring_free(krs[i]);
	free(krs);
	strv_freev(keys);
	free(jobs);
	free(fj);
	return r;
}

/* A cheap fingerprint of a directory tree (paths, types, sizes, modes, owners, mtimes), so a
 * local fragment directory is made into a fragment again only when something in it changed. */
static struct sha256 *tree_hash;
static int tree_visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	char buf[PATH_MAX + 128];
	int n = snprintf(buf, sizeof(buf), "%s\n%o %u %u %lld %lld.%09ld\n", path, st->st_mode,
	                 st->st_uid, st->st_gid, (long long)st->st_size,
	                 (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	sha256_update(tree_hash, buf, n);
	return 0;
}

static void source_fingerprint(const char *path, char out[SHA256_HEX_LEN + 1])
{
	tree_hash = sha256_new();
	nftw(path, tree_visit, 32, FTW_PHYS);
	sha256_final(tree_hash, out);
}

/* The manifest's base fragment or image and its extra fragments, in order, as the lock's
 * fragments list: [{"role", "source", "digest"}]. */
int step_extra_fragments(struct build *b, struct mosaic_error *err)
{
	_cleanup_free_ char *cache = provider_cache_path(&b->ctx, "fragments", "by-package");
	json_object *list = json_object_new_array();
	struct job *jobs = NULL;
	struct fragment_job *fj = NULL;
	size_t nj = 0;
	json_object *base = model_get(b->model, "base");
	json_object *frags = model_get(b->model, "fragments");
	size_t nf = frags ? json_object_array_length(frags) : 0;
	int r = 0;
	for (size_t i = 0; i < nf + 1 && r == 0; i++) {
		json_object *o = i == 0 ? base : json_object_array_get_idx(frags, i - 1);
		if (!o)
			continue;
		const char *role = i == 0 ? "base" : "extra";
		const char *digest = model_str(o, i == 0 ? "fragment" : "digest");
		const char *path = i == 0 ? model_str(o, "image") : model_str(o, "path");
		if (i == 0 && digest && strchr(digest, '/')) {
			path = digest;
			digest = NULL;
		}
		if (!digest && !path)
			continue;
		json_object *e = json_object_new_object();
		json_object_object_add(e, "role", json_object_new_string(role));
		json_object_object_add(e, "source", json_object_new_string(digest ? digest : path));
		json_object_array_add(list, e);
		if (digest) {
			char full[SHA256_HEX_LEN + 1];
			if ((r = store_resolve(b->store, digest, full, err)) == 0)
				json_object_object_add(e, "digest", json_object_new_string(full));
			continue;
		}
		char fp[SHA256_HEX_LEN + 1];
		source_fingerprint(path, fp);
		_cleanup_free_ char *key_name = xasprintf("by-tree/%s", fp);
		char *key = path_join(cache, key_name);
		_cleanup_free_ char *known = NULL;
		if (read_file(key, 128, &known, NULL) == 0 && store_has(b->store, known)) {
			json_object_object_add(e, "digest", json_object_new_string(known));
			free(key);
			continue;
		}
		json_object_object_add(e, "digest", json_object_new_string(""));
		jobs = xrealloc(jobs, (nj + 1) * sizeof(*jobs));
		fj = xrealloc(fj, (nj + 1) * sizeof(*fj));
		jobs[nj] = (struct job){
		    .digest = xcalloc(1, SHA256_HEX_LEN + 1), .cache_key = key, .what = path};
		fj[nj++] = (struct fragment_job){
		    .src = path,
		    .o = {.kind = i == 0                        ? FRAGMENT_BASE
		                  : model_bool(o, "dev", false) ? FRAGMENT_DEV
		                                                : FRAGMENT_CONFIG,
		          .sign_key = b->sign_key,
		          .source_date_epoch = b->epoch >= 0 ? b->epoch : 0,
		          .name = model_str(o, "name"),
		          .workers = 1},
		};
	}
	if (r == 0)
		r = run_jobs(b, "extra fragments", fj, jobs, nj, err);
	/* Fill in the digests the jobs made, in list order. */
	size_t k = 0;
	for (size_t i = 0; i < json_object_array_length(list) && r == 0; i++) {
		json_object *e = json_object_array_get_idx(list, i);
		if (*model_str(e, "digest") == 0)
			json_object_object_add(e, "digest",
			                       json_object_new_string(jobs[k++].digest));
	}
	for (size_t i = 0; i < nj; i++) {
		free(jobs[i].digest);
		free((char *)jobs[i].cache_key);
	}
	free(jobs);
	free(fj);
	if (r < 0) {
		json_object_put(list);
		return r;
	}
	json_object_put(b->lock.fragments);
	b->lock.fragments = list;
	return 0;
}
