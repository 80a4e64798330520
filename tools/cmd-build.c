/* mosaic resolve | build, and the manifest side of mount: manifest → repositories → libsolv →
 * NAME.lock → downloads → fragments in the store. Each step is done by its module; this file
 * only puts them in order and reports. */
#include "compose/compose.h"
#include "export/export.h"
#include "manifests/manifest.h"
#include "providers/providers.h"
#include "tools/build-configure.h"
#include "tools/cli.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static const char usage_resolve[] =
    "Usage: mosaic resolve MANIFEST [OPTIONS]\n"
    "\n"
    "Loads the manifest's repositories (signatures and checksums checked), resolves its\n"
    "packages and base set with libsolv and writes NAME.lock beside the manifest: each\n"
    "package with exact version, architecture, repository and checksum.\n"
    "\n"
    "  --lock FILE          where the lock is (default: NAME.lock beside the manifest)\n"
    "  --locked             do not resolve: check that the lock still matches the\n"
    "                       manifest and the repositories, and fail if not\n"
    "  --offline            use cached metadata only; never touch the network\n"
    "  --recommends         install Recommends too (the manifest's 'recommends' otherwise)\n"
    "  --fact KEY=VALUE     a fact for the manifest's when: conditions (repeatable)\n"
    "  --role ROLE          the same as --fact role=ROLE\n"
    "  -h, --help           show this help\n";

static const char usage_build[] =
    "Usage: mosaic build MANIFEST [OPTIONS]\n"
    "\n"
    "resolve, then download the packages (parallel, resumable, checksummed, signatures\n"
    "checked), make a signed fragment of each in the store (and, for Debian, one holding\n"
    "the dpkg database of them all; with the manifest's merged_usr, one holding /bin, /sbin\n"
    "and /lib as symlinks into /usr) and record them in the lock. Then configure: mount them\n"
    "with a scratch upper, run 'mosaic configure' with the manifest (package scripts, config:,\n"
    "run:), and commit the upper as a signed config fragment, recorded in the lock, that\n"
    "'mosaic mount MANIFEST' puts on top.\n"
    "Incremental: what is cached is not downloaded again, a fragment is not made twice, and\n"
    "the same fragments with the same config: and run: reuse their config fragment.\n"
    "\n"
    "  --lock FILE --locked --offline --recommends --fact --role   as for resolve\n"
    "  -s, --store STORE    the store fragments go to (created if missing)\n"
    "      --sign KEYID     the OpenPGP key that signs fragments ($MOSAIC_SIGN_KEY, config\n"
    "                       \"sign_key\")\n"
    "  -j, --jobs N         fragments made at once (default: the number of CPUs)\n"
    "      --downloads N    parallel downloads (default 6)\n"
    "      --keyring FILE   trusted keys, to mount the fragments for configure\n"
    "      --no-configure   stop before configure: the manifest then mounts unconfigured\n"
    "      --configure      configure (the default)\n"
    "      --step-timeout S kill a configure step after S seconds (default 600; 0: none)\n"
    "      --no-export      skip the manifest's export: targets (made last, each as 'mosaic\n"
    "                       export' would make it)\n"
    "  -h, --help           show this help\n";

enum {
	OPT_LOCK = 256,
	OPT_LOCKED,
	OPT_OFFLINE,
	OPT_RECOMMENDS,
	OPT_FACT,
	OPT_ROLE,
	OPT_SIGN,
	OPT_DOWNLOADS,
	OPT_KEYRING,
	OPT_CONFIGURE,
	OPT_NO_CONFIGURE,
	OPT_STEP_TIMEOUT,
	OPT_NO_EXPORT,
};

/* Whether build configures unless told otherwise. */
#define BUILD_CONFIGURES true

struct build_opts {
	const char *manifest, *lock_path, *store, *sign_key, *keyring;
	bool locked, offline, recommends, build, lock_given, configure, export;
	unsigned step_timeout;
	json_object *facts;
	unsigned jobs, downloads;
};

/* ---- the manifest ------------------------------------------------------------------------- */

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
	           json_object_get_string(v) :
	           NULL;
}

static bool jbool(json_object *o, const char *key, bool def)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? json_object_get_boolean(v) : def;
}

