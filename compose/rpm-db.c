/* The rpm database of a composition: the headers the RPM package fragments carry, put into an
 * rpmdb by librpm as `rpm -i --justdb --nodeps --noscripts` of the same packages records them,
 * with rpm's install order written beside it for mosaic configure to run their scriptlets in. */
#include "common/rpmlog.h"
#include "compose/compose.h"
#include "fragments/fragment.h"

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include <rpm/header.h>
#include <rpm/rpmfiles.h>
#include <rpm/rpmlib.h>
#include <rpm/rpmmacro.h>
#include <rpm/rpmtd.h>
#include <rpm/rpmte.h>
#include <rpm/rpmts.h>
#include <sqlite3.h>

#define RPM_DB_VERSION    1
#define RPM_PLAN_VERSION  1
#define RPM_HEADER_PREFIX "/var/lib/mosaic/rpm/"
#define RPM_HEADER_MAX    (64u << 20)

static void json_putp(json_object **p)
{
	json_object_put(*p);
}

/* ---- librpm ---------------------------------------------------------------------------------- */

static Header header_load(const void *blob, size_t len)
{
	if (len == 0 || len > RPM_HEADER_MAX)
		return NULL;
	/* HEADERIMPORT_COPY: the blob stays the caller's; librpm checks the region first. */
	return headerImport((void *)blob, (unsigned)len, HEADERIMPORT_COPY);
}

/* ---- the database ---------------------------------------------------------------------------- */

/* What rpm's psm adds to a header when it records an installed package (dbAdd in lib/psm.c of
 * rpm 4.18): the transaction id and install time (here mtime, so the same packages give the same
 * database), the transaction color, and every file's state. The fragments carry every file, so
 * each is "normal" (rpm marks files it left out, --excludedocs or %_install_langs, otherwise). */
static void put_install_tags(Header h, uint32_t when, uint32_t color)
{
	static const rpmTagVal tags[] = {RPMTAG_INSTALLTID, RPMTAG_INSTALLTIME, RPMTAG_INSTALLCOLOR,
	                                 RPMTAG_FILESTATES};
	for (size_t i = 0; i < ARRAY_SIZE(tags); i++)
		headerDel(h, tags[i]);
	headerPutUint32(h, RPMTAG_INSTALLTID, &when, 1);
	headerPutUint32(h, RPMTAG_INSTALLTIME, &when, 1);
	headerPutUint32(h, RPMTAG_INSTALLCOLOR, &color, 1);
	struct rpmtd_s td;
	rpm_count_t fc = 0;
	if (headerGet(h, RPMTAG_BASENAMES, &td, HEADERGET_MINMEM)) {
		fc = rpmtdCount(&td);
		rpmtdFreeData(&td);
	}
	if (fc > 0) {
		_cleanup_free_ char *states = xmalloc(fc);
		memset(states, RPMFILE_STATE_NORMAL, fc);
		headerPutChar(h, RPMTAG_FILESTATES, states, fc);
	}
	/* Relocatable packages installed where they were built for, as addPrefixes() records
	 * them (rpmtsAddInstallElement may have done it already). */
	if (!headerIsEntry(h, RPMTAG_INSTPREFIXES) &&
	    headerGet(h, RPMTAG_PREFIXES, &td, HEADERGET_MINMEM)) {
		rpmtdSetTag(&td, RPMTAG_INSTPREFIXES);
		headerPut(h, &td, HEADERPUT_DEFAULT);
		rpmtdFreeData(&td);
	}
}

/* rpm's sqlite backend leaves the database in WAL mode, which SQLite cannot read from a
 * read-only directory without the -shm file it would create there (and -shm holds random
 * salts, so it cannot travel in a reproducible fragment). A rollback-journal database reads
 * anywhere; rpm turns it back to WAL the next time it writes. */
