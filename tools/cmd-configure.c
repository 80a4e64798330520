/* mosaic configure: turns a writable mount of unpacked packages into a configured system, the
 * way debootstrap's second stage does, with every change landing in the mount's upper layer. */
#include "common/deb822.h"
#include "fusefs/fusefs.h"
#include "tools/chroot-run.h"
#include "tools/cli.h"
#include "tools/config-apply.h"
#include "tools/configure-rpm.h"

#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

static const char usage_configure[] =
    "Usage: mosaic configure MANIFEST [MOUNTPOINT] [OPTIONS]\n"
    "       mosaic configure MOUNTPOINT [--manifest MANIFEST] [OPTIONS]\n"
    "\n"
    "Configures a writable mosaic mount in a chroot, in private mount and PID namespaces that\n"
    "carry /proc, /sys, /dev, /run and /tmp and vanish afterwards; every change lands in the\n"
    "upper. Debian packages first: each unpacked package's preinst ('install') in dependency\n"
    "order, then dpkg --configure -a with triggers deferred, the triggers once, and dpkg --audit,\n"
    "with services kept from starting (usr/sbin/policy-rc.d says 101 for the run). Then, with a\n"
    "MANIFEST, its config: (users and groups, hostname, timezone, locale, files, services,\n"
    "kernel_cmdline) and its run: steps. A second run changes nothing; a run after a failure\n"
    "carries on where that one stopped (docs/configure.md). Afterwards /etc/machine-id is\n"
    "emptied and the random seed removed, so that every copy of the system gets its own; with\n"
    "$SOURCE_DATE_EPOCH set, every step gets it and the logs that date the run are removed.\n"
    "\n"
    "A MANIFEST that 'mosaic build' built is mounted first unless MOUNTPOINT is a mosaic mount\n"
    "already (default MOUNTPOINT: roots/NAME/mnt beside its lock, upper roots/NAME/upper), and\n"
    "stays mounted afterwards.\n"
    "\n"
    "      --manifest MANIFEST  the manifest whose config: and run: apply to MOUNTPOINT\n"
    "  -s, --store STORE        mounting: the store fragments come from\n"
    "      --keyring FILE       mounting: trusted public keys\n"
    "      --lock FILE          mounting: the MANIFEST's lock (default: NAME.lock beside it)\n"
    "      --upper DIR          mounting: the upper layer (default: roots/NAME/upper)\n"
    "      --fact KEY=VALUE     a fact the manifest's layers are matched against (repeatable)\n"
    "      --role ROLE          the same as --fact role=ROLE\n"
    "      --step-timeout S     kill a step (its whole process group) after S seconds and\n"
    "                           report it (default 600; 0: no limit)\n"
    "  -h, --help               show this help\n";

#define POLICY_RC_D "usr/sbin/policy-rc.d"
/* The first line tells a policy-rc.d a killed run left behind from the system's own. */
static const char policy_rc_d[] = "#!/bin/sh\n"
                                  "# mosaic configure: no service starts while it runs\n"
                                  "exit 101\n";

/* ---- the dpkg status file ------------------------------------------------------------------ */

struct pkg {
	char *name, *arch, *multi_arch, *version, *status, *depends, *pre_depends;
	int mark; /* ordering: 0 new, 1 in progress, 2 placed */
};

static void pkg_clear(struct pkg *p)
{
	free(p->name);
	free(p->arch);
	free(p->multi_arch);
	free(p->version);
	free(p->status);
	free(p->depends);
	free(p->pre_depends);
}

static void pkgs_free(struct pkg *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		pkg_clear(&p[i]);
	free(p);
}

static char *field_dup(const struct deb822 *d, const char *name)
{
	const char *v = deb822_get(d, name);
	return v ? xstrdup(v) : NULL;
}