static json_object *jget(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

/* NULL-terminated copy of an array of strings (NULL for none). */
static char **jstrv(json_object *a)
{
	if (!a || !json_object_is_type(a, json_type_array))
		return NULL;
	size_t n = json_object_array_length(a);
	char **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = xstrdup(json_object_get_string(json_object_array_get_idx(a, i)));
	return v;
}


char *cli_lock_path(const char *manifest, json_object *model)
{
	_cleanup_free_ char *dir = xstrdup(manifest);
	char *slash = strrchr(dir, '/');
	const char *name = jstr(model, "name");
	if (!slash)
		return xasprintf("%s.lock", name);
	*slash = 0;
	return xasprintf("%s/%s.lock", dir, name);
}

/* ---- repositories ------------------------------------------------------------------------- */

struct repos {
	struct repo *r;
	size_t n;
	enum repo_type type;
};

static void repos_clear(struct repos *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		repo_free_contents(&rs->r[i]);
	free(rs->r);
	*rs = (struct repos){0};
}

static struct repo *repos_push(struct repos *rs)
{
	rs->r = xrealloc(rs->r, (rs->n + 1) * sizeof(*rs->r));
	struct repo *r = &rs->r[rs->n++];
	*r = (struct repo){0};
	return r;
}

/* The manifest's repositories as configs: one per suite for Debian, the host's apt sources
 * expanded; all of one type (one libsolv pool resolves one distribution). */
static int repos_from_model(json_object *model, struct repos *rs, struct mosaic_error *err)
{
	json_object *list = jget(model, "repositories");
	size_t n = list ? json_object_array_length(list) : 0;
	if (n == 0)
		return mosaic_errorf(err, -EINVAL, "the manifest names no repositories");
	for (size_t i = 0; i < n; i++) {
		json_object *o = json_object_array_get_idx(list, i);
		const char *name = jstr(o, "name"), *type = jstr(o, "type");
		enum repo_type t = strcmp(type, "rpm") == 0 ? REPO_RPM : REPO_DEB;
		if (i > 0 && t != rs->type)
			return mosaic_errorf(err, -EINVAL,
			                     "repository '%s' is %s but '%s' is %s: one manifest "
			                     "resolves from one kind of repository",
			                     name, type, jstr(json_object_array_get_idx(list, 0), "name"),
			                     rs->type == REPO_RPM ? "rpm" : "deb");
		rs->type = t;
		int prio = json_object_get_int(jget(o, "priority"));
		bool cvu = jbool(o, "check_valid_until", true);
		_cleanup_strv_ char **suites = jstrv(jget(o, "suites"));
		if (t == REPO_DEB && jbool(o, "host", false)) {
			struct repo_config *hc = NULL;
			size_t nh = 0;
			int r = apt_host_sources("/", suites, &hc, &nh, err);
			if (r < 0)
				return r;
			if (nh == 0)
				return mosaic_errorf(err, -ENOENT,
				                     "repository '%s': the host's apt sources have no "
				                     "matching 'deb' entry",
				                     name);
			for (size_t k = 0; k < nh; k++) {
				struct repo *r = repos_push(rs);
				r->cfg = hc[k];
				const char *sfx = strchr(hc[k].name, '/');
				r->cfg.name = xasprintf("%s%s", name, sfx ? sfx : "");
				free(hc[k].name);
				r->cfg.priority = prio;
				r->cfg.check_valid_until = r->cfg.check_valid_until && cvu;
				if (jstr(o, "keyring")) {
					free(r->cfg.keyring);
					r->cfg.keyring = xstrdup(jstr(o, "keyring"));
				}
			}
			free(hc);
			continue;
		}
		size_t ns = 0;
		while (t == REPO_DEB && suites && suites[ns])
			ns++;
		for (size_t k = 0; k < (t == REPO_DEB ? ns : 1); k++) {
			struct repo *r = repos_push(rs);
			r->cfg.type = t;
			r->cfg.priority = prio;
			r->cfg.check_valid_until = cvu;
			r->cfg.keyring = xstrdup(jstr(o, "keyring"));
			if (t == REPO_DEB) {
				r->cfg.name = xasprintf("%s/%s", name, suites[k]);
				r->cfg.uri = xstrdup(jstr(o, "uri"));
				r->cfg.suite = xstrdup(suites[k]);
				r->cfg.components = jstrv(jget(o, "components"));
			} else {
				r->cfg.name = xstrdup(name);
				r->cfg.uri = xstrdup(jstr(o, "baseurl"));
			}
			/* No trailing slash: locations are joined with one. */
			size_t l = strlen(r->cfg.uri);
			while (l > 1 && r->cfg.uri[l - 1] == '/')
				r->cfg.uri[--l] = 0;
		}
	}
	return 0;
}

/* The digest of what resolution depends on: a changed manifest makes --locked fail. */
static void input_digest(json_object *model, char out[SHA256_HEX_LEN + 1])
{
	static const char *const keys[] = {"arch",    "repositories", "base",
	                                   "packages", "exclude",     "recommends"};
	json_object *o = json_object_new_object();
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		json_object *v = jget(model, keys[i]);
		if (v)
			json_object_object_add(o, keys[i], json_object_get(v));
	}
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	sha256_buffer(s, strlen(s), out);
	json_object_put(o);
}

static json_object *repos_json(const struct repos *rs)
{
	json_object *a = json_object_new_array();
	for (size_t i = 0; i < rs->n; i++) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(rs->r[i].cfg.name));
		json_object_object_add(o, "type", json_object_new_string(provider_for(rs->type)->type));
		json_object_object_add(o, "root_digest",
		                       json_object_new_string(rs->r[i].root_digest));
		json_object_array_add(a, o);
	}
	return a;
}

/* Loads metadata and resolves (or checks the lock): the common part of resolve and build. */
static int do_resolve(const struct build_opts *bo, json_object *model, struct provider_ctx *ctx,
                      struct repos *rs, struct lock *lock)
{
	struct mosaic_error err = {0};
	int r = repos_from_model(model, rs, &err);
	if (r < 0)
		return cli_fail(&err);
	provider_pool_new(ctx, rs->type);
	double t0 = now_s();
	for (size_t i = 0; i < rs->n; i++) {
		rs->r[i].cfg.type = rs->type;
		r = provider_for(rs->type)->load(ctx, &rs->r[i], &err);
		if (r < 0)
			return cli_fail(&err);
	}
	unsigned total = 0;
	for (size_t i = 0; i < rs->n; i++)
		total += rs->r[i].packages;
	fprintf(stderr, "metadata: %zu repositories, %u packages, loaded in %.2f s\n", rs->n, total,
	        now_s() - t0);

	char input[SHA256_HEX_LEN + 1];
	input_digest(model, input);
	if (bo->locked) {
		r = lock_read(bo->lock_path, lock, &err);
		if (r < 0)
			return cli_fail(&err);
		if (strcmp(lock->input, input) != 0) {
			fprintf(stderr,
			        "mosaic: %s: the manifest's packages, base, exclude or repositories "
			        "changed since the lock was written; run 'mosaic resolve' without "
			        "--locked\n",
			        bo->lock_path);
			return EXIT_FAIL;
		}
		if (resolve_locked(ctx, lock->packages, lock->n_packages, &err) < 0) {
			mosaic_error_prefix(&err, "%s", bo->lock_path);
			return cli_fail(&err);
		}
		json_object_put(lock->repositories);
		lock->repositories = repos_json(rs);
		return 0;
	}

	/* The request from the model. */
	json_object *pk = jget(model, "packages");
	size_t np = pk ? json_object_array_length(pk) : 0;
	_cleanup_free_ struct package_request *req = xcalloc(np ? np : 1, sizeof(*req));
	for (size_t i = 0; i < np; i++) {
		json_object *o = json_object_array_get_idx(pk, i);
		req[i] = (struct package_request){jstr(o, "name"), jstr(o, "op"), jstr(o, "version")};
	}
	_cleanup_strv_ char **exclude = jstrv(jget(model, "exclude"));
	json_object *base = jget(model, "base");
	struct resolve_request rq = {
	    .packages = req,
	    .n_packages = np,
	    .exclude = exclude,
	    .base_set = base ? jstr(base, "set") : NULL,
	    .recommends = bo->recommends || jbool(model, "recommends", false),
	};
	t0 = now_s();
	struct package *pkgs = NULL;
	size_t n = 0;
	r = resolve(ctx, &rq, &pkgs, &n, &err);
	if (r < 0)
		return cli_fail(&err);
	size_t nb = 0;
	for (size_t i = 0; i < n; i++)
		nb += pkgs[i].base;
	fprintf(stderr, "resolved: %zu packages (%zu in the base set) in %.2f s\n", n, nb,
	        now_s() - t0);