static int sqlite_to_rollback(const char *path, struct mosaic_error *err)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
	char *msg = NULL;
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "PRAGMA journal_mode = DELETE", NULL, NULL, &msg);
	int r = 0;
	if (rc != SQLITE_OK)
		r = mosaic_errorf(err, -EIO, "%s: setting the journal mode: %s", path,
		                  msg  ? msg
		                  : db ? sqlite3_errmsg(db)
		                       : sqlite3_errstr(rc));
	sqlite3_free(msg);
	sqlite3_close(db);
	return r;
}

struct loaded {
	Header h;
	const struct compose_rpm_package *in;
	char *nevra;
	bool replaced;
};

static void loaded_free(struct loaded *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		headerFree(v[i].h);
		free(v[i].nevra);
	}
	free(v);
}

static int load_headers(const struct compose_rpm_package *pkgs, size_t n, struct loaded **out,
                        struct mosaic_error *err)
{
	struct loaded *v = xcalloc(n ? n : 1, sizeof(*v));
	for (size_t i = 0; i < n; i++) {
		const char *what = pkgs[i].what ? pkgs[i].what : pkgs[i].header_path;
		v[i].in = &pkgs[i];
		v[i].h = header_load(pkgs[i].header, pkgs[i].header_len);
		/* An extension tag: headerGetString() would hand back freed memory. */
		v[i].nevra = v[i].h && headerGetString(v[i].h, RPMTAG_NAME)
		                 ? headerGetAsString(v[i].h, RPMTAG_NEVRA)
		                 : NULL;
		if (!v[i].nevra || headerIsSource(v[i].h)) {
			loaded_free(v, i + 1);
			return mosaic_errorf(err, -EBADMSG, "%s: not a binary package's rpm header",
			                     what ? what : "package");
		}
		/* As installing them one after the other would: the same package once. */
		for (size_t k = 0; k < i; k++)
			if (!v[k].replaced && strcmp(v[k].nevra, v[i].nevra) == 0)
				v[k].replaced = true;
	}
	*out = v;
	return 0;
}

/* Adds the headers to an rpmdb under root at dbpath in rpm's transaction order, which goes into
 * order[] (indices into v, *n_order of them). */
static int write_rpmdb(struct loaded *v, size_t n, const char *root, const char *dbpath,
                       uint32_t when, size_t *order, size_t *n_order, struct mosaic_error *err)
{
	char detail[RPM_SAID_MAX + 4];
	_cleanup_free_ char *abs_dbpath = xasprintf("/%s", dbpath);
	/* The composition's rpm, not the host's: Debian's and upstream's default backend. */
	rpmPushMacro(NULL, "_dbpath", NULL, abs_dbpath, RMIL_CMDLINE);
	rpmPushMacro(NULL, "_db_backend", NULL, "sqlite", RMIL_CMDLINE);
	rpmts ts = rpmtsCreate();
	int r = 0;
	if (rpmtsSetRootDir(ts, root) != 0)
		r = mosaic_errorf(err, -EINVAL, "%s: librpm refuses it as a root", root);
	for (size_t i = 0; i < n && r == 0; i++) {
		if (v[i].replaced)
			continue;
		/* The key is the index + 1 (keys are pointers; NULL would mean none). */
		if (rpmtsAddInstallElement(ts, v[i].h, (fnpyKey)(uintptr_t)(i + 1), 0, NULL) != 0)
			r = mosaic_errorf(err, -EINVAL,
			                  "%s: librpm cannot add it to a transaction%s", v[i].nevra,
			                  rpm_said_detail(detail));
	}
	/* Dependency loops are broken as rpm breaks them; the order stays rpm's. */
	if (r == 0)
		rpmtsOrder(ts);
	rpmtxn txn = r == 0 ? rpmtxnBegin(ts, RPMTXN_WRITE) : NULL;
	if (r == 0 && !txn)
		r = mosaic_errorf(err, -EIO, "%s%s: cannot lock the rpm database%s", root,
		                  abs_dbpath, rpm_said_detail(detail));
	*n_order = 0;
	if (r == 0) {
		uint32_t color = rpmtsColor(ts);
		rpmtsi it = rpmtsiInit(ts);
		rpmte te;
		while (r == 0 && (te = rpmtsiNext(it, TR_ADDED))) {
			size_t i = (uintptr_t)rpmteKey(te) - 1;
			put_install_tags(v[i].h, when, color);
			if (rpmtsImportHeader(txn, v[i].h, 0) != RPMRC_OK)
				r = mosaic_errorf(err, -EIO, "%s: adding it to the rpm database%s",
				                  v[i].nevra, rpm_said_detail(detail));
			order[(*n_order)++] = i;
		}
		rpmtsiFree(it);
	}
	rpmtxnEnd(txn);
	if (rpmtsCloseDB(ts) != 0 && r == 0)
		r = mosaic_errorf(err, -EIO, "%s%s: closing the rpm database%s", root, abs_dbpath,
		                  rpm_said_detail(detail));
	rpmtsFree(ts);
	rpmPopMacro(NULL, "_db_backend");
	rpmPopMacro(NULL, "_dbpath");
	return r;
}

