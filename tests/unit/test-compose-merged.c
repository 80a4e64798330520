/* compose/build.c with package fragments over symlinked directories: dpkg's unpack rules (a
 * directory goes through a symlink to a directory, a symlink never replaces a directory) against
 * the overlayfs rules other fragments keep. Fragments are made from temp dirs, unsigned. */
#include "compose/compose.h"
#include "fragments/fragment.h"
#include "tap.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>

static char *tmpdir; /* made fresh by main, removed at the end */
static struct store *store;

/* One fragment input: digest and image path live as long as the test (freed at the end). */
struct frag {
	char digest[SHA256_HEX_LEN + 1];
	char *image;
};
static struct frag frags[16];
static size_t n_frags;

/* A tree spec: "d PATH MODE", "f PATH CONTENT", "l PATH TARGET", one per string. */
static struct compose_input make(const char *name, bool package, const char *const *spec)
{
	_cleanup_free_ char *root = xasprintf("%s/src-%s", tmpdir, name);
	mkdir(root, 0755);
	for (const char *const *s = spec; *s; s++) {
		char kind = (*s)[0];
		_cleanup_free_ char *line = xstrdup(*s + 2);
		char *arg = strchr(line, ' ');
		if (arg)
			*arg++ = 0;
		_cleanup_free_ char *p = path_join(root, line);
		if (kind == 'd')
			mkdir(p, strtol(arg, NULL, 8));
		else if (kind == 'l')
			(void)!symlink(arg, p);
		else
			write_file_atomic(p, arg, strlen(arg), 0644);
	}
	/* mkdir's mode goes through the umask; chmod sets what the spec says. */
	for (const char *const *s = spec; *s; s++)
		if ((*s)[0] == 'd') {
			_cleanup_free_ char *line = xstrdup(*s + 2);
			char *arg = strchr(line, ' ');
			*arg++ = 0;
			_cleanup_free_ char *p = path_join(root, line);
			chmod(p, strtol(arg, NULL, 8));
		}
	struct fragment_create_options o = {
	    .name = name,
	    .version = "1",
	    .kind = package ? FRAGMENT_PACKAGE : FRAGMENT_BASE,
	    .owner_set = true,
	};
	struct fragment_info info = {0};
	struct mosaic_error err = {0};
	struct frag *f = &frags[n_frags++];
	if (fragment_create(store, root, &o, &info, &err) < 0)
		diag("fragment_create %s: %s", name, err.msg);
	memcpy(f->digest, info.digest, sizeof(f->digest));
	fragment_info_clear(&info);
	f->image = store_object_path(store, f->digest, ".sqfs");
	rm_tree(root);
	return (struct compose_input){
	    .image_path = f->image, .digest = f->digest, .name = name, .package = package};
}

static struct compose_index *build(const struct compose_input *in, size_t n,
                                   struct compose_result *res)
{
	_cleanup_free_ char *out = path_join(tmpdir, "test.idx");
	struct mosaic_error err = {0};
	struct compose_index *idx = NULL;
	if (compose_index_build(in, n, NULL, out, res, &err) < 0 ||
	    compose_index_open(out, &idx, &err) < 0)
		diag("building the index: %s", err.msg);
	return idx;
}

/* The type letter of path in idx ('d', 'f', 'l', or '-' when missing). */
static char type_of(const struct compose_index *idx, const char *path)
{
	const struct compose_inode *i = compose_index_inode(idx, compose_index_resolve(idx, path));
	if (!i)
		return '-';
	return S_ISDIR(i->mode) ? 'd' : S_ISLNK(i->mode) ? 'l' : S_ISREG(i->mode) ? 'f' : '?';
}

static char *link_of(const struct compose_index *idx, const char *path)
{
	const struct compose_inode *i = compose_index_inode(idx, compose_index_resolve(idx, path));
	if (!i || !S_ISLNK(i->mode))
		return NULL;
	return xstrndup(compose_index_string(idx, i->data_off), i->data_len);
}

static uint32_t origin_of(const struct compose_index *idx, const char *path)
{
	const struct compose_inode *i = compose_index_inode(idx, compose_index_resolve(idx, path));
	return i ? i->fragment : UINT32_MAX - 1;
}

static const char *const merged_usr[] = {
    "d usr 0755",    "d usr/bin 0755",  "d usr/sbin 0755", "d usr/lib 0755",    "d usr/lib64 0755",
    "l bin usr/bin", "l sbin usr/sbin", "l lib usr/lib",   "l lib64 usr/lib64", NULL};

