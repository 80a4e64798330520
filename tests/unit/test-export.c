/* export/reader.c and export/tar.c without a mount: the walk's order and attributes over an index
 * of two small unsigned fragments made from temp dirs, hard-link identity, content, paths, an
 * upper in overlayfs's format (whiteout, opaque directory, type change; when root, who alone can
 * make whiteouts and trusted.* markers), and a tar written twice to the same bytes. */
#include "compose/compose.h"
#include "export/internal.h"
#include "fragments/fragment.h"
#include "tap.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

static char *tmpdir;
static struct store *store;

static void put(const char *root, const char *path, const char *content, mode_t mode)
{
	_cleanup_free_ char *p = path_join(root, path);
	_cleanup_free_ char *dir = xstrndup(p, strrchr(p, '/') - p);
	mkdir_p(dir, 0755);
	write_file_atomic(p, content, strlen(content), mode);
	chmod(p, mode);
}

static char *make(const char *name, void (*fill)(const char *root))
{
	_cleanup_free_ char *root = xasprintf("%s/src-%s", tmpdir, name);
	mkdir(root, 0755);
	fill(root);
	struct fragment_create_options o = {
	    .name = name, .version = "1", .kind = FRAGMENT_BASE, .source_date_epoch = 1000};
	struct fragment_info info = {0};
	struct mosaic_error err = {0};
	if (fragment_create(store, root, &o, &info, &err) < 0)
		diag("fragment_create %s: %s", name, err.msg);
	char *image = store_object_path(store, info.digest, ".sqfs");
	fragment_info_clear(&info);
	return image;
}

static void fill_base(const char *root)
{
	put(root, "etc/passwd", "root:x:0:0::/root:/bin/sh\nbin:x:2:2::/:/bin/false\n", 0644);
	put(root, "etc/group", "root:x:0:\nbin:x:2:\n", 0644);
	put(root, "etc/b", "bee\n", 0600);
	put(root, "etc/a", "a\n", 0644);
	put(root, "etc/gone", "gone\n", 0644);
	put(root, "zdir/sub/file", "deep\n", 0644);
	put(root, "zdir/keep", "keep\n", 0644);
	put(root, "hl/one", "linked\n", 0640);
	_cleanup_free_ char *one = path_join(root, "hl/one"), *two = path_join(root, "hl/two");
	(void)!link(one, two);
	_cleanup_free_ char *l = path_join(root, "etc/link");
	(void)!symlink("a", l);
	_cleanup_free_ char *a = path_join(root, "etc/a");
	lsetxattr(a, "user.zz", "2", 1, 0);
	lsetxattr(a, "user.aa", "1", 1, 0);
	if (getuid() == 0) {
		_cleanup_free_ char *dev = path_join(root, "dev-null");
		mknod(dev, S_IFCHR | 0666, makedev(1, 3));
		chown(a, 2, 2);
	}
}

static void fill_top(const char *root)
{
	put(root, "etc/b", "bee v2\n", 0644);
	put(root, "etc/c", "c\n", 0644);
}

struct seen {
	char paths[64][64];
	mode_t modes[64];
	uint64_t link_ids[64];
	size_t n;
	char xattr_order[64];
	uid_t uid_a;
};

static int record(void *ctx, const struct export_entry *e)
{
	struct seen *s = ctx;
	if (s->n < 64) {
		snprintf(s->paths[s->n], sizeof(s->paths[0]), "%s", e->path);
		s->modes[s->n] = e->mode;
		s->link_ids[s->n] = e->link_id;
		s->n++;
	}
	if (strcmp(e->path, "etc/a") == 0) {
		s->xattr_order[0] = 0;
		for (size_t i = 0; i < e->n_xattrs; i++)
			strncat(s->xattr_order, e->xattrs[i].name, 20);
		s->uid_a = e->uid;
	}
	return 0;
}

static const char *joined(const struct seen *s)
{
	static char buf[2048];
	buf[0] = 0;
	for (size_t i = 0; i < s->n; i++) {
		strcat(buf, s->paths[i]);
		strcat(buf, " ");
	}
	return buf;
}

static ssize_t find(const struct seen *s, const char *path)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->paths[i], path) == 0)
			return i;
	return -1;
}

static int count_sink(void *ctx, const void *buf, size_t len)
{
	(void)buf;
	*(size_t *)ctx += len;
	return 0;
}

static char *tar_hash(struct export_reader *r)
{
	int fd = memfd_create("tar", MFD_CLOEXEC);
	struct export_tar_result res;
	struct mosaic_error err = {0};
	int e = export_tar(r, fd, 5000, &res, &err);
	close(fd);
	if (e < 0) {
		diag("export_tar: %s", err.msg);
		return xstrdup("");
	}
	return xstrdup(res.sha256);
}