/* ---- the tree -------------------------------------------------------------------------------- */

static json_object *plan_json(const struct loaded *v, const size_t *order, size_t n_order,
                              const char *dbpath)
{
	json_object *o = json_object_new_object(), *a = json_object_new_array();
	json_object_object_add(o, "mosaic_rpm_database", json_object_new_int(RPM_PLAN_VERSION));
	_cleanup_free_ char *abs_dbpath = xasprintf("/%s", dbpath);
	json_object_object_add(o, "dbpath", json_object_new_string(abs_dbpath));
	for (size_t k = 0; k < n_order; k++) {
		const struct loaded *l = &v[order[k]];
		json_object *p = json_object_new_object();
		json_object_object_add(p, "nevra", json_object_new_string(l->nevra));
		json_object_object_add(p, "header", json_object_new_string(l->in->header_path));
		json_object_array_add(a, p);
	}
	json_object_object_add(o, "packages", a);
	return o;
}

static int64_t tree_mtime;
static int tree_visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)flag;
	/* /root is 0700 in Debian's base-files, and this fragment's directory shows over it. */
	bool home = S_ISDIR(st->st_mode) && f->level == 1 && strcmp(path + f->base, "root") == 0;
	mode_t mode = S_ISDIR(st->st_mode) ? (home ? 0700 : 0755) : 0644;
	struct timespec ts[2] = {{.tv_sec = tree_mtime}, {.tv_sec = tree_mtime}};
	if (chmod(path, mode) < 0 || utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return -1;
	return 0;
}

static bool dbpath_ok(const char *p)
{
	if (!*p || *p == '/' || strlen(p) > 1024)
		return false;
	for (const char *c = p; *c;) {
		size_t l = strcspn(c, "/");
		if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		c += l;
		if (*c)
			c++;
	}
	return p[strlen(p) - 1] != '/';
}

