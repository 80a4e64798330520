/* configure/'s public surface where it needs no namespace: configure_key's hashed text (keys
 * made before must still match), and configure_root's answers for roots it has nothing to run in.
 */
#include "configure/configure.h"
#include "tap.h"

#include <sys/stat.h>

static json_object *manifest(int line)
{
	_cleanup_free_ char *text =
	    xasprintf("{\"config\": {\"hostname\": \"h\"},"
	              " \"run\": [{\"command\": \"true\", \"file\": \"m.yaml\", \"line\": %d}]}",
	              line);
	return json_tokener_parse(text);
}

static void test_key(void)
{
	char *digests[] = {"d1", "d2"};
	char key[SHA256_HEX_LEN + 1], again[SHA256_HEX_LEN + 1], none[SHA256_HEX_LEN + 1];
	json_object *m = manifest(3), *moved = manifest(9);
	ok(configure_key(m, digests, 2, 1700000000, key, NULL) == 0, "a key is made");

	/* The text build_config_key hashed when it read $SOURCE_DATE_EPOCH itself. */
	static const char text[] = "mosaic configure v2\n"
	                           "epoch 1700000000\n"
	                           "d1\nd2\n"
	                           "config\0{\"hostname\":\"h\"}\0"
	                           "run\0[{\"command\":\"true\"}]";
	char want[SHA256_HEX_LEN + 1];
	sha256_buffer(text, sizeof(text), want);
	is_str(key, want, "the hashed text is what it was: keys made before still match");

	ok(configure_key(moved, digests, 2, 1700000000, again, NULL) == 0 &&
	       strcmp(key, again) == 0,
	   "a run: step on another line keeps the key");
	ok(configure_key(m, digests, 2, -1, none, NULL) == 0 && strcmp(key, none) != 0,
	   "without a date the key is another");
	ok(configure_key(m, digests, 1, 1700000000, again, NULL) == 0 && strcmp(key, again) != 0,
	   "other fragments below give another key");

	json_object *src = json_tokener_parse(
	    "{\"config\": {\"files\": [{\"path\": \"/x\", \"source\": \"/nonexistent/x\"}]}}");
	struct mosaic_error err = {0};
	ok(configure_key(src, digests, 2, -1, again, &err) == -ENOENT &&
	       strstr(err.msg, "/nonexistent/x"),
	   "a config: source that cannot be read is an error naming it");
	json_object_put(src);
	json_object_put(m);
	json_object_put(moved);
}

struct events {
	int n;
	enum configure_event_kind kind;
	char text[512];
};

static void record(const struct configure_event *ev, void *data)
{
	struct events *e = data;
	e->n++;
	e->kind = ev->kind;
	snprintf(e->text, sizeof(e->text), "%s", ev->text ? ev->text : "");
}

static int count_entries(const char *dir)
{
	_cleanup_free_ char *cmd = xasprintf("find '%s' | wc -l", dir);
	FILE *f = popen(cmd, "r");
	int n = -1;
	if (f && fscanf(f, "%d", &n) != 1)
		n = -1;
	if (f)
		pclose(f);
	return n;
}

static void test_root(void)
{
	char dir[] = "/tmp/test-configure-XXXXXX";
	if (!mkdtemp(dir)) {
		ok(false, "mkdtemp: %s", strerror(errno));
		return;
	}
	struct events ev = {0};
	struct configure_options o = {.source_date_epoch = -1, .event = record, .data = &ev};
	struct mosaic_error err = {0};
	ok(configure_root(dir, NULL, &o, &err) == -EINVAL &&
	       strstr(err.msg, "has neither a dpkg database (var/lib/dpkg/status) nor an rpm "
	                       "database made by mosaic"),
	   "a root without a package database is -EINVAL, said as before");
	is_int(ev.n, 0, "and nothing was said on the way");

	_cleanup_free_ char *db = path_join(dir, "var/lib/dpkg");
	_cleanup_free_ char *status = path_join(db, "status");
	static const char installed[] = "Package: a\nStatus: install ok installed\n"
	                                "Architecture: all\nVersion: 1\n\n";
	ok(mkdir_p(db, 0755) == 0 &&
	       write_file_atomic(status, installed, strlen(installed), 0644) == 0,
	   "a dpkg database with every package configured");
	int before = count_entries(dir);
	ok(configure_root(dir, NULL, &o, &err) == 0, "configuring it succeeds");
	ok(ev.n == 1 && ev.kind == CONFIGURE_INFO &&
	       strcmp(ev.text, "all 1 packages are configured; nothing to do") == 0,
	   "with one line for the user: '%s'", ev.text);
	is_int(count_entries(dir), before, "and no session ran: nothing was made in the root");
	ok(configure_root(dir, NULL, NULL, &err) == 0, "options may be NULL");

	_cleanup_free_ char *rm = xasprintf("rm -rf '%s'", dir);
	if (system(rm) != 0)
		diag("could not remove %s", dir);
}

int main(void)
{
	test_key();
	test_root();
	return done();
}
