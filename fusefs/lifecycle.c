/* Mount and unmount: the daemon's state directory, daemonising with a readiness pipe, stacking
 * kernel overlayfs over the view for --writable=overlay, and a clean exit on SIGTERM or
 * unmount. State lives in /run/mosaic/<id>/ (root) or $XDG_RUNTIME_DIR/mosaic/<id>/, id being
 * the hash of the mountpoint's real path: state.json (pid, mode, layers), stats.json
 * (counters), lower/ (where the view is mounted when overlayfs is stacked on it), daemon.log. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

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

static char *runtime_dir(void)
{
	if (geteuid() == 0)
		return xstrdup("/run/mosaic");
	const char *x = getenv("XDG_RUNTIME_DIR");
	if (x && *x)
		return path_join(x, "mosaic");
	return xasprintf("/tmp/mosaic-%u", (unsigned)geteuid());
}

static char *state_dir_for(const char *real_mountpoint)
{
	char hex[SHA256_HEX_LEN + 1];
	sha256_buffer(real_mountpoint, strlen(real_mountpoint), hex);
	_cleanup_free_ char *rt = runtime_dir();
	return xasprintf("%s/%.16s", rt, hex);
}

static bool is_mountpoint(const char *path)
{
	struct stat a, b;
	_cleanup_free_ char *parent = path_join(path, "..");
	if (stat(path, &a) < 0 || stat(parent, &b) < 0)
		return false;
	return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static bool pid_alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

static json_object *read_json(const char *dir, const char *name)
{
	_cleanup_free_ char *p = path_join(dir, name);
	return json_object_from_file(p);
}

static int write_json(const char *dir, const char *name, json_object *o)
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
	write_json(d->state_dir, "stats.json", o);
	json_object_put(o);
	pthread_mutex_unlock(&d->stats_lock);
}

/* ---- the daemon --------------------------------------------------------------------------- */

struct ready {
	const struct fusefs_options *o;
	const char *mountpoint, *lower;
	enum fusefs_writable mode;
	struct fuse_session *se;
	int pipe_fd;
	bool overlay_mounted;
};

static void say(int fd, const char *msg)
{
	if (fd >= 0) {
		write_all(fd, msg, strlen(msg));
		close(fd);
	}
}

static char *overlay_options(const struct fusefs_options *o, const char *lower)
{
	/* Only whiteouts and opaque markers in the upper: the format --writable=fuse and
	 * 'mosaic commit' read. redirect_dir, metacopy and index would add overlayfs-only state. */
	return xasprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=off,metacopy=off,"
	                 "index=off,xino=off",
	                 lower, o->upper, o->work);
}

static void *ready_thread(void *arg)
{
	struct ready *rd = arg;
	char msg[1024];
	struct stat st;
	if (rd->mode == FUSEFS_WRITABLE_OVERLAY) {
		_cleanup_free_ char *opts = overlay_options(rd->o, rd->lower);
		if (mount("mosaic", rd->mountpoint, "overlay", 0, opts) < 0) {
			snprintf(msg, sizeof(msg),
			         "mounting overlayfs at %s over the view failed: %s (try "
			         "--writable=fuse)\n",
			         rd->mountpoint, strerror(errno));
			say(rd->pipe_fd, msg);
			fuse_session_exit(rd->se);
			fuse_session_unmount(rd->se);
			return NULL;
		}
		rd->overlay_mounted = true;
	}
	/* The first request goes through the session loop: when stat answers, it serves. */
	if (stat(rd->mountpoint, &st) < 0) {
		snprintf(msg, sizeof(msg), "%s: mounted but not answering: %s\n", rd->mountpoint,
		         strerror(errno));
		say(rd->pipe_fd, msg);
		return NULL;
	}
	say(rd->pipe_fd, "OK\n");
	return NULL;
}

