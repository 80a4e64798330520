/* pipeline/: a manifest's whole build as a list of named steps (resolve, download, fragments,
 * databases, configure, lock, generation, export targets), the generations it records, and the
 * one place that opens "a composition" (a MANIFEST or one of its generations, an INDEX,
 * FRAGMENTs or a MOUNTPOINT) for mount, export, configure, diff and commit.
 * Never prints: progress and what each step did reach the caller as events. */
#pragma once

#include "common/common.h"
#include "configure/configure.h"
#include "export/export.h"
#include "fragments/fragment.h"
#include "fusefs/fusefs.h"

#include <json-c/json.h>

struct compose_diff_entry;
struct compose_index;
struct compose_result;

/* ---- progress (events.c) ------------------------------------------------------------------ */

enum pipeline_event_kind {
	PIPELINE_STEP,      /* a named step begins (step) */
	PIPELINE_PROGRESS,  /* a step's work so far: done of total items, bytes of total_bytes (0:
	                     * unknown); item names the last one done */
	PIPELINE_INFO,      /* a line saying what a step did (text) */
	PIPELINE_WARNING,   /* something went wrong that did not stop the work (text) */
	PIPELINE_CONFIGURE, /* an event of configure's (configure) */
};

struct pipeline_event {
	enum pipeline_event_kind kind;
	const char *step;
	const char *text;
	const char *item;
	uint64_t done, total, bytes, total_bytes;
	const struct configure_event *configure;
};

/* Where events go; fn may be NULL (nothing is reported). Everything is borrowed for the call. */
struct pipeline_events {
	void (*fn)(const struct pipeline_event *ev, void *data);
	void *data;
};

/* ---- manifests (manifest.c) --------------------------------------------------------------- */

/* Adds a --fact KEY=VALUE to facts (a key given twice becomes a list); -EINVAL if malformed. */
int pipeline_fact_add(json_object *facts, const char *kv);
/* Loads a manifest with facts (may be NULL), this host's dpkg architecture being the default
 * "arch" fact. An invalid manifest is -EINVAL with err->located set: one FILE:LINE:COL line per
 * problem. Caller puts *model. */
int pipeline_manifest_load(const char *path, json_object *facts, json_object **model,
                           struct mosaic_error *err);
/* HISTORY.lock beside the manifest (pipeline_history_name: NAME.lock without facts). Caller
 * frees. */
char *pipeline_lock_path(const char *manifest, json_object *model, json_object *facts);
/* Whether path names a manifest (NAME.yaml or NAME.yml). */
bool pipeline_is_manifest(const char *path);
/* ---- a composition (composition.c) -------------------------------------------------------- */

/* A FRAGMENT argument (an image path, or a digest, digest prefix or ref in the store, NULL: the
 * default store) as an image path. Caller frees *out. */
int pipeline_fragment_path(const char *arg, const char *store, char **out,
                           struct mosaic_error *err);

enum pipeline_source_kind {
	PIPELINE_FROM_MANIFEST,  /* a manifest 'mosaic build' built: the fragments its lock names,
	                          * or those of one of its generations */
	PIPELINE_FROM_INDEX,     /* a prebuilt index: its fragments found in the store by digest */
	PIPELINE_FROM_FRAGMENTS, /* refs, digests or .sqfs paths, lowest first, verified */
	PIPELINE_FROM_MOUNT,     /* a running mosaic mount: its index, fragments and upper */
};

struct pipeline_source {
	char *const *args; /* one MANIFEST, INDEX or MOUNTPOINT, or FRAGMENTs */
	size_t n_args;
	const char *store, *keyring; /* NULL: the defaults */
	const char *lock;            /* a MANIFEST's lock; NULL: NAME.lock beside it */
	json_object *facts;          /* a MANIFEST's facts; may be NULL */
	unsigned generation;         /* a MANIFEST: 0 its lock, N generation N of its history
	                              * (pipeline_history_name of it and facts) */
	bool mountpoints;            /* a directory is a running mount (else it is no source) */
	bool open_index;             /* open (and checksum) the index too: idx is NULL without */
};

struct composition {
	enum pipeline_source_kind kind;
	char *index_path;
	struct compose_index *idx; /* with src->open_index (an INDEX source always has it) */
	char **images;             /* image path of each index fragment, in index order */
	size_t n_images;
	bool verified; /* every image was verified on the way (else the reader must) */
	char *upper;   /* a mount's upper, NULL for a read-only one or another source */
	/* a mount: its real mountpoint, mode (fusefs_writable_name) and whether its daemon runs */
	char *mountpoint, *mode;
	bool running;
	/* a manifest: its model and lock (for a generation, the lock only while it is still the
	 * one that generation was built with, else NULL) */
	json_object *model;
	char *lock_path;
};

