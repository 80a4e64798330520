/* Tar and .deb sources through libarchive: entries stream straight into the image writer.
 * A .deb is read as an ar archive whose control.tar.* and data.tar.* members are opened as
 * nested archives, so nothing is unpacked to disk. */
#include "fragments/internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <string.h>

static ssize_t archive_read_cb(void *ctx, void *buf, size_t len)
{
	la_ssize_t n = archive_read_data(ctx, buf, len);
	return n < 0 ? -EIO : n;
}

int archive_feed(struct archive *a, const char *what, struct fwriter *w, struct mosaic_error *err)
{
	struct archive_entry *ae;
	_cleanup_free_ struct fxattr *xa = NULL;
	size_t xa_cap = 0;
	int r;

	while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
		const char *path = archive_entry_pathname(ae);
		if (!path)
			return mosaic_errorf(err, -EINVAL, "%s: entry without a name", what);
		const char *hl = archive_entry_hardlink(ae);
		if (hl) {
			r = fwriter_add_hardlink(w, path, hl, err);
			if (r < 0)
				return mosaic_error_prefix(err, "%s", what);
			continue;
		}
		struct fentry e = {
		    .mode = archive_entry_mode(ae),
		    .uid = archive_entry_uid(ae),
		    .gid = archive_entry_gid(ae),
		    .mtime = archive_entry_mtime(ae),
		    .rdev = archive_entry_rdev(ae),
		    .link = archive_entry_symlink(ae),
		};
		size_t nx = archive_entry_xattr_reset(ae);
		if (nx > xa_cap) {
			xa_cap = nx;
			xa = xrealloc(xa, xa_cap * sizeof(*xa));
		}
		for (size_t i = 0; i < nx; i++)
			archive_entry_xattr_next(ae, &xa[i].key, &xa[i].value, &xa[i].len);
		e.xattrs = xa;
		e.n_xattrs = nx;
		r = fwriter_add(w, path, &e, S_ISREG(e.mode) ? archive_read_cb : NULL, a, err);
		if (r < 0)
			return mosaic_error_prefix(err, "%s", what);
	}
	if (r != ARCHIVE_EOF)
		return mosaic_errorf(err, -EBADMSG, "%s: %s", what, archive_error_string(a));
	return 0;
}

static struct archive *archive_reader(void)
{
	struct archive *a = archive_read_new();
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_gnutar(a);
	archive_read_support_format_cpio(a);
	return a;
}

static void archive_freep(struct archive **a)
{
	if (*a)
		archive_read_free(*a);
}
#define _cleanup_archive_ _cleanup_(archive_freep)

static void meta_from_filename(const char *path, struct src_meta *m)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	size_t n = strcspn(base, ".");
	m->name = xstrndup(base, n ? n : strlen(base));
}

int src_tar_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err)
{
	_cleanup_archive_ struct archive *a = archive_reader();
	if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK)
		return mosaic_errorf(err, -EBADMSG, "%s: %s", path, archive_error_string(a));
	int r = archive_feed(a, path, w, err);
	if (r < 0)
		return r;
	m->type = xstrdup("tar");
	meta_from_filename(path, m);
	return 0;
}

/* ---- .deb --------------------------------------------------------------------------------- */

/* A member of the outer ar archive, read as a nested archive. */
static la_ssize_t member_read(struct archive *inner, void *ctx, const void **buf)
{
	static __thread char block[1 << 16];
	la_ssize_t n = archive_read_data(ctx, block, sizeof(block));
	*buf = block;
	return n;
}

static struct archive *open_member(struct archive *outer)
{
	struct archive *a = archive_reader();
	if (archive_read_open(a, outer, NULL, member_read, NULL) != ARCHIVE_OK) {
		archive_read_free(a);
		return NULL;
	}
	return a;
}

struct control_file {
	char *name;
	char *data;
	size_t len;
	mode_t mode;
	int64_t mtime;
};

struct control {
	struct control_file *files;
	size_t n;
};

static void control_clear(struct control *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->files[i].name);
		free(c->files[i].data);
	}
	free(c->files);
}

#define CONTROL_MAX (64u << 20)