static void test_index_only(struct compose_index *idx, char *const *images)
{
	struct export_reader *r;
	struct mosaic_error err = {0};
	const struct export_reader_options o = {.idx = idx, .images = images};
	if (!ok(export_reader_open(&o, &r, &err) == 0, "reader opens: %s", err.msg))
		return;
	struct seen s = {0};
	ok(export_walk(r, record, &s, &err) == 0, "walk: %s", err.msg);
	const bool root = getuid() == 0;
	is_str(joined(&s),
	       root ? " dev-null etc etc/a etc/b etc/c etc/gone etc/group etc/link etc/passwd hl "
	              "hl/one hl/two zdir zdir/keep zdir/sub zdir/sub/file "
	            : " etc etc/a etc/b etc/c etc/gone etc/group etc/link etc/passwd hl hl/one "
	              "hl/two zdir zdir/keep zdir/sub zdir/sub/file ",
	       "depth-first, parents first, names sorted");
	ssize_t one = find(&s, "hl/one"), two = find(&s, "hl/two"), a = find(&s, "etc/a");
	ok(one >= 0 && two >= 0 && s.link_ids[one] && s.link_ids[one] == s.link_ids[two],
	   "hard links share a link id");
	ok(a >= 0 && s.link_ids[a] == 0, "a single link has none");
	is_str(s.xattr_order, "user.aauser.zz", "xattrs sorted by name");
	if (root)
		is_int(s.uid_a, 2, "owner from the fragment");

	char *text = NULL;
	size_t len = 0;
	ok(export_read_path(r, "etc/b", 100, &text, &len, &err) == 0 &&
	       strcmp(text, "bee v2\n") == 0,
	   "the later fragment's content wins");
	free(text);
	is_int(export_read_path(r, "etc/nothing", 100, &text, &len, &err), -ENOENT,
	       "a missing path is -ENOENT");
	is_int(export_read_path(r, "etc/b", 3, &text, &len, &err), -EFBIG, "max is kept");

	_cleanup_free_ char *h1 = tar_hash(r);
	_cleanup_free_ char *h2 = tar_hash(r);
	ok(*h1 && strcmp(h1, h2) == 0, "the same view gives the same tar");
	export_reader_free(r);
}

static void mkwhiteout(const char *upper, const char *path)
{
	_cleanup_free_ char *p = path_join(upper, path);
	mknod(p, S_IFCHR | 0, makedev(0, 0));
}

static void test_upper(struct compose_index *idx, char *const *images)
{
	_cleanup_free_ char *upper = path_join(tmpdir, "upper");
	mkdir(upper, 0755);
	_cleanup_free_ char *etc = path_join(upper, "etc");
	mkdir(etc, 0755);
	mkwhiteout(upper, "etc/gone");
	mkwhiteout(upper, "etc/never-was"); /* over nothing: changes nothing */
	put(upper, "etc/new", "new\n", 0644);
	put(upper, "etc/a", "a, changed\n", 0644);
	_cleanup_free_ char *zdir = path_join(upper, "zdir");
	mkdir(zdir, 0755);
	lsetxattr(zdir, "trusted.overlay.opaque", "y", 1, 0);
	put(upper, "zdir/fresh", "fresh\n", 0644);
	put(upper, "hl", "a file over a directory\n", 0644);

	struct export_reader *r;
	struct mosaic_error err = {0};
	const struct export_reader_options o = {.idx = idx, .images = images, .upper = upper};
	if (!ok(export_reader_open(&o, &r, &err) == 0, "reader with an upper opens: %s", err.msg))
		return;
	struct seen s = {0};
	ok(export_walk(r, record, &s, &err) == 0, "walk with the upper: %s", err.msg);
	is_str(joined(&s),
	       " dev-null etc etc/a etc/b etc/c etc/group etc/link etc/new etc/passwd hl zdir "
	       "zdir/fresh ",
	       "whiteouts, the opaque directory and the file over a directory applied");
	ssize_t hl = find(&s, "hl");
	ok(hl >= 0 && S_ISREG(s.modes[hl]), "hl is the upper's file");
	char *text = NULL;
	ok(export_read_path(r, "etc/a", 100, &text, NULL, &err) == 0 &&
	       strcmp(text, "a, changed\n") == 0,
	   "content from the upper");
	free(text);
	is_int(export_read_path(r, "etc/gone", 100, &text, NULL, &err), -ENOENT,
	       "a whited-out path is gone");
	size_t bytes = 0;
	struct export_entry e = {.path = "zdir/fresh", .mode = S_IFREG | 0644, .size = 6};
	_cleanup_free_ char *up = path_join(upper, "zdir/fresh");
	e.upper_path = up;
	ok(export_read_content(r, &e, count_sink, &bytes, &err) == 0 && bytes == 6,
	   "export_read_content reads the upper's file");
	e.size = 7;
	ok(export_read_content(r, &e, count_sink, &bytes, &err) < 0,
	   "a size that does not match is an error");
	export_reader_free(r);
}

