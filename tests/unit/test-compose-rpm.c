/* The rpm database writer and scriptlet reader (compose/rpm-db.c) on headers made here with
 * librpm: rpm's install order, the tags rpm records on install, a database that reads from a
 * read-only directory and is the same bytes every time, and the scriptlets in rpm's order. */
#include "compose/compose.h"
#include "tap.h"

#include <ftw.h>
#include <sys/stat.h>

#include <rpm/header.h>
#include <rpm/rpmdb.h>
#include <rpm/rpmds.h>
#include <rpm/rpmlib.h>
#include <rpm/rpmmacro.h>
#include <rpm/rpmtag.h>
#include <rpm/rpmts.h>

struct blob {
	void *data;
	unsigned len;
	char path[128];
};

/* A binary package header as rpmbuild writes the tags this test looks at. */
static struct blob make_header(const char *name, const char *version, const char *requires,
                               const char *pre, const char *post, const char *post_prog)
{
	Header h = headerNew();
	headerPutString(h, RPMTAG_NAME, name);
	headerPutString(h, RPMTAG_VERSION, version);
	headerPutString(h, RPMTAG_RELEASE, "1");
	headerPutString(h, RPMTAG_ARCH, "noarch");
	headerPutString(h, RPMTAG_OS, "linux");
	headerPutString(h, RPMTAG_SUMMARY, "a test package");
	headerPutString(h, RPMTAG_SOURCERPM, "x-1-1.src.rpm");
	const char *pname = name, *pver = version;
	uint32_t eq = RPMSENSE_EQUAL;
	headerPutStringArray(h, RPMTAG_PROVIDENAME, &pname, 1);
	headerPutStringArray(h, RPMTAG_PROVIDEVERSION, &pver, 1);
	headerPutUint32(h, RPMTAG_PROVIDEFLAGS, &eq, 1);
	if (requires) {
		const char *empty = "";
		uint32_t any = 0;
		headerPutStringArray(h, RPMTAG_REQUIRENAME, &requires, 1);
		headerPutStringArray(h, RPMTAG_REQUIREVERSION, &empty, 1);
		headerPutUint32(h, RPMTAG_REQUIREFLAGS, &any, 1);
	}
	const char *sh = "/bin/sh";
	if (pre) {
		headerPutString(h, RPMTAG_PREIN, pre);
		headerPutStringArray(h, RPMTAG_PREINPROG, &sh, 1);
	}
	if (post)
		headerPutString(h, RPMTAG_POSTIN, post);
	if (post_prog) {
		const char *argv[] = {post_prog, "-e"};
		headerPutStringArray(h, RPMTAG_POSTINPROG, argv, post ? 2 : 1);
	}
	struct blob b = {0};
	b.data = headerExport(h, &b.len);
	snprintf(b.path, sizeof(b.path), "/var/lib/mosaic/rpm/%s-%s-1.noarch.rpmhdr", name,
	         version);
	headerFree(h);
	return b;
}

static char *tmpdir(void)
{
	const char *t = getenv("TMPDIR");
	char *d = xasprintf("%s/test-compose-rpm.XXXXXX", t && *t ? t : "/tmp");
	return mkdtemp(d) ? d : NULL;
}

/* Writes the blobs where package fragments carry them (the scriptlet reader reads them). */
static void put_headers(const char *root, const struct blob *b, size_t n)
{
	_cleanup_free_ char *dir = path_join(root, "var/lib/mosaic/rpm");
	mkdir_p(dir, 0755);
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *p = path_join(root, b[i].path + 1);
		write_file_atomic(p, b[i].data, b[i].len, 0644);
	}
}

static int tree(const struct blob *b, size_t n, const char *dbpath, const char *root)
{
	struct compose_rpm_package *p = xcalloc(n, sizeof(*p));
	for (size_t i = 0; i < n; i++)
		p[i] = (struct compose_rpm_package){b[i].data, b[i].len, b[i].path, NULL};
	struct mosaic_error err = {0};
	int r = compose_rpm_tree(p, n, dbpath, 1700000000, root, &err);
	if (r < 0)
		diag("compose_rpm_tree: %s", err.msg);
	free(p);
	return r;
}

