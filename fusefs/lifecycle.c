/* Mount and unmount: the daemon's state directory, daemonising with a readiness pipe, stacking
 * kernel overlayfs over the view for --writable=overlay, and a clean exit on SIGTERM or
 * unmount. State lives in /run/mosaic/<id>/ (root) or $XDG_RUNTIME_DIR/mosaic/<id>/, id being
 * the hash of the mountpoint's real path: state.json (pid, mode, layers), stats.json
 * (counters), lower/ (where the view is mounted when overlayfs is stacked on it), daemon.log. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

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
	char *own = xasprintf("%s/%.16s", rt, hex);
	/* A user asking about root's mount finds its state where root keeps it (the daemon
	 * then decides what that user may do). */
	_cleanup_free_ char *own_state = path_join(own, "state.json");
	if (geteuid() != 0 && access(own_state, F_OK) < 0) {
		_cleanup_free_ char *root = xasprintf("/run/mosaic/%.16s", hex);
		_cleanup_free_ char *root_state = path_join(root, "state.json");
		if (access(root_state, F_OK) == 0) {
			free(own);
			return TAKE_PTR(root);
		}
	}
	return own;
}

static bool is_mountpoint(const char *path)
{
	struct stat a, b;
	_cleanup_free_ char *parent = path_join(path, "..");
	if (stat(path, &a) < 0 || stat(parent, &b) < 0)
		return false;
	return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

/* How many mounts sit at path, from mountinfo: a mount whose daemon died cannot be stat'ed.
 * With top_source, whether the topmost of them has that source (mosaic's are "mosaic"). */
static int mounts_at_source(const char *path, const char *top_source, bool *top_is);

static int mounts_at(const char *path)
{
	return mounts_at_source(path, NULL, NULL);
}

static int mounts_at_source(const char *path, const char *top_source, bool *top_is)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;
	int n = 0;
	while (f && getline(&line, &cap, f) > 0) {
		char *point = line;
		for (int i = 0; i < 4 && point; i++) {
			point = strchr(point, ' ');
			point = point ? point + 1 : NULL;
		}
		if (!point)
			continue;
		char *end = strchr(point, ' '), *w = point;
		if (end)
			*end = '\0';
		const char *source = NULL; /* after " - ": the type, then the source */
		char *dash = end ? strstr(end + 1, " - ") : NULL;
		if (dash && (dash = strchr(dash + 3, ' '))) {
			source = dash + 1;
			dash[1 + strcspn(dash + 1, " \n")] = '\0';
		}
		for (char *r = point; *r; w++) { /* octal escapes: \040 is a space */
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] && r[3]) {
				*w = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
				r += 4;
			} else
				*w = *r++;
		}
		*w = '\0';
		if (strcmp(point, path) == 0) {
			n++;
			if (top_is) /* later lines are mounted over earlier ones */
				*top_is = source && top_source && strcmp(source, top_source) == 0;
		}
	}
	return n;
}

/* Detaches every mount at path (what a killed daemon left in its state dir). */
static void detach_all(const char *path)
{
	for (int n = mounts_at(path); n > 0; n--)
		if (umount2(path, MNT_DETACH) < 0)
			break;
}