/* The raw disk's pure parts: sizes, size parsing, UUIDs derived from a seed. */
static void test_raw_pure(void)
{
	uint64_t v = 0;
	ok(export_parse_size("512M", &v) == 0 && v == 512 * EXPORT_MIB, "512M");
	ok(export_parse_size("2GiB", &v) == 0 && v == 2048 * EXPORT_MIB, "2GiB");
	ok(export_parse_size("4096", &v) == 0 && v == 4096, "plain bytes");
	ok(export_parse_size("1X", &v) < 0 && export_parse_size("-1M", &v) < 0 &&
	       export_parse_size("", &v) < 0 && export_parse_size("99999999999T", &v) < 0,
	   "bad sizes are refused");

	uint8_t seed[SHA256_LEN] = {1, 2, 3}, a[16], b[16], c[16];
	char s[37];
	export_derive_uuid(seed, "root", a);
	export_derive_uuid(seed, "root", b);
	export_derive_uuid(seed, "esp", c);
	export_uuid_string(a, s);
	ok(memcmp(a, b, 16) == 0 && memcmp(a, c, 16) != 0, "UUIDs: one per seed and label");
	ok(strlen(s) == 36 && s[14] == '4' && strchr("89ab", s[19]), "a version 4 UUID: %s", s);
	seed[31] ^= 1;
	export_derive_uuid(seed, "root", b);
	ok(memcmp(a, b, 16) != 0, "another seed, another UUID");

	struct export_fs_usage empty = {0}, u = {.inodes = 10000,
	                                         .blocks = 50000,
	                                         .dirs = 800,
	                                         .dir_bytes = 10000 * 24};
	uint64_t b0, i0, b1, i1, b2, i2;
	export_ext4_size(&empty, 0, &b0, &i0);
	export_ext4_size(&u, 0, &b1, &i1);
	export_ext4_size(&u, 256 * EXPORT_MIB, &b2, &i2);
	ok(b0 >= 4096, "16 MiB at least (a journal fits): %ju blocks", (uintmax_t)b0);
	ok(b1 % 256 == 0 && b2 % 256 == 0, "whole MiBs");
	ok(b1 > u.blocks + u.blocks / 20 && i1 > u.inodes, "content, reserve and inodes fit: %ju",
	   (uintmax_t)b1);
	ok(b2 >= b1 + 256 * EXPORT_MIB / EXPORT_EXT4_BLOCK && i2 > i1,
	   "free space adds blocks and inodes");
}

/* ---- export_squashfs: the view as one image, read back with fragment_walk ---------------- */

struct sq_seen {
	struct seen s;
	uint32_t ino_one, ino_two;
	uint64_t id_b, id_big;
	int64_t mtime_max;
};

static int sq_record(void *ctx, const struct fragment_entry *e)
{
	struct sq_seen *q = ctx;
	struct export_entry x = {.path = e->path, .mode = e->mode};
	record(&q->s, &x);
	if (strcmp(e->path, "hl/one") == 0)
		q->ino_one = e->inode_number;
	if (strcmp(e->path, "hl/two") == 0)
		q->ino_two = e->inode_number;
	if (strcmp(e->path, "etc/b") == 0)
		q->id_b = e->inode_id;
	if (strcmp(e->path, "big") == 0)
		q->id_big = e->inode_id;
	if (e->mtime > q->mtime_max)
		q->mtime_max = e->mtime;
	return 0;
}

static char *file_hash(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	char hex[SHA256_HEX_LEN + 1] = "";
	if (fd < 0 || sha256_fd(fd, hex) < 0)
		return xstrdup("");
	return xstrdup(hex);
}

static void fill_big(const char *root)
{
	/* past the writer's 16 MiB memory buffer: its content goes through the spill file */
	size_t n = (17u << 20) + 123;
	_cleanup_free_ char *data = xmalloc(n + 1);
	for (size_t i = 0; i < n; i++)
		data[i] = (char)(i * 7 / 3);
	data[n] = 0;
	_cleanup_free_ char *p = path_join(root, "big");
	write_file_atomic(p, data, n, 0644);
}

