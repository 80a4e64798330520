/* Unit tests for providers/: the host's apt sources (a temp root), Release parsing, Packages and
 * primary.xml into a libsolv pool, repomd.xml, and loading small signed repositories made here
 * (apt-ftparchive, createrepo_c, rpmbuild, gpg) through file:// URLs, with and without the
 * cache, offline, tampered and badly signed. */
#include "providers/internal.h"
#include "common/deb822.h"
#include "fragments/fragment.h"
#include "tap.h"

#include <fcntl.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <solv/chksum.h>
#include <solv/dataiterator.h>
#include <solv/knownid.h>
#include <solv/poolarch.h>
#include <solv/solv_xfopen.h>

static char *tmpdir;    /* made fresh by main, removed at the end */
static char *gnupghome; /* the test signer's keys */
static char *fpr;       /* its fingerprint */
static bool have_gpg;

static bool contains(const char *haystack, const char *needle)
{
	return haystack && strstr(haystack, needle);
}

static char *tpath(const char *rel)
{
	return path_join(tmpdir, rel);
}

/* Writes text to tmpdir/rel, making directories. */
static void put(const char *rel, const char *text)
{
	_cleanup_free_ char *p = tpath(rel);
	_cleanup_free_ char *dir = xstrdup(p);
	*strrchr(dir, '/') = '\0';
	mkdir_p(dir, 0755);
	if (write_file_atomic(p, text, strlen(text), 0644) < 0)
		diag("cannot write %s", p);
}

/* ---- apt sources ------------------------------------------------------------------------------
 */

static const struct repo_config *find_cfg(const struct repo_config *c, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(c[i].name, name))
			return &c[i];
	return NULL;
}

static void free_cfgs(struct repo_config *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		repo_config_clear(&c[i]);
	free(c);
}

static void test_apt_sources(void)
{
	put("root1/etc/apt/sources.list",
	    "# the main archive\n"
	    "deb [arch=amd64 signed-by=/keys/archive.gpg] http://127.0.0.1:9/debian/ bookworm "
	    "main contrib # trailing comment\n"
	    "deb-src http://127.0.0.1:9/debian bookworm main\n"
	    "\n"
	    "   # indented comment\n"
	    "deb http://127.0.0.1:9/debian bookworm-updates main\n"
	    "deb [ check-valid-until=no ] file:///srv/local stable main\n"
	    "deb cdrom:[Debian]/ bookworm main\n"
	    "deb http://127.0.0.1:9/flat ./\n");
	put("root1/etc/apt/sources.list.d/b.sources",
	    "Types: deb deb-src\n"
	    "# a comment inside the stanza\n"
	    "URIs: http://127.0.0.1:9/debian http://127.0.0.1:9/mirror\n"
	    "Suites: trixie trixie-updates\n"
	    "Components: main non-free-firmware\n"
	    "Signed-By:\n"
	    " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
	    " .\n"
	    " mDMEZZZZZhYJKwYBBAHaRw8BAQdA\n"
	    " -----END PGP PUBLIC KEY BLOCK-----\n"
	    "\n"
	    "Types: deb\n"
	    "URIs: http://127.0.0.1:9/off\n"
	    "Suites: disabled\n"
	    "Components: main\n"
	    "Enabled: no\n"
	    "\n"
	    "# comments only\n"
	    "\n"
	    "Types: deb-src\n"
	    "URIs: http://127.0.0.1:9/src\n"
	    "Suites: srconly\n"
	    "Components: main\n");
	put("root1/etc/apt/sources.list.d/a.list",
	    "deb [signed-by=/keys/one.gpg,/keys/two.gpg] http://127.0.0.1:9/other bookworm main\n");
	put("root1/etc/apt/sources.list.d/z.list.disabled", "deb http://127.0.0.1:9/z zz main\n");
	put("root1/etc/apt/apt.conf.d/10other", "APT::Install-Recommends \"false\";\n");
	put("root1/etc/apt/apt.conf.d/99snapshot", "// a comment: Check-Valid-Until \"true\"\n"
	                                           "Acquire::Check-Valid-Until \"false\";\n");
	put("root1/keys/one.gpg", "ONE");
	put("root1/keys/two.gpg", "TWO");
	/* A binary trusted.gpg and an armored key beside it: "hello" and "world" in base64. */
	put("root1/etc/apt/trusted.gpg", "BIN:");
	put("root1/etc/apt/trusted.gpg.d/a.asc", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n"
	                                         "Comment: test\n"
	                                         "\n"
	                                         "aGVsbG8g\n"
	                                         "d29ybGQ=\n"
	                                         "=abcd\n"
	                                         "-----END PGP PUBLIC KEY BLOCK-----\n");
	put("root1/etc/apt/trusted.gpg.d/ignored.txt", "not a keyring");

	_cleanup_free_ char *root = tpath("root1");
	struct repo_config *c = NULL;
	size_t n = 0;
	struct mosaic_error err = {0};
	int r = apt_host_sources(root, NULL, &c, &n, &err);
	if (!is_int(r, 0, "apt sources: parse a root with .list and .sources files (%s)", err.msg))
		return;
	is_int(n, 8,
	       "apt sources: 8 configs (2 from sources.list, 1 file://, 1 from a.list, 4 "
	       "from b.sources)");
	for (size_t i = 0; i < n; i++)
		diag("  %s %s %s keyring=%s", c[i].name, c[i].uri, c[i].suite, c[i].keyring);
	is_str(n > 0 ? c[0].name : NULL, "host/bookworm", "apt sources: sources.list comes first");
	const struct repo_config *b = find_cfg(c, n, "host/bookworm");
	if (ok(b != NULL, "apt sources: host/bookworm")) {
		is_str(b->uri, "http://127.0.0.1:9/debian", "apt sources: trailing slash dropped");
		is_str(b->components[0], "main", "apt sources: first component");
		is_str(b->components[1], "contrib", "apt sources: comment after the components");
		ok(b->components[2] == NULL, "apt sources: two components");
		_cleanup_free_ char *want = tpath("root1/keys/archive.gpg");
		is_str(b->keyring, want, "apt sources: signed-by option, below the root");
		ok(!b->check_valid_until, "apt sources: Acquire::Check-Valid-Until \"false\" read");
		ok(b->type == REPO_DEB, "apt sources: type deb");
	}
	const struct repo_config *b2 = find_cfg(c, n, "host/bookworm#2");
	if (ok(b2 != NULL, "apt sources: a second bookworm is named host/bookworm#2")) {
		is_str(b2->uri, "http://127.0.0.1:9/other", "apt sources: a.list's entry");
		ok(contains(b2->keyring, "keyrings-host/") && contains(b2->keyring, ".gpg"),
		   "apt sources: two signed-by files combined into one keyring");
		_cleanup_free_ char *data = NULL;
		size_t len = 0;
		read_file(b2->keyring, 1 << 20, &data, &len);
		is_str(data, "ONETWO", "apt sources: combined keyring is both files in order");
	}
	const struct repo_config *u = find_cfg(c, n, "host/bookworm-updates");
	if (ok(u != NULL, "apt sources: host/bookworm-updates")) {
		_cleanup_free_ char *data = NULL;
		size_t len = 0;
		read_file(u->keyring, 1 << 20, &data, &len);
		is_str(data, "BIN:hello world",
		       "apt sources: without signed-by, trusted.gpg + trusted.gpg.d (dearmored)");
	}
	const struct repo_config *l = find_cfg(c, n, "host/stable");
	ok(l && !strcmp(l->uri, "file:///srv/local") && !l->check_valid_until,
	   "apt sources: file:// entry with check-valid-until=no");
	ok(!find_cfg(c, n, "host/disabled"), "apt sources: Enabled: no is skipped");
	ok(!find_cfg(c, n, "host/srconly"), "apt sources: deb-src only is skipped");
	ok(!find_cfg(c, n, "host/zz"), "apt sources: files not named .list/.sources are skipped");
	ok(!find_cfg(c, n, "host/./"), "apt sources: flat repositories are skipped");
	const struct repo_config *t = find_cfg(c, n, "host/trixie");
	const struct repo_config *t2 = find_cfg(c, n, "host/trixie#2");
	if (ok(t && t2,
	       "apt sources: two URIs with the same suite: host/trixie and host/trixie#2")) {
		is_str(t->uri, "http://127.0.0.1:9/debian", "apt sources: first URI first");
		is_str(t2->uri, "http://127.0.0.1:9/mirror", "apt sources: second URI");
		ok(contains(t->keyring, ".asc"), "apt sources: inline Signed-By written as .asc");
		is_str(t->keyring, t2->keyring, "apt sources: same inline key, same file");
		_cleanup_free_ char *data = NULL;
		size_t len = 0;
		read_file(t->keyring, 1 << 20, &data, &len);
		is_str(data,
		       "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZZZZZhYJKwYBBAHaRw8BAQdA\n"
		       "-----END PGP PUBLIC KEY BLOCK-----\n",
		       "apt sources: inline key with '.' lines turned back into empty lines");
		is_str(t->components[1], "non-free-firmware", "apt sources: deb822 components");
	}
	free_cfgs(c, n);

	/* The suites filter. */
	char *const pats[] = {"bookworm-*", "trix?e", NULL};
	r = apt_host_sources(root, pats, &c, &n, &err);
	is_int(r, 0, "apt sources: with a suites filter");
	is_int(n, 3, "apt sources: filter keeps bookworm-updates and both trixie");
	ok(n == 3 && find_cfg(c, n, "host/bookworm-updates") && find_cfg(c, n, "host/trixie") &&
	       find_cfg(c, n, "host/trixie#2"),
	   "apt sources: fnmatch patterns");
	free_cfgs(c, n);

	/* A root without apt.conf: apt's default checks Valid-Until. */
	put("root2/etc/apt/sources.list.d/x.sources", "Types: deb\nURIs: http://127.0.0.1:9/d\n"
	                                              "Suites: sid\nComponents: main\n"
	                                              "Signed-By: /k.gpg\n");
	_cleanup_free_ char *root2 = tpath("root2");
	r = apt_host_sources(root2, NULL, &c, &n, &err);
	ok(r == 0 && n == 1 && c[0].check_valid_until,
	   "apt sources: Valid-Until checked by default");
	free_cfgs(c, n);

	/* Errors name the file and line. */
	put("root3/etc/apt/sources.list", "deb http://127.0.0.1:9/d\n");
	_cleanup_free_ char *root3 = tpath("root3");
	r = apt_host_sources(root3, NULL, &c, &n, &err);
	ok(r == -EINVAL && contains(err.msg, "sources.list:1"),
	   "apt sources: a short line is an error naming file:line ('%s')", err.msg);
	put("root4/etc/apt/sources.list.d/x.sources", "Types: deb\nno colon here\n");
	_cleanup_free_ char *root4 = tpath("root4");
	r = apt_host_sources(root4, NULL, &c, &n, &err);
	ok(r == -EINVAL && contains(err.msg, "x.sources") && contains(err.msg, "line 2"),
	   "apt sources: a malformed stanza names the file and line ('%s')", err.msg);
	_cleanup_free_ char *root5 = tpath("root-empty");
	r = apt_host_sources(root5, NULL, &c, &n, &err);
	ok(r == 0 && n == 0, "apt sources: no sources at all is no error");
	free(c);
}