/* Reads the fields configure needs from every paragraph of a dpkg status file. */
static int read_status(const char *path, struct pkg **out, size_t *n_out, struct mosaic_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(path, 256 << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	struct deb822 *paras;
	size_t n;
	r = deb822_parse_all(text, len, &paras, &n, err);
	if (r < 0) {
		mosaic_error_prefix(err, "%s", path);
		return r;
	}
	struct pkg *pkgs = xcalloc(n + 1, sizeof(*pkgs));
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		/* Paragraphs without a name or status are not packages dpkg knows about. */
		if (!deb822_get(&paras[i], "Package") || !deb822_get(&paras[i], "Status"))
			continue;
		pkgs[k++] = (struct pkg){
		    .name = field_dup(&paras[i], "Package"),
		    .arch = field_dup(&paras[i], "Architecture"),
		    .multi_arch = field_dup(&paras[i], "Multi-Arch"),
		    .version = field_dup(&paras[i], "Version"),
		    .status = field_dup(&paras[i], "Status"),
		    .depends = field_dup(&paras[i], "Depends"),
		    .pre_depends = field_dup(&paras[i], "Pre-Depends"),
		};
	}
	deb822_free_all(paras, n);
	*out = pkgs;
	*n_out = k;
	return 0;
}

/* The status file with dpkg's journal (updates/NNNN, applied in order) on top: where a killed
 * dpkg left the state of the package it was working on. */
static int read_database(const char *root, struct pkg **out, size_t *n_out,
                         struct mosaic_error *err)
{
	_cleanup_free_ char *status = path_join(root, "var/lib/dpkg/status");
	int r = read_status(status, out, n_out, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *dir = path_join(root, "var/lib/dpkg/updates");
	struct dirent **names;
	int k = scandir(dir, &names, NULL, alphasort);
	for (int i = 0; i < k; i++) {
		const char *d = names[i]->d_name;
		struct pkg *up = NULL;
		size_t m = 0;
		_cleanup_free_ char *path = path_join(dir, d);
		if (strspn(d, "0123456789") == strlen(d) && read_status(path, &up, &m, NULL) == 0) {
			for (size_t j = 0; j < m; j++)
				for (size_t q = 0; q < *n_out; q++)
					if (strcmp((*out)[q].name, up[j].name) == 0) {
						free((*out)[q].status);
						(*out)[q].status = xstrdup(up[j].status);
					}
			pkgs_free(up, m);
		}
		free(names[i]);
	}
	if (k >= 0)
		free(names);
	return 0;
}

/* The state word of "want flag state". */
static const char *pkg_state(const struct pkg *p)
{
	const char *s = strrchr(p->status, ' ');
	return s ? s + 1 : p->status;
}

static bool pkg_installed(const struct pkg *p)
{
	return strcmp(pkg_state(p), "installed") == 0;
}

static struct pkg *find_pkg(struct pkg *pkgs, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(pkgs[i].name) == len && strncmp(pkgs[i].name, name, len) == 0)
			return &pkgs[i];
	return NULL;
}

static void place(struct pkg *pkgs, size_t n, struct pkg *p, struct pkg **order, size_t *k);

/* Places, before p, the first alternative of each relation in rel that is an unconfigured
 * package (dpkg's canonical form: "a (>= 1) | b:any, c"). */
static void place_relations(struct pkg *pkgs, size_t n, const char *rel, struct pkg **order,
                            size_t *k)
{
	for (const char *s = rel; s && *s;) {
		const char *comma = strchrnul(s, ',');
		for (const char *a = s; a < comma;) {
			while (a < comma && (*a == ' ' || *a == '|'))
				a++;
			size_t len = strcspn(a, " :(|,");
			if (len > (size_t)(comma - a))
				len = (size_t)(comma - a);
			struct pkg *d = len ? find_pkg(pkgs, n, a, len) : NULL;
			if (d && !pkg_installed(d)) {
				place(pkgs, n, d, order, k);
				break;
			}
			const char *bar = memchr(a, '|', (size_t)(comma - a));
			if (!bar || !len)
				break;
			a = bar + 1;
		}
		s = *comma ? comma + 1 : comma;
	}
}

/* Depth-first: dependencies first, a cycle broken where it closes, as dpkg orders too. */
static void place(struct pkg *pkgs, size_t n, struct pkg *p, struct pkg **order, size_t *k)
{
	if (p->mark)
		return;
	p->mark = 1;
	place_relations(pkgs, n, p->pre_depends, order, k);
	place_relations(pkgs, n, p->depends, order, k);
	p->mark = 2;
	order[(*k)++] = p;
}

