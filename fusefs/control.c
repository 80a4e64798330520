/* The daemon's control channel: a Unix socket, <state dir>/control, that takes one JSON request
 * per connection and answers with one JSON reply. Only root and the user the daemon runs as
 * (the mount's owner) are served; the peer's credentials come from the kernel (SO_PEERCRED),
 * not from the request. A request that fails changes nothing the view serves.
 *
 *   {"op": "switch", "index": PATH, "images": [PATH...], "info": {...}, "reason": TEXT,
 *    "rollback": BOOL}
 *   {"op": "rollback", "reason": TEXT}   (to what was served before the last switch)
 *   {"op": "handover"}                   (handover.c)
 *   {"op": "ping"}
 *
 * The reply is {"ok": true, ...} or {"ok": false, "error": TEXT}. */
#include "fusefs/internal.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#define MAX_REQUEST        (64u << 20)
#define HISTORY_MAX        100
#define REQUEST_TIMEOUT_MS 30000
#define PREVIOUS_MAX       16

static char *control_path(const char *state_dir)
{
	return path_join(state_dir, "control");
}

/* Reads and drops what fd still sends, for at most a second or 64 MiB. */
static void drain(int fd)
{
	char buf[65536];
	size_t total = 0;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 1000) <= 0)
			return;
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0 || (total += n) > MAX_REQUEST)
			return;
	}
}

static int read_request(int fd, int timeout_ms, char **out)
{
	size_t cap = 4096, len = 0;
	char *buf = xmalloc(cap);
	for (;;) {
		if (len + 1 == cap) {
			if (cap >= MAX_REQUEST) {
				free(buf);
				return -EMSGSIZE;
			}
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		/* One control thread serves everyone: a silent caller does not hold it. */
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int ready = poll(&p, 1, timeout_ms);
		if (ready == 0) {
			free(buf);
			return -ETIMEDOUT;
		}
		ssize_t n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return -errno;
		}
		if (n == 0)
			break;
		len += n;
		if (buf[len - 1] == '\n')
			break; /* a request that waits for its answer on the same connection */
	}
	buf[len] = '\0';
	*out = buf;
	return 0;
}

static void reply(int fd, json_object *o)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	write_all(fd, s, strlen(s));
	write_all(fd, "\n", 1); /* a client waiting on the connection (handover) reads a line */
	json_object_put(o);
}

static json_object *failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_object *failure(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char msg[2048];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "ok", json_object_new_boolean(false));
	json_object_object_add(o, "error", json_object_new_string(msg));
	return o;
}

static const char *str_field(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
}

static void history_add(struct daemon *d, json_object *from, const char *reason,
                        const struct live_switch_result *r)
{
	if (!d->history)
		d->history = json_object_new_array();
	json_object *e = json_object_new_object();
	json_object_object_add(e, "time", json_object_new_int64(time(NULL)));
	json_object_object_add(e, "from", json_object_get(from));
	json_object_object_add(e, "to", d->cur->info ? json_object_get(d->cur->info) : NULL);
	json_object_object_add(e, "reason", json_object_new_string(reason ? reason : "switch"));
	json_object_object_add(e, "invalidations", json_object_new_int64(r->invalidations));
	json_object_object_add(e, "ms", json_object_new_double(r->ms));
	json_object_array_add(d->history, e);
	size_t n = json_object_array_length(d->history);
	if (n > HISTORY_MAX)
		json_object_array_del_idx(d->history, 0, n - HISTORY_MAX);
}

/* What the daemon serves, as a switch request would name it. */
static json_object *served(struct daemon *d)
{
	json_object *o = json_object_new_object(), *fr = json_object_new_array();
	json_object_object_add(o, "index", json_object_new_string(d->cur->index_path));
	for (size_t i = 0; i < d->cur->n_frags; i++)
		json_object_array_add(fr, json_object_new_string(d->cur->frags[i]->path));
	json_object_object_add(o, "images", fr);
	if (d->cur->info)
		json_object_object_add(o, "info", json_object_get(d->cur->info));
	return o;
}

/* The compositions served before, newest last: a switch pushes, a rollback pops. */
static void previous_update(struct daemon *d, json_object *before, bool rollback)
{
	if (!d->previous)
		d->previous = json_object_new_array();
	size_t n = json_object_array_length(d->previous);
	if (rollback) {
		if (n)
			json_object_array_del_idx(d->previous, n - 1, 1);
		return;
	}
	json_object_array_add(d->previous, json_object_get(before));
	if (n + 1 > PREVIOUS_MAX)
		json_object_array_del_idx(d->previous, 0, n + 1 - PREVIOUS_MAX);
}