/* Opens the composition src names: the index (built once per fragment list and cached), the
 * image of each fragment and, for a mount, its upper. Caller frees with composition_free. */
int pipeline_open(const struct pipeline_source *src, struct composition **out,
                  struct pipeline_events *ev, struct mosaic_error *err);
void composition_free(struct composition *c);
/* Builds the composition index of src's FRAGMENTs (each verified) at out_path, or, with
 * out_path NULL, in a scratch file removed afterwards (for res's conflicts only); *names
 * receives each fragment's name in order (NULL-terminated; caller frees with strv_freev). */
int pipeline_compose(const struct pipeline_source *src, const char *out_path, bool strict,
                     struct compose_result *res, char ***names, struct mosaic_error *err);

/* ---- what the commands do with a composition ---------------------------------------------- */

struct pipeline_mount_result {
	enum fusefs_writable picked;
	size_t n_fragments;
	char *fallback; /* why kernel overlayfs was refused (fuse mode), or NULL; caller frees */
};
/* Mounts src's composition with o (its index and images filled in here; a work dir beside the
 * upper by default) and returns once the mount is usable (mount.c). */
int pipeline_mount(const struct pipeline_source *src, const struct fusefs_options *o,
                   struct pipeline_mount_result *res, struct pipeline_events *ev,
                   struct mosaic_error *err);

/* The daemon's state at mountpoint (fusefs_status) with the upper's size: upper_size (bytes
 * allocated, hard links once) and upper_entries. Caller puts *out. */
int pipeline_status(const char *mountpoint, json_object **out, struct mosaic_error *err);

/* Exports src's composition (an upper given here goes over an INDEX or FRAGMENTs) as o says;
 * for a MANIFEST, o's lock and kernel_cmdline default to its lock and config.kernel_cmdline
 * (export.c). */
int pipeline_export(const struct pipeline_source *src, const char *upper,
                    const struct export_options *o, struct export_tar_result *res,
                    struct pipeline_events *ev, struct mosaic_error *err);

struct pipeline_configure_options {
	const char *manifest;   /* its config: and run: apply; NULL: packages only */
	const char *mountpoint; /* a running writable mount; NULL: the MANIFEST's own (below) */
	const char *store, *keyring, *lock, *upper; /* mounting a MANIFEST that is not mounted */
	json_object *facts;
	struct configure_options configure; /* event/data are filled in from ev */
};
struct pipeline_configure_result {
	char *mountpoint, *upper; /* where it ran */
	bool mounted;             /* the MANIFEST was mounted for it, and stays mounted */
};
/* Configures a running writable mount, or a built MANIFEST's own mount (mounted first, at
 * roots/NAME/mnt with the upper roots/NAME/upper beside its lock, unless mounted already)
 * (configure.c). */
int pipeline_configure(const struct pipeline_configure_options *o,
                       struct pipeline_configure_result *res, struct pipeline_events *ev,
                       struct mosaic_error *err);
void pipeline_configure_result_clear(struct pipeline_configure_result *res);

struct pipeline_commit_result {
	struct fragment_info info;
	char *mountpoint, *upper, *mode;
};
/* Freezes the upper of the running writable mount at mountpoint into a fragment made with o in
 * the store at store (created if missing) (commit.c). */
int pipeline_commit(const char *mountpoint, const char *store,
                    const struct fragment_create_options *o, struct pipeline_commit_result *res,
                    struct mosaic_error *err);
void pipeline_commit_result_clear(struct pipeline_commit_result *res);

/* What the upper of the mount at mountpoint adds, modifies and deletes (all: also unchanged
 * copies); *read_only when the mount has no upper (inspect.c). */
int pipeline_diff(const char *mountpoint, bool all, struct compose_diff_entry **out, size_t *n,
                  bool *read_only, struct mosaic_error *err);
struct pipeline_origin {
	char *path;            /* the path as the view has it */
	mode_t type;           /* its type bits */
	int change;            /* enum compose_change: what the upper did to it */
	unsigned what;         /* COMPOSE_DIFF_* bits, for a modified one */
	json_object *fragment; /* the providing fragment's name, version, arch, kind, digest, index
	                        * and image; NULL for none */
	json_object *package;  /* the package's own name for a package fragment, else NULL */
	uint32_t layer;        /* the fragment's index, lowest 0 */
	size_t n_fragments;
	bool has_upper;
};
/* Where path in the mount at mountpoint comes from (inspect.c). */
int pipeline_origin(const char *mountpoint, const char *path, struct pipeline_origin *out,
                    struct mosaic_error *err);
