/* configure/: the rpm back end: the %pre and %post scriptlets of the composition's RPM packages
 * (compose/ reads them from the headers its rpm database names) run chrooted in rpm's order. */
#include "compose/compose.h"
#include "configure/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

/* One line "NEVRA STAGE" per scriptlet that ran to success, appended as each one finishes. */
#define RPM_DONE "var/lib/mosaic/rpm-scriptlets"
/* In the session's own /tmp (a tmpfs that vanishes with it), as rpm writes its rpm-tmp.* files
 * into %_tmppath: nothing of it reaches the upper. */
#define SCRIPT_TEMPLATE "tmp/mosaic-rpm-tmp.XXXXXX"

static bool rpm_wanted(const char *root)
{
	_cleanup_free_ char *plan = path_join(root, COMPOSE_RPM_PLAN);
	return access(plan, F_OK) == 0;
}

static char *done_key(const struct compose_rpm_script *s)
{
	return xasprintf("%s %s", s->package, s->stage);
}

/* The done list's lines, or NULL when there is none yet. */
static char **read_done(const char *root, size_t *n)
{
	_cleanup_free_ char *path = path_join(root, RPM_DONE);
	_cleanup_free_ char *text = NULL;
	*n = 0;
	if (read_file(path, 16 << 20, &text, NULL) < 0)
		return NULL;
	char **v = strv_split(text, "\n");
	while (v && v[*n])
		(*n)++;
	return v;
}

static bool is_done(char *const *done, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(done[i], key) == 0)
			return true;
	return false;
}

static int record_done(const char *root, const struct compose_rpm_script *s)
{
	_cleanup_free_ char *path = path_join(root, RPM_DONE);
	_cleanup_free_ char *dir = xstrdup(path);
	*strrchr(dir, '/') = 0;
	_cleanup_free_ char *line = xasprintf("%s %s\n", s->package, s->stage);
	int r = mkdir_p(dir, 0755);
	if (r < 0)
		return r;
	_cleanup_close_ int fd =
	    open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	/* Durable before the next scriptlet starts: a killed run must not run this one again. */
	if ((r = write_all(fd, line, strlen(line))) < 0)
		return r;
	return fsync(fd) < 0 ? -errno : 0;
}

/* The script body in a file the chroot sees; *inside is its path there. */
static int write_script(const char *root, const char *body, char **host, char **inside)
{
	_cleanup_free_ char *path = path_join(root, SCRIPT_TEMPLATE);
	_cleanup_close_ int fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = write_all(fd, body, strlen(body));
	if (r == 0 && fchmod(fd, 0600) < 0)
		r = -errno;
	if (r < 0) {
		unlink(path);
		return r;
	}
	*inside = xasprintf("/%s", path + strlen(path) - strlen(SCRIPT_TEMPLATE));
	*host = TAKE_PTR(path);
	return 0;
}

/* What plan found: the scriptlets in order, and the ones that ran to success. */
struct rpm_plan {
	struct compose_rpm_script *scripts;
	size_t n;
	char **done;
	size_t n_done;
	size_t todo;
};

static void rpm_free(void *state)
{
	struct rpm_plan *p = state;
	compose_rpm_scripts_free(p->scripts, p->n);
	strv_freev(p->done);
	free(p);
}

static int rpm_plan(const struct configure_ctx *ctx, bool more, void **state,
                    struct mosaic_error *err)
{
	struct rpm_plan *p = xcalloc(1, sizeof(*p));
	*state = p;
	int r = compose_rpm_scripts(ctx->root, &p->scripts, &p->n, err);
	if (r < 0) {
		mosaic_error_prefix(err, "configure: rpm");
		return r;
	}
	p->done = read_done(ctx->root, &p->n_done);
	for (size_t i = 0; i < p->n; i++) {
		_cleanup_free_ char *key = done_key(&p->scripts[i]);
		p->todo += !is_done(p->done, p->n_done, key);
	}
	/* Nothing runs and nothing is written: a second run changes nothing. */
	if (p->todo == 0)
		configure_say(ctx, CONFIGURE_INFO, NULL,
		              "rpm: all %zu scriptlets have run; nothing to do", p->n);
	return (int)p->todo;
}

