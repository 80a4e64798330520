/* pipeline/: the fragment steps: one signed fragment per package, made once (the cache maps a
 * package's checksum to its fragment), and the manifest's base and extra fragments, made from
 * directories and tarballs again only when they changed. */
#include "pipeline/internal.h"

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

struct job {
	const char *src;
	struct fragment_create_options o;
	char *digest; /* where the result goes (65 bytes) */
	const char *cache_key;
	const char *what;
};

/* Makes the fragments of jobs, n_workers at a time, each in its own process: libsquashfs,
 * librpm and gpgme then never share state, and both cores work. */
static int run_jobs(struct build *b, const char *step, struct job *jobs, size_t n,
                    struct mosaic_error *err)
{
	unsigned n_workers = b->o->jobs ? b->o->jobs : pipeline_cpus();
	struct worker {
		pid_t pid;
		int fd;
		size_t job;
	} *w = xcalloc(n_workers, sizeof(*w));
	size_t next = 0, done = 0;
	unsigned running = 0;
	int result = 0;
	while (done < n) {
		while (running < n_workers && next < n && result == 0) {
			int p[2];
			if (pipe2(p, O_CLOEXEC) < 0) {
				result = mosaic_errorf(err, -errno, "pipe: %s", strerror(errno));
				break;
			}
			fflush(NULL);
			pid_t pid = fork();
			if (pid < 0) {
				result = mosaic_errorf(err, -errno, "fork: %s", strerror(errno));
				close(p[0]);
				close(p[1]);
				break;
			}
			if (pid == 0) {
				close(p[0]);
				struct mosaic_error e = {0};
				struct fragment_info info = {0};
				int r = fragment_create(b->store, jobs[next].src, &jobs[next].o, &info, &e);
				char line[1100];
				int len = r < 0 ? snprintf(line, sizeof(line), "E%s", e.msg)
				                : snprintf(line, sizeof(line), "D%s", info.digest);
				(void)!write(p[1], line, len);
				_exit(r < 0 ? 1 : 0);
			}
			close(p[1]);
			unsigned slot = 0;
			while (w[slot].pid)
				slot++;
			w[slot] = (struct worker){pid, p[0], next++};
			running++;
		}
		if (running == 0)
			break;
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			result = mosaic_errorf(err, -errno, "waitpid: %s", strerror(errno));
			break;
		}
		for (unsigned i = 0; i < n_workers; i++) {
			if (w[i].pid != pid)
				continue;
			char line[1100] = {0};
			ssize_t l = read(w[i].fd, line, sizeof(line) - 1);
			close(w[i].fd);
			struct job *j = &jobs[w[i].job];
			if (l > 1 && line[0] == 'D' && is_sha256_hex(line + 1)) {
				memcpy(j->digest, line + 1, SHA256_HEX_LEN + 1);
				if (j->cache_key)
					write_file_atomic(j->cache_key, j->digest, SHA256_HEX_LEN, 0644);
			} else if (result == 0) {
				result = mosaic_errorf(err, -EIO, "%s: %s", j->what,
				                       l > 1 ? line + 1 : "the fragment worker died");
			}
			w[i].pid = 0;
			running--;
			done++;
			pipeline_progress(b->ev, step, j->what, done, n, 0, 0);
		}
		if (result < 0 && running == 0)
			break;
	}
	free(w);
	return result;
}

int step_package_fragments(struct build *b, struct mosaic_error *err)
{
	_cleanup_free_ char *fragdir = provider_cache_path(&b->ctx, "fragments", "by-package");
	mkdir_p(fragdir, 0755);
	size_t n = b->lock.n_packages;
	double t0 = now_s();
	struct job *jobs = xcalloc(n ? n : 1, sizeof(*jobs));
	char **keys = xcalloc(n + 1, sizeof(*keys));
	struct keyring **krs = xcalloc(b->rs.n ? b->rs.n : 1, sizeof(*krs));
	size_t nj = 0, reused = 0;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct package *p = &b->lock.packages[i];
		keys[i] = path_join(fragdir, p->sha256);
		_cleanup_free_ char *known = NULL;
		if (!store_has(b->store, p->fragment) && read_file(keys[i], 128, &known, NULL) == 0 &&
		    is_sha256_hex(known))
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
		jobs[nj++] = (struct job){
		    .src = b->package_files[i],
		    .o = {.kind = FRAGMENT_PACKAGE,
		          .sign_key = b->sign_key,
		          /* Package fragments are a pure function of the package: the same .deb
		           * gives the same image on every machine, so they are worth sharing. */
		          .source_date_epoch = b->epoch >= 0 ? b->epoch : 0,
		          .keyring = k},
		    .digest = p->fragment,
		    .cache_key = keys[i],
		    .what = p->name,
		};
	}
	if (r == 0 && nj)
		r = run_jobs(b, "fragments", jobs, nj, err);
	if (r == 0)
		pipeline_say(b->ev, PIPELINE_INFO, "fragments",
		             "fragments: %zu made, %zu already in the store, in %.2f s", nj, reused,
		             now_s() - t0);
	for (size_t i = 0; i < b->rs.n; i++)
		keyring_free(krs[i]);
	free(krs);
	strv_freev(keys);
	free(jobs);
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
	size_t nj = 0;
	json_object *base = jget(b->model, "base");
	json_object *frags = jget(b->model, "fragments");
	size_t nf = frags ? json_object_array_length(frags) : 0;
	int r = 0;
	for (size_t i = 0; i < nf + 1 && r == 0; i++) {
		json_object *o = i == 0 ? base : json_object_array_get_idx(frags, i - 1);
		if (!o)
			continue;
		const char *role = i == 0 ? "base" : "extra";
		const char *digest = jstr(o, i == 0 ? "fragment" : "digest");
		const char *path = i == 0 ? jstr(o, "image") : jstr(o, "path");
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
		jobs[nj++] = (struct job){
		    .src = path,
		    .o = {.kind = i == 0 ? FRAGMENT_BASE
		                  : jbool(o, "dev", false) ? FRAGMENT_DEV
		                                           : FRAGMENT_CONFIG,
		          .sign_key = b->sign_key,
		          .source_date_epoch = b->epoch >= 0 ? b->epoch : 0,
		          .name = jstr(o, "name")},
		    .digest = xcalloc(1, SHA256_HEX_LEN + 1),
		    .cache_key = key,
		    .what = path,
		};
	}
	if (r == 0)
		r = run_jobs(b, "extra fragments", jobs, nj, err);
	/* Fill in the digests the jobs made, in list order. */
	size_t k = 0;
	for (size_t i = 0; i < json_object_array_length(list) && r == 0; i++) {
		json_object *e = json_object_array_get_idx(list, i);
		if (*jstr(e, "digest") == 0)
			json_object_object_add(e, "digest", json_object_new_string(jobs[k++].digest));
	}
	for (size_t i = 0; i < nj; i++) {
		free(jobs[i].digest);
		free((char *)jobs[i].cache_key);
	}
	free(jobs);
	if (r < 0) {
		json_object_put(list);
		return r;
	}
	json_object_put(b->lock.fragments);
	b->lock.fragments = list;
	return 0;
}
