/* Unit tests for manifests/: the package syntax, parsing and normalising through
 * manifest_load_buffer, merging of layers and includes, when: matching and the error texts.
 * Include tests write files in a temp directory they remove. */
#include "manifests/manifest.h"
#include "tap.h"

#include <ftw.h>
#include <string.h>
#include <sys/stat.h>

static char *tmpdir;

/* The value at a dotted path ("repositories.0.name") as text; NULL when absent. */
static const char *at(json_object *o, const char *path)
{
	_cleanup_free_ char *p = xstrdup(path);
	for (char *part = strtok(p, "."); part && o; part = strtok(NULL, ".")) {
		if (json_object_is_type(o, json_type_array)) {
			size_t i = strtoul(part, NULL, 10);
			o = i < json_object_array_length(o) ? json_object_array_get_idx(o, i)
			                                    : NULL;
		} else if (!json_object_object_get_ex(o, part, &o)) {
			o = NULL;
		}
	}
	return o ? json_object_get_string(o) : NULL;
}

static size_t len_at(json_object *o, const char *key)
{
	json_object *a;
	return json_object_object_get_ex(o, key, &a) ? json_object_array_length(a) : 0;
}

#define NAME "/srv/m/test.yaml"

static json_object *load(const char *yaml, json_object *facts)
{
	struct mosaic_error err = {0};
	json_object *m = NULL;
	int r = manifest_load_buffer(NAME, yaml, strlen(yaml), facts, &m, &err);
	if (r < 0)
		diag("unexpected error: %s", err.msg);
	return m;
}

/* Loads yaml that must fail; returns the error text (static). */
static const char *load_error(const char *yaml)
{
	static struct mosaic_error err;
	json_object *m = NULL;
	memset(&err, 0, sizeof(err));
	int r = manifest_load_buffer(NAME, yaml, strlen(yaml), NULL, &m, &err);
	if (r != -EINVAL || m)
		diag("expected -EINVAL, got %d", r);
	json_object_put(m);
	return err.msg;
}

static json_object *facts_of(const char *json)
{
	return json_tokener_parse(json);
}

/* ---- package syntax ----------------------------------------------------------------------- */

static void package_is(const char *spec, const char *name, const char *op, const char *version)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *n = NULL, *o = NULL, *v = NULL;
	int r = manifest_parse_package(spec, &n, &o, &v, &err);
	if (!is_int(r, 0, "'%s' parses", spec)) {
		diag("%s", err.msg);
		return;
	}
	is_str(n, name, "'%s': name", spec);
	is_str(o, op, "'%s': op", spec);
	is_str(v, version, "'%s': version", spec);
}

static void package_bad(const char *spec, const char *message)
{
	struct mosaic_error err = {0};
	char *n = NULL, *o = NULL, *v = NULL;
	int r = manifest_parse_package(spec, &n, &o, &v, &err);
	is_int(r, -EINVAL, "'%s' is refused", spec);
	is_str(err.msg, message, "'%s': message", spec);
	ok(!n && !o && !v, "'%s': nothing handed out", spec);
}

