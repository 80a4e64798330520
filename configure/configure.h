/* configure/: configures the root of a composition in a private namespace chroot, the way
 * debootstrap's second stage does: the packages' own scripts (dpkg and rpm back ends behind one
 * ops table), then a manifest's config: keys and run: steps. Knows nothing of how the root was
 * mounted; everything it changes lands where the root's writes go. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

/* What configure reports while it runs. Everything is borrowed for the call. The callback may
 * be called from a child process (the namespace session), so it must only print. */
enum configure_event_kind {
	CONFIGURE_STEP,   /* a step starts: step is its name ("preinst dash", "dpkg --configure",
	                   * "%post bash-5.2-1.x86_64", "run step 2 of 3: NAME"); it is step
	                   * done of total of its back end (1-based) when known, else 0/0. The
	                   * composition's tools that config: runs (useradd, systemctl) are not
	                   * announced; their output comes as CONFIGURE_OUTPUT all the same */
	CONFIGURE_OUTPUT, /* one line a step printed (text, without the newline; an overlong line
	                   * comes in pieces of 4 KiB); step is the name the line goes with
	                   * ("dpkg --configure", "useradd alice", a run: step's name) */
	CONFIGURE_INFO,   /* a line for the user: what was done ("user alice added") */
	CONFIGURE_ERROR,  /* a line saying what failed and where; a failed step's report starts
	                   * with one, and err of the call names the same step */
	CONFIGURE_DETAIL, /* a line of a failure report, already indented ("  package x: ...") */
};

struct configure_event {
	enum configure_event_kind kind;
	const char *step; /* the step it belongs to, or NULL */
	const char *text; /* NULL for CONFIGURE_STEP */
	size_t done, total;
};

struct configure_options {
	unsigned timeout; /* seconds per step, its whole process group killed after; 0: none */
	int64_t source_date_epoch; /* >= 0: reproducible mode (steps get it, logs that date the
	                            * run are removed); < 0: not */
	bool quiet;                /* no CONFIGURE_OUTPUT events for steps that succeed */
	void (*event)(const struct configure_event *ev, void *data); /* may be NULL */
	void *data;
};

/* Configures the composition whose root is root (a writable directory: a mosaic mount with an
 * upper, or any unpacked tree): the packages' scripts in dependency order, then manifest's
 * config: and run: (manifest may be NULL: packages only). o may be NULL: no timeout, not
 * reproducible, no events. Idempotent and resumable: a second run changes nothing, a run after
 * a failure carries on where it stopped. Returns 0, -EINVAL when root has neither a dpkg nor
 * an rpm database, -EIO when a step failed (its report went out as events; err says which
 * step), or another -errno with err saying what could not be done (a config: source, a
 * user's missing group, the namespace). */
int configure_root(const char *root, json_object *manifest, const struct configure_options *o,
                   struct mosaic_error *err);

/* What a config fragment made by configure_root is a function of: the ordered digests of the
 * fragments under it, manifest's config: (with the content of each file given by source:) and
 * run: (without their positions), configure's own version, and source_date_epoch when >= 0.
 * Returns 0, or -errno when a config: source cannot be read. */
int configure_key(json_object *manifest, char *const *digests, size_t n, int64_t source_date_epoch,
                  char hex[SHA256_HEX_LEN + 1], struct mosaic_error *err);
