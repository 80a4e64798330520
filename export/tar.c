/* The view as a POSIX pax tar, written by libarchive in export_walk's order: the same view and
 * epoch give the same bytes (no atime/ctime, whole-second mtimes, sorted xattrs, names bytes
 * as they are whatever the locale). */
#include "export/internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <grp.h>
#include <locale.h>
#include <pwd.h>
#include <search.h>
#include <string.h>
#include <sys/sysmacros.h>

#define MAX_ACCOUNTS_FILE (16 << 20)

struct id_name {
	uint32_t id;
	size_t order;
	char *name;
};

static int id_name_cmp(const void *a, const void *b)
{
	const struct id_name *x = a, *y = b;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return (x->order > y->order) - (x->order < y->order);
}

struct names {
	struct id_name *v;
	size_t n;
};

static void names_clear(struct names *n)
{
	for (size_t i = 0; i < n->n; i++)
		free(n->v[i].name);
	free(n->v);
}

static void names_add(struct names *n, uint32_t id, const char *name)
{
	n->v = xrealloc(n->v, (n->n + 1) * sizeof(*n->v));
	n->v[n->n] = (struct id_name){.id = id, .order = n->n, .name = xstrdup(name)};
	n->n++;
}

/* The first name each id has (as getpwuid answers), sorted by id. */
static void names_finish(struct names *n)
{
	qsort_safe(n->v, n->n, sizeof(*n->v), id_name_cmp);
	size_t m = 0;
	for (size_t i = 0; i < n->n; i++) {
		if (m > 0 && n->v[m - 1].id == n->v[i].id) {
			free(n->v[i].name);
			continue;
		}
		n->v[m++] = n->v[i];
	}
	n->n = m;
}

