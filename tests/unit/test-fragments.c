/* Unit tests for fragments/: the deb822 and descriptor parsers, the image writer and reader
 * (every file type, xattrs, hard links, refusals, corrupt images, reproducibility), and many
 * fragments made on threads (directories, tar, .deb, signed .rpm, signing). No root. */
#include "fragments/internal.h"
#include "tap.h"

#include <fcntl.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include <squashfuse/squashfuse.h>

static char *tmpdir; /* made fresh by main, removed at the end */

static bool contains(const char *haystack, const char *needle)
{
	return haystack && strstr(haystack, needle);
}

/* ---- deb822 ------------------------------------------------------------------------------- */

static const char control[] =
    "Package: hello\n"
    "Version: 2.10-3\n"
    "Architecture: amd64\n"
    "Maintainer: Santiago Vila <sanvila@debian.org>\n"
    "Installed-Size: 280\n"
    "Depends: libc6 (>= 2.34)\n"
    "Section: devel\n"
    "Priority: optional\n"
    "Homepage: https://www.gnu.org/software/hello/\n"
    "Description: example package based on GNU hello\n"
    " The GNU hello program produces a familiar, friendly greeting.  It\n"
    " allows non-programmers to use a classic computer science tool which\n"
    " would otherwise be unavailable to them.\n"
    " .\n"
    " Seriously, though: this is an example of how to do a Debian package.\n"
    "\n"
    "Package: second-paragraph\n"
    "Tag: not-read\n";

static const char description[] =
    "example package based on GNU hello\n"
    "The GNU hello program produces a familiar, friendly greeting.  It\n"
    "allows non-programmers to use a classic computer science tool which\n"
    "would otherwise be unavailable to them.\n"
    ".\n"
    "Seriously, though: this is an example of how to do a Debian package.";

static void deb822_rejects(const char *text, const char *what, const char *msg_part)
{
	struct deb822 p = {0};
	struct mosaic_error err = {0};
	int r = deb822_parse(text, strlen(text), &p, &err);
	is_int(r, -EINVAL, "deb822: %s is rejected", what);
	ok(contains(err.msg, msg_part), "deb822: %s: message '%s' mentions '%s'", what, err.msg,
	   msg_part);
	ok(p.n == 0 && p.fields == NULL, "deb822: %s: output untouched", what);
	deb822_clear(&p);
}

static void relations_are(const char *value, const char *const *want, size_t n)
{
	json_object *a = deb822_relations(value);
	bool same = json_object_is_type(a, json_type_array) && json_object_array_length(a) == n;
	for (size_t i = 0; same && i < n; i++)
		same =
		    strcmp(json_object_get_string(json_object_array_get_idx(a, i)), want[i]) == 0;
	ok(same, "deb822_relations('%s') = %s", value,
	   json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN));
	json_object_put(a);
}

static void test_deb822(void)
{
	struct deb822 p = {0};
	struct mosaic_error err = {0};

	is_int(deb822_parse(control, strlen(control), &p, &err), 0, "deb822: control paragraph");
	is_int(p.n, 10, "deb822: ten fields in the first paragraph");
	is_str(deb822_get(&p, "Package"), "hello", "deb822: Package");
	is_str(deb822_get(&p, "package"), "hello", "deb822: lookup is case-insensitive");
	is_str(deb822_get(&p, "INSTALLED-SIZE"), "280", "deb822: upper-case lookup");
	is_str(deb822_get(&p, "Depends"), "libc6 (>= 2.34)", "deb822: Depends");
	is_str(deb822_get(&p, "Description"), description,
	       "deb822: Description joins continuation lines with newlines");
	is_str(deb822_get(&p, "Tag"), NULL, "deb822: parsing stopped at the first blank line");
	is_str(deb822_get(&p, "Missing"), NULL, "deb822: absent field is NULL");
	deb822_clear(&p);
	ok(p.n == 0 && p.fields == NULL, "deb822_clear empties the paragraph");

	/* Leading blank lines, comments, CRLF, an empty value, no final newline. */
	const char *odd = "\n  \n# comment\nPackage:  x \r\nDepends:\r\n# inner comment\nArch: all";
	is_int(deb822_parse(odd, strlen(odd), &p, &err), 0, "deb822: blank lines and comments");
	is_int(p.n, 3, "deb822: three fields");
	is_str(deb822_get(&p, "Package"), "x", "deb822: value trimmed (spaces and CR)");
	is_str(deb822_get(&p, "Depends"), "", "deb822: empty value");
	is_str(deb822_get(&p, "Arch"), "all", "deb822: last line without newline");
	deb822_clear(&p);

	/* Only len bytes are read: the text need not be NUL-terminated. */
	const char cut[] = "Package: abcdef";
	is_int(deb822_parse(cut, 12, &p, &err), 0, "deb822: length-limited input");
	is_str(deb822_get(&p, "Package"), "abc", "deb822: value cut at len");
	deb822_clear(&p);

	deb822_rejects("Package: a\nVersion: 1\nPackage: b\n", "a duplicate field", "line 3");
	deb822_rejects("Package: a\npackage: b\n", "a duplicate field in other case", "duplicate");
	deb822_rejects(" continued\nPackage: a\n", "a continuation before any field", "line 1");
	deb822_rejects("# c\n\tcontinued\n", "a continuation after a comment only", "line 2");
	deb822_rejects("Package: a\nVersion 1.0\n", "a line without a colon", "line 2");
	deb822_rejects("Package: a\n: value\n", "an empty field name", "line 2");
	deb822_rejects("Package: a\nBad Name: v\n", "a space in a field name", "line 2");
	deb822_rejects("", "empty input", "empty");
	deb822_rejects("\n \n\t\n", "blank input", "empty");
	deb822_rejects("# only a comment\n", "comments only", "empty");

	const char nul[] = "Package: a\nVer\0sion: 1\n";
	is_int(deb822_parse(nul, sizeof(nul) - 1, &p, &err), -EINVAL, "deb822: NUL byte rejected");
	ok(contains(err.msg, "line 2"), "deb822: NUL byte message names line 2 ('%s')", err.msg);

	static const char *const r1[] = {"a (>= 1)", "b | c", "d"};
	relations_are("a (>= 1), b | c,  d", r1, 3);
	static const char *const r2[] = {"libc6 (>= 2.34)", "libfoo1 | libfoo2 (<< 3~)"};
	relations_are("libc6 (>= 2.34),\nlibfoo1 | libfoo2\n(<< 3~)", r2, 2);
	relations_are("", NULL, 0);
	relations_are(" , ,", NULL, 0);
	static const char *const r3[] = {"x"};
	relations_are("x,", r3, 1);
}

/* ---- descriptor --------------------------------------------------------------------------- */

#define DIGEST "3f2a9c0e5b7d41e8a6c2f0d9b8e7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9"

static const char valid_descriptor[] =
    "{\n"
    "  \"mosaic_fragment\": 1,\n"
    "  \"name\": \"hello\",\n"
    "  \"version\": \"2.10-3\",\n"
    "  \"arch\": \"amd64\",\n"
    "  \"kind\": \"package\",\n"
    "  \"provides\": [ \"hello\", \"hello-world\" ],\n"
    "  \"requires\": [ \"libc6 (>= 2.34)\" ],\n"
    "  \"source\": { \"type\": \"deb\", \"file\": \"hello_2.10-3_amd64.deb\", \"size\": 53132 },\n"
    "  \"files\": 42,\n"
    "  \"content_size\": 280000,\n"
    "  \"image\": { \"digest\": \"sha256:" DIGEST "\", \"size\": 65536,\n"
    "             \"compression\": \"zstd\", \"block_size\": 131072 },\n"
    "  \"created\": 1700000000\n"
    "}\n";

