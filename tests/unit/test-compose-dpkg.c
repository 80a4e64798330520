/* The dpkg database writer (compose/dpkg-db.c) on hand-made control paragraphs. The expected
 * texts are what dpkg 1.21's own `dpkg --unpack` of such packages wrote into its status file. */
#include "compose/compose.h"
#include "tap.h"

#include <ftw.h>
#include <sys/stat.h>

static struct compose_dpkg_package pkg(const char *control)
{
	return (struct compose_dpkg_package){.control = control, .control_len = strlen(control)};
}

static char *text(const struct compose_dpkg_package *p, size_t n, bool status)
{
	char *out = NULL;
	struct mosaic_error err = {0};
	if (compose_dpkg_text(p, n, "amd64", status, &out, &err) < 0)
		diag("compose_dpkg_text: %s", err.msg);
	return out;
}

static void test_field_order(void)
{
	/* Every known field, in reverse: dpkg puts them back in its order, Status right after
	 * Package/Essential/Protected, unknown fields after Description as the package had them. */
	struct compose_dpkg_package p =
	    pkg("Description: d\n x\n"
	        "X-First: 1\n"
	        "Enhances: e\nConflicts: c\nBreaks: b\nSuggests: s\n"
	        "Recommends: r\nPre-Depends: pd\nDepends: d\n"
	        "Provides: p\nReplaces: rp\nVersion: 1\nSource: src\n"
	        "Multi-Arch: foreign\nArchitecture: amd64\n"
	        "Bugs: mailto:x@x.invalid\nMaintainer: m <m@x.invalid>\n"
	        "Origin: o\nInstalled-Size: 1\nSection: s\n"
	        "Priority: optional\nProtected: yes\nEssential: yes\n"
	        "X-Last: 2\nPackage: allf\n");
	_cleanup_free_ char *s = text(&p, 1, true);
	is_str(s,
	       "Package: allf\nEssential: yes\nProtected: yes\nStatus: install ok unpacked\n"
	       "Priority: optional\nSection: s\nInstalled-Size: 1\nOrigin: o\n"
	       "Maintainer: m <m@x.invalid>\nBugs: mailto:x@x.invalid\nArchitecture: amd64\n"
	       "Multi-Arch: foreign\nSource: src\nVersion: 1\nReplaces: rp\nProvides: p\n"
	       "Depends: d\nPre-Depends: pd\nRecommends: r\nSuggests: s\nBreaks: b\n"
	       "Conflicts: c\nEnhances: e\nDescription: d\n x\nX-First: 1\nX-Last: 2\n\n",
	       "dpkg's field order, Status after Package/Essential/Protected");
	_cleanup_free_ char *a = text(&p, 1, false);
	ok(a && !strstr(a, "Status:") &&
	       strncmp(a,
	               "Package: allf\nEssential: yes\nProtected: "
	               "yes\nPriority: optional\n",
	               61) == 0,
	   "available: the same paragraph without Status");
}

static void test_canonical_forms(void)
{
	/* Lower-cased field and package names, a zero epoch dropped, "no" booleans and
	 * Multi-Arch dropped, relations rewritten, Filename only in available, verbatim
	 * description lines kept, trailing blanks of a value gone. */
	struct compose_dpkg_package p = pkg("package: Baz\nversion: 0:2.0\nArchitecture: all\n"
	                                    "Essential: no\nMulti-Arch: no\n"
	                                    "Maintainer: me <me@x.invalid>\n"
	                                    "Depends: a(>=1),b|c ,\n d:any (<< 3), e (> 2)\n"
	                                    "X-Custom: hi  \n"
	                                    "Description: test\n   indented  \n .\n"
	                                    "Filename: pool/x.deb\nBuilt-Using: foo (= 1)\n");
	_cleanup_free_ char *s = text(&p, 1, true);
	is_str(s,
	       "Package: baz\nStatus: install ok unpacked\nMaintainer: me <me@x.invalid>\n"
	       "Architecture: all\nVersion: 2.0\n"
	       "Depends: a (>= 1), b | c, d:any (<< 3), e (>= 2)\n"
	       "Description: test\n   indented  \n .\nX-Custom: hi\nBuilt-Using: foo (= 1)\n\n",
	       "canonical forms as dpkg writes them");
	_cleanup_free_ char *a = text(&p, 1, false);
	ok(a && strstr(a, "Filename: pool/x.deb\nDescription: test\n"),
	   "Filename kept in available");
}