	/* Keep what an earlier build recorded for packages that did not change. */
	struct lock old = {0};
	if (lock_read(bo->lock_path, &old, &err) == 0) {
		for (size_t i = 0; i < n; i++)
			for (size_t k = 0; k < old.n_packages; k++)
				if (strcmp(old.packages[k].sha256, pkgs[i].sha256) == 0)
					memcpy(pkgs[i].fragment, old.packages[k].fragment,
					       sizeof(pkgs[i].fragment));
		lock->fragments = json_object_get(old.fragments);
		lock_clear(&old);
	}
	lock->name = xstrdup(jstr(model, "name"));
	lock->arch = xstrdup(ctx->arch);
	memcpy(lock->input, input, sizeof(input));
	lock->repositories = repos_json(rs);
	lock->packages = pkgs;
	lock->n_packages = n;
	return 0;
}

/* ---- fragments ---------------------------------------------------------------------------- */

struct job {
	const char *src;
	struct fragment_create_options o;
	char *digest; /* where the result goes (65 bytes) */
	const char *cache_key;
	const char *what;
};

/* Makes the fragments of jobs, n_workers at a time, each in its own process: libsquashfs,
 * librpm and gpgme then never share state, and both cores work. */
static int run_jobs(struct store *s, struct job *jobs, size_t n, unsigned n_workers)
{
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
			if (pipe2(p, O_CLOEXEC) < 0)
				return -errno;
			fflush(NULL);
			pid_t pid = fork();
			if (pid < 0)
				return -errno;
			if (pid == 0) {
				close(p[0]);
				struct mosaic_error err = {0};
				struct fragment_info info = {0};
				int r = fragment_create(s, jobs[next].src, &jobs[next].o, &info, &err);
				char line[1100];
				int len = r < 0 ? snprintf(line, sizeof(line), "E%s", err.msg) :
				                  snprintf(line, sizeof(line), "D%s", info.digest);
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
		if (pid < 0)
			return -errno;
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
			} else {
				fprintf(stderr, "mosaic: %s: %s\n", j->what,
				        l > 1 ? line + 1 : "the fragment worker died");
				result = -EIO;
			}
			w[i].pid = 0;
			running--;
			done++;
		}
		if (result < 0 && running == 0)
			break;
	}
	free(w);
	return result;
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

static int64_t build_epoch(void)
{
	const char *e = getenv("SOURCE_DATE_EPOCH");
	/* Package fragments are a pure function of the package: the same .deb gives the same
	 * image on every machine, so they are worth sharing. */
	return e && *e ? strtoll(e, NULL, 10) : 0;
}

/* The manifest's base fragment or image and its extra fragments, in order: [{"role", "source",
 * "digest"}]. Directories and tarballs become fragments (again only when they changed). */
static int extra_fragments(json_object *model, struct store *s, const char *sign_key,
                           const char *cache, unsigned jobs_n, json_object **out)
{
	json_object *list = json_object_new_array();
	struct job *jobs = NULL;
	size_t nj = 0;
	char **keys = NULL;
	json_object *base = jget(model, "base");
	json_object *frags = jget(model, "fragments");
	size_t nf = frags ? json_object_array_length(frags) : 0;
	for (size_t i = 0; i < nf + 1; i++) {
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
			struct mosaic_error err = {0};
			char full[SHA256_HEX_LEN + 1];
			if (store_resolve(s, digest, full, &err) < 0) {
				json_object_put(list);
				return cli_fail(&err);
			}
			json_object_object_add(e, "digest", json_object_new_string(full));
			continue;
		}
		char fp[SHA256_HEX_LEN + 1];
		source_fingerprint(path, fp);
		_cleanup_free_ char *key_name = xasprintf("by-tree/%s", fp);
		char *key = path_join(cache, key_name);
		_cleanup_free_ char *known = NULL;
		if (read_file(key, 128, &known, NULL) == 0 && store_has(s, known)) {
			json_object_object_add(e, "digest", json_object_new_string(known));
			free(key);
			continue;
		}
		jobs = xrealloc(jobs, (nj + 1) * sizeof(*jobs));
		keys = xrealloc(keys, (nj + 1) * sizeof(*keys));
		keys[nj] = key;
		char *dg = xcalloc(1, SHA256_HEX_LEN + 1);
		json_object_object_add(e, "digest", json_object_new_string(""));
		jobs[nj] = (struct job){
		    .src = path,
		    .o = {.kind = i == 0 ? FRAGMENT_BASE :
		                  jbool(o, "dev", false) ? FRAGMENT_DEV : FRAGMENT_CONFIG,
		          .sign_key = sign_key,
		          .source_date_epoch = build_epoch(),
		          .name = jstr(o, "name")},
		    .digest = dg,
		    .cache_key = key,
		    .what = path,
		};
		nj++;
	}
	int r = run_jobs(s, jobs, nj, jobs_n);
	/* Fill in the digests the jobs made, in list order. */
	size_t k = 0;
	for (size_t i = 0; i < json_object_array_length(list) && r == 0; i++) {
		json_object *e = json_object_array_get_idx(list, i);
		if (*jstr(e, "digest") == 0)
			json_object_object_add(e, "digest", json_object_new_string(jobs[k++].digest));
	}
	for (size_t i = 0; i < nj; i++) {
		free(jobs[i].digest);
		free(keys[i]);
	}
	free(jobs);
	free(keys);
	if (r < 0) {
		json_object_put(list);
		return EXIT_FAIL;
	}
	*out = list;
	return 0;
}

static int write_root(struct store *s, const struct lock *l)
{
	_cleanup_free_ char *dir = path_join(store_root(s), "roots");
	_cleanup_free_ char *name = xasprintf("manifest-%s", l->name);
	_cleanup_free_ char *path = path_join(dir, name);
	size_t cap = (l->n_packages + 16) * (SHA256_HEX_LEN + 1) + 1, len = 0;
	_cleanup_free_ char *text = xmalloc(cap);
	for (size_t i = 0; i < l->n_packages; i++)
		len += snprintf(text + len, cap - len, "%s\n", l->packages[i].fragment);
	for (size_t i = 0; l->fragments && i < json_object_array_length(l->fragments); i++) {
		const char *d = jstr(json_object_array_get_idx(l->fragments, i), "digest");
		if (d && len + SHA256_HEX_LEN + 2 < cap)
			len += snprintf(text + len, cap - len, "%s\n", d);
	}
	return write_file_atomic(path, text, len, 0644);
}

