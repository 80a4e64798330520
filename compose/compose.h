/* compose/: an ordered list of fragments becomes one composition index (docs/formats.md):
 * overlay rules as kernel overlayfs applies them, conflicts, and the mmap-able index reader
 * that answers every metadata question without opening a fragment. */
#pragma once

#include "common/common.h"

#define COMPOSE_INDEX_VERSION 1
/* Bumped when the same fragments would merge into another tree (2: dpkg's directory rules). */
#define COMPOSE_RULES_VERSION 2
#define COMPOSE_ROOT_INO      1
#define COMPOSE_NO_FRAGMENT   UINT32_MAX

/* On-disk records, little-endian, as the index file stores them. */
struct compose_inode {
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	int64_t mtime;
	uint32_t rdev;       /* major << 20 | minor (the kernel's new_encode_dev would not fit) */
	uint32_t fragment;   /* index into the fragment table, COMPOSE_NO_FRAGMENT if none */
	uint64_t frag_inode; /* inode_id inside that fragment (fragment_file_open takes it) */
	uint32_t parent;     /* directories: the parent's ino (the root's is itself) */
	uint32_t data_off;   /* symlinks: target in the string table; dirs: first dirent; */
	uint32_t data_len;   /* regular files of a dev directory: their path in it (else 0) */
	uint32_t xattr_first, xattr_count;
	uint32_t mtime_nsec; /* files of a live dev directory; 0 for images (whole seconds) */
};

struct compose_dirent {
	uint32_t name_off, name_len;
	uint32_t ino;
	uint32_t reserved;
};

struct compose_xattr {
	uint32_t name_off, name_len;
	uint32_t value_off, value_len;
};

/* One input fragment, lowest first. */
struct compose_input {
	const char *image_path;
	const char *digest; /* 64 hex */
	const char *name;
	/* kind package: same-path regular files with other content are conflicts, and directories
	 * merge as dpkg unpacks them (through symlinks to directories; docs/formats.md) */
	bool package;
	/* image_path is a directory served live (a dev fragment): walked as it is now, each
	 * regular file recording its path in it */
	bool dev;
};

struct compose_conflict {
	char *path;
	uint32_t lower, upper; /* input indices */
};

struct compose_result {
	uint32_t inodes, directories;
	uint64_t dirents;
	struct compose_conflict *conflicts;
	size_t n_conflicts;
};
void compose_result_clear(struct compose_result *r);

struct compose_build_options {
	bool strict; /* a conflict fails the build (-EEXIST) and err names the first ones */
	/* Called after each fragment is merged (may be NULL): fragments done of n, and the
	 * entries the view has so far. */
	void (*progress)(size_t done, size_t n, uint64_t entries, void *data);
	void *data;
};
/* Builds the index for the inputs into out_path (atomically); o may be NULL (the defaults). */
int compose_index_build(const struct compose_input *in, size_t n,
                        const struct compose_build_options *o, const char *out_path,
                        struct compose_result *res, struct mosaic_error *err);

/* ---- reading an index -------------------------------------------------------------------- */

struct compose_index;
/* Maps path and checks magic, version, checksum and that every offset stays in bounds. */
int compose_index_open(const char *path, struct compose_index **out, struct mosaic_error *err);
/* The same checks on a buffer the caller owns (the fuzz target uses this). */
int compose_index_open_buffer(const void *data, size_t size, struct compose_index **out,
                              struct mosaic_error *err);
void compose_index_close(struct compose_index *idx);

uint32_t compose_index_fragments(const struct compose_index *idx);
/* The hex digest of fragment i (65 bytes with the NUL, in buf). */
void compose_index_fragment_digest(const struct compose_index *idx, uint32_t i, char buf[65]);
uint32_t compose_index_inodes(const struct compose_index *idx);
/* Inode ino (1..inodes), or NULL when out of range. */
const struct compose_inode *compose_index_inode(const struct compose_index *idx, uint64_t ino);
/* The position of name among directory dir's entries (compose_index_dirents) by binary search,
 * or -1. */
int64_t compose_index_find(const struct compose_index *idx, uint64_t dir, const char *name,
                           size_t len);
/* The order of a directory's entries: bytes, then the shorter first. */
int compose_name_cmp(const char *a, size_t al, const char *b, size_t bl);
/* Looks name up in directory dir by binary search; returns the ino or 0. */
uint32_t compose_index_lookup(const struct compose_index *idx, uint64_t dir, const char *name,
                              size_t len);
/* Directory entries of dir, sorted by name (count 0 for a non-directory). */
const struct compose_dirent *compose_index_dirents(const struct compose_index *idx, uint64_t dir,
                                                   uint32_t *count);
const struct compose_xattr *compose_index_xattrs(const struct compose_index *idx, uint64_t ino,
                                                 uint32_t *count);
/* A string-table slice (not NUL-terminated). */
const char *compose_index_string(const struct compose_index *idx, uint32_t off);
/* Resolves a path ("" or "/" is the root) to an ino, or 0. */
uint32_t compose_index_resolve(const struct compose_index *idx, const char *path);

