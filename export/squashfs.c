/* The view as one squashfs image, written by fragments/'s libsquashfs writer (the one every
 * fragment is made with) straight from the reader: no unpacked tree. The writer pulls a file's
 * content while the reader pushes it, so each file passes through a buffer: memory for the
 * common small file, an unlinked temp file beside the image for a big one. */
#include "export/internal.h"

#include "fragments/fragment.h"

#include <fcntl.h>
#include <search.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files up to this size are buffered in memory, bigger ones in the spill file. */
#define MEM_LIMIT (16u << 20)

struct first_name {
	uint64_t id;
	char *path; /* the first name of a hard-linked file, which later names link to */
};

static int first_name_cmp(const void *a, const void *b)
{
	const struct first_name *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

static void first_name_free(void *p)
{
	struct first_name *f = p;
	free(f->path);
	free(f);
}

struct sq {
	struct export_reader *r;
	struct fwriter *w;
	int64_t epoch;
	const char *dir;  /* where the spill file goes */
	void *links;      /* tsearch tree of struct first_name */
	char *mem;        /* the memory buffer, MEM_LIMIT bytes once used */
	int spill;        /* the spill file, -1 until a big file needs it */
	uint64_t fill;    /* bytes of the current file buffered */
	uint64_t pos;     /* bytes of it handed to the writer */
	bool spilled;     /* the current file is in the spill file */
	struct fxattr *x; /* the entry's xattrs squashfs can hold */
	struct export_squashfs_result *res;
	struct mosaic_error *err;
};

static int buffer_sink(void *ctx, const void *buf, size_t len)
{
	struct sq *s = ctx;
	if (!s->spilled) {
		memcpy(s->mem + s->fill, buf, len);
	} else {
		ssize_t n;
		for (size_t done = 0; done < len; done += n) {
			n = pwrite(s->spill, (const char *)buf + done, len - done, s->fill + done);
			if (n < 0 && errno == EINTR)
				n = 0;
			else if (n < 0)
				return mosaic_errorf(s->err, -errno,
				                     "writing a temp file in %s: %m", s->dir);
		}
	}
	s->fill += len;
	return 0;
}

static ssize_t buffer_read(void *ctx, void *buf, size_t len)
{
	struct sq *s = ctx;
	size_t n = s->fill - s->pos < len ? s->fill - s->pos : len;
	if (n == 0)
		return 0;
	if (!s->spilled) {
		memcpy(buf, s->mem + s->pos, n);
	} else {
		ssize_t got;
		while ((got = pread(s->spill, buf, n, s->pos)) < 0 && errno == EINTR)
			;
		if (got <= 0)
			return got < 0 ? -errno : -EIO;
		n = got;
	}
	s->pos += n;
	return n;
}

/* Loads regular file e into the buffer the writer then reads. */
static int buffer_file(struct sq *s, const struct export_entry *e)
{
	s->fill = s->pos = 0;
	s->spilled = e->size > MEM_LIMIT;
	if (!s->spilled && !s->mem)
		s->mem = xmalloc(MEM_LIMIT);
	if (s->spilled && s->spill < 0) {
		s->spill = open(s->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (s->spill < 0)
			return mosaic_errorf(s->err, -errno, "a temp file in %s: %m", s->dir);
	}
	if (e->size > MEM_LIMIT && ftruncate(s->spill, 0) < 0)
		return mosaic_errorf(s->err, -errno, "a temp file in %s: %m", s->dir);
	int r = export_read_content(s->r, e, buffer_sink, s, s->err);
	if (r == 0 && s->fill != e->size)
		r = mosaic_errorf(s->err, -EIO, "/%s: read %ju bytes, not %ju", e->path,
		                  (uintmax_t)s->fill, (uintmax_t)e->size);
	return r;
}

static bool xattr_storable(const char *name)
{
	return strncmp(name, "user.", 5) == 0 || strncmp(name, "trusted.", 8) == 0 ||
	       strncmp(name, "security.", 9) == 0;
}

static int add_entry(void *ctx, const struct export_entry *e)
{
	struct sq *s = ctx;
	struct export_squashfs_result *res = s->res;
	res->entries++;
	if (e->mtime > res->newest_mtime)
		res->newest_mtime = e->mtime;
	if (e->link_id) {
		struct first_name *f = xmalloc(sizeof(*f));
		*f = (struct first_name){.id = e->link_id, .path = xstrdup(e->path)};
		struct first_name **found = tsearch(f, &s->links, first_name_cmp);
		if (!found)
			abort(); /* out of memory */
		if (*found != f) {
			first_name_free(f);
			return fwriter_add_hardlink(s->w, e->path, (*found)->path, s->err);
		}
	}
	/* squashfs has no namespace for system.* (POSIX ACLs): left out, as mksquashfs does,
	 * and counted. */
	s->x = xrealloc(s->x, (e->n_xattrs ? e->n_xattrs : 1) * sizeof(*s->x));
	size_t n = 0;
	for (size_t i = 0; i < e->n_xattrs; i++) {
		if (!xattr_storable(e->xattrs[i].name)) {
			res->skipped_xattrs++;
			continue;
		}
		s->x[n++] = (struct fxattr){
		    .key = e->xattrs[i].name, .value = e->xattrs[i].value, .len = e->xattrs[i].len};
	}
	const struct fentry fe = {
	    .mode = e->mode,
	    .uid = e->uid,
	    .gid = e->gid,
	    .mtime = s->epoch >= 0 && e->mtime > s->epoch ? s->epoch : e->mtime,
	    .rdev = e->rdev,
	    .link = e->link,
	    .xattrs = s->x,
	    .n_xattrs = n,
	};
	if (S_ISREG(e->mode) && e->size > 0) {
		int r = buffer_file(s, e);
		if (r < 0)
			return r;
		res->content_bytes += e->size;
		return fwriter_add(s->w, e->path, &fe, buffer_read, s, s->err);
	}
	return fwriter_add(s->w, e->path, &fe, NULL, NULL, s->err);
}

int export_squashfs(struct export_reader *r, const struct export_squashfs_options *o,
                    struct export_squashfs_result *res, struct mosaic_error *err)
{
	*res = (struct export_squashfs_result){.newest_mtime = INT64_MIN};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	const struct fwriter_options wo = {
	    .mtime = o->mtime,
	    .workers = cpus > 1 ? (cpus > 8 ? 8 : (unsigned)cpus) : 1,
	    .level = o->level,
	};
	_cleanup_free_ char *copy = xstrdup(o->path);
	char *slash = strrchr(copy, '/');
	if (slash)
		*slash = '\0';
	struct sq s = {.r = r,
	               .epoch = o->source_date_epoch,
	               .dir = slash ? (*copy ? copy : "/") : ".",
	               .spill = -1,
	               .res = res,
	               .err = err};
	int e = fwriter_new(o->path, &wo, &s.w, err);
	if (e < 0)
		return e;
	e = export_walk(r, add_entry, &s, err);
	if (e == 0)
		e = fwriter_finish(s.w, err);
	fwriter_free(s.w);
	tdestroy(s.links, first_name_free);
	free(s.mem);
	free(s.x);
	if (s.spill >= 0)
		close(s.spill);
	if (e < 0)
		return e;
	struct stat st;
	if (stat(o->path, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", o->path);
	res->size = st.st_size;
	return 0;
}