/* ---- deb822 paragraphs --------------------------------------------------------------------- */

static void test_deb822_all(void)
{
	static const char text[] = "# head\n\nA: 1\nB: 2\n\n\n# c\n\nA: 3\n";
	struct deb822 *p = NULL;
	size_t n = 0;
	struct mosaic_error err = {0};
	is_int(deb822_parse_all(text, strlen(text), &p, &n, &err), 0, "deb822_parse_all");
	is_int(n, 2, "deb822_parse_all: two paragraphs, comment-only ones skipped");
	if (n == 2) {
		is_str(deb822_get(&p[0], "B"), "2", "deb822_parse_all: first paragraph");
		is_str(deb822_get(&p[1], "A"), "3", "deb822_parse_all: second paragraph");
	}
	deb822_free_all(p, n);
	static const char bad[] = "A: 1\n\nA: 1\nA: 2\n";
	is_int(deb822_parse_all(bad, strlen(bad), &p, &n, &err), -EINVAL,
	       "deb822_parse_all: duplicate in the second paragraph");
	ok(contains(err.msg, "line 4"), "deb822_parse_all: line counted across paragraphs (%s)",
	   err.msg);
}

/* ---- Release ----------------------------------------------------------------------------------
 */

#define H1 "1111111111111111111111111111111111111111111111111111111111111111"
#define H2 "2222222222222222222222222222222222222222222222222222222222222222"
#define H3 "3333333333333333333333333333333333333333333333333333333333333333"
#define H4 "4444444444444444444444444444444444444444444444444444444444444444"

static const char release_text[] =
    "Origin: Test\n"
    "Suite: stable\n"
    "Codename: test\n"
    "Date: Sat, 10 Jun 2023 08:54:47 UTC\n"
    "Valid-Until: Sat, 17 Jun 2023 08:54:47 UTC\n"
    "Acquire-By-Hash: yes\n"
    "No-Support-for-Architecture-all: Packages\n"
    "Architectures: all amd64 arm64\n"
    "Components: updates/main contrib\n"
    "MD5Sum:\n"
    " 00000000000000000000000000000000 10 main/binary-amd64/Packages\n"
    "SHA256:\n"
    " " H1 " 1234 main/binary-amd64/Packages\n"
    " " H2 "  345 main/binary-amd64/Packages.gz\n"
    " " H3 "  300 main/binary-amd64/Packages.xz\n"
    " " H4 "   10 contrib/binary-arm64/Packages\n";