/* realpath, or for a mountpoint whose daemon died (ENOTCONN) its parent's realpath + name. */
static int mountpoint_path(const char *mountpoint, char mnt[static PATH_MAX])
{
	if (realpath(mountpoint, mnt))
		return 0;
	if (errno != ENOTCONN)
		return -errno;
	_cleanup_free_ char *copy = xstrdup(mountpoint);
	char *slash = strrchr(copy, '/');
	const char *name = slash ? slash + 1 : copy;
	char parent[PATH_MAX];
	if (slash == copy)
		strcpy(parent, "/");
	else if (!realpath(slash ? (*slash = '\0', copy) : ".", parent))
		return -errno;
	if (!*name ||
	    snprintf(mnt, PATH_MAX, "%s/%s", strcmp(parent, "/") ? parent : "", name) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* Everything the daemon keeps in its state directory (state.json, stats.json, daemon.log,
 * control, dev-*.idx, handover-*), and lower/ and the directory itself. */
static void remove_state(const char *state_dir)
{
	DIR *dp = opendir(state_dir);
	struct dirent *de;
	while (dp && (de = readdir(dp)))
		if (de->d_type != DT_DIR)
			unlinkat(dirfd(dp), de->d_name, 0);
	if (dp)
		closedir(dp);
	_cleanup_free_ char *lower = path_join(state_dir, "lower");
	rmdir(lower);
	rmdir(state_dir);
}

static bool pid_alive(pid_t pid)
{
	if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
		return false;
	/* A killed daemon stays a zombie until whoever adopted it reaps it: it is gone. */
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return true;
	buf[n] = '\0';
	const char *paren = strrchr(buf, ')');
	return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

static json_object *read_json(const char *dir, const char *name)
{
	_cleanup_free_ char *p = path_join(dir, name);
	return json_object_from_file(p);
}

/* ---- the daemon --------------------------------------------------------------------------- */

struct ready {
	const struct fusefs_options *o;
	const char *mountpoint, *lower;
	enum fusefs_writable mode;
	struct fuse_session *se;
	int pipe_fd;
	bool overlay_mounted;
	bool may_fall_back, fell_back; /* --writable unset: overlay refused, so fuse */
	char reason[256];
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
			int e = errno;
			/* Taking the view down ends the session loop. */
			fuse_session_exit(rd->se);
			umount2(rd->lower, MNT_DETACH);
			/* Where overlayfs is not allowed (no privilege in this namespace, an
			 * upper filesystem it does not take, no overlay module), the daemon
			 * does the copy-up itself. */
			if (rd->may_fall_back && (e == EPERM || e == EINVAL || e == ENODEV)) {
				snprintf(rd->reason, sizeof(rd->reason),
				         "kernel overlayfs refused the mount (%s)", strerror(e));
				rd->fell_back = true;
				return NULL;
			}
			snprintf(msg, sizeof(msg),
			         "mounting overlayfs at %s over the view failed: %s (try "
			         "--writable=fuse)\n",
			         rd->mountpoint, strerror(e));
			say(rd->pipe_fd, msg);
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
	snprintf(msg, sizeof(msg), "OK %s\n", fusefs_writable_name(rd->mode));
	say(rd->pipe_fd, msg);
	return NULL;
}

static struct fuse_session *session_new(struct daemon *d)
{
	bool writable = d->mode == FUSEFS_WRITABLE_FUSE;
	_cleanup_free_ char *fopts =
	    xasprintf("%sdefault_permissions,fsname=mosaic,subtype=mosaic%s%s%s",
	              writable ? "" : "ro,", geteuid() == 0 ? ",allow_other,dev,suid" : "",
	              d->fuse_options ? "," : "", d->fuse_options ? d->fuse_options : "");
	char *argv[] = {"mosaic", "-o", fopts, NULL};
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	const struct fuse_lowlevel_ops *ops = writable ? &fusefs_upper_ops : &fusefs_ops;
	struct fuse_session *se = fuse_session_new(&args, ops, sizeof(*ops), d);
	fuse_opt_free_args(&args); /* libfuse copied what it added to them */
	return se;
}

/* After the loop: the watchers stop and, unless the session went to a new daemon, everything
 * mosaic mounted comes down, upper first. */
static void session_end(struct daemon *d, struct fuse_session *se, bool overlay_mounted)
{
	dev_stop(d);
	control_stop(d);
	d->se = NULL;
	if (!d->handed_over) {
		if (overlay_mounted && is_mountpoint(d->mountpoint))
			umount2(d->mountpoint, MNT_DETACH);
		fuse_session_unmount(se);
	}
	/* No request runs any more: the upper is flushed and let go. */
	upper_close(d);
	fuse_session_destroy(se);
}

/* Mounts the view in one mode and serves it until it is unmounted; 0 or 1 (the exit status).
 * *fell_back: overlayfs was refused and may_fall_back allowed fuse, which the caller now
 * serves instead (the readiness pipe is still unused then). */
static int serve(struct daemon *d, const struct fusefs_options *o, const char *mountpoint,
                 const char *state_dir, enum fusefs_writable mode, bool may_fall_back, int pipe_fd,
                 bool *fell_back, char reason[static 256])
{
	char msg[1200];
	*fell_back = false;
	_cleanup_free_ char *lower = path_join(state_dir, "lower");
	const char *target = mode == FUSEFS_WRITABLE_OVERLAY ? lower : mountpoint;
	bool writable = mode == FUSEFS_WRITABLE_FUSE;
	d->mode = mode;
	if (writable) {
		struct mosaic_error err = {0};
		if (upper_open(d, o->upper, o->work, -1, &err) < 0) {
			snprintf(msg, sizeof(msg), "%s\n", err.msg);
			say(pipe_fd, msg);
			return 1;
		}
	}
	struct fuse_session *se = session_new(d);
	if (!se) {
		snprintf(msg, sizeof(msg), "cannot start a FUSE session (bad -o options?)\n");
		say(pipe_fd, msg);
		upper_close(d);
		return 1;
	}
	if (fuse_session_mount(se, target) < 0) {
		snprintf(msg, sizeof(msg), "mounting the view at %.1000s failed: %s\n", target,
		         strerror(errno));
		say(pipe_fd, msg);
		fuse_session_destroy(se);
		upper_close(d);
		return 1;
	}
	if (writable)
		upper_start(d, se);
	d->se = se;
	struct mosaic_error cerr = {0};
	if (control_start(d, &cerr) < 0) /* the mount serves; only switching is not possible */
		fprintf(stderr, "mosaic: no control channel: %s\n", cerr.msg);
	if (dev_start(d, &cerr) < 0) /* the mount serves dev directories as they were */
		fprintf(stderr, "mosaic: dev directories are not watched: %s\n", cerr.msg);
	struct ready rd = {.o = o,
	                   .mountpoint = mountpoint,
	                   .lower = lower,
	                   .mode = mode,
	                   .se = se,
	                   .pipe_fd = pipe_fd,
	                   .may_fall_back = may_fall_back};
	pthread_t t;
	pthread_create(&t, NULL, ready_thread, &rd);
	int r = loop_run(d);
	pthread_join(t, NULL);
	session_end(d, se, rd.overlay_mounted);
	if (rd.fell_back) {
		*fell_back = true;
		memcpy(reason, rd.reason, sizeof(rd.reason));
		return 0;
	}
	return r < 0 ? 1 : 0;
}

/* Fuse mode holds an fd for every upper inode the kernel references (as passthrough_ll does),
 * and unpacking a large tree references hundreds of thousands: lift the fd limit as far as the
 * kernel allows (root may go to fs.nr_open). */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = rl.rlim_max;
	_cleanup_free_ char *nr_open = NULL;
	if (geteuid() == 0 && read_file("/proc/sys/fs/nr_open", 64, &nr_open, NULL) == 0)
		want = strtoull(nr_open, NULL, 10);
	rl.rlim_cur = rl.rlim_max = want > rl.rlim_max ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int daemon_main(const struct fusefs_options *o, const char *mountpoint,
                       const char *state_dir, enum fusefs_writable mode, bool may_fall_back,
                       int pipe_fd, enum fusefs_writable *served)
{
	raise_fd_limit();
	struct mosaic_error err = {0};
	_cleanup_free_ char *lower = path_join(state_dir, "lower");
	struct daemon d = {.keyring = o->keyring,
	                   .loop_lock = PTHREAD_MUTEX_INITIALIZER,
	                   .handles_lock = PTHREAD_MUTEX_INITIALIZER,
	                   .hchunks = xcalloc(HCHUNKS, sizeof(struct handle_slot *)),
	                   .state_dir = xstrdup(state_dir),
	                   .timeout = 86400,
	                   .mountpoint = mountpoint,
	                   .lower = lower,
	                   .upper = o->upper,
	                   .work = o->work,
	                   .fuse_options = o->fuse_options,
	                   .keyring_path = o->keyring_path,
	                   .mode = mode};
	char msg[1200];
	pthread_mutex_init(&d.stats_lock, NULL);
	/* Live dev directories among the fragments: the index is the daemon's own. */
	_cleanup_free_ char *own = NULL;
	int r = 0;
	for (size_t i = 0; i < o->n_images && !own && r == 0; i++)
		if (dev_is_dir(o->images[i]))
			r = dev_compose(&d, o->images, o->n_images, &own, &err);
	if (r == 0)
		r = live_start(&d, own ? own : o->index_path, o->images, o->n_images, o->info,
		               own != NULL, &err);
	if (r < 0) {
		snprintf(msg, sizeof(msg), "%s\n", err.msg);
		say(pipe_fd, msg);
		live_stop(&d);
		free(d.state_dir);
		return 1;
	}
	daemon_write_state(&d);
	daemon_write_stats(&d);
	int rc;
	for (;;) {
		bool fell_back;
		char reason[256];
		rc = serve(&d, o, mountpoint, state_dir, d.mode, may_fall_back, pipe_fd, &fell_back,
		           reason);
		if (!fell_back)
			break;
		fprintf(stderr, "mosaic: %s; serving the upper with the daemon's own copy-up\n",
		        reason);
		d.mode = FUSEFS_WRITABLE_FUSE;
		may_fall_back = false;
		free(d.fallback);
		d.fallback = xstrdup(reason);
		daemon_write_state(&d);
	}
	*served = d.mode;
	live_stop(&d);
	json_object_put(d.history);
	json_object_put(d.previous);
	free(d.init_req);
	handles_free(&d);
	free(d.fallback);
	if (!d.handed_over) /* else it is the new daemon's */
		remove_state(state_dir);
	free(d.state_dir);
	return rc;
}

/* What a starting daemon wrote on its readiness pipe before closing it (NUL-terminated); the
 * number of bytes. */
static size_t read_ready(int fd, char *msg, size_t size)
{
	size_t got = 0;
	ssize_t n;
	while (got < size - 1 && (n = read(fd, msg + got, size - 1 - got)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		got += n;
	}
	close(fd);
	msg[got] = '\0';
	return got;
}

/* The options with every path absolute: the daemon works from "/". */
struct absolute_options {
	struct fusefs_options o;
	char *index_path, *upper, *work, *keyring_path, **images;
};

static char *absolute(const char *path)
{
	char cwd[PATH_MAX];
	if (!path || path[0] == '/' || !getcwd(cwd, sizeof(cwd)))
		return path ? xstrdup(path) : NULL;
	return path_join(cwd, path);
}

static void absolute_options_clear(struct absolute_options *a)
{
	free(a->index_path);
	free(a->upper);
	free(a->work);
	free(a->keyring_path);
	strv_free(a->images, a->o.n_images);
}

static int do_mount(const struct fusefs_options *o, enum fusefs_writable *picked,
                    struct mosaic_error *err);

int fusefs_mount(const struct fusefs_options *o, enum fusefs_writable *picked,
                 struct mosaic_error *err)
{
	_cleanup_(absolute_options_clear) struct absolute_options a = {.o = *o};
	a.o.index_path = a.index_path = absolute(o->index_path);
	a.o.upper = a.upper = absolute(o->upper);
	a.o.work = a.work = absolute(o->work);
	a.o.keyring_path = a.keyring_path = absolute(o->keyring_path);
	a.images = xcalloc(o->n_images + o->n_dev + 1, sizeof(*a.images));
	for (size_t i = 0; i < o->n_images; i++)
		a.images[i] = absolute(o->images[i]);
	for (size_t i = 0; i < o->n_dev; i++) {
		char real[PATH_MAX];
		if (!realpath(o->dev_dirs[i], real) || !dev_is_dir(real))
			return mosaic_errorf(err, -ENOTDIR, "--dev %s: not a directory",
			                     o->dev_dirs[i]);
		a.images[o->n_images + i] = xstrdup(real);
	}
	a.o.images = a.images;
	a.o.n_images = o->n_images + o->n_dev;
	a.o.n_dev = 0;
	return do_mount(&a.o, picked, err);
}

static int do_mount(const struct fusefs_options *o, enum fusefs_writable *picked,
                    struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	struct stat st;
	int r = mountpoint_path(o->mountpoint, mnt);
	if (r < 0)
		return mosaic_errorf(err, r, "mountpoint %s: %s", o->mountpoint, strerror(-r));
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
	/* A daemon that was killed left its mounts: the view under an overlay, and the mountpoint
	 * itself when nothing took it down. Nothing serves them any more. */
	if (old) {
		_cleanup_free_ char *stale = path_join(state, "lower");
		detach_all(stale);
		/* The kernel may still answer stat from its cache: look at what is mounted. */
		bool ours = false;
		while (mounts_at_source(mnt, "mosaic", &ours) > 0 && ours)
			if (umount2(mnt, MNT_DETACH) < 0)
				break;
	}
	json_object_put(old);
	if (stat(mnt, &st) < 0)
		return mosaic_errorf(err, -errno, "mountpoint %s: %m", o->mountpoint);
	if (!S_ISDIR(st.st_mode))
		return mosaic_errorf(err, -ENOTDIR, "mountpoint %s: not a directory",
		                     o->mountpoint);
	if (is_mountpoint(mnt))
		return mosaic_errorf(
		    err, -EBUSY, "%s is already a mount point; unmount it or pick another", mnt);

	/* Everything that can be refused is refused here, before anything is mounted. */
	struct compose_index *idx;
	r = compose_index_open(o->index_path, &idx, err);
	if (r < 0)
		return r;
	uint32_t nf = compose_index_fragments(idx);
	bool live = false; /* with dev directories, the daemon builds its own index */
	for (size_t i = 0; i < o->n_images; i++)
		live |= dev_is_dir(o->images[i]);
	if (nf != o->n_images && !live) {
		compose_index_close(idx);
		return mosaic_errorf(err, -EINVAL, "index has %u fragments, %zu images given", nf,
		                     o->n_images);
	}
	for (uint32_t i = 0; i < nf && i < o->n_images; i++) {
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
	bool may_fall_back = false;
	if (!o->upper)
		mode = FUSEFS_READ_ONLY;
	else if (live && mode == FUSEFS_WRITABLE_OVERLAY)
		return mosaic_errorf(err, -EINVAL,
		                     "live dev directories change the view under the upper, which "
		                     "kernel overlayfs does not allow: mount with --writable=fuse");
	else if (live)
		mode = FUSEFS_WRITABLE_FUSE; /* the view changes under the upper */
	else if (mode == FUSEFS_READ_ONLY || mode == FUSEFS_WRITABLE_AUTO) {
		/* kernel overlayfs where it is allowed, the daemon's own copy-up where not */
		mode = FUSEFS_WRITABLE_OVERLAY;
		may_fall_back = true;
	}
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
		if (o->foreground) {
			close(pfd[0]);
			close(pfd[1]);
			pfd[1] = -1;
		}
		enum fusefs_writable served = mode;
		int rc = daemon_main(o, mnt, state, mode, may_fall_back, pfd[1], &served);
		if (o->foreground) {
			if (picked)
				*picked = served;
			return rc ? mosaic_errorf(err, -EIO, "the daemon failed (see above)") : 0;
		}
		_exit(rc);
	}
	close(pfd[1]);
	char msg[1200];
	size_t got = read_ready(pfd[0], msg, sizeof(msg));
	if (strncmp(msg, "OK ", 3) == 0) {
		/* the mode the daemon serves, which a fallback may have changed */
		msg[strcspn(msg, "\n")] = '\0';
		if (picked) {
			*picked = mode;
			for (int w = FUSEFS_READ_ONLY; w <= FUSEFS_WRITABLE_FUSE; w++)
				if (strcmp(msg + 3, fusefs_writable_name(w)) == 0)
					*picked = w;
		}
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
	int r = mountpoint_path(mountpoint, mnt);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", mountpoint, strerror(-r));
	_cleanup_free_ char *state = state_dir_for(mnt);
	json_object *s = read_json(state, "state.json"), *v;
	if (!s)
		return mosaic_errorf(err, -EINVAL, "%s is not mounted by mosaic", mnt);
	pid_t pid = json_object_object_get_ex(s, "pid", &v) ? json_object_get_int(v) : 0;
	json_object_put(s);
	_cleanup_free_ char *lower = path_join(state, "lower");
	int flags = lazy ? MNT_DETACH : 0;
	if (mounts_at(mnt) > 0 && umount2(mnt, flags) < 0) {
		return errno == EBUSY
		           ? mosaic_errorf(err, -EBUSY,
		                           "%s is busy (a process uses it); close it or use "
		                           "--lazy",
		                           mnt)
		           : mosaic_errorf(err, -errno, "unmounting %s: %m", mnt);
	}
	/* The view under the overlay, and whatever a killed daemon left there. */
	for (int n = mounts_at(lower); n > 0; n--)
		if (umount2(lower, flags) < 0)
			return mosaic_errorf(err, -errno, "unmounting the view under %s: %m", mnt);
	/* The daemon sees the unmount, cleans up and exits: wait for it. */
	for (int i = 0; i < 2000 && pid_alive(pid); i++) {
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (pid_alive(pid))
		return mosaic_errorf(err, -ETIMEDOUT, "the daemon (pid %d) did not exit", pid);
	remove_state(state); /* a killed daemon did not */
	return 0;
}

int fusefs_status(const char *mountpoint, json_object **out, struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	int r = mountpoint_path(mountpoint, mnt);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", mountpoint, strerror(-r));
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

static int switch_request(const char *mountpoint, json_object *req,
                          struct fusefs_switch_result *res, struct mosaic_error *err);

int fusefs_rollback(const char *mountpoint, const char *reason, struct fusefs_switch_result *res,
                    struct mosaic_error *err)
{
	json_object *req = json_object_new_object();
	json_object_object_add(req, "op", json_object_new_string("rollback"));
	if (reason)
		json_object_object_add(req, "reason", json_object_new_string(reason));
	return switch_request(mountpoint, req, res, err);
}

int fusefs_switch(const char *mountpoint, const char *index_path, char *const *images, size_t n,
                  json_object *info, const char *reason, bool rollback,
                  struct fusefs_switch_result *res, struct mosaic_error *err)
{
	_cleanup_free_ char *index = absolute(index_path);
	json_object *req = json_object_new_object(), *imgs = json_object_new_array();
	json_object_object_add(req, "op", json_object_new_string("switch"));
	json_object_object_add(req, "index", json_object_new_string(index));
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *a = absolute(images[i]);
		json_object_array_add(imgs, json_object_new_string(a));
	}
	json_object_object_add(req, "images", imgs);
	if (info)
		json_object_object_add(req, "info", json_object_get(info));
	if (reason)
		json_object_object_add(req, "reason", json_object_new_string(reason));
	json_object_object_add(req, "rollback", json_object_new_boolean(rollback));
	return switch_request(mountpoint, req, res, err);
}

static int switch_request(const char *mountpoint, json_object *req,
                          struct fusefs_switch_result *res, struct mosaic_error *err)
{
	char mnt[PATH_MAX];
	int r = mountpoint_path(mountpoint, mnt);
	_cleanup_free_ char *state = r == 0 ? state_dir_for(mnt) : NULL;
	_cleanup_free_ char *state_file = state ? path_join(state, "state.json") : NULL;
	if (r < 0)
		r = mosaic_errorf(err, r, "mountpoint %s: %s", mountpoint, strerror(-r));
	else if (access(state_file, F_OK) < 0)
		r = mosaic_errorf(err, -EINVAL, "%s is not mounted by mosaic", mnt);
	json_object *out = NULL;
	if (r == 0)
		r = fusefs_control(state, mnt, req, &out, err);
	json_object_put(req);
	if (r < 0)
		return r;
	json_object *v;
	*res = (struct fusefs_switch_result){0};
#define GET(f)                                                                                     \
	if (json_object_object_get_ex(out, #f, &v))                                                \
	res->f = json_object_get_int64(v)
	GET(kept);
	GET(added);
	GET(removed);
	GET(changed);
	GET(invalidations);
	GET(stranded);
#undef GET
	if (json_object_object_get_ex(out, "ms", &v))
		res->ms = json_object_get_double(v);
	json_object_put(out);
	return 0;
}

/* ---- restarting the daemon ------------------------------------------------------------------ */

/* The new daemon: takes the session from the running one (handover.c) and serves it. */
static int takeover_main(const char *state, int ready_fd)
{
	raise_fd_limit();
	struct daemon d = {.state_dir = xstrdup(state),
	                   .timeout = 86400,
	                   .loop_lock = PTHREAD_MUTEX_INITIALIZER,
	                   .handles_lock = PTHREAD_MUTEX_INITIALIZER,
	                   .hchunks = xcalloc(HCHUNKS, sizeof(struct handle_slot *))};
	pthread_mutex_init(&d.stats_lock, NULL);
	struct mosaic_error err = {0};
	_cleanup_free_ char *control = path_join(state, "control");
	int sock = -1, fuse_fd = -1;
	struct fuse_session *se = NULL;
	int r = handover_take(&d, control, &sock, &fuse_fd, &err);
	if (r == 0 && !(se = session_new(&d)))
		r = mosaic_errorf(&err, -EINVAL, "cannot start a FUSE session");
	char dev[64];
	snprintf(dev, sizeof(dev), "/dev/fd/%d", fuse_fd);
	if (r == 0 && fuse_session_mount(se, dev) < 0)
		r = mosaic_errorf(&err, -EIO, "taking the FUSE descriptor failed");
	d.se = se;
	if (r == 0)
		r = loop_replay_init(&d, d.init_req, d.init_len);
	if (r == 0 && d.mode == FUSEFS_WRITABLE_FUSE)
		r = upper_open(&d, d.upper, d.work, handover_lock_fd(&d), &err);
	if (r == 0)
		r = handover_finish(&d, sock, &err);
	if (sock >= 0)
		close(sock); /* without "taken", the old daemon serves on */
	char msg[1200];
	if (r < 0) {
		snprintf(msg, sizeof(msg), "%s\n", err.msg[0] ? err.msg : strerror(-r));
		say(ready_fd, msg);
		/* The descriptor is the old daemon's still: only this copy goes. */
		if (se)
			fuse_session_destroy(se);
		return 1;
	}
	if (d.up)
		upper_start(&d, se);
	if (control_start_inherited(&d, &err) < 0)
		fprintf(stderr, "mosaic: no control channel: %s\n", err.msg);
	daemon_write_state(&d);
	daemon_write_stats(&d);
	if (dev_start(&d, &err) < 0)
		fprintf(stderr, "mosaic: dev directories are not watched: %s\n", err.msg);
	fprintf(stderr, "mosaic: took the session over from pid %d\n", (int)d.old_pid);
	snprintf(msg, sizeof(msg), "OK %d %d\n", (int)getpid(), (int)d.old_pid);
	say(ready_fd, msg);
	loop_run(&d);
	session_end(&d, se, d.mode == FUSEFS_WRITABLE_OVERLAY);
	live_stop(&d);
	if (!d.handed_over)
		remove_state(state);
	return 0;
}

/* A daemon that is gone (killed) left its state: the mount comes back with what it served
 * last, every switch it completed included. */
static int remount(const char *mnt, json_object *st, struct fusefs_restart_result *res,
                   struct mosaic_error *err)
{
	json_object *v;
	struct fusefs_options o = {.mountpoint = mnt};
	const char *mode = NULL;
#define STR(k) (json_object_object_get_ex(st, k, &v) && v ? json_object_get_string(v) : NULL)
	o.index_path = STR("index");
	o.upper = STR("upper");
	o.work = STR("work");
	o.keyring_path = STR("keyring");
	o.fuse_options = STR("fuse_options");
	mode = STR("mode");
#undef STR
	json_object *fr = NULL;
	json_object_object_get_ex(st, "fragments", &fr);
	size_t n = fr ? json_object_array_length(fr) : 0;
	_cleanup_free_ char **images = xcalloc(n + 1, sizeof(*images));
	for (size_t i = 0; i < n; i++)
		images[i] = (char *)json_object_get_string(json_object_array_get_idx(fr, i));
	o.images = images;
	o.n_images = n;
	o.writable = !o.upper                               ? FUSEFS_READ_ONLY
	             : mode && strcmp(mode, "overlay") == 0 ? FUSEFS_WRITABLE_OVERLAY
	                                                    : FUSEFS_WRITABLE_FUSE;
	if (json_object_object_get_ex(st, "generation", &v))
		o.info = v;
	if (!o.index_path || !n)
		return mosaic_errorf(err, -EINVAL, "the state of %s names no composition", mnt);
	struct keyring *k = NULL;
	if (o.keyring_path) {
		int r = keyring_open(o.keyring_path, &k, err);
		if (r < 0)
			return r;
	}
	o.keyring = k;
	enum fusefs_writable picked;
	int r = fusefs_mount(&o, &picked, err);
	keyring_free(k);
	res->remounted = r == 0;
	return r;
}

int fusefs_restart(const char *mountpoint, struct fusefs_restart_result *res,
                   struct mosaic_error *err)
{
	*res = (struct fusefs_restart_result){0};
	char mnt[PATH_MAX];
	int r = mountpoint_path(mountpoint, mnt);
	if (r < 0)
		return mosaic_errorf(err, r, "mountpoint %s: %s", mountpoint, strerror(-r));
	_cleanup_free_ char *state = state_dir_for(mnt);
	json_object *st = read_json(state, "state.json"), *v;
	if (!st)
		return mosaic_errorf(err, -EINVAL, "%s is not mounted by mosaic", mnt);
	pid_t pid = json_object_object_get_ex(st, "pid", &v) ? json_object_get_int(v) : 0;
	res->old_pid = pid;
	if (!pid_alive(pid)) {
		r = remount(mnt, st, res, err);
		json_object_put(st);
		return r;
	}
	json_object_put(st);
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return mosaic_errorf(err, -errno, "pipe: %m");
	pid_t child = fork();
	if (child < 0)
		return mosaic_errorf(err, -errno, "fork: %m");
	if (child == 0) {
		close(pfd[0]);
		/* Nothing the caller had open stays open in the daemon (a file on the mount
		 * would keep it busy). */
		if (pfd[1] > 3)
			close_range(3, pfd[1] - 1, 0);
		close_range(pfd[1] + 1, ~0U, 0);
		setsid();
		if (chdir("/") < 0)
			_exit(1);
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		_cleanup_free_ char *log = path_join(state, "daemon.log");
		int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		dup2(null, 0);
		dup2(null, 1);
		dup2(lfd >= 0 ? lfd : null, 2);
		_exit(takeover_main(state, pfd[1]));
	}
	close(pfd[1]);
	char msg[1200];
	size_t got = read_ready(pfd[0], msg, sizeof(msg));
	int new_pid, old;
	if (sscanf(msg, "OK %d %d", &new_pid, &old) == 2) {
		res->pid = new_pid;
		/* The old daemon lets go of the session and exits. */
		for (int i = 0; i < 200 && pid_alive(pid); i++) {
			struct timespec ts = {0, 25 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		return 0;
	}
	int status;
	waitpid(child, &status, 0);
	msg[strcspn(msg, "\n")] = '\0';
	return mosaic_errorf(err, -EIO,
	                     "the new daemon did not take over (%s); the old one (pid %d) "
	                     "serves on",
	                     got ? msg : "it died", (int)pid);
}