/* The valid descriptor with one change: key set to value (JSON text), or removed if NULL. */
static char *descriptor_with(const char *key, const char *value)
{
	json_object *d = json_tokener_parse(valid_descriptor);
	json_object *target = d;
	const char *k = key;
	if (strncmp(key, "image.", 6) == 0) {
		json_object_object_get_ex(d, "image", &target);
		k = key + 6;
	}
	if (value)
		json_object_object_add(target, k, json_tokener_parse(value));
	else
		json_object_object_del(target, k);
	char *s = xstrdup(json_object_to_json_string(d));
	json_object_put(d);
	return s;
}

static void descriptor_rejects(const char *text, int code, const char *what, const char *msg_part)
{
	struct fragment_descriptor d = {0};
	struct mosaic_error err = {0};
	int r = fragment_descriptor_parse(text, strlen(text), &d, &err);
	is_int(r, code, "descriptor: %s is rejected", what);
	if (msg_part)
		ok(contains(err.msg, msg_part), "descriptor: %s: message '%s' mentions '%s'", what,
		   err.msg, msg_part);
	ok(d.json == NULL, "descriptor: %s: nothing returned", what);
	if (r == 0)
		fragment_descriptor_clear(&d);
}

static void descriptor_change_rejects(const char *key, const char *value, int code,
                                      const char *what, const char *msg_part)
{
	_cleanup_free_ char *s = descriptor_with(key, value);
	descriptor_rejects(s, code, what, msg_part);
}

static void test_descriptor(void)
{
	struct fragment_descriptor d = {0};
	struct mosaic_error err = {0};

	is_int(fragment_descriptor_parse(valid_descriptor, strlen(valid_descriptor), &d, &err), 0,
	       "descriptor: valid one accepted");
	is_str(d.name, "hello", "descriptor: name");
	is_str(d.version, "2.10-3", "descriptor: version");
	is_str(d.arch, "amd64", "descriptor: arch");
	is_int(d.kind, FRAGMENT_PACKAGE, "descriptor: kind");
	is_str(d.digest, DIGEST, "descriptor: digest without the algorithm prefix");
	is_int(d.image_size, 65536, "descriptor: image size");
	is_int(d.files, 42, "descriptor: files");
	is_int(d.created, 1700000000, "descriptor: created");
	ok(d.json != NULL, "descriptor: json kept");
	fragment_descriptor_clear(&d);
	ok(d.json == NULL && d.name == NULL, "fragment_descriptor_clear resets");

	/* Optional fields may be absent or null. */
	_cleanup_free_ char *no_version = descriptor_with("version", NULL);
	is_int(fragment_descriptor_parse(no_version, strlen(no_version), &d, &err), 0,
	       "descriptor: without version accepted");
	is_str(d.version, NULL, "descriptor: absent version is NULL");
	fragment_descriptor_clear(&d);
	_cleanup_free_ char *null_arch = descriptor_with("arch", "null");
	is_int(fragment_descriptor_parse(null_arch, strlen(null_arch), &d, &err), 0,
	       "descriptor: null arch accepted");
	is_str(d.arch, NULL, "descriptor: null arch is NULL");
	fragment_descriptor_clear(&d);

	descriptor_change_rejects("mosaic_fragment", "2", -EPROTONOSUPPORT, "format version 2",
	                          "version 2");
	descriptor_change_rejects("mosaic_fragment", "0", -EPROTONOSUPPORT, "format version 0",
	                          NULL);
	descriptor_change_rejects("mosaic_fragment", NULL, -EBADMSG, "a missing format version",
	                          "mosaic_fragment");
	descriptor_change_rejects("mosaic_fragment", "\"1\"", -EBADMSG, "a string format version",
	                          "mosaic_fragment");
	descriptor_change_rejects("name", NULL, -EBADMSG, "a missing name", "name");
	descriptor_change_rejects("name", "\"\"", -EBADMSG, "an empty name", "name");
	descriptor_change_rejects("name", "\"a/b\"", -EBADMSG, "a name with a slash", "a/b");
	descriptor_change_rejects("name", "7", -EBADMSG, "a numeric name", "name");
	descriptor_change_rejects("kind", "\"plugin\"", -EBADMSG, "an unknown kind", "plugin");
	descriptor_change_rejects("kind", NULL, -EBADMSG, "a missing kind", "kind");
	descriptor_change_rejects("image.digest", "\"md5:" DIGEST "\"", -EBADMSG,
	                          "a digest with another algorithm", "sha256:");
	descriptor_change_rejects("image.digest", "\"sha256:abc\"", -EBADMSG, "a short digest",
	                          "sha256:");
	descriptor_change_rejects("image.digest", "\"sha256:" DIGEST "00\"", -EBADMSG,
	                          "a long digest", "sha256:");
	descriptor_change_rejects("image.digest", "\"" DIGEST "\"", -EBADMSG,
	                          "a digest without prefix", "sha256:");
	descriptor_change_rejects(
	    "image.digest",
	    "\"sha256:3F2A9C0E5B7D41E8A6C2F0D9B8E7A6C5D4E3F2A1B0C9D8E7F6A5B4C3D2E1F0A9\"", -EBADMSG,
	    "an upper-case digest", "sha256:");
	descriptor_change_rejects("image.digest", NULL, -EBADMSG, "a missing digest", "digest");
	descriptor_change_rejects("image.size", "-1", -EBADMSG, "a negative image size", "size");
	descriptor_change_rejects("image.size", "\"65536\"", -EBADMSG, "a string image size",
	                          "size");
	descriptor_change_rejects("image.size", "1.5", -EBADMSG, "a fractional image size", "size");
	descriptor_change_rejects("files", "-3", -EBADMSG, "a negative file count", "files");
	descriptor_change_rejects("image", "[]", -EBADMSG, "an image that is not an object",
	                          "image");
	descriptor_change_rejects("created", NULL, -EBADMSG, "a missing creation time", "created");
	descriptor_change_rejects("provides", "[ \"a\", 1 ]", -EBADMSG, "a number in provides",
	                          "provides");
	descriptor_change_rejects("provides", "[ null ]", -EBADMSG, "null in provides", "provides");
	descriptor_change_rejects("requires", "\"libc6\"", -EBADMSG, "requires as a string",
	                          "requires");

	_cleanup_free_ char *trailing = xasprintf("%s x", valid_descriptor);
	descriptor_rejects(trailing, -EBADMSG, "trailing garbage", "trailing");
	_cleanup_free_ char *twice = xasprintf("%s%s", valid_descriptor, valid_descriptor);
	descriptor_rejects(twice, -EBADMSG, "two objects", "trailing");
	descriptor_rejects("[ 1, 2 ]", -EBADMSG, "an array", "object");
	descriptor_rejects("\"hello\"", -EBADMSG, "a string", "object");
	descriptor_rejects("", -EBADMSG, "empty input", NULL);
	descriptor_rejects("{ \"mosaic_fragment\": 1, ", -EBADMSG, "truncated JSON", "JSON");
	descriptor_rejects("{ \"mosaic_fragment\": 1 /", -EBADMSG, "broken JSON", "JSON");

	/* An embedded NUL ends nothing early: the bytes after it are still data. */
	size_t vlen = strlen(valid_descriptor);
	_cleanup_free_ char *nul = xmalloc(vlen + 3);
	memcpy(nul, valid_descriptor, vlen);
	memcpy(nul + vlen, "\0x", 2);
	is_int(fragment_descriptor_parse(nul, vlen + 2, &d, &err), -EBADMSG,
	       "descriptor: NUL and bytes after the object rejected");
	if (d.json)
		fragment_descriptor_clear(&d);

	/* What descriptor_build writes, fragment_descriptor_parse reads. */
	struct src_meta m = {.type = "dir", .name = "base", .version = "1.0"};
	struct fragment_create_options o = {.kind = FRAGMENT_BASE, .arch = "arm64"};
	_cleanup_free_ char *built = descriptor_build(&m, &o, FRAGMENT_CONFIG, DIGEST, 4096, 7,
	                                              1234, NULL, 1234, "rootfs", 1600000000);
	is_int(fragment_descriptor_parse(built, strlen(built), &d, &err), 0,
	       "descriptor_build output parses (%s)", err.msg);
	is_str(d.name, "base", "built: name from the source");
	is_str(d.version, "1.0", "built: version from the source");
	is_str(d.arch, "arm64", "built: arch from the options");
	is_int(d.kind, FRAGMENT_CONFIG, "built: kind");
	is_str(d.digest, DIGEST, "built: digest");
	is_int(d.image_size, 4096, "built: image size");
	is_int(d.files, 7, "built: files");
	is_int(d.created, 1600000000, "built: created");
	fragment_descriptor_clear(&d);
	_cleanup_free_ char *again = descriptor_build(&m, &o, FRAGMENT_CONFIG, DIGEST, 4096, 7,
	                                              1234, NULL, 1234, "rootfs", 1600000000);
	is_str(again, built, "descriptor_build is deterministic");

	is_str(fragment_kind_to_string(FRAGMENT_DEV), "dev", "kind dev to string");
	is_str(fragment_kind_to_string(FRAGMENT_KIND_AUTO), "unknown", "kind auto to string");
	is_int(fragment_kind_from_string("config"), FRAGMENT_CONFIG, "kind config from string");
	is_int(fragment_kind_from_string("Base"), -EINVAL, "kind names are case-sensitive");
}