static void test_release(void)
{
	struct release rel = {0};
	struct mosaic_error err = {0};
	if (!is_int(release_parse(release_text, strlen(release_text), &rel, &err), 0,
	            "release: parse (%s)", err.msg))
		return;
	is_int(rel.n_files, 4, "release: four SHA256 entries (MD5Sum ignored)");
	is_int(rel.date_time, 1686387287, "release: Date parsed as UTC");
	is_int(rel.valid_until_time, 1686387287 + 7 * 86400, "release: Valid-Until parsed");
	ok(rel.acquire_by_hash, "release: Acquire-By-Hash");
	ok(rel.no_support_arch_all, "release: No-Support-for-Architecture-all");
	is_str(rel.architectures[1], "amd64", "release: Architectures");
	const struct release_file *f = release_find(&rel, "main/binary-amd64/Packages.gz");
	ok(f && !strcmp(f->sha256, H2) && f->size == 345, "release: find by path");
	ok(!release_find(&rel, "main/binary-amd64/Packages.bz2"), "release: absent path");
	is_int(release_packages(&rel, "main", "amd64", &f, &err), 0,
	       "release: Packages index for main/amd64");
	is_str(f->path, "main/binary-amd64/Packages.xz", "release: .xz preferred");
	is_int(release_packages(&rel, "contrib", "arm64", &f, &err), 0, "release: plain index");
	is_str(f->path, "contrib/binary-arm64/Packages", "release: plain when that is all");
	_cleanup_free_ char *fp = release_fetch_path(&rel, f);
	is_str(fp, "contrib/binary-arm64/by-hash/SHA256/" H4, "release: by-hash fetch path");
	is_int(release_packages(&rel, "non-free", "amd64", &f, &err), -ENOENT,
	       "release: unknown component");
	ok(contains(err.msg, "component 'non-free'") && contains(err.msg, "updates/main contrib"),
	   "release: message names the component and the ones there are (%s)", err.msg);
	is_int(release_packages(&rel, "main", "riscv64", &f, &err), -ENOENT,
	       "release: unknown architecture");
	ok(contains(err.msg, "architecture 'riscv64'"), "release: message names it (%s)", err.msg);
	is_int(release_packages(&rel, "contrib", "amd64", &f, &err), -ENOENT,
	       "release: known component and arch, no index");
	ok(contains(err.msg, "contrib/binary-amd64/Packages"), "release: message (%s)", err.msg);
	is_int(release_check_valid_until(&rel, 1686387287, &err), 0, "release: inside Valid-Until");
	is_int(release_check_valid_until(&rel, 1686387287 + 8 * 86400, &err), -EKEYEXPIRED,
	       "release: past Valid-Until");
	ok(contains(err.msg, "Sat, 17 Jun 2023 08:54:47 UTC"),
	   "release: message names the date (%s)", err.msg);
	release_clear(&rel);

	/* Without by-hash, the path itself. */
	static const char plain[] = "SHA256:\n " H1 " 1 main/binary-amd64/Packages\n";
	is_int(release_parse(plain, strlen(plain), &rel, &err), 0, "release: minimal");
	fp = (free(fp), release_fetch_path(&rel, &rel.files[0]));
	is_str(fp, "main/binary-amd64/Packages", "release: fetch by path without by-hash");
	ok(rel.valid_until_time == -1 && !rel.valid_until, "release: no Valid-Until");
	is_int(release_check_valid_until(&rel, time(NULL), &err), 0,
	       "release: no Valid-Until never expires");
	release_clear(&rel);

	static const struct {
		const char *text, *what, *msg;
	} bad[] = {
	    {"Origin: x\n", "no SHA256", "no SHA256"},
	    {"SHA256:\n " H1 " 12\n", "a short SHA256 line", "line 1"},
	    {"SHA256:\n " H1 " 1 a\n xyz 1 b\n", "a bad digest", "line 2"},
	    {"SHA256:\n " H1 " -1 a\n", "a negative size", "bad size"},
	    {"SHA256:\n " H1 " 1 ../etc/passwd\n", "a path with ..", "bad path"},
	    {"SHA256:\n " H1 " 1 /abs\n", "an absolute path", "bad path"},
	    {"SHA256:\n " H1 " 1 a\n " H2 " 2 a\n", "a path twice", "twice"},
	    {"Valid-Until: tomorrow\nSHA256:\n " H1 " 1 a\n", "a bad date", "not a date"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int r = release_parse(bad[i].text, strlen(bad[i].text), &rel, &err);
		ok(r == -EINVAL && contains(err.msg, bad[i].msg), "release: %s is rejected (%s)",
		   bad[i].what, err.msg);
	}
	is_int(release_date_parse("Mon, 30 Nov 2026 11:22:37 +0100"), 1796034157,
	       "release: date with a numeric zone");
	is_int(release_date_parse("30 Nov 2026 11:22:37 UTC"), 1796037757,
	       "release: date without a weekday");
	is_int(release_date_parse("Mon, 30 Foo 2026 11:22:37 UTC"), -1, "release: bad month");
	is_int(release_date_parse("Mon, 30 Nov 2026 11:22:37 UTC junk"), -1,
	       "release: trailing junk");
}

/* ---- Packages into libsolv ----------------------------------------------------------------------
 */

#define SA "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SB "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define SC "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

static const char packages_text[] =
    "Package: base-files\n"
    "Essential: yes\n"
    "Priority: required\n"
    "Version: 12.4\n"
    "Architecture: amd64\n"
    "Filename: pool/main/b/base-files/base-files_12.4_amd64.deb\n"
    "Size: 70000\n"
    "MD5sum: 00000000000000000000000000000000\n"
    "SHA256: " SA "\n"
    "Description: base system\n"
    " more text\n"
    "\n"
    "Package: hello\n"
    "Version: 2.10-3\n"
    "Architecture: amd64\n"
    "Depends: libc6 (>= 2.34), base-files\n"
    "Priority: optional\n"
    "Filename: pool/main/h/hello/hello_2.10-3_amd64.deb\n"
    "Size: 53000\n"
    "SHA256: " SB "\n"
    "SHA512: "
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123\n"
    "\n"
    "Package: libc6\n"
    "Version: 2.36-9\n"
    "Architecture: amd64\n"
    "Priority: important\n"
    "Filename: pool/main/g/glibc/libc6_2.36-9_amd64.deb\n"
    "Size: 2800000\n"
    "SHA256: " SC "\n";

static Pool *new_pool(int disttype, const char *arch)
{
	Pool *pool = pool_create();
	pool_setdisttype(pool, disttype);
	pool_setarch(pool, arch);
	return pool;
}

static Id find_solvable(Pool *pool, const char *name)
{
	Id id = pool_str2id(pool, name, 0);
	for (Id p = 2; id && p < pool->nsolvables; p++)
		if (pool->solvables[p].repo && pool->solvables[p].name == id)
			return p;
	return 0;
}

static void test_packages(void)
{
	Pool *pool = new_pool(DISTTYPE_DEB, "amd64");
	Repo *repo = repo_create(pool, "test");
	struct deb_sets sets = {0};
	struct mosaic_error err = {0};
	int r =
	    deb_packages_add(repo, packages_text, strlen(packages_text), &sets, "Packages", &err);
	is_int(r, 0, "packages: loaded (%s)", err.msg);
	is_int(repo->nsolvables, 3, "packages: three solvables");
	is_int(sets.n_essential, 1, "packages: one Essential: yes");
	is_str(sets.n_essential ? sets.essential[0] : NULL, "base-files",
	       "packages: essential name");
	is_int(sets.n_required, 1, "packages: one Priority: required");
	is_int(sets.n_important, 1, "packages: one Priority: important");
	is_str(sets.n_important ? sets.important[0] : NULL, "libc6", "packages: important name");
	deb_sets_clear(&sets);

	Id hello = find_solvable(pool, "hello");
	if (ok(hello != 0, "packages: hello is in the pool")) {
		Solvable *s = pool->solvables + hello;
		Id type = 0;
		const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
		ok(type == REPOKEY_TYPE_SHA256 && sum && !strcmp(sum, SB),
		   "packages: SHA-256 kept although the stanza has SHA512 (%s)",
		   type ? solv_chksum_type2str(type) : "none");
		is_int(solvable_lookup_num(s, SOLVABLE_DOWNLOADSIZE, 0), 53000,
		       "packages: download size from Size");
		unsigned m;
		is_str(solvable_get_location(s, &m), "pool/main/h/hello/hello_2.10-3_amd64.deb",
		       "packages: location from Filename");
		is_str(pool_id2str(pool, s->evr), "2.10-3", "packages: version");
		/* The dependency as libsolv sees it: hello needs libc6 >= 2.34, which libc6 gives.
		 */
		pool_createwhatprovides(pool);
		Queue q;
		queue_init(&q);
		solvable_lookup_deparray(s, SOLVABLE_REQUIRES, &q, -1);
		bool found = false;
		for (int i = 0; i < q.count; i++) {
			const char *dep = pool_dep2str(pool, q.elements[i]);
			if (!strcmp(dep, "libc6 >= 2.34")) {
				Id p, pp;
				FOR_PROVIDES(p, pp, q.elements[i])
				found |= p == find_solvable(pool, "libc6");
			}
		}
		queue_free(&q);
		ok(found, "packages: hello requires libc6 >= 2.34 and libc6 provides it");
	}
	Id base = find_solvable(pool, "base-files");
	Id type = 0;
	const char *sum =
	    base ? solvable_lookup_checksum(pool->solvables + base, SOLVABLE_CHECKSUM, &type)
	         : NULL;
	ok(type == REPOKEY_TYPE_SHA256 && sum && !strcmp(sum, SA),
	   "packages: SHA-256 chosen over MD5sum");

	/* A stanza with MD5sum only is refused, naming the package. */
	static const char md5only[] = "Package: old\nVersion: 1\nArchitecture: all\n"
	                              "Filename: pool/o/old_1_all.deb\n"
	                              "MD5sum: 00000000000000000000000000000000\n";
	r = deb_packages_add(repo, md5only, strlen(md5only), &sets, "Packages2", &err);
	ok(r == -EBADMSG && contains(err.msg, "Packages2") && contains(err.msg, "old") &&
	       contains(err.msg, "SHA256"),
	   "packages: MD5sum only is refused (%s)", err.msg);
	deb_sets_clear(&sets);
	static const char nofile[] = "Package: nofile\nVersion: 1\nSHA256: " SA "\n";
	r = deb_packages_add(repo, nofile, strlen(nofile), &sets, "Packages3", &err);
	ok(r == -EBADMSG && contains(err.msg, "no Filename"), "packages: no Filename refused (%s)",
	   err.msg);
	deb_sets_clear(&sets);
	is_int(deb_packages_add(repo, "", 0, &sets, "empty", &err), 0, "packages: empty file");
	/* libsolv 0.7.23 overflows a buffer on a SHA512 without a SHA256 (found by fuzzing). */
	static const char sha512only[] =
	    "Package: big\nVersion: 1\nFilename: pool/b/big_1_all.deb\nSHA512: "
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "0123456789012345678901234567890123456789012345678901234567890123\n";
	r = deb_packages_add(repo, sha512only, strlen(sha512only), &sets, "Packages4", &err);
	ok(r == -EBADMSG && contains(err.msg, "big") && contains(err.msg, "no SHA256"),
	   "packages: SHA512 only is refused without upsetting libsolv (%s)", err.msg);
	deb_sets_clear(&sets);
	static const char nul[] = "Package: a\nVersion: 1\n\0SHA512: 0\n";
	r = deb_packages_add(repo, nul, sizeof(nul) - 1, &sets, "Packages5", &err);
	ok(r == -EBADMSG && contains(err.msg, "NUL byte at offset 22"),
	   "packages: a NUL byte is refused (%s)", err.msg);
	deb_sets_clear(&sets);
	pool_free(pool);
}

/* ---- rpm-md ------------------------------------------------------------------------------------
 */

static const char primary_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<metadata xmlns=\"http://linux.duke.edu/metadata/common\" "
    "xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\" packages=\"2\">\n"
    "<package type=\"rpm\">\n"
    "  <name>hello</name><arch>x86_64</arch>\n"
    "  <version epoch=\"0\" ver=\"2.12\" rel=\"1.fc39\"/>\n"
    "  <checksum type=\"sha256\" pkgid=\"YES\">" SA "</checksum>\n"
    "  <summary>hi</summary><description>hi</description>\n"
    "  <size package=\"8000\" installed=\"20000\" archive=\"21000\"/>\n"
    "  <location href=\"Packages/h/hello-2.12-1.fc39.x86_64.rpm\"/>\n"
    "  <format>\n"
    "    <rpm:provides><rpm:entry name=\"hello\" flags=\"EQ\" epoch=\"0\" ver=\"2.12\" "
    "rel=\"1.fc39\"/></rpm:provides>\n"
    "    <rpm:requires><rpm:entry name=\"glibc\" flags=\"GE\" epoch=\"0\" ver=\"2.38\"/>"
    "</rpm:requires>\n"
    "  </format>\n"
    "</package>\n"
    "<package type=\"rpm\">\n"
    "  <name>glibc</name><arch>x86_64</arch>\n"
    "  <version epoch=\"0\" ver=\"2.38\" rel=\"7.fc39\"/>\n"
    "  <checksum type=\"sha256\" pkgid=\"YES\">" SB "</checksum>\n"
    "  <size package=\"2000000\" installed=\"6000000\" archive=\"6000000\"/>\n"
    "  <location href=\"Packages/g/glibc-2.38-7.fc39.x86_64.rpm\"/>\n"
    "  <format>\n"
    "    <rpm:provides><rpm:entry name=\"glibc\" flags=\"EQ\" epoch=\"0\" ver=\"2.38\" "
    "rel=\"7.fc39\"/></rpm:provides>\n"
    "  </format>\n"
    "</package>\n"
    "</metadata>\n";

static const char filelists_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<filelists xmlns=\"http://linux.duke.edu/metadata/filelists\" packages=\"1\">\n"
    "<package pkgid=\"" SA "\" name=\"hello\" arch=\"x86_64\">\n"
    "  <version epoch=\"0\" ver=\"2.12\" rel=\"1.fc39\"/>\n"
    "  <file>/usr/bin/hello</file>\n"
    "</package>\n"
    "</filelists>\n";

static char *repomd_xml(const char *primary_type, const char *primary_sum,
                        const char *filelists_sum)
{
	return xasprintf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                 "<repomd xmlns=\"http://linux.duke.edu/metadata/repo\" "
	                 "xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\">\n"
	                 "  <revision>1700000000</revision>\n"
	                 "  <data type=\"primary\">\n"
	                 "    <checksum type=\"%s\">%s</checksum>\n"
	                 "    <location href=\"repodata/%s-primary.xml.gz\"/>\n"
	                 "    <timestamp>1700000000</timestamp>\n"
	                 "    <size>1234</size>\n"
	                 "  </data>\n"
	                 "  <data type=\"filelists\">\n"
	                 "    <checksum type=\"sha256\">%s</checksum>\n"
	                 "    <location href=\"repodata/%s-filelists.xml.gz\"/>\n"
	                 "  </data>\n"
	                 "</repomd>\n",
	                 primary_type, primary_sum, primary_sum, filelists_sum, filelists_sum);
}

