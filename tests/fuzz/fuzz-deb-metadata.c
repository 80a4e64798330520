/* libFuzzer target for the Debian metadata parsers: the bytes as a Release file (the text an
 * InRelease signs; the signature does not make it well-formed) and as a Packages file loaded into
 * a libsolv pool, where every package that comes out must have a SHA-256. */
#include "providers/internal.h"

#include <string.h>

#include <solv/knownid.h>
#include <solv/poolarch.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_release(const char *text, size_t size)
{
	struct release rel = {0};
	struct mosaic_error err = {0};
	if (release_parse(text, size, &rel, &err) < 0) {
		if (!err.msg[0] || rel.files || rel.n_files)
			__builtin_trap();
		return;
	}
	for (size_t i = 0; i < rel.n_files; i++) {
		const struct release_file *f = &rel.files[i];
		/* Sorted, unique, found again by path; digests are lowercase hex. */
		if (!is_sha256_hex(f->sha256) || release_find(&rel, f->path) != f ||
		    (i && strcmp(rel.files[i - 1].path, f->path) >= 0) || f->path[0] == '/')
			__builtin_trap();
		/* Appended to <uri>/dists/<suite>/: it must not climb out of it. */
		char *p = release_fetch_path(&rel, f);
		if (!p[0] || p[0] == '/' || !strncmp(p, "../", 3) || strstr(p, "/../"))
			__builtin_trap();
		free(p);
	}
	const struct release_file *f = NULL;
	if (release_packages(&rel, "main", "amd64", &f, &err) == 0 && !f)
		__builtin_trap();
	release_check_valid_until(&rel, 0, &err);
	release_check_valid_until(&rel, INT64_MAX, &err);
	release_clear(&rel);
}

static void check_packages(const char *text, size_t size)
{
	Pool *pool = pool_create();
	pool_setdisttype(pool, DISTTYPE_DEB);
	pool_setarch(pool, "amd64");
	Repo *repo = repo_create(pool, "fuzz");
	struct deb_sets sets = {0};
	struct mosaic_error err = {0};
	if (deb_packages_add(repo, text, size, &sets, "Packages", &err) == 0) {
		for (Id p = repo->start; p < repo->end; p++) {
			Solvable *s = pool->solvables + p;
			if (s->repo != repo)
				continue;
			Id type = 0;
			const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
			if (type != REPOKEY_TYPE_SHA256 || !sum || !is_sha256_hex(sum))
				__builtin_trap();
		}
	} else if (!err.msg[0]) {
		__builtin_trap();
	}
	for (size_t i = 0; i < sets.n_essential; i++)
		if (!sets.essential[i][0])
			__builtin_trap();
	deb_sets_clear(&sets);
	pool_free(pool);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_release((const char *)data, size);
	check_packages((const char *)data, size);
	char *s = xstrndup((const char *)data, size);
	release_date_parse(s);
	free(s);
	return 0;
}
