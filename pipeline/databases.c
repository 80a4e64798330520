/* pipeline/: the generated fragments of a build: the merged-/usr links lowest, the package
 * databases (dpkg's, and rpm's for RPM packages) over the packages. Each is made once and found
 * again by what it is made from. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>

/* A generated fragment as the lock's fragments list records it. */
static json_object *lock_entry(const char *role, const char *source, const char *digest)
{
	json_object *e = json_object_new_object();
	json_object_object_add(e, "role", json_object_new_string(role));
	json_object_object_add(e, "source", json_object_new_string(source));
	json_object_object_add(e, "digest", json_object_new_string(digest));
	return e;
}

/* Debian: the dpkg database of the packages as one more fragment, recorded in the lock with
 * role "database" and, as its source, the key of the package list it was made from. */
int step_dpkg_database(struct build *b, struct mosaic_error *err)
{
	if (b->rs.type != REPO_DEB || b->lock.n_packages == 0)
		return 0;
	_cleanup_free_ const char **digests = pipeline_package_digests(&b->lock);
	char key[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	bool made = false;
	double t0 = now_s();
	compose_dpkg_key(digests, b->lock.n_packages, b->lock.arch, key);
	int r = compose_dpkg_fragment(b->store, NULL, digests, b->lock.n_packages, b->lock.arch,
	                              b->sign_key, digest, &made, err);
	if (r < 0)
		return mosaic_error_prefix(err, "the dpkg database");
	pipeline_say(b->ev, PIPELINE_INFO, "databases", "dpkg database: %.12s %s in %.2f s", digest,
	             made ? "made" : "already in the store", now_s() - t0);
	json_object_array_add(b->lock.fragments, lock_entry("database", key, digest));
	return 0;
}

/* RPM packages among the fragments: their rpm database as one more fragment, recorded in the
 * lock with role "rpm-database" and, as its source, the key of the candidates it was made from.
 * Nothing when no fragment is an RPM package. */
int step_rpm_database(struct build *b, struct mosaic_error *err)
{
	size_t n;
	_cleanup_free_ const char **digests = pipeline_rpm_candidates(&b->lock, &n);
	char key[SHA256_HEX_LEN + 1], digest[SHA256_HEX_LEN + 1];
	bool made = false;
	double t0 = now_s();
	if (n == 0)
		return 0;
	const char *dbpath = pipeline_rpm_dbpath(&b->lock);
	compose_rpm_key(digests, n, dbpath, key);
	int r = compose_rpm_fragment(b->store, NULL, digests, n, dbpath, b->lock.arch, b->sign_key,
	                             digest, &made, err);
	if (r < 0)
		return mosaic_error_prefix(err, "the rpm database");
	if (!*digest)
		return 0;
	pipeline_say(b->ev, PIPELINE_INFO, "databases", "rpm database: %.12s %s in %.2f s", digest,
	             made ? "made" : "already in the store", now_s() - t0);
	json_object_array_add(b->lock.fragments, lock_entry("rpm-database", key, digest));
	return 0;
}

/* What debootstrap's setup_merged_usr links into usr/ on this (Debian) architecture. */
static const char *const *merged_usr_dirs(const char *arch)
{
	static const struct {
		const char *arch; /* an fnmatch pattern */
		const char *const dirs[7];
	} table[] = {
	    {"amd64", {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}},
	    {"i386", {"bin", "sbin", "lib", "lib64", "libx32"}},
	    {"mips", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"mipsel", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"mips64*", {"bin", "sbin", "lib", "lib32", "lib64", "libo32"}},
	    {"mipsn32*", {"bin", "sbin", "lib", "lib32", "lib64", "libo32"}},
	    {"loongarch64*", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"powerpc", {"bin", "sbin", "lib", "lib64"}},
	    {"ppc64", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"ppc64el", {"bin", "sbin", "lib", "lib64"}},
	    {"s390x", {"bin", "sbin", "lib", "lib32"}},
	    {"sparc", {"bin", "sbin", "lib", "lib64"}},
	    {"sparc64", {"bin", "sbin", "lib", "lib32", "lib64"}},
	    {"x32", {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}},
	    /* RPM's names for 64-bit architectures: Fedora's filesystem package links lib64. */
	    {"x86_64", {"bin", "sbin", "lib", "lib64"}},
	    {"aarch64", {"bin", "sbin", "lib", "lib64"}},
	};
	static const char *const plain[] = {"bin", "sbin", "lib", NULL};
	for (size_t i = 0; i < ARRAY_SIZE(table); i++)
		if (fnmatch(table[i].arch, arch, 0) == 0)
			return table[i].dirs;
	return plain;
}

static int zero_time_visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st, (void)flag, (void)f;
	static const struct timespec zero[2] = {{0, 0}, {0, 0}};
	return utimensat(AT_FDCWD, path, zero, AT_SYMLINK_NOFOLLOW) < 0 ? -1 : 0;
}

