/* Unit tests for pipeline/: the order a lock's fragments mount in (and the stale locks it
 * refuses), facts from the command line, manifests by name, validation errors marked to be
 * shown as they are, and events reaching the caller. Files go to a temp directory removed at
 * the end. */
#include "compose/compose.h"
#include "pipeline/internal.h"
#include "tap.h"

#include <string.h>

static char *tmpdir;

struct seen {
	int warnings;
	char last[512];
};

static void record(const struct pipeline_event *e, void *data)
{
	struct seen *s = data;
	if (e->kind == PIPELINE_WARNING) {
		s->warnings++;
		snprintf(s->last, sizeof(s->last), "%s", e->text);
	}
}

static void digest_of(const char *what, char out[SHA256_HEX_LEN + 1])
{
	sha256_buffer(what, strlen(what), out);
}

static json_object *entry(const char *role, const char *source, const char *digest)
{
	json_object *e = json_object_new_object();
	json_object_object_add(e, "role", json_object_new_string(role));
	json_object_object_add(e, "source", json_object_new_string(source));
	json_object_object_add(e, "digest", json_object_new_string(digest));
	return e;
}

/* A lock of two packages with every kind of generated fragment, listed out of order. */
static void make_lock(struct lock *l, char d[8][SHA256_HEX_LEN + 1])
{
	static const char *const names[] = {"pkg-a", "pkg-b", "merged", "base",
	                                    "db",    "extra", "config", "rpmdb"};
	for (int i = 0; i < 8; i++)
		digest_of(names[i], d[i]);
	*l = (struct lock){.name = xstrdup("t"), .arch = xstrdup("amd64")};
	l->packages = xcalloc(2, sizeof(*l->packages));
	l->n_packages = 2;
	for (int i = 0; i < 2; i++) {
		l->packages[i].name = xstrdup(names[i]);
		memcpy(l->packages[i].fragment, d[i], SHA256_HEX_LEN + 1);
	}
	char key[SHA256_HEX_LEN + 1];
	const char *pk[] = {d[0], d[1]};
	compose_dpkg_key(pk, 2, "amd64", key);
	l->fragments = json_object_new_array();
	json_object_array_add(l->fragments, entry("extra", "./dir", d[5]));
	json_object_array_add(l->fragments, entry("database", key, d[4]));
	json_object_array_add(l->fragments, entry("base", "base.tar", d[3]));
	json_object_array_add(l->fragments, entry("merged-usr", "amd64", d[2]));
}

static void test_mount_order(void)
{
	struct lock l;
	char d[8][SHA256_HEX_LEN + 1];
	make_lock(&l, d);
	struct mosaic_error err = {0};
	struct seen seen = {0};
	struct pipeline_events ev = {record, &seen};
	char **v = NULL;
	size_t n = 0;
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, true, &v, &n, &ev, &err), 0,
	       "a complete lock has a mount order");
	is_int(n, 6, "every fragment once");
	/* merged /usr lowest, then the base, the packages, their database, the extras */
	static const int want[] = {2, 3, 0, 1, 4, 5};
	bool in_order = n == 6;
	for (size_t i = 0; in_order && i < n; i++)
		in_order = strcmp(v[i], d[want[i]]) == 0;
	ok(in_order, "merged-usr, base, packages in lock order, database, extras");

	/* The config fragment goes on top when it was made on exactly those fragments. */
	char base[SHA256_HEX_LEN + 1];
	pipeline_base_key(v, n, base);
	strv_free(v, n);
	json_object *config = entry("config", "key", d[6]);
	json_object_object_add(config, "base", json_object_new_string(base));
	json_object_array_add(l.fragments, config);
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, true, &v, &n, &ev, &err), 0,
	       "with a config fragment");
	ok(n == 7 && strcmp(v[6], d[6]) == 0, "the config fragment is on top");
	strv_free(v, n);
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, false, &v, &n, &ev, &err), 0,
	       "without it, for the configure step");
	is_int(n, 6, "the config fragment left out");
	strv_free(v, n);
	is_int(seen.warnings, 0, "no warning so far");

	/* Made on other fragments: mounted unconfigured, with a warning saying why. */
	json_object_object_add(config, "base", json_object_new_string(d[7]));
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, true, &v, &n, &ev, &err), 0,
	       "a config fragment for other fragments still mounts");
	is_int(n, 6, "unconfigured");
	strv_free(v, n);
	ok(seen.warnings == 1 && strstr(seen.last, "configuration was made for other fragments"),
	   "and says so: %s", seen.last);

	/* A database made for other packages is refused, as is a package without fragment. */
	json_object *db = json_object_array_get_idx(l.fragments, 1);
	json_object_object_add(db, "source", json_object_new_string(d[7]));
	v = NULL;
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, true, &v, &n, &ev, &err),
	       -ESTALE, "a database of other packages is stale");
	ok(strstr(err.msg, "dpkg database is not the one of its packages") &&
	       strstr(err.msg, "mosaic build t.yaml"),
	   "the error names the fix: %s", err.msg);
	ok(v == NULL, "nothing is returned");
	l.packages[1].fragment[0] = 0;
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", false, true, &v, &n, &ev, &err),
	       -ESTALE, "a package without a fragment");
	ok(strstr(err.msg, "has no fragment for pkg-b"), "names the package: %s", err.msg);
	json_object_array_del_idx(l.fragments, 3, 1);
	is_int(pipeline_lock_mount_order(&l, "t.lock", "t.yaml", true, true, &v, &n, &ev, &err),
	       -ESTALE, "merged /usr asked for but not built");
	ok(strstr(err.msg, "without merged /usr"), "says so: %s", err.msg);
	lock_clear(&l);
}

