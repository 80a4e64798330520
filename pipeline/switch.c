/* pipeline/: switching a running mount to another composition (a manifest's generation, an
 * index, fragments, or edits of what it serves), its health check, and rolling back. The daemon
 * does the switch itself (fusefs_switch); this file finds what to switch to and runs the check. */
#include "pipeline/internal.h"

#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

void pipeline_switch_result_clear(struct pipeline_switch_result *res)
{
	free(res->check_failed);
	json_object_put(res->served);
	*res = (struct pipeline_switch_result){0};
}

/* What the mount serves now: its state (status) must say a running daemon. */
static int served_now(const char *mountpoint, json_object **state, struct mosaic_error *err)
{
	int r = fusefs_status(mountpoint, state, err);
	if (r < 0)
		return r;
	json_object *v;
	if (!json_object_object_get_ex(*state, "running", &v) || !json_object_get_boolean(v)) {
		json_object_put(*state);
		return mosaic_errorf(err, -ESRCH,
		                     "the daemon serving %s is not running; 'mosaic restart %s' "
		                     "brings it back with what it served last",
		                     mountpoint, mountpoint);
	}
	return 0;
}

static char **strv_of(json_object *arr, size_t *n)
{
	*n = arr ? json_object_array_length(arr) : 0;
	char **v = xcalloc(*n + 1, sizeof(*v));
	for (size_t i = 0; i < *n; i++)
		v[i] = xstrdup(json_object_get_string(json_object_array_get_idx(arr, i)));
	return v;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The fragment among images (verified against k) named name; -1 when none is. */
static ssize_t find_named(struct keyring *k, char **images, size_t n, const char *name,
                          struct mosaic_error *err)
{
	for (size_t i = 0; i < n; i++) {
		struct fragment_descriptor d;
		if (is_dir(images[i]))
			continue; /* a live dev directory: no descriptor, no name */
		if (fragment_verify(k, images[i], &d, err) < 0)
			return -1;
		bool hit = strcmp(d.name, name) == 0;
		fragment_descriptor_clear(&d);
		if (hit)
			return i;
	}
	return mosaic_errorf(err, -ENOENT, "the mount serves no fragment named '%s'", name), -1;
}

/* The served fragment list with o's --remove, --replace and --add applied, in that order. */
static int edited(const struct pipeline_switch_options *o, json_object *state, char ***out,
                  size_t *n_out, struct mosaic_error *err)
{
	json_object *fr = NULL;
	json_object_object_get_ex(state, "fragments", &fr);
	size_t n;
	char **v = strv_of(fr, &n);
	struct keyring *k = NULL;
	_cleanup_free_ char *def = o->keyring ? NULL : keyring_default_path();
	int r = keyring_open(o->keyring ? o->keyring : def, &k, err);
	for (size_t i = 0; r == 0 && i < o->n_remove; i++) {
		ssize_t at = find_named(k, v, n, o->remove[i], err);
		if (at < 0) {
			r = -ENOENT;
			break;
		}
		free(v[at]);
		memmove(v + at, v + at + 1, (n - at) * sizeof(*v));
		n--;
	}
	for (size_t i = 0; r == 0 && i < o->n_replace; i++) {
		_cleanup_free_ char *name = xstrdup(o->replace[i]);
		char *eq = strchr(name, '=');
		if (!eq || eq == name || !eq[1]) {
			r = mosaic_errorf(err, -EINVAL, "--replace %s: want NAME=FRAGMENT",
			                  o->replace[i]);
			break;
		}
		*eq = '\0';
		ssize_t at = find_named(k, v, n, name, err);
		char *path = NULL;
		if (at < 0 || (r = pipeline_fragment_path(eq + 1, o->store, &path, err)) < 0) {
			r = r < 0 ? r : -ENOENT;
			break;
		}
		free(v[at]);
		v[at] = path;
	}
	/* Added fragments go on top of the fragments, under the live dev directories on top. */
	size_t top = n;
	while (top > 0 && is_dir(v[top - 1]))
		top--;
	for (size_t i = 0; r == 0 && i < o->n_add; i++) {
		char *path = NULL;
		if ((r = pipeline_fragment_path(o->add[i], o->store, &path, err)) < 0)
			break;
		v = xrealloc(v, (n + 2) * sizeof(*v));
		memmove(v + top + 1, v + top, (n - top) * sizeof(*v));
		v[top++] = path;
		v[++n] = NULL;
	}
	keyring_free(k);
	if (r < 0) {
		strv_free(v, n);
		return r;
	}
	*out = v;
	*n_out = n;
	return 0;
}

/* Runs the check: sh -c CMD in a chroot of the view (on the host with on_host), with
 * $MOSAIC_MOUNT set, for at most timeout seconds. NULL when it passed, else why not. */
static char *run_check(const char *mountpoint, const char *cmd, bool on_host, double timeout)
{
	pid_t pid = fork();
	if (pid < 0)
		return xasprintf("cannot run the check: %s", strerror(errno));
	if (pid == 0) {
		setpgid(0, 0);
		setenv("MOSAIC_MOUNT", mountpoint, 1);
		if (!on_host && (chroot(mountpoint) < 0 || chdir("/") < 0)) {
			fprintf(stderr, "mosaic: chroot %s: %m\n", mountpoint);
			_exit(127);
		}
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		if (on_host)
			fprintf(stderr, "mosaic: /bin/sh: %m\n");
		else
			fprintf(stderr, "mosaic: the view has no /bin/sh to run the check in (%m); "
			                "run it on the host with --check-host\n");
		_exit(127);
	}
	setpgid(pid, pid);
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	int status;
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double t = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
		if (timeout > 0 && t >= timeout) {
			kill(-pid, SIGKILL);
			waitpid(pid, &status, 0);
			return xasprintf("the check '%s' did not finish in %g s", cmd, timeout);
		}
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	/* What the check started and left running goes with it. */
	kill(-pid, SIGKILL);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return NULL;
	if (WIFEXITED(status))
		return xasprintf("the check '%s' failed (exit %d)", cmd, WEXITSTATUS(status));
	return xasprintf("the check '%s' was killed by signal %d", cmd, WTERMSIG(status));
}

int pipeline_switch(const struct pipeline_switch_options *o, struct pipeline_switch_result *res,
                    struct pipeline_events *ev, struct mosaic_error *err)
{
	*res = (struct pipeline_switch_result){0};
	json_object *state;
	int r = served_now(o->mountpoint, &state, err);
	if (r < 0)
		return r;
	json_object *v;
	/* What is served now: where a failed check goes back to. */
	const char *old_index =
	    json_object_object_get_ex(state, "index", &v) ? json_object_get_string(v) : NULL;
	json_object *old_fr = NULL, *old_info = NULL;
	json_object_object_get_ex(state, "fragments", &old_fr);
	json_object_object_get_ex(state, "generation", &old_info);

	char *index = NULL, **images = NULL;
	size_t n = 0;
	json_object *info = NULL;
	const char *reason = "switch";
	struct composition *c = NULL;
	if (o->rollback) {
		/* The daemon knows what it served before. */
		reason = NULL;
	} else if (o->target) {
		struct pipeline_source s = *o->target;
		s.mountpoints = false;
		s.open_index = false;
		r = pipeline_open(&s, &c, ev, err);
		if (r == 0) {
			/* The live dev directories the mount serves stay on top. */
			json_object *dev = NULL;
			json_object_object_get_ex(state, "dev", &dev);
			size_t nd = dev ? json_object_array_length(dev) : 0;
			index = xstrdup(c->index_path);
			images = xcalloc(c->n_images + nd + 1, sizeof(*images));
			for (size_t i = 0; i < c->n_images; i++)
				images[i] = xstrdup(c->images[i]);
			n = c->n_images;
			for (size_t i = 0; i < nd; i++)
				images[n++] = xstrdup(
				    json_object_get_string(json_object_array_get_idx(dev, i)));
			info = pipeline_composition_info(&s, c);
		}
	} else {
		char **list = NULL;
		size_t nl = 0;
		r = edited(o, state, &list, &nl, err);
		if (r == 0) {
			/* The index is of the fragments; the daemon adds live dev directories. */
			_cleanup_free_ char **plain = xcalloc(nl + 1, sizeof(*plain));
			size_t np = 0;
			for (size_t i = 0; i < nl; i++)
				if (!is_dir(list[i]))
					plain[np++] = list[i];
			struct pipeline_source s = {
			    .args = plain, .n_args = np, .store = o->store, .keyring = o->keyring};
			r = pipeline_open(&s, &c, ev, err);
		}
		if (r == 0) {
			index = xstrdup(c->index_path);
			images = list;
			n = nl;
			list = NULL;
			info = json_object_new_object();
			json_object_object_add(info, "source", json_object_new_string("edit"));
			if (old_info)
				json_object_object_add(info, "base", json_object_get(old_info));
		}
		strv_free(list, nl);
	}
	composition_free(c);
	if (r == 0 && o->rollback)
		r = fusefs_rollback(o->mountpoint, "rollback", &res->sw, err);
	else if (r == 0)
		r = fusefs_switch(o->mountpoint, index, images, n, info, reason, false, &res->sw,
		                  err);
	if (r == 0 && o->rollback) {
		/* what it serves now */
		json_object *now = NULL, *x;
		if (fusefs_status(o->mountpoint, &now, NULL) == 0) {
			if (json_object_object_get_ex(now, "fragments", &x))
				res->n_fragments = json_object_array_length(x);
			if (json_object_object_get_ex(now, "generation", &x))
				res->served = json_object_get(x);
			json_object_put(now);
		}
	} else if (r == 0) {
		res->n_fragments = n;
		res->served = json_object_get(info);
	}
	if (r == 0 && o->check) {
		pipeline_say(ev, PIPELINE_INFO, "check", "checking: %s", o->check);
		res->check_failed =
		    run_check(o->mountpoint, o->check, o->check_on_host, o->check_timeout);
	}
	if (r == 0 && res->check_failed) {
		/* Back to what was served, with the stack of previous ones as it was. */
		size_t no;
		char **oi = strv_of(old_fr, &no);
		struct fusefs_switch_result back;
		_cleanup_free_ char *why = xasprintf("rollback: %s", res->check_failed);
		/* After a switch, back pops what it pushed; after a rollback, back pushes again
		 * what the rollback popped: the stack is as it was either way. */
		int b = fusefs_switch(o->mountpoint, old_index, oi, no, old_info, why, !o->rollback,
		                      &back, err);
		strv_free(oi, no);
		if (b < 0)
			r = mosaic_errorf(err, b, "%s, and switching back failed: %s",
			                  res->check_failed, err->msg);
		else {
			res->rolled_back = true;
			r = mosaic_errorf(err, -ECANCELED, "%s; %s serves what it served before",
			                  res->check_failed, o->mountpoint);
		}
	}
	json_object_put(info);
	free(index);
	strv_free(images, n);
	json_object_put(state);
	return r;
}