static json_object *do_switch(struct daemon *d, json_object *req)
{
	const char *index = str_field(req, "index");
	json_object *imgs, *info = NULL;
	if (!index || !json_object_object_get_ex(req, "images", &imgs) ||
	    !json_object_is_type(imgs, json_type_array))
		return failure("malformed switch request: it needs \"index\" and \"images\"");
	if (d->mode == FUSEFS_WRITABLE_OVERLAY)
		return failure(
		    "%s is writable with kernel overlayfs, which does not allow its lower layers "
		    "to "
		    "change while mounted; unmount it and mount the new composition over the same "
		    "upper, or mount with --writable=fuse to switch live",
		    d->mountpoint);
	size_t n = json_object_array_length(imgs);
	char **images = xcalloc(n ? n : 1, sizeof(*images));
	for (size_t i = 0; i < n; i++) {
		json_object *v = json_object_array_get_idx(imgs, i);
		if (!json_object_is_type(v, json_type_string) ||
		    json_object_get_string(v)[0] != '/') {
			free(images);
			return failure(
			    "malformed switch request: image %zu is not an absolute path", i);
		}
		images[i] = (char *)json_object_get_string(v);
	}
	if (json_object_object_get_ex(req, "info", &info) &&
	    !json_object_is_type(info, json_type_object))
		info = NULL;
	json_object *from = d->cur->info ? json_object_get(d->cur->info) : NULL;
	json_object *before = served(d), *rb;
	bool rollback =
	    json_object_object_get_ex(req, "rollback", &rb) && json_object_get_boolean(rb);
	struct live_switch_result r;
	struct mosaic_error err = {0};
	/* Live dev directories among the images: the index is built here, with them. */
	_cleanup_free_ char *own = NULL;
	int rc = 0;
	for (size_t i = 0; i < n && !own && rc == 0; i++)
		if (dev_is_dir(images[i]))
			rc = dev_compose(d, images, n, &own, &err);
	if (rc == 0)
		rc = live_switch(d, own ? own : index, images, n, info, own != NULL, 0, &r, &err);
	if (rc < 0 && own)
		unlink(own);
	free(images);
	if (rc < 0) {
		json_object_put(from);
		json_object_put(before);
		return failure("%s", err.msg);
	}
	history_add(d, from, str_field(req, "reason"), &r);
	previous_update(d, before, rollback);
	json_object_put(from);
	json_object_put(before);
	daemon_write_state(d);
	daemon_write_stats(d);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "ok", json_object_new_boolean(true));
	json_object_object_add(o, "kept", json_object_new_int64(r.kept));
	json_object_object_add(o, "added", json_object_new_int64(r.added));
	json_object_object_add(o, "removed", json_object_new_int64(r.removed));
	json_object_object_add(o, "changed", json_object_new_int64(r.changed));
	json_object_object_add(o, "invalidations", json_object_new_int64(r.invalidations));
	json_object_object_add(o, "stranded", json_object_new_int64(r.stranded));
	json_object_object_add(o, "planned_ms", json_object_new_double(r.planned_ms));
	json_object_object_add(o, "ms", json_object_new_double(r.ms));
	return o;
}

static void serve_one(struct daemon *d, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return reply(fd, failure("cannot tell who is asking: %s", strerror(errno)));
	if (cred.uid != 0 && cred.uid != geteuid()) {
		fprintf(stderr, "mosaic: refused a control request from uid %u (pid %d)\n",
		        (unsigned)cred.uid, (int)cred.pid);
		json_object *no = failure("only root or the mount's owner (uid %u) may control %s",
		                          (unsigned)geteuid(), d->mountpoint);
		json_object_object_add(no, "errno", json_object_new_int(EPERM));
		reply(fd, no);
		/* What the caller is still sending is read and dropped, briefly: a close with
		 * unread data would reset the connection before it read the answer. */
		shutdown(fd, SHUT_WR);
		drain(fd);
		return;
	}
	_cleanup_free_ char *text = NULL;
	int r = read_request(fd, REQUEST_TIMEOUT_MS, &text);
	if (r < 0)
		return reply(fd, failure("reading the request: %s", strerror(-r)));
	json_tokener *tok = json_tokener_new();
	json_object *req = json_tokener_parse_ex(tok, text, strlen(text));
	bool bad = json_tokener_get_error(tok) != json_tokener_success ||
	           !json_object_is_type(req, json_type_object);
	json_tokener_free(tok);
	const char *op = bad ? NULL : str_field(req, "op");
	json_object *out;
	if (!op)
		out = failure("malformed request: not a JSON object with an \"op\"");
	else if (strcmp(op, "ping") == 0) {
		out = json_object_new_object();
		json_object_object_add(out, "ok", json_object_new_boolean(true));
		json_object_object_add(out, "pid", json_object_new_int(getpid()));
	} else if (strcmp(op, "switch") == 0)
		out = do_switch(d, req);
	else if (strcmp(op, "rollback") == 0) {
		size_t np = d->previous ? json_object_array_length(d->previous) : 0;
		if (np == 0) {
			out =
			    failure("%s has nothing to roll back to: it serves what it was mounted "
			            "with, or every switch was rolled back",
			            d->mountpoint);
			json_object_object_add(out, "errno", json_object_new_int(ENOENT));
		} else {
			/* The newest composition served before, as a switch request. */
			json_object *prev = json_object_array_get_idx(d->previous, np - 1), *x;
			json_object *sw = json_object_new_object();
			if (json_object_object_get_ex(prev, "index", &x))
				json_object_object_add(sw, "index", json_object_get(x));
			if (json_object_object_get_ex(prev, "images", &x))
				json_object_object_add(sw, "images", json_object_get(x));
			if (json_object_object_get_ex(prev, "info", &x))
				json_object_object_add(sw, "info", json_object_get(x));
			json_object_object_add(sw, "reason",
			                       json_object_new_string(str_field(req, "reason")
			                                                  ? str_field(req, "reason")
			                                                  : "rollback"));
			json_object_object_add(sw, "rollback", json_object_new_boolean(true));
			out = do_switch(d, sw);
			json_object_put(sw);
		}
	} else if (strcmp(op, "handover") == 0) {
		json_object_put(req);
		handover_give(d, fd); /* it answers itself */
		return;
	} else
		out = failure("unknown request \"%s\"", op);
	json_object_put(req);
	reply(fd, out);
}