static void test_rpmmd(void)
{
	struct repomd_file primary = {0}, filelists = {0};
	struct mosaic_error err = {0};
	_cleanup_free_ char *xml = repomd_xml("sha256", SA, SB);
	if (is_int(repomd_parse(xml, strlen(xml), &primary, &filelists, &err), 0,
	           "repomd: parse (%s)", err.msg)) {
		is_str(primary.location, "repodata/" SA "-primary.xml.gz",
		       "repomd: primary location");
		is_str(primary.sha256, SA, "repomd: primary sha256");
		is_int(primary.size, 1234, "repomd: primary size");
		is_str(filelists.location, "repodata/" SB "-filelists.xml.gz",
		       "repomd: filelists location");
		is_str(filelists.sha256, SB, "repomd: filelists sha256");
	}
	repomd_file_clear(&primary);
	repomd_file_clear(&filelists);
	_cleanup_free_ char *sha1 =
	    repomd_xml("sha1", "0123456789012345678901234567890123456789", SB);
	ok(repomd_parse(sha1, strlen(sha1), &primary, &filelists, &err) == -EBADMSG &&
	       contains(err.msg, "sha1") && contains(err.msg, "primary"),
	   "repomd: a sha1 checksum is refused (%s)", err.msg);
	static const char nodata[] = "<repomd xmlns=\"http://linux.duke.edu/metadata/repo\"/>";
	ok(repomd_parse(nodata, strlen(nodata), &primary, &filelists, &err) == -EBADMSG &&
	       contains(err.msg, "no primary"),
	   "repomd: no primary is refused (%s)", err.msg);
	static const char garbage[] = "<repomd><data type=\"primary\"><checksum";
	ok(repomd_parse(garbage, strlen(garbage), &primary, &filelists, &err) < 0,
	   "repomd: truncated XML is refused (%s)", err.msg);

	Pool *pool = new_pool(DISTTYPE_RPM, "x86_64");
	Repo *repo = repo_create(pool, "rpmtest");
	FILE *f = fmemopen((void *)primary_xml, strlen(primary_xml), "r");
	is_int(rpmmd_add(repo, f, false, "primary.xml", &err), 0, "rpmmd: primary (%s)", err.msg);
	fclose(f);
	f = fmemopen((void *)filelists_xml, strlen(filelists_xml), "r");
	is_int(rpmmd_add(repo, f, true, "filelists.xml", &err), 0, "rpmmd: filelists (%s)",
	       err.msg);
	fclose(f);
	repo_internalize(repo);
	is_int(repo->nsolvables, 2, "rpmmd: two solvables");
	Id hello = find_solvable(pool, "hello");
	if (ok(hello, "rpmmd: hello is in the pool")) {
		Solvable *s = pool->solvables + hello;
		Id type = 0;
		const char *sum = solvable_lookup_checksum(s, SOLVABLE_CHECKSUM, &type);
		ok(type == REPOKEY_TYPE_SHA256 && sum && !strcmp(sum, SA),
		   "rpmmd: sha256 checksum");
		unsigned m;
		is_str(solvable_get_location(s, &m), "Packages/h/hello-2.12-1.fc39.x86_64.rpm",
		       "rpmmd: location");
		is_str(pool_id2str(pool, s->evr), "2.12-1.fc39", "rpmmd: evr");
		Dataiterator di;
		dataiterator_init(&di, pool, 0, hello, SOLVABLE_FILELIST, NULL, SEARCH_FILES);
		bool listed = false;
		while (dataiterator_step(&di))
			listed |= !strcmp(di.kv.str, "/usr/bin/hello");
		dataiterator_free(&di);
		ok(listed, "rpmmd: /usr/bin/hello in hello's file list (from filelists)");
		pool_createwhatprovides(pool);
		Id p, pp;
		Queue q;
		queue_init(&q);
		solvable_lookup_deparray(s, SOLVABLE_REQUIRES, &q, -1);
		bool glibc = false;
		for (int i = 0; i < q.count; i++)
			if (!strcmp(pool_dep2str(pool, q.elements[i]), "glibc >= 2.38")) {
				FOR_PROVIDES(p, pp, q.elements[i])
				glibc |= p == find_solvable(pool, "glibc");
			}
		queue_free(&q);
		ok(glibc, "rpmmd: hello requires glibc >= 2.38, which glibc provides");
	}
	pool_free(pool);

	/* A package with a sha1 checksum only is refused by name. */
	pool = new_pool(DISTTYPE_RPM, "x86_64");
	repo = repo_create(pool, "rpmtest");
	const char *cut = strstr(primary_xml, "<checksum type=\"sha256\" pkgid=\"YES\">" SB);
	const char *rest = strstr(cut, "</checksum>");
	_cleanup_free_ char *weak = xasprintf("%.*s<checksum type=\"sha1\" pkgid=\"YES\">"
	                                      "0123456789012345678901234567890123456789%s",
	                                      (int)(cut - primary_xml), primary_xml, rest);
	f = fmemopen(weak, strlen(weak), "r");
	ok(rpmmd_add(repo, f, false, "primary.xml", &err) == -EBADMSG &&
	       contains(err.msg, "glibc") && contains(err.msg, "SHA-256"),
	   "rpmmd: a package without sha256 is refused (%s)", err.msg);
	fclose(f);
	pool_free(pool);
}