static int daemon_main(const struct fusefs_options *o, const char *mountpoint,
                       const char *state_dir, enum fusefs_writable mode, int pipe_fd)
{
	struct mosaic_error err = {0};
	struct daemon d = {
	    .keyring = o->keyring, .state_dir = xstrdup(state_dir), .timeout = 86400};
	char msg[1200];
	int r = compose_index_open(o->index_path, &d.idx, &err);
	if (r < 0) {
		snprintf(msg, sizeof(msg), "%s\n", err.msg);
		say(pipe_fd, msg);
		return 1;
	}
	pthread_mutex_init(&d.stats_lock, NULL);
	d.n_frags = o->n_images;
	d.frags = xcalloc(d.n_frags ? d.n_frags : 1, sizeof(*d.frags));
	for (size_t i = 0; i < d.n_frags; i++) {
		pthread_mutex_init(&d.frags[i].lock, NULL);
		d.frags[i].path = o->images[i];
	}
	for (uint32_t i = 1; i <= compose_index_inodes(d.idx); i++)
		if (S_ISREG(compose_index_inode(d.idx, i)->mode))
			d.total_bytes += compose_index_inode(d.idx, i)->size;
	daemon_write_stats(&d);

	_cleanup_free_ char *lower = path_join(state_dir, "lower");
	const char *target = mode == FUSEFS_WRITABLE_OVERLAY ? lower : mountpoint;
	_cleanup_free_ char *fopts =
	    xasprintf("ro,default_permissions,fsname=mosaic,subtype=mosaic%s%s%s",
	              geteuid() == 0 ? ",allow_other,dev,suid" : "", o->fuse_options ? "," : "",
	              o->fuse_options ? o->fuse_options : "");
	char *argv[] = {"mosaic", "-o", fopts, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	struct fuse_session *se = fuse_session_new(&args, &fusefs_ops, sizeof(fusefs_ops), &d);
	if (!se) {
		snprintf(msg, sizeof(msg), "cannot start a FUSE session (bad -o options?)\n");
		say(pipe_fd, msg);
		return 1;
	}
	if (fuse_set_signal_handlers(se) < 0 || fuse_session_mount(se, target) < 0) {
		snprintf(msg, sizeof(msg), "mounting the view at %.1000s failed: %s\n", target,
		         strerror(errno));
		say(pipe_fd, msg);
		fuse_session_destroy(se);
		return 1;
	}
	struct ready rd = {.o = o,
	                   .mountpoint = mountpoint,
	                   .lower = lower,
	                   .mode = mode,
	                   .se = se,
	                   .pipe_fd = pipe_fd};
	pthread_t t;
	pthread_create(&t, NULL, ready_thread, &rd);
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, 16);
	fuse_loop_cfg_set_idle_threads(cfg, 4);
	r = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	pthread_join(t, NULL);
	/* SIGTERM, or the view was unmounted: take down what is still mounted, upper first. */
	if (rd.overlay_mounted && is_mountpoint(mountpoint))
		umount2(mountpoint, MNT_DETACH);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	for (size_t i = 0; i < d.n_frags; i++)
		fragment_image_close(d.frags[i].image);
	free(d.frags);
	compose_index_close(d.idx);
	_cleanup_free_ char *state = path_join(state_dir, "state.json");
	_cleanup_free_ char *stats = path_join(state_dir, "stats.json");
	_cleanup_free_ char *log = path_join(state_dir, "daemon.log");
	unlink(state);
	unlink(stats);
	unlink(log);
	rmdir(lower);
	rmdir(state_dir);
	free(d.state_dir);
	return r < 0 ? 1 : 0;
}

