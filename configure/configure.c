/* configure/: configure_root, the run as a list of steps: back ends picked and planned, services
 * kept from starting (policy-rc.d), the session, then what the run leaves behind settled. */
#include "configure/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

/* In the order their scripts run: a composition has one of them, but nothing stops both. */
static const struct configure_backend *const configure_backends[] = {
    &configure_backend_dpkg,
    &configure_backend_rpm,
};
#define N_BACKENDS ARRAY_SIZE(configure_backends)

/* ---- the steps' environment ------------------------------------------------------------------ */

static void strv_push(char ***v, size_t *n, char *s)
{
	*v = xrealloc(*v, (*n + 2) * sizeof(**v));
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
}

static char **base_env(const char *root, int64_t source_date_epoch)
{
	char **env = NULL;
	size_t n = 0;
	_cleanup_free_ char *cutf8 = path_join(root, "usr/lib/locale/C.utf8");
	strv_push(&env, &n,
	          xstrdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
	strv_push(&env, &n, xstrdup("HOME=/root"));
	strv_push(&env, &n, xstrdup("DEBIAN_FRONTEND=noninteractive"));
	strv_push(&env, &n, xstrdup("DEBCONF_NONINTERACTIVE_SEEN=true"));
	strv_push(&env, &n, xstrdup("DEBCONF_NOWARNINGS=yes"));
	strv_push(&env, &n, xstrdup(access(cutf8, F_OK) == 0 ? "LC_ALL=C.UTF-8" : "LC_ALL=C"));
	/* The build's date, for the tools that write one: mkinitramfs dates the initramfs's
	 * files by it, useradd and chpasswd the last password change in /etc/shadow. */
	if (source_date_epoch >= 0)
		strv_push(&env, &n,
		          xasprintf("SOURCE_DATE_EPOCH=%lld", (long long)source_date_epoch));
	return env;
}

/* ---- policy-rc.d ----------------------------------------------------------------------------- */

#define POLICY_RC_D "usr/sbin/policy-rc.d"
/* The first line tells a policy-rc.d a killed run left behind from the system's own. */
static const char policy_rc_d[] = "#!/bin/sh\n"
                                  "# mosaic configure: no service starts while it runs\n"
                                  "exit 101\n";

struct policy_file {
	char *path, *dir;
	struct stat dir_st;
	bool written;
};

static bool is_our_policy(const char *path)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	return read_file(path, 4096, &text, &len) == 0 && strcmp(text, policy_rc_d) == 0;
}

/* Where the root has no policy-rc.d, ours is written through it for the run and removed
 * afterwards: on a mosaic mount a name that only the upper holds leaves no whiteout when it
 * goes, and the directory gets its times back, so the upper ends as it was. One left by a
 * killed run (our text) is taken over. Where the system has its own, it is covered by a bind
 * mount inside the namespace instead (bind_policy), and never touched. */
