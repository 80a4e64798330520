/* configure/: what the module's files share and nothing outside it uses (the unit test of the
 * pure helpers aside): the back-end ops table, the run's context and events, the namespace
 * session and its step runner, the config: plan. */
#pragma once

#include "configure/configure.h"

/* ---- one run ------------------------------------------------------------------------------- */

struct config_plan;

/* What every part of one configure_root sees. Made before the session; the session's processes
 * get a copy with the fork. */
struct configure_ctx {
	const char *root;                  /* the composition as the caller sees it */
	const struct configure_options *o; /* timeout, source_date_epoch, quiet, event */
	char **env;                        /* every step's base environment; NULL-terminated */
	struct config_plan *config;        /* the manifest's config: and run: */
};

/* Sends one event (text formatted from fmt; kind other than CONFIGURE_STEP) to o->event. */
void configure_say(const struct configure_ctx *ctx, enum configure_event_kind kind,
                   const char *step, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* A step starts: done is its number (1-based) of total in its back end, or 0/0. */
void configure_step(const struct configure_ctx *ctx, const char *step, size_t done, size_t total);
/* The last max lines of a step's output (tail may be NULL) as CONFIGURE_DETAIL lines indented
 * by four spaces, or "    (none)". */
void configure_say_tail(const struct configure_ctx *ctx, const char *step, const char *tail,
                        int max);
/* The end of a failed step's report: "  last lines of its output:", its last lines, then
 * "  ADVICE" (what to do to carry on). */
void configure_say_report(const struct configure_ctx *ctx, const char *step, const char *tail,
                          const char *advice);
/* For what goes on after a failure: r and e of one more thing done; the first failure (*first
 * still 0) goes to err and *first, later ones out as CONFIGURE_ERROR events. */
void configure_keep_first(const struct configure_ctx *ctx, int r, const struct mosaic_error *e,
                          int *first, struct mosaic_error *err);
/* Lines of a failed step's output shown in its report. */
#define CONFIGURE_REPORT_LINES 12

/* ---- back ends (dpkg.c, rpm.c) ----------------------------------------------------------- */

/* One package manager's scripts. configure_root asks every back end in configure_backends
 * whether the root has its database, plans the ones that do before the session, runs them in
 * it in table order, then has each finish. */
struct configure_backend {
	const char *name; /* "dpkg", "rpm" */
	/* Services must be kept from starting (usr/sbin/policy-rc.d) while its scripts, or the
	 * run: steps after them, run: the Debian way of asking. */
	bool policy_rc_d;
	/* Whether root has this back end's database. */
	bool (*wanted)(const char *root);
	/* Before the session, in the caller's process: reads what is left to do into *state and
	 * says so (CONFIGURE_INFO); more tells whether anything else runs after it (another back
	 * end, config: or run:). Returns how many steps are left (0: nothing to run), or -errno
	 * with err filled. A *state it set is given to free, on failure too. */
	int (*plan)(const struct configure_ctx *ctx, bool more, void **state,
	            struct mosaic_error *err);
	/* In the session, not chrooted, only when plan left steps: runs them. Returns 0, or
	 * -errno with err filled (-EIO: a step failed, its report went out as events). */
	int (*run)(const struct configure_ctx *ctx, void *state, struct mosaic_error *err);
	/* After a run that succeeded and settled, in the caller's process: says what was done.
	 * May be NULL. */
	void (*finish)(const struct configure_ctx *ctx, void *state);
	void (*free)(void *state);
};

extern const struct configure_backend configure_backend_dpkg, configure_backend_rpm;

/* ---- the namespace session and its steps (chroot.c) -------------------------------------- */

/* One command run in the chroot: argv[0] is looked up in envp's PATH inside the root. */
struct chroot_step {
	const char *name;  /* its CONFIGURE_OUTPUT events' step, and its name in reports */
	char *const *argv; /* NULL-terminated */
	char *const *envp; /* NULL-terminated: the whole environment */
	unsigned timeout;  /* seconds; 0: none */
	const char *input; /* path inside the root opened as its stdin; NULL: /dev/null */
	bool quiet;        /* keep its output in the tail only: no CONFIGURE_OUTPUT events */
};

struct chroot_result {
	int status;     /* the exit code, 128 + signal if killed, 127 if it could not start */
	bool timed_out; /* it ran past its timeout and its process group was killed */
	char *tail;     /* its last lines of output (up to CHROOT_TAIL_LINES); caller frees */
};
/* Enough to find what one package's script printed in a long dpkg run. */
#define CHROOT_TAIL_LINES 2000

/* Inside a session: runs s chrooted into root in its own process group with stdin s->input (or
 * /dev/null), sends its output (stdout and stderr, line by line) as CONFIGURE_OUTPUT events
 * unless s->quiet (with o->quiet: only when it fails, once it ended), and kills the whole group
 * after s->timeout. Leftover processes of the group are killed when it ends. Returns 0 with res
 * filled, or -errno when it could not be started. */
int chroot_run_step(const struct configure_ctx *ctx, const char *root, const struct chroot_step *s,
                    struct chroot_result *res);

/* Runs fn(root, data, err) in a child process in new mount and PID namespaces (mounts private,
 * so nothing propagates to the host) with proc, sysfs (read-only), a minimal /dev (null, zero,
 * full, random, urandom, tty, ptmx + pts, shm, fd) and tmpfs /run and /tmp mounted under root.
 * Missing mount points are created in root first. Everything the child mounted or started ends
 * with it, on success and on failure; if this process dies, the child is killed too. Returns 0
 * when fn returned 0, fn's -errno with the err it filled (carried back from the child), or
 * -errno with err filled when the namespace could not be set up. */
int chroot_session(const char *root,
                   int (*fn)(const char *root, void *data, struct mosaic_error *err), void *data,
                   struct mosaic_error *err);

/* ---- config: and run: (config.c) --------------------------------------------------------- */

/* Where configure records what it has done, inside the composition. */
#define CONFIG_STATE_PATH "var/lib/mosaic/configure-state"

/* Makes the plan for manifest (a model from manifest_load; NULL or without config:/run: gives an
 * empty plan), before the session: the files' sources come from the host, which the chrooted
 * session no longer sees. Reads every files[].source. Caller frees with config_plan_free. */
int config_plan_new(json_object *manifest, struct config_plan **out, struct mosaic_error *err);
void config_plan_free(struct config_plan *p);
/* Whether the plan has config: keys or run: steps at all. */
bool config_plan_empty(const struct config_plan *p);
/* Whether some run: step has not yet completed in the composition at root (its state file). */
bool config_run_pending(const char *root, const struct config_plan *p);

/* In a chroot_session, with the process already chrooted into the composition: applies config:
 * in the documented order (users and groups, hostname, timezone, locale, files, services,
 * kernel_cmdline), running the composition's own tools with ctx's environment and timeout.
 * Reports progress as events. Returns 0, or -errno with err filled (-EIO: a tool failed). */
int config_apply(const struct configure_ctx *ctx, const struct config_plan *p,
                 struct mosaic_error *err);
/* Then: the run: steps not yet recorded as done, in order, each "/bin/sh -c COMMAND"; records
 * each completed one. A failure is reported as FILE:LINE. Returns 0, or -errno with err
 * filled. */
int config_run_steps(const struct configure_ctx *ctx, const struct config_plan *p,
                     struct mosaic_error *err);

/* ---- pure helpers (unit-tested) ----------------------------------------------------------- */

/* Field number field (0 is the name) of the line for name in a passwd-, group- or shadow-format
 * text; caller frees; NULL when there is no such line or field. */
char *config_db_field(const char *text, const char *name, unsigned field);
/* Whether user is listed in group's member field of a group-format text. */
bool config_group_has_member(const char *group_text, const char *group, const char *user);
/* Resolves an owner "user", "user:group" (names or numbers) against passwd and group texts;
 * "user" alone takes the user's primary group. Returns 0, or -ENOENT with err naming what is
 * missing. */
int config_owner_resolve(const char *owner, const char *passwd, const char *group, uid_t *uid,
                         gid_t *gid, struct mosaic_error *err);
/* /etc/hosts text with its 127.0.1.1 line naming hostname (replaced, or added after the
 * 127.0.0.1 line); hosts may be NULL for none. Caller frees. */
char *config_hosts_text(const char *hosts, const char *hostname);
/* The key that records run step i done: SHA-256 over the previous key and the command, so a
 * changed step changes its key and every later one. prev is "" for the first step. */
void config_run_key(const char *prev, const char *command, char out[SHA256_HEX_LEN + 1]);