static void test_conffiles(void)
{
	struct compose_dpkg_package p =
	    pkg("Package: foo\nVersion: 1:1.0-1\nArchitecture: amd64\n"
	        "Maintainer: me <me@x.invalid>\nInstalled-Size: 5\nMulti-Arch: same\n"
	        "Depends: libc6 (>= 2)\nSection: misc\nPriority: optional\n"
	        "Homepage: http://x.invalid\nSource: foosrc (1.0-0)\n"
	        "Description: test\n long desc\n .\n more\n");
	p.conffiles = "/etc/foo.conf\n\nremove-on-upgrade /etc/old.conf\n";
	_cleanup_free_ char *s = text(&p, 1, true);
	is_str(s,
	       "Package: foo\nStatus: install ok unpacked\nPriority: optional\nSection: misc\n"
	       "Installed-Size: 5\nMaintainer: me <me@x.invalid>\nArchitecture: amd64\n"
	       "Multi-Arch: same\nSource: foosrc (1.0-0)\nVersion: 1:1.0-1\n"
	       "Depends: libc6 (>= 2)\nConffiles:\n /etc/foo.conf newconffile\n"
	       " /etc/old.conf newconffile remove-on-upgrade\n"
	       "Description: test\n long desc\n .\n more\nHomepage: http://x.invalid\n\n",
	       "conffiles as dpkg --unpack records them, before Description");
	_cleanup_free_ char *a = text(&p, 1, false);
	ok(a && !strstr(a, "Conffiles"), "no Conffiles in available");

	/* With the hash of the file the package ships after a tab (compose_dpkg_fragment adds
	 * it), that hash instead of newconffile: dpkg --configure finds no .dpkg-new to move
	 * into place and keeps what the status says. A line without one stays newconffile. */
	p.conffiles = "/etc/foo.conf\t0123456789abcdef0123456789abcdef\n"
	              "remove-on-upgrade /etc/old.conf \tfedcba9876543210fedcba9876543210\n"
	              "/etc/bare.conf\n/etc/odd.conf\tnot-a-hash\n";
	_cleanup_free_ char *h = text(&p, 1, true);
	ok(h && strstr(h, "Conffiles:\n /etc/foo.conf 0123456789abcdef0123456789abcdef\n"
	                  " /etc/old.conf fedcba9876543210fedcba9876543210 remove-on-upgrade\n"
	                  " /etc/bare.conf newconffile\n"
	                  " /etc/odd.conf\tnot-a-hash newconffile\nDescription:"),
	   "conffile hashes recorded where known, flags after them");
}

#define P(name, arch, ma)                                                                          \
	"Package: " name "\nVersion: 1\nArchitecture: " arch "\n" ma                               \
	"Maintainer: m <m@x.invalid>\nDescription: d\n"

