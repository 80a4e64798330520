/* configure/: the namespace session and its step runner: a child in private mount and PID
 * namespaces mounts what package scripts need under the root, and runs steps with a timeout. */
#include "configure/internal.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- one step ----------------------------------------------------------------------------- */

struct tail {
	char *lines[CHROOT_TAIL_LINES];
	size_t next, n;
};

static void tail_push(struct tail *t, const char *line, size_t len)
{
	free(t->lines[t->next]);
	t->lines[t->next] = xstrndup(line, len);
	t->next = (t->next + 1) % CHROOT_TAIL_LINES;
	if (t->n < CHROOT_TAIL_LINES)
		t->n++;
}

static char *tail_take(struct tail *t)
{
	size_t size = 1;
	for (size_t i = 0; i < t->n; i++)
		size += strlen(t->lines[i]) + 1;
	char *out = xmalloc(size), *p = out;
	size_t first = (t->next + CHROOT_TAIL_LINES - t->n) % CHROOT_TAIL_LINES;
	for (size_t i = 0; i < t->n; i++) {
		char *l = t->lines[(first + i) % CHROOT_TAIL_LINES];
		p = stpcpy(stpcpy(p, l), "\n");
	}
	*p = 0;
	for (size_t i = 0; i < CHROOT_TAIL_LINES; i++)
		free(t->lines[i]);
	return out;
}

/* Output is cut into lines; an overlong line is passed on in pieces of this size. */
#define LINE_MAX_BYTES 4096

struct line_buf {
	char buf[LINE_MAX_BYTES + 1]; /* + the NUL an event's text ends with */
	size_t len;
};

struct step_output {
	const struct configure_ctx *ctx;
	const struct chroot_step *s;
	bool live; /* each line goes out as an event as it comes */
	struct tail tail;
	struct line_buf lb;
};

static void output_event(const struct step_output *so, const char *line)
{
	const struct configure_ctx *ctx = so->ctx;
	if (ctx->o->event)
		ctx->o->event(&(struct configure_event){.kind = CONFIGURE_OUTPUT,
		                                        .step = so->s->name,
		                                        .text = line},
		              ctx->o->data);
}

static void emit_line(struct step_output *so)
{
	struct line_buf *lb = &so->lb;
	lb->buf[lb->len] = 0;
	if (so->live)
		output_event(so, lb->buf);
	tail_push(&so->tail, lb->buf, lb->len);
	lb->len = 0;
}

static void feed(struct step_output *so, const char *data, size_t n)
{
	struct line_buf *lb = &so->lb;
	for (size_t i = 0; i < n; i++) {
		if (data[i] == '\n' || lb->len == LINE_MAX_BYTES) {
			emit_line(so);
			if (data[i] == '\n')
				continue;
		}
		lb->buf[lb->len++] = data[i];
	}
}

/* With o->quiet, a step that failed has its lines (those the tail kept) go out once it ended. */
static void replay(const struct step_output *so, const char *tail)
{
	for (const char *l = tail; *l;) {
		const char *nl = strchrnul(l, '\n');
		_cleanup_free_ char *line = xstrndup(l, (size_t)(nl - l));
		output_event(so, line);
		l = *nl ? nl + 1 : nl;
	}
}

/* In a step's child, before exec: what went wrong ("PREFIXWHAT: strerror"), written to the
 * step's own output (fd 2 is its pipe by then), where it becomes a line of the step's output and
 * of its report. No allocation: this is a fork's child. */
