/* The read-only view's primitives that its handlers (ops.c) and the upper's (upper.c) share: an
 * index inode's attributes, fragment files opened (the fragment verified on first use) and read
 * under their fragment's lock, and the daemon's files in its state directory (stats.json). The
 * bottom of fusefs/: it uses none of the module's other files. */
#include "fragments/fragment.h"
#include "fusefs/internal.h"

#include <fcntl.h>
#include <poll.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

void fusefs_index_stat(const struct compose_inode *in, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = in->mode;
	st->st_nlink = in->nlink;
	st->st_uid = in->uid;
	st->st_gid = in->gid;
	st->st_size = in->size;
	st->st_rdev = makedev(in->rdev >> 20, in->rdev & 0xfffff);
	st->st_blksize = 4096;
	st->st_blocks = (in->size + 511) / 512;
	st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = in->mtime;
	/* live dev files keep their nanoseconds; images have whole seconds (0 here) */
	st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = in->mtime_nsec;
}

/* ---- file data ---------------------------------------------------------------------------- */

int fusefs_frag_check(struct daemon *d, struct frag *f, struct mosaic_error *err)
{
	struct fragment_descriptor desc;
	int r = 0;
	if (d->keyring && (r = fragment_verify(d->keyring, f->path, &desc, err)) == 0) {
		/* The image must be the fragment the index names, not any trusted one. */
		if (strcmp(desc.digest, f->digest) != 0)
			r = mosaic_errorf(err, -EBADMSG,
			                  "%s is fragment %.12s, but the index names %.12s there",
			                  f->path, desc.digest, f->digest);
		fragment_descriptor_clear(&desc);
	}
	if (r == 0)
		r = fragment_image_open(f->path, &f->image, err);
	return r;
}

static int frag_use(struct daemon *d, struct frag *f)
{
	/* Called with f->lock held. */
	if (f->image)
		return 0;
	if (f->error)
		return f->error;
	struct mosaic_error err = {0};
	int r = fusefs_frag_check(d, f, &err);
	if (r < 0) {
		fprintf(stderr, "mosaic: %s\n", err.msg);
		f->error = -EIO;
		return f->error;
	}
	__atomic_add_fetch(&d->fragment_opens, 1, __ATOMIC_RELAXED);
	daemon_write_stats(d);
	return 0;
}