/* ---- signed repositories through file:// --------------------------------------------------------
 */

static bool make_key(void)
{
	gnupghome = tpath("gnupg");
	mkdir(gnupghome, 0700);
	setenv("GNUPGHOME", gnupghome, 1);
	_cleanup_free_ char *conf = path_join(gnupghome, "gpg.conf");
	write_file_atomic(conf, "trust-model always\n", 19, 0600);
	if (sh("gpg --batch --quiet --passphrase '' --quick-gen-key 'mosaic test <t@example.org>' "
	       "ed25519 sign never 2>/dev/null") != 0)
		return false;
	if (sh("gpg --batch --quiet --passphrase '' --quick-gen-key 'other <o@example.org>' "
	       "ed25519 sign never 2>/dev/null") != 0)
		return false;
	_cleanup_free_ char *keys = tpath("keys");
	mkdir(keys, 0755);
	if (sh("gpg --batch --export 't@example.org' > %s/signer.gpg && gpg --batch --export "
	       "'o@example.org' > %s/other.gpg",
	       keys, keys) != 0)
		return false;
	_cleanup_free_ char *out = tpath("fpr");
	sh("gpg --batch --with-colons --list-keys t@example.org | awk -F: '/^fpr/{print $10; "
	   "exit}' > %s",
	   out);
	size_t len;
	if (read_file(out, 4096, &fpr, &len) < 0)
		return false;
	fpr[strcspn(fpr, "\n")] = '\0';
	return true;
}