/* ---- images: writing ---------------------------------------------------------------------- */

#define MTIME_DEFAULT 1700000000
#define MTIME_ENTRY   1600000000
#define DATA_LEN      (300 * 1024)

static unsigned char *big_data;

/* Half a compressible pattern, half xorshift noise (stored uncompressed), across 128 KiB blocks. */
static void make_big_data(void)
{
	big_data = xmalloc(DATA_LEN);
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < DATA_LEN; i++) {
		if (i < DATA_LEN / 2) {
			big_data[i] = (unsigned char)(i * 7 + i / 4096);
		} else {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			big_data[i] = (unsigned char)x;
		}
	}
}

struct blob {
	const void *data;
	size_t len, off, chunk;
};

static ssize_t blob_read(void *ctx, void *buf, size_t len)
{
	struct blob *b = ctx;
	size_t n = b->len - b->off;
	if (n > len)
		n = len;
	if (b->chunk && n > b->chunk)
		n = b->chunk;
	memcpy(buf, (const char *)b->data + b->off, n);
	b->off += n;
	return n;
}

static ssize_t failing_read(void *ctx, void *buf, size_t len)
{
	int *calls = ctx;
	if ((*calls)++ == 0) {
		memset(buf, 'x', 100);
		return 100;
	}
	return -EIO;
}

static int add_file(struct fwriter *w, const char *path, mode_t mode, uid_t uid, gid_t gid,
                    const void *data, size_t len, struct mosaic_error *err)
{
	struct fentry e = {.mode = S_IFREG | mode, .uid = uid, .gid = gid, .mtime = MTIME_ENTRY};
	struct blob b = {.data = data, .len = len, .chunk = 10000};
	return fwriter_add(w, path, &e, blob_read, &b, err);
}

static int add_node(struct fwriter *w, const char *path, mode_t mode, dev_t rdev, const char *link,
                    struct mosaic_error *err)
{
	struct fentry e = {.mode = mode, .mtime = MTIME_ENTRY, .rdev = rdev, .link = link};
	return fwriter_add(w, path, &e, NULL, NULL, err);
}

static const unsigned char cap_net_raw[20] = {0x01, 0x00, 0x00, 0x02, 0x00, 0x20};
#define CAP_HEX "0100000200200000000000000000000000000000"

/* Writes the test tree. reverse_xattrs gives the xattrs in the other order (same image). */
static int build_image(const char *path, unsigned workers, bool reverse_xattrs,
                       struct mosaic_error *err)
{
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT, .workers = workers};
	struct fwriter *w = NULL;
	int r = fwriter_new(path, &wo, &w, err);
	if (r < 0)
		return r;
	struct fxattr xa[2] = {
	    {"security.capability", cap_net_raw, sizeof(cap_net_raw)},
	    {"user.x", "hello", 5},
	};
	if (reverse_xattrs) {
		struct fxattr t = xa[0];
		xa[0] = xa[1];
		xa[1] = t;
	}
	struct fentry ping = {
	    .mode = S_IFREG | 0755, .mtime = MTIME_ENTRY, .xattrs = xa, .n_xattrs = 2};
	struct blob ping_data = {.data = "ping", .len = 4};
	struct fentry empty = {.mode = S_IFREG | 0644, .mtime = MTIME_ENTRY};

	if ((r = add_node(w, ".", S_IFDIR | 0755, 0, NULL, err)) < 0 ||
	    (r = add_file(w, "/usr/share/data.bin", 0644, 0, 0, big_data, DATA_LEN, err)) < 0 ||
	    (r = fwriter_add(w, "empty", &empty, NULL, NULL, err)) < 0 ||
	    (r = add_file(w, "usr/bin/su", 04755, 1000, 1000, "su\n", 3, err)) < 0 ||
	    (r = add_node(w, "usr/bin/sh", S_IFLNK | 0777, 0, "dash", err)) < 0 ||
	    (r = add_node(w, "dev/null", S_IFCHR | 0666, makedev(1, 3), NULL, err)) < 0 ||
	    (r = add_node(w, "dev/sda1", S_IFBLK | 0660, makedev(8, 1), NULL, err)) < 0 ||
	    (r = add_node(w, "dev/pts/big", S_IFCHR | 0620, makedev(136, 300), NULL, err)) < 0 ||
	    (r = add_node(w, "run/initctl", S_IFIFO | 0600, 0, NULL, err)) < 0 ||
	    (r = add_node(w, "run/sock", S_IFSOCK | 0666, 0, NULL, err)) < 0 ||
	    (r = add_node(w, "./tmp/", S_IFDIR | 01777, 0, NULL, err)) < 0 ||
	    (r = fwriter_add(w, "usr/bin/ping", &ping, blob_read, &ping_data, err)) < 0 ||
	    (r = add_file(w, "usr/bin/gzip", 0755, 0, 0, "gzip-binary", 11, err)) < 0 ||
	    (r = fwriter_add_hardlink(w, "usr/bin/gunzip", "/usr/bin/gzip", err)) < 0 ||
	    (r = add_file(w, "a/b/c/file", 0644, 0, 0, "deep", 4, err)) < 0 ||
	    (r = fwriter_finish(w, err)) < 0) {
		fwriter_free(w);
		return r;
	}
	fwriter_free(w);
	return 0;
}

/* ---- images: reading back ----------------------------------------------------------------- */

static json_object *inspect_json(const char *image)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);
	struct mosaic_error err = {0};
	int r = fragment_inspect(image, true, f, &err);
	fclose(f);
	json_object *j = r == 0 ? json_tokener_parse(buf) : NULL;
	if (r < 0)
		diag("fragment_inspect: %s", err.msg);
	free(buf);
	return j;
}