static void test_sorting(void)
{
	/* Input in reverse; dpkg sorts by name (bytes), then by architecture. A later package of
	 * the same name replaces the earlier (tool:amd64), unless both are Multi-Arch: same and
	 * differ in arch (libz). */
	const char *c[] = {
	    P("zed", "amd64", ""),
	    P("tool", "amd64", ""),
	    P("tool", "i386", ""),
	    P("libz", "i386", "Multi-Arch: same\n"),
	    P("libz", "amd64", "Multi-Arch: same\n"),
	    P("libq", "i386", "Multi-Arch: same\n"),
	    P("aa", "amd64", ""),
	    P("a.b", "all", ""),
	    P("a-b", "amd64", ""),
	};
	struct compose_dpkg_package p[ARRAY_SIZE(c)];
	for (size_t i = 0; i < ARRAY_SIZE(c); i++)
		p[i] = pkg(c[i]);
	_cleanup_free_ char *s = text(p, ARRAY_SIZE(c), true);
	char order[256] = "";
	for (const char *l = s; l && (l = strstr(l, "Package: ")); l++) {
		const char *a = strstr(l, "Architecture: ");
		snprintf(order + strlen(order), sizeof(order) - strlen(order), "%.*s:%.*s ",
		         (int)strcspn(l + 9, "\n"), l + 9, (int)strcspn(a + 14, "\n"), a + 14);
	}
	is_str(order,
	       "a-b:amd64 a.b:all aa:amd64 libq:i386 libz:amd64 libz:i386 tool:i386 zed:amd64 ",
	       "sorted by name then arch, later same-name packages replace earlier ones");

	/* Only two Multi-Arch: same instances share a name. */
	struct compose_dpkg_package q[] = {pkg(P("mix", "amd64", "Multi-Arch: same\n")),
	                                   pkg(P("mix", "i386", ""))};
	_cleanup_free_ char *t = text(q, 2, true);
	ok(t && strstr(t, "Architecture: i386") && !strstr(t, "Architecture: amd64"),
	   "a non-Multi-Arch: same package replaces all others of its name");
	struct compose_dpkg_package r[] = {pkg(P("mix", "i386", "Multi-Arch: same\n")),
	                                   pkg(P("mix", "all", ""))};
	_cleanup_free_ char *u = text(r, 2, true);
	ok(u && strstr(u, "Architecture: all"), "replacement holds across arch all");
}

static void test_errors(void)
{
	struct mosaic_error err = {0};
	char *out = NULL;
	struct compose_dpkg_package p = pkg("Package: x\nArchitecture: amd64\n");
	p.what = "x.deb";
	is_int(compose_dpkg_text(&p, 1, "amd64", true, &out, &err), -EINVAL, "no Version fails");
	ok(strstr(err.msg, "x.deb") && strstr(err.msg, "Version"), "the error names it: %s",
	   err.msg);
	p = pkg("Package: x\n continuation\nVersion: 1\nArchitecture: amd64\nPackage: y\n");
	is_int(compose_dpkg_text(&p, 1, "amd64", true, &out, &err), -EINVAL, "duplicate field");
	p = pkg(" x\nPackage: x\n");
	is_int(compose_dpkg_text(&p, 1, "amd64", true, &out, &err), -EINVAL,
	       "continuation before any field");
	ok(out == NULL, "nothing returned on error");
	is_int(compose_dpkg_text(NULL, 0, "amd64", true, &out, &err), 0, "no packages");
	is_str(out, "", "an empty status");
	free(out);
}

static char *slurp(const char *root, const char *rel)
{
	_cleanup_free_ char *p = path_join(root, rel);
	char *s = NULL;
	return read_file(p, 1 << 20, &s, NULL) < 0 ? NULL : s;
}