static struct provider_ctx new_ctx(int disttype, const char *arch, const char *cache)
{
	struct provider_ctx ctx = {
	    .pool = new_pool(disttype, arch),
	    .cache_dir = cache,
	    .arch = arch,
	};
	ctx.dl.retries = 1;
	return ctx;
}

static struct repo deb_repo(const char *uri, const char *keyring, bool check_valid_until)
{
	struct repo r = {0};
	r.cfg.name = xstrdup("test/stable");
	r.cfg.type = REPO_DEB;
	r.cfg.uri = xstrdup(uri);
	r.cfg.suite = xstrdup("stable");
	r.cfg.components = xcalloc(2, sizeof(char *));
	r.cfg.components[0] = xstrdup("main");
	r.cfg.keyring = xstrdup(keyring);
	r.cfg.priority = 7;
	r.cfg.check_valid_until = check_valid_until;
	return r;
}

/* Loads a fresh pool from the repository; returns load's result, r filled. */
static int load_deb(const char *uri, const char *keyring, const char *cache, bool offline,
                    bool check_valid_until, struct repo *out, struct mosaic_error *err)
{
	struct provider_ctx ctx = new_ctx(DISTTYPE_DEB, "amd64", cache);
	ctx.offline = offline;
	*out = deb_repo(uri, keyring, check_valid_until);
	int r = provider_deb.load(&ctx, out, err);
	if (r >= 0) {
		Repo *repo = out->solv;
		ok(repo && repo->appdata == out && repo->priority == 7,
		   "deb load: repo->appdata and priority set");
	}
	out->solv = NULL;
	provider_pool_free(&ctx);
	return r;
}

static void test_deb_repo(void)
{
	/* dists/stable/main/binary-amd64/Packages(.xz) and an InRelease by apt-ftparchive + gpg. */
	put("debrepo/dists/stable/main/binary-amd64/Packages", packages_text);
	put("debrepo/apt.conf", "APT::FTPArchive::Release::Suite \"stable\";\n"
	                        "APT::FTPArchive::Release::Codename \"stable\";\n"
	                        "APT::FTPArchive::Release::Architectures \"amd64\";\n"
	                        "APT::FTPArchive::Release::Components \"main\";\n");
	_cleanup_free_ char *repo_dir = tpath("debrepo");
	_cleanup_free_ char *dists = tpath("debrepo/dists/stable");
	if (sh("cd %s && xz -k main/binary-amd64/Packages && apt-ftparchive -c %s/apt.conf "
	       "release . > Release.tmp && mv Release.tmp Release && gpg --batch --quiet --yes "
	       "--local-user %s --clearsign -o InRelease Release",
	       dists, repo_dir, fpr) != 0) {
		ok(false, "deb repo: built");
		return;
	}
	_cleanup_free_ char *uri = xasprintf("file://%s/", repo_dir);
	_cleanup_free_ char *keyring = tpath("keys/signer.gpg");
	_cleanup_free_ char *other = tpath("keys/other.gpg");
	_cleanup_free_ char *cache = tpath("cache-deb");
	struct mosaic_error err = {0};
	struct repo r = {0};

	/* Offline before anything is cached. */
	int ret = load_deb(uri, keyring, cache, true, true, &r, &err);
	ok(ret == -ENOENT && contains(err.msg, "no cached metadata for test/stable") &&
	       contains(err.msg, "without --offline"),
	   "deb load: offline without a cache says so (%s)", err.msg);
	repo_free_contents(&r);

	double t0 = now_s();
	ret = load_deb(uri, keyring, cache, false, true, &r, &err);
	double t1 = now_s();
	if (is_int(ret, 0, "deb load: signed repository over file:// (%s)", err.msg)) {
		is_int(r.packages, 3, "deb load: three packages");
		_cleanup_free_ char *inrel = tpath("debrepo/dists/stable/InRelease");
		char want[SHA256_HEX_LEN + 1];
		file_sha256(inrel, want, NULL);
		is_str(r.root_digest, want, "deb load: root digest is the InRelease's sha256");
		ok(r.essential && r.essential[0] && !strcmp(r.essential[0], "base-files") &&
		       !r.essential[1],
		   "deb load: essential set");
		ok(r.required && r.required[0] && !strcmp(r.required[0], "base-files"),
		   "deb load: required set");
		ok(r.important && r.important[0] && !strcmp(r.important[0], "libc6"),
		   "deb load: important set");
	}
	repo_free_contents(&r);
	_cleanup_free_ char *xzsum = NULL;
	{
		_cleanup_free_ char *xz =
		    tpath("debrepo/dists/stable/main/binary-amd64/Packages.xz");
		char hex[SHA256_HEX_LEN + 1];
		file_sha256(xz, hex, NULL);
		xzsum = xasprintf("%s/metadata/sha256/%s.xz", cache, hex);
		ok(access(xzsum, F_OK) == 0, "deb load: Packages.xz cached by its digest");
	}

	/* Again: from the .solv cache, and offline too. */
	double t2 = now_s();
	ret = load_deb(uri, keyring, cache, false, true, &r, &err);
	double t3 = now_s();
	ok(ret == 0 && r.packages == 3 && r.essential && r.essential[0],
	   "deb load: second load from the cache (%s)", err.msg);
	diag("first load %.3f s, cached %.3f s", t1 - t0, t3 - t2);
	repo_free_contents(&r);
	ret = load_deb(uri, keyring, cache, true, true, &r, &err);
	ok(ret == 0 && r.packages == 3 && r.required && r.required[0],
	   "deb load: offline from the cache (%s)", err.msg);
	repo_free_contents(&r);
	/* Offline without the .solv: parsed from the cached Packages. */
	_cleanup_free_ char *solvdir = xasprintf("%s/solv", cache);
	sh("rm -rf %s", solvdir);
	ret = load_deb(uri, keyring, cache, true, true, &r, &err);
	ok(ret == 0 && r.packages == 3, "deb load: offline, parsed from cached Packages (%s)",
	   err.msg);
	repo_free_contents(&r);

	/* A keyring without the signer's key. */
	_cleanup_free_ char *cache2 = tpath("cache-deb2");
	ret = load_deb(uri, other, cache2, false, true, &r, &err);
	ok(ret == -ENOKEY && contains(err.msg, "unknown key") && contains(err.msg, fpr) &&
	       contains(err.msg, "repository's keyring") && contains(err.msg, "InRelease"),
	   "deb load: unknown key names the key and the keyring (%s)", err.msg);
	repo_free_contents(&r);
	_cleanup_free_ char *missing = tpath("keys/missing.gpg");
	ret = load_deb(uri, missing, cache2, false, true, &r, &err);
	ok(ret == -ENOENT && contains(err.msg, "missing.gpg"),
	   "deb load: missing keyring file named (%s)", err.msg);
	repo_free_contents(&r);

	/* Valid-Until in the past. */
	sh("cd %s && sed -i '/^Date:/a Valid-Until: Sat, 01 Jan 2000 00:00:00 UTC' Release && "
	   "gpg --batch --quiet --yes --local-user %s --clearsign -o InRelease Release",
	   dists, fpr);
	_cleanup_free_ char *cache2b = tpath("cache-deb2b");
	ret = load_deb(uri, keyring, cache2b, false, true, &r, &err);
	ok(ret == -EKEYEXPIRED && contains(err.msg, "Sat, 01 Jan 2000"),
	   "deb load: expired Release refused (%s)", err.msg);
	repo_free_contents(&r);
	ret = load_deb(uri, keyring, cache2b, false, false, &r, &err);
	ok(ret == 0, "deb load: expired Release accepted when Check-Valid-Until is off (%s)",
	   err.msg);
	repo_free_contents(&r);

	/* A modified InRelease: the signature no longer holds. */
	sh("cd %s && sed -i 's|main/binary-amd64/Packages.xz|main/binary-amd64/Packages.gz|' "
	   "InRelease",
	   dists);
	_cleanup_free_ char *cache2c = tpath("cache-deb2c");
	ret = load_deb(uri, keyring, cache2c, false, false, &r, &err);
	ok(ret == -EKEYREJECTED && contains(err.msg, "InRelease") &&
	       contains(err.msg, "bad signature"),
	   "deb load: modified InRelease is a bad signature (%s)", err.msg);
	repo_free_contents(&r);

	/* No InRelease: Release + Release.gpg, then a tampered Packages.xz. */
	_cleanup_free_ char *cache3 = tpath("cache-deb3");
	sh("cd %s && rm InRelease && gpg --batch --quiet --yes --local-user %s --detach-sign -o "
	   "Release.gpg Release",
	   dists, fpr);
	ret = load_deb(uri, keyring, cache3, false, false, &r, &err);
	if (ok(ret == 0 && r.packages == 3, "deb load: Release + Release.gpg (%s)", err.msg)) {
		_cleanup_free_ char *rel = tpath("debrepo/dists/stable/Release");
		char want[SHA256_HEX_LEN + 1];
		file_sha256(rel, want, NULL);
		is_str(r.root_digest, want, "deb load: root digest is the Release's sha256");
	}
	repo_free_contents(&r);
	_cleanup_free_ char *cache4 = tpath("cache-deb4");
	sh("cd %s && printf 'Package: evil\\nVersion: 1\\n\\n' | xz > "
	   "main/binary-amd64/Packages.xz",
	   dists);
	ret = load_deb(uri, keyring, cache4, false, false, &r, &err);
	ok(ret < 0 && contains(err.msg, "test/stable") && contains(err.msg, "Packages.xz"),
	   "deb load: tampered Packages.xz refused, naming the repository (%s)", err.msg);
	repo_free_contents(&r);
	/* A bad Release.gpg. */
	sh("cd %s && echo x >> Release", dists);
	ret = load_deb(uri, keyring, cache4, false, false, &r, &err);
	ok(ret == -EKEYREJECTED && contains(err.msg, "Release") &&
	       contains(err.msg, "bad signature"),
	   "deb load: Release not matching Release.gpg refused (%s)", err.msg);
	repo_free_contents(&r);
	/* A component the Release does not have. */
	sh("cd %s && sed -i '$d' Release && gpg --batch --quiet --yes --local-user %s "
	   "--detach-sign -o Release.gpg Release",
	   dists, fpr);
	{
		_cleanup_free_ char *cache5 = tpath("cache-deb5");
		struct provider_ctx ctx = new_ctx(DISTTYPE_DEB, "amd64", cache5);
		r = deb_repo(uri, keyring, false);
		free(r.cfg.components[0]);
		r.cfg.components[0] = xstrdup("contrib");
		ret = provider_deb.load(&ctx, &r, &err);
		ok(ret == -ENOENT && contains(err.msg, "component 'contrib'"),
		   "deb load: unknown component refused (%s)", err.msg);
		repo_free_contents(&r);
		provider_pool_free(&ctx);
	}
}