/* The installed packages' NEVRA and install time, in database order, one line each. */
static char *query(const char *root, const char *dbpath)
{
	rpmReadConfigFiles(NULL, NULL);
	rpmPushMacro(NULL, "_dbpath", NULL, dbpath, RMIL_CMDLINE);
	rpmts ts = rpmtsCreate();
	rpmtsSetRootDir(ts, root);
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	rpmdbMatchIterator mi = rpmtsInitIterator(ts, RPMDBI_PACKAGES, NULL, 0);
	Header h;
	while ((h = rpmdbNextIterator(mi)))
		fprintf(f, "%s-%s-%s.%s %llu %d\n", headerGetString(h, RPMTAG_NAME),
		        headerGetString(h, RPMTAG_VERSION), headerGetString(h, RPMTAG_RELEASE),
		        headerGetString(h, RPMTAG_ARCH),
		        (unsigned long long)headerGetNumber(h, RPMTAG_INSTALLTIME),
		        headerIsEntry(h, RPMTAG_INSTALLTID));
	rpmdbFreeIterator(mi);
	rpmtsFree(ts);
	rpmPopMacro(NULL, "_dbpath");
	fclose(f);
	return buf;
}

static void test_database(void)
{
	/* Listed dependents first: rpm's order puts what they need before them. */
	struct blob b[] = {
	    make_header("app", "1.0", "base", "echo app pre", "echo app post", NULL),
	    make_header("base", "1.0", NULL, "echo base pre", NULL, NULL),
	    make_header("app", "1.0", "base", "echo app pre 2", "echo app post", NULL),
	};
	_cleanup_free_ char *root = tmpdir(), *again = tmpdir();
	ok(tree(b, 3, "root/.rpmdb", root) == 0, "a database of three headers");
	_cleanup_free_ char *q = query(root, "/root/.rpmdb");
	is_str(q, "base-1.0-1.noarch 1700000000 1\napp-1.0-1.noarch 1700000000 1\n",
	       "rpm's order, the same NEVRA once, install time and transaction id recorded");

	_cleanup_free_ char *db = path_join(root, "root/.rpmdb/rpmdb.sqlite");
	_cleanup_free_ char *wal = path_join(root, "root/.rpmdb/rpmdb.sqlite-wal");
	_cleanup_free_ char *lock = path_join(root, "root/.rpmdb/.rpm.lock");
	_cleanup_free_ char *home = path_join(root, "root");
	struct stat st = {0}, hst = {0};
	ok(stat(db, &st) == 0 && (st.st_mode & 07777) == 0644 && st.st_mtime == 1700000000,
	   "rpmdb.sqlite 0644 with the given time");
	ok(stat(home, &hst) == 0 && (hst.st_mode & 07777) == 0700, "/root keeps its 0700");
	ok(access(wal, F_OK) < 0 && access(lock, F_OK) < 0, "no WAL, no lock file");
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	ok(read_file(db, 1 << 24, &text, &len) == 0 && len > 100 && text[18] == 1 && text[19] == 1,
	   "a rollback-journal database (readable from read-only media)");

	ok(tree(b, 3, "root/.rpmdb", again) == 0, "made again");
	_cleanup_free_ char *db2 = path_join(again, "root/.rpmdb/rpmdb.sqlite");
	_cleanup_free_ char *text2 = NULL;
	size_t len2 = 0;
	ok(read_file(db2, 1 << 24, &text2, &len2) == 0 && len == len2 &&
	       memcmp(text, text2, len) == 0,
	   "the same packages give the same bytes");

	_cleanup_free_ char *plan = path_join(root, COMPOSE_RPM_PLAN);
	_cleanup_free_ char *pt = NULL;
	ok(read_file(plan, 1 << 20, &pt, NULL) == 0 && strstr(pt, "\"dbpath\": \"/root/.rpmdb\"") &&
	       strstr(pt, "base-1.0-1.noarch") < strstr(pt, "app-1.0-1.noarch"),
	   "the plan names the database and the order");

	/* The scriptlets, from the headers where the fragments carry them. */
	struct blob s[] = {b[1], b[2]};
	put_headers(root, s, 2);
	struct compose_rpm_script *v = NULL;
	size_t n = 0;
	struct mosaic_error err = {0};
	ok(compose_rpm_scripts(root, &v, &n, &err) == 0 && n == 3, "three scriptlets (%s)",
	   err.msg);
	if (n == 3) {
		ok(!strcmp(v[0].package, "base-1.0-1.noarch") && !strcmp(v[0].stage, "pre") &&
		       !strcmp(v[0].body, "echo base pre"),
		   "base's %%pre first (it has no %%post)");
		ok(!strcmp(v[1].package, "app-1.0-1.noarch") && !strcmp(v[1].stage, "pre") &&
		       !strcmp(v[1].body, "echo app pre 2"),
		   "then app's %%pre, from the later header");
		ok(!strcmp(v[2].stage, "post") && v[2].arg == 1 &&
		       !strcmp(v[2].argv[0], "/bin/sh") && !v[2].argv[1] && !v[2].lua &&
		       !v[2].env[0],
		   "then app's %%post: /bin/sh by default, argument 1, no prefixes");
	} else {
		for (int i = 0; i < 3; i++)
			ok(false, "scriptlet %d", i);
	}
	compose_rpm_scripts_free(v, n);
	rm_tree(root);
	rm_tree(again);
	for (size_t i = 0; i < ARRAY_SIZE(b); i++)
		free(b[i].data);
}

