/* Restarting the daemon without unmounting: the running daemon hands its FUSE session to a new
 * one, as nydus's hot upgrade does. Over the control socket the new daemon asks for it; the old
 * one pauses its session loop (every request it read is answered; new ones wait in the kernel),
 * stops its watchers, flushes its invalidations, and sends the /dev/fuse descriptor with the
 * control socket, the upper's lock and every open upper file (SCM_RIGHTS), then a JSON
 * description of the rest: the generations and view inodes (live_save), the upper's node table
 * (objects by file handle), the open handles, the history, and the connection's FUSE_INIT. The
 * new daemon rebuilds all of it, makes its libfuse session learn the connection's terms from
 * that FUSE_INIT (loop_replay_init), and says "taken"; only then does the old one exit, without
 * unmounting. Until then it can take its session back: a new daemon that fails changes nothing.
 * Processes on the mount see a pause, never an error. docs/fusefs.md has the protocol. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define HANDOVER_VERSION 1
#define FDS_PER_MSG      250
#define TAKE_TIMEOUT_MS  60000

/* ---- descriptors over the socket ------------------------------------------------------------ */

static int send_fds(int sock, const int *fds, size_t n)
{
	for (size_t at = 0; at < n; at += FDS_PER_MSG) {
		size_t k = n - at < FDS_PER_MSG ? n - at : FDS_PER_MSG;
		char byte = 'F';
		struct iovec iov = {&byte, 1};
		union {
			char buf[CMSG_SPACE(FDS_PER_MSG * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr m = {.msg_iov = &iov,
		                   .msg_iovlen = 1,
		                   .msg_control = u.buf,
		                   .msg_controllen = CMSG_SPACE(k * sizeof(int))};
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(k * sizeof(int));
		memcpy(CMSG_DATA(c), fds + at, k * sizeof(int));
		if (sendmsg(sock, &m, MSG_NOSIGNAL) != 1)
			return -errno;
	}
	return 0;
}

/* Receives descriptors until the reply's text begins, then the text up to its newline. */
static int recv_all(int sock, int **fds, size_t *n, char **text)
{
	size_t cap = 0, len = 0, tcap = 4096;
	char *t = xmalloc(tcap);
	*fds = NULL;
	*n = 0;
	for (;;) {
		char byte;
		struct iovec iov = {&byte, 1};
		union {
			char buf[CMSG_SPACE(FDS_PER_MSG * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct msghdr m = {.msg_iov = &iov,
		                   .msg_iovlen = 1,
		                   .msg_control = u.buf,
		                   .msg_controllen = sizeof(u)};
		ssize_t r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			free(t);
			return r < 0 ? -errno : -EPIPE;
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			if (*n + k > cap) {
				cap = (*n + k) * 2;
				*fds = xrealloc(*fds, cap * sizeof(int));
			}
			memcpy(*fds + *n, CMSG_DATA(c), k * sizeof(int));
			*n += k;
		}
		if (byte == 'F' && len == 0)
			continue;
		if (byte == '\n')
			break;
		if (len + 2 >= tcap)
			t = xrealloc(t, tcap *= 2);
		t[len++] = byte;
	}
	t[len] = '\0';
	*text = t;
	return 0;
}

static int read_line(int sock, char *buf, size_t size, int timeout_ms)
{
	size_t len = 0;
	while (len + 1 < size) {
		struct pollfd p = {.fd = sock, .events = POLLIN};
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -ETIMEDOUT;
		ssize_t n = read(sock, buf + len, 1);
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		if (buf[len] == '\n')
			break;
		len++;
	}
	buf[len] = '\0';
	return 0;
}

/* ---- the old daemon ------------------------------------------------------------------------- */

static void add_fd(int **fds, size_t *n, int fd)
{
	*fds = xrealloc(*fds, (*n + 1) * sizeof(int));
	(*fds)[(*n)++] = fd;
}

/* The open handles, with the upper files' descriptors added to fds. */
static json_object *save_handles(struct daemon *d, int **fds, size_t *nfds)
{
	json_object *arr = json_object_new_array();
	pthread_mutex_lock(&d->handles_lock);
	for (uint64_t fh = 1; fh <= d->last_handle; fh++) {
		void *p = handle_get(d, fh);
		struct handle_slot *s =
		    p ? &d->hchunks[(fh - 1) / HCHUNK_SIZE][(fh - 1) % HCHUNK_SIZE] : NULL;
		if (!s)
			continue;
		json_object *o = json_object_new_object();
		json_object_object_add(o, "fh", json_object_new_int64(fh));
		if (s->kind == HANDLE_DIR)
			json_object_object_add(o, "kind", json_object_new_string("dir"));
		else {
			struct open_file *of = p;
			json_object_object_add(o, "kind", json_object_new_string("file"));
			json_object_object_add(o, "ino", json_object_new_int64(of->ino));
			json_object_object_add(o, "flags", json_object_new_int(of->open_flags));
			if (of->fd >= 0) {
				json_object_object_add(o, "fd", json_object_new_int64(*nfds));
				add_fd(fds, nfds, of->fd);
			}
		}
		json_object_array_add(arr, o);
	}
	pthread_mutex_unlock(&d->handles_lock);
	return arr;
}

static char *hex(const void *p, size_t n)
{
	char *s = xmalloc(2 * n + 1);
	for (size_t i = 0; i < n; i++)
		sprintf(s + 2 * i, "%02x", ((const unsigned char *)p)[i]);
	s[2 * n] = '\0';
	return s;
}

static void resume(struct daemon *d)
{
	if (d->up)
		upper_start(d, d->se);
	struct mosaic_error err = {0};
	if (dev_start(d, &err) < 0)
		fprintf(stderr, "mosaic: dev directories are not watched: %s\n", err.msg);
	loop_resume(d);
}

bool handover_give(struct daemon *d, int sock)
{
	struct mosaic_error err = {0};
	loop_pause(d);
	dev_stop(d);
	upper_pause(d);
	int *fds = NULL;
	size_t nfds = 0;
	add_fd(&fds, &nfds, fuse_session_fd(d->se));
	add_fd(&fds, &nfds, d->control_fd);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "ok", json_object_new_boolean(true));
	json_object_object_add(o, "version", json_object_new_int(HANDOVER_VERSION));
	json_object_object_add(o, "pid", json_object_new_int(getpid()));
	json_object_object_add(o, "mountpoint", json_object_new_string(d->mountpoint));
	json_object_object_add(o, "lower", json_object_new_string(d->lower));
	json_object_object_add(o, "mode", json_object_new_string(fusefs_writable_name(d->mode)));
	if (d->upper)
		json_object_object_add(o, "upper", json_object_new_string(d->upper));
	if (d->work)
		json_object_object_add(o, "work", json_object_new_string(d->work));
	if (d->fallback)
		json_object_object_add(o, "fallback", json_object_new_string(d->fallback));
	if (d->fuse_options)
		json_object_object_add(o, "fuse_options", json_object_new_string(d->fuse_options));
	if (d->keyring_path)
		json_object_object_add(o, "keyring", json_object_new_string(d->keyring_path));
	_cleanup_free_ char *init = d->init_len ? hex(d->init_req, d->init_len) : NULL;
	json_object_object_add(o, "init", init ? json_object_new_string(init) : NULL);
	json_object_object_add(o, "history", json_object_get(d->history));
	json_object_object_add(o, "previous", json_object_get(d->previous));
	int r = init ? live_save(d, o, &err) : mosaic_errorf(&err, -EPROTO, "no FUSE_INIT kept");
	if (r == 0 && d->up) {
		json_object_object_add(o, "lock_fd", json_object_new_int64(nfds));
		add_fd(&fds, &nfds, upper_lock_fd(d));
		json_object_object_add(o, "nodes", upper_save(d));
	}
	if (r == 0)
		json_object_object_add(o, "handles", save_handles(d, &fds, &nfds));
	bool taken = false;
	if (r == 0 && send_fds(sock, fds, nfds) == 0) {
		const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
		char line[64];
		if (write_all(sock, s, strlen(s)) == 0 && write_all(sock, "\n", 1) == 0 &&
		    read_line(sock, line, sizeof(line), TAKE_TIMEOUT_MS) == 0)
			taken = strcmp(line, "taken") == 0;
	} else if (r < 0) {
		json_object *f = json_object_new_object();
		json_object_object_add(f, "ok", json_object_new_boolean(false));
		json_object_object_add(f, "error", json_object_new_string(err.msg));
		const char *s = json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN);
		write_all(sock, s, strlen(s));
		write_all(sock, "\n", 1);
		json_object_put(f);
	}
	json_object_put(o);
	free(fds);
	if (!taken) {
		fprintf(stderr, "mosaic: the new daemon did not take the session; serving on\n");
		resume(d);
		return false;
	}
	d->handed_over = true;
	loop_handed_over(d);
	return true;
}

/* ---- the new daemon ------------------------------------------------------------------------- */

static const char *str_of(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : NULL;
}

static int fd_at(json_object *o, const char *key, const int *fds, size_t n)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !v)
		return -1;
	int64_t i = json_object_get_int64(v);
	return i >= 0 && (size_t)i < n ? fds[i] : -1;
}

static int restore_handles(struct daemon *d, json_object *arr, const int *fds, size_t nfds,
                           struct mosaic_error *err)
{
	for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
		json_object *o = json_object_array_get_idx(arr, i), *v;
		uint64_t fh = json_object_object_get_ex(o, "fh", &v) ? json_object_get_int64(v) : 0;
		const char *kind = str_of(o, "kind");
		void *p = NULL;
		enum handle_kind k = HANDLE_FILE;
		if (kind && strcmp(kind, "dir") == 0) {
			p = upper_dir_handle_new();
			k = HANDLE_DIR;
		} else {
			int fd = fd_at(o, "fd", fds, nfds);
			struct open_file *of = NULL;
			fuse_ino_t ino =
			    json_object_object_get_ex(o, "ino", &v) ? json_object_get_int64(v) : 0;
			if (fd >= 0) {
				of = xcalloc(1, sizeof(*of));
				of->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
			} else {
				/* A file of a fragment: opened again as the same view inode. */
				struct gen *g;
				uint32_t x;
				const struct compose_inode *in = view_get(d, ino, &g, &x);
				int r = in ? fusefs_frag_open(d, g, in, &of) : -ESTALE;
				if (r < 0)
					return mosaic_errorf(err, r,
					                     "reopening open file %" PRIu64 ": %s",
					                     fh, strerror(-r));
			}
			of->ino = ino;
			of->open_flags =
			    json_object_object_get_ex(o, "flags", &v) ? json_object_get_int(v) : 0;
			p = of;
		}
		/* The same slot: the kernel knows the handle by its number. */
		size_t c = (fh - 1) / HCHUNK_SIZE;
		if (!fh || c >= HCHUNKS)
			return mosaic_errorf(err, -EINVAL, "a handle numbered %" PRIu64, fh);
		if (!d->hchunks[c])
			d->hchunks[c] = xcalloc(HCHUNK_SIZE, sizeof(struct handle_slot));
		d->hchunks[c][(fh - 1) % HCHUNK_SIZE] = (struct handle_slot){.p = p, .kind = k};
		if (fh > d->last_handle)
			d->last_handle = fh;
	}
	/* The slots in between are free. */
	for (uint64_t fh = 1; fh <= d->last_handle; fh++)
		if (!handle_get(d, fh)) {
			if (d->n_free_handles == d->cap_free_handles) {
				d->cap_free_handles =
				    d->cap_free_handles ? 2 * d->cap_free_handles : 64;
				d->free_handles =
				    xrealloc(d->free_handles,
				             d->cap_free_handles * sizeof(*d->free_handles));
			}
			d->free_handles[d->n_free_handles++] = fh;
		}
	return 0;
}