int compose_rpm_tree(const struct compose_rpm_package *pkgs, size_t n, const char *dbpath,
                     int64_t mtime, const char *root, struct mosaic_error *err)
{
	char detail[RPM_SAID_MAX + 4];
	if (!dbpath_ok(dbpath))
		return mosaic_errorf(err, -EINVAL, "'%s': the rpm database path must be relative",
		                     dbpath);
	if (mtime < 0 || mtime > UINT32_MAX)
		return mosaic_errorf(err, -EINVAL, "%lld: not a time rpm can record",
		                     (long long)mtime);
	char real[PATH_MAX];
	if (!realpath(root, real))
		return mosaic_errorf(err, -errno, "%s: %s", root, strerror(errno));

	rpm_said_clear();
	struct loaded *v = NULL;
	int r = rpm_setup() == 0
	            ? 0
	            : mosaic_errorf(err, -EIO, "librpm could not read its configuration%s",
	                            rpm_said_detail(detail));
	if (r == 0)
		r = load_headers(pkgs, n, &v, err);
	_cleanup_free_ size_t *order = xcalloc(n ? n : 1, sizeof(*order));
	size_t n_order = 0;
	if (r == 0)
		r = write_rpmdb(v, n, real, dbpath, (uint32_t)mtime, order, &n_order, err);

	_cleanup_free_ char *dir = path_join(real, dbpath);
	if (r == 0) {
		_cleanup_free_ char *db = path_join(dir, "rpmdb.sqlite");
		r = sqlite_to_rollback(db, err);
	}
	if (r == 0) {
		/* The lock rpm takes to write: as with dpkg's, rpm makes it when it writes. */
		static const char *const gone[] = {".rpm.lock", "rpmdb.sqlite-wal",
		                                   "rpmdb.sqlite-shm"};
		for (size_t i = 0; i < ARRAY_SIZE(gone) && r == 0; i++) {
			_cleanup_free_ char *p = path_join(dir, gone[i]);
			if (unlink(p) < 0 && errno != ENOENT)
				r = mosaic_errorf(err, -errno, "%s: %s", p, strerror(errno));
		}
	}
	if (r == 0) {
		_cleanup_(json_putp) json_object *plan = plan_json(v, order, n_order, dbpath);
		const char *text = json_object_to_json_string_ext(
		    plan, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
		              JSON_C_TO_STRING_NOSLASHESCAPE);
		_cleanup_free_ char *path = path_join(real, COMPOSE_RPM_PLAN);
		_cleanup_free_ char *pdir = xstrdup(path);
		*strrchr(pdir, '/') = 0;
		_cleanup_free_ char *line = xasprintf("%s\n", text);
		r = mkdir_p(pdir, 0755);
		if (r == 0)
			r = write_file_atomic(path, line, strlen(line), 0644);
		if (r < 0)
			r = mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	}
	if (r == 0) {
		tree_mtime = mtime;
		if (nftw(real, tree_visit, 16, FTW_PHYS | FTW_DEPTH) != 0)
			r = mosaic_errorf(err, -errno, "%s: setting modes and times: %s", real,
			                  strerror(errno));
	}
	loaded_free(v, v ? n : 0);
	return r;
}

/* ---- the fragment ---------------------------------------------------------------------------- */

void compose_rpm_key(const char *const *digests, size_t n, const char *dbpath,
                     char hex[SHA256_HEX_LEN + 1])
{
	_cleanup_free_ char *salt =
	    xasprintf("mosaic rpm database v%d\n%s\n", RPM_DB_VERSION, dbpath);
	compose_digests_key(salt, digests, n, hex);
}

struct file_find {
	const char *want;
	uint64_t inode, size;
	bool found;
};

static int find_visit(void *ctx, const struct fragment_entry *e)
{
	struct file_find *f = ctx;
	if (S_ISREG(e->mode) && strcmp(e->path, f->want) == 0) {
		f->inode = e->inode_id;
		f->size = e->size;
		f->found = true;
	}
	return 0;
}

/* The header blob at path (absolute in the composition) in image. */
static int read_header_file(const char *image, const char *path, char **out, size_t *len,
                            struct mosaic_error *err)
{
	struct file_find f = {.want = path + 1};
	int r = fragment_walk(image, find_visit, &f, err);
	if (r < 0)
		return r;
	if (!f.found)
		return mosaic_errorf(err, -ENOENT, "%s: has no %s", image, path);
	if (f.size == 0 || f.size > RPM_HEADER_MAX)
		return mosaic_errorf(err, -EFBIG, "%s: %s has an impossible size", image, path);
	struct fragment_image *im;
	if ((r = fragment_image_open(image, &im, err)) < 0)
		return r;
	char *buf = xmalloc(f.size);
	size_t got = 0;
	while (got < f.size && r == 0) {
		ssize_t k = fragment_image_read(im, f.inode, got, buf + got, f.size - got);
		if (k <= 0)
			r = mosaic_errorf(err, k < 0 ? (int)k : -EIO, "%s: reading %s", image,
			                  path);
		else
			got += k;
	}
	fragment_image_close(im);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	*len = got;
	return 0;
}