/* A tiny signed rpm repository: one package by rpmbuild + rpmsign, createrepo_c, repomd.xml.asc. */
static bool build_rpm_repo(const char *dir, bool sign_rpm)
{
	_cleanup_free_ char *work = xasprintf("%s.work", dir);
	_cleanup_free_ char *spec = xasprintf("%s/t.spec", work);
	mkdir_p(work, 0755);
	FILE *f = fopen(spec, "w");
	if (!f)
		return false;
	fprintf(f, "Name: tiny\nVersion: 1.0\nRelease: 1\nSummary: t\nLicense: MIT\n"
	           "BuildArch: noarch\nRequires: /bin/sh\n%%description\nt\n%%install\n"
	           "mkdir -p %%{buildroot}/usr/share/tiny\n"
	           "echo hi > %%{buildroot}/usr/share/tiny/hi\n%%files\n/usr/share/tiny\n");
	fclose(f);
	if (sh("rpmbuild -bb --quiet %s --define '_topdir %s/top' --define '_tmppath %s' "
	       "--define '_build_id_links none' --define 'debug_package %%{nil}' "
	       "--define '__os_install_post %%{nil}' >/dev/null 2>&1 && mkdir -p %s/Packages && "
	       "mv %s/top/RPMS/noarch/*.rpm %s/Packages/",
	       spec, work, work, dir, work, dir) != 0)
		return false;
	if (sign_rpm && sh("rpmsign --addsign --define '_gpg_name %s' --define '_gpg_path %s' "
	                   "--define '__gpg /usr/bin/gpg' "
	                   "%s/Packages/*.rpm </dev/null >/dev/null 2>&1",
	                   fpr, gnupghome, dir) != 0)
		return false;
	return sh("createrepo_c --quiet --checksum sha256 --no-database %s && gpg --batch "
	          "--quiet --yes --local-user %s --armor --detach-sign %s/repodata/repomd.xml",
	          dir, fpr, dir) == 0;
}