/* A generated fragment as the lock's fragments list records it. */
static json_object *lock_entry(const char *role, const char *source, const char *digest)
{
	json_object *e = json_object_new_object();
	json_object_object_add(e, "role", json_object_new_string(role));
	json_object_object_add(e, "source", json_object_new_string(source));
	json_object_object_add(e, "digest", json_object_new_string(digest));
	return e;
}

/* The package fragments' digests in lock order (borrowed from the lock). */
static const char **package_digests(const struct lock *l)
{
	const char **v = xcalloc(l->n_packages + 1, sizeof(*v));
	for (size_t i = 0; i < l->n_packages; i++)
		v[i] = l->packages[i].fragment;
	return v;
}

/* Debian: the dpkg database of the packages as one more fragment, recorded in the lock with
 * role "database" and, as its source, the key of the package list it was made from. */
static int database_fragment(struct store *s, struct lock *lock, const char *sign_key)
{
	struct mosaic_error err = {0};
	_cleanup_free_ const char **digests = package_digests(lock);
	char key[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	bool made = false;
	double t0 = now_s();
	compose_dpkg_key(digests, lock->n_packages, lock->arch, key);
	if (compose_dpkg_fragment(s, NULL, digests, lock->n_packages, lock->arch, sign_key, digest,
	                          &made, &err) < 0) {
		mosaic_error_prefix(&err, "the dpkg database");
		return cli_fail(&err);
	}
	fprintf(stderr, "dpkg database: %.12s %s in %.2f s\n", digest,
	        made ? "made" : "already in the store", now_s() - t0);
	json_object_array_add(lock->fragments, lock_entry("database", key, digest));
	return 0;
}

/* Where the rpm database goes in the composition: Debian's rpm keeps it in the user's home
 * (rpm-common's %_dbpath is ~/.rpmdb), so for root, who configures, in /root/.rpmdb; the rpm of
 * RPM distributions in /var/lib/rpm. */
static const char *rpm_dbpath(const struct lock *l)
{
	json_object *first = l->repositories && json_object_array_length(l->repositories) ?
	                         json_object_array_get_idx(l->repositories, 0) :
	                         NULL;
	const char *type = first ? jstr(first, "type") : NULL;
	return type && strcmp(type, "rpm") == 0 ? "var/lib/rpm" : "root/.rpmdb";
}

/* The fragments that may be RPM packages, in mount order (borrowed from the lock): an RPM lock's
 * packages, then the manifest's extra fragments, which is how a Debian manifest brings RPM
 * packages (one manifest resolves from one kind of repository). */
static const char **rpm_candidates(const struct lock *l, size_t *n)
{
	bool rpm_lock = strcmp(rpm_dbpath(l), "var/lib/rpm") == 0;
	size_t ne = l->fragments ? json_object_array_length(l->fragments) : 0;
	const char **v = xcalloc(l->n_packages + ne + 1, sizeof(*v));
	size_t m = 0;
	for (size_t i = 0; rpm_lock && i < l->n_packages; i++)
		v[m++] = l->packages[i].fragment;
	for (size_t i = 0; i < ne; i++) {
		json_object *e = json_object_array_get_idx(l->fragments, i);
		const char *role = jstr(e, "role"), *d = jstr(e, "digest");
		if (role && d && strcmp(role, "extra") == 0)
			v[m++] = d;
	}
	*n = m;
	return v;
}

static void rpm_database_key(const struct lock *l, char key[SHA256_HEX_LEN + 1])
{
	size_t n;
	_cleanup_free_ const char **v = rpm_candidates(l, &n);
	compose_rpm_key(v, n, rpm_dbpath(l), key);
}

/* RPM packages among the fragments: their rpm database as one more fragment, recorded in the
 * lock with role "rpm-database" and, as its source, the key of the candidates it was made from.
 * Nothing when no fragment is an RPM package. */
static int rpm_database_fragment(struct store *s, struct lock *lock, const char *sign_key)
{
	struct mosaic_error err = {0};
	size_t n;
	_cleanup_free_ const char **digests = rpm_candidates(lock, &n);
	char key[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	bool made = false;
	double t0 = now_s();
	if (n == 0)
		return 0;
	compose_rpm_key(digests, n, rpm_dbpath(lock), key);
	if (compose_rpm_fragment(s, NULL, digests, n, rpm_dbpath(lock), lock->arch, sign_key,
	                         digest, &made, &err) < 0) {
		mosaic_error_prefix(&err, "the rpm database");
		return cli_fail(&err);
	}
	if (!*digest)
		return 0;
	fprintf(stderr, "rpm database: %.12s %s in %.2f s\n", digest,
	        made ? "made" : "already in the store", now_s() - t0);
	json_object_array_add(lock->fragments, lock_entry("rpm-database", key, digest));
	return 0;
}

/* ---- merged /usr -------------------------------------------------------------------------- */

/* What debootstrap's setup_merged_usr links into usr/ on this (Debian) architecture. */
static const char *const *merged_usr_dirs(const char *arch)
{
	static const struct {
		const char *arch; /* an fnmatch pattern */
		const char *const dirs[7];
	} table[] = {
	    {"amd64", {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}},
	    {"i386", {"bin", "sbin", "lib", "lib64", "libx32"}},
	    {"mips", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"mipsel", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"mips64*", {"bin", "sbin", "lib", "lib32", "lib64", "libo32"}},
	    {"mipsn32*", {"bin", "sbin", "lib", "lib32", "lib64", "libo32"}},
	    {"loongarch64*", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"powerpc", {"bin", "sbin", "lib", "lib64"}},
	    {"ppc64", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"ppc64el", {"bin", "sbin", "lib", "lib64"}},
	    {"s390x", {"bin", "sbin", "lib", "lib32"}},
	    {"sparc", {"bin", "sbin", "lib", "lib64"}},
	    {"sparc64", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"x32", {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}},
	    /* RPM's names for 64-bit architectures: Fedora's filesystem package links lib64. */
	    {"x86_64", {"bin", "sbin", "lib", "lib64"}},
	    {"aarch64", {"bin", "sbin", "lib", "lib64"}},
	};
	static const char *const plain[] = {"bin", "sbin", "lib", NULL};
	for (size_t i = 0; i < ARRAY_SIZE(table); i++)
		if (fnmatch(table[i].arch, arch, 0) == 0)
			return table[i].dirs;
	return plain;
}

static int zero_time_visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st, (void)flag, (void)f;
	static const struct timespec zero[2] = {{0, 0}, {0, 0}};
	return utimensat(AT_FDCWD, path, zero, AT_SYMLINK_NOFOLLOW) < 0 ? -1 : 0;
}

/* Makes the merged-/usr tree under root: usr/ and its directories 0755, the links beside. */
static int merged_usr_tree(const char *root, void *ctx, struct mosaic_error *err)
{
	_cleanup_free_ char *usr = path_join(root, "usr");
	const char *const *dirs = merged_usr_dirs(ctx);
	if (chmod(root, 0755) < 0 || mkdir(usr, 0755) < 0 || chmod(usr, 0755) < 0)
		return mosaic_errorf(err, -errno, "%s: %s", usr, strerror(errno));
	for (size_t i = 0; dirs[i]; i++) {
		_cleanup_free_ char *d = path_join(usr, dirs[i]);
		_cleanup_free_ char *l = path_join(root, dirs[i]);
		_cleanup_free_ char *target = xasprintf("usr/%s", dirs[i]);
		if (mkdir(d, 0755) < 0 || chmod(d, 0755) < 0 || symlink(target, l) < 0)
			return mosaic_errorf(err, -errno, "%s: %s", l, strerror(errno));
	}
	if (nftw(root, zero_time_visit, 16, FTW_PHYS) != 0)
		return mosaic_errorf(err, -errno, "%s: setting times: %s", root, strerror(errno));
	return 0;
}

/* The base fragment "merged-usr": /bin, /sbin, /lib, ... as symlinks into usr/ as debootstrap
 * makes them, for the packages to unpack through (compose follows dpkg there). Root-owned, every
 * time 0: one architecture always gives the same fragment, cached by architecture. Recorded
 * first in the lock's fragments, with role "merged-usr" and the architecture as its source. */
static int merged_usr_fragment(struct store *s, struct lock *lock, const char *sign_key)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *key = xasprintf("1-%s", lock->arch);
	char digest[SHA256_HEX_LEN + 1] = "";
	bool made = false;
	double t0 = now_s();
	if (!compose_generated_find(s, "merged-usr", key, digest)) {
		const struct compose_generated g = {
		    .name = "merged-usr",
		    .version = "1",
		    .arch = lock->arch,
		    .kind = FRAGMENT_BASE,
		    .sign_key = sign_key,
		    .epoch = 0,
		    .fill = merged_usr_tree,
		    .ctx = lock->arch,
		};
		if (compose_generated_make(s, &g, digest, &err) < 0) {
			mosaic_error_prefix(&err, "the merged-usr fragment");
			return cli_fail(&err);
		}
		compose_generated_remember("merged-usr", key, digest);
		made = true;
	}
	fprintf(stderr, "merged /usr: %.12s %s in %.2f s\n", digest,
	        made ? "made" : "already in the store", now_s() - t0);
	json_object *list = json_object_new_array();
	json_object_array_add(list, lock_entry("merged-usr", lock->arch, digest));
	for (size_t i = 0; lock->fragments && i < json_object_array_length(lock->fragments); i++) {
		json_object *f = json_object_array_get_idx(lock->fragments, i);
		json_object_array_add(list, json_object_get(f));
	}
	json_object_put(lock->fragments);
	lock->fragments = list;
	return 0;
}

