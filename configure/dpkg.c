/* configure/: the dpkg back end: the status file (with dpkg's journal) read and its unconfigured
 * packages ordered, then preinsts, dpkg --configure, the triggers and dpkg --audit chrooted. */
#include "common/deb822.h"
#include "configure/internal.h"

#include <dirent.h>
#include <string.h>

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

/* ---- the plan ------------------------------------------------------------------------------ */

struct dpkg_plan {
	struct pkg *pkgs;
	size_t n;
	struct pkg **order; /* the unconfigured packages, dependencies first */
	bool *preinst;      /* per order entry: its preinst runs */
	size_t n_order;
	size_t n_steps; /* preinsts + dpkg --configure, --triggers-only, --audit */
};

static bool dpkg_wanted(const char *root)
{
	_cleanup_free_ char *status = path_join(root, "var/lib/dpkg/status");
	return access(status, F_OK) == 0;
}

static void dpkg_free(void *state)
{
	struct dpkg_plan *d = state;
	free(d->order);
	free(d->preinst);
	pkgs_free(d->pkgs, d->n);
	free(d);
}

static char *info_path(const struct pkg *p, const char *what)
{
	bool same = p->multi_arch && strcmp(p->multi_arch, "same") == 0;
	if (same && p->arch)
		return xasprintf("/var/lib/dpkg/info/%s:%s.%s", p->name, p->arch, what);
	return xasprintf("/var/lib/dpkg/info/%s.%s", p->name, what);
}

static int dpkg_plan(const struct configure_ctx *ctx, bool more, void **state,
                     struct mosaic_error *err)
{
	struct dpkg_plan *d = xcalloc(1, sizeof(*d));
	*state = d;
	_cleanup_free_ char *status = path_join(ctx->root, "var/lib/dpkg/status");
	int r = read_status(status, &d->pkgs, &d->n, err);
	if (r < 0)
		return r;
	d->order = xcalloc(d->n + 1, sizeof(*d->order));
	for (size_t i = 0; i < d->n; i++)
		if (!pkg_installed(&d->pkgs[i]))
			place(d->pkgs, d->n, &d->pkgs[i], d->order, &d->n_order);
	if (d->n_order == 0) {
		configure_say(ctx, CONFIGURE_INFO, NULL, "all %zu packages are configured%s", d->n,
		              more ? "" : "; nothing to do");
		return 0;
	}
	configure_say(ctx, CONFIGURE_INFO, NULL, "%zu of %zu packages to configure in %s",
	              d->n_order, d->n, ctx->root);
	/* preinst ran for a package only when dpkg unpacked it; here nothing did. Debian policy
	 * (6.2) has maintainer scripts idempotent, so a run that carries on after a failure may
	 * run one again, as dpkg itself does when it unpacks again. */
	d->preinst = xcalloc(d->n_order + 1, sizeof(*d->preinst));
	for (size_t i = 0; i < d->n_order; i++) {
		if (strcmp(pkg_state(d->order[i]), "unpacked"))
			continue;
		_cleanup_free_ char *script = info_path(d->order[i], "preinst");
		_cleanup_free_ char *host = path_join(ctx->root, script + 1);
		d->preinst[i] = access(host, F_OK) == 0;
		d->n_steps += d->preinst[i];
	}
	d->n_steps += 3;
	return (int)d->n_steps;
}

/* ---- the run --------------------------------------------------------------------------------- */

/* The lines of out from the first that starts with "Setting up NAME " (or "NAME:") up to the
 * next package dpkg sets up: what that package's postinst printed. */
static void say_package_lines(const struct configure_ctx *ctx, const char *step, const char *out,
                              const char *name)
{
	_cleanup_free_ char *a = xasprintf("Setting up %s ", name);
	_cleanup_free_ char *b = xasprintf("Setting up %s:", name);
	bool in = false;
	int shown = 0;
	for (const char *l = out; *l && shown < CONFIGURE_REPORT_LINES;) {
		const char *nl = strchrnul(l, '\n');
		bool setup = strncmp(l, "Setting up ", 11) == 0 ||
		             strncmp(l, "Processing triggers ", 20) == 0;
		if (setup && in)
			break;
		if (strncmp(l, a, strlen(a)) == 0 || strncmp(l, b, strlen(b)) == 0)
			in = true;
		if (in) {
			configure_say(ctx, CONFIGURE_DETAIL, step, "    | %.*s", (int)(nl - l), l);
			shown++;
		}
		l = *nl ? nl + 1 : nl;
	}
}

/* Reports how a failed step ended, the packages dpkg left half-way with what their scripts
 * printed, and the step's last lines; returns -EIO with err naming the step. */