static void test_facts_and_names(void)
{
	json_object *f = json_object_new_object();
	is_int(pipeline_fact_add(f, "role=web"), 0, "KEY=VALUE");
	is_int(pipeline_fact_add(f, "role=db"), 0, "the same key again");
	is_str(json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN),
	       "{\"role\":[\"web\",\"db\"]}", "a key given twice becomes a list");
	is_int(pipeline_fact_add(f, "=x"), -EINVAL, "no key");
	is_int(pipeline_fact_add(f, "novalue"), -EINVAL, "no '='");
	json_object_put(f);
	ok(pipeline_is_manifest("a/b.yaml") && pipeline_is_manifest("b.yml"), "yaml and yml");
	ok(!pipeline_is_manifest(".yaml") && !pipeline_is_manifest("b.sqfs") &&
	       !pipeline_is_manifest("yaml"),
	   "not a bare suffix, an image or a word");
	json_object *model = json_object_new_object();
	json_object_object_add(model, "name", json_object_new_string("web"));
	_cleanup_free_ char *a = pipeline_lock_path("dir/m.yaml", model, NULL);
	_cleanup_free_ char *b = pipeline_lock_path("m.yaml", model, NULL);
	is_str(a, "dir/web.lock", "the lock is NAME.lock beside the manifest");
	is_str(b, "web.lock", "in the current directory too");
	json_object *empty = json_object_new_object();
	_cleanup_free_ char *c = pipeline_lock_path("dir/m.yaml", model, empty);
	is_str(c, "dir/web.lock", "no facts given: NAME.lock still");
	json_object *role = json_object_new_object();
	pipeline_fact_add(role, "role=db");
	_cleanup_free_ char *d = pipeline_lock_path("dir/m.yaml", model, role);
	is_str(d, "dir/web@role=db.lock", "with facts, a lock of the history's own");
	json_object_put(empty);
	json_object_put(role);
	json_object_put(model);
}

static char *history(const char *name, const char *const *facts)
{
	json_object *model = json_object_new_object();
	if (name)
		json_object_object_add(model, "name", json_object_new_string(name));
	json_object *f = facts ? json_object_new_object() : NULL;
	for (size_t i = 0; facts && facts[i]; i++)
		pipeline_fact_add(f, facts[i]);
	char *h = pipeline_history_name("dir/file.yaml", model, f);
	json_object_put(f);
	json_object_put(model);
	return h;
}