/* Runs 'mosaic export' (this same program) with argv for one target. */
static int export_target(const char *const *argv, const char *output, const char *format)
{
	const char *slash = strrchr(output, '/');
	_cleanup_free_ char *dir = slash ? xstrndup(output, slash - output) : NULL;
	if (dir && *dir && mkdir_p(dir, 0755) < 0) {
		fprintf(stderr, "mosaic: export target %s: %s: %s\n", output, dir, strerror(errno));
		return EXIT_FAIL;
	}
	fprintf(stderr, "export: %s as %s\n", output, format);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "mosaic: fork: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	if (pid == 0) {
		execv("/proc/self/exe", (char *const *)argv);
		fprintf(stderr, "mosaic: running export: %s\n", strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "mosaic: export target %s failed\n", output);
		return WIFEXITED(status) && WEXITSTATUS(status) == EXIT_USAGE ? EXIT_USAGE : EXIT_FAIL;
	}
	return EXIT_OK;
}

/* The manifest's export: targets, each by 'mosaic export' (this same program) on what was just
 * built, so that a target is exactly what the command would make. */
static int export_targets(const struct build_opts *bo, json_object *model, const char *store)
{
	json_object *targets = jget(model, "export");
	size_t n = targets ? json_object_array_length(targets) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *t = json_object_array_get_idx(targets, i);
		const char *format = jstr(t, "format"), *output = jstr(t, "output");
		const char *fs = jstr(t, "filesystem"), *loader = jstr(t, "bootloader");
		if (!output) {
			fprintf(stderr, "mosaic: export target %zu (%s) names no output\n", i + 1,
			        format);
			return EXIT_USAGE;
		}
		/* Partitions become --partition MOUNTPOINT[:SIZE] or swap:SIZE; a type export
		 * cannot make is refused before anything is written. */
		json_object *parts = jget(t, "partitions");
		size_t n_parts = parts ? json_object_array_length(parts) : 0;
		if (n_parts > EXPORT_MAX_PARTITIONS - 3) {
			fprintf(stderr, "mosaic: export target %s: at most %d partitions\n", output,
			        EXPORT_MAX_PARTITIONS - 3);
			return EXIT_USAGE;
		}
		char **part_args = xcalloc(n_parts + 1, sizeof(*part_args));
		for (size_t j = 0; j < n_parts; j++) {
			json_object *p = json_object_array_get_idx(parts, j);
			const char *type = jstr(p, "type"), *mp = jstr(p, "mountpoint");
			const char *size = jstr(p, "size");
			bool swap = type && strcmp(type, "swap") == 0;
			if ((type && !swap && strcmp(type, "ext4") != 0) || (swap && (mp || !size)) ||
			    (!swap && !mp)) {
				fprintf(stderr,
				        "mosaic: export target %s: partition %zu: give a mountpoint "
				        "(type ext4, the default) or type swap with a size\n",
				        output, j + 1);
				strv_free(part_args, j);
				return EXIT_USAGE;
			}
			part_args[j] = swap ? xasprintf("swap:%s", size)
			                    : xasprintf("%s%s%s", mp, size ? ":" : "", size ? size : "");
		}
		const char *argv[24 + 2 * EXPORT_MAX_PARTITIONS];
		size_t k = 0;
		argv[k++] = "mosaic";
		argv[k++] = "export";
		argv[k++] = bo->manifest;
		argv[k++] = "--lock";
		argv[k++] = bo->lock_path;
		argv[k++] = "-s";
		argv[k++] = store;
		argv[k++] = "--format";
		argv[k++] = format;
		argv[k++] = "-o";
		argv[k++] = output;
		if (bo->keyring) {
			argv[k++] = "--keyring";
			argv[k++] = bo->keyring;
		}
		if (jstr(t, "size")) {
			argv[k++] = "--size";
			argv[k++] = jstr(t, "size");
		}
		if (jstr(t, "free_space")) {
			argv[k++] = "--free-space";
			argv[k++] = jstr(t, "free_space");
		}
		if (fs) {
			argv[k++] = "--filesystem";
			argv[k++] = fs;
		}
		if (loader) {
			argv[k++] = "--bootloader";
			argv[k++] = loader;
		}
		for (size_t j = 0; j < n_parts; j++) {
			argv[k++] = "--partition";
			argv[k++] = part_args[j];
		}
		argv[k] = NULL;
		int r = export_target(argv, output, format);
		strv_free(part_args, n_parts);
		if (r != EXIT_OK)
			return r;
	}
	return EXIT_OK;
}

