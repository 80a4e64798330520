/* Live dev fragments: a directory among a mount's fragments is served as it is now. The daemon
 * builds the index with the directory walked live (compose's dev inputs), watches the directory
 * tree with inotify, and on every change builds the index again and switches to it (live.c):
 * the kernel hears of exactly the paths that changed, through the same invalidation as any
 * switch. Dev fragments are unsigned by design; status marks them live. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>

#define DEV_MASK                                                                                   \
	(IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM |          \
	 IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
/* After an event, changes that follow within this are taken in the same rebuild. */
#define QUIET_MS 2

/* The name and kind of the fragment whose image is at path, from the descriptor beside it. */
static int describe(const char *path, struct compose_input *in, struct mosaic_error *err)
{
	size_t l = strlen(path);
	_cleanup_free_ char *json = l > 5 && strcmp(path + l - 5, ".sqfs") == 0
	                                ? xasprintf("%.*s.json", (int)(l - 5), path)
	                                : xasprintf("%s.json", path);
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(json, 16u << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", json, strerror(-r));
	struct fragment_descriptor d;
	if ((r = fragment_descriptor_parse(text, len, &d, err)) < 0)
		return r;
	in->name = xstrdup(d.name);
	in->digest = xstrdup(d.digest);
	in->package = d.kind == FRAGMENT_PACKAGE;
	fragment_descriptor_clear(&d);
	return 0;
}

int dev_compose(struct daemon *d, char *const *images, size_t n, char **index_path,
                struct mosaic_error *err)
{
	struct compose_input *in = xcalloc(n ? n : 1, sizeof(*in));
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		in[i].image_path = images[i];
		if (dev_is_dir(images[i])) {
			char hex[SHA256_HEX_LEN + 1];
			_cleanup_free_ char *key = xasprintf("dev\n%s", images[i]);
			sha256_buffer(key, strlen(key), hex);
			in[i].digest = xstrdup(hex);
			const char *slash = strrchr(images[i], '/');
			in[i].name = xstrdup(slash && slash[1] ? slash + 1 : images[i]);
			in[i].dev = true;
		} else
			r = describe(images[i], &in[i], err);
	}
	uint64_t seq = __atomic_add_fetch(&d->dev_builds, 1, __ATOMIC_RELAXED);
	_cleanup_free_ char *name = xasprintf("dev-%" PRIu64 ".idx", seq);
	char *out = path_join(d->state_dir, name);
	if (r == 0)
		r = compose_index_build(in, n, NULL, out, NULL, err);
	for (size_t i = 0; i < n; i++) {
		free((char *)in[i].name);
		free((char *)in[i].digest);
	}
	free(in);
	if (r < 0) {
		unlink(out);
		free(out);
		return r;
	}
	*index_path = out;
	return 0;
}

/* ---- watching ------------------------------------------------------------------------------ */

static void watch_tree(struct daemon *d, const char *dir)
{
	if (inotify_add_watch(d->dev_fd, dir, DEV_MASK | IN_ONLYDIR) < 0)
		return;
	DIR *dp = opendir(dir);
	if (!dp)
		return;
	struct dirent *de;
	while ((de = readdir(dp)))
		if (de->d_type == DT_DIR && strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			_cleanup_free_ char *sub = path_join(dir, de->d_name);
			watch_tree(d, sub);
		}
	closedir(dp);
}

/* Every directory of every dev fragment served: new ones are watched as they come (watching
 * twice is harmless: inotify gives the same watch). */
static void watch_all(struct daemon *d)
{
	pthread_rwlock_rdlock(&d->live);
	for (size_t i = 0; i < d->cur->n_frags; i++)
		if (d->cur->frags[i]->dev)
			watch_tree(d, d->cur->frags[i]->path);
	pthread_rwlock_unlock(&d->live);
}

/* Builds the index of the served fragments as the dev directories are now, and switches. */
static void rebuild(struct daemon *d)
{
	pthread_rwlock_rdlock(&d->live);
	/* A switch made meanwhile (mosaic switch) wins: this rebuild then starts again. */
	uint64_t base = __atomic_load_n(&d->switches, __ATOMIC_ACQUIRE) + 1;
	size_t n = d->cur->n_frags;
	char **images = xcalloc(n + 1, sizeof(*images));
	for (size_t i = 0; i < n; i++)
		images[i] = xstrdup(d->cur->frags[i]->path);
	json_object *info = json_object_get(d->cur->info);
	pthread_rwlock_unlock(&d->live);
	struct mosaic_error err = {0};
	char *index = NULL;
	struct live_switch_result res;
	int r = dev_compose(d, images, n, &index, &err);
	if (r == 0)
		r = live_switch(d, index, images, n, info, true, base, &res, &err);
	if (r == 0) {
		__atomic_add_fetch(&d->dev_switches, 1, __ATOMIC_RELAXED);
		daemon_write_state(d);
		daemon_write_stats(d);
	} else if (r == -EAGAIN) {
		unlink(index);
		free(index);
		json_object_put(info);
		strv_free(images, n);
		return rebuild(d);
	} else {
		/* A half-written file can make a walk fail; the next event tries again. */
		fprintf(stderr, "mosaic: dev: %s\n", err.msg);
		if (index)
			unlink(index);
	}
	free(index);
	json_object_put(info);
	strv_free(images, n);
}

static void drain(int fd)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static void *dev_thread(void *arg)
{
	struct daemon *d = arg;
	while (wait_readable(d->dev_fd, d->dev_stop[0])) {
		/* Take what comes in a burst (an editor's write, rename, chmod) together. */
		struct pollfd p = {.fd = d->dev_fd, .events = POLLIN};
		do
			drain(d->dev_fd);
		while (poll(&p, 1, QUIET_MS) > 0 && (p.revents & POLLIN));
		watch_all(d); /* directories made meanwhile */
		rebuild(d);
	}
	return NULL;
}

int dev_start(struct daemon *d, struct mosaic_error *err)
{
	bool any = false;
	for (size_t i = 0; i < d->cur->n_frags; i++)
		any |= d->cur->frags[i]->dev;
	if (!any)
		return 0;
	d->dev_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (d->dev_fd < 0)
		return mosaic_errorf(err, -errno, "inotify: %m");
	if (pipe2(d->dev_stop, O_CLOEXEC) < 0) {
		close(d->dev_fd);
		return mosaic_errorf(err, -errno, "pipe: %m");
	}
	watch_all(d);
	pthread_create(&d->dev_watch, NULL, dev_thread, d);
	d->dev_started = true;
	return 0;
}

void dev_stop(struct daemon *d)
{
	if (!d->dev_started)
		return;
	thread_stop(d->dev_watch, d->dev_stop);
	close(d->dev_fd);
	d->dev_started = false;
}