static void test_packages(void)
{
	package_is("apt", "apt", "", "");
	package_is("libstdc++6", "libstdc++6", "", "");
	package_is("python3.11:amd64", "python3.11:amd64", "", "");
	package_is("foo (>= 1.2)", "foo", ">=", "1.2");
	package_is("foo>=1.2", "foo", ">=", "1.2");
	package_is("foo = 1.2-3", "foo", "=", "1.2-3");
	package_is("foo == 1.2", "foo", "=", "1.2");
	package_is("foo (<< 2:1.0~rc1+dfsg)", "foo", "<<", "2:1.0~rc1+dfsg");
	package_is("foo>2", "foo", ">>", "2");
	package_is("foo < 2", "foo", "<<", "2");
	package_is("foo (<=1)", "foo", "<=", "1");
	package_is("foo>>1", "foo", ">>", "1");
	package_is("  foo  ", "foo", "", "");

	package_bad("", "empty package name");
	package_bad("-foo",
	            "malformed package name '-foo': a name must start with a letter or a digit");
	package_bad("foo$", "malformed package name 'foo$': '$' is not allowed in a package name "
	                    "(letters, digits and + . _ -)");
	package_bad("foo bar",
	            "malformed package name 'foo bar': unexpected 'bar' after the name (a "
	            "version constraint looks like 'name (>= 1.2)')");
	package_bad("foo:", "malformed package name 'foo:': expected an architecture after ':'");
	package_bad("foo (1.2)",
	            "malformed version constraint in 'foo (1.2)': expected an operator "
	            "(=, >=, <=, >>, <<) before the version");
	package_bad("foo => 1", "malformed version constraint in 'foo => 1': unknown operator '=>' "
	                        "(use =, >=, <=, >>, <<, > or <)");
	package_bad("foo (>= )",
	            "malformed version constraint in 'foo (>= )': no version after '>='");
	package_bad("foo >= abc",
	            "malformed version constraint in 'foo >= abc': version 'abc' must "
	            "start with a digit");
	package_bad("foo (>= 1.2", "malformed version constraint in 'foo (>= 1.2': missing ')'");
	package_bad("foo >= 1.2)",
	            "malformed version constraint in 'foo >= 1.2)': ')' without '('");
	package_bad("foo (>= 1.2) x",
	            "malformed version constraint in 'foo (>= 1.2) x': unexpected "
	            "'x' after the version");
	package_bad("foo = 1.2$",
	            "malformed version constraint in 'foo = 1.2$': '$' is not allowed in "
	            "a version");
	package_bad("foo = 1a:2",
	            "malformed version constraint in 'foo = 1a:2': the epoch before ':' "
	            "must be a number");
}

/* ---- normalising -------------------------------------------------------------------------- */