static int lock_mount_order(const struct lock *l, const char *lock_path, const char *manifest,
                            bool merged_usr, bool with_config, char ***digests, size_t *n);

/* The configured system as one more fragment on top: made by mounting what the lock holds so
 * far with a scratch upper, configuring and committing, or found again when nothing it depends
 * on changed. Only a composition with a package database has something to configure. */
static int config_step(const struct build_opts *bo, json_object *model, struct store *s,
                       struct lock *lock, const char *sign_key)
{
	bool has_database = false;
	for (size_t i = 0; lock->fragments && i < json_object_array_length(lock->fragments); i++) {
		const char *role = jstr(json_object_array_get_idx(lock->fragments, i), "role");
		has_database |= role && strstr(role, "database") != NULL;
	}
	if (!has_database)
		return EXIT_OK;
	char **digests;
	size_t n;
	int r = lock_mount_order(lock, bo->lock_path, bo->manifest, jbool(model, "merged_usr", false),
	                         false, &digests, &n);
	if (r)
		return r;
	const struct build_config c = {
	    .manifest = bo->manifest,
	    .lock_path = bo->lock_path,
	    .store = store_root(s),
	    .keyring = bo->keyring,
	    .sign_key = sign_key,
	    .model = model,
	    .timeout = bo->step_timeout,
	    .source_date_epoch = build_epoch(),
	};
	json_object *entry = NULL;
	r = build_config_fragment(&c, s, digests, n, &entry);
	strv_free(digests, n);
	if (r == EXIT_OK)
		json_object_array_add(lock->fragments, entry);
	return r;
}

static int do_build(const struct build_opts *bo, json_object *model, struct provider_ctx *ctx,
                    struct repos *rs, struct lock *lock)
{
	struct mosaic_error err = {0};
	const struct provider *prov = provider_for(rs->type);
	_cleanup_free_ char *sign_key =
	    bo->sign_key ? xstrdup(bo->sign_key) : mosaic_config_get("MOSAIC_SIGN_KEY", "sign_key", NULL);
	if (!sign_key) {
		fprintf(stderr, "mosaic: build signs the fragments it makes: give --sign KEYID (or set "
		                "MOSAIC_SIGN_KEY, or \"sign_key\" in /etc/mosaic/config.json)\n");
		return EXIT_USAGE;
	}
	struct store *s;
	int r = cli_open_store(bo->store, true, &s);
	if (r)
		return r;

	/* Downloads: every package not yet in the cache, by checksum. */
	_cleanup_free_ char *pkgdir = provider_cache_path(ctx, "packages", "sha256");
	_cleanup_free_ char *fragdir = provider_cache_path(ctx, "fragments", "by-package");
	mkdir_p(pkgdir, 0755);
	mkdir_p(fragdir, 0755);
	size_t n = lock->n_packages;
	struct download_item *items = xcalloc(n ? n : 1, sizeof(*items));
	char **dests = xcalloc(n ? n : 1, sizeof(*dests));
	for (size_t i = 0; i < n; i++) {
		const struct package *p = &lock->packages[i];
		dests[i] = xasprintf("%s/%s%s", pkgdir, p->sha256, prov->suffix);
		items[i] = (struct download_item){.url = p->url, .dest = dests[i], .sha256 = p->sha256,
		                                  .size = p->size};
	}
	size_t missing = 0;
	if (bo->offline) {
		for (size_t i = 0; i < n; i++)
			if (access(dests[i], R_OK) < 0 && ++missing <= 5)
				fprintf(stderr, "mosaic: --offline: %s %s is not in the cache\n",
				        lock->packages[i].name, lock->packages[i].version);
		if (missing)
			r = EXIT_FAIL;
	} else {
		struct download_options dl = ctx->dl;
		dl.what = "packages";
		dl.progress = true;
		struct download_stats st = {0};
		if (download_run(items, n, &dl, &st, &err) < 0)
			r = cli_fail(&err);
		download_print_summary(stderr, &st, "packages");
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		const struct repo *repo = NULL;
		for (size_t k = 0; k < rs->n; k++)
			if (strcmp(rs->r[k].cfg.name, lock->packages[i].repository) == 0)
				repo = &rs->r[k];
		if (prov->verify_package && repo &&
		    prov->verify_package(ctx, repo, dests[i], &lock->packages[i], &err) < 0)
			r = cli_fail(&err);
	}