struct rpm_tree {
	const struct compose_rpm_package *pkgs;
	size_t n;
	const char *dbpath;
	int64_t epoch;
};

static int fill_tree(const char *root, void *ctx, struct mosaic_error *err)
{
	const struct rpm_tree *t = ctx;
	return compose_rpm_tree(t->pkgs, t->n, t->dbpath, t->epoch, root, err);
}

int compose_rpm_fragment(struct store *s, struct keyring *k, const char *const *digests, size_t n,
                         const char *dbpath, const char *arch, const char *sign_key,
                         char digest[SHA256_HEX_LEN + 1], bool *made, struct mosaic_error *err)
{
	char key[SHA256_HEX_LEN + 1];
	compose_rpm_key(digests, n, dbpath, key);
	if (made)
		*made = false;
	digest[0] = 0;
	if (compose_generated_find(s, "rpm-database", key, digest))
		return 0;

	struct compose_rpm_package *pkgs = xcalloc(n ? n : 1, sizeof(*pkgs));
	struct fragment_descriptor *descs = xcalloc(n ? n : 1, sizeof(*descs));
	char **blobs = xcalloc(n ? n : 1, sizeof(char *));
	char **paths = xcalloc(n ? n : 1, sizeof(char *));
	size_t np = 0;
	int64_t epoch = 0;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct fragment_descriptor *d = &descs[i];
		r = compose_read_descriptor(s, k, digests[i], d, err);
		if (r < 0)
			break;
		json_object *rpm, *hdr;
		if (!json_object_object_get_ex(d->json, "rpm", &rpm) ||
		    !json_object_object_get_ex(rpm, "header", &hdr) ||
		    !json_object_is_type(hdr, json_type_string))
			continue;
		/* fragments/src-rpm.c puts it there; the descriptor is signed, but a path is a
		 * path: only that directory, only a plain name. */
		char *path = paths[np] = xasprintf("/%s", json_object_get_string(hdr));
		const char *base = path + strlen(RPM_HEADER_PREFIX);
		if (strncmp(path, RPM_HEADER_PREFIX, strlen(RPM_HEADER_PREFIX)) != 0 || !*base ||
		    strchr(base, '/') || base[0] == '.') {
			r = mosaic_errorf(err, -EBADMSG, "%s: rpm header path '%s' is not under %s",
			                  digests[i], path, RPM_HEADER_PREFIX);
			np++;
			break;
		}
		_cleanup_free_ char *image = store_object_path(s, digests[i], ".sqfs");
		r = read_header_file(image, path, &blobs[np], &pkgs[np].header_len, err);
		if (d->created > epoch)
			epoch = d->created;
		pkgs[np].header = blobs[np];
		pkgs[np].header_path = path;
		pkgs[np].what = d->name;
		np++;
	}
	if (r == 0 && np > 0) {
		struct rpm_tree t = {pkgs, np, dbpath, epoch};
		const struct compose_generated g = {
		    .name = "rpm-database",
		    .arch = arch,
		    .kind = FRAGMENT_CONFIG,
		    .sign_key = sign_key,
		    .epoch = epoch,
		    .fill = fill_tree,
		    .ctx = &t,
		};
		r = compose_generated_make(s, &g, digest, err);
	}
	if (r == 0 && np > 0) {
		/* Only a cache: without it the next build makes the database again. */
		(void)compose_generated_remember("rpm-database", key, digest, NULL);
		if (made)
			*made = true;
	}
	for (size_t i = 0; i < n; i++) {
		fragment_descriptor_clear(&descs[i]);
		free(blobs[i]);
		free(paths[i]);
	}
	free(descs);
	free(blobs);
	free(paths);
	free(pkgs);
	return r;
}

/* ---- the scriptlets -------------------------------------------------------------------------- */

/* rpm's scriptlet flags (lib/rpmscript.h of rpm 4.18, not installed with its headers). */
#define SCRIPT_FLAG_EXPAND  (1 << 0) /* the body is macro-expanded at install time */
#define SCRIPT_FLAG_QFORMAT (1 << 1) /* the body is a header query format */