static void test_interpreters(void)
{
	struct blob b[] = {
	    make_header("ldc", "1", NULL, NULL, NULL, "/sbin/ldconfig"),
	    make_header("bashy", "1", NULL, NULL, "echo $1", "/bin/bash"),
	    make_header("luaish", "1", NULL, NULL, "print(1)", "<lua>"),
	};
	_cleanup_free_ char *root = tmpdir();
	ok(tree(b, 3, "var/lib/rpm", root) == 0, "var/lib/rpm");
	put_headers(root, b, 3);
	struct compose_rpm_script *v = NULL;
	size_t n = 0;
	struct mosaic_error err = {0};
	ok(compose_rpm_scripts(root, &v, &n, &err) == 0 && n == 3, "three %%post (%s)", err.msg);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].package, "ldc-1-1.noarch") == 0)
			ok(!v[i].body && !strcmp(v[i].argv[0], "/sbin/ldconfig") && !v[i].argv[1],
			   "-p /sbin/ldconfig: the interpreter alone");
		else if (strcmp(v[i].package, "bashy-1-1.noarch") == 0)
			ok(v[i].body && !strcmp(v[i].argv[0], "/bin/bash") &&
			       !strcmp(v[i].argv[1], "-e") && !v[i].argv[2],
			   "-p '/bin/bash -e': interpreter and options");
		else
			ok(v[i].lua, "<lua> is marked");
	}
	compose_rpm_scripts_free(v, n);
	rm_tree(root);
	for (size_t i = 0; i < ARRAY_SIZE(b); i++)
		free(b[i].data);
}

static void test_refusals(void)
{
	struct blob b = make_header("x", "1", NULL, NULL, NULL, NULL);
	_cleanup_free_ char *root = tmpdir();
	ok(tree(&b, 1, "/var/lib/rpm", root) < 0, "an absolute database path is refused");
	ok(tree(&b, 1, "var/../etc", root) < 0, "'..' is refused");
	b.len = 10;
	ok(tree(&b, 1, "var/lib/rpm", root) < 0, "a truncated header is refused");
	struct compose_rpm_script *v = NULL;
	size_t n = 0;
	struct mosaic_error err = {0};
	ok(compose_rpm_scripts(root, &v, &n, &err) < 0, "no plan, no scriptlets");
	rm_tree(root);
	free(b.data);
}

int main(void)
{
	test_database();
	test_interpreters();
	test_refusals();
	return done();
}