	/* Fragments: one per package, made once (the cache maps package checksum → fragment). */
	double t0 = now_s();
	struct job *jobs = xcalloc(n ? n : 1, sizeof(*jobs));
	char **keys = xcalloc(n ? n : 1, sizeof(*keys));
	struct keyring **krs = xcalloc(rs->n ? rs->n : 1, sizeof(*krs));
	size_t nj = 0, reused = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct package *p = &lock->packages[i];
		keys[i] = path_join(fragdir, p->sha256);
		_cleanup_free_ char *known = NULL;
		if (!store_has(s, p->fragment) && read_file(keys[i], 128, &known, NULL) == 0 &&
		    is_sha256_hex(known))
			snprintf(p->fragment, sizeof(p->fragment), "%s", known);
		if (store_has(s, p->fragment)) {
			reused++;
			continue;
		}
		struct keyring *k = NULL;
		for (size_t q = 0; q < rs->n && rs->type == REPO_RPM; q++)
			if (strcmp(rs->r[q].cfg.name, p->repository) == 0) {
				if (!krs[q] && keyring_open(rs->r[q].cfg.keyring, &krs[q], &err) < 0)
					r = cli_fail(&err);
				k = krs[q];
			}
		jobs[nj++] = (struct job){
		    .src = dests[i],
		    .o = {.kind = FRAGMENT_PACKAGE,
		          .sign_key = sign_key,
		          .source_date_epoch = build_epoch(),
		          .keyring = k},
		    .digest = p->fragment,
		    .cache_key = keys[i],
		    .what = p->name,
		};
	}
	if (r == 0 && nj)
		r = run_jobs(s, jobs, nj, bo->jobs) < 0 ? EXIT_FAIL : 0;
	if (r == 0)
		fprintf(stderr, "fragments: %zu made, %zu already in the store, in %.2f s\n", nj,
		        reused, now_s() - t0);
	json_object *extra = NULL;
	if (r == 0 && (r = extra_fragments(model, s, sign_key, fragdir, bo->jobs, &extra)) == 0) {
		json_object_put(lock->fragments);
		lock->fragments = extra;
	}
	if (r == 0 && jbool(model, "merged_usr", false))
		r = merged_usr_fragment(s, lock, sign_key);
	if (r == 0 && rs->type == REPO_DEB && n > 0)
		r = database_fragment(s, lock, sign_key);
	if (r == 0)
		r = rpm_database_fragment(s, lock, sign_key);
	if (r == 0 && bo->configure)
		r = config_step(bo, model, s, lock, sign_key);
	if (r == 0 && lock_write(bo->lock_path, lock, &err) < 0)
		r = cli_fail(&err);
	if (r == 0 && write_root(s, lock) < 0)
		fprintf(stderr, "mosaic: warning: could not record the build in %s/roots\n",
		        store_root(s));
	if (r == 0 && bo->export)
		r = export_targets(bo, model, store_root(s));
	if (r == 0)
		printf("%s: %zu packages, %zu fragments in %s; mount it with 'mosaic mount %s "
		       "MOUNTPOINT%s%s'\n",
		       bo->lock_path, n, n + json_object_array_length(lock->fragments), store_root(s),
		       bo->manifest, bo->lock_given ? " --lock " : "",
		       bo->lock_given ? bo->lock_path : "");
	for (size_t i = 0; i < rs->n; i++)
		keyring_free(krs[i]);
	free(krs);
	for (size_t i = 0; i < n; i++) {
		free(dests[i]);
		free(keys[i]);
	}
	free(dests);
	free(keys);
	free(items);
	free(jobs);
	store_free(s);
	return r;
}

/* ---- the commands ------------------------------------------------------------------------- */

