/* Unit tests for common/: path normalisation and joining, SHA-256, whole-file I/O, mkdir_p,
 * error text, configuration lookup and deb822 paragraphs (trimmed and verbatim). Runs without
 * root, in a temp directory it removes. */
#include "common/common.h"
#include "common/deb822.h"
#include "tap.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char *tmpdir; /* made fresh by main, removed at the end */

/* ---- paths -------------------------------------------------------------------------------- */

static void normalise_is(const char *in, const char *want)
{
	_cleanup_free_ char *p = xstrdup(in);
	int r = path_normalise(p);
	if (want) {
		is_int(r, 0, "path_normalise('%s') succeeds", in);
		is_str(p, want, "path_normalise('%s') = '%s'", in, want);
	} else {
		is_int(r, -EINVAL, "path_normalise('%s') is -EINVAL", in);
	}
}

static void test_path_normalise(void)
{
	normalise_is("usr/bin/env", "usr/bin/env");
	normalise_is("/usr/bin/env", "usr/bin/env");
	normalise_is("./etc/passwd", "etc/passwd");
	normalise_is("a//b", "a/b");
	normalise_is("//a///b//", "a/b");
	normalise_is("a/./b", "a/b");
	normalise_is("/./a/./././b/.", "a/b");
	normalise_is("usr/lib/", "usr/lib");
	normalise_is("/", "");
	normalise_is("./", "");
	normalise_is(".", "");
	normalise_is("", "");
	normalise_is("...", "...");
	normalise_is("..a/b..", "..a/b..");
	normalise_is("a/.hidden", "a/.hidden");
	normalise_is("..", NULL);
	normalise_is("../x", NULL);
	normalise_is("/../x", NULL);
	normalise_is("a/../b", NULL);
	normalise_is("a/..", NULL);
	normalise_is("a/b/../../..", NULL);
	normalise_is("./../", NULL);
}

static void join_is(const char *a, const char *b, const char *want)
{
	_cleanup_free_ char *j = path_join(a, b);
	is_str(j, want, "path_join('%s', '%s') = '%s'", a, b, want);
}

static void test_path_join(void)
{
	join_is("a", "b", "a/b");
	join_is("a/", "b", "a/b");
	join_is("a", "/b", "a/b");
	join_is("a//", "//b", "a/b");
	join_is("/srv/store", "sha256/ab", "/srv/store/sha256/ab");
	join_is("", "b", "b");
	join_is("a", "", "a");
	join_is("a/", "", "a");
	/* The root joined with a relative path is that path under the root, with one slash. */
	join_is("/", "etc", "/etc");
	join_is("/", "", "/");
}

/* ---- hashing ------------------------------------------------------------------------------ */