/* ---- the run --------------------------------------------------------------------------------- */

struct plan {
	struct pkg *pkgs;
	size_t n;
	struct pkg **order; /* the unconfigured packages, dependencies first */
	size_t n_order;
	char **env; /* NULL-terminated */
	unsigned timeout;
	bool bind_policy; /* the mount has its own policy-rc.d: cover it in the namespace only */
	bool policy;      /* services must be kept from starting: dpkg or run: steps have work */
	struct config_plan *config;
};

static void strv_push(char ***v, size_t *n, char *s)
{
	*v = xrealloc(*v, (*n + 2) * sizeof(**v));
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
}

/* $SOURCE_DATE_EPOCH when it is a date (seconds since 1970), else NULL: reproducible mode. */
static const char *source_date_epoch(void)
{
	const char *e = getenv("SOURCE_DATE_EPOCH");
	return e && *e && strspn(e, "0123456789") == strlen(e) ? e : NULL;
}

static char **base_env(const char *root)
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
	const char *sde = source_date_epoch();
	if (sde)
		strv_push(&env, &n, xasprintf("SOURCE_DATE_EPOCH=%s", sde));
	return env;
}

#define REPORT_LINES 12

/* The lines of out from the first that starts with "Setting up NAME " (or "NAME:") up to the
 * next package dpkg sets up: what that package's postinst printed. */
static void print_package_lines(const char *out, const char *name)
{
	_cleanup_free_ char *a = xasprintf("Setting up %s ", name);
	_cleanup_free_ char *b = xasprintf("Setting up %s:", name);
	bool in = false;
	int shown = 0;
	for (const char *l = out; *l && shown < REPORT_LINES;) {
		const char *nl = strchrnul(l, '\n');
		bool setup = strncmp(l, "Setting up ", 11) == 0 ||
		             strncmp(l, "Processing triggers ", 20) == 0;
		if (setup && in)
			break;
		if (strncmp(l, a, strlen(a)) == 0 || strncmp(l, b, strlen(b)) == 0)
			in = true;
		if (in) {
			fprintf(stderr, "    | %.*s\n", (int)(nl - l), l);
			shown++;
		}
		l = *nl ? nl + 1 : nl;
	}
}

/* Prints how a failed step ended, the packages dpkg left half-way with what their scripts
 * printed, and the step's last lines. */
static void report_failure(const char *root, const struct plan *plan, const char *step,
                           const struct chroot_result *res)
{
	if (res->timed_out)
		fprintf(stderr,
		        "mosaic: configure: step '%s' ran past --step-timeout %u s and was "
		        "killed\n",
		        step, plan->timeout);
	else
		fprintf(stderr, "mosaic: configure: step '%s' failed with exit status %d\n", step,
		        res->status);
	struct pkg *pkgs = NULL;
	size_t n = 0;
	if (read_database(root, &pkgs, &n, NULL) == 0) {
		for (size_t i = 0; i < n; i++) {
			const char *st = pkg_state(&pkgs[i]);
			if (strcmp(st, "half-configured") == 0)
				fprintf(stderr,
				        "  package %s: its postinst failed (half-configured)\n",
				        pkgs[i].name);
			else if (strcmp(st, "half-installed") == 0)
				fprintf(stderr, "  package %s: half-installed\n", pkgs[i].name);
			else
				continue;
			print_package_lines(res->tail, pkgs[i].name);
		}
		pkgs_free(pkgs, n);
	}
	fprintf(stderr, "  last lines of its output:\n");
	chroot_print_tail(res->tail, REPORT_LINES);
	fprintf(stderr, "  the upper keeps what was done; fix it and run mosaic configure again to "
	                "carry on\n");
}