static void test_rpm_repo(void)
{
	_cleanup_free_ char *dir = tpath("rpmrepo");
	if (!ok(build_rpm_repo(dir, true), "rpm repo: built with rpmbuild, rpmsign, createrepo_c"))
		return;
	_cleanup_free_ char *uri = xasprintf("file://%s", dir);
	_cleanup_free_ char *keyring = tpath("keys/signer.gpg");
	_cleanup_free_ char *other = tpath("keys/other.gpg");
	_cleanup_free_ char *cache = tpath("cache-rpm");
	struct mosaic_error err = {0};

	for (int pass = 0; pass < 3; pass++) {
		struct provider_ctx ctx = new_ctx(DISTTYPE_RPM, "x86_64", cache);
		ctx.offline = pass == 2;
		struct repo r = {.cfg = {.name = xstrdup("fedora-test"),
		                         .type = REPO_RPM,
		                         .uri = xstrdup(uri),
		                         .keyring = xstrdup(keyring)}};
		int ret = provider_rpm.load(&ctx, &r, &err);
		if (is_int(ret, 0, "rpm load: pass %d (%s) (%s)", pass,
		           pass == 0   ? "fresh"
		           : pass == 1 ? "cached"
		                       : "offline",
		           err.msg)) {
			is_int(r.packages, 1, "rpm load: one package");
			_cleanup_free_ char *xml = xasprintf("%s/repodata/repomd.xml", dir);
			char want[SHA256_HEX_LEN + 1];
			file_sha256(xml, want, NULL);
			is_str(r.root_digest, want, "rpm load: root digest is repomd.xml's sha256");
			Pool *pool = ctx.pool;
			Id p = find_solvable(pool, "tiny");
			Id type = 0;
			const char *sum = p ? solvable_lookup_checksum(pool->solvables + p,
			                                               SOLVABLE_CHECKSUM, &type)
			                    : NULL;
			ok(sum && type == REPOKEY_TYPE_SHA256, "rpm load: package has a sha256");
			if (pass == 0) {
				unsigned m;
				const char *loc = solvable_get_location(pool->solvables + p, &m);
				_cleanup_free_ char *path = path_join(dir, loc);
				struct package pkg = {.name = "tiny"};
				ret = provider_rpm.verify_package(&ctx, &r, path, &pkg, &err);
				is_int(ret, 0, "rpm verify: signed by the repository's key (%s)",
				       err.msg);
				free(r.cfg.keyring);
				r.cfg.keyring = xstrdup(other);
				ret = provider_rpm.verify_package(&ctx, &r, path, &pkg, &err);
				ok(ret == -ENOKEY && contains(err.msg, "nokey") &&
				       contains(err.msg, "tiny"),
				   "rpm verify: other keyring is nokey, naming the package (%s)",
				   err.msg);
			}
		}
		repo_free_contents(&r);
		provider_pool_free(&ctx);
	}

	/* Unknown key on repomd.xml, and a modified repomd.xml. */
	_cleanup_free_ char *cache2 = tpath("cache-rpm2");
	struct provider_ctx ctx = new_ctx(DISTTYPE_RPM, "x86_64", cache2);
	struct repo r = {.cfg = {.name = xstrdup("fedora-test"),
	                         .type = REPO_RPM,
	                         .uri = xstrdup(uri),
	                         .keyring = xstrdup(other)}};
	int ret = provider_rpm.load(&ctx, &r, &err);
	ok(ret == -ENOKEY && contains(err.msg, "repomd.xml") && contains(err.msg, "unknown key"),
	   "rpm load: unknown key refused (%s)", err.msg);
	free(r.cfg.keyring);
	r.cfg.keyring = xstrdup(keyring);
	sh("sed -i 's/<revision>/<revision>9/' %s/repodata/repomd.xml", dir);
	provider_pool_free(&ctx);
	_cleanup_free_ char *cache3 = tpath("cache-rpm3");
	ctx = new_ctx(DISTTYPE_RPM, "x86_64", cache3);
	ret = provider_rpm.load(&ctx, &r, &err);
	ok(ret == -EKEYREJECTED && contains(err.msg, "bad signature"),
	   "rpm load: modified repomd.xml refused (%s)", err.msg);
	repo_free_contents(&r);
	provider_pool_free(&ctx);

	/* An unsigned package. */
	_cleanup_free_ char *dir2 = tpath("rpmrepo-unsigned");
	if (build_rpm_repo(dir2, false)) {
		ctx = new_ctx(DISTTYPE_RPM, "x86_64", cache2);
		_cleanup_free_ char *uri2 = xasprintf("file://%s", dir2);
		r = (struct repo){.cfg = {.name = xstrdup("unsigned"),
		                          .type = REPO_RPM,
		                          .uri = xstrdup(uri2),
		                          .keyring = xstrdup(keyring)}};
		ret = provider_rpm.load(&ctx, &r, &err);
		if (is_int(ret, 0, "rpm load: repository of unsigned packages (%s)", err.msg)) {
			Id p = find_solvable(ctx.pool, "tiny");
			unsigned m;
			_cleanup_free_ char *path = path_join(
			    dir2, solvable_get_location(((Pool *)ctx.pool)->solvables + p, &m));
			ret = provider_rpm.verify_package(&ctx, &r, path, NULL, &err);
			ok(ret == -EKEYREJECTED && contains(err.msg, "unsigned"),
			   "rpm verify: unsigned package refused (%s)", err.msg);
		}
		repo_free_contents(&r);
		provider_pool_free(&ctx);
	}
}

static void test_cache_path(void)
{
	struct provider_ctx ctx = {.cache_dir = "/c"};
	_cleanup_free_ char *p = provider_cache_path(&ctx, "metadata", "x/InRelease");
	is_str(p, "/c/metadata/x/InRelease", "provider_cache_path");
	ok(provider_for(REPO_DEB) == &provider_deb && provider_for(REPO_RPM) == &provider_rpm,
	   "provider_for");
	is_str(provider_deb.suffix, ".deb", "provider_deb suffix");
	is_int(provider_rpm.disttype, DISTTYPE_RPM, "provider_rpm disttype");
}

static void test_version_compare(void)
{
	ok(package_version_compare(REPO_DEB, "1.0", "2.0") < 0, "deb: 1.0 < 2.0");
	ok(package_version_compare(REPO_DEB, "3.0~rc1", "3.0") < 0,
	   "deb: ~ sorts before the release");
	ok(package_version_compare(REPO_DEB, "2.0", "3.0~rc1") < 0, "deb: 2.0 < 3.0~rc1");
	ok(package_version_compare(REPO_DEB, "1:0.9", "2.0") > 0, "deb: the epoch first");
	is_int(package_version_compare(REPO_DEB, "1.0-1", "1.0-1"), 0, "deb: equal");
	ok(package_version_compare(REPO_DEB, "1.0-2", "1.0-10") < 0, "deb: revisions numerically");
	ok(package_version_compare(REPO_RPM, "1.0-1", "1.0-2") < 0, "rpm: release");
	ok(package_version_compare(REPO_RPM, "1:1.0-1", "2.0-1") > 0, "rpm: the epoch first");
	ok(package_version_compare(REPO_RPM, "1.10-1", "1.9-1") > 0, "rpm: numerically");
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-providers-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	_cleanup_free_ char *cache = tpath("mosaic-cache");
	setenv("MOSAIC_CACHE_DIR", cache, 1);

	test_cache_path();
	test_version_compare();
	test_deb822_all();
	test_apt_sources();
	test_release();
	test_packages();
	test_rpmmd();
	have_gpg = make_key();
	if (ok(have_gpg, "gpg: test keys made")) {
		test_deb_repo();
		test_rpm_repo();
	}
	if (gnupghome)
		sh("gpgconf --kill all");
	rm_tree(tmpdir);
	free(tmpdir);
	free(gnupghome);
	free(fpr);
	return done();
}