/* Where the index of this ordered fragment list is cached: $MOSAIC_CACHE_DIR/index/<sha256 of
 * the index version and the ordered digests>.idx. Caller frees. */
char *compose_index_cache_path(const struct compose_input *in, size_t n);

/* ---- an upper layer against the index (diff.c) -------------------------------------------- */

enum compose_change {
	COMPOSE_UNTOUCHED, /* the upper has nothing there: the index shows through */
	COMPOSE_ADDED,
	COMPOSE_MODIFIED,
	COMPOSE_DELETED,   /* a whiteout, an opaque directory or an upper non-directory hides it */
	COMPOSE_UNCHANGED, /* a copy-up identical to the index's in everything compared */
};
/* What a modification changed. Times are not compared: a copy-up keeps them anyway. */
enum {
	COMPOSE_DIFF_TYPE = 1 << 0,
	COMPOSE_DIFF_CONTENT = 1 << 1,
	COMPOSE_DIFF_MODE = 1 << 2,
	COMPOSE_DIFF_OWNER = 1 << 3,
	COMPOSE_DIFF_XATTRS = 1 << 4,
	COMPOSE_DIFF_TARGET = 1 << 5, /* symlink target */
	COMPOSE_DIFF_RDEV = 1 << 6,
};
struct compose_diff_entry {
	char *path; /* in the view: "/" or "/etc/foo" */
	enum compose_change change;
	mode_t type;   /* S_IFMT of what the view shows; of what was below for a deletion */
	unsigned what; /* COMPOSE_DIFF_* for a modification */
	uint32_t ino;  /* the index inode at that path, 0 if none */
};
/* "untouched", "added", "modified", "deleted", "unchanged". */
const char *compose_change_name(enum compose_change c);
/* Compares the upper directory (overlayfs upper format, trusted.overlay.* read as overlayfs
 * does, so root is needed to see opaque markers) with the view of idx it lies over: every path
 * it adds, modifies or deletes (everything below an added or deleted directory too), sorted by
 * path; with all, copy-ups without change too. images[i] is fragment i's image, read without
 * verification to compare same-size files. Caller frees with compose_diff_free. */
int compose_diff(const struct compose_index *idx, char *const *images, const char *upper, bool all,
                 struct compose_diff_entry **out, size_t *n, struct mosaic_error *err);
void compose_diff_free(struct compose_diff_entry *v, size_t n);
/* How the upper (NULL: none) changes one path of the view; -ENOENT when neither it nor the index
 * has the path. Caller frees out->path. */
int compose_diff_path(const struct compose_index *idx, char *const *images, const char *upper,
                      const char *path, struct compose_diff_entry *out, struct mosaic_error *err);

/* ---- generated fragments (generated.c) ------------------------------------------------------ */

struct store;
struct keyring;
struct fragment_descriptor;

/* A fragment's descriptor: verified against k, or, with k NULL, only parsed (our own store,
 * just written by the caller). */
int compose_read_descriptor(struct store *s, struct keyring *k, const char *digest,
                            struct fragment_descriptor *d, struct mosaic_error *err);
/* A key of salt and the ordered digests (each followed by a newline). */
void compose_digests_key(const char *salt, const char *const *digests, size_t n,
                         char hex[SHA256_HEX_LEN + 1]);
/* The fragment of kind made from inputs with this key, when the cache
 * ($MOSAIC_CACHE_DIR/KIND/KEY) names one the store has; and recording it there. */
bool compose_generated_find(const struct store *s, const char *kind, const char *key,
                            char digest[SHA256_HEX_LEN + 1]);
/* Only a cache: on failure (-errno, err says which file) the next build makes it again. */
int compose_generated_remember(const char *kind, const char *key, const char *digest,
                               struct mosaic_error *err);
/* A signed fragment named name made from the tree fill writes into an empty scratch directory
 * (also named name): owners as written, every time epoch. */
struct compose_generated {
	const char *name, *version, *arch, *sign_key;
	int kind; /* enum fragment_kind */
	int64_t epoch;
	int (*fill)(const char *root, void *ctx, struct mosaic_error *err);
	void *ctx;
};
int compose_generated_make(struct store *s, const struct compose_generated *g,
                           char digest[SHA256_HEX_LEN + 1], struct mosaic_error *err);

/* ---- the dpkg database of a composition (dpkg-db.c, docs/formats.md) --------------------- */

/* One Debian package as the database needs it (everything borrowed): its control paragraph
 * (the descriptor's deb.control) and the text of its conffiles and triggers control files. A
 * conffiles line may end in a tab and the MD5 of the file the package ships, which the status
 * then records instead of "newconffile". */
struct compose_dpkg_package {
	const char *control;
	size_t control_len;
	const char *conffiles, *triggers; /* NULL: none */
	const char *what;                 /* names the package in errors; may be NULL */
};

