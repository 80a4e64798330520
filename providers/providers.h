/* providers/: package repositories. One interface (metadata, pool, fetch, verify, to-fragment)
 * with two implementations, Debian (InRelease, Packages) and RPM (repomd.xml, primary,
 * filelists); downloads with the libcurl multi interface; resolution with libsolv; the lock
 * file. Knows nothing of squashfs or FUSE: "to-fragment" hands a verified package file to
 * fragments/. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

struct keyring;

/* ---- downloads (download.c, libcurl multi) ------------------------------------------------ */

struct download_item {
	const char *url;    /* http(s):// or file:// */
	const char *dest;   /* final path; the transfer writes dest + ".part" and renames */
	const char *sha256; /* expected hex digest, or NULL */
	uint64_t size;      /* expected size, or 0 when unknown */
	bool conditional;   /* if dest exists, ask with If-Modified-Since (its mtime) and keep it
	                     * on 304 Not Modified: for InRelease and repomd.xml */

	/* Results, filled by download_run. */
	int result;             /* 0 or -errno */
	char error[512];        /* when result < 0: "URL: what went wrong" */
	uint64_t bytes;         /* bytes transferred in this run */
	bool cached;            /* dest already existed with the right digest: nothing fetched */
	bool not_modified;      /* conditional and the server said 304 */
	bool resumed;           /* a partial file was continued with a Range request */
	unsigned attempts;
};

struct download_progress {
	const char *what;
	size_t done, n_files;
	uint64_t bytes, total_bytes;
	double rate; /* bytes per second, smoothed */
};

struct download_options {
	unsigned parallel;          /* concurrent transfers; 0: 6 */
	unsigned retries;           /* further attempts after a failure; 0: 4 (backoff 0.5 s, 1, 2..) */
	long connect_timeout;       /* seconds; 0: 30 */
	long low_speed_time;        /* abort a transfer under 1 KiB/s for this long; 0: 60 */
	const char *what;           /* "packages", "metadata": names the run in the summary */
	/* Progress, for the caller to show (may be NULL): called at most five times a second while
	 * files move, with files done of n_files and bytes done of total_bytes (0: unknown). */
	void (*progress)(const struct download_progress *p, void *data);
	void *progress_data;
};

struct download_stats {
	uint64_t bytes;   /* transferred */
	double seconds;   /* wall time of the run */
	unsigned fetched; /* files transferred (fully or resumed) */
	unsigned cached;  /* files already present */
	unsigned resumed;
	unsigned retries;
	unsigned failed;
};

/* Fetches every item, at most o->parallel at a time. An item whose dest exists with the
 * expected sha256 is not fetched. A partial dest.part is resumed with a Range request; a
 * digest or size mismatch removes the file (the next attempt starts over) and is an error
 * naming expected and actual values. Transient failures (connection reset, timeouts, 5xx)
 * are retried with backoff; 404 and other 4xx are not. Returns 0 when every item succeeded,
 * else the first failure's code with err naming every failed URL. */
int download_run(struct download_item *items, size_t n, const struct download_options *o,
                 struct download_stats *st, struct mosaic_error *err);
/* "12.3 MB in 4.1 s (3.0 MB/s), 40 files, 2 cached, 1 resumed" to f (when not quiet). */
void download_print_summary(FILE *f, const struct download_stats *st, const char *what);

/* ---- repositories -------------------------------------------------------------------------- */

enum repo_type { REPO_DEB, REPO_RPM };

/* One repository as the manifest (or the host's apt sources) describes it. For Debian one
 * config is one suite of one archive. */
struct repo_config {
	char *name;       /* unique: "<manifest name>" or "<name>/<suite>"; goes into the lock */
	enum repo_type type;
	char *uri;        /* deb: archive root (…/debian); rpm: baseurl (holds repodata/) */
	char *suite;      /* deb only */
	char **components; /* deb only; NULL-terminated */
	char *keyring;    /* path of the OpenPGP keyring that signs the metadata */
	int priority;     /* higher wins when several repositories offer a package */
	bool check_valid_until; /* deb: refuse a Release past its Valid-Until (apt's default; the
	                         * host's sources follow apt's Acquire::Check-Valid-Until) */
};
void repo_config_clear(struct repo_config *c);

/* The 'deb' lines and deb822 stanzas of the host's apt sources (/etc/apt/sources.list,
 * /etc/apt/sources.list.d/ *.list and *.sources), one config per suite, with the keyring from
 * Signed-By (or the host's trusted keyrings). suites, when not NULL, keeps only those suites
 * (fnmatch patterns, NULL-terminated). Names are "host/<suite>". root is "/" except in tests. */
int apt_host_sources(const char *root, char *const *suites, struct repo_config **out, size_t *n,
                     struct mosaic_error *err);

/* Everything the providers share while loading and resolving: a libsolv pool (the Pool *,
 * kept opaque here so callers need no libsolv headers), the cache and the policy. */