static void test_squashfs(struct compose_index *idx, char *const *images)
{
	struct export_reader *r;
	struct mosaic_error err = {0};
	const struct export_reader_options o = {.idx = idx, .images = images};
	if (!ok(export_reader_open(&o, &r, &err) == 0, "reader opens: %s", err.msg))
		return;
	struct seen walked = {0};
	export_walk(r, record, &walked, &err);
	_cleanup_free_ char *p1 = path_join(tmpdir, "view1.sqfs");
	_cleanup_free_ char *p2 = path_join(tmpdir, "view2.sqfs");
	struct export_squashfs_result res;
	struct export_squashfs_options so = {.path = p1, .source_date_epoch = 500, .mtime = 500};
	ok(export_squashfs(r, &so, &res, &err) == 0, "export_squashfs: %s", err.msg);
	is_int(res.entries, walked.n, "every entry of the view");
	so.path = p2;
	export_squashfs(r, &so, &res, &err);
	_cleanup_free_ char *h1 = file_hash(p1), *h2 = file_hash(p2);
	ok(*h1 && strcmp(h1, h2) == 0, "the same view gives the same squashfs");

	struct sq_seen q = {0};
	ok(fragment_walk(p1, sq_record, &q, &err) == 0, "fragment_walk reads it: %s", err.msg);
	_cleanup_free_ char *want = xstrdup(joined(&walked));
	is_str(joined(&q.s), want, "the same paths in the same order");
	ok(q.ino_one && q.ino_one == q.ino_two, "hard links are one inode");
	is_int(q.mtime_max, 500, "mtimes clamped to the epoch");
	struct fragment_image *im;
	char buf[16] = "";
	if (fragment_image_open(p1, &im, &err) == 0) {
		ssize_t n = fragment_image_read(im, q.id_b, 0, buf, sizeof(buf) - 1);
		ok(n == 7 && strcmp(buf, "bee v2\n") == 0, "content of the winning fragment");
		fragment_image_close(im);
	}
	export_reader_free(r);

	/* a big file goes through the spill file */
	char *big = make("big", fill_big);
	const char *slash = strrchr(big, '/');
	struct compose_input in = {
	    .image_path = big, .digest = xstrndup(slash + 1, SHA256_HEX_LEN), .name = "big"};
	_cleanup_free_ char *ip = path_join(tmpdir, "big.idx");
	struct compose_index *bidx = NULL;
	char *bimages[1] = {big};
	const struct export_reader_options bo = {.images = bimages};
	if (compose_index_build(&in, 1, NULL, ip, NULL, &err) == 0 &&
	    compose_index_open(ip, &bidx, &err) == 0) {
		struct export_reader_options bo2 = bo;
		bo2.idx = bidx;
		if (export_reader_open(&bo2, &r, &err) == 0) {
			so.path = p1;
			ok(export_squashfs(r, &so, &res, &err) == 0, "big: %s", err.msg);
			is_int(res.content_bytes, (17u << 20) + 123, "all of the big file");
			struct sq_seen qb = {0};
			fragment_walk(p1, sq_record, &qb, &err);
			if (fragment_image_open(p1, &im, &err) == 0) {
				char tail[4] = "";
				size_t at = (17u << 20) + 120;
				ssize_t n = fragment_image_read(im, qb.id_big, at, tail, 3);
				ok(n == 3 && tail[0] == (char)(at * 7 / 3) &&
				       tail[2] == (char)((at + 2) * 7 / 3),
				   "its end is right");
				fragment_image_close(im);
			}
			export_reader_free(r);
		}
		compose_index_close(bidx);
	} else
		diag("big index: %s", err.msg);
	free((char *)in.digest);
	free(big);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-export-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	struct mosaic_error err = {0};
	test_raw_pure();
	_cleanup_free_ char *sp = path_join(tmpdir, "store");
	_cleanup_free_ char *cache = path_join(tmpdir, "cache");
	setenv("MOSAIC_CACHE_DIR", cache, 1);
	if (store_open(sp, true, &store, &err) < 0) {
		diag("store_open: %s", err.msg);
		return 99;
	}
	char *images[2] = {make("base", fill_base), make("top", fill_top)};
	struct compose_input in[2];
	for (int i = 0; i < 2; i++) {
		const char *slash = strrchr(images[i], '/');
		in[i] = (struct compose_input){.image_path = images[i],
		                               .digest = xstrndup(slash + 1, SHA256_HEX_LEN),
		                               .name = i ? "top" : "base"};
	}
	_cleanup_free_ char *ip = path_join(tmpdir, "test.idx");
	struct compose_index *idx = NULL;
	if (compose_index_build(in, 2, NULL, ip, NULL, &err) < 0 ||
	    compose_index_open(ip, &idx, &err) < 0) {
		diag("index: %s", err.msg);
		return 99;
	}
	test_index_only(idx, images);
	test_squashfs(idx, images);
	if (getuid() == 0)
		test_upper(idx, images);
	else
		diag("not root: the upper (whiteouts, trusted.overlay.opaque) is not tested");
	compose_index_close(idx);
	for (int i = 0; i < 2; i++) {
		free((char *)in[i].digest);
		free(images[i]);
	}
	store_free(store);
	rm_tree(tmpdir);
	free(tmpdir);
	return done();
}
