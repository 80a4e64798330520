/* libFuzzer target for the rpm-md parsers: the bytes as repomd.xml (primary and filelists found
 * through libsolv, sha256 required) and as primary.xml then filelists.xml loaded into a libsolv
 * pool, where every package that comes out must have a SHA-256 and a location. */
#include "providers/internal.h"

#include <string.h>

#include <solv/knownid.h>
#include <solv/poolarch.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_repomd(const char *text, size_t size)
{
	struct repomd_file primary = {0}, filelists = {0};
	struct mosaic_error err = {0};
	if (repomd_parse(text, size, &primary, &filelists, &err) < 0) {
		if (!err.msg[0] || primary.location || filelists.location)
			__builtin_trap();
		return;
	}
	if (!primary.location || !primary.location[0] || primary.location[0] == '/' ||
	    !is_sha256_hex(primary.sha256))
		__builtin_trap();
	if (filelists.location && !is_sha256_hex(filelists.sha256))
		__builtin_trap();
	repomd_file_clear(&primary);
	repomd_file_clear(&filelists);
}

static void check_rpmmd(const char *text, size_t size)
{
	if (size == 0)
		return;
	Pool *pool = pool_create();
	pool_setdisttype(pool, DISTTYPE_RPM);
	pool_setarch(pool, "x86_64");
	Repo *repo = repo_create(pool, "fuzz");
	struct mosaic_error err = {0};
	FILE *f = fmemopen((void *)text, size, "r");
	int r = rpmmd_add(repo, f, false, "primary.xml", &err);
	fclose(f);
	if (r == 0) {
		for (Id p = repo->start; p < repo->end; p++) {
			Solvable *s = pool->solvables + p;
			if (s->repo != repo)
				continue;
			Id type = 0;
			unsigned m;
			const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
			const char *loc = solvable_get_location(s, &m);
			if (type != REPOKEY_TYPE_SHA256 || !sum || !loc || !*loc)
				__builtin_trap();
		}
		/* The same bytes as filelists extending what primary made. */
		f = fmemopen((void *)text, size, "r");
		rpmmd_add(repo, f, true, "filelists.xml", &err);
		fclose(f);
		repo_internalize(repo);
	} else if (!err.msg[0]) {
		__builtin_trap();
	}
	pool_free(pool);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_repomd((const char *)data, size);
	check_rpmmd((const char *)data, size);
	return 0;
}