static void test_merged_usr(void)
{
	struct compose_input in[4];
	in[0] = make("merged-usr", false, merged_usr);
	/* A package as bookworm's are: bin/, lib/ and lib64/ at the top, some of usr/ too. */
	in[1] =
	    make("pkg-a", true,
	         (const char *const[]){"d bin 0700", "f bin/foo A", "d lib 0755", "d lib/sub 0755",
	                               "f lib/sub/x X", "d lib64 0755", "l lib64/ld /lib/sub/x",
	                               "d usr 0755", "d usr/bin 0755", "f usr/bin/bar BAR", NULL});
	/* Another package's bin/foo with other content: a conflict at its real path. */
	in[2] = make("pkg-b", true, (const char *const[]){"d bin 0755", "f bin/foo B", NULL});
	/* The same content through usr/bin: no conflict. */
	in[3] = make("pkg-c", true,
	             (const char *const[]){"d usr 0755", "d usr/bin 0755", "f usr/bin/foo B",
	                                   "d sbin 0755", "f sbin/tool T", NULL});
	struct compose_result res = {0};
	struct compose_index *idx = build(in, 4, &res);
	if (!ok(idx != NULL, "merged-usr composition builds"))
		return;
	_cleanup_free_ char *bin = link_of(idx, "/bin");
	is_str(bin, "usr/bin", "/bin stays the symlink to usr/bin");
	is_int(type_of(idx, "/usr/bin/foo"), 'f', "bin/foo landed in /usr/bin/foo");
	is_int(type_of(idx, "/usr/lib/sub/x"), 'f', "lib/sub/x landed in /usr/lib/sub/x");
	is_int(type_of(idx, "/usr/bin/bar"), 'f', "usr/bin/bar is where it was");
	is_int(type_of(idx, "/usr/sbin/tool"), 'f', "sbin/tool landed in /usr/sbin/tool");
	_cleanup_free_ char *ld = link_of(idx, "/usr/lib64/ld");
	is_str(ld, "/lib/sub/x", "a symlink inside lib64/ lands in /usr/lib64");
	is_int(type_of(idx, "/bin/foo"), '-', "nothing is below the symlink /bin in the index");
	const struct compose_inode *ub =
	    compose_index_inode(idx, compose_index_resolve(idx, "/usr/bin"));
	is_int(ub ? ub->mode & 07777 : 0, 0755,
	       "/usr/bin keeps its mode (the package's bin/ is 0700)");
	is_int(origin_of(idx, "/usr/bin/foo"), 3, "the highest package's foo shows");
	is_int(res.n_conflicts, 1, "one conflict (pkg-a's and pkg-b's foo)");
	if (res.n_conflicts >= 1) {
		is_str(res.conflicts[0].path, "/usr/bin/foo", "the conflict names the real path");
		ok(res.conflicts[0].lower == 1 && res.conflicts[0].upper == 2,
		   "between pkg-a and pkg-b (%u, %u)", res.conflicts[0].lower,
		   res.conflicts[0].upper);
	}
	compose_result_clear(&res);
	compose_index_close(idx);

	/* Without the merged-usr base, bin/ is a plain directory, as before. */
	idx = build(in + 1, 1, &res);
	is_int(idx ? type_of(idx, "/bin") : 0, 'd', "without merged /usr, /bin is a directory");
	is_int(idx ? type_of(idx, "/bin/foo") : 0, 'f', "... holding foo");
	compose_index_close(idx);
	compose_result_clear(&res);

	/* The same package as a non-package fragment: overlayfs rules, the directory wins. */
	struct compose_input over[2] = {in[0], in[1]};
	over[1].package = false;
	idx = build(over, 2, &res);
	is_int(idx ? type_of(idx, "/bin") : 0, 'd',
	       "non-package fragments: bin/ replaces the link");
	is_int(idx ? type_of(idx, "/usr/bin/foo") : 0, '-', "... and nothing lands in /usr/bin");
	compose_index_close(idx);
	compose_result_clear(&res);
}