static int run(int argc, char **argv, bool build)
{
	const char *usage = build ? usage_build : usage_resolve;
	static const struct option opts[] = {{"lock", required_argument, NULL, OPT_LOCK},
	                                     {"locked", no_argument, NULL, OPT_LOCKED},
	                                     {"offline", no_argument, NULL, OPT_OFFLINE},
	                                     {"recommends", no_argument, NULL, OPT_RECOMMENDS},
	                                     {"fact", required_argument, NULL, OPT_FACT},
	                                     {"role", required_argument, NULL, OPT_ROLE},
	                                     {"store", required_argument, NULL, 's'},
	                                     {"sign", required_argument, NULL, OPT_SIGN},
	                                     {"jobs", required_argument, NULL, 'j'},
	                                     {"downloads", required_argument, NULL, OPT_DOWNLOADS},
	                                     {"keyring", required_argument, NULL, OPT_KEYRING},
	                                     {"configure", no_argument, NULL, OPT_CONFIGURE},
	                                     {"no-configure", no_argument, NULL, OPT_NO_CONFIGURE},
	                                     {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
	                                     {"no-export", no_argument, NULL, OPT_NO_EXPORT},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	struct build_opts bo = {.build = build,
	                        .facts = json_object_new_object(),
	                        .configure = BUILD_CONFIGURES,
	                        .export = true,
	                        .step_timeout = 600};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	bo.jobs = ncpu > 0 ? (unsigned)ncpu : 1;
	int c, r = 0;
	while (r == 0 && (c = getopt_long(argc, argv, build ? "s:j:h" : "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_LOCK:
			bo.lock_path = optarg;
			bo.lock_given = true;
			break;
		case OPT_LOCKED:
			bo.locked = true;
			break;
		case OPT_OFFLINE:
			bo.offline = true;
			break;
		case OPT_RECOMMENDS:
			bo.recommends = true;
			break;
		case OPT_FACT:
			if (cli_fact_add(bo.facts, optarg) < 0)
				r = cli_usage(usage, "--fact takes KEY=VALUE, not '%s'", optarg);
			break;
		case OPT_ROLE: {
			_cleanup_free_ char *kv = xasprintf("role=%s", optarg);
			cli_fact_add(bo.facts, kv);
			break;
		}
		case 's':
			bo.store = optarg;
			break;
		case OPT_SIGN:
			bo.sign_key = optarg;
			break;
		case OPT_KEYRING:
			bo.keyring = optarg;
			break;
		case OPT_CONFIGURE:
		case OPT_NO_CONFIGURE:
			bo.configure = c == OPT_CONFIGURE;
			break;
		case OPT_NO_EXPORT:
			bo.export = false;
			break;
		case OPT_STEP_TIMEOUT: {
			char *end;
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 10);
			if (!*optarg || *end || errno || v > 7 * 24 * 3600 || optarg[0] == '-')
				r = cli_usage(usage, "bad --step-timeout '%s'", optarg);
			bo.step_timeout = (unsigned)v;
			break;
		}
		case 'j':
		case OPT_DOWNLOADS: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 64)
				r = cli_usage(usage, "%s takes a number from 1 to 64, not '%s'",
				              c == 'j' ? "--jobs" : "--downloads", optarg);
			else if (c == 'j')
				bo.jobs = v;
			else
				bo.downloads = v;
			break;
		}
		case 'h':
			fputs(usage, stdout);
			json_object_put(bo.facts);
			return EXIT_OK;
		default:
			r = cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (r == 0 && optind + 1 != argc)
		r = cli_usage(usage, "give one MANIFEST");
	if (r) {
		json_object_put(bo.facts);
		return r;
	}
	bo.manifest = argv[optind];
	json_object *model = NULL;
	r = cli_manifest_load(bo.manifest, bo.facts, &model);
	json_object_put(bo.facts);
	if (r)
		return r;
	_cleanup_free_ char *lock_default = bo.lock_path ? NULL : cli_lock_path(bo.manifest, model);
	if (!bo.lock_path)
		bo.lock_path = lock_default;

	_cleanup_free_ char *cache = mosaic_cache_dir();
	struct provider_ctx ctx = {
	    .cache_dir = cache,
	    .arch = jstr(model, "arch"),
	    .offline = bo.offline,
	    .dl = {.parallel = bo.downloads, .progress = true},
	};
	struct repos rs = {0};
	struct lock lock = {0};
	r = do_resolve(&bo, model, &ctx, &rs, &lock);
	if (r == 0 && build) {
		r = do_build(&bo, model, &ctx, &rs, &lock);
	} else if (r == 0) {
		struct mosaic_error err = {0};
		if (!bo.locked && lock_write(bo.lock_path, &lock, &err) < 0)
			r = cli_fail(&err);
		else
			printf("%s: %zu packages%s\n", bo.lock_path, lock.n_packages,
			       bo.locked ? ", still matching the repositories" : "");
	}
	lock_clear(&lock);
	repos_clear(&rs);
	provider_pool_free(&ctx);
	json_object_put(model);
	return r;
}

int cmd_resolve(int argc, char **argv)
{
	return run(argc, argv, false);
}

int cmd_build(int argc, char **argv)
{
	return run(argc, argv, true);
}

/* Where a lock fragment of this role goes among the passes of lock_mount_order (2 is the
 * packages'); unknown roles go with the extras; the config fragment, the frozen upper, on top. */
static int role_pass(const char *role)
{
	static const char *const order[] = {"merged-usr", "base", "", "database", "", "config"};
	if (strcmp(role, "rpm-database") == 0)
		return 3; /* with the dpkg one */
	for (int i = 0; i < (int)ARRAY_SIZE(order); i++)
		if (*order[i] && strcmp(role, order[i]) == 0)
			return i;
	return 4;
}

static int lock_mount_order(const struct lock *l, const char *lock_path, const char *manifest,
                     bool merged_usr, bool with_config, char ***digests, size_t *n)
{
	size_t ne = l->fragments ? json_object_array_length(l->fragments) : 0;
	char **out = xcalloc(l->n_packages + ne + 1, sizeof(*out));
	size_t m = 0;
	int r = 0;
	/* The merged-/usr links lowest, then the base fragment, the packages in installation order,
	 * the dpkg database of them, the extras, then the configuration made on all of those. */
	char key[SHA256_HEX_LEN + 1];
	_cleanup_free_ const char **frags = package_digests(l);
	compose_dpkg_key(frags, l->n_packages, l->arch ? l->arch : "", key);
	char rpm_key[SHA256_HEX_LEN + 1];
	rpm_database_key(l, rpm_key);
	bool has_merged_usr = false;
	for (size_t i = 0; i < ne; i++) {
		const char *role = jstr(json_object_array_get_idx(l->fragments, i), "role");
		has_merged_usr |= role && strcmp(role, "merged-usr") == 0;
	}
	/* Packages unpacked without the links would not be a merged-/usr system. */
	if (merged_usr && !has_merged_usr) {
		fprintf(stderr,
		        "mosaic: %s was built without merged /usr, which the manifest asks for; run "
		        "'mosaic build %s'\n",
		        lock_path, manifest);
		r = EXIT_FAIL;
	}
	for (int pass = 0; pass < 6 && r == 0; pass++) {
		for (size_t i = 0; pass == 2 && i < l->n_packages; i++) {
			if (!is_sha256_hex(l->packages[i].fragment)) {
				fprintf(stderr, "mosaic: %s has no fragment for %s; run 'mosaic build "
				                "%s'\n",
				        lock_path, l->packages[i].name, manifest);
				r = EXIT_FAIL;
				break;
			}
			out[m++] = xstrdup(l->packages[i].fragment);
		}
		for (size_t i = 0; pass != 2 && i < ne && r == 0; i++) {
			json_object *e = json_object_array_get_idx(l->fragments, i);
			const char *role = jstr(e, "role"), *d = jstr(e, "digest");
			if (!role || !d || role_pass(role) != pass)
				continue;
			/* A database made for other packages (the lock was resolved again since)
			 * would describe what is not there. */
			bool rpm = strcmp(role, "rpm-database") == 0;
			if (pass == 3 && (!jstr(e, "source") ||
			                  strcmp(jstr(e, "source"), rpm ? rpm_key : key) != 0)) {
				fprintf(stderr, "mosaic: %s: the %s database is not the one of its "
				                "packages; run 'mosaic build %s'\n",
				        lock_path, rpm ? "rpm" : "dpkg", manifest);
				r = EXIT_FAIL;
				break;
			}
			if (pass == 5) {
				char base[SHA256_HEX_LEN + 1];
				build_base_key(out, m, base);
				if (!with_config)
					continue;
				/* A configuration made on other fragments would change what they do
				 * not hold any more: the system below mounts unconfigured instead. */
				if (!jstr(e, "base") || strcmp(jstr(e, "base"), base) != 0) {
					fprintf(stderr,
					        "mosaic: %s: the configuration was made for other "
					        "fragments; mounting them unconfigured ('mosaic build "
					        "%s' configures them again)\n",
					        lock_path, manifest);
					continue;
				}
			}
			out[m++] = xstrdup(d);
		}
	}
	if (r) {
		strv_free(out, m);
		return r;
	}
	*digests = out;
	*n = m;
	return 0;
}

int cli_manifest_fragments(const char *manifest, const char *lock_path, char ***digests,
                           size_t *n)
{
	json_object *model = NULL, *facts = json_object_new_object();
	int r = cli_manifest_load(manifest, facts, &model);
	json_object_put(facts);
	if (r)
		return r;
	_cleanup_free_ char *def = lock_path ? NULL : cli_lock_path(manifest, model);
	bool merged_usr = jbool(model, "merged_usr", false);
	json_object_put(model);
	struct lock l = {0};
	struct mosaic_error err = {0};
	if (lock_read(lock_path ? lock_path : def, &l, &err) < 0) {
		mosaic_error_prefix(&err, "run 'mosaic build %s' first", manifest);
		return cli_fail(&err);
	}
	r = lock_mount_order(&l, lock_path ? lock_path : def, manifest, merged_usr, true, digests,
	                     n);
	lock_clear(&l);
	return r;
}