static int read_control(struct archive *outer, const char *deb, struct control *c,
                        struct mosaic_error *err)
{
	_cleanup_archive_ struct archive *a = open_member(outer);
	struct archive_entry *ae;
	int r;
	if (!a)
		return mosaic_errorf(err, -EBADMSG, "%s: control member is not a tar archive", deb);
	while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
		if (!S_ISREG(archive_entry_mode(ae)))
			continue;
		_cleanup_free_ char *name = xstrdup(archive_entry_pathname(ae));
		if (path_normalise(name) < 0 || strchr(name, '/') || !*name)
			return mosaic_errorf(err, -EINVAL,
			                     "%s: control member '%s' is not a plain "
			                     "file name",
			                     deb, archive_entry_pathname(ae));
		int64_t size = archive_entry_size(ae);
		if (size < 0 || size > CONTROL_MAX)
			return mosaic_errorf(err, -EFBIG, "%s: control file '%s' is too large", deb,
			                     name);
		struct control_file f = {
		    .name = TAKE_PTR(name),
		    .data = xmalloc(size + 1),
		    .mode = archive_entry_mode(ae),
		    .mtime = archive_entry_mtime(ae),
		};
		la_ssize_t n;
		while ((n = archive_read_data(a, f.data + f.len, size - f.len)) > 0)
			f.len += n;
		f.data[f.len] = '\0';
		c->files = xrealloc(c->files, (c->n + 1) * sizeof(*c->files));
		c->files[c->n++] = f;
		if (n < 0)
			return mosaic_errorf(err, -EBADMSG, "%s: control.tar: %s", deb,
			                     archive_error_string(a));
	}
	if (r != ARCHIVE_EOF)
		return mosaic_errorf(err, -EBADMSG, "%s: control.tar: %s", deb,
		                     archive_error_string(a));
	return 0;
}

struct list_ctx {
	char *buf;
	size_t len, cap;
};

static int list_add(void *ctx, const char *path, bool is_dir)
{
	struct list_ctx *l = ctx;
	size_t n = strlen(path) + 3;
	if (l->len + n + 1 > l->cap) {
		l->cap = (l->len + n + 1) * 2;
		l->buf = xrealloc(l->buf, l->cap);
	}
	/* dpkg writes the root as "/." and every other path absolute, without a trailing slash. */
	l->len += sprintf(l->buf + l->len, "/%s\n", *path ? path : ".");
	return 0;
}

struct mem_reader {
	const char *data;
	size_t len, off;
};

static ssize_t mem_read(void *ctx, void *buf, size_t len)
{
	struct mem_reader *m = ctx;
	size_t n = m->len - m->off < len ? m->len - m->off : len;
	memcpy(buf, m->data + m->off, n);
	m->off += n;
	return n;
}

static int add_memory_file(struct fwriter *w, const char *path, const char *data, size_t len,
                           mode_t mode, int64_t mtime, struct mosaic_error *err)
{
	struct fentry e = {.mode = S_IFREG | (mode & 07777), .mtime = mtime};
	struct mem_reader mr = {.data = data, .len = len};
	return fwriter_add(w, path, &e, mem_read, &mr, err);
}

/* Adds var/lib/dpkg/info/<pkg>.<file> for every maintainer file but control, which belongs in
 * the status file that compose/ synthesises. Missing parents are made 0755 root:root. */
static int add_dpkg_info(struct fwriter *w, const char *deb, const char *pkg,
                         const struct control *c, struct mosaic_error *err)
{
	for (size_t i = 0; i < c->n; i++) {
		const struct control_file *f = &c->files[i];
		if (strcmp(f->name, "control") == 0)
			continue;
		_cleanup_free_ char *p = xasprintf("var/lib/dpkg/info/%s.%s", pkg, f->name);
		int r = add_memory_file(w, p, f->data, f->len, f->mode, f->mtime, err);
		if (r < 0)
			return mosaic_error_prefix(err, "%s", deb);
	}
	return 0;
}