static char *inspect_text(const char *image)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);
	struct mosaic_error err = {0};
	int r = fragment_inspect(image, false, f, &err);
	fclose(f);
	if (r < 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

static json_object *entry(json_object *list, const char *path)
{
	for (size_t i = 0; list && i < json_object_array_length(list); i++) {
		json_object *o = json_object_array_get_idx(list, i), *p;
		if (json_object_object_get_ex(o, "path", &p) &&
		    strcmp(json_object_get_string(p), path) == 0)
			return o;
	}
	return NULL;
}

static int64_t jint(json_object *o, const char *key)
{
	json_object *v;
	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return INT64_MIN;
	return json_object_get_int64(v);
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;
	if (!o || !json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Checks one entry of the inspect listing: type, mode, owner, size and link count. */
static void entry_is(json_object *list, const char *path, const char *type, int mode, int uid,
                     int gid, int64_t size, int nlink)
{
	json_object *e = entry(list, path);
	if (!ok(e != NULL, "%s is listed", path))
		return;
	is_str(jstr(e, "type"), type, "%s: type %s", path, type);
	is_int(jint(e, "mode"), mode, "%s: mode 0%o", path, mode);
	is_int(jint(e, "uid"), uid, "%s: uid %d", path, uid);
	is_int(jint(e, "gid"), gid, "%s: gid %d", path, gid);
	if (size >= 0)
		is_int(jint(e, "size"), size, "%s: size %jd", path, (intmax_t)size);
	is_int(jint(e, "nlink"), nlink, "%s: nlink %d", path, nlink);
}

/* A regular file's content, read back through libsquashfuse (as the daemon will). */
static char *read_back(const char *image, const char *path, size_t *len)
{
	int fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	sqfs fs;
	if (sqfs_init(&fs, fd, 0) != SQFS_OK) {
		close(fd);
		return NULL;
	}
	char *buf = NULL;
	sqfs_inode inode;
	bool found = false;
	if (sqfs_inode_get(&fs, &inode, sqfs_inode_root(&fs)) == SQFS_OK &&
	    sqfs_lookup_path(&fs, &inode, path, &found) == SQFS_OK && found &&
	    S_ISREG(sqfs_mode(inode.base.inode_type))) {
		sqfs_off_t n = inode.xtra.reg.file_size;
		buf = xmalloc(n + 1);
		if (sqfs_read_range(&fs, &inode, 0, &n, buf) != SQFS_OK) {
			free(buf);
			buf = NULL;
		} else {
			buf[n] = '\0';
			*len = n;
		}
	}
	sqfs_destroy(&fs);
	close(fd);
	return buf;
}

static void content_is(const char *image, const char *path, const void *want, size_t want_len)
{
	size_t len = 0;
	_cleanup_free_ char *got = read_back(image, path, &len);
	ok(got && len == want_len && memcmp(got, want, want_len) == 0,
	   "%s: content read back (%zu bytes)", path, want_len);
}

static bool same_bytes(const char *a, const char *b)
{
	_cleanup_free_ char *x = NULL, *y = NULL;
	size_t xl = 0, yl = 0;
	if (read_file(a, 64 << 20, &x, &xl) < 0 || read_file(b, 64 << 20, &y, &yl) < 0)
		return false;
	return xl == yl && memcmp(x, y, xl) == 0;
}

static off_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* ---- images: tests ------------------------------------------------------------------------ */

static void test_roundtrip(void)
{
	_cleanup_free_ char *img = path_join(tmpdir, "tree.sqfs");
	struct mosaic_error err = {0};

	if (!is_int(build_image(img, 1, false, &err), 0, "image written (%s)", err.msg))
		return;
	is_int(file_size(img) % 4096, 0, "image padded to 4 KiB");
	is_int(fragment_image_check(img, &err), 0, "fragment_image_check accepts it (%s)", err.msg);

	json_object *list = inspect_json(img);
	if (!ok(json_object_is_type(list, json_type_array), "inspect --json gives an array"))
		return;
	is_int(json_object_array_length(list), 24, "24 entries including the root");

	entry_is(list, "/", "d", 0755, 0, 0, -1, 7);
	entry_is(list, "/usr/share/data.bin", "-", 0644, 0, 0, DATA_LEN, 1);
	is_int(jint(entry(list, "/usr/share/data.bin"), "mtime"), MTIME_ENTRY, "entry mtime kept");
	entry_is(list, "/empty", "-", 0644, 0, 0, 0, 1);
	entry_is(list, "/usr/bin/su", "-", 04755, 1000, 1000, 3, 1);
	entry_is(list, "/usr/bin/sh", "l", 0777, 0, 0, 4, 1);
	is_str(jstr(entry(list, "/usr/bin/sh"), "target"), "dash", "symlink target");
	entry_is(list, "/dev", "d", 0755, 0, 0, -1, 3);
	entry_is(list, "/dev/null", "c", 0666, 0, 0, -1, 1);
	is_int(jint(entry(list, "/dev/null"), "major"), 1, "/dev/null major 1");
	is_int(jint(entry(list, "/dev/null"), "minor"), 3, "/dev/null minor 3");
	entry_is(list, "/dev/sda1", "b", 0660, 0, 0, -1, 1);
	is_int(jint(entry(list, "/dev/sda1"), "major"), 8, "/dev/sda1 major 8");
	is_int(jint(entry(list, "/dev/sda1"), "minor"), 1, "/dev/sda1 minor 1");
	entry_is(list, "/dev/pts/big", "c", 0620, 0, 0, -1, 1);
	is_int(jint(entry(list, "/dev/pts/big"), "major"), 136, "minor above 255: major 136");
	is_int(jint(entry(list, "/dev/pts/big"), "minor"), 300, "minor above 255: minor 300");
	entry_is(list, "/run/initctl", "p", 0600, 0, 0, -1, 1);
	entry_is(list, "/run/sock", "s", 0666, 0, 0, -1, 1);
	entry_is(list, "/tmp", "d", 01777, 0, 0, -1, 2);
	is_int(jint(entry(list, "/tmp"), "mtime"), MTIME_ENTRY, "listed directory keeps its mtime");
	entry_is(list, "/usr/bin/ping", "-", 0755, 0, 0, 4, 1);
	entry_is(list, "/usr/bin/gzip", "-", 0755, 0, 0, 11, 2);
	entry_is(list, "/usr/bin/gunzip", "-", 0755, 0, 0, 11, 2);
	entry_is(list, "/a", "d", 0755, 0, 0, -1, 3);
	entry_is(list, "/a/b/c", "d", 0755, 0, 0, -1, 2);
	is_int(jint(entry(list, "/a/b/c"), "mtime"), MTIME_DEFAULT,
	       "implicit parent gets the default mtime");
	entry_is(list, "/a/b/c/file", "-", 0644, 0, 0, 4, 1);

	json_object *x = NULL;
	json_object_object_get_ex(entry(list, "/usr/bin/ping"), "xattrs", &x);
	is_str(jstr(x, "security.capability"), CAP_HEX, "security.capability xattr (hex)");
	is_str(jstr(x, "user.x"), "68656c6c6f", "user.x xattr (hex)");
	is_int(x ? json_object_object_length(x) : 0, 2, "exactly two xattrs");
	ok(!json_object_object_get_ex(entry(list, "/usr/bin/su"), "xattrs", NULL),
	   "no xattrs on an entry without them");
	json_object_put(list);

	content_is(img, "/usr/share/data.bin", big_data, DATA_LEN);
	content_is(img, "/usr/bin/su", "su\n", 3);
	content_is(img, "/usr/bin/gunzip", "gzip-binary", 11);
	content_is(img, "/usr/bin/ping", "ping", 4);
	content_is(img, "/a/b/c/file", "deep", 4);
	content_is(img, "/empty", "", 0);

	_cleanup_free_ char *text = inspect_text(img);
	ok(contains(text, "-rwsr-xr-x   1  1000  1000          3 2020-09-13 12:26 /usr/bin/su\n"),
	   "text listing: setuid file line");
	ok(contains(text, " /usr/bin/sh -> dash\n"), "text listing: symlink target");
	ok(contains(text, "crw-rw-rw-   1     0     0       1, 3 "),
	   "text listing: device numbers");
	ok(contains(text, "drwxrwxrwt "), "text listing: sticky directory");
	ok(contains(text, "srw-rw-rw- "), "text listing: socket");
	ok(contains(text, "prw------- "), "text listing: fifo");

	/* Reproducible: the same entries give the same bytes, whatever the thread count or the
	 * order the xattrs came in. */
	_cleanup_free_ char *img2 = path_join(tmpdir, "tree2.sqfs");
	_cleanup_free_ char *img3 = path_join(tmpdir, "tree3.sqfs");
	is_int(build_image(img2, 1, false, &err), 0, "second image written");
	ok(same_bytes(img, img2), "the same entries written twice give byte-identical images");
	is_int(build_image(img3, 4, true, &err), 0, "third image written (4 workers)");
	ok(same_bytes(img, img3), "4 workers and xattrs in another order: byte-identical image");

	/* Corruption: half the image, random bytes, nothing, a missing file. */
	_cleanup_free_ char *half = path_join(tmpdir, "half.sqfs");
	_cleanup_free_ char *bytes = NULL;
	size_t len = 0;
	if (read_file(img, 64 << 20, &bytes, &len) == 0)
		write_file_atomic(half, bytes, len / 2, 0644);
	err.msg[0] = '\0';
	ok(fragment_image_check(half, &err) < 0, "an image truncated to half is rejected");
	ok(contains(err.msg, "truncated") || contains(err.msg, "corrupt"), "truncated image: '%s'",
	   err.msg);

	/* The image without its last 4 KiB of tables (data intact): truncated or corrupt. */
	_cleanup_free_ char *tail = path_join(tmpdir, "tail.sqfs");
	if (bytes)
		write_file_atomic(tail, bytes, len - 4096 - 100, 0644);
	err.msg[0] = '\0';
	ok(fragment_image_check(tail, &err) < 0, "an image missing its tail is rejected");
	ok(contains(err.msg, "truncated") || contains(err.msg, "corrupt"), "missing tail: '%s'",
	   err.msg);

	_cleanup_free_ char *noise = path_join(tmpdir, "noise.sqfs");
	unsigned char rnd[65536];
	uint64_t s = 88172645463325252ull;
	for (size_t i = 0; i < sizeof(rnd); i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		rnd[i] = (unsigned char)(s >> 24);
	}
	write_file_atomic(noise, rnd, sizeof(rnd), 0644);
	is_int(fragment_image_check(noise, &err), -EBADMSG, "random bytes are rejected");
	ok(contains(err.msg, "not a squashfs image"), "random bytes: '%s'", err.msg);

	_cleanup_free_ char *empty = path_join(tmpdir, "empty.sqfs");
	write_file_atomic(empty, "", 0, 0644);
	ok(fragment_image_check(empty, &err) < 0, "an empty file is rejected ('%s')", err.msg);
	_cleanup_free_ char *missing = path_join(tmpdir, "missing.sqfs");
	is_int(fragment_image_check(missing, &err), -ENOENT, "a missing image is -ENOENT");
	ok(contains(err.msg, "missing.sqfs"), "missing image: message names it");
	json_object *none = inspect_json(noise);
	ok(none == NULL, "fragment_inspect fails on random bytes");
}

/* Runs fn in a child so that a crash fails one check instead of ending the test program. */
static bool in_child(int (*fn)(void *), void *ctx, int *status)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0)
		_exit(fn(ctx));
	if (pid < 0 || waitpid(pid, status, 0) != pid)
		return false;
	return WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

/* Adds an entry, has one refused for its xattrs, finishes: run in a child (the writer's threads
 * would not survive a fork, so the child makes its own). Exit 0: finished; 1: an error. */
static int xattr_refusal_then_finish(void *ctx)
{
	const char *img = ctx;
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT};
	struct fwriter *w = NULL;
	struct mosaic_error err = {0};
	struct fxattr bad = {"system.posix_acl_access", "x", 1};
	struct fentry ex = {.mode = S_IFREG | 0644, .xattrs = &bad, .n_xattrs = 1};
	if (fwriter_new(img, &wo, &w, &err) < 0 ||
	    add_file(w, "ok", 0644, 0, 0, "x", 1, &err) < 0 ||
	    fwriter_add(w, "acl", &ex, NULL, NULL, &err) != -EOPNOTSUPP)
		return 2;
	int r = fwriter_finish(w, &err);
	fwriter_free(w);
	return r < 0 ? 1 : 0;
}

/* An entry refused for its xattrs leaves nothing behind: the writer still finishes. */
static void test_writer_xattr_refusal(void)
{
	_cleanup_free_ char *img = path_join(tmpdir, "xattr-refusal.sqfs");
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT};
	struct fwriter *w = NULL;
	struct mosaic_error err = {0};

	if (!is_int(fwriter_new(img, &wo, &w, &err), 0, "writer for an xattr refusal"))
		return;
	is_int(add_file(w, "ok", 0644, 0, 0, "x", 1, &err), 0, "a first entry");
	struct fxattr bad = {"system.posix_acl_access", "x", 1};
	struct fentry ex = {.mode = S_IFREG | 0644, .xattrs = &bad, .n_xattrs = 1};
	is_int(fwriter_add(w, "acl", &ex, NULL, NULL, &err), -EOPNOTSUPP,
	       "an xattr namespace squashfs cannot store refused");
	ok(contains(err.msg, "system.posix_acl_access"), "message names the xattr ('%s')", err.msg);
	fwriter_free(w);

	int status = 0;
	bool fine = in_child(xattr_refusal_then_finish, img, &status);
	if (WIFSIGNALED(status))
		diag("fwriter_finish after the refusal died with signal %d", WTERMSIG(status));
	ok(fine, "the writer finishes after an entry was refused for its xattrs (status 0x%x)",
	   status);
	if (fine) {
		is_int(fragment_image_check(img, &err), 0, "the image checks (%s)", err.msg);
		json_object *list = inspect_json(img);
		ok(entry(list, "/ok") && !entry(list, "/acl"), "the refused entry is not in it");
		json_object_put(list);
	}
}