static int policy_prepare(const char *root, struct policy_file *pf, bool *bind,
                          struct mosaic_error *err)
{
	pf->path = path_join(root, POLICY_RC_D);
	pf->dir = path_join(root, "usr/sbin");
	*bind = false;
	struct stat st;
	if (lstat(pf->path, &st) == 0 && !is_our_policy(pf->path)) {
		*bind = true;
		return 0;
	}
	if (stat(pf->dir, &pf->dir_st) < 0)
		return mosaic_errorf(err, -errno, "configure: %s: %m", pf->dir);
	pf->written = true;
	int r = write_file_atomic(pf->path, policy_rc_d, strlen(policy_rc_d), 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: writing %s: %s", pf->path, strerror(-r));
	return 0;
}

static int policy_remove(struct policy_file *pf, struct mosaic_error *err)
{
	int r = 0;
	if (pf->written) {
		if (unlink(pf->path) < 0 && errno != ENOENT)
			r = mosaic_errorf(err, -errno, "configure: removing %s: %m", pf->path);
		const struct timespec times[2] = {pf->dir_st.st_atim, pf->dir_st.st_mtim};
		if (utimensat(AT_FDCWD, pf->dir, times, 0) < 0 && r == 0)
			r = mosaic_errorf(err, -errno, "configure: %s: %m", pf->dir);
	}
	free(pf->path);
	free(pf->dir);
	return r;
}

/* In the namespace: covers the root's own policy-rc.d with ours, for the session only. */
static int bind_policy(const char *root, struct mosaic_error *err)
{
	_cleanup_free_ char *src = path_join(root, "run/mosaic-policy-rc.d");
	_cleanup_free_ char *dst = path_join(root, POLICY_RC_D);
	int r = write_file_atomic(src, policy_rc_d, strlen(policy_rc_d), 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: covering %s: %s", dst, strerror(-r));
	if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
		return mosaic_errorf(err, -errno, "configure: covering %s: %m", dst);
	return 0;
}

/* ---- what the run leaves behind ------------------------------------------------------------- */

/* Files the scripts leave that name this one run, not the system: every copy of the image
 * would share them. Removed, or for machine-id emptied, after every run (docs/configure.md). */
static const char *const run_identity[] = {
    /* systemd seeds the kernel's pool from it and credits it: never to be shared. */
    "var/lib/systemd/random-seed",
    /* dbus reads /etc/machine-id first; a copy here would outlive the emptied one. */
    "var/lib/dbus/machine-id",
};

/* Files that only record when the run happened (logs with times, caches keyed by inode and
 * ctime): removed in reproducible mode. */
static const char *const run_times[] = {
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/log/bootstrap.log",
    "var/cache/ldconfig/aux-cache",
};

/* Removes root/rel when it is a regular file (a symlink, e.g. dbus's machine-id pointing to
 * /etc/machine-id, stays). Through the root: on a mount, a file only the upper holds leaves no
 * trace. */
static int remove_leftover(const char *root, const char *rel, struct mosaic_error *err)
{
	_cleanup_free_ char *p = path_join(root, rel);
	struct stat st;
	if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	if (unlink(p) < 0)
		return mosaic_errorf(err, -errno, "configure: removing %s: %m", p);
	return 0;
}

/* systemd's postinst gives the image a machine ID, which every machine booted from it would
 * then share. An empty /etc/machine-id is what machine-id(5) asks of an image made once and
 * used on many machines: systemd 252 makes an ID when the system boots and mounts it over the
 * empty file when the root is read-only, or writes it into the file when it can (a missing
 * file on a read-only root stops the boot). "uninitialized" would also
 * make the boot a first boot (ConditionFirstBoot units, presets), which the configured system
 * did not ask for. A missing file (no systemd) stays missing. */
static int empty_machine_id(const char *root, struct mosaic_error *err)
{
	_cleanup_free_ char *p = path_join(root, "etc/machine-id");
	struct stat st;
	if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
		return 0;
	int r = write_file_atomic(p, "", 0, st.st_mode & 07777);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: emptying %s: %s", p, strerror(-r));
	return 0;
}

/* Every file is seen to even after one failed. */
static int settle(const struct configure_ctx *ctx, struct mosaic_error *err)
{
	struct mosaic_error e = {0};
	int first = 0;
	configure_keep_first(ctx, empty_machine_id(ctx->root, &e), &e, &first, err);
	for (size_t i = 0; i < ARRAY_SIZE(run_identity); i++)
		configure_keep_first(ctx, remove_leftover(ctx->root, run_identity[i], &e), &e,
		                     &first, err);
	for (size_t i = 0; ctx->o->source_date_epoch >= 0 && i < ARRAY_SIZE(run_times); i++)
		configure_keep_first(ctx, remove_leftover(ctx->root, run_times[i], &e), &e, &first,
		                     err);
	return first;
}

/* ---- the run -----------------------------------------------------------------------------------
 */

struct planned {
	const struct configure_backend *backend;
	bool wanted;
	void *state;
	int steps; /* what plan said is left */
};

struct session {
	const struct configure_ctx *ctx;
	struct planned *planned;
	bool bind_policy; /* the root has its own policy-rc.d: cover it in the namespace only */
};

/* The whole run in the namespace: the packages, then config: and run: chrooted. */
static int session_run(const char *root, void *data, struct mosaic_error *err)
{
	const struct session *s = data;
	int r;
	if (s->bind_policy && (r = bind_policy(root, err)) < 0)
		return r;
	for (size_t i = 0; i < N_BACKENDS; i++) {
		const struct planned *p = &s->planned[i];
		if (p->steps > 0 && (r = p->backend->run(s->ctx, p->state, err)) < 0)
			return r;
	}
	if (config_plan_empty(s->ctx->config))
		return 0;
	/* From here every path is the composition's own, so its absolute symlinks resolve inside
	 * it, as they will when it boots. This process is the session's and ends with it. */
	if (chroot(root) < 0 || chdir("/") < 0)
		return mosaic_errorf(err, -errno, "configure: chroot %s: %m", root);
	if ((r = config_apply(s->ctx, s->ctx->config, err)) < 0)
		return r;
	return config_run_steps(s->ctx, s->ctx->config, err);
}

static int configure_planned(struct configure_ctx *ctx, struct planned *planned,
                             struct mosaic_error *err)
{
	bool policy = false, steps = false;
	for (size_t i = 0; i < N_BACKENDS; i++) {
		steps |= planned[i].steps > 0;
		/* config: starts nothing (systemctl works offline in a chroot); only package
		 * scripts and run: steps might, and only then is policy-rc.d put in place, so that
		 * a run with nothing left to do does not touch the upper. */
		policy |= planned[i].wanted && planned[i].backend->policy_rc_d &&
		          (planned[i].steps > 0 || config_run_pending(ctx->root, ctx->config));
	}
	if (!steps && config_plan_empty(ctx->config))
		return 0; /* Nothing runs, so nothing in the root changes: a second run is a no-op.
		           */
	ctx->env = base_env(ctx->root, ctx->o->source_date_epoch);
	struct session s = {.ctx = ctx, .planned = planned};
	struct policy_file pf = {0};
	int r = policy ? policy_prepare(ctx->root, &pf, &s.bind_policy, err) : 0;
	if (r == 0)
		r = chroot_session(ctx->root, session_run, &s, err);
	/* Also after a failure; the first failure stays the one err names. */
	struct mosaic_error perr = {0};
	configure_keep_first(ctx, policy_remove(&pf, &perr), &perr, &r, err);
	if (r == 0)
		r = settle(ctx, err);
	for (size_t i = 0; r == 0 && i < N_BACKENDS; i++)
		if (planned[i].steps > 0 && planned[i].backend->finish)
			planned[i].backend->finish(ctx, planned[i].state);
	return r;
}

int configure_root(const char *root, json_object *manifest, const struct configure_options *o,
                   struct mosaic_error *err)
{
	static const struct configure_options defaults = {.source_date_epoch = -1};
	struct configure_ctx ctx = {.root = root, .o = o ? o : &defaults};
	struct planned planned[N_BACKENDS] = {0};
	int r = config_plan_new(manifest, &ctx.config, err);
	if (r < 0)
		return r;
	size_t n_wanted = 0;
	for (size_t i = 0; i < N_BACKENDS; i++) {
		planned[i].backend = configure_backends[i];
		planned[i].wanted = configure_backends[i]->wanted(root);
		n_wanted += planned[i].wanted;
	}
	if (n_wanted == 0)
		r = mosaic_errorf(err, -EINVAL,
		                  "%s has neither a dpkg database (var/lib/dpkg/status) nor an rpm "
		                  "database made by mosaic: configure knows Debian and RPM "
		                  "compositions only",
		                  root);
	for (size_t i = 0; r == 0 && i < N_BACKENDS; i++) {
		if (!planned[i].wanted)
			continue;
		bool more = n_wanted > 1 || !config_plan_empty(ctx.config);
		r = planned[i].backend->plan(&ctx, more, &planned[i].state, err);
		planned[i].steps = r > 0 ? r : 0;
		r = r > 0 ? 0 : r;
	}
	if (r == 0)
		r = configure_planned(&ctx, planned, err);
	for (size_t i = 0; i < N_BACKENDS; i++)
		if (planned[i].state)
			planned[i].backend->free(planned[i].state);
	strv_freev(ctx.env);
	config_plan_free(ctx.config);
	return r;
}