static const struct {
	const char *stage;
	rpmTagVal body, prog, flags;
} stages[] = {
    {"pretrans", RPMTAG_PRETRANS, RPMTAG_PRETRANSPROG, RPMTAG_PRETRANSFLAGS},
    {"pre", RPMTAG_PREIN, RPMTAG_PREINPROG, RPMTAG_PREINFLAGS},
    {"post", RPMTAG_POSTIN, RPMTAG_POSTINPROG, RPMTAG_POSTINFLAGS},
    {"posttrans", RPMTAG_POSTTRANS, RPMTAG_POSTTRANSPROG, RPMTAG_POSTTRANSFLAGS},
};

static void strv_add(char ***v, size_t *n, char *s)
{
	*v = xrealloc(*v, (*n + 2) * sizeof(**v));
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
}

void compose_rpm_scripts_free(struct compose_rpm_script *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].package);
		strv_freev(v[i].argv);
		free(v[i].body);
		strv_freev(v[i].env);
	}
	free(v);
}

/* One stage's scriptlet of h into *s, returning 1, or 0 when the package has none
 * (rpmScriptFromTag() and runExtScript() in rpm 4.18: a body or an interpreter makes one,
 * /bin/sh by default). */
static int script_of(Header h, size_t stage, const char *nevra, unsigned arg,
                     struct compose_rpm_script *s, struct mosaic_error *err)
{
	bool trans = stage == 0 || stage == 3;
	bool has_body = headerIsEntry(h, stages[stage].body);
	bool has_prog = headerIsEntry(h, stages[stage].prog);
	/* rpm runs a %pretrans or %posttrans only when both are recorded (rpmteAddTE). */
	if (trans ? !(has_body && has_prog) : !(has_body || has_prog))
		return 0;
	uint64_t flags = headerGetNumber(h, stages[stage].flags);
	if (flags & SCRIPT_FLAG_EXPAND)
		return mosaic_errorf(
		    err, -EOPNOTSUPP,
		    "%s: its %%%s scriptlet wants rpm's macros expanded at install "
		    "time (-e), which only rpm can do",
		    nevra, stages[stage].stage);
	const char *body = has_body ? headerGetString(h, stages[stage].body) : NULL;
	_cleanup_free_ char *expanded = NULL;
	if (body && (flags & SCRIPT_FLAG_QFORMAT)) {
		errmsg_t msg = NULL;
		expanded = headerFormat(h, body, &msg);
		if (!expanded)
			return mosaic_errorf(err, -EBADMSG, "%s: its %%%s query format: %s", nevra,
			                     stages[stage].stage, msg ? msg : "does not expand");
		body = expanded;
	}
	*s = (struct compose_rpm_script){
	    .package = xstrdup(nevra),
	    .stage = stages[stage].stage,
	    .body = body ? xstrdup(body) : NULL,
	    .env = xcalloc(1, sizeof(char *)),
	    .arg = arg,
	};
	size_t na = 0, ne = 0;
	struct rpmtd_s td;
	if (has_prog && headerGet(h, stages[stage].prog, &td, HEADERGET_MINMEM)) {
		const char *a;
		while ((a = rpmtdNextString(&td)))
			strv_add(&s->argv, &na, xstrdup(a));
		rpmtdFreeData(&td);
	}
	if (na == 0)
		strv_add(&s->argv, &na, xstrdup("/bin/sh"));
	s->lua = strcmp(s->argv[0], "<lua>") == 0;
	if (headerGet(h, RPMTAG_PREFIXES, &td, HEADERGET_MINMEM)) {
		const char *p;
		for (int i = 0; (p = rpmtdNextString(&td)); i++) {
			if (i == 0)
				strv_add(&s->env, &ne, xasprintf("RPM_INSTALL_PREFIX=%s", p));
			strv_add(&s->env, &ne, xasprintf("RPM_INSTALL_PREFIX%d=%s", i, p));
		}
		rpmtdFreeData(&td);
	}
	return 1;
}