struct provider_ctx {
	void *pool;            /* Pool * */
	const char *cache_dir; /* root of the metadata and package caches */
	const char *arch;      /* dpkg or rpm architecture name */
	bool offline;          /* never touch the network: everything from the cache */
	struct download_options dl;
};

/* A loaded repository: its config, the libsolv Repo (repo->appdata points back here) and the
 * digest of its signed root file (InRelease or repomd.xml) for the lock. */
struct repo {
	struct repo_config cfg;
	void *solv; /* Repo * */
	char root_digest[SHA256_HEX_LEN + 1];
	unsigned packages;
	/* deb: names of the packages marked Essential: yes, and of those with Priority: required
	 * and Priority: important (the base sets debootstrap starts from); NULL-terminated, owned;
	 * NULL for rpm. */
	char **essential, **required, **important;
};
void repo_free_contents(struct repo *r);

/* What one resolved package is, independent of type; strings owned. */
struct package {
	char *name, *version, *arch; /* version: Debian version or rpm [epoch:]version-release */
	char *repository;            /* repo_config name */
	char *location;              /* path of the file below the repository's uri */
	char *url;                   /* uri + location */
	char sha256[SHA256_HEX_LEN + 1];
	uint64_t size;
	bool base;                   /* part of the manifest's base set */
	bool essential;              /* Debian Essential: yes */
	char fragment[SHA256_HEX_LEN + 1]; /* the fragment made from it; "" until built */
};
void package_clear(struct package *p);

/* The provider interface: one per repository type. */
struct provider {
	const char *type;   /* "deb", "rpm" */
	const char *suffix; /* ".deb", ".rpm" */
	int disttype;       /* libsolv DISTTYPE_DEB or DISTTYPE_RPM */
	/* metadata: fetch (or take from the cache) the signed root file and the package lists
	 * it names, check signature and checksums, and load them into ctx->pool as r->solv. */
	int (*load)(struct provider_ctx *ctx, struct repo *r, struct mosaic_error *err);
	/* verify: after the download's checksum matched, the checks particular to the type
	 * (rpm: the header signature against the repository's keyring). May be NULL. */
	int (*verify_package)(struct provider_ctx *ctx, const struct repo *r, const char *path,
	                      const struct package *p, struct mosaic_error *err);
};
const struct provider *provider_for(enum repo_type t);
extern const struct provider provider_deb, provider_rpm;

/* Where the cache keeps things below ctx->cache_dir; callers free. */
char *provider_cache_path(const struct provider_ctx *ctx, const char *kind, const char *name);

/* ---- resolution (resolve.c, libsolv) ------------------------------------------------------- */

/* Creates ctx->pool for repositories of type t and the architecture ctx->arch. */
void provider_pool_new(struct provider_ctx *ctx, enum repo_type t);
void provider_pool_free(struct provider_ctx *ctx);
/* Compares two versions of a package by the rule of repositories of type t, libsolv's: Debian's
 * ([epoch:]upstream[-revision], '~' before anything) or RPM's ([epoch:]version-release).
 * Returns <0, 0 or >0 as a is older than, the same as or newer than b. */
int package_version_compare(enum repo_type t, const char *a, const char *b);

/* One requested package: name with an optional constraint (op "", "=", ">=", "<=", ">>", "<<"). */
struct package_request {
	const char *name, *op, *version;
};

struct resolve_request {
	const struct package_request *packages;
	size_t n_packages;
	char *const *exclude;  /* names never to install; NULL-terminated or NULL */
	const char *base_set;  /* NULL, "essential", "required" or "important" (deb) */
	bool recommends;       /* install Recommends too */
};

/* Resolves the request against the repositories loaded into ctx->pool. The result is in
 * installation order: the base set (and what it needs) first, then the rest, each part in
 * dependency order. On an unsatisfiable request err holds libsolv's problems and suggested
 * solutions in words and the result is -ENOENT. */
int resolve(struct provider_ctx *ctx, const struct resolve_request *rq, struct package **out,
            size_t *n, struct mosaic_error *err);

/* Finds every locked package in the loaded repositories by name, version, architecture and
 * sha256 and fills in its location and url; fails naming the first ones that are gone. */
int resolve_locked(struct provider_ctx *ctx, struct package *pkgs, size_t n,
                   struct mosaic_error *err);

/* ---- the lock file (lock.c) ---------------------------------------------------------------- */

struct lock {
	char *name, *arch;
	char input[SHA256_HEX_LEN + 1]; /* digest of the manifest parts resolution depends on */
	json_object *repositories;      /* [{name, type, root_digest}] */
	struct package *packages;
	size_t n_packages;
	json_object *fragments;         /* extra fragments: [{"source": …, "digest": …}] */
};
void lock_clear(struct lock *l);
int lock_read(const char *path, struct lock *l, struct mosaic_error *err);
/* Writes atomically, packages in their order, keys sorted: the same lock gives the same bytes. */
int lock_write(const char *path, const struct lock *l, struct mosaic_error *err);