static void test_history_names(void)
{
	_cleanup_free_ char *plain = history("web", NULL);
	_cleanup_free_ char *unnamed = history(NULL, NULL);
	_cleanup_free_ char *role = history("t", (const char *const[]){"role=web", NULL});
	_cleanup_free_ char *two =
	    history("t", (const char *const[]){"role=web", "gpu=nvidia", NULL});
	_cleanup_free_ char *swapped =
	    history("t", (const char *const[]){"gpu=nvidia", "role=web", NULL});
	_cleanup_free_ char *list =
	    history("t", (const char *const[]){"hw=wlan0", "hw=gpu", "role=x", NULL});
	_cleanup_free_ char *list2 =
	    history("t", (const char *const[]){"hw=gpu", "role=x", "hw=wlan0", NULL});
	_cleanup_free_ char *slash = history("t", (const char *const[]){"role=a/b", NULL});
	_cleanup_free_ char *under = history("t", (const char *const[]){"role=a_b", NULL});
	_cleanup_free_ char *empty = history("t", (const char *const[]){"role=", NULL});
	is_str(plain, "web", "no facts: the manifest's name");
	is_str(unnamed, "file", "no name: the file's");
	is_str(role, "t@role=web", "a role");
	is_str(two, "t@gpu=nvidia,role=web", "facts sorted by key");
	is_str(swapped, two, "whatever order they were given in");
	is_str(list, "t@hw=gpu+wlan0,role=x", "a key given twice: its values sorted, joined by +");
	is_str(list2, list, "the same set in another order");
	is_str(under, "t@role=a_b", "'_' is kept");
	is_str(empty, "t@role=", "an empty value");
	ok(strncmp(slash, "t@", 2) == 0 && strlen(slash) == 18 && !strchr(slash, '='),
	   "'/' in a fact: a hash instead (%s)", slash);
	_cleanup_free_ char *slash2 = history("t", (const char *const[]){"role=a/c", NULL});
	ok(strcmp(slash, slash2) != 0, "other facts, another hash");
	char big[200];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	_cleanup_free_ char *kv = xasprintf("role=%s", big);
	_cleanup_free_ char *lng = history("t", (const char *const[]){kv, NULL});
	is_int(strlen(lng), 18, "too long: a hash");
	const char *names[] = {plain, role, two, list, slash, empty, lng};
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		ok(pipeline_history_valid(names[i]), "%s is a valid history name", names[i]);
	ok(!pipeline_history_valid("") && !pipeline_history_valid("../x") &&
	       !pipeline_history_valid(".hidden") && !pipeline_history_valid("a/b") &&
	       !pipeline_history_valid("a b"),
	   "no path, hidden file, space or empty name is one");
}