static int run_step(const char *root, const struct plan *plan, const char *name, char *const *argv,
                    char *const *env, bool quiet_ok)
{
	const struct chroot_step s = {name, argv, env, plan->timeout};
	struct chroot_result res;
	fprintf(stderr, "mosaic: configure: %s\n", name);
	int r = chroot_run_step(root, &s, &res);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: step '%s' could not start: %s\n", name,
		        strerror(-r));
		return EXIT_FAIL;
	}
	int rc = EXIT_OK;
	if (res.status != 0 || res.timed_out) {
		report_failure(root, plan, name, &res);
		rc = EXIT_FAIL;
	} else if (quiet_ok && *res.tail) {
		/* dpkg --audit prints nothing when the database is consistent. */
		fprintf(stderr, "mosaic: configure: '%s' reports problems (above)\n", name);
		rc = EXIT_FAIL;
	}
	free(res.tail);
	return rc;
}

static char *info_path(const struct pkg *p, const char *what)
{
	bool same = p->multi_arch && strcmp(p->multi_arch, "same") == 0;
	if (same && p->arch)
		return xasprintf("/var/lib/dpkg/info/%s:%s.%s", p->name, p->arch, what);
	return xasprintf("/var/lib/dpkg/info/%s.%s", p->name, what);
}

/* dpkg's environment for a maintainer script (dpkg 1.21, src/main/script.c). */
static char **script_env(const struct plan *plan, const struct pkg *p, const char *script)
{
	char **env = NULL;
	size_t n = 0;
	for (char **e = plan->env; *e; e++)
		strv_push(&env, &n, xstrdup(*e));
	struct pkg *dpkg = find_pkg(plan->pkgs, plan->n, "dpkg", 4);
	strv_push(&env, &n, xasprintf("DPKG_MAINTSCRIPT_PACKAGE=%s", p->name));
	strv_push(&env, &n, xasprintf("DPKG_MAINTSCRIPT_ARCH=%s", p->arch ? p->arch : "all"));
	strv_push(&env, &n, xasprintf("DPKG_MAINTSCRIPT_NAME=%s", script));
	strv_push(&env, &n, xstrdup("DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT=1"));
	strv_push(&env, &n,
	          xasprintf("DPKG_RUNNING_VERSION=%s", dpkg && dpkg->version ? dpkg->version : ""));
	strv_push(&env, &n, xstrdup("DPKG_ADMINDIR=/var/lib/dpkg"));
	strv_push(&env, &n, xstrdup("DPKG_ROOT="));
	/* dpkg runs a preinst from var/lib/dpkg/tmp.ci/, where debconf's frontend reads the
	 * package's name from the control file; run from info/, it finds none and records the
	 * package's questions as owned by "unknown". */
	if (strcmp(script, "preinst") == 0)
		strv_push(&env, &n, xasprintf("DEBCONF_PACKAGE=%s", p->name));
	return env;
}