static int run_script(const struct configure_ctx *ctx, const struct compose_rpm_script *s,
                      size_t number, size_t total, struct mosaic_error *err)
{
	const char *root = ctx->root;
	_cleanup_free_ char *name = xasprintf("%%%s %s", s->stage, s->package);
	if (s->lua)
		return mosaic_errorf(
		    err, -ENOTSUP,
		    "configure: %s: an embedded lua scriptlet, which only rpm itself "
		    "can run; mosaic runs external interpreters only",
		    name);
	_cleanup_free_ char *host = NULL, *inside = NULL, *arg = xasprintf("%u", s->arg);
	if (s->body) {
		int r = write_script(root, s->body, &host, &inside);
		if (r < 0)
			return mosaic_errorf(err, r,
			                     "configure: %s: writing the script into %s/tmp: %s",
			                     name, root, strerror(-r));
	}
	/* rpm's argv (runExtScript): the interpreter and its options, then with a body the script
	 * file and the install count; an interpreter alone gets nothing more. */
	size_t na = 0, ne = 0;
	while (s->argv[na])
		na++;
	const char **argv = xcalloc(na + 3, sizeof(*argv));
	memcpy(argv, s->argv, na * sizeof(*argv));
	if (s->body) {
		argv[na++] = inside;
		argv[na++] = arg;
	}
	for (char *const *e = ctx->env; e && *e; e++)
		ne++;
	for (char **e = s->env; *e; e++)
		ne++;
	const char **envp = xcalloc(ne + 1, sizeof(*envp));
	ne = 0;
	for (char *const *e = ctx->env; e && *e; e++)
		envp[ne++] = *e;
	for (char **e = s->env; *e; e++)
		envp[ne++] = *e;

	const struct chroot_step step = {name, (char *const *)argv, (char *const *)envp,
	                                 ctx->o->timeout};
	struct chroot_result res = {0};
	configure_step(ctx, name, number, total);
	int r = chroot_run_step(ctx, root, &step, &res);
	free(argv);
	free(envp);
	if (host)
		unlink(host);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: %s could not start: %s", name,
		                     strerror(-r));
	if (res.timed_out || res.status != 0) {
		_cleanup_free_ char *what =
		    res.timed_out ? xasprintf("%s ran past --step-timeout %u s and was killed",
		                              name, ctx->o->timeout)
		                  : xasprintf("%s failed with exit status %d", name, res.status);
		configure_say(ctx, CONFIGURE_ERROR, name, "%s", what);
		configure_say_report(ctx, name, res.tail,
		                     "the upper keeps what was done; fix it and run mosaic "
		                     "configure again to carry on");
		r = mosaic_errorf(err, -EIO, "configure: %s", what);
	}
	free(res.tail);
	return r;
}

static int rpm_run(const struct configure_ctx *ctx, void *state, struct mosaic_error *err)
{
	const struct rpm_plan *p = state;
	configure_say(ctx, CONFIGURE_INFO, NULL, "rpm: %zu of %zu scriptlets to run", p->todo,
	              p->n);
	size_t number = 0;
	for (size_t i = 0; i < p->n; i++) {
		_cleanup_free_ char *key = done_key(&p->scripts[i]);
		if (is_done(p->done, p->n_done, key))
			continue;
		/* rpm stops a package's install when its %pre fails and only warns about a failing
		 * %post; here the files are in place either way, so any failure stops the run,
		 * and the next run starts again with the scriptlet that failed. */
		int r = run_script(ctx, &p->scripts[i], ++number, p->todo, err);
		if (r < 0)
			return r;
		r = record_done(ctx->root, &p->scripts[i]);
		if (r < 0)
			return mosaic_errorf(err, r, "configure: %s/%s: %s", ctx->root, RPM_DONE,
			                     strerror(-r));
	}
	configure_say(ctx, CONFIGURE_INFO, NULL, "rpm: %zu scriptlets ran", p->todo);
	return 0;
}

const struct configure_backend configure_backend_rpm = {
    .name = "rpm",
    .wanted = rpm_wanted,
    .plan = rpm_plan,
    .run = rpm_run,
    .free = rpm_free,
};