/* The status (status true) or available text for pkgs, as `dpkg --unpack` of them in this order
 * leaves it: dpkg's field order and canonical forms, "Status: install ok unpacked", conffiles
 * with their MD5 where known (else "newconffile"), a later package replacing an earlier one of the
 * same name (and arch, for Multi-Arch: same), paragraphs sorted as dpkg sorts them (name, then
 * unqualified before name:arch). native_arch decides which architectures are foreign. Caller frees
 * *out. */
int compose_dpkg_text(const struct compose_dpkg_package *pkgs, size_t n, const char *native_arch,
                      bool status, char **out, struct mosaic_error *err);
/* Writes the whole database into the empty directory root: var/lib/dpkg/{status, available,
 * diversions, cmethopt, info/format, updates/, triggers/{Unincorp, File, <name>}}, and arch
 * only with foreign architectures (no statoverride: dpkg makes it when first used), as dpkg
 * leaves them; root:root-owned modes 0644/0755, every time set to mtime. */
int compose_dpkg_tree(const struct compose_dpkg_package *pkgs, size_t n, const char *native_arch,
                      int64_t mtime, const char *root, struct mosaic_error *err);
/* What the database of these ordered package fragments is cached under (hex). */
void compose_dpkg_key(const char *const *digests, size_t n, const char *native_arch,
                      char hex[SHA256_HEX_LEN + 1]);
/* The signed config fragment "dpkg-database" for the ordered fragments digests in s (those
 * without a deb descriptor section are skipped): found in the cache
 * ($MOSAIC_CACHE_DIR/dpkg-database/<key>) or made, reproducibly (its time is the newest input
 * descriptor's "created"). Descriptors are verified against k, or only parsed when k is NULL.
 * *made (may be NULL) says whether a fragment was made. */
int compose_dpkg_fragment(struct store *s, struct keyring *k, const char *const *digests, size_t n,
                          const char *native_arch, const char *sign_key,
                          char digest[SHA256_HEX_LEN + 1], bool *made, struct mosaic_error *err);

/* ---- the rpm database of a composition (rpm-db.c, docs/formats.md) ----------------------- */

/* Where the database fragment leaves its plan for mosaic configure: the packages in rpm's
 * order, and where the rpm database is. */
#define COMPOSE_RPM_PLAN "var/lib/mosaic/rpm-database.json"

/* One RPM package as the database needs it (everything borrowed): the header blob its fragment
 * carries (fragments/src-rpm.c) and that file's path in the composition ("/var/lib/…"). */
struct compose_rpm_package {
	const void *header;
	size_t header_len;
	const char *header_path;
	const char *what; /* names the package in errors; may be NULL */
};
/* Writes into the empty directory root the rpm database (rpmdb.sqlite in dbpath, relative,
 * e.g. "root/.rpmdb") that `rpm -i --justdb --nodeps --noscripts` of pkgs records, made by
 * librpm with every install time set to mtime, and COMPOSE_RPM_PLAN; a later package of the
 * same name-version-release.arch replaces an earlier one. Root-owned, every time mtime. */
int compose_rpm_tree(const struct compose_rpm_package *pkgs, size_t n, const char *dbpath,
                     int64_t mtime, const char *root, struct mosaic_error *err);
/* What the database of these ordered candidate fragments is cached under (hex). */
void compose_rpm_key(const char *const *digests, size_t n, const char *dbpath,
                     char hex[SHA256_HEX_LEN + 1]);
/* The signed config fragment "rpm-database" of the RPM package fragments among digests (the
 * others are skipped): found in the cache ($MOSAIC_CACHE_DIR/rpm-database/<key>) or made (its
 * time is the newest RPM fragment's "created"). digest is "" when none is an RPM package.
 * Descriptors are verified against k, or only parsed when k is NULL. */
int compose_rpm_fragment(struct store *s, struct keyring *k, const char *const *digests, size_t n,
                         const char *dbpath, const char *arch, const char *sign_key,
                         char digest[SHA256_HEX_LEN + 1], bool *made, struct mosaic_error *err);

/* One scriptlet to run, as rpm runs it on install: argv, then (when there is a body) a file
 * holding body and the argument arg. */
struct compose_rpm_script {
	char *package;     /* name-version-release.arch */
	const char *stage; /* "pretrans", "pre", "post" or "posttrans" (static) */
	char **argv;       /* the interpreter and its options, NULL-terminated */
	char *body;        /* NULL: the interpreter runs alone (%post -p /sbin/ldconfig) */
	char **env;        /* RPM_INSTALL_PREFIX* as rpm sets them, NULL-terminated */
	unsigned arg;      /* $1: instances of the name installed with it (1 but for kernels) */
	bool lua;          /* rpm's embedded <lua>, which only rpm itself can run */
};
/* The scriptlets of the composition at root (COMPOSE_RPM_PLAN and the headers it names) in the
 * order rpm runs them for one transaction installing every package: each %pretrans, then per
 * package %pre and %post, then each %posttrans. Caller frees with compose_rpm_scripts_free. */
int compose_rpm_scripts(const char *root, struct compose_rpm_script **out, size_t *n,
                        struct mosaic_error *err);
void compose_rpm_scripts_free(struct compose_rpm_script *v, size_t n);