static void test_writer_refusals(void)
{
	_cleanup_free_ char *img = path_join(tmpdir, "refusals.sqfs");
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT};
	struct fwriter *w = NULL;
	struct mosaic_error err = {0};

	if (!is_int(fwriter_new(img, &wo, &w, &err), 0, "writer for refusals"))
		return;
	is_int(add_file(w, "etc/passwd", 0644, 0, 0, "root\n", 5, &err), 0, "etc/passwd");
	is_int(add_node(w, "var/tmp", S_IFDIR | 01777, 0, NULL, &err), 0, "var/tmp");

	is_int(add_file(w, "../x", 0644, 0, 0, "x", 1, &err), -EINVAL, "'../x' refused");
	ok(contains(err.msg, "'../x'"), "'../x': message names the entry ('%s')", err.msg);
	is_int(add_file(w, "usr/../../etc/shadow", 0644, 0, 0, "x", 1, &err), -EINVAL,
	       "'usr/../../etc/shadow' refused");
	ok(contains(err.msg, "usr/../../etc/shadow"), "message names the entry ('%s')", err.msg);
	is_int(add_file(w, "a/..", 0644, 0, 0, "x", 1, &err), -EINVAL, "'a/..' refused");

	is_int(fwriter_add_hardlink(w, "usr/bin/link", "usr/bin/missing", &err), -EINVAL,
	       "hard link to a missing target refused");
	ok(contains(err.msg, "usr/bin/link") && contains(err.msg, "usr/bin/missing"),
	   "message names the link and its target ('%s')", err.msg);
	is_int(fwriter_add_hardlink(w, "link", "../etc/passwd", &err), -EINVAL,
	       "hard link to '../etc/passwd' refused");
	ok(contains(err.msg, "'link'"), "message names the link ('%s')", err.msg);
	is_int(fwriter_add_hardlink(w, "../link", "etc/passwd", &err), -EINVAL,
	       "hard link named '../link' refused");
	is_int(fwriter_add_hardlink(w, "dirlink", "var/tmp", &err), -EPERM,
	       "hard link to a directory refused");
	is_int(fwriter_add_hardlink(w, "dirlink", "var", &err), -EINVAL,
	       "hard link to an implicit parent refused");
	ok(fwriter_add_hardlink(w, "rootlink", "/", &err) < 0, "hard link to the root refused");

	is_int(add_file(w, "var/tmp", 0644, 0, 0, "x", 1, &err), -EISDIR,
	       "replacing a directory with a file refused");
	ok(contains(err.msg, "var/tmp"), "message names the entry ('%s')", err.msg);
	is_int(add_node(w, "var", S_IFLNK | 0777, 0, "/", &err), -EISDIR,
	       "replacing an implicit directory with a symlink refused");
	is_int(fwriter_add_hardlink(w, "var/tmp", "etc/passwd", &err), -EISDIR,
	       "replacing a directory with a hard link refused");
	is_int(add_file(w, "etc/passwd/x", 0644, 0, 0, "x", 1, &err), -ENOTDIR,
	       "an entry under a regular file refused");
	ok(contains(err.msg, "etc/passwd"), "message names the parent ('%s')", err.msg);
	is_int(add_file(w, "/", 0644, 0, 0, "x", 1, &err), -EINVAL,
	       "a regular file as root refused");
	is_int(add_node(w, "weird", 0170000 & ~S_IFMT, 0, NULL, &err), -EINVAL,
	       "an entry without a file type refused");
	/* The refusals left the writer usable. */
	is_int(fwriter_finish(w, &err), 0, "writer finishes after refusals (%s)", err.msg);
	fwriter_free(w);
	is_int(fragment_image_check(img, &err), 0, "image after refusals checks (%s)", err.msg);
	json_object *list = inspect_json(img);
	ok(entry(list, "/etc/passwd") && entry(list, "/var/tmp") && !entry(list, "/x") &&
	       !entry(list, "/link") && !entry(list, "/usr"),
	   "only the accepted entries are in the image");
	json_object_put(list);

	test_writer_xattr_refusal();

	/* A source that fails while reading: the error comes back naming the entry. */
	_cleanup_free_ char *img2 = path_join(tmpdir, "readfail.sqfs");
	is_int(fwriter_new(img2, &wo, &w, &err), 0, "writer for a failing source");
	int calls = 0;
	struct fentry fe = {.mode = S_IFREG | 0644};
	is_int(fwriter_add(w, "broken", &fe, failing_read, &calls, &err), -EIO,
	       "a read error is returned");
	ok(contains(err.msg, "broken"), "read error names the entry ('%s')", err.msg);
	fwriter_free(w);

	/* An image path in a missing directory. */
	_cleanup_free_ char *nowhere = path_join(tmpdir, "no/such/dir/x.sqfs");
	w = NULL;
	ok(fwriter_new(nowhere, &wo, &w, &err) < 0 && w == NULL,
	   "fwriter_new in a missing directory fails ('%s')", err.msg);
}