static void test_normalise(void)
{
	json_object *facts = facts_of("{\"arch\": \"arm64\"}");
	json_object *m =
	    load("name: t\n"
	         "repositories:\n"
	         "  - name: d\n"
	         "    type: deb\n"
	         "    uri: http://example.invalid/debian\n"
	         "    suites: bookworm\n"
	         "    keyring: keys/d.gpg\n"
	         "  - {name: r, type: rpm, baseurl: http://example.invalid/el,\n"
	         "     keyring: ../r.gpg, priority: -5, check_valid_until: no}\n"
	         "base: {image: ./root.tar}\n"
	         "packages: [apt, 'libfoo (>= 2.0)', {name: bar, version: '1.0'},\n"
	         "           {name: baz, version: '>> 3'}]\n"
	         "fragments:\n"
	         "  - frags/extra\n"
	         "  - 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
	         "  - {path: /opt/dev.tar, dev: yes, name: devtools}\n"
	         "config:\n"
	         "  files: [{path: /etc/a, source: files/a, mode: 644}]\n"
	         "run:\n"
	         "  - echo one\n"
	         "  - {name: two, command: echo two}\n"
	         "export: [{format: raw, output: out/disk.raw, size: 2G}]\n",
	         facts);
	if (!ok(m != NULL, "a full manifest loads"))
		return;
	is_str(at(m, "arch"), "arm64", "arch comes from the facts when the manifest has none");
	is_str(at(m, "recommends"), "false", "recommends defaults to false");
	is_str(at(m, "repositories.0.suites.0"), "bookworm", "a single suite becomes a list");
	is_str(at(m, "repositories.0.components.0"), "main", "components default to [main]");
	is_str(at(m, "repositories.0.priority"), "0", "priority defaults to 0");
	is_str(at(m, "repositories.0.check_valid_until"), "true", "check_valid_until defaults on");
	is_str(at(m, "repositories.0.keyring"), "/srv/m/keys/d.gpg", "keyring made absolute");
	is_str(at(m, "repositories.1.keyring"), "/srv/r.gpg", "'..' in a keyring resolved");
	is_str(at(m, "repositories.1.priority"), "-5", "priority kept");
	is_str(at(m, "repositories.1.check_valid_until"), "false", "'no' is false");
	ok(!at(m, "repositories.1.components"), "no components for rpm");
	is_str(at(m, "base.image"), "/srv/m/root.tar", "base image made absolute");
	is_str(at(m, "packages.0.name"), "apt", "package name");
	ok(!at(m, "packages.0.op") && !at(m, "packages.0.version"), "no constraint, no op/version");
	is_str(at(m, "packages.1.op"), ">=", "constraint op from a string");
	is_str(at(m, "packages.1.version"), "2.0", "constraint version from a string");
	is_str(at(m, "packages.2.op"), "=", "a bare version in a mapping means '='");
	is_str(at(m, "packages.3.op"), ">>", "op from a mapping");
	is_str(at(m, "fragments.0.path"), "/srv/m/frags/extra", "fragment path made absolute");
	is_str(at(m, "fragments.0.dev"), "false", "dev defaults to false");
	is_str(at(m, "fragments.1.digest"),
	       "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	       "a 64-hex string is a digest");
	is_str(at(m, "fragments.2.dev"), "true", "dev: yes");
	is_str(at(m, "fragments.2.name"), "devtools", "fragment name kept");
	is_str(at(m, "config.files.0.source"), "/srv/m/files/a", "file source made absolute");
	is_str(at(m, "config.files.0.mode"), "0644", "mode 644 is octal 0644");
	is_str(at(m, "run.0.command"), "echo one", "a run string is a command");
	is_str(at(m, "run.0.file"), NAME, "run step names its file");
	is_str(at(m, "run.0.line"), "20", "and its line");
	is_str(at(m, "run.1.name"), "two", "run step name");
	is_str(at(m, "run.1.line"), "21", "line of a mapping step");
	is_str(at(m, "export.0.output"), "/srv/m/out/disk.raw", "export output made absolute");
	is_str(at(m, "export.0.size"), "2G", "size kept as written");
	/* Positions are gone: json-c copies only plain json. */
	json_object *copy = NULL;
	ok(json_object_deep_copy(m, &copy, NULL) == 0, "the model deep-copies");
	json_object_put(copy);
	/* Keys come out in schema order whatever order the file used. */
	json_object_object_foreach(m, k, v)
	{
		(void)v;
		is_str(k, "name", "first key is name");
		break;
	}
	json_object_put(m);
	json_object_put(facts);

	facts = facts_of("{\"arch\": \"arm64\"}");
	m = load("name: t\narch: amd64\n", facts);
	is_str(at(m, "arch"), "amd64", "the manifest's arch beats the fact");
	json_object_put(m);
	json_object_put(facts);
	m = load("name: t\n", NULL);
	ok(m && !at(m, "arch"), "no arch without facts");
	json_object_put(m);
}

/* ---- layers, when, merging ---------------------------------------------------------------- */

static const char layered[] =
    "name: t\n"
    "repositories:\n"
    "  - {name: d, type: deb, host: true, suites: [bookworm], priority: 3}\n"
    "base: {set: required}\n"
    "packages: [a, 'b (>= 1)', c, {name: k-amd64, when: {arch: amd64}},\n"
    "           {name: k-arm64, when: {arch: arm64}}]\n"
    "exclude: [x, y]\n"
    "config: {hostname: h, services: {enable: [ssh]}}\n"
    "run: [one]\n"
    "layers:\n"
    "  - when: {role: server}\n"
    "    packages: ['b (= 2)', d]\n"
    "    exclude: [y, z]\n"
    "    repositories: [{name: d, uri: 'http://example.invalid/d', keyring: /k.gpg}]\n"
    "    config: {hostname: srv, services: {enable: [nginx]}}\n"
    "    run: [two]\n"
    "    base: {image: /root.tar}\n"
    "  - when: {hardware: ['wifi', 'wlan*']}\n"
    "    packages: [wpasupplicant]\n"
    "  - when: {role: [server, desktop], hardware: 'nv*'}\n"
    "    packages: [nvidia]\n"
    "  - when: {role: server, nosuchfact: x}\n"
    "    packages: [never]\n";

static void test_layers(void)
{
	json_object *facts = facts_of("{\"arch\": \"amd64\"}");
	json_object *m = load(layered, facts);
	json_object_put(facts);
	if (!ok(m != NULL, "layered manifest loads without matching layers"))
		return;
	is_int(len_at(m, "packages"), 4, "a, b, c and the amd64 kernel");
	is_str(at(m, "packages.3.name"), "k-amd64", "package when: arch matched");
	ok(!at(m, "packages.3.when"), "when: is gone from the model");
	ok(!at(m, "layers"), "layers: is gone from the model");
	is_str(at(m, "config.hostname"), "h", "no layer applied");
	json_object_put(m);

	facts = facts_of("{\"arch\": \"arm64\", \"role\": \"server\", "
	                 "\"hardware\": [\"gpu\", \"wlan0\", \"nvme\"]}");
	m = load(layered, facts);
	json_object_put(facts);
	if (!ok(m != NULL, "layered manifest loads with layers"))
		return;
	is_int(len_at(m, "packages"), 7, "a b c k-arm64 d wpasupplicant nvidia");
	is_str(at(m, "packages.1.name"), "b", "a later package replaces the earlier one in place");
	is_str(at(m, "packages.1.op"), "=", "with its constraint");
	is_str(at(m, "packages.1.version"), "2", "and version");
	is_str(at(m, "packages.3.name"), "k-arm64", "arm64 kernel");
	is_str(at(m, "packages.4.name"), "d", "new packages append");
	is_str(at(m, "packages.5.name"), "wpasupplicant", "a list fact matches any element");
	is_str(at(m, "packages.6.name"), "nvidia", "every fact of a when must match");
	is_int(len_at(m, "exclude"), 3, "exclude is deduplicated");
	is_str(at(m, "exclude.2"), "z", "in order");
	is_str(at(m, "config.hostname"), "srv", "scalars replace");
	is_str(at(m, "config.services.enable.1"), "nginx", "lists append");
	is_str(at(m, "run.1.command"), "two", "run steps append");
	is_int(len_at(m, "repositories"), 1, "repositories merge by name");
	is_str(at(m, "repositories.0.uri"), "http://example.invalid/d", "uri set by the layer");
	ok(!at(m, "repositories.0.host"), "a later uri replaces host");
	is_str(at(m, "repositories.0.priority"), "3", "keys the layer does not give stay");
	is_str(at(m, "repositories.0.suites.0"), "bookworm", "suites stay");
	is_str(at(m, "base.image"), "/root.tar", "base image replaces base set");
	ok(!at(m, "base.set"), "set is gone");
	json_object_put(m);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void error_is(const char *yaml, const char *want, const char *what)
{
	is_str(load_error(yaml), want, "%s", what);
}

static void test_errors(void)
{
	error_is("name: t\npakages: [a]\n",
	         NAME ":2:1: unknown key 'pakages' (did you mean 'packages'?)", "did you mean");
	error_is("name: t\nfrobnicate: 1\n", NAME ":2:1: unknown key 'frobnicate'", "no hint");
	error_is("name: t\npackages: {a: 1}\n",
	         NAME ":2:11: 'packages' must be a list, not a mapping", "wrong type");
	error_is("name: t\nrepositories:\n  - type: deb\n    host: true\n",
	         NAME ":3:5: repository is missing required key 'name'", "missing key");
	error_is("name: t\nrepositories:\n  - name: d\n    host: true\n",
	         NAME ":3:5: repository is missing required key 'type'",
	         "missing type after merging");
	error_is("packages: [a]\n", NAME ":1:1: manifest is missing required key 'name'",
	         "missing name");
	error_is("name: t\nrecommends: maybe\n",
	         NAME ":2:13: 'recommends' must be true or false (or yes/no), not 'maybe'", "bool");
	error_is("name: t\nexport: [{format: zip}]\n",
	         NAME
	         ":2:19: 'format' must be one of raw, iso, qcow2, vmdk, vhdx or tar, not 'zip'",
	         "enum");
	error_is("name: t\nconfig: {users: [{name: u, password: secret}]}\n",
	         NAME
	         ":2:38: 'password' looks like a plain-text password; give a crypt(3) hash such "
	         "as '$y$...' (make one with 'mkpasswd -m yescrypt'), or '!' to lock the account",
	         "plain-text password");
	error_is("name: t\npackages: [a\n",
	         NAME
	         ":3:1: did not find expected ',' or ']' (while parsing a flow sequence at 2:11)",
	         "YAML syntax");
	error_is("name: t\ninclude: other.yaml\n",
	         NAME ":2:1: 'include' needs a manifest read from a file, not from a buffer",
	         "include from a buffer");
	error_is(
	    "name: t\nrepositories:\n  - {name: d, type: deb, uri: u, host: true, suites: [s]}\n",
	    NAME ":3:34: 'uri' and 'host: true' cannot both be given in a repository; use one",
	    "uri and host");
	error_is("name: t\nrepositories:\n  - {name: r, type: rpm, baseurl: b, keyring: k, suites: "
	         "[s]}\n",
	         NAME ":3:50: 'suites' is not allowed in an rpm repository", "deb key on rpm");
	error_is("name: t\nname: u\n", NAME ":2:1: duplicate key 'name'", "duplicate key");
	error_is("name: t\nlayers: [{when: {a: b}, arch: x}]\n",
	         NAME ":2:25: 'arch' is not allowed in a layer", "layer denies arch");
	error_is("", NAME ":1:1: the manifest is empty (expected a mapping with 'name')", "empty");
	error_is("name: t\n---\nname: u\n",
	         NAME ":2:1: a manifest is one YAML document, this is a second one",
	         "two documents");
	error_is("name: x\nbad\xff: 1\n", NAME ":2:4: invalid leading UTF-8 octet (byte 0xff)",
	         "invalid UTF-8");
	error_is("a: &a [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nname: t\n",
	         NAME ":1:1: unknown key 'a'", "recursive aliases are harmless");

	char deep[1024] = "name: t\npackages: ";
	for (int i = 0; i < 200; i++)
		strcat(deep, i < 100 ? "[" : "]");
	error_is(deep, NAME ":2:110: lists and mappings nest deeper than 100 levels",
	         "deep nesting refused before loading");

	/* All errors are reported, in order, and past twelve they are counted. */
	const char *msg = load_error("name: t\npackages: ['-a', '-b']\nrecommends: x\n");
	is_str(
	    msg,
	    NAME
	    ":2:12: malformed package name '-a': a name must start with a letter or a digit\n" NAME
	    ":2:18: malformed package name '-b': a name must start with a letter or a digit\n" NAME
	    ":3:13: 'recommends' must be true or false (or yes/no), not 'x'",
	    "several errors, one per line");
	char many[2048] = "name: t\n";
	for (int i = 0; i < 20; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many), "q%02d: 1\n", i);
	msg = load_error(many);
	size_t lines = 1;
	for (const char *c = msg; *c; c++)
		lines += *c == '\n';
	is_int(lines, 13, "twelve errors and a count");
	ok(strstr(msg, "\n… and 8 more errors") != NULL, "'… and 8 more errors'");
	/* Long lines: as many as fit in the message. */
	char longer[4096] = "name: t\npackages:\n";
	for (int i = 0; i < 20; i++)
		strcat(longer, "  - '-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n");
	msg = load_error(longer);
	ok(strlen(msg) < 1023 && strstr(msg, " more errors") != NULL, "long errors are cut whole");
}

/* ---- includes ----------------------------------------------------------------------------- */

static void write_at(const char *name, const char *text)
{
	_cleanup_free_ char *p = path_join(tmpdir, name);
	_cleanup_free_ char *dir = xstrdup(p);
	*strrchr(dir, '/') = '\0';
	mkdir_p(dir, 0755);
	FILE *f = fopen(p, "w");
	fputs(text, f);
	fclose(f);
}

static void test_includes(void)
{
	write_at("defaults/base.yaml",
	         "repositories:\n"
	         "  - {name: d, type: deb, host: true, suites: [bookworm], components: [main]}\n"
	         "base: {set: required}\n"
	         "packages: [a, 'b (>= 1)']\n"
	         "run: [base-step]\n"
	         "arch: arm64\n"
	         "layers:\n"
	         "  - when: {arch: amd64}\n"
	         "    packages: [only-amd64]\n");
	write_at("m/top.yaml", "name: top\n"
	                       "include: ../defaults/base.yaml\n"
	                       "arch: amd64\n"
	                       "repositories: [{name: d, suites: [trixie], keyring: k.gpg}]\n"
	                       "packages: ['b (= 2)', c]\n"
	                       "run: [top-step]\n");
	_cleanup_free_ char *top = path_join(tmpdir, "m/top.yaml");
	struct mosaic_error err = {0};
	json_object *m = NULL;
	int r = manifest_load(top, NULL, &m, &err);
	if (!is_int(r, 0, "manifest with an include loads")) {
		diag("%s", err.msg);
		return;
	}
	_cleanup_free_ char *inc = path_join(tmpdir, "defaults/base.yaml");
	is_str(at(m, "include.0"), inc, "include lists the included file, absolute");
	is_str(at(m, "arch"), "amd64", "the including file's arch wins");
	is_str(at(m, "repositories.0.suites.0"), "trixie", "repository keys overridden by name");
	is_str(at(m, "repositories.0.host"), "true", "others kept");
	_cleanup_free_ char *keyring = path_join(tmpdir, "m/k.gpg");
	is_str(at(m, "repositories.0.keyring"), keyring, "keyring relative to the including file");
	is_int(len_at(m, "packages"), 4, "a, b, c and the layer's package");
	is_str(at(m, "packages.1.version"), "2", "the includer's b replaces the included one");
	is_str(at(m, "packages.2.name"), "only-amd64",
	       "layers of an included file see the final arch");
	is_str(at(m, "run.0.command"), "base-step", "included run steps first");
	is_str(at(m, "run.0.file"), inc, "with their own file");
	is_str(at(m, "run.1.command"), "top-step", "then the includer's");
	json_object_put(m);

	/* Cycles are errors at the include that closes them. */
	write_at("c/a.yaml", "name: a\ninclude: b.yaml\n");
	write_at("c/b.yaml", "include:\n  - a.yaml\n");
	_cleanup_free_ char *a = path_join(tmpdir, "c/a.yaml");
	_cleanup_free_ char *b = path_join(tmpdir, "c/b.yaml");
	_cleanup_free_ char *want = xasprintf("%s:2:5: include cycle: a.yaml → b.yaml → a.yaml", b);
	r = manifest_load(a, NULL, &m, &err);
	is_int(r, -EINVAL, "include cycle refused");
	is_str(err.msg, want, "cycle message");

	write_at("n/a.yaml", "name: a\ninclude: [nothere.yaml]\n");
	_cleanup_free_ char *na = path_join(tmpdir, "n/a.yaml");
	_cleanup_free_ char *want2 =
	    xasprintf("%s:2:11: cannot include 'nothere.yaml': No such file or directory", na);
	r = manifest_load(na, NULL, &m, &err);
	is_int(r, -EINVAL, "missing include is a validation error");
	is_str(err.msg, want2, "missing include message");

	_cleanup_free_ char *none = path_join(tmpdir, "none.yaml");
	r = manifest_load(none, NULL, &m, &err);
	is_int(r, -ENOENT, "a missing manifest is an I/O error");

	/* A file included twice (directly or through others) is merged once. */
	write_at("d/common.yaml", "packages: [x]\nrun: [common]\n");
	write_at("d/one.yaml", "include: common.yaml\npackages: [one]\n");
	write_at("d/top.yaml", "name: d\ninclude: [common.yaml, one.yaml]\n");
	_cleanup_free_ char *dt = path_join(tmpdir, "d/top.yaml");
	r = manifest_load(dt, NULL, &m, &err);
	if (is_int(r, 0, "diamond include loads")) {
		is_int(len_at(m, "run"), 1, "common merged once");
		is_int(len_at(m, "include"), 2, "two files included");
		json_object_put(m);
	}
}

int main(void)
{
	char tmpl[] = "/tmp/mosaic-test-manifests-XXXXXX";
	tmpdir = mkdtemp(tmpl);
	if (!tmpdir)
		return 1;
	test_packages();
	test_normalise();
	test_layers();
	test_errors();
	test_includes();
	rm_tree(tmpdir);
	return done();
}
