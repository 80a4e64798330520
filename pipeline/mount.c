/* pipeline/: mounting a composition with the FUSE daemon, and what the commands that work on a
 * running mount ask of it first. */
#include "pipeline/internal.h"

#include <ftw.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>

/* A MANIFEST's fragments marked dev: true whose path is a directory are served live: the
 * directory takes the place of the fragment the build froze from it. */
static int serve_dev_live(struct composition *c, struct mosaic_error *err)
{
	json_object *frs = NULL;
	if (c->kind != PIPELINE_FROM_MANIFEST ||
	    !json_object_object_get_ex(c->model, "fragments", &frs) || !frs)
		return 0;
	struct lock l = {0};
	bool have = false;
	for (size_t i = 0; i < json_object_array_length(frs); i++) {
		json_object *f = json_object_array_get_idx(frs, i);
		const char *path = model_str(f, "path");
		struct stat st;
		if (!model_bool(f, "dev", false) || !path || stat(path, &st) < 0 ||
		    !S_ISDIR(st.st_mode))
			continue;
		if (!have && lock_read(c->lock_path, &l, err) < 0)
			return -EINVAL;
		have = true;
		for (size_t j = 0; l.fragments && j < json_object_array_length(l.fragments); j++) {
			json_object *e = json_object_array_get_idx(l.fragments, j);
			const char *source = model_str(e, "source"), *d = model_str(e, "digest");
			if (!source || !d || strcmp(source, path) != 0)
				continue;
			for (size_t k = 0; k < c->n_images; k++)
				if (strstr(c->images[k], d)) {
					free(c->images[k]);
					c->images[k] = xstrdup(path);
				}
		}
	}
	if (have)
		lock_clear(&l);
	return 0;
}

int pipeline_mount(const struct pipeline_source *src, const struct fusefs_options *o_in,
                   struct pipeline_mount_result *res, struct pipeline_events *ev,
                   struct mosaic_error *err)
{
	struct fusefs_options o = *o_in;
	_cleanup_free_ char *work = NULL;
	if (o.upper && !o.work) {
		_cleanup_free_ char *a = xstrdup(o.upper), *b = xstrdup(o.upper);
		work = xasprintf("%s/.%s.work", dirname(a), basename(b));
		o.work = work;
	}
	struct keyring *k = NULL;
	_cleanup_free_ char *def = src->keyring ? NULL : keyring_default_path();
	int r = keyring_open(src->keyring ? src->keyring : def, &k, err);
	if (r < 0)
		return r;
	struct pipeline_source s = *src;
	s.mountpoints = false;
	struct composition *c = NULL;
	r = pipeline_open(&s, &c, ev, err);
	if (r == 0)
		r = serve_dev_live(c, err);
	if (r == 0) {
		o.keyring = k;
		o.keyring_path = src->keyring ? src->keyring : def;
		o.index_path = c->index_path;
		o.images = c->images;
		o.n_images = c->n_images;
		o.info = pipeline_composition_info(&s, c);
		*res = (struct pipeline_mount_result){.n_fragments = c->n_images};
		r = fusefs_mount(&o, &res->picked, err);
	}
	json_object *st;
	if (r == 0 && !o.foreground && res->picked == FUSEFS_WRITABLE_FUSE &&
	    fusefs_status(o.mountpoint, &st, NULL) == 0) {
		json_object *fb;
		if (json_object_object_get_ex(st, "fallback", &fb) && fb)
			res->fallback = xstrdup(json_object_get_string(fb));
		json_object_put(st);
	}
	json_object_put(o.info);
	composition_free(c);
	keyring_free(k);
	return r;
}

int pipeline_writable_mount(const char *mountpoint, char **real, char **upper, char **mode,
                            struct mosaic_error *err)
{
	struct composition *c;
	int r = pipeline_open_mount(mountpoint, false, &c, err);
	if (r < 0)
		return r;
	if (!c->running)
		r = mosaic_errorf(
		    err, -ESRCH,
		    "the daemon serving %s is not running; 'mosaic umount %s' and mount "
		    "it again",
		    mountpoint, mountpoint);
	else if (!c->upper || !c->mode || (strcmp(c->mode, "overlay") && strcmp(c->mode, "fuse")))
		r = mosaic_errorf(err, -EINVAL,
		                  "%s is mounted read-only: there is no upper layer to write into "
		                  "(mount it with --upper DIR)",
		                  mountpoint);
	if (r == 0) {
		*real = TAKE_PTR(c->mountpoint);
		*upper = TAKE_PTR(c->upper);
		*mode = TAKE_PTR(c->mode);
	}
	composition_free(c);
	return r;
}

/* du of the upper: bytes allocated (hard links once) and entries, the upper root excluded. */
struct file_id {
	dev_t dev;
	ino_t ino;
	blkcnt_t blocks;
};
struct usage {
	uint64_t bytes, entries;
	struct file_id *linked; /* multiply linked files: counted once each, after the walk */
	size_t n_linked, cap;
};
static struct usage *usage_walk; /* nftw passes no context */

static int usage_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)flag;
	struct usage *u = usage_walk;
	if (ftw->level == 0)
		return 0;
	u->entries++;
	if (S_ISDIR(st->st_mode) || st->st_nlink < 2) {
		u->bytes += (uint64_t)st->st_blocks * 512;
		return 0;
	}
	if (u->n_linked == u->cap) {
		u->cap = u->cap ? 2 * u->cap : 64;
		u->linked = xrealloc(u->linked, u->cap * sizeof(*u->linked));
	}
	u->linked[u->n_linked++] = (struct file_id){st->st_dev, st->st_ino, st->st_blocks};
	return 0;
}

static int file_id_cmp(const void *a, const void *b)
{
	const struct file_id *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return (x->ino > y->ino) - (x->ino < y->ino);
}

static void add_upper_usage(json_object *s)
{
	json_object *v;
	if (!json_object_object_get_ex(s, "upper", &v) || !v)
		return;
	struct usage u = {0};
	usage_walk = &u;
	int r = nftw(json_object_get_string(v), usage_one, 64, FTW_PHYS | FTW_MOUNT);
	usage_walk = NULL;
	if (u.n_linked)
		qsort_safe(u.linked, u.n_linked, sizeof(*u.linked), file_id_cmp);
	for (size_t i = 0; i < u.n_linked; i++)
		if (i == 0 || file_id_cmp(&u.linked[i - 1], &u.linked[i]) != 0)
			u.bytes += (uint64_t)u.linked[i].blocks * 512;
	free(u.linked);
	if (r == 0) {
		json_object_object_add(s, "upper_size", json_object_new_int64(u.bytes));
		json_object_object_add(s, "upper_entries", json_object_new_int64(u.entries));
	}
}

int pipeline_status(const char *mountpoint, json_object **out, struct mosaic_error *err)
{
	int r = fusefs_status(mountpoint, out, err);
	if (r == 0)
		add_upper_usage(*out);
	return r;
}