/* Makes the merged-/usr tree under root: usr/ and its directories 0755, the links beside. */
static int merged_usr_tree(const char *root, void *ctx, struct mosaic_error *err)
{
	_cleanup_free_ char *usr = path_join(root, "usr");
	const char *const *dirs = merged_usr_dirs(ctx);
	if (chmod(root, 0755) < 0 || mkdir(usr, 0755) < 0 || chmod(usr, 0755) < 0)
		return mosaic_errorf(err, -errno, "%s: %s", usr, strerror(errno));
	for (size_t i = 0; dirs[i]; i++) {
		_cleanup_free_ char *d = path_join(usr, dirs[i]);
		_cleanup_free_ char *l = path_join(root, dirs[i]);
		_cleanup_free_ char *target = xasprintf("usr/%s", dirs[i]);
		if (mkdir(d, 0755) < 0 || chmod(d, 0755) < 0 || symlink(target, l) < 0)
			return mosaic_errorf(err, -errno, "%s: %s", l, strerror(errno));
	}
	if (nftw(root, zero_time_visit, 16, FTW_PHYS) != 0)
		return mosaic_errorf(err, -errno, "%s: setting times: %s", root, strerror(errno));
	return 0;
}

/* The base fragment "merged-usr": /bin, /sbin, /lib, ... as symlinks into usr/ as debootstrap
 * makes them, for the packages to unpack through (compose follows dpkg there). Root-owned, every
 * time 0: one architecture always gives the same fragment, cached by architecture. Recorded
 * first in the lock's fragments, with role "merged-usr" and the architecture as its source. */
int step_merged_usr(struct build *b, struct mosaic_error *err)
{
	if (!model_bool(b->model, "merged_usr", false))
		return 0;
	_cleanup_free_ char *key = xasprintf("1-%s", b->lock.arch);
	char digest[SHA256_HEX_LEN + 1] = "";
	bool made = false;
	double t0 = now_s();
	if (!compose_generated_find(b->store, "merged-usr", key, digest)) {
		const struct compose_generated g = {
		    .name = "merged-usr",
		    .version = "1",
		    .arch = b->lock.arch,
		    .kind = FRAGMENT_BASE,
		    .sign_key = b->sign_key,
		    .epoch = 0,
		    .fill = merged_usr_tree,
		    .ctx = b->lock.arch,
		};
		if (compose_generated_make(b->store, &g, digest, err) < 0)
			return mosaic_error_prefix(err, "the merged-usr fragment");
		struct mosaic_error cerr = {0};
		if (compose_generated_remember("merged-usr", key, digest, &cerr) < 0)
			pipeline_say(b->ev, PIPELINE_WARNING, "merged-usr", "%s", cerr.msg);
		made = true;
	}
	pipeline_say(b->ev, PIPELINE_INFO, "merged-usr", "merged /usr: %.12s %s in %.2f s", digest,
	             made ? "made" : "already in the store", now_s() - t0);
	json_object *list = json_object_new_array();
	json_object_array_add(list, lock_entry("merged-usr", b->lock.arch, digest));
	for (size_t i = 0; b->lock.fragments && i < json_object_array_length(b->lock.fragments);
	     i++)
		json_object_array_add(
		    list, json_object_get(json_object_array_get_idx(b->lock.fragments, i)));
	json_object_put(b->lock.fragments);
	b->lock.fragments = list;
	return 0;
}