/* A record as the build writes it, with one key's text replaced by another (or the whole). */
static char *record_text(const char *from, const char *to)
{
	char d[3][SHA256_HEX_LEN + 1];
	digest_of("a", d[0]);
	digest_of("b", d[1]);
	digest_of("i", d[2]);
	char *digests[] = {d[0], d[1], NULL};
	char *names[] = {"libfoo", "dpkg-database", NULL}, *kinds[] = {"package", "config", NULL};
	char *versions[] = {"1.0", NULL}, *archs[] = {"amd64", "amd64"},
	     *sources[] = {"deb", "dir"};
	json_object *facts = json_object_new_object();
	pipeline_fact_add(facts, "role=web");
	const struct pipeline_generation g = {
	    .number = 3,
	    .time = 1700000000,
	    .history = "t@role=web",
	    .manifest = "/m/t.yaml",
	    .manifest_digest = d[0],
	    .lock_digest = d[1],
	    .index_digest = d[2],
	    .index_path = "/c/index/x.idx",
	    .facts = facts,
	    .digests = digests,
	    .names = names,
	    .kinds = kinds,
	    .versions = versions,
	    .archs = archs,
	    .sources = sources,
	    .n_fragments = 2,
	};
	char *text = pipeline_generation_format(&g);
	json_object_put(facts);
	if (!from)
		return text;
	char *at = strstr(text, from);
	if (!at)
		return text;
	char *out = xasprintf("%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
	free(text);
	return out;
}

static int parse_text(const char *text, struct mosaic_error *err)
{
	struct pipeline_generation g;
	int r = pipeline_generation_parse(text, strlen(text), &g, err);
	pipeline_generation_clear(&g);
	return r;
}

static void test_generation_record(void)
{
	_cleanup_free_ char *text = record_text(NULL, NULL);
	struct pipeline_generation g;
	struct mosaic_error err = {0};
	is_int(pipeline_generation_parse(text, strlen(text), &g, &err), 0, "a record: %s", err.msg);
	is_int(g.number, 3, "its number");
	ok(g.time == 1700000000, "its time");
	is_str(g.history, "t@role=web", "its history");
	is_int(g.n_fragments, 2, "two fragments");
	is_str(g.names[1], "dpkg-database", "lowest first");
	ok(g.versions[1] == NULL && g.versions[0] && strcmp(g.versions[0], "1.0") == 0,
	   "a version, and null for none");
	is_str(g.kinds[0], "package", "kinds");
	is_str(g.sources[1], "dir", "sources");
	ok(g.images == NULL && g.path == NULL, "the parser fills no paths");
	_cleanup_free_ char *again = pipeline_generation_format(&g);
	is_str(again, text, "written again, the same bytes");
	is_str(json_object_to_json_string_ext(g.facts, JSON_C_TO_STRING_PLAIN),
	       "{\"role\":\"web\"}", "its facts");
	pipeline_generation_clear(&g);

	static const struct {
		const char *from, *to, *what;
		int code;
	} bad[] = {
	    {"\"version\": 1", "\"version\": 2", "another version", -EBADMSG},
	    {"\"version\": 1", "\"version\": \"1\"", "a version that is not a number", -EBADMSG},
	    {"\"number\": 3", "\"number\": 0", "number 0", -EBADMSG},
	    {"\"number\": 3,", "", "no number", -EBADMSG},
	    {"\"time\": 1700000000", "\"time\": 1.5", "a time that is not an integer", -EBADMSG},
	    {"\"t@role=web\"", "\"..\\/x\"", "a history that is a path", -EBADMSG},
	    {"\"libfoo\"", "\"lib\\u0000foo\"", "a NUL in a name", -EBADMSG},
	    {"\"libfoo\"", "\"lib\\u001b[2Jfoo\"", "a control character in a name", -EBADMSG},
	    {"\"libfoo\"", "\"\"", "an empty name", -EBADMSG},
	    {"\"package\"", "\"blob\"", "an unknown kind", -EBADMSG},
	    {"\"1.0\"", "1.0", "a version that is not a string", -EBADMSG},
	    {"\"role\": \"web\"", "\"role\": 5", "a fact that is not a string", -EBADMSG},
	    {"\"fragments\": [", "\"fragments\": [ 7, ", "a fragment that is not an object",
	     -EBADMSG},
	    {"\"/c/index/x.idx\"", "null", "no index", -EBADMSG},
	    {"\"index_digest\": \"", "\"index_digest\": \"/", "an index digest not hex", -EBADMSG},
	    {"\n}\n", "\n}\n{}", "bytes after the object", -EBADMSG},
	    {"\n}\n", "\n", "a truncated record", -EBADMSG},
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *t = record_text(bad[i].from, bad[i].to);
		ok(strcmp(t, text) != 0, "(%s: the text was changed)", bad[i].what);
		err = (struct mosaic_error){0};
		is_int(parse_text(t, &err), bad[i].code, "refused: %s (%s)", bad[i].what, err.msg);
	}
	/* The first fragment's digest as a path: what a shared store's record might try. */
	char d0[SHA256_HEX_LEN + 1];
	digest_of("a", d0);
	_cleanup_free_ char *quoted = xasprintf("\"digest\": \"%s\"", d0);
	_cleanup_free_ char *path = record_text(quoted, "\"digest\": \"../../etc/passwd\"");
	is_int(parse_text(path, &err), -EBADMSG, "a fragment digest that is a path");
	ok(strstr(err.msg, "fragment 1") != NULL, "the message names the fragment: %s", err.msg);
	is_int(parse_text("", &err), -EBADMSG, "empty");
	is_int(parse_text("[]", &err), -EBADMSG, "not an object");
	is_int(pipeline_generation_parse("{}", 2, &g, &err), -EBADMSG, "an empty object");
	/* Not NUL-terminated: the parser reads len bytes and no more. */
	_cleanup_free_ char *cut = xstrndup(text, strlen(text));
	cut[strlen(cut) - 1] = 'x';
	is_int(pipeline_generation_parse(cut, strlen(cut) - 1, &g, &err), 0,
	       "the newline is not needed");
	pipeline_generation_clear(&g);
	size_t big = (16u << 20) + 1;
	_cleanup_free_ char *huge = xmalloc(big);
	memset(huge, ' ', big);
	is_int(pipeline_generation_parse(huge, big, &g, &err), -EFBIG, "more than 16 MiB");
}

static void test_manifest_errors(void)
{
	_cleanup_free_ char *path = path_join(tmpdir, "bad.yaml");
	const char *yaml = "name: bad\npakages: [a]\n";
	write_file_atomic(path, yaml, strlen(yaml), 0644);
	struct mosaic_error err = {0};
	json_object *model = NULL;
	is_int(pipeline_manifest_load(path, NULL, &model, &err), -EINVAL, "an invalid manifest");
	ok(err.located, "its errors are FILE:LINE:COL lines, shown as they are");
	ok(strstr(err.msg, "bad.yaml:2:") != NULL, "naming the line: %s", err.msg);
	mosaic_error_prefix(&err, "context");
	ok(!err.located, "a prefixed message is not a bare list any more");
	_cleanup_free_ char *missing = path_join(tmpdir, "missing.yaml");
	is_int(pipeline_manifest_load(missing, NULL, &model, &err), -ENOENT, "a missing manifest");
	ok(!err.located, "is an ordinary error");
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-pipeline-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	test_mount_order();
	test_facts_and_names();
	test_history_names();
	test_generation_record();
	test_manifest_errors();
	rm_tree(tmpdir);
	free(tmpdir);
	return done();
}