void pipeline_origin_clear(struct pipeline_origin *o);

/* ---- switching a running mount (switch.c) ------------------------------------------------- */

struct pipeline_switch_options {
	const char *mountpoint;
	/* What to switch to: target (a MANIFEST, INDEX or FRAGMENTs); else, with rollback, what
	 * was served before the last switch not rolled back; else the served fragments edited:
	 * remove (fragment names), replace (NAME=FRAGMENT) and add (FRAGMENTs, on top). */
	const struct pipeline_source *target;
	bool rollback;
	char *const *remove, *const *replace, *const *add;
	size_t n_remove, n_replace, n_add;
	const char *store, *keyring; /* for the edits' FRAGMENTs; NULL: the defaults */
	/* A health check: sh -c check in a chroot of the view (on the host with check_on_host),
	 * $MOSAIC_MOUNT set; if it fails or runs longer than check_timeout seconds (0: no limit),
	 * the mount is switched back. */
	const char *check;
	bool check_on_host;
	double check_timeout;
};
struct pipeline_switch_result {
	struct fusefs_switch_result sw;
	size_t n_fragments;
	json_object *served; /* what the switch said of the new composition */
	char *check_failed;  /* why the check failed, when it did (the mount was switched back) */
	bool rolled_back;
};
void pipeline_switch_result_clear(struct pipeline_switch_result *res);
/* Switches the running mount o->mountpoint as o says; -ECANCELED when the check failed and the
 * mount serves the old composition again. */
int pipeline_switch(const struct pipeline_switch_options *o, struct pipeline_switch_result *res,
                    struct pipeline_events *ev, struct mosaic_error *err);

/* ---- generations (generation.c) ---------------------------------------------------------- */

/* Every build records a generation of its manifest's history in the store, as
 * <store>/generations/<HISTORY>/<N>.json (docs/formats.md), N from 1, unless it equals the
 * newest one; each keeps its fragments from gc through roots/generation-<HISTORY>-<N>. */
#define PIPELINE_GENERATION_VERSION 1

struct pipeline_generation {
	unsigned number;
	int64_t time; /* when the build recorded it: seconds since the epoch (wall clock) */
	char *history, *manifest, *manifest_digest, *lock_digest, *index_digest;
	char *index_path; /* the index in the builder's cache (rebuilt by pipeline_open if gone) */
	json_object *facts; /* the facts the build was given, role included; {} for none */
	/* The fragments, lowest first, exactly the list the index is built from: digest (64 hex),
	 * name and kind (base, package, config, dev) of each, NULL-terminated; version, arch and
	 * source (the descriptor's source type: deb, rpm, tar, dir, upper) n_fragments long, an
	 * entry NULL when the fragment has none. */
	char **digests, **names, **kinds, **versions, **archs, **sources;
	size_t n_fragments;
	char **images; /* each fragment's <store>/sha256/<hh>/<hex>.sqfs, NULL-terminated (get and
	                * list; the parser leaves it NULL) */
	char *path;    /* the record's file (get and list) */
	char *error;   /* list only: why the record at path could not be read (number and path are
	                * the only other fields set) */
};
void pipeline_generation_clear(struct pipeline_generation *g);
/* Parses a record's bytes: untrusted, a store may be shared. Refuses another version, missing
 * or mistyped fields, digests that are not 64 hex, control characters, an invalid history name,
 * unknown kinds, trailing bytes and more than 16 MiB (-EBADMSG, -EFBIG). */
int pipeline_generation_parse(const char *text, size_t len, struct pipeline_generation *out,
                              struct mosaic_error *err);

/* The history a manifest's builds are recorded under, and the name of its lock: the manifest's
 * name without facts; with facts (as given, role included) NAME@KEY=VALUE,KEY=V1+V2 (keys and
 * a key's values sorted), or NAME@ and 16 hex digits of the facts' SHA-256 when a fact holds
 * anything but letters, digits, '.', '_' and '-', or the name would pass 128 characters.
 * Caller frees. */
char *pipeline_history_name(const char *manifest, json_object *model, json_object *facts);
/* arg as a history: a MANIFEST (loaded with facts) names its own, anything else must be a
 * history name (-EINVAL if it cannot be one). Caller frees *history. */