static void test_sha256(void)
{
	/* FIPS 180-2, appendix B. */
	static const struct {
		const char *msg, *hex;
	} v[] = {
	    {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	    {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	    {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
	     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	};
	char hex[SHA256_HEX_LEN + 1];
	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		memset(hex, 'x', sizeof(hex));
		sha256_buffer(v[i].msg, strlen(v[i].msg), hex);
		is_str(hex, v[i].hex, "sha256_buffer('%.16s…', %zu bytes)", v[i].msg,
		       strlen(v[i].msg));
	}

	/* The million 'a' vector, streamed in uneven pieces. */
	struct sha256 *h = sha256_new();
	char chunk[997];
	memset(chunk, 'a', sizeof(chunk));
	size_t left = 1000000;
	while (left) {
		size_t n = left < sizeof(chunk) ? left : sizeof(chunk);
		sha256_update(h, chunk, n);
		left -= n;
	}
	sha256_final(h, hex);
	is_str(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
	       "streamed sha256 of one million 'a'");

	/* sha256_fd hashes from offset 0 whatever the file position, across its 1 MiB reads. */
	size_t len = 2 * 1024 * 1024 + 12345;
	_cleanup_free_ unsigned char *data = xmalloc(len);
	for (size_t i = 0; i < len; i++)
		data[i] = (unsigned char)(i * 31 + (i >> 11));
	_cleanup_free_ char *path = path_join(tmpdir, "hashme");
	_cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ok(fd >= 0 && write_all(fd, data, len) == 0, "wrote %zu bytes to hash", len);
	char want[SHA256_HEX_LEN + 1];
	sha256_buffer(data, len, want);
	is_int(sha256_fd(fd, hex), 0, "sha256_fd succeeds");
	is_str(hex, want, "sha256_fd equals sha256_buffer of the same bytes");

	_cleanup_free_ char *empty = path_join(tmpdir, "empty");
	_cleanup_close_ int efd = open(empty, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	is_int(sha256_fd(efd, hex), 0, "sha256_fd of an empty file succeeds");
	is_str(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	       "sha256_fd of an empty file is the empty-string digest");
	is_int(sha256_fd(-1, hex), -EBADF, "sha256_fd(-1) is -EBADF");

	/* Holes are hashed as the zeros they read as, without reading them: a hole first, data
	 * across a block boundary, a hole of several MiB, data, a hole to the end. */
	size_t slen = 9 * 1024 * 1024 + 777;
	_cleanup_free_ unsigned char *sparse = xcalloc(1, slen);
	_cleanup_free_ char *spath = path_join(tmpdir, "sparse");
	_cleanup_close_ int sfd = open(spath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ok(sfd >= 0 && ftruncate(sfd, (off_t)slen) == 0, "made a sparse file");
	const size_t at[] = {3 * 4096 + 100, 7 * 1024 * 1024 + 5}, n[] = {5000, 70000};
	for (size_t i = 0; i < ARRAY_SIZE(at); i++) {
		for (size_t j = 0; j < n[i]; j++)
			sparse[at[i] + j] = (unsigned char)(j * 7 + i + 1);
		ok(pwrite(sfd, sparse + at[i], n[i], (off_t)at[i]) == (ssize_t)n[i],
		   "wrote data %zu into the sparse file", i);
	}
	sha256_buffer(sparse, slen, want);
	ok(lseek(sfd, 12345, SEEK_SET) == 12345, "moved the file position");
	is_int(sha256_fd(sfd, hex), 0, "sha256_fd of a sparse file succeeds");
	is_str(hex, want, "sha256_fd of a sparse file equals sha256_buffer of its bytes");
	is_int((int)lseek(sfd, 0, SEEK_CUR), 12345, "sha256_fd leaves the file position");
	ok(ftruncate(sfd, 0) == 0 && ftruncate(sfd, 3 * 1024 * 1024) == 0,
	   "made the file one hole");
	memset(sparse, 0, 3 * 1024 * 1024);
	sha256_buffer(sparse, 3 * 1024 * 1024, want);
	is_int(sha256_fd(sfd, hex), 0, "sha256_fd of a file that is one hole succeeds");
	is_str(hex, want, "a hole hashes as its zeros");
}

static void test_is_sha256_hex(void)
{
	const char *good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	ok(is_sha256_hex(good), "64 lowercase hex digits");
	ok(!is_sha256_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"),
	   "upper case is refused (digests are spelt one way)");
	ok(!is_sha256_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a"),
	   "63 digits refused");
	ok(!is_sha256_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0"),
	   "65 digits refused");
	ok(!is_sha256_hex("ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
	   "non-hex digit refused");
	ok(!is_sha256_hex(""), "empty string refused");
	ok(!is_sha256_hex("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f2"),
	   "algorithm prefix refused");
}

/* ---- files -------------------------------------------------------------------------------- */

static bool dir_has_temp(const char *dir)
{
	DIR *d = opendir(dir);
	bool found = false;
	if (!d)
		return false;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strstr(de->d_name, ".tmp-"))
			found = true;
	closedir(d);
	return found;
}

static void test_files(void)
{
	_cleanup_free_ char *dir = path_join(tmpdir, "files");
	_cleanup_free_ char *path = path_join(dir, "data");
	_cleanup_free_ char *buf = NULL;
	size_t len = 12345;
	struct stat st;

	is_int(mkdir_p(dir, 0755), 0, "mkdir_p of the files directory");

	/* Patterned data with NUL bytes in it, larger than read_file's first 4 KiB buffer. */
	size_t n = 10000;
	_cleanup_free_ char *data = xmalloc(n);
	for (size_t i = 0; i < n; i++)
		data[i] = (char)(i % 251);
	is_int(write_file_atomic(path, data, n, 0640), 0, "write_file_atomic succeeds");
	ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0640, "mode 0640 set exactly");
	is_int(read_file(path, 1 << 20, &buf, &len), 0, "read_file succeeds");
	is_int(len, n, "read_file length");
	ok(buf && memcmp(buf, data, n) == 0, "read_file returns the bytes written");
	ok(buf && buf[n] == '\0', "read_file NUL-terminates");
	free(TAKE_PTR(buf));

	is_int(write_file_atomic(path, "new\n", 4, 0600), 0, "write_file_atomic replaces a file");
	is_int(read_file(path, 100, &buf, NULL), 0, "read_file with len NULL");
	is_str(buf, "new\n", "replacement content read back");
	free(TAKE_PTR(buf));
	ok(!dir_has_temp(dir), "no temp file left beside it");

	_cleanup_free_ char *nodir = path_join(tmpdir, "missing/dir/f");
	is_int(write_file_atomic(nodir, "x", 1, 0644), -ENOENT,
	       "write_file_atomic into a missing directory is -ENOENT");
	_cleanup_free_ char *missing = path_join(tmpdir, "no-such-file");
	is_int(read_file(missing, 100, &buf, &len), -ENOENT, "read_file of a missing file");

	/* max: a file larger than max is -EFBIG, a file of exactly max bytes is read. */
	is_int(write_file_atomic(path, data, n, 0644), 0, "write %zu bytes again", n);
	is_int(read_file(path, 8192, &buf, &len), -EFBIG, "read_file of %zu bytes, max 8192", n);
	free(TAKE_PTR(buf));
	is_int(read_file(path, n + 1, &buf, &len), 0, "read_file of %zu bytes, max %zu", n, n + 1);
	free(TAKE_PTR(buf));
	is_int(read_file(path, n, &buf, &len), 0, "read_file of %zu bytes, max exactly %zu", n, n);
	free(TAKE_PTR(buf));
	is_int(read_file(path, 100, &buf, &len), -EFBIG,
	       "read_file of %zu bytes, max 100 (below the first buffer size)", n);
	free(TAKE_PTR(buf));
	is_int(write_file_atomic(path, data, 50, 0644), 0, "write 50 bytes");
	is_int(read_file(path, 10, &buf, &len), -EFBIG, "read_file of 50 bytes, max 10");
	free(TAKE_PTR(buf));
	is_int(write_file_atomic(path, data, 4096, 0644), 0, "write 4096 bytes");
	is_int(read_file(path, 4096, &buf, &len), 0, "read_file of 4096 bytes, max exactly 4096");
	free(TAKE_PTR(buf));
	is_int(write_file_atomic(path, "", 0, 0644), 0, "write an empty file");
	is_int(read_file(path, 0, &buf, &len), 0, "read_file of an empty file, max 0");
	ok(buf && len == 0 && buf[0] == '\0', "empty file reads as an empty string");
	free(TAKE_PTR(buf));

	/* mkdir_p */
	_cleanup_free_ char *deep = path_join(tmpdir, "m/n/o/p");
	is_int(mkdir_p(deep, 0700), 0, "mkdir_p creates four levels");
	ok(stat(deep, &st) == 0 && S_ISDIR(st.st_mode), "the deepest one is a directory");
	is_int(mkdir_p(deep, 0700), 0, "mkdir_p of an existing directory");
	_cleanup_free_ char *slash = xasprintf("%s/m/q/", tmpdir);
	is_int(mkdir_p(slash, 0700), 0, "mkdir_p with a trailing slash");
	_cleanup_free_ char *through = path_join(path, "sub");
	is_int(mkdir_p(through, 0755), -ENOTDIR, "mkdir_p through a regular file is -ENOTDIR");
	ok(mkdir_p(path, 0755) < 0, "mkdir_p of an existing regular file fails (like mkdir -p)");
}

static int mkdir_p_empty(void)
{
	return mkdir_p("", 0755) == -ENOENT ? 0 : 1;
}

/* mkdir_p("") must fail like mkdir(""), without reading past the string: run in a child, so that
 * a sanitizer report fails this one check rather than the whole program. */
static void test_mkdir_p_empty(void)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0)
		_exit(mkdir_p_empty());
	int status = 0;
	bool fine = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	            WEXITSTATUS(status) == 0;
	ok(fine, "mkdir_p(\"\") is -ENOENT (child status 0x%x)", status);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void test_errors(void)
{
	struct {
		struct mosaic_error err;
		char guard[64];
	} g;
	memset(&g, 0x5a, sizeof(g));

	is_int(mosaic_errorf(NULL, -ENOENT, "x %d", 1), -ENOENT,
	       "mosaic_errorf(NULL) returns code");
	is_int(mosaic_errorf(&g.err, -EINVAL, "%s:%d: bad key '%s'", "m.yaml", 12, "pakages"),
	       -EINVAL, "mosaic_errorf returns code");
	is_int(g.err.code, -EINVAL, "code stored");
	is_str(g.err.msg, "m.yaml:12: bad key 'pakages'", "message formatted");
	is_int(mosaic_error_prefix(&g.err, "loading %s", "manifest"), -EINVAL,
	       "mosaic_error_prefix returns the stored code");
	is_str(g.err.msg, "loading manifest: m.yaml:12: bad key 'pakages'", "prefix added");
	is_int(mosaic_error_prefix(NULL, "x"), 0, "mosaic_error_prefix(NULL) is 0");

	/* A message longer than the buffer is cut, not overflowed. */
	char big[3000];
	memset(big, 'm', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	mosaic_errorf(&g.err, -EIO, "%s", big);
	is_int(strlen(g.err.msg), sizeof(g.err.msg) - 1, "long message cut to the buffer");

	/* A long prefix on a long message: the prefix comes first, the whole stays in bounds. */
	char longp[2000];
	memset(longp, 'p', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	mosaic_error_prefix(&g.err, "%s", longp);
	size_t l = strnlen(g.err.msg, sizeof(g.err.msg));
	ok(l < sizeof(g.err.msg), "prefixed message is NUL-terminated inside the buffer (%zu)", l);
	ok(g.err.msg[0] == 'p' && strspn(g.err.msg, "p") >= 500,
	   "prefix kept at the start (%zu bytes of it)", strspn(g.err.msg, "p"));
	bool guard_ok = true;
	for (size_t i = 0; i < sizeof(g.guard); i++)
		if ((unsigned char)g.guard[i] != 0x5a)
			guard_ok = false;
	ok(guard_ok, "nothing written past the message buffer");

	/* A long prefix on a short message keeps the message's tail visible when it fits. */
	mosaic_errorf(&g.err, -EIO, "short");
	char mid[700];
	memset(mid, 'q', sizeof(mid) - 1);
	mid[sizeof(mid) - 1] = '\0';
	mosaic_error_prefix(&g.err, "%s", mid);
	l = strlen(g.err.msg);
	ok(l < sizeof(g.err.msg) && strncmp(g.err.msg + l - 7, ": short", 7) == 0,
	   "truncated prefix, separator and old message");
	is_int(g.err.code, -EIO, "code unchanged by prefixing");
}

/* ---- configuration ------------------------------------------------------------------------ */

static void test_config(void)
{
	_cleanup_free_ char *cfg = path_join(tmpdir, "config.json");
	const char *json = "{ \"store\": \"/srv/mosaic\", \"workers\": 4 }";
	write_file_atomic(cfg, json, strlen(json), 0644);

	setenv("MOSAIC_CONFIG", cfg, 1);
	unsetenv("MOSAIC_TEST_STORE");
	_cleanup_free_ char *a = mosaic_config_get("MOSAIC_TEST_STORE", "store", "/fallback");
	is_str(a, "/srv/mosaic", "config file value when the variable is unset");
	setenv("MOSAIC_TEST_STORE", "/env/store", 1);
	_cleanup_free_ char *b = mosaic_config_get("MOSAIC_TEST_STORE", "store", "/fallback");
	is_str(b, "/env/store", "environment wins over the config file");
	_cleanup_free_ char *c = mosaic_config_get(NULL, "workers", "/fallback");
	is_str(c, "/fallback", "a non-string setting falls back");
	_cleanup_free_ char *d = mosaic_config_get(NULL, "nothing", NULL);
	is_str(d, NULL, "no value and no fallback is NULL");
	unsetenv("MOSAIC_TEST_STORE");
	unsetenv("MOSAIC_CONFIG");

	setenv("MOSAIC_CACHE_DIR", "/c/mosaic", 1);
	_cleanup_free_ char *e = mosaic_cache_dir();
	is_str(e, "/c/mosaic", "$MOSAIC_CACHE_DIR");
	unsetenv("MOSAIC_CACHE_DIR");
	setenv("XDG_CACHE_HOME", "/xdg/", 1);
	_cleanup_free_ char *f = mosaic_cache_dir();
	is_str(f, "/xdg/mosaic", "$XDG_CACHE_HOME/mosaic");
	unsetenv("XDG_CACHE_HOME");
	setenv("HOME", "/home/u", 1);
	_cleanup_free_ char *g = mosaic_cache_dir();
	is_str(g, "/home/u/.cache/mosaic", "~/.cache/mosaic");
}

/* One reader of $SOURCE_DATE_EPOCH: unset and empty are "none", digits a date, the rest an
 * error rather than 0 or a part of the number. */
static void test_source_date_epoch(void)
{
	static const struct {
		const char *value;
		int r;
		int64_t epoch;
	} cases[] = {
	    {NULL, 0, -1},       {"", 0, -1},          {"0", 0, 0},
	    {"1700000000", 0, 1700000000}, {"abc", -EINVAL, -1}, {"12abc", -EINVAL, -1},
	    {" 12", -EINVAL, -1}, {"-5", -EINVAL, -1},  {"+5", -EINVAL, -1},
	    {"99999999999999999999", -EINVAL, -1},
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		if (cases[i].value)
			setenv("SOURCE_DATE_EPOCH", cases[i].value, 1);
		else
			unsetenv("SOURCE_DATE_EPOCH");
		struct mosaic_error err = {0};
		int64_t v = 42;
		int r = mosaic_source_date_epoch(&v, &err);
		is_int(r, cases[i].r, "%s", cases[i].value ? cases[i].value : "(unset)");
		is_int(v, cases[i].epoch, "its value");
		if (r < 0)
			ok(strstr(err.msg, "SOURCE_DATE_EPOCH") && strstr(err.msg, cases[i].value),
			   "the error names the variable and the value");
	}
	unsetenv("SOURCE_DATE_EPOCH");
}

static void test_rm_tree(void)
{
	_cleanup_free_ char *top = path_join(tmpdir, "rm");
	_cleanup_free_ char *deep = path_join(top, "a/b/c");
	_cleanup_free_ char *file = path_join(deep, "f");
	_cleanup_free_ char *link = path_join(top, "link");
	is_int(mkdir_p(deep, 0755), 0, "a tree to remove");
	is_int(write_file_atomic(file, "x", 1, 0400), 0, "with a read-only file");
	ok(symlink(tmpdir, link) == 0, "and a symlink out of it");
	is_int(chmod(deep, 0500), 0, "in a read-only directory");
	is_int(rm_tree(top), 0, "rm_tree removes it all");
	ok(access(top, F_OK) < 0 && errno == ENOENT, "the tree is gone");
	ok(access(tmpdir, F_OK) == 0, "what a symlink in it pointed to is not");
	is_int(rm_tree(top), 0, "a missing tree is nothing to remove");
}

/* ---- deb822 ------------------------------------------------------------------------------ */

static void test_deb822_modes(void)
{
	/* A description as a .deb's control has it: a first line with trailing blanks, indented
	 * and blank (" .") continuation lines, CRLF on one of them, a comment inside. */
	static const char text[] = "Package: x\n"
	                           "Description:   short  \n"
	                           "   indented  \n"
	                           " .\r\n"
	                           "# a comment\n"
	                           " more\t\n"
	                           "Empty:\n"
	                           "Folded:\n"
	                           "  first\n"
	                           "\n"
	                           "Next: paragraph\n";
	struct deb822 t = {0}, v = {0};
	struct mosaic_error err = {0};
	is_int(deb822_parse(text, strlen(text), &t, &err), 0, "deb822_parse trims");
	is_int(deb822_parse_mode(text, strlen(text), DEB822_VERBATIM, &v, &err), 0,
	       "deb822_parse_mode verbatim");
	is_int((int)t.n, 4, "four fields (the second paragraph is not read)");
	is_int((int)v.n, 4, "four fields verbatim too");
	is_str(deb822_get(&t, "description"), "short\nindented\n.\nmore",
	       "trimmed: every line trimmed, the comment skipped");
	is_str(deb822_get(&v, "Description"), "short  \n   indented  \n .\r\n more",
	       "verbatim: continuation lines as written, only the whole value trimmed");
	is_str(deb822_get(&v, "Package"), "x", "verbatim: a one-line value trimmed");
	is_str(deb822_get(&v, "Empty"), "", "verbatim: an empty value");
	is_str(deb822_get(&v, "Folded"), "first",
	       "verbatim: a value that starts on a continuation line, trimmed as a whole");
	is_str(deb822_get(&t, "Folded"), "\nfirst", "trimmed: the empty first line kept");
	deb822_clear(&t);
	deb822_clear(&v);

	static const char bad[] = " continuation first\nA: b\n";
	ok(deb822_parse_mode(bad, strlen(bad), DEB822_VERBATIM, &v, &err) == -EINVAL &&
	       strstr(err.msg, "continuation line before any field"),
	   "verbatim: a continuation line before any field is refused: %s", err.msg);
	static const char dup[] = "A: 1\na: 2\n";
	ok(deb822_parse_mode(dup, strlen(dup), DEB822_VERBATIM, &v, &err) == -EINVAL &&
	       strstr(err.msg, "duplicate field"),
	   "verbatim: a duplicate field is refused: %s", err.msg);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-common-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	test_path_normalise();
	test_path_join();
	test_sha256();
	test_is_sha256_hex();
	test_files();
	test_mkdir_p_empty();
	test_errors();
	test_config();
	test_source_date_epoch();
	test_rm_tree();
	test_deb822_modes();
	rm_tree(tmpdir);
	free(tmpdir);
	return done();
}