static void test_tree(void)
{
	char tmpl[] = "/tmp/test-compose-dpkg.XXXXXX";
	char *root = mkdtemp(tmpl);
	struct compose_dpkg_package p[] = {
	    pkg(P("libt", "i386", "Multi-Arch: same\n")),
	    pkg(P("mandb", "amd64", "")),
	    pkg(P("libt", "amd64", "Multi-Arch: same\n")),
	    pkg(P("x", "armhf", "")),
	};
	p[0].triggers = "interest-noawait ldconfig\n";
	p[1].triggers = "# comment\ninterest-noawait /usr/share/man\n\ninterest  db\n"
	                "activate-noawait other\ninterest ../escape\n";
	p[2].triggers = "interest ldconfig\ninterest /usr/lib\n";
	struct mosaic_error err = {0};
	int r = compose_dpkg_tree(p, ARRAY_SIZE(p), "amd64", 1700000000, root, &err);
	if (!is_int(r, 0, "compose_dpkg_tree: %s", err.msg))
		return;
	_cleanup_free_ char *arch = slurp(root, "var/lib/dpkg/arch");
	is_str(arch, "amd64\narmhf\ni386\n", "arch: native first, then the foreign ones");
	_cleanup_free_ char *so = slurp(root, "var/lib/dpkg/statoverride");
	ok(so == NULL, "no statoverride: dpkg-statoverride makes it when first used");
	_cleanup_free_ char *format = slurp(root, "var/lib/dpkg/info/format");
	is_str(format, "1\n", "info/format says the multiarch layout");
	_cleanup_free_ char *file = slurp(root, "var/lib/dpkg/triggers/File");
	is_str(file, "/usr/share/man mandb/noawait\n/usr/lib libt:amd64\n",
	       "file trigger interests in unpack order, pkg:arch for Multi-Arch: same");
	_cleanup_free_ char *ld = slurp(root, "var/lib/dpkg/triggers/ldconfig");
	is_str(ld, "libt:i386/noawait\nlibt:amd64\n", "explicit trigger interests");
	_cleanup_free_ char *db = slurp(root, "var/lib/dpkg/triggers/db");
	is_str(db, "mandb\n", "a second interest of the same package");
	_cleanup_free_ char *other = slurp(root, "var/lib/dpkg/triggers/other");
	ok(other == NULL, "activate directives record nothing");
	_cleanup_free_ char *unincorp = slurp(root, "var/lib/dpkg/triggers/Unincorp");
	is_str(unincorp, "", "triggers/Unincorp is empty");
	_cleanup_free_ char *status = slurp(root, "var/lib/dpkg/status");
	_cleanup_free_ char *want = text(p, ARRAY_SIZE(p), true);
	is_str(status, want, "status is compose_dpkg_text's");
	const char *empty[] = {"var/lib/dpkg/diversions"};
	for (size_t i = 0; i < ARRAY_SIZE(empty); i++) {
		_cleanup_free_ char *e = slurp(root, empty[i]);
		is_str(e, "", "%s is empty", empty[i]);
	}
	struct stat st;
	_cleanup_free_ char *upd = path_join(root, "var/lib/dpkg/updates");
	ok(stat(upd, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755 &&
	       st.st_mtime == 1700000000,
	   "updates/ is a 0755 directory with the given time");
	_cleanup_free_ char *stp = path_join(root, "var/lib/dpkg/status");
	ok(stat(stp, &st) == 0 && (st.st_mode & 07777) == 0644 && st.st_mtime == 1700000000,
	   "status is 0644 with the given time");
	rm_tree(root);
}

static void test_native_only_has_no_arch_file(void)
{
	/* dpkg writes var/lib/dpkg/arch only for dpkg --add-architecture: a debootstrap of
	 * native and "all" packages has none. */
	char tmpl[] = "/tmp/test-compose-dpkg.XXXXXX";
	char *root = mkdtemp(tmpl);
	struct compose_dpkg_package p[] = {pkg(P("a", "amd64", "")), pkg(P("b", "all", "")),
	                                   pkg(P("c", "amd64", "Multi-Arch: same\n"))};
	struct mosaic_error err = {0};
	int r = compose_dpkg_tree(p, ARRAY_SIZE(p), "amd64", 1700000000, root, &err);
	if (is_int(r, 0, "compose_dpkg_tree: %s", err.msg)) {
		_cleanup_free_ char *arch = slurp(root, "var/lib/dpkg/arch");
		ok(arch == NULL, "no arch file for native packages alone");
		_cleanup_free_ char *status = slurp(root, "var/lib/dpkg/status");
		ok(status && strstr(status, "Package: c\n"), "the status is there");
	}
	rm_tree(root);
}

int main(void)
{
	test_field_order();
	test_canonical_forms();
	test_conffiles();
	test_sorting();
	test_errors();
	test_tree();
	test_native_only_has_no_arch_file();
	return done();
}