int pipeline_history_find(const char *arg, json_object *facts, char **history,
                          struct mosaic_error *err);

/* The records of history in store (NULL: the default store), oldest first, images filled in;
 * a record that cannot be read is listed with error set. -ENOENT when the history has none.
 * Caller frees with pipeline_generations_free. */
int pipeline_generations_list(const char *store, const char *history,
                              struct pipeline_generation **out, size_t *n,
                              struct mosaic_error *err);
void pipeline_generations_free(struct pipeline_generation *v, size_t n);
/* Generation number of history (0: the newest), with the image path of each fragment in the
 * store, in index order, so that a caller can mount or switch to it without the lock. The
 * images are not verified here: a caller verifies them (pipeline_open does) or lets the
 * daemon verify each on first read. -ENOENT for an unknown history or number, -EBADMSG for a
 * record that cannot be read (err names its file). Caller frees with
 * pipeline_generation_clear. */
int pipeline_generation_get(const char *store, const char *history, unsigned number,
                            struct pipeline_generation *out, struct mosaic_error *err);

enum pipeline_generation_change_kind {
	PIPELINE_GENERATION_ADDED,
	PIPELINE_GENERATION_REMOVED,
	PIPELINE_GENERATION_UPGRADED,
	PIPELINE_GENERATION_DOWNGRADED,
	PIPELINE_GENERATION_CHANGED, /* the same name (and version) with another fragment */
};
struct pipeline_generation_change {
	enum pipeline_generation_change_kind kind;
	bool package;                    /* a package fragment (else base, config or dev) */
	char *name, *arch;               /* arch may be NULL */
	char *old_version, *new_version; /* NULL when there is none (or nothing on that side) */
	char *old_digest, *new_digest;   /* NULL on the side that has none */
};
/* What changed from generation a to generation b of history: packages (by name and arch)
 * added, removed, upgraded, downgraded (libsolv's Debian or RPM version rule, by the
 * fragment's source) or rebuilt, and the other fragments (by name) added, removed or changed;
 * packages first, each group sorted by name. Caller frees with
 * pipeline_generation_changes_free. */
int pipeline_generations_diff(const char *store, const char *history, unsigned a, unsigned b,
                              struct pipeline_generation_change **out, size_t *n,
                              struct mosaic_error *err);
void pipeline_generation_changes_free(struct pipeline_generation_change *v, size_t n);
/* Removes all but the keep (at least 1) newest records of history, and their gc roots, under
 * the history's lock; *removed receives the numbers removed, oldest first (caller frees). The
 * fragments themselves go at the next store gc, when no other root keeps them. */
int pipeline_generations_gc(const char *store, const char *history, unsigned keep,
                            unsigned **removed, size_t *n_removed, struct mosaic_error *err);

/* ---- the build (build.c, one file per step) ----------------------------------------------- */

struct pipeline_build_options {
	const char *manifest;
	const char *lock_path; /* NULL: NAME.lock beside the manifest */
	const char *store, *sign_key, *keyring;
	json_object *facts;
	bool locked, offline, recommends;
	bool configure, export; /* the last steps; build only */
	unsigned step_timeout;  /* configure's, seconds; 0: none */
	unsigned jobs;          /* fragments made at once; 0: the number of CPUs */
	unsigned downloads;     /* parallel downloads; 0: the default */
	bool progress;          /* report download progress (PIPELINE_PROGRESS) */
};

struct pipeline_build_result {
	char *lock_path, *store;
	size_t n_packages, n_fragments;
	char *history;       /* the history the build was recorded in */
	unsigned generation; /* its generation: a new one, or the newest when nothing changed */
	bool new_generation;
};
void pipeline_build_result_clear(struct pipeline_build_result *res);

/* Resolves the manifest's packages into its lock (or, locked, checks that the lock still
 * matches the manifest and the repositories). */
int pipeline_resolve(const struct pipeline_build_options *o, struct pipeline_build_result *res,
                     struct pipeline_events *ev, struct mosaic_error *err);
/* resolve, then download, verify, make a signed fragment of each package, the package
 * databases, configure and commit a config fragment, write the lock, record the build as a
 * generation of its history (unless it equals the newest) and as a gc root, and make the
 * manifest's export: targets. Incremental: nothing is made twice. */
int pipeline_build(const struct pipeline_build_options *o, struct pipeline_build_result *res,
                   struct pipeline_events *ev, struct mosaic_error *err);