static int unhex(const char *s, void **out, size_t *len)
{
	size_t n = strlen(s) / 2;
	unsigned char *p = xmalloc(n ? n : 1);
	for (size_t i = 0; i < n; i++)
		if (sscanf(s + 2 * i, "%2hhx", &p[i]) != 1) {
			free(p);
			return -EINVAL;
		}
	*out = p;
	*len = n;
	return 0;
}

int handover_take(struct daemon *d, const char *control, int *sock_out, int *fuse_fd,
                  struct mosaic_error *err)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", control);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return mosaic_errorf(err, -errno, "socket: %m");
	*sock_out = sock;
	if (connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0)
		return mosaic_errorf(err, -errno, "cannot reach the running daemon (%s: %m)",
		                     control);
	static const char req[] = "{\"op\":\"handover\"}\n";
	if (write_all(sock, req, strlen(req)) < 0)
		return mosaic_errorf(err, -errno, "asking for the session: %m");
	int *fds = NULL;
	size_t nfds = 0;
	_cleanup_free_ char *text = NULL;
	int r = recv_all(sock, &fds, &nfds, &text);
	if (r < 0)
		return mosaic_errorf(err, r, "receiving the session: %s", strerror(-r));
	json_object *o = json_tokener_parse(text), *v;
	if (!o || !json_object_object_get_ex(o, "ok", &v) || !json_object_get_boolean(v)) {
		r = mosaic_errorf(err, -EPROTO, "the running daemon refused: %s",
		                  o && str_of(o, "error") ? str_of(o, "error") : text);
		goto out;
	}
	if (!json_object_object_get_ex(o, "version", &v) ||
	    json_object_get_int(v) != HANDOVER_VERSION || nfds < 2) {
		r = mosaic_errorf(err, -EPROTO,
		                  "the running daemon hands over in another format (version %d); "
		                  "unmount and mount instead",
		                  v ? json_object_get_int(v) : 0);
		goto out;
	}
	*fuse_fd = fds[0];
	d->control_fd = fds[1];
	d->old_pid = json_object_object_get_ex(o, "pid", &v) ? json_object_get_int(v) : 0;
	d->mountpoint = xstrdup(str_of(o, "mountpoint"));
	d->lower = xstrdup(str_of(o, "lower"));
	d->upper = str_of(o, "upper") ? xstrdup(str_of(o, "upper")) : NULL;
	d->work = str_of(o, "work") ? xstrdup(str_of(o, "work")) : NULL;
	d->fallback = str_of(o, "fallback") ? xstrdup(str_of(o, "fallback")) : NULL;
	d->fuse_options = str_of(o, "fuse_options") ? xstrdup(str_of(o, "fuse_options")) : NULL;
	d->keyring_path = str_of(o, "keyring") ? xstrdup(str_of(o, "keyring")) : NULL;
	const char *mode = str_of(o, "mode");
	for (int w = FUSEFS_READ_ONLY; w <= FUSEFS_WRITABLE_FUSE; w++)
		if (mode && strcmp(mode, fusefs_writable_name(w)) == 0)
			d->mode = w;
	if (json_object_object_get_ex(o, "history", &v) && v)
		d->history = json_object_get(v);
	if (json_object_object_get_ex(o, "previous", &v) && v)
		d->previous = json_object_get(v);
	if (d->keyring_path && (r = keyring_open(d->keyring_path, &d->keyring, err)) < 0)
		goto out;
	if ((r = live_restore(d, o, err)) < 0)
		goto out;
	void *init;
	size_t init_len;
	if (!str_of(o, "init") || unhex(str_of(o, "init"), &init, &init_len) < 0) {
		r = mosaic_errorf(err, -EPROTO, "the handover has no FUSE_INIT");
		goto out;
	}
	d->init_req = init;
	d->init_len = init_len;
	d->handover = json_object_get(o);
	d->handover_fds = fds;
	d->handover_nfds = nfds;
	fds = NULL;
out:
	json_object_put(o);
	free(fds);
	return r;
}

int handover_finish(struct daemon *d, int sock, struct mosaic_error *err)
{
	json_object *o = d->handover, *v;
	int r = 0;
	if (d->up && json_object_object_get_ex(o, "nodes", &v))
		r = upper_restore(d, v, err);
	if (r == 0 && json_object_object_get_ex(o, "handles", &v))
		r = restore_handles(d, v, d->handover_fds, d->handover_nfds, err);
	/* The upper files' descriptors are dup'ed where used; these copies go. */
	for (size_t i = 2; i < d->handover_nfds; i++)
		if (d->handover_fds[i] != upper_lock_fd(d))
			close(d->handover_fds[i]);
	free(d->handover_fds);
	d->handover_fds = NULL;
	json_object_put(d->handover);
	d->handover = NULL;
	if (r == 0 && write_all(sock, "taken\n", 6) < 0)
		r = mosaic_errorf(err, -errno, "telling the old daemon: %m");
	return r;
}

int handover_lock_fd(struct daemon *d)
{
	return fd_at(d->handover, "lock_fd", d->handover_fds, d->handover_nfds);
}