int src_deb_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err)
{
	_cleanup_archive_ struct archive *outer = archive_read_new();
	archive_read_support_format_ar(outer);
	if (archive_read_open_filename(outer, path, 1 << 16) != ARCHIVE_OK)
		return mosaic_errorf(err, -EBADMSG, "%s: not a .deb: %s", path,
		                     archive_error_string(outer));

	struct control c = {0};
	struct deb822 para = {0};
	struct list_ctx payload_list = {0};
	bool have_control = false, have_data = false, have_binary = false;
	_cleanup_free_ char *info_name = NULL, *list_path = NULL;
	struct archive_entry *ae;
	int r = 0, ar;

	while ((ar = archive_read_next_header(outer, &ae)) == ARCHIVE_OK) {
		const char *name = archive_entry_pathname(ae);
		if (strcmp(name, "debian-binary") == 0) {
			char v[16] = {0};
			archive_read_data(outer, v, sizeof(v) - 1);
			if (strncmp(v, "2.", 2) != 0) {
				r = mosaic_errorf(err, -EBADMSG,
				                  "%s: unsupported .deb format '%.4s'", path, v);
				goto out;
			}
			have_binary = true;
		} else if (strncmp(name, "control.tar", 11) == 0) {
			if ((r = read_control(outer, path, &c, err)) < 0)
				goto out;
			have_control = true;
		} else if (strncmp(name, "data.tar", 8) == 0) {
			_cleanup_archive_ struct archive *a = open_member(outer);
			if (!a) {
				r = mosaic_errorf(err, -EBADMSG,
				                  "%s: data member is not a tar archive", path);
				goto out;
			}
			_cleanup_free_ char *what = xasprintf("%s: %s", path, name);
			if ((r = archive_feed(a, what, w, err)) < 0)
				goto out;
			fwriter_foreach_path(w, list_add, &payload_list);
			have_data = true;
		}
	}
	if (ar != ARCHIVE_EOF) {
		r = mosaic_errorf(err, -EBADMSG, "%s: truncated or corrupt .deb: %s", path,
		                  archive_error_string(outer));
		goto out;
	}
	if (!have_binary || !have_control || !have_data) {
		r = mosaic_errorf(err, -EBADMSG, "%s: not a binary package (missing %s)", path,
		                  !have_binary    ? "debian-binary"
		                  : !have_control ? "control.tar"
		                                  : "data.tar");
		goto out;
	}

	const struct control_file *cf = NULL;
	for (size_t i = 0; i < c.n; i++)
		if (strcmp(c.files[i].name, "control") == 0)
			cf = &c.files[i];
	if (!cf) {
		r = mosaic_errorf(err, -EBADMSG, "%s: control.tar has no control file", path);
		goto out;
	}
	if ((r = deb822_parse(cf->data, cf->len, &para, err)) < 0) {
		mosaic_error_prefix(err, "%s: control", path);
		goto out;
	}
	const char *pkg = deb822_get(&para, "Package"), *ver = deb822_get(&para, "Version"),
	           *arch = deb822_get(&para, "Architecture"), *ma = deb822_get(&para, "Multi-Arch");
	if (!pkg || !ver || !arch) {
		r = mosaic_errorf(err, -EBADMSG,
		                  "%s: control lacks Package, Version or Architecture", path);
		goto out;
	}
	/* dpkg names info files "pkg:arch" only for Multi-Arch: same packages. */
	info_name = ma && strcmp(ma, "same") == 0 ? xasprintf("%s:%s", pkg, arch) : xstrdup(pkg);
	int64_t mtime = cf->mtime; /* deterministic without --source-date-epoch too */

	/* Info files, then the .list of the payload alone (as dpkg writes it). */
	if ((r = add_dpkg_info(w, path, info_name, &c, err)) < 0)
		goto out;
	list_path = xasprintf("var/lib/dpkg/info/%s.list", info_name);
	if ((r = add_memory_file(w, list_path, payload_list.buf ? payload_list.buf : "",
	                         payload_list.len, 0644, mtime, err)) < 0)
		goto out;

	m->type = xstrdup("deb");
	m->name = xstrdup(pkg);
	m->version = xstrdup(ver);
	m->arch = xstrdup(arch);
	m->provides = json_object_new_array();
	json_object_array_add(m->provides, json_object_new_string(pkg));
	const char *prov = deb822_get(&para, "Provides");
	if (prov) {
		json_object *p = deb822_relations(prov);
		for (size_t i = 0; i < json_object_array_length(p); i++)
			json_object_array_add(m->provides,
			                      json_object_get(json_object_array_get_idx(p, i)));
		json_object_put(p);
	}
	m->requires = json_object_new_array();
	const char *req_fields[] = {"Pre-Depends", "Depends"};
	for (size_t k = 0; k < ARRAY_SIZE(req_fields); k++) {
		const char *v = deb822_get(&para, req_fields[k]);
		if (!v)
			continue;
		json_object *p = deb822_relations(v);
		for (size_t i = 0; i < json_object_array_length(p); i++)
			json_object_array_add(m->requires,
			                      json_object_get(json_object_array_get_idx(p, i)));
		json_object_put(p);
	}
	m->extra_key = xstrdup("deb");
	m->extra = json_object_new_object();
	const char *keys[] = {"Package",     "Version",  "Architecture", "Multi-Arch", "Depends",
	                      "Pre-Depends", "Provides", "Conflicts",    "Breaks",     "Replaces",
	                      "Essential",   "Priority", "Section",      "Source"};
	for (size_t k = 0; k < ARRAY_SIZE(keys); k++) {
		const char *v = deb822_get(&para, keys[k]);
		if (v)
			json_object_object_add(m->extra, keys[k], json_object_new_string(v));
	}
	json_object_object_add(m->extra, "control", json_object_new_string_len(cf->data, cf->len));
	r = 0;
out:
	free(payload_list.buf);
	deb822_clear(&para);
	control_clear(&c);
	return r;
}