static void test_resolution(void)
{
	/* 40 symlinks in a chain resolve (the kernel's MAXSYMLINKS), 41 do not. */
	const char *spec[128] = {"d data 0755",         "d srv 0755",
	                         "l abs /srv/../data",  "l up ../../../data",
	                         "l rel ./srv/../data", "l loop1 loop2",
	                         "l loop2 loop1",       "l dangling nowhere",
	                         "f plain P",           "l tofile plain",
	                         "d keep 0755",         "f keep/k K",
	                         "l via abs/../srv",    NULL};
	size_t n = 0;
	while (spec[n])
		n++;
	char *owned[128];
	size_t no = 0;
	for (int i = 1; i <= 40; i++)
		spec[n++] = owned[no++] =
		    i < 40 ? xasprintf("l s%d s%d", i, i + 1) : xasprintf("l s%d data", i);
	for (int i = 1; i <= 41; i++)
		spec[n++] = owned[no++] =
		    i < 41 ? xasprintf("l t%d t%d", i, i + 1) : xasprintf("l t%d data", i);
	spec[n] = NULL;
	struct compose_input in[2];
	in[0] = make("links", false, spec);
	for (size_t i = 0; i < no; i++)
		free(owned[i]);
	in[1] = make("pkg-r", true,
	             (const char *const[]){
	                 "d abs 0755",       "f abs/f1 1",      "d up 0755",     "f up/f2 2",
	                 "d rel 0755",       "f rel/f3 3",      "d loop1 0755",  "f loop1/f4 4",
	                 "d dangling 0755",  "f dangling/f5 5", "d tofile 0755", "f tofile/f6 6",
	                 "d s1 0755",        "f s1/f7 7",       "d t1 0755",     "f t1/f8 8",
	                 "l keep elsewhere", "d via 0755",      "f via/f9 9",    NULL});
	struct compose_result res = {0};
	struct compose_index *idx = build(in, 2, &res);
	if (!ok(idx != NULL, "resolution composition builds"))
		return;
	is_int(type_of(idx, "/data/f1"), 'f', "an absolute target with .. resolves");
	is_int(type_of(idx, "/data/f2"), 'f', "a relative target cannot climb above the root");
	is_int(type_of(idx, "/data/f3"), 'f', "./ and .. in a relative target");
	is_int(type_of(idx, "/srv/f9"), 'f', ".. after a followed symlink is the target's parent");
	is_int(type_of(idx, "/loop1"), 'd', "a symlink loop is replaced by the directory");
	is_int(type_of(idx, "/loop1/f4"), 'f', "... which holds the file");
	is_int(type_of(idx, "/dangling/f5"), 'f', "a dangling symlink is replaced");
	is_int(type_of(idx, "/tofile/f6"), 'f', "a symlink to a file is replaced");
	is_int(type_of(idx, "/plain"), 'f', "... and the file stays");
	is_int(type_of(idx, "/data/f7"), 'f', "40 symlinks in a chain are followed");
	is_int(type_of(idx, "/t1"), 'd', "41 are not: the directory replaces the link");
	is_int(type_of(idx, "/t1/f8"), 'f', "... and holds the file");
	is_int(type_of(idx, "/keep"), 'd', "a package's symlink does not replace a directory");
	is_int(type_of(idx, "/keep/k"), 'f', "... whose content stays");
	is_int(res.n_conflicts, 0, "no conflicts");
	compose_index_close(idx);
	compose_result_clear(&res);

	/* A non-package symlink still replaces the directory. */
	struct compose_input over[2] = {
	    in[0], make("cfg-r", false, (const char *const[]){"l keep elsewhere", NULL})};
	idx = build(over, 2, &res);
	is_int(idx ? type_of(idx, "/keep") : 0, 'l', "non-package: the symlink replaces /keep");
	compose_index_close(idx);
	compose_result_clear(&res);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	tmpdir = xasprintf("%s/mosaic-test-compose-merged-XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 99;
	}
	struct mosaic_error err = {0};
	_cleanup_free_ char *sp = path_join(tmpdir, "store");
	/* The index cache and verification cache stay inside the temp dir too. */
	_cleanup_free_ char *cache = path_join(tmpdir, "cache");
	setenv("MOSAIC_CACHE_DIR", cache, 1);
	if (store_open(sp, true, &store, &err) < 0) {
		diag("store_open: %s", err.msg);
		return 99;
	}
	test_merged_usr();
	test_resolution();
	for (size_t i = 0; i < n_frags; i++)
		free(frags[i].image);
	store_free(store);
	rm_tree(tmpdir);
	free(tmpdir);
	return done();
}