struct paths {
	char list[1024];
};

static int collect(void *ctx, const char *path, bool is_dir)
{
	struct paths *p = ctx;
	size_t l = strlen(p->list);
	snprintf(p->list + l, sizeof(p->list) - l, "%s%s%s;", path[0] ? "" : "<root>", path,
	         is_dir ? "/" : "");
	return 0;
}

static void test_writer_replace(void)
{
	_cleanup_free_ char *img = path_join(tmpdir, "replace.sqfs");
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT};
	struct fwriter *w = NULL;
	struct mosaic_error err = {0};

	if (!is_int(fwriter_new(img, &wo, &w, &err), 0, "writer for replacements"))
		return;
	is_int(add_file(w, "etc/motd", 0644, 0, 0, "first version\n", 14, &err), 0, "etc/motd");
	is_int(add_file(w, "etc/motd", 0600, 5, 5, "second\n", 7, &err), 0, "etc/motd again");
	is_int(add_node(w, "etc/alt", S_IFLNK | 0777, 0, "motd", &err), 0, "etc/alt symlink");
	is_int(add_file(w, "etc/alt", 0644, 0, 0, "now a file", 10, &err), 0,
	       "etc/alt becomes a file");
	is_int(add_node(w, "srv", S_IFDIR | 0755, 0, NULL, &err), 0, "srv");
	is_int(add_node(w, "srv", S_IFDIR | 0700, 0, NULL, &err), 0, "srv again with mode 0700");
	is_int(add_file(w, "bin/a", 0755, 0, 0, "A", 1, &err), 0, "bin/a");
	is_int(fwriter_add_hardlink(w, "bin/b", "bin/a", &err), 0, "bin/b -> bin/a");
	is_int(fwriter_add_hardlink(w, "bin/c", "bin/b", &err), 0, "bin/c -> bin/b (a chain)");
	is_int(add_file(w, "bin/c", 0755, 0, 0, "C", 1, &err), 0, "bin/c replaced by a file");
	is_int(fwriter_add_hardlink(w, "bin/a", "bin/a", &err), 0,
	       "a hard link to itself is a no-op");

	struct paths p = {""};
	fwriter_foreach_path(w, collect, &p);
	is_str(p.list, "<root>/;etc/motd;etc/alt;srv/;bin/a;bin/b;bin/c;",
	       "fwriter_foreach_path: the root, then each added path once, in order, without the "
	       "implicit parents");
	is_int(fwriter_files(w), 8,
	       "fwriter_files counts every entry but the root (implicit parents too)");

	is_int(fwriter_finish(w, &err), 0, "finish (%s)", err.msg);
	fwriter_free(w);
	is_int(fragment_image_check(img, &err), 0, "image checks (%s)", err.msg);
	json_object *list = inspect_json(img);
	entry_is(list, "/etc/motd", "-", 0600, 5, 5, 7, 1);
	entry_is(list, "/etc/alt", "-", 0644, 0, 0, 10, 1);
	entry_is(list, "/srv", "d", 0700, 0, 0, -1, 2);
	entry_is(list, "/bin/a", "-", 0755, 0, 0, 1, 2);
	entry_is(list, "/bin/b", "-", 0755, 0, 0, 1, 2);
	entry_is(list, "/bin/c", "-", 0755, 0, 0, 1, 1);
	json_object_put(list);
	content_is(img, "/etc/motd", "second\n", 7);
	content_is(img, "/etc/alt", "now a file", 10);
	content_is(img, "/bin/b", "A", 1);
	content_is(img, "/bin/c", "C", 1);
}

/* A hard-linked name turned into a directory must become a real directory, and a hard link's
 * target turned into a directory must not leave a hard link to a directory behind. */