static int report_failure(const struct configure_ctx *ctx, const char *step,
                          const struct chroot_result *res, struct mosaic_error *err)
{
	_cleanup_free_ char *what =
	    res->timed_out ? xasprintf("step '%s' ran past --step-timeout %u s and was killed",
	                               step, ctx->o->timeout)
	                   : xasprintf("step '%s' failed with exit status %d", step, res->status);
	configure_say(ctx, CONFIGURE_ERROR, step, "%s", what);
	struct pkg *pkgs = NULL;
	size_t n = 0;
	if (read_database(ctx->root, &pkgs, &n, NULL) == 0) {
		for (size_t i = 0; i < n; i++) {
			const char *st = pkg_state(&pkgs[i]);
			if (strcmp(st, "half-configured") == 0)
				configure_say(ctx, CONFIGURE_DETAIL, step,
				              "  package %s: its postinst failed (half-configured)",
				              pkgs[i].name);
			else if (strcmp(st, "half-installed") == 0)
				configure_say(ctx, CONFIGURE_DETAIL, step,
				              "  package %s: half-installed", pkgs[i].name);
			else
				continue;
			say_package_lines(ctx, step, res->tail, pkgs[i].name);
		}
		pkgs_free(pkgs, n);
	}
	configure_say_report(ctx, step, res->tail,
	                     "the upper keeps what was done; fix it and run mosaic configure "
	                     "again to carry on");
	return mosaic_errorf(err, -EIO, "configure: %s", what);
}

/* quiet_ok: the step must print nothing (dpkg --audit prints nothing when the database is
 * consistent). */
static int run_step(const struct configure_ctx *ctx, const struct dpkg_plan *d, size_t *done,
                    const char *name, char *const *argv, char *const *env, bool quiet_ok,
                    struct mosaic_error *err)
{
	const struct chroot_step s = {name, argv, env, ctx->o->timeout};
	struct chroot_result res;
	configure_step(ctx, name, ++*done, d->n_steps);
	int r = chroot_run_step(ctx, ctx->root, &s, &res);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: step '%s' could not start: %s", name,
		                     strerror(-r));
	if (res.status != 0 || res.timed_out)
		r = report_failure(ctx, name, &res, err);
	else if (quiet_ok && *res.tail)
		r = mosaic_errorf(err, -EIO, "configure: '%s' reports problems (above)", name);
	free(res.tail);
	return r;
}

static void strv_push(char ***v, size_t *n, char *s)
{
	*v = xrealloc(*v, (*n + 2) * sizeof(**v));
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
}

/* dpkg's environment for a maintainer script (dpkg 1.21, src/main/script.c). */
static char **script_env(const struct configure_ctx *ctx, const struct dpkg_plan *d,
                         const struct pkg *p, const char *script)
{
	char **env = NULL;
	size_t n = 0;
	for (char **e = ctx->env; *e; e++)
		strv_push(&env, &n, xstrdup(*e));
	struct pkg *dpkg = find_pkg(d->pkgs, d->n, "dpkg", 4);
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

/* In the namespace: preinsts, configure, triggers, audit. */
static int dpkg_run(const struct configure_ctx *ctx, void *state, struct mosaic_error *err)
{
	const struct dpkg_plan *d = state;
	size_t done = 0;
	int r;
	for (size_t i = 0; i < d->n_order; i++) {
		const struct pkg *p = d->order[i];
		if (!d->preinst[i])
			continue;
		_cleanup_free_ char *script = info_path(p, "preinst");
		char *argv[] = {script, "install", NULL};
		_cleanup_strv_ char **env = script_env(ctx, d, p, "preinst");
		_cleanup_free_ char *name = xasprintf("preinst %s", p->name);
		if ((r = run_step(ctx, d, &done, name, argv, env, false, err)) < 0)
			return r;
	}
	/* Triggers are deferred so that each runs once at the end, not once per activation. */
	char *configure[] = {
	    "dpkg", "--configure", "-a", "--no-triggers", "--force-confdef", "--force-confold",
	    NULL};
	char *triggers[] = {"dpkg", "--triggers-only", "-a", NULL};
	char *audit[] = {"dpkg", "--audit", NULL};
	if ((r = run_step(ctx, d, &done, "dpkg --configure", configure, ctx->env, false, err)) <
	        0 ||
	    (r = run_step(ctx, d, &done, "dpkg --triggers-only", triggers, ctx->env, false, err)) <
	        0 ||
	    (r = run_step(ctx, d, &done, "dpkg --audit", audit, ctx->env, true, err)) < 0)
		return r;
	return 0;
}

static void dpkg_finish(const struct configure_ctx *ctx, void *state)
{
	const struct dpkg_plan *d = state;
	configure_say(ctx, CONFIGURE_INFO, NULL, "%zu packages configured", d->n_order);
}

const struct configure_backend configure_backend_dpkg = {
    .name = "dpkg",
    .policy_rc_d = true,
    .wanted = dpkg_wanted,
    .plan = dpkg_plan,
    .run = dpkg_run,
    .finish = dpkg_finish,
    .free = dpkg_free,
};
