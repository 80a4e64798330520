/* providers/: the rpm-md parsers, for untrusted input: repomd.xml (through libsolv, for the
 * primary and filelists entries and their SHA-256) and primary/filelists into libsolv, refusing
 * packages without a SHA-256. No I/O: rpm.c fetches and verifies; the fuzz target feeds this. */
#include "providers/internal.h"

#include <string.h>

#include <solv/chksum.h>
#include <solv/dataiterator.h>
#include <solv/knownid.h>
#include <solv/repo_repomdxml.h>
#include <solv/repo_rpmmd.h>

/* Every solvable of repo from start on needs a SHA-256 checksum and a location. */
static int check_solvables(Repo *repo, Id start, const char *what, struct mosaic_error *err)
{
	Pool *pool = repo->pool;
	for (Id p = start; p < repo->end; p++) {
		Solvable *s = pool->solvables + p;
		if (s->repo != repo)
			continue;
		Id type = 0;
		const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
		unsigned medianr;
		const char *loc = solvable_get_location(s, &medianr);
		if (!sum || type != REPOKEY_TYPE_SHA256)
			return mosaic_errorf(err, -EBADMSG,
			                     "%s: package %s has %s checksum; only SHA-256 is "
			                     "accepted",
			                     what, pool_solvable2str(pool, s),
			                     sum ? solv_chksum_type2str(type) : "no");
		if (!loc || !*loc)
			return mosaic_errorf(err, -EBADMSG, "%s: package %s has no location", what,
			                     pool_solvable2str(pool, s));
	}
	return 0;
}

void repomd_file_clear(struct repomd_file *f)
{
	free(f->location);
	*f = (struct repomd_file){0};
}

/* Locations come from a signed file, but become URLs: keep them plain and below the baseurl. */
static bool plain_location(const char *p)
{
	if (!*p || *p == '/' || strstr(p, "://"))
		return false;
	for (const char *c = p; *c; c++)
		if ((unsigned char)*c < 0x21 || *c == 0x7f || *c == '?' || *c == '#')
			return false;
	for (const char *c = p; (c = strstr(c, "..")); c += 2)
		if ((c == p || c[-1] == '/') && (c[2] == '/' || c[2] == '\0'))
			return false;
	return true;
}

/* The entry of one type in the parsed repomd.xml, as libsolv's examples/solv finds it. */
static int repomd_find(Repo *repo, const char *type, bool required, struct repomd_file *out,
                       struct mosaic_error *err)
{
	Pool *pool = repo->pool;
	Dataiterator di;
	const char *location = NULL;
	const unsigned char *sum = NULL;
	Id sum_type = 0;
	uint64_t size = 0;

	dataiterator_init(&di, pool, repo, SOLVID_META, REPOSITORY_REPOMD_TYPE, type,
	                  SEARCH_STRING);
	dataiterator_prepend_keyname(&di, REPOSITORY_REPOMD);
	if (dataiterator_step(&di)) {
		dataiterator_setpos_parent(&di);
		location = pool_lookup_str(pool, SOLVID_POS, REPOSITORY_REPOMD_LOCATION);
		sum = pool_lookup_bin_checksum(pool, SOLVID_POS, REPOSITORY_REPOMD_CHECKSUM,
		                               &sum_type);
		size = pool_lookup_num(pool, SOLVID_POS, REPOSITORY_REPOMD_SIZE, 0);
	}
	dataiterator_free(&di);
	*out = (struct repomd_file){0};
	if (!location)
		return required ? mosaic_errorf(err, -EBADMSG, "repomd.xml names no %s", type) : 0;
	if (!plain_location(location))
		return mosaic_errorf(err, -EBADMSG,
		                     "repomd.xml: %s location '%.200s' is not a "
		                     "relative path",
		                     type, location);
	if (!sum || sum_type != REPOKEY_TYPE_SHA256)
		return mosaic_errorf(err, -EBADMSG,
		                     "repomd.xml: %s has %s checksum; only sha256 is accepted "
		                     "(createrepo_c --checksum=sha256)",
		                     type, sum ? solv_chksum_type2str(sum_type) : "no usable");
	out->location = xstrdup(location);
	for (int i = 0; i < SHA256_LEN; i++)
		snprintf(out->sha256 + 2 * i, 3, "%02x", sum[i]);
	out->size = size;
	return 0;
}

int repomd_parse(const char *text, size_t len, struct repomd_file *primary,
                 struct repomd_file *filelists, struct mosaic_error *err)
{
	if (len == 0)
		return mosaic_errorf(err, -EBADMSG, "repomd.xml is empty");
	FILE *f = fmemopen((void *)text, len, "r");
	if (!f)
		return mosaic_errorf(err, -errno, "repomd.xml: %m");
	Pool *pool = pool_create();
	Repo *repo = repo_create(pool, "repomd");
	int r = 0;
	if (repo_add_repomdxml(repo, f, 0) != 0)
		r = mosaic_errorf(err, -EBADMSG, "repomd.xml: %s", pool_errstr(pool));
	fclose(f);
	if (r >= 0)
		r = repomd_find(repo, "primary", true, primary, err);
	if (r >= 0) {
		r = repomd_find(repo, "filelists", false, filelists, err);
		if (r < 0)
			repomd_file_clear(primary);
	}
	pool_free(pool);
	return r;
}

int rpmmd_add(Repo *repo, FILE *f, bool filelists, const char *what, struct mosaic_error *err)
{
	Id start = repo->end;
	/* Filelists extend the solvables primary made (matched by pkgid). */
	if (repo_add_rpmmd(repo, f, NULL, filelists ? REPO_EXTEND_SOLVABLES : 0) != 0)
		return mosaic_errorf(err, -EBADMSG, "%s: %s", what, pool_errstr(repo->pool));
	return filelists ? 0 : check_solvables(repo, start, what, err);
}
