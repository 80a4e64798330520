/* Internal to providers/: the parsers of repository metadata with buffer entry points (the unit
 * tests and fuzz targets call them), and the helpers deb.c and rpm.c share. */
#pragma once

#include "providers/providers.h"

#include <solv/pool.h>
#include <solv/repo.h>

/* ---- shared helpers (provider.c) ------------------------------------------------------------- */

/* "http://h/debian/" -> "http://h/debian"; caller frees. */
char *strip_trailing_slashes(const char *uri);
/* SHA-256 (and size, when not NULL) of a file; -errno. */
int file_sha256(const char *path, char hex[SHA256_HEX_LEN + 1], uint64_t *size);
/* Reads a file, decompressing it by its suffix (.gz, .xz, .zst, .bz2), at most max bytes. */
int read_decompressed(const char *path, size_t max, char **out, size_t *len,
                      struct mosaic_error *err);
/* Writes path atomically (temp file beside it, fsync, rename, mode 0644) with what fill puts
 * into the stream; creates the directory. Returns 0 or -errno. */
int write_atomic_stream(const char *path, int (*fill)(void *ctx, FILE *f), void *ctx);

/* Gets metadata files: online through download_run (items' dests get their directories made);
 * offline each dest must be in the cache already (and match its sha256 when one is given),
 * else the error says to run once without --offline. repo names the repository in errors.
 * Items with neither sha256 nor conditional are fetched anew every time (signatures). */
int metadata_fetch(struct provider_ctx *ctx, struct download_item *items, size_t n,
                   const char *repo, struct mosaic_error *err);

/* The libsolv cache: loads path into a new Repo named name (NULL when there is no usable cache
 * file), or writes repo to path. */
Repo *solv_cache_load(Pool *pool, const char *name, const char *path);
int solv_cache_write(Repo *repo, const char *path);
/* Makes repo the loaded repository r: its priority, and the links both ways. */
void repo_attach(struct repo *r, Repo *repo);

/* ---- Debian Release and Packages files (deb-metadata.c) -------------------------------------- */

struct release_file {
	char *path; /* below dists/<suite>/ */
	char sha256[SHA256_HEX_LEN + 1];
	uint64_t size;
};

struct release {
	char *date, *valid_until;            /* as written; NULL when absent */
	int64_t date_time, valid_until_time; /* seconds since the epoch; -1 when absent */
	char **architectures, **components;  /* NULL-terminated (possibly empty) */
	bool acquire_by_hash;
	bool no_support_arch_all;   /* "No-Support-for-Architecture-all: Packages" */
	struct release_file *files; /* the SHA256 list, sorted by path */
	size_t n_files;
};

/* Parses a Release file (the text InRelease signs); untrusted. */
int release_parse(const char *text, size_t len, struct release *out, struct mosaic_error *err);
void release_clear(struct release *r);
const struct release_file *release_find(const struct release *r, const char *path);
/* The Packages index of comp for arch: .xz, else .gz, else plain, whichever the Release lists;
 * the error says whether the component, the architecture or only the index is missing. */
int release_packages(const struct release *r, const char *comp, const char *arch,
                     const struct release_file **out, struct mosaic_error *err);
/* Refuses a Release whose Valid-Until is before now, naming the date. */
int release_check_valid_until(const struct release *r, int64_t now, struct mosaic_error *err);
/* Where to fetch f below dists/<suite>/: by hash when the Release offers it. Caller frees. */
char *release_fetch_path(const struct release *r, const struct release_file *f);
/* RFC 2822 date as Release files write it ("Sat, 10 Jun 2023 08:54:47 UTC"); -1 if it does
 * not parse. */
int64_t release_date_parse(const char *s);

/* The base sets read from Packages files (libsolv keeps neither Essential nor Priority). */
struct deb_sets {
	char **essential, **required, **important;
	size_t n_essential, n_required, n_important;
};
void deb_sets_clear(struct deb_sets *s);

/* Adds one decompressed Packages file to repo. libsolv parses it; this then sets each new
 * solvable's SHA-256 (libsolv keeps the longest checksum a stanza has, which may be SHA512)
 * and download size from the stanza with the same Filename, fails naming a package that has
 * no SHA256, and collects the base sets. what names the file in errors. */
int deb_packages_add(Repo *repo, const char *text, size_t len, struct deb_sets *sets,
                     const char *what, struct mosaic_error *err);

/* ---- RPM repodata (rpm-metadata.c) ----------------------------------------------------------- */

struct repomd_file {
	char *location; /* below the baseurl */
	char sha256[SHA256_HEX_LEN + 1];
	uint64_t size; /* 0 when repomd.xml does not say */
};

/* Finds primary and filelists in repomd.xml (parsed by libsolv); requires SHA-256 checksums. */
int repomd_parse(const char *text, size_t len, struct repomd_file *primary,
                 struct repomd_file *filelists, struct mosaic_error *err);
void repomd_file_clear(struct repomd_file *f);
/* Adds primary.xml (filelists false) or filelists.xml (extending the solvables primary made)
 * from f to repo; what names the file in errors. */
int rpmmd_add(Repo *repo, FILE *f, bool filelists, const char *what, struct mosaic_error *err);