static const char *plan_string(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
}

int compose_rpm_scripts(const char *root, struct compose_rpm_script **out, size_t *n_out,
                        struct mosaic_error *err)
{
	_cleanup_free_ char *plan_path = path_join(root, COMPOSE_RPM_PLAN);
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = read_file(plan_path, 16 << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", plan_path, strerror(-r));
	_cleanup_(json_putp) json_object *plan = json_tokener_parse(text);
	json_object *version, *list;
	if (!plan || !json_object_object_get_ex(plan, "mosaic_rpm_database", &version) ||
	    json_object_get_int(version) != RPM_PLAN_VERSION ||
	    !json_object_object_get_ex(plan, "packages", &list) ||
	    !json_object_is_type(list, json_type_array))
		return mosaic_errorf(err, -EBADMSG, "%s: not an rpm database plan of version %d",
		                     plan_path, RPM_PLAN_VERSION);

	size_t np = json_object_array_length(list);
	Header *hs = xcalloc(np ? np : 1, sizeof(*hs));
	char **nevras = xcalloc(np ? np : 1, sizeof(*nevras));
	/* rpm's $1: the instances of that name installed with this one (more than one only for
	 * names installed in several versions, such as kernels). */
	_cleanup_free_ unsigned *counts = xcalloc(np ? np : 1, sizeof(*counts));
	rpm_said_clear();
	rpm_setup(); /* what librpm logs is kept, not printed */
	for (size_t i = 0; i < np && r == 0; i++) {
		json_object *p = json_object_array_get_idx(list, i);
		const char *hp = plan_string(p, "header"), *nevra = plan_string(p, "nevra");
		if (!hp || !nevra || strncmp(hp, RPM_HEADER_PREFIX, strlen(RPM_HEADER_PREFIX)) ||
		    strstr(hp, "/..")) {
			r = mosaic_errorf(err, -EBADMSG, "%s: package %zu: bad header path or name",
			                  plan_path, i + 1);
			break;
		}
		_cleanup_free_ char *path = path_join(root, hp + 1);
		_cleanup_free_ char *blob = NULL;
		size_t blen = 0;
		r = read_file(path, RPM_HEADER_MAX, &blob, &blen);
		if (r < 0) {
			r = mosaic_errorf(err, r, "%s: %s (the rpm database names it)", path,
			                  strerror(-r));
			break;
		}
		hs[i] = header_load(blob, blen);
		nevras[i] = xstrdup(nevra);
		const char *name = hs[i] ? headerGetString(hs[i], RPMTAG_NAME) : NULL;
		if (!name) {
			r = mosaic_errorf(err, -EBADMSG, "%s: not an rpm header", path);
			break;
		}
		counts[i] = 1;
		for (size_t k = 0; k < i; k++)
			if (strcmp(headerGetString(hs[k], RPMTAG_NAME), name) == 0)
				counts[i]++;
	}

	struct compose_rpm_script *v = NULL;
	size_t n = 0;
	/* rpm's order for one transaction: every %pretrans, then each package's %pre and %post
	 * (its files land in between), then every %posttrans. */
	static const size_t passes[][2] = {{0, 0}, {1, 2}, {3, 3}};
	for (size_t pass = 0; pass < ARRAY_SIZE(passes) && r == 0; pass++)
		for (size_t i = 0; i < np && r == 0; i++)
			for (size_t st = passes[pass][0]; st <= passes[pass][1] && r == 0; st++) {
				v = xrealloc(v, (n + 1) * sizeof(*v));
				int k = script_of(hs[i], st, nevras[i], counts[i], &v[n], err);
				if (k > 0)
					n++;
				r = k < 0 ? k : 0;
			}
	for (size_t i = 0; i < np; i++) {
		headerFree(hs[i]);
		free(nevras[i]);
	}
	free(hs);
	free(nevras);
	if (r < 0) {
		compose_rpm_scripts_free(v, n);
		return r;
	}
	*out = v;
	*n_out = n;
	return 0;
}
