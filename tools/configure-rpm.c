/* tools/: the RPM half of mosaic configure: the scriptlets of the composition's RPM packages
 * (compose/ reads them from the headers its rpm database fragment names) run in the chroot. */
#include "tools/configure-rpm.h"
#include "compose/compose.h"
#include "tools/chroot-run.h"
#include "tools/cli.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

/* One line "NEVRA STAGE" per scriptlet that ran to success, appended as each one finishes. */
#define RPM_DONE     "var/lib/mosaic/rpm-scriptlets"
#define REPORT_LINES 12
/* In the session's own /tmp (a tmpfs that vanishes with it), as rpm writes its rpm-tmp.* files
 * into %_tmppath: nothing of it reaches the upper. */
#define SCRIPT_TEMPLATE "tmp/mosaic-rpm-tmp.XXXXXX"

bool configure_rpm_wanted(const char *root)
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

static int run_script(const char *root, const struct compose_rpm_script *s, char *const *env,
                      unsigned timeout)
{
	_cleanup_free_ char *name = xasprintf("%%%s %s", s->stage, s->package);
	if (s->lua) {
		fprintf(
		    stderr,
		    "mosaic: configure: %s: an embedded lua scriptlet, which only rpm itself can "
		    "run; mosaic runs external interpreters only\n",
		    name);
		return EXIT_FAIL;
	}
	_cleanup_free_ char *host = NULL, *inside = NULL, *arg = xasprintf("%u", s->arg);
	if (s->body) {
		int r = write_script(root, s->body, &host, &inside);
		if (r < 0) {
			fprintf(stderr,
			        "mosaic: configure: %s: writing the script into %s/tmp: %s\n", name,
			        root, strerror(-r));
			return EXIT_FAIL;
		}
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
	for (char *const *e = env; e && *e; e++)
		ne++;
	for (char **e = s->env; *e; e++)
		ne++;
	const char **envp = xcalloc(ne + 1, sizeof(*envp));
	ne = 0;
	for (char *const *e = env; e && *e; e++)
		envp[ne++] = *e;
	for (char **e = s->env; *e; e++)
		envp[ne++] = *e;

	const struct chroot_step step = {name, (char *const *)argv, (char *const *)envp, timeout};
	struct chroot_result res = {0};
	fprintf(stderr, "mosaic: configure: %s\n", name);
	int r = chroot_run_step(root, &step, &res);
	free(argv);
	free(envp);
	if (host)
		unlink(host);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: %s could not start: %s\n", name, strerror(-r));
		return EXIT_FAIL;
	}
	int rc = EXIT_OK;
	if (res.timed_out || res.status != 0) {
		if (res.timed_out)
			fprintf(
			    stderr,
			    "mosaic: configure: %s ran past --step-timeout %u s and was killed\n",
			    name, timeout);
		else
			fprintf(stderr, "mosaic: configure: %s failed with exit status %d\n", name,
			        res.status);
		fprintf(stderr, "  last lines of its output:\n");
		chroot_print_tail(res.tail, REPORT_LINES);
		fprintf(stderr, "  the upper keeps what was done; fix it and run mosaic configure "
		                "again to carry on\n");
		rc = EXIT_FAIL;
	}
	free(res.tail);
	return rc;
}

int configure_rpm(const char *root, char *const *env, unsigned timeout)
{
	struct mosaic_error err = {0};
	struct compose_rpm_script *scripts = NULL;
	size_t n = 0;
	if (compose_rpm_scripts(root, &scripts, &n, &err) < 0) {
		mosaic_error_prefix(&err, "configure: rpm");
		return cli_fail(&err);
	}
	size_t n_done = 0;
	_cleanup_strv_ char **done = read_done(root, &n_done);
	size_t todo = 0;
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *key = done_key(&scripts[i]);
		todo += !is_done(done, n_done, key);
	}
	if (todo == 0) {
		/* Nothing runs and nothing is written: a second run changes nothing. */
		fprintf(stderr,
		        "mosaic: configure: rpm: all %zu scriptlets have run; nothing to do\n", n);
		compose_rpm_scripts_free(scripts, n);
		return EXIT_OK;
	}
	fprintf(stderr, "mosaic: configure: rpm: %zu of %zu scriptlets to run\n", todo, n);
	int rc = EXIT_OK;
	for (size_t i = 0; i < n && rc == EXIT_OK; i++) {
		_cleanup_free_ char *key = done_key(&scripts[i]);
		if (is_done(done, n_done, key))
			continue;
		/* rpm stops a package's install when its %pre fails and only warns about a failing
		 * %post; here the files are in place either way, so any failure stops the run,
		 * and the next run starts again with the scriptlet that failed. */
		rc = run_script(root, &scripts[i], env, timeout);
		if (rc == EXIT_OK) {
			int r = record_done(root, &scripts[i]);
			if (r < 0) {
				fprintf(stderr, "mosaic: configure: %s/%s: %s\n", root, RPM_DONE,
				        strerror(-r));
				rc = EXIT_FAIL;
			}
		}
	}
	if (rc == EXIT_OK)
		fprintf(stderr, "mosaic: configure: rpm: %zu scriptlets ran\n", todo);
	compose_rpm_scripts_free(scripts, n);
	return rc;
}