/* Covers the mount's own policy-rc.d with ours, inside the namespace only. */
static int bind_policy(const char *root)
{
	_cleanup_free_ char *src = path_join(root, "run/mosaic-policy-rc.d");
	_cleanup_free_ char *dst = path_join(root, POLICY_RC_D);
	if (write_file_atomic(src, policy_rc_d, strlen(policy_rc_d), 0755) < 0 ||
	    mount(src, dst, NULL, MS_BIND, NULL) < 0) {
		fprintf(stderr, "mosaic: configure: covering %s: %s\n", dst, strerror(errno));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* In the namespace: preinsts, configure, triggers, audit. */
static int configure_debian(const char *root, void *data)
{
	struct plan *plan = data;
	for (size_t i = 0; i < plan->n_order; i++) {
		const struct pkg *p = plan->order[i];
		/* preinst ran for a package only when dpkg unpacked it; here nothing did. Debian
		 * policy (6.2) has maintainer scripts idempotent, so a run that carries on after a
		 * failure may run one again, as dpkg itself does when it unpacks again. */
		if (strcmp(pkg_state(p), "unpacked"))
			continue;
		_cleanup_free_ char *script = info_path(p, "preinst");
		_cleanup_free_ char *host = path_join(root, script + 1);
		if (access(host, F_OK) < 0)
			continue;
		char *argv[] = {script, "install", NULL};
		_cleanup_strv_ char **env = script_env(plan, p, "preinst");
		_cleanup_free_ char *name = xasprintf("preinst %s", p->name);
		if (run_step(root, plan, name, argv, env, false) != EXIT_OK)
			return EXIT_FAIL;
	}
	/* Triggers are deferred so that each runs once at the end, not once per activation. */
	char *configure[] = {
	    "dpkg", "--configure", "-a", "--no-triggers", "--force-confdef", "--force-confold",
	    NULL};
	char *triggers[] = {"dpkg", "--triggers-only", "-a", NULL};
	char *audit[] = {"dpkg", "--audit", NULL};
	if (run_step(root, plan, "dpkg --configure", configure, plan->env, false) != EXIT_OK ||
	    run_step(root, plan, "dpkg --triggers-only", triggers, plan->env, false) != EXIT_OK ||
	    run_step(root, plan, "dpkg --audit", audit, plan->env, true) != EXIT_OK)
		return EXIT_FAIL;
	return EXIT_OK;
}

/* ---- policy-rc.d in the upper ---------------------------------------------------------------- */

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

/* Where the mount has no policy-rc.d, ours is written through it for the run and removed
 * afterwards: a name that only the upper holds leaves no whiteout when it goes, and the
 * directory gets its times back, so the upper ends as it was. One left by a killed run (our
 * text) is taken over. Where the system has its own, it is covered by a bind mount inside the
 * namespace instead, and never touched. */
static int policy_prepare(const char *root, struct policy_file *pf, bool *bind)
{
	pf->path = path_join(root, POLICY_RC_D);
	pf->dir = path_join(root, "usr/sbin");
	*bind = false;
	struct stat st;
	if (lstat(pf->path, &st) == 0 && !is_our_policy(pf->path)) {
		*bind = true;
		return EXIT_OK;
	}
	if (stat(pf->dir, &pf->dir_st) < 0) {
		fprintf(stderr, "mosaic: configure: %s: %s\n", pf->dir, strerror(errno));
		return EXIT_FAIL;
	}
	pf->written = true;
	int r = write_file_atomic(pf->path, policy_rc_d, strlen(policy_rc_d), 0755);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: writing %s: %s\n", pf->path, strerror(-r));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

static int policy_remove(struct policy_file *pf)
{
	int rc = EXIT_OK;
	if (pf->written) {
		if (unlink(pf->path) < 0 && errno != ENOENT) {
			fprintf(stderr, "mosaic: configure: removing %s: %s\n", pf->path,
			        strerror(errno));
			rc = EXIT_FAIL;
		}
		const struct timespec times[2] = {pf->dir_st.st_atim, pf->dir_st.st_mtim};
		if (utimensat(AT_FDCWD, pf->dir, times, 0) < 0) {
			fprintf(stderr, "mosaic: configure: %s: %s\n", pf->dir, strerror(errno));
			rc = EXIT_FAIL;
		}
	}
	free(pf->path);
	free(pf->dir);
	return rc;
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
 * ctime): removed in reproducible mode ($SOURCE_DATE_EPOCH set). */
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
 * /etc/machine-id, stays). Through the mount: a file only the upper holds leaves no trace. */
static int remove_leftover(const char *root, const char *rel)
{
	_cleanup_free_ char *p = path_join(root, rel);
	struct stat st;
	if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode))
		return EXIT_OK;
	if (unlink(p) < 0) {
		fprintf(stderr, "mosaic: configure: removing %s: %s\n", p, strerror(errno));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* systemd's postinst gives the image a machine ID, which every machine booted from it would
 * then share. An empty /etc/machine-id is what machine-id(5) asks of an image made once and
 * used on many machines: systemd 252 makes an ID when the system boots and mounts it over the
 * empty file when the root is read-only, or writes it into the file when it can (a missing
 * file on a read-only root stops the boot). "uninitialized" would also
 * make the boot a first boot (ConditionFirstBoot units, presets), which the configured system
 * did not ask for. A missing file (no systemd) stays missing. */
static int empty_machine_id(const char *root)
{
	_cleanup_free_ char *p = path_join(root, "etc/machine-id");
	struct stat st;
	if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
		return EXIT_OK;
	int r = write_file_atomic(p, "", 0, st.st_mode & 07777);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: emptying %s: %s\n", p, strerror(-r));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

static int settle(const char *root)
{
	int rc = empty_machine_id(root);
	for (size_t i = 0; i < ARRAY_SIZE(run_identity); i++)
		if (remove_leftover(root, run_identity[i]) != EXIT_OK)
			rc = EXIT_FAIL;
	for (size_t i = 0; source_date_epoch() && i < ARRAY_SIZE(run_times); i++)
		if (remove_leftover(root, run_times[i]) != EXIT_OK)
			rc = EXIT_FAIL;
	return rc;
}

/* ---- the command ----------------------------------------------------------------------------- */

static const char *status_string(json_object *s, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(s, key, &v) && v ? json_object_get_string(v) : NULL;
}

/* The real mountpoint of a running writable mosaic mount; caller frees. */
static int writable_mount(const char *mountpoint, char **root)
{
	struct mosaic_error err = {0};
	json_object *st;
	if (fusefs_status(mountpoint, &st, &err) < 0)
		return cli_fail(&err);
	json_object *v;
	bool running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
	const char *mode = status_string(st, "mode"), *real = status_string(st, "mountpoint");
	int rc = EXIT_OK;
	if (!running) {
		fprintf(
		    stderr,
		    "mosaic: the daemon serving %s is not running; 'mosaic umount %s' and mount "
		    "it again\n",
		    mountpoint, mountpoint);
		rc = EXIT_FAIL;
	} else if (!mode || (strcmp(mode, "overlay") && strcmp(mode, "fuse"))) {
		fprintf(stderr,
		        "mosaic: %s is mounted read-only: configure writes into an upper layer "
		        "(mount it with --upper DIR)\n",
		        mountpoint);
		rc = EXIT_USAGE;
	} else {
		*root = xstrdup(real ? real : mountpoint);
	}
	json_object_put(st);
	return rc;
}

/* The whole run in the namespace: the packages, then config: and run: chrooted. */
static int configure_session(const char *root, void *data)
{
	struct plan *plan = data;
	if (plan->bind_policy && bind_policy(root) != EXIT_OK)
		return EXIT_FAIL;
	if (plan->n_order && configure_debian(root, plan) != EXIT_OK)
		return EXIT_FAIL;
	if (configure_rpm_wanted(root) && configure_rpm(root, plan->env, plan->timeout) != EXIT_OK)
		return EXIT_FAIL;
	if (config_plan_empty(plan->config))
		return EXIT_OK;
	/* From here every path is the composition's own, so its absolute symlinks resolve inside
	 * it, as they will when it boots. This process is the session's and ends with it. */
	if (chroot(root) < 0 || chdir("/") < 0) {
		fprintf(stderr, "mosaic: configure: chroot %s: %s\n", root, strerror(errno));
		return EXIT_FAIL;
	}
	if (config_apply(plan->config, plan->env, plan->timeout) != EXIT_OK)
		return EXIT_FAIL;
	return config_run_steps(plan->config, plan->env, plan->timeout);
}

static void plan_clear(struct plan *plan)
{
	strv_freev(plan->env);
	free(plan->order);
	pkgs_free(plan->pkgs, plan->n);
	config_plan_free(plan->config);
}

int configure_mount(const char *mountpoint, json_object *manifest, unsigned timeout)
{
	_cleanup_free_ char *root = NULL;
	int rc = writable_mount(mountpoint, &root);
	if (rc != EXIT_OK)
		return rc;
	struct mosaic_error err = {0};
	struct plan plan = {.timeout = timeout};
	if (config_plan_new(manifest, &plan.config, &err) < 0)
		return cli_fail(&err);
	_cleanup_free_ char *status = path_join(root, "var/lib/dpkg/status");
	bool dpkg = access(status, F_OK) == 0, rpm = configure_rpm_wanted(root);
	if (!dpkg && !rpm) {
		fprintf(
		    stderr,
		    "mosaic: %s has neither a dpkg database (var/lib/dpkg/status) nor an rpm "
		    "database made by mosaic: configure knows Debian and RPM compositions only\n",
		    mountpoint);
		plan_clear(&plan);
		return EXIT_USAGE;
	}
	if (dpkg && read_status(status, &plan.pkgs, &plan.n, &err) < 0) {
		plan_clear(&plan);
		return cli_fail(&err);
	}
	plan.order = xcalloc(plan.n + 1, sizeof(*plan.order));
	for (size_t i = 0; i < plan.n; i++)
		if (!pkg_installed(&plan.pkgs[i]))
			place(plan.pkgs, plan.n, &plan.pkgs[i], plan.order, &plan.n_order);
	bool more = rpm || !config_plan_empty(plan.config);
	if (dpkg && plan.n_order == 0)
		fprintf(stderr, "mosaic: configure: all %zu packages are configured%s\n", plan.n,
		        more ? "" : "; nothing to do");
	if (plan.n_order == 0 && !more) {
		/* Nothing runs, so nothing in the upper changes: a second run is a no-op. */
		plan_clear(&plan);
		return EXIT_OK;
	}
	if (plan.n_order)
		fprintf(stderr, "mosaic: configure: %zu of %zu packages to configure in %s\n",
		        plan.n_order, plan.n, root);
	plan.env = base_env(root);
	/* config: starts nothing (systemctl works offline in a chroot); only package scripts and
	 * run: steps might, and only then is policy-rc.d put in place, so that a run with nothing
	 * left to do does not touch the upper. */
	plan.policy = dpkg && (plan.n_order > 0 || config_run_pending(root, plan.config));
	struct policy_file pf = {0};
	if (plan.policy)
		rc = policy_prepare(root, &pf, &plan.bind_policy);
	if (rc == EXIT_OK) {
		int r = chroot_session(root, configure_session, &plan, &err);
		rc = r < 0 ? cli_fail(&err) : r;
	}
	int prc = policy_remove(&pf);
	if (rc == EXIT_OK)
		rc = prc;
	if (rc == EXIT_OK)
		rc = settle(root);
	if (rc == EXIT_OK && plan.n_order)
		fprintf(stderr, "mosaic: configure: %zu packages configured\n", plan.n_order);
	plan_clear(&plan);
	return rc;
}

/* Mounts manifest's composition at mnt with upper, as 'mosaic mount MANIFEST MNT --upper DIR'. */
static int mount_manifest(const char *manifest, const char *mnt, const char *upper,
                          const char *store, const char *keyring, const char *lock)
{
	_cleanup_free_ char *up = xstrdup(upper);
	int r = mkdir_p(mnt, 0755);
	if (r == 0)
		r = mkdir_p(dirname(up), 0755);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: making %s: %s\n", mnt, strerror(-r));
		return EXIT_FAIL;
	}
	struct fusefs_options fo = {
	    .mountpoint = mnt, .upper = upper, .writable = FUSEFS_WRITABLE_AUTO};
	char *args[] = {(char *)manifest};
	return cli_mount(args, 1, store, keyring, lock, &fo, NULL);
}

static bool is_manifest(const char *path)
{
	size_t l = strlen(path);
	return (l > 5 && strcmp(path + l - 5, ".yaml") == 0) ||
	       (l > 4 && strcmp(path + l - 4, ".yml") == 0);
}

static bool mosaic_mounted(const char *mountpoint)
{
	json_object *st;
	if (fusefs_status(mountpoint, &st, NULL) < 0)
		return false;
	json_object_put(st);
	return true;
}

struct configure_opts {
	const char *manifest, *mountpoint, *store, *keyring, *lock, *upper;
	json_object *facts;
	unsigned timeout;
};

static int configure_manifest(struct configure_opts *o)
{
	json_object *model = NULL;
	int rc = cli_manifest_load(o->manifest, o->facts, &model);
	if (rc)
		return rc;
	_cleanup_free_ char *lock = o->lock ? xstrdup(o->lock) : cli_lock_path(o->manifest, model);
	_cleanup_free_ char *lock_dir = xstrdup(lock);
	_cleanup_free_ char *abs_dir = realpath(dirname(lock_dir), NULL);
	/* Beside the lock, under the manifest's name: a mount of its own per manifest. */
	_cleanup_free_ char *base =
	    xasprintf("%s/roots/%s", abs_dir ? abs_dir : lock_dir,
	              json_object_get_string(json_object_object_get(model, "name")));
	_cleanup_free_ char *mnt = o->mountpoint ? xstrdup(o->mountpoint) : path_join(base, "mnt");
	_cleanup_free_ char *upper = o->upper ? xstrdup(o->upper) : path_join(base, "upper");
	bool mounted_here = false;
	if (!mosaic_mounted(mnt)) {
		rc = mount_manifest(o->manifest, mnt, upper, o->store, o->keyring, o->lock);
		mounted_here = rc == EXIT_OK;
	} else if (o->upper) {
		rc = cli_usage(usage_configure,
		               "%s is mounted already: --upper is for a mount that "
		               "configure makes",
		               mnt);
	}
	if (rc == EXIT_OK)
		rc = configure_mount(mnt, model, o->timeout);
	if (mounted_here)
		fprintf(stderr,
		        "mosaic: configure: %s stays mounted (upper %s); 'mosaic umount %s' when "
		        "done\n",
		        mnt, upper, mnt);
	json_object_put(model);
	return rc;
}

enum {
	OPT_STEP_TIMEOUT = 256,
	OPT_MANIFEST,
	OPT_KEYRING,
	OPT_LOCK,
	OPT_UPPER,
	OPT_FACT,
	OPT_ROLE,
};

int cmd_configure(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
	    {"manifest", required_argument, NULL, OPT_MANIFEST},
	    {"store", required_argument, NULL, 's'},
	    {"keyring", required_argument, NULL, OPT_KEYRING},
	    {"lock", required_argument, NULL, OPT_LOCK},
	    {"upper", required_argument, NULL, OPT_UPPER},
	    {"fact", required_argument, NULL, OPT_FACT},
	    {"role", required_argument, NULL, OPT_ROLE},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	struct configure_opts o = {.timeout = 600, .facts = json_object_new_object()};
	int c, r = -1;
	char *end;
	while (r < 0 && (c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_STEP_TIMEOUT: {
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 10);
			if (!*optarg || *end || errno || v > 7 * 24 * 3600 || optarg[0] == '-')
				r = cli_usage(usage_configure, "bad --step-timeout '%s'", optarg);
			o.timeout = (unsigned)v;
			break;
		}
		case OPT_MANIFEST:
			o.manifest = optarg;
			break;
		case 's':
			o.store = optarg;
			break;
		case OPT_KEYRING:
			o.keyring = optarg;
			break;
		case OPT_LOCK:
			o.lock = optarg;
			break;
		case OPT_UPPER:
			o.upper = optarg;
			break;
		case OPT_FACT:
			if (cli_fact_add(o.facts, optarg) < 0)
				r = cli_usage(usage_configure, "--fact takes KEY=VALUE, not '%s'",
				              optarg);
			break;
		case OPT_ROLE: {
			_cleanup_free_ char *kv = xasprintf("role=%s", optarg);
			cli_fact_add(o.facts, kv);
			break;
		}
		case 'h':
			fputs(usage_configure, stdout);
			r = EXIT_OK;
			break;
		default:
			r = cli_usage(usage_configure, "unknown option '%s'", argv[optind - 1]);
		}
	}
	int n = argc - optind;
	char **ops = argv + optind;
	if (r < 0 && (n < 1 || n > 2))
		r = cli_usage(usage_configure, "give MANIFEST [MOUNTPOINT], or MOUNTPOINT");
	if (r < 0 && is_manifest(ops[0])) {
		if (o.manifest)
			r = cli_usage(usage_configure,
			              "give the manifest once: as the first operand "
			              "or with --manifest");
		o.manifest = ops[0];
		o.mountpoint = n == 2 ? ops[1] : NULL;
	} else if (r < 0) {
		if (n == 2)
			r = cli_usage(usage_configure,
			              "'%s' is not a manifest (NAME.yaml): give "
			              "MANIFEST [MOUNTPOINT], or MOUNTPOINT",
			              ops[0]);
		o.mountpoint = ops[0];
	}
	if (r < 0 && !o.manifest && (o.store || o.keyring || o.lock || o.upper))
		r = cli_usage(usage_configure, "--store, --keyring, --lock and --upper are for "
		                               "mounting a MANIFEST");
	if (r < 0)
		r = o.manifest ? configure_manifest(&o)
		               : configure_mount(o.mountpoint, NULL, o.timeout);
	json_object_put(o.facts);
	return r;
}