static void *control_thread(void *arg)
{
	struct daemon *d = arg;
	while (wait_readable(d->control_fd, d->control_stop[0])) {
		int fd = accept4(d->control_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_one(d, fd);
		close(fd);
		if (d->handed_over)
			break; /* the new daemon listens on this socket now */
	}
	return NULL;
}

static int control_run(struct daemon *d, int fd, struct mosaic_error *err)
{
	if (pipe2(d->control_stop, O_CLOEXEC) < 0) {
		close(fd);
		return mosaic_errorf(err, -errno, "pipe: %m");
	}
	d->control_fd = fd;
	pthread_create(&d->control, NULL, control_thread, d);
	d->control_started = true;
	return 0;
}

int control_start_inherited(struct daemon *d, struct mosaic_error *err)
{
	return control_run(d, d->control_fd, err);
}

int control_start(struct daemon *d, struct mosaic_error *err)
{
	_cleanup_free_ char *path = control_path(d->state_dir);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path))
		return mosaic_errorf(err, -ENAMETOOLONG, "%s: path too long for a socket", path);
	strcpy(a.sun_path, path);
	unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "socket: %m");
	/* Anyone may connect, so that a refused caller hears why; the daemon checks who. */
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || chmod(path, 0666) < 0 ||
	    listen(fd, 16) < 0) {
		int e = errno;
		close(fd);
		return mosaic_errorf(err, -e, "%s: %s", path, strerror(e));
	}
	return control_run(d, fd, err);
}

void control_stop(struct daemon *d)
{
	if (!d->control_started)
		return;
	thread_stop(d->control, d->control_stop);
	close(d->control_fd);
	if (!d->handed_over) {
		_cleanup_free_ char *path = control_path(d->state_dir);
		unlink(path);
	}
	d->control_started = false;
}

/* ---- the client ----------------------------------------------------------------------------- */

int fusefs_control(const char *state_dir, const char *mountpoint, json_object *req,
                   json_object **out, struct mosaic_error *err)
{
	_cleanup_free_ char *path = control_path(state_dir);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "socket: %m");
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		return mosaic_errorf(err, -errno,
		                     "cannot reach the daemon of %s (%s: %m); is it a running "
		                     "mosaic mount?",
		                     mountpoint, path);
	const char *s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	if (write_all(fd, s, strlen(s)) < 0 || shutdown(fd, SHUT_WR) < 0)
		return mosaic_errorf(err, -errno, "sending to the daemon of %s: %m", mountpoint);
	_cleanup_free_ char *text = NULL;
	int r = read_request(fd, -1, &text); /* a switch verifying many fragments takes long */
	if (r < 0)
		return mosaic_errorf(err, r, "reading the daemon's answer: %s", strerror(-r));
	json_object *o = json_tokener_parse(text);
	json_object *ok;
	if (!o || !json_object_object_get_ex(o, "ok", &ok)) {
		json_object_put(o);
		return mosaic_errorf(err, -EIO,
		                     "the daemon of %s answered nothing that makes sense (did it "
		                     "die? see its daemon.log)",
		                     mountpoint);
	}
	if (!json_object_get_boolean(ok)) {
		/* what kind of failure: a refusal, a thing not there; else bad input */
		const char *msg = str_field(o, "error");
		json_object *e;
		int code =
		    json_object_object_get_ex(o, "errno", &e) ? json_object_get_int(e) : EINVAL;
		r = mosaic_errorf(err, code > 0 ? -code : -EINVAL, "%s",
		                  msg ? msg : "the daemon refused");
		json_object_put(o);
		return r;
	}
	*out = o;
	return 0;
}