static void test_writer_link_then_dir(void)
{
	_cleanup_free_ char *img = path_join(tmpdir, "linkdir.sqfs");
	struct fwriter_options wo = {.mtime = MTIME_DEFAULT};
	struct fwriter *w = NULL;
	struct mosaic_error err = {0};

	if (!is_int(fwriter_new(img, &wo, &w, &err), 0, "writer for link-then-directory"))
		return;
	add_file(w, "x", 0644, 0, 0, "X", 1, &err);
	fwriter_add_hardlink(w, "y", "x", &err);
	int r = add_node(w, "y", S_IFDIR | 0755, 0, NULL, &err);
	is_int(r, 0, "the hard link 'y' is replaced by a directory");
	add_file(w, "p", 0644, 0, 0, "P", 1, &err);
	fwriter_add_hardlink(w, "q", "p", &err);
	int r2 = add_node(w, "p", S_IFDIR | 0755, 0, NULL, &err);
	is_int(fwriter_finish(w, &err), 0, "finish (%s)", err.msg);
	fwriter_free(w);
	is_int(fragment_image_check(img, &err), 0, "image checks (%s)", err.msg);
	json_object *list = inspect_json(img);
	entry_is(list, "/y", "d", 0755, 0, 0, -1, 2);
	entry_is(list, "/x", "-", 0644, 0, 0, 1, 1);
	json_object *q = entry(list, "/q"), *pp = entry(list, "/p");
	diag("replacing hard link target 'p' by a directory returned %d", r2);
	ok(q && !(r2 == 0 && strcmp(jstr(q, "type") ?: "", "d") == 0),
	   "no hard link to a directory: /q is type %s", jstr(q, "type"));
	ok(r2 < 0 || (pp && strcmp(jstr(pp, "type") ?: "", "d") == 0 && jint(pp, "nlink") == 2),
	   "/p is a plain directory (type %s, nlink %jd)", jstr(pp, "type"),
	   (intmax_t)jint(pp, "nlink"));
	json_object_put(list);
}

/* ---- many fragments on threads (fragment_create_many) -------------------------------------- */

static void put_file(const char *dir, const char *name, const void *data, size_t len)
{
	_cleanup_free_ char *p = path_join(dir, name);
	_cleanup_free_ char *parent = xstrdup(p);
	*strrchr(parent, '/') = '\0';
	if (mkdir_p(parent, 0755) < 0 || write_file_atomic(p, data, len, 0644) < 0)
		diag("cannot write %s", p);
}

/* A signing key in a GnuPG home of the test's own ($GNUPGHOME for fragment_create's signing);
 * its fingerprint, and its public key exported to keyring. */
static char *make_signing_key(const char *home, const char *keyring)
{
	mkdir(home, 0700);
	setenv("GNUPGHOME", home, 1);
	_cleanup_free_ char *conf = path_join(home, "gpg.conf");
	write_file_atomic(conf, "trust-model always\n", 19, 0600);
	_cleanup_free_ char *fpr_file = path_join(home, "fpr");
	if (sh("gpg --batch --quiet --passphrase '' --quick-gen-key 'pool test <p@example.org>' "
	       "ed25519 sign never 2>/dev/null") != 0 ||
	    sh("gpg --batch --export p@example.org > %s", keyring) != 0 ||
	    sh("gpg --batch --with-colons --list-keys p@example.org | awk -F: '/^fpr/{print $10; "
	       "exit}' > %s",
	       fpr_file) != 0)
		return NULL;
	char *fpr = NULL;
	size_t len;
	if (read_file(fpr_file, 4096, &fpr, &len) < 0)
		return NULL;
	fpr[strcspn(fpr, "\n")] = '\0';
	return fpr;
}

/* A .deb of two files by dpkg-deb, or NULL without it. */
static char *make_deb(const char *work)
{
	_cleanup_free_ char *root = path_join(work, "deb-root");
	static const char control[] = "Package: pooltest\nVersion: 1.0-1\nArchitecture: all\n"
	                              "Maintainer: t <t@example.org>\nDescription: pool test\n"
	                              " verbatim\n  lines\n";
	put_file(root, "DEBIAN/control", control, strlen(control));
	put_file(root, "usr/share/pooltest/a", "a\n", 2);
	put_file(root, "usr/share/pooltest/big", big_data, DATA_LEN);
	char *deb = path_join(work, "pooltest_1.0-1_all.deb");
	if (sh("dpkg-deb --root-owner-group -Zxz --build %s %s >/dev/null 2>&1", root, deb) != 0) {
		free(deb);
		return NULL;
	}
	return deb;
}

/* An .rpm by rpmbuild, signed by fpr with rpmsign when fpr is not NULL; or NULL. */
static char *make_rpm(const char *work, const char *fpr, const char *home)
{
	_cleanup_free_ char *spec = path_join(work, "t.spec");
	static const char text[] =
	    "Name: pooltest\nVersion: 1.0\nRelease: 1\nSummary: t\nLicense: MIT\n"
	    "BuildArch: noarch\n%description\nt\n%install\n"
	    "mkdir -p %{buildroot}/usr/share/pooltest\n"
	    "echo hi > %{buildroot}/usr/share/pooltest/hi\n%files\n/usr/share/pooltest\n";
	put_file(work, "t.spec", text, strlen(text));
	if (sh("rpmbuild -bb --quiet %s --define '_topdir %s/top' --define '_tmppath %s' "
	       "--define '_build_id_links none' --define 'debug_package %%{nil}' "
	       "--define '__os_install_post %%{nil}' >/dev/null 2>&1 && "
	       "mv %s/top/RPMS/noarch/pooltest-1.0-1.noarch.rpm %s/pooltest.rpm",
	       spec, work, work, work, work) != 0)
		return NULL;
	if (fpr && sh("rpmsign --addsign --define '_gpg_name %s' --define '_gpg_path %s' "
	              "--define '__gpg /usr/bin/gpg' %s/pooltest.rpm </dev/null >/dev/null 2>&1",
	              fpr, home, work) != 0)
		return NULL;
	return path_join(work, "pooltest.rpm");
}

struct progress_seen {
	size_t calls, last_done;
	bool in_order, overlapped, right_total;
	int inside;
	const struct fragment_job *jobs;
	size_t n;
	bool jobs_ours;
};

static void progress_check(size_t done, size_t n, const struct fragment_job *job, void *data)
{
	struct progress_seen *p = data;
	if (__atomic_add_fetch(&p->inside, 1, __ATOMIC_SEQ_CST) != 1)
		p->overlapped = true;
	usleep(1000); /* a second call at the same time would be seen */
	p->calls++;
	p->in_order &= done == p->last_done + 1;
	p->last_done = done;
	p->right_total &= n == p->n;
	p->jobs_ours &= job >= p->jobs && job < p->jobs + p->n;
	__atomic_sub_fetch(&p->inside, 1, __ATOMIC_SEQ_CST);
}