static void child_says(const char *prefix, const char *what, int e)
{
	char msg[4200];
	int n = snprintf(msg, sizeof(msg), "%s%s: %s\n", prefix, what, strerror(e));
	if (n > 0)
		write_all(2, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

static _Noreturn void exec_step(const char *root, const struct chroot_step *s, int out_fd)
{
	setpgid(0, 0);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
		_exit(127);
	if (chroot(root) < 0 || chdir("/") < 0) {
		child_says("chroot ", root, errno);
		_exit(127);
	}
	/* Opened inside the root, so the path means what the step would take it to mean. */
	if (s->input) {
		int in = open(s->input, O_RDONLY | O_CLOEXEC);
		if (in < 0 || dup2(in, 0) < 0) {
			child_says("", s->input, errno);
			_exit(127);
		}
	}
	umask(022);
	/* execvp looks argv[0] up in this process's PATH: make envp this process's environment. */
	clearenv();
	for (char *const *e = s->envp; *e; e++)
		putenv(*e);
	signal(SIGPIPE, SIG_DFL);
	execvp(s->argv[0], s->argv);
	child_says("", s->argv[0], errno);
	_exit(127);
}

int chroot_run_step(const struct configure_ctx *ctx, const char *root, const struct chroot_step *s,
                    struct chroot_result *res)
{
	*res = (struct chroot_result){0};
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	/* What the event callback left in stdio's buffers is not to be written twice by a child. */
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		int r = -errno;
		close(fds[0]);
		close(fds[1]);
		return r;
	}
	if (pid == 0)
		exec_step(root, s, fds[1]);
	setpgid(pid, pid); /* both sides set it, so neither races the other */
	close(fds[1]);

	struct step_output *so = xcalloc(1, sizeof(*so));
	so->ctx = ctx;
	so->s = s;
	so->live = !s->quiet && !ctx->o->quiet;
	int64_t deadline = s->timeout ? now_ms() + (int64_t)s->timeout * 1000 : 0;
	bool exited = false, eof = false;
	int64_t drain_until = 0;
	int wstatus = 0;
	while (!(exited && eof)) {
		struct pollfd p = {.fd = fds[0], .events = POLLIN};
		int r = poll(&p, 1, 100);
		if (r > 0) {
			char buf[8192];
			ssize_t n = read(fds[0], buf, sizeof(buf));
			if (n > 0)
				feed(so, buf, (size_t)n);
			else if (n == 0 || errno != EINTR)
				eof = true;
		}
		/* Reap everything: this may be the namespace's init, and orphans come here. */
		for (;;) {
			int ws;
			pid_t w = waitpid(-1, &ws, WNOHANG);
			if (w <= 0)
				break;
			if (w == pid) {
				exited = true;
				wstatus = ws;
				/* What the step left behind in its group (a daemon) ends with it.
				 */
				kill(-pid, SIGKILL);
				drain_until = now_ms() + 2000;
			}
		}
		if (!exited && deadline && now_ms() > deadline && !res->timed_out) {
			res->timed_out = true;
			kill(-pid, SIGKILL);
		}
		/* Something outside the group (it called setsid) may hold the pipe: stop waiting.
		 */
		if (exited && !eof && now_ms() > drain_until)
			break;
	}
	if (so->lb.len)
		emit_line(so);
	close(fds[0]);
	res->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
	res->tail = tail_take(&so->tail);
	if (!s->quiet && !so->live && (res->status != 0 || res->timed_out))
		replay(so, res->tail);
	free(so);
	return 0;
}

/* ---- the session -------------------------------------------------------------------------- */

/* The child cannot fill the caller's error: it writes "ERRNO MESSAGE" to this pipe instead, the
 * message complete (send_error), or for a failed setup "ROOT: " and what failed. */
static void send_error(int err_fd, const struct mosaic_error *err)
{
	char msg[sizeof(err->msg) + 16];
	int n = snprintf(msg, sizeof(msg), "%d %s", err->code < 0 ? err->code : -EIO,
	                 err->msg[0] ? err->msg : strerror(err->code < 0 ? -err->code : EIO));
	if (n > 0)
		write_all(err_fd, msg, (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1);
}

static _Noreturn void setup_failed(const char *root, int err_fd, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static _Noreturn void setup_failed(const char *root, int err_fd, int code, const char *fmt, ...)
{
	struct mosaic_error err = {.code = code};
	char what[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(err.msg, sizeof(err.msg), "%s: %s", root, what);
	send_error(err_fd, &err);
	_exit(255);
}

struct mount_point {
	const char *dir;
	mode_t mode;
};
static const struct mount_point mount_points[] = {
    {"proc", 0555}, {"sys", 0555}, {"dev", 0755}, {"run", 0755}, {"tmp", 01777},
};

static int mount_at(const char *root, const char *dir, const char *fstype, unsigned long flags,
                    const char *data)
{
	char *target = path_join(root, dir);
	int r = mount(fstype, target, fstype, flags, data) < 0 ? -errno : 0;
	free(target);
	errno = -r; /* for the caller's %m */
	return r;
}

struct dev_node {
	const char *name;
	unsigned major, minor;
};
static const struct dev_node dev_nodes[] = {
    {"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
    {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};
static const char *const dev_links[][2] = {
    {"ptmx", "pts/ptmx"},          {"fd", "/proc/self/fd"},       {"stdin", "/proc/self/fd/0"},
    {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
};

static void setup_mounts(const char *root, int err_fd)
{
	const unsigned long hard = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	if (mount_at(root, "proc", "proc", hard, NULL) < 0)
		setup_failed(root, err_fd, -errno, "mounting proc on %s/proc: %m", root);
	if (mount_at(root, "sys", "sysfs", hard | MS_RDONLY, NULL) < 0)
		setup_failed(root, err_fd, -errno, "mounting sysfs on %s/sys: %m", root);
	if (mount_at(root, "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=4m") < 0)
		setup_failed(root, err_fd, -errno, "mounting a tmpfs on %s/dev: %m", root);
	_cleanup_free_ char *dev = path_join(root, "dev");
	umask(0);
	for (size_t i = 0; i < ARRAY_SIZE(dev_nodes); i++) {
		_cleanup_free_ char *p = path_join(dev, dev_nodes[i].name);
		if (mknod(p, S_IFCHR | 0666, makedev(dev_nodes[i].major, dev_nodes[i].minor)) < 0)
			setup_failed(root, err_fd, -errno, "mknod %s: %m", p);
	}
	for (size_t i = 0; i < ARRAY_SIZE(dev_links); i++) {
		_cleanup_free_ char *p = path_join(dev, dev_links[i][0]);
		if (symlink(dev_links[i][1], p) < 0)
			setup_failed(root, err_fd, -errno, "symlink %s: %m", p);
	}
	_cleanup_free_ char *pts = path_join(dev, "pts"), *shm = path_join(dev, "shm");
	if (mkdir(pts, 0755) < 0 || mkdir(shm, 01777) < 0)
		setup_failed(root, err_fd, -errno, "mkdir in %s: %m", dev);
	if (mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC,
	          "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
		setup_failed(root, err_fd, -errno, "mounting devpts on %s: %m", pts);
	if (mount_at(root, "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		setup_failed(root, err_fd, -errno, "mounting a tmpfs on %s/run: %m", root);
	if (mount_at(root, "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
		setup_failed(root, err_fd, -errno, "mounting a tmpfs on %s/tmp: %m", root);
	umask(022);
}

static bool at_or_below(const char *path, const char *top)
{
	size_t l = strlen(top);
	return strncmp(path, top, l) == 0 &&
	       (path[l] == 0 || path[l] == '/' || strcmp(top, "/") == 0);
}

/* A mountinfo path with its \ooo escapes (space, tab, newline, backslash) decoded in place. */
static char *unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r; r++) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
		    r[3] >= '0' && r[3] <= '7') {
			*w++ = (char)((r[1] - '0') << 6 | (r[2] - '0') << 3 | (r[3] - '0'));
			r += 3;
		} else
			*w++ = *r;
	}
	*w = 0;
	return s;
}

/* The new mount namespace begins as a copy of every mount there is, other mosaic views and
 * loop-mounted images included, and a copy keeps its filesystem alive: a view unmounted
 * outside while a configure runs would keep its daemon waiting until the configure ends.
 * So the copies of views and images that are not the root (nor below or above it) are let go
 * here. The root's own overlay layers stay usable: overlayfs holds private clones of them. */
static void release_other_mounts(const char *root)
{
	_cleanup_free_ char *top = realpath(root, NULL);
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!top || !f) {
		if (f)
			fclose(f);
		return;
	}
	char **drop = NULL, *line = NULL;
	size_t n = 0, cap = 0;
	while (getline(&line, &cap, f) > 0) {
		/* ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ... */
		char *sep = strstr(line, " - "), *save = NULL;
		if (!sep)
			continue;
		*sep = 0;
		char *fstype = strtok_r(sep + 3, " \n", &save);
		char *source = strtok_r(NULL, " \n", &save);
		char *mp = NULL, *field = strtok_r(line, " ", &save);
		for (int i = 1; field && i < 5; i++)
			mp = field = strtok_r(NULL, " ", &save);
		if (!fstype || !mp)
			continue;
		bool image = strncmp(fstype, "fuse", 4) == 0 || strcmp(fstype, "overlay") == 0 ||
		             strcmp(fstype, "squashfs") == 0 ||
		             (source && strncmp(source, "/dev/loop", 9) == 0);
		unescape(mp);
		if (!image || at_or_below(mp, top) || at_or_below(top, mp))
			continue;
		drop = xrealloc(drop, (n + 1) * sizeof(*drop));
		drop[n++] = xstrdup(mp);
	}
	free(line);
	fclose(f);
	/* Deepest first; one already gone with its parent fails, which is fine. */
	while (n > 0) {
		umount2(drop[--n], MNT_DETACH);
		free(drop[n]);
	}
	free(drop);
}

typedef int session_fn(const char *root, void *data, struct mosaic_error *err);

/* The namespace's init: mounts, runs fn, and exits with its result, which goes back to the
 * caller through err_fd. When it exits, the kernel kills whatever is left in the PID namespace,
 * and the mounts go with the mount namespace. */
static _Noreturn void session_init(const char *root, session_fn *fn, void *data, int err_fd)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	setup_mounts(root, err_fd);
	struct mosaic_error err = {0};
	int r = fn(root, data, &err);
	if (r < 0) {
		err.code = r;
		send_error(err_fd, &err);
	}
	/* The event callback prints in this process: what it buffered goes out before _exit. */
	fflush(stdout);
	fflush(stderr);
	_exit(r < 0 ? 1 : 0);
}

static _Noreturn void session_child(const char *root, session_fn *fn, void *data, int err_fd,
                                    pid_t parent)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* the parent died before PDEATHSIG was armed */
		_exit(255);
	if (unshare(CLONE_NEWNS | CLONE_NEWPID) < 0)
		setup_failed(root, err_fd, -errno, "unshare (mount and PID namespaces): %m");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		setup_failed(root, err_fd, -errno, "making mounts private: %m");
	release_other_mounts(root);
	/* The first child in the new PID namespace is its init. It cannot check its parent is
	 * still there (getppid is 0 across the namespace), but this one waits for it. */
	pid_t pid = fork();
	if (pid < 0)
		setup_failed(root, err_fd, -errno, "fork: %m");
	if (pid == 0)
		session_init(root, fn, data, err_fd);
	close(err_fd);
	int ws;
	while (waitpid(pid, &ws, 0) < 0)
		if (errno != EINTR)
			_exit(255);
	_exit(WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws));
}

int chroot_session(const char *root, session_fn *fn, void *data, struct mosaic_error *err)
{
	for (size_t i = 0; i < ARRAY_SIZE(mount_points); i++) {
		_cleanup_free_ char *p = path_join(root, mount_points[i].dir);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			continue;
		/* debootstrap makes them too; the packages of a minimal system ship them. */
		if (mkdir(p, mount_points[i].mode) < 0 || chmod(p, mount_points[i].mode) < 0)
			return mosaic_errorf(err, -errno, "%s: cannot make it a mount point: %m",
			                     p);
	}
	int efd[2];
	if (pipe2(efd, O_CLOEXEC) < 0)
		return mosaic_errorf(err, -errno, "pipe: %m");
	fflush(stdout);
	fflush(stderr);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		int r = -errno;
		close(efd[0]);
		close(efd[1]);
		return mosaic_errorf(err, r, "fork: %s", strerror(-r));
	}
	if (pid == 0) {
		close(efd[0]);
		session_child(root, fn, data, efd[1], parent);
	}
	close(efd[1]);
	/* Open in the session until its init ends: a failed setup or fn's error, or nothing. */
	char msg[sizeof(err->msg) + 32];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof(msg) - 1 && ((n = read(efd[0], msg + len, sizeof(msg) - 1 - len)) > 0 ||
	                                 (n < 0 && errno == EINTR)))
		len += n > 0 ? (size_t)n : 0;
	msg[len] = 0;
	close(efd[0]);
	int ws;
	while (waitpid(pid, &ws, 0) < 0)
		if (errno != EINTR)
			return mosaic_errorf(err, -errno, "waiting for the configure session: %m");
	if (len) {
		char *rest;
		long code = strtol(msg, &rest, 10);
		return mosaic_errorf(err, code < 0 ? (int)code : -EIO, "%s",
		                     *rest ? rest + 1 : "setting up the chroot failed");
	}
	if (!WIFEXITED(ws))
		return mosaic_errorf(err, -EINTR, "the configure session was killed by signal %d",
		                     WTERMSIG(ws));
	if (WEXITSTATUS(ws) != 0)
		return mosaic_errorf(err, -EIO, "the configure session ended with exit status %d",
		                     WEXITSTATUS(ws));
	return 0;
}