static const char *names_get(const struct names *n, uint32_t id)
{
	size_t lo = 0, hi = n->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (n->v[mid].id == id)
			return n->v[mid].name;
		if (n->v[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The view's own /etc/passwd or /etc/group parsed by glibc's fgetpwent/fgetgrent; a view
 * without one has no names (owners stay numeric). */
static int load_names(struct export_reader *r, bool group, struct names *out,
                      struct mosaic_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	int e = export_read_path(r, group ? "etc/group" : "etc/passwd", MAX_ACCOUNTS_FILE, &text,
	                         &len, &ignored);
	if (e == -ENOENT)
		return 0;
	if (e < 0)
		return mosaic_errorf(err, e, "%s", ignored.msg);
	_cleanup_fclose_ FILE *f = fmemopen(text, len ? len : 1, "r");
	if (!f)
		return mosaic_errorf(err, -errno, "reading /etc/%s: %m",
		                     group ? "group" : "passwd");
	if (group) {
		struct group *g;
		while ((g = fgetgrent(f)))
			names_add(out, g->gr_gid, g->gr_name);
	} else {
		struct passwd *p;
		while ((p = fgetpwent(f)))
			names_add(out, p->pw_uid, p->pw_name);
	}
	names_finish(out);
	return 0;
}

/* ---- writing ----------------------------------------------------------------------------------
 */

struct link {
	uint64_t id;
	char *path; /* the archive name written first, which later links point to */
};

static int link_cmp(const void *a, const void *b)
{
	const struct link *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

static void link_free(void *p)
{
	struct link *l = p;
	free(l->path);
	free(l);
}

struct tar {
	struct export_reader *r;
	struct archive *a;
	int fd;
	int64_t epoch;
	struct names users, groups;
	void *links; /* tsearch tree of struct link */
	struct sha256 *hash;
	struct export_tar_result *res;
	int write_error; /* -errno of the last failed write */
	struct mosaic_error *err;
};

static la_ssize_t tar_write(struct archive *a, void *ctx, const void *buf, size_t n)
{
	struct tar *t = ctx;
	int e = write_all(t->fd, buf, n);
	if (e < 0) {
		t->write_error = e;
		archive_set_error(a, -e, "%s", strerror(-e));
		return -1;
	}
	sha256_update(t->hash, buf, n);
	t->res->size += n;
	return n;
}

static int archive_fail(struct tar *t, const char *what)
{
	if (t->write_error)
		return mosaic_errorf(t->err, t->write_error, "writing the tar: %s",
		                     strerror(-t->write_error));
	int e = archive_errno(t->a);
	return mosaic_errorf(t->err, e > 0 ? -e : -EIO, "%s: %s", what,
	                     archive_error_string(t->a) ? archive_error_string(t->a) : "failed");
}

static int data_sink(void *ctx, const void *buf, size_t len)
{
	struct tar *t = ctx;
	la_ssize_t n = archive_write_data(t->a, buf, len);
	if (n < 0 || (size_t)n != len)
		return archive_fail(t, "writing file data");
	return 0;
}

static void free_entry(struct archive_entry **e)
{
	if (*e)
		archive_entry_free(*e);
}

static int add_entry(void *ctx, const struct export_entry *e)
{
	struct tar *t = ctx;
	if (S_ISSOCK(e->mode)) {
		t->res->skipped++;
		return 0;
	}
	if (e->mtime > t->res->newest_mtime)
		t->res->newest_mtime = e->mtime;
	_cleanup_(free_entry) struct archive_entry *ae = archive_entry_new();
	_cleanup_free_ char *name = xasprintf("./%s", e->path);
	archive_entry_copy_pathname(ae, name);
	archive_entry_set_mode(ae, e->mode);
	archive_entry_set_uid(ae, e->uid);
	archive_entry_set_gid(ae, e->gid);
	const char *u = names_get(&t->users, e->uid), *g = names_get(&t->groups, e->gid);
	if (u)
		archive_entry_copy_uname(ae, u);
	if (g)
		archive_entry_copy_gname(ae, g);
	archive_entry_set_mtime(ae, t->epoch >= 0 && e->mtime > t->epoch ? t->epoch : e->mtime, 0);
	for (size_t i = 0; i < e->n_xattrs; i++)
		archive_entry_xattr_add_entry(ae, e->xattrs[i].name, e->xattrs[i].value,
		                              e->xattrs[i].len);
	bool data = false;
	if (e->link_id) {
		struct link *l = xmalloc(sizeof(*l));
		*l = (struct link){.id = e->link_id, .path = xstrdup(name)};
		struct link **found = tsearch(l, &t->links, link_cmp);
		if (!found)
			abort(); /* out of memory */
		if (*found != l) {
			/* A later name of a file already written: a hard link to the first. */
			link_free(l);
			archive_entry_copy_hardlink(ae, (*found)->path);
			archive_entry_set_size(ae, 0);
			goto write;
		}
	}
	if (S_ISREG(e->mode)) {
		archive_entry_set_size(ae, e->size);
		data = e->size > 0;
	} else if (S_ISLNK(e->mode))
		archive_entry_copy_symlink(ae, e->link);
	else if (S_ISCHR(e->mode) || S_ISBLK(e->mode)) {
		archive_entry_set_rdevmajor(ae, major(e->rdev));
		archive_entry_set_rdevminor(ae, minor(e->rdev));
	}
write:
	if (archive_write_header(t->a, ae) < ARCHIVE_WARN)
		return archive_fail(t, name);
	t->res->entries++;
	if (data)
		return export_read_content(t->r, e, data_sink, t, t->err);
	return 0;
}

int export_tar(struct export_reader *r, int fd, int64_t source_date_epoch,
               struct export_tar_result *res, struct mosaic_error *err)
{
	*res = (struct export_tar_result){.newest_mtime = INT64_MIN};
	struct tar t = {.r = r, .fd = fd, .epoch = source_date_epoch, .res = res, .err = err};
	locale_t utf8 = (locale_t)0, old = (locale_t)0;
	int e = load_names(r, false, &t.users, err);
	if (e == 0)
		e = load_names(r, true, &t.groups, err);
	if (e < 0)
		goto out;
	/* libarchive converts names from the locale's charset to pax's UTF-8: with C.UTF-8 a
	 * UTF-8 name goes through as it is and any other is marked binary, whatever the caller's
	 * locale, so the bytes never depend on it. */
	utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (utf8)
		old = uselocale(utf8);
	t.hash = sha256_new();
	t.a = archive_write_new();
	/* pax for xattrs, long names and big ids; SCHILY.xattr is what GNU tar and bsdtar both
	 * read. */
	if (archive_write_set_format_pax(t.a) != ARCHIVE_OK ||
	    archive_write_set_options(t.a, "xattrheader=SCHILY") != ARCHIVE_OK ||
	    archive_write_open2(t.a, &t, NULL, tar_write, NULL, NULL) != ARCHIVE_OK) {
		e = archive_fail(&t, "starting the tar");
		goto out;
	}
	e = export_walk(r, add_entry, &t, err);
	if (e == 0 && archive_write_close(t.a) != ARCHIVE_OK)
		e = archive_fail(&t, "finishing the tar");
out:
	if (t.a)
		archive_write_free(t.a);
	if (utf8) {
		uselocale(old);
		freelocale(utf8);
	}
	if (t.hash)
		sha256_final(t.hash, res->sha256);
	tdestroy(t.links, link_free);
	names_clear(&t.users);
	names_clear(&t.groups);
	return e;
}