int fusefs_mount(const struct fusefs_options *o, enum fusefs_writable *picked,
                 struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	struct stat st;
	if (!realpath(o->mountpoint, mnt) || stat(mnt, &st) < 0)
		return mosaic_errorf(err, -errno, "mountpoint %s: %m", o->mountpoint);
	if (!S_ISDIR(st.st_mode))
		return mosaic_errorf(err, -ENOTDIR, "mountpoint %s: not a directory",
		                     o->mountpoint);
	_cleanup_free_ char *state = state_dir_for(mnt);
	json_object *old = read_json(state, "state.json");
	json_object *pid_o;
	if (old && json_object_object_get_ex(old, "pid", &pid_o) &&
	    pid_alive(json_object_get_int(pid_o))) {
		json_object_put(old);
		return mosaic_errorf(err, -EBUSY,
		                     "%s is already mounted by mosaic; 'mosaic umount %s' first",
		                     mnt, mnt);
	}
	json_object_put(old);
	if (is_mountpoint(mnt))
		return mosaic_errorf(
		    err, -EBUSY, "%s is already a mount point; unmount it or pick another", mnt);

	/* Everything that can be refused is refused here, before anything is mounted. */
	struct compose_index *idx;
	int r = compose_index_open(o->index_path, &idx, err);
	if (r < 0)
		return r;
	uint32_t nf = compose_index_fragments(idx);
	if (nf != o->n_images) {
		compose_index_close(idx);
		return mosaic_errorf(err, -EINVAL, "index has %u fragments, %zu images given", nf,
		                     o->n_images);
	}
	for (uint32_t i = 0; i < nf; i++) {
		if (access(o->images[i], R_OK) < 0) {
			char dg[65];
			compose_index_fragment_digest(idx, i, dg);
			compose_index_close(idx);
			return mosaic_errorf(
			    err, -ENOENT,
			    "fragment %.12s is missing (%s: %m); add it to the store or "
			    "rebuild",
			    dg, o->images[i]);
		}
	}
	compose_index_close(idx);

	enum fusefs_writable mode = o->writable;
	if (!o->upper)
		mode = FUSEFS_READ_ONLY;
	else if (mode == FUSEFS_READ_ONLY || mode == FUSEFS_WRITABLE_AUTO)
		mode = FUSEFS_WRITABLE_OVERLAY;
	if (mode == FUSEFS_WRITABLE_FUSE)
		return mosaic_errorf(
		    err, -EOPNOTSUPP,
		    "--writable=fuse is not implemented yet; use --writable=overlay");
	if (mode == FUSEFS_WRITABLE_OVERLAY) {
		if ((r = mkdir_p(o->upper, 0755)) < 0 || (r = mkdir_p(o->work, 0755)) < 0)
			return mosaic_errorf(err, r, "upper %s or work %s: %s", o->upper, o->work,
			                     strerror(-r));
	}
	_cleanup_free_ char *lower = path_join(state, "lower");
	if ((r = mkdir_p(lower, 0755)) < 0)
		return mosaic_errorf(err, r, "%s: %s", lower, strerror(-r));

	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return mosaic_errorf(err, -errno, "pipe: %m");
	pid_t pid = o->foreground ? getpid() : fork();
	if (pid < 0)
		return mosaic_errorf(err, -errno, "fork: %m");
	if (pid == 0 || o->foreground) {
		if (!o->foreground) {
			close(pfd[0]);
			setsid();
			if (chdir("/") < 0)
				_exit(1);
			int null = open("/dev/null", O_RDWR | O_CLOEXEC);
			_cleanup_free_ char *log = path_join(state, "daemon.log");
			int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
			dup2(null, 0);
			dup2(null, 1);
			dup2(lfd >= 0 ? lfd : null, 2);
		}
		json_object *s = json_object_new_object();
		json_object_object_add(s, "pid", json_object_new_int(getpid()));
		json_object_object_add(s, "mountpoint", json_object_new_string(mnt));
		json_object_object_add(s, "mode",
		                       json_object_new_string(fusefs_writable_name(mode)));
		json_object_object_add(s, "index", json_object_new_string(o->index_path));
		json_object_object_add(
		    s, "lower",
		    mode == FUSEFS_WRITABLE_OVERLAY ? json_object_new_string(lower) : NULL);
		json_object_object_add(s, "upper",
		                       o->upper ? json_object_new_string(o->upper) : NULL);
		json_object_object_add(
		    s, "work", o->work && o->upper ? json_object_new_string(o->work) : NULL);
		json_object *fr = json_object_new_array();
		for (size_t i = 0; i < o->n_images; i++)
			json_object_array_add(fr, json_object_new_string(o->images[i]));
		json_object_object_add(s, "fragments", fr);
		write_json(state, "state.json", s);
		json_object_put(s);
		if (o->foreground) {
			close(pfd[0]);
			close(pfd[1]);
			pfd[1] = -1;
		}
		int rc = daemon_main(o, mnt, state, mode, pfd[1]);
		if (o->foreground) {
			if (picked)
				*picked = mode;
			return rc ? mosaic_errorf(err, -EIO, "the daemon failed (see above)") : 0;
		}
		_exit(rc);
	}
	close(pfd[1]);
	char msg[1200] = "";
	size_t got = 0;
	ssize_t n;
	while (got < sizeof(msg) - 1 && (n = read(pfd[0], msg + got, sizeof(msg) - 1 - got)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		got += n;
	}
	close(pfd[0]);
	msg[got] = '\0';
	if (strcmp(msg, "OK\n") == 0) {
		if (picked)
			*picked = mode;
		return 0;
	}
	int status;
	waitpid(pid, &status, 0);
	msg[strcspn(msg, "\n")] = '\0';
	return mosaic_errorf(err, -EIO, "%s",
	                     got ? msg : "the daemon died before the mount was up");
}

int fusefs_umount(const char *mountpoint, bool lazy, struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	if (!realpath(mountpoint, mnt))
		return mosaic_errorf(err, -errno, "%s: %m", mountpoint);
	_cleanup_free_ char *state = state_dir_for(mnt);
	json_object *s = read_json(state, "state.json"), *v;
	if (!s)
		return mosaic_errorf(err, -EINVAL, "%s is not mounted by mosaic", mnt);
	pid_t pid = json_object_object_get_ex(s, "pid", &v) ? json_object_get_int(v) : 0;
	const char *lower =
	    json_object_object_get_ex(s, "lower", &v) && v ? json_object_get_string(v) : NULL;
	int flags = lazy ? MNT_DETACH : 0;
	int r = 0;
	if (is_mountpoint(mnt) && umount2(mnt, flags) < 0) {
		r = errno == EBUSY
		        ? mosaic_errorf(err, -EBUSY,
		                        "%s is busy (a process uses it); close it or use "
		                        "--lazy",
		                        mnt)
		        : mosaic_errorf(err, -errno, "unmounting %s: %m", mnt);
	}
	if (r == 0 && lower && is_mountpoint(lower) && umount2(lower, flags) < 0)
		r = mosaic_errorf(err, -errno, "unmounting the view under %s: %m", mnt);
	json_object_put(s);
	if (r < 0)
		return r;
	/* The daemon sees the unmount, cleans up and exits: wait for it. */
	for (int i = 0; i < 200 && pid_alive(pid); i++) {
		struct timespec ts = {0, 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (pid_alive(pid))
		return mosaic_errorf(err, -ETIMEDOUT, "the daemon (pid %d) did not exit", pid);
	return 0;
}

int fusefs_status(const char *mountpoint, json_object **out, struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	if (!realpath(mountpoint, mnt))
		return mosaic_errorf(err, -errno, "%s: %m", mountpoint);
	_cleanup_free_ char *state = state_dir_for(mnt);
	json_object *s = read_json(state, "state.json"), *stats = read_json(state, "stats.json");
	if (!s) {
		json_object_put(stats);
		return mosaic_errorf(err, -EINVAL, "%s is not mounted by mosaic", mnt);
	}
	json_object *v;
	pid_t pid = json_object_object_get_ex(s, "pid", &v) ? json_object_get_int(v) : 0;
	json_object_object_add(s, "running", json_object_new_boolean(pid_alive(pid)));
	if (stats) {
		json_object_object_foreach(stats, key, val)
		{
			json_object_object_add(s, key, json_object_get(val));
		}
	}
	json_object_put(stats);
	*out = s;
	return 0;
}