static void test_create_many(void)
{
	_cleanup_free_ char *work = path_join(tmpdir, "many");
	_cleanup_free_ char *home = path_join(tmpdir, "many-gnupg");
	_cleanup_free_ char *keyring_path = path_join(tmpdir, "many-keyring.gpg");
	mkdir_p(work, 0755);

	/* Two directories, a tar of one of them, a .deb, a signed .rpm (twice, under two names:
	 * one image committed at once with two descriptors), a missing source and a corrupt
	 * .rpm. */
	_cleanup_free_ char *d1 = path_join(work, "dir1"), *d2 = path_join(work, "dir2");
	put_file(d1, "etc/hostname", "pool\n", 5);
	put_file(d1, "usr/share/doc/x/README", "read me\n", 8);
	_cleanup_free_ char *l = path_join(d1, "etc/link");
	ok(symlink("hostname", l) == 0, "create_many: a symlink in a directory source");
	put_file(d2, "data/big", big_data, DATA_LEN);
	put_file(d2, "data/small", "s", 1);
	_cleanup_free_ char *tar = path_join(work, "dir1.tar");
	ok(sh("tar -C %s --owner=0 --group=0 --mtime=@1700000000 -cf %s .", d1, tar) == 0,
	   "create_many: a tar source");
	_cleanup_free_ char *missing = path_join(work, "no-such-source");
	_cleanup_free_ char *corrupt = path_join(work, "corrupt.rpm");
	{
		/* rpm's lead magic, then noise: big, so the pool starts with it. */
		size_t len = DATA_LEN;
		_cleanup_free_ unsigned char *junk = xmalloc(len);
		memcpy(junk, big_data + DATA_LEN / 2, len / 2);
		memcpy(junk + len / 2, big_data + DATA_LEN / 2, len / 2);
		memcpy(junk, "\xed\xab\xee\xdb", 4);
		put_file(work, "corrupt.rpm", junk, len);
	}
	_cleanup_free_ char *fpr = make_signing_key(home, keyring_path);
	if (!fpr)
		diag("no gpg: the fragments are made unsigned");
	_cleanup_free_ char *deb = make_deb(work);
	if (!deb)
		diag("no dpkg-deb: no .deb job");
	_cleanup_free_ char *rpm = make_rpm(work, fpr, home);
	if (!rpm)
		diag("no rpmbuild: no .rpm jobs");
	struct keyring *k = NULL;
	struct mosaic_error err = {0};
	if (fpr && keyring_open(keyring_path, &k, &err) < 0)
		diag("keyring_open: %s", err.msg);

	struct fragment_create_options o = {.kind = FRAGMENT_KIND_AUTO,
	                                    .source_date_epoch = 1700000000,
	                                    .sign_key = fpr,
	                                    .keyring = k,
	                                    .workers = 1,
	                                    .level = 3};
	struct fragment_job jobs[9];
	size_t n = 0;
	jobs[n++] = (struct fragment_job){.src = d1, .o = o};
	jobs[n - 1].o.name = "one";
	jobs[n++] = (struct fragment_job){.src = missing, .o = o};
	jobs[n++] = (struct fragment_job){.src = d2, .o = o};
	jobs[n - 1].o.name = "two";
	jobs[n - 1].o.kind = FRAGMENT_CONFIG;
	jobs[n - 1].o.owner_set = true;
	jobs[n - 1].o.uid = jobs[n - 1].o.gid = 42;
	jobs[n++] = (struct fragment_job){.src = tar, .o = o};
	jobs[n - 1].o.name = "tarball";
	jobs[n++] = (struct fragment_job){.src = corrupt, .o = o};
	if (deb)
		jobs[n++] = (struct fragment_job){.src = deb, .o = o};
	if (rpm) {
		jobs[n++] = (struct fragment_job){.src = rpm, .o = o};
		jobs[n++] = (struct fragment_job){.src = rpm, .o = o};
		jobs[n - 1].o.name = "rpm-again";
	}

	/* One at a time into one store, then on three threads into another. */
	_cleanup_free_ char *one_path = path_join(tmpdir, "many-store-one");
	_cleanup_free_ char *pool_path = path_join(tmpdir, "many-store-pool");
	struct store *one = NULL, *pool = NULL;
	if (!ok(store_open(one_path, true, &one, &err) == 0 &&
	            store_open(pool_path, true, &pool, &err) == 0,
	        "create_many: two stores (%s)", err.msg))
		goto out;
	struct fragment_job alone[9];
	memcpy(alone, jobs, sizeof(jobs));
	for (size_t i = 0; i < n; i++) {
		alone[i].info = (struct fragment_info){0};
		alone[i].err = (struct mosaic_error){0};
		alone[i].r =
		    fragment_create(one, alone[i].src, &alone[i].o, &alone[i].info, &alone[i].err);
	}
	struct progress_seen seen = {
	    .in_order = true, .right_total = true, .jobs = jobs, .n = n, .jobs_ours = true};
	int r = fragment_create_many(pool, jobs, n, 3, progress_check, &seen);

	is_int(r, -ENOENT, "create_many: the first failure in job order is returned");
	ok(jobs[1].r == -ENOENT && contains(jobs[1].err.msg, "no-such-source"),
	   "create_many: the missing source fails in its own job: %s", jobs[1].err.msg);
	ok(jobs[4].r < 0 && jobs[4].r != -ENOENT && jobs[4].r == alone[4].r &&
	       contains(jobs[4].err.msg, "corrupt.rpm"),
	   "create_many: the corrupt .rpm fails as it does alone (%d): %s", jobs[4].r,
	   jobs[4].err.msg);
	is_int((int)seen.calls, (int)n, "create_many: progress after each job");
	ok(seen.in_order && seen.last_done == n && seen.right_total,
	   "create_many: progress counts 1..n of n");
	ok(!seen.overlapped, "create_many: progress calls one at a time");
	ok(seen.jobs_ours, "create_many: progress names the job done");
	for (size_t i = 0; i < n; i++) {
		if (i == 1 || i == 4)
			continue;
		if (!ok(jobs[i].r == 0 && alone[i].r == 0, "create_many: %s made (%s)", jobs[i].src,
		        jobs[i].r ? jobs[i].err.msg : alone[i].err.msg))
			continue;
		is_str(jobs[i].info.digest, alone[i].info.digest,
		       "create_many: %s on threads has the image digest it has alone",
		       jobs[i].info.name);
		is_str(jobs[i].info.name, alone[i].info.name, "create_many: and the same name");
		_cleanup_free_ char *dp = store_object_path(pool, jobs[i].info.digest, ".json");
		_cleanup_free_ char *da = store_object_path(one, alone[i].info.digest, ".json");
		/* The two jobs of the one .rpm make one image under two names: the store keeps
		 * one descriptor for it, whichever commit came last, so only its signature is
		 * checked below (a descriptor beside the other's signature would fail). */
		bool shared = false;
		for (size_t j = 0; j < n; j++)
			shared |= j != i && jobs[j].r == 0 &&
			          strcmp(jobs[j].info.digest, jobs[i].info.digest) == 0;
		if (!shared)
			ok(same_bytes(dp, da), "create_many: %s's descriptor has the same bytes",
			   jobs[i].info.name);
		if (k && jobs[i].src == rpm) {
			/* librpm checked the header signature on a thread against the keyring. */
			json_object *d = json_object_from_file(dp), *x, *sig, *st;
			ok(json_object_object_get_ex(d, "rpm", &x) &&
			       json_object_object_get_ex(x, "signature", &sig) &&
			       json_object_object_get_ex(sig, "status", &st) &&
			       strcmp(json_object_get_string(st), "ok") == 0,
			   "create_many: %s's rpm signature checked good on a thread",
			   jobs[i].info.name);
			json_object_put(d);
		}
		if (k) {
			_cleanup_free_ char *img =
			    store_object_path(pool, jobs[i].info.digest, ".sqfs");
			struct mosaic_error verr = {0};
			ok(fragment_verify(k, img, NULL, &verr) == 0,
			   "create_many: %s signed on a thread verifies (%s)", jobs[i].info.name,
			   verr.msg);
		}
	}
	for (size_t i = 0; i < n; i++) {
		fragment_info_clear(&jobs[i].info);
		fragment_info_clear(&alone[i].info);
	}
out:
	store_free(one);
	store_free(pool);
	keyring_free(k);
	if (fpr)
		sh("gpgconf --kill all");
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-fragments-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	make_big_data();
	test_deb822();
	test_descriptor();
	test_roundtrip();
	test_writer_refusals();
	test_writer_replace();
	test_writer_link_then_dir();
	test_create_many();
	free(big_data);
	rm_tree(tmpdir);
	free(tmpdir);
	return done();
}