bool dev_is_dir(const char *path)
{
	/* A fragment image is a .sqfs file: no stat for the thousand of them a mount has. */
	size_t l = strlen(path);
	if (l > 5 && strcmp(path + l - 5, ".sqfs") == 0)
		return false;
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A file of a live dev directory, by the path the index recorded for it. */
static int dev_open(const struct gen *g, const struct frag *f, const struct compose_inode *in)
{
	if (!in->data_len || in->data_len >= PATH_MAX)
		return -EIO;
	char rel[PATH_MAX];
	memcpy(rel, compose_index_string(g->idx, in->data_off), in->data_len);
	rel[in->data_len] = '\0';
	_cleanup_free_ char *p = path_join(f->path, rel);
	int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int fusefs_frag_open(struct daemon *d, const struct gen *g, const struct compose_inode *in,
                     struct open_file **out)
{
	if (!S_ISREG(in->mode) || in->fragment >= g->n_frags)
		return -EIO;
	struct frag *f = g->frags[in->fragment];
	if (f->dev) {
		int fd = dev_open(g, f, in);
		if (fd < 0)
			return fd;
		struct open_file *of = xcalloc(1, sizeof(*of));
		of->fd = fd;
		*out = of;
		return 0;
	}
	struct open_file *of = calloc(1, sizeof(*of));
	if (!of)
		return -ENOMEM;
	of->fd = -1;
	of->frag = f;
	pthread_mutex_lock(&f->lock);
	int r = frag_use(d, f);
	if (r == 0)
		r = fragment_file_open(f->image, in->frag_inode, &of->file);
	pthread_mutex_unlock(&f->lock);
	if (r < 0) {
		free(of);
		return r;
	}
	*out = of;
	return 0;
}

ssize_t fusefs_frag_pread(struct open_file *of, void *buf, size_t size, off_t off)
{
	pthread_mutex_lock(&of->frag->lock);
	ssize_t n = fragment_file_read(of->frag->image, of->file, off, buf, size);
	pthread_mutex_unlock(&of->frag->lock);
	return n;
}

void fusefs_open_file_free(struct open_file *of)
{
	if (!of)
		return;
	if (of->fd >= 0)
		close(of->fd);
	free(of->file);
	free(of);
}

/* A read without an open handle: the fragment is found from the inode, and opened and
 * verified here on its first use. */
ssize_t fusefs_index_read(struct daemon *d, const struct gen *g, uint32_t ino, void *buf,
                          size_t size, off_t off)
{
	const struct compose_inode *in = compose_index_inode(g->idx, ino);
	if (!in)
		return -ENOENT;
	if (!S_ISREG(in->mode) || in->fragment >= g->n_frags)
		return -EIO;
	struct frag *f = g->frags[in->fragment];
	if (f->dev) {
		int fd = dev_open(g, f, in);
		if (fd < 0)
			return fd;
		ssize_t n = pread(fd, buf, size, off);
		n = n < 0 ? -errno : n;
		close(fd);
		return n;
	}
	pthread_mutex_lock(&f->lock);
	ssize_t n = frag_use(d, f);
	if (n == 0)
		n = fragment_image_read(f->image, in->frag_inode, off, buf, size);
	pthread_mutex_unlock(&f->lock);
	return n;
}

/* ---- the state directory ------------------------------------------------------------------ */

const char *fusefs_writable_name(enum fusefs_writable w)
{
	switch (w) {
	case FUSEFS_READ_ONLY:
		return "read-only";
	case FUSEFS_WRITABLE_AUTO:
		return "auto";
	case FUSEFS_WRITABLE_OVERLAY:
		return "overlay";
	case FUSEFS_WRITABLE_FUSE:
		return "fuse";
	}
	return "?";
}

int daemon_write_json(const char *dir, const char *name, json_object *o)
{
	_cleanup_free_ char *p = path_join(dir, name);
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
	                                                      JSON_C_TO_STRING_NOSLASHESCAPE);
	return write_file_atomic(p, s, strlen(s), 0644);
}

void daemon_write_stats(struct daemon *d)
{
	pthread_mutex_lock(&d->stats_lock);
	json_object *o = json_object_new_object();
	json_object_object_add(
	    o, "fragment_opens",
	    json_object_new_int64(__atomic_load_n(&d->fragment_opens, __ATOMIC_RELAXED)));
	json_object_object_add(
	    o, "invalidations",
	    json_object_new_int64(__atomic_load_n(&d->invalidations, __ATOMIC_RELAXED)));
	json_object_object_add(
	    o, "dev_switches",
	    json_object_new_int64(__atomic_load_n(&d->dev_switches, __ATOMIC_RELAXED)));
	daemon_write_json(d->state_dir, "stats.json", o);
	json_object_put(o);
	pthread_mutex_unlock(&d->stats_lock);
}

void daemon_write_state(struct daemon *d)
{
	json_object *s = json_object_new_object();
	json_object_object_add(s, "pid", json_object_new_int(getpid()));
	json_object_object_add(s, "mountpoint", json_object_new_string(d->mountpoint));
	json_object_object_add(s, "mode", json_object_new_string(fusefs_writable_name(d->mode)));
	if (d->fallback)
		json_object_object_add(s, "fallback", json_object_new_string(d->fallback));
	if (d->keyring_path)
		json_object_object_add(s, "keyring", json_object_new_string(d->keyring_path));
	if (d->fuse_options)
		json_object_object_add(s, "fuse_options", json_object_new_string(d->fuse_options));
	json_object_object_add(s, "index", json_object_new_string(d->cur->index_path));
	json_object_object_add(s, "lower",
	                       d->mode == FUSEFS_WRITABLE_OVERLAY ? json_object_new_string(d->lower)
	                                                          : NULL);
	json_object_object_add(s, "upper", d->upper ? json_object_new_string(d->upper) : NULL);
	json_object_object_add(s, "work",
	                       d->work && d->upper ? json_object_new_string(d->work) : NULL);
	json_object *fr = json_object_new_array();
	for (size_t i = 0; i < d->cur->n_frags; i++)
		json_object_array_add(fr, json_object_new_string(d->cur->frags[i]->path));
	json_object_object_add(s, "fragments", fr);
	json_object *dev = json_object_new_array();
	for (size_t i = 0; i < d->cur->n_frags; i++)
		if (d->cur->frags[i]->dev)
			json_object_array_add(dev, json_object_new_string(d->cur->frags[i]->path));
	json_object_object_add(s, "dev", dev);
	if (d->cur->info)
		json_object_object_add(s, "generation", json_object_get(d->cur->info));
	if (d->history)
		json_object_object_add(s, "history", json_object_get(d->history));
	/* "previous" (what rollback goes back to) stays in the daemon: with a thousand
	 * fragments each, it would make state.json megabytes that every command reads. */
	json_object_object_add(
	    s, "can_roll_back",
	    json_object_new_int(d->previous ? json_object_array_length(d->previous) : 0));
	daemon_write_json(d->state_dir, "state.json", s);
	json_object_put(s);
}

/* ---- open handles --------------------------------------------------------------------------- */

static struct handle_slot *handle_slot(struct daemon *d, uint64_t fh)
{
	if (fh == 0 || fh > HCHUNKS * (uint64_t)HCHUNK_SIZE)
		return NULL;
	struct handle_slot *c =
	    __atomic_load_n(&d->hchunks[(fh - 1) / HCHUNK_SIZE], __ATOMIC_ACQUIRE);
	return c ? &c[(fh - 1) % HCHUNK_SIZE] : NULL;
}

uint64_t handle_put(struct daemon *d, void *p, enum handle_kind kind)
{
	pthread_mutex_lock(&d->handles_lock);
	uint64_t fh;
	if (d->n_free_handles)
		fh = d->free_handles[--d->n_free_handles];
	else
		fh = ++d->last_handle;
	size_t c = (fh - 1) / HCHUNK_SIZE;
	if (c >= HCHUNKS)
		abort(); /* 2^32 open handles */
	if (!d->hchunks[c])
		__atomic_store_n(&d->hchunks[c], xcalloc(HCHUNK_SIZE, sizeof(struct handle_slot)),
		                 __ATOMIC_RELEASE);
	*handle_slot(d, fh) = (struct handle_slot){.p = p, .kind = kind};
	pthread_mutex_unlock(&d->handles_lock);
	return fh;
}

void *handle_get(struct daemon *d, uint64_t fh)
{
	struct handle_slot *s = handle_slot(d, fh);
	return s ? s->p : NULL;
}

void *handle_take(struct daemon *d, uint64_t fh)
{
	pthread_mutex_lock(&d->handles_lock);
	struct handle_slot *s = handle_slot(d, fh);
	void *p = s ? s->p : NULL;
	if (p) {
		*s = (struct handle_slot){0};
		if (d->n_free_handles == d->cap_free_handles) {
			d->cap_free_handles = d->cap_free_handles ? 2 * d->cap_free_handles : 64;
			d->free_handles = xrealloc(d->free_handles,
			                           d->cap_free_handles * sizeof(*d->free_handles));
		}
		d->free_handles[d->n_free_handles++] = fh;
	}
	pthread_mutex_unlock(&d->handles_lock);
	return p;
}

void handles_free(struct daemon *d)
{
	if (!d->hchunks)
		return;
	for (size_t c = 0; c <= d->last_handle / HCHUNK_SIZE && c < HCHUNKS; c++)
		free(d->hchunks[c]);
	free(d->hchunks);
	d->hchunks = NULL;
	free(d->free_handles);
	d->free_handles = NULL;
	d->n_free_handles = d->cap_free_handles = 0;
}

void thread_stop(pthread_t t, int stop[2])
{
	write_all(stop[1], "x", 1);
	pthread_join(t, NULL);
	close(stop[0]);
	close(stop[1]);
}

bool wait_readable(int fd, int stop)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = stop, .events = POLLIN}};
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return false;
		if (p[1].revents)
			return false;
		if (p[0].revents & POLLIN)
			return true;
	}
}
