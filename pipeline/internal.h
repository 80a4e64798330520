/* pipeline/: what the steps of the build and the composition openers share inside the module:
 * the event helpers, JSON accessors for the manifest model, and the build's state. */
#pragma once

#include "pipeline/pipeline.h"
#include "providers/providers.h"

struct compose_input;

/* ---- events (events.c) -------------------------------------------------------------------- */

void pipeline_say(struct pipeline_events *ev, enum pipeline_event_kind kind, const char *step,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void pipeline_progress(struct pipeline_events *ev, const char *step, const char *item,
                       uint64_t done, uint64_t total, uint64_t bytes, uint64_t total_bytes);

/* ---- the manifest model (manifest.c) ------------------------------------------------------ */

const char *model_str(json_object *o, const char *key);
bool model_bool(json_object *o, const char *key, bool def);
json_object *model_get(json_object *o, const char *key);
/* NULL-terminated copy of an array of strings (NULL for none). */
char **model_strv(json_object *a);
/* Whether path is a composition index (its magic). */
bool pipeline_is_index(const char *path);
/* The number of CPUs online (at least 1). */
unsigned pipeline_cpus(void);

/* ---- generations (generation.c, generation-record.c) -------------------------------------- */

#define PIPELINE_HISTORY_MAX 200
/* Whether s can name a history: a letter or digit, then letters, digits and . _ + = , @ -, at
 * most PIPELINE_HISTORY_MAX; so never a path, nor hidden. */
bool pipeline_history_valid(const char *s);
/* The record's text (docs/formats.md), keys in a fixed order, ending in a newline; images, path
 * and error are not written. Caller frees. */
char *pipeline_generation_format(const struct pipeline_generation *g);

/* ---- the lock's fragments (order.c) ------------------------------------------------------- */

/* The package fragments' digests in lock order (borrowed from the lock); caller frees the
 * array. */
const char **pipeline_package_digests(const struct lock *l);
/* Where the rpm database goes in the composition, and the key it was made from. */
const char *pipeline_rpm_dbpath(const struct lock *l);
const char **pipeline_rpm_candidates(const struct lock *l, size_t *n);
void pipeline_rpm_database_key(const struct lock *l, char key[SHA256_HEX_LEN + 1]);
/* What a config fragment was made on: a key of the ordered digests under it. */
void pipeline_base_key(char *const *digests, size_t n, char hex[SHA256_HEX_LEN + 1]);
/* The fragment digests a built manifest mounts, lowest first: merged-/usr links, base, packages
 * in installation order, package databases, extra fragments, the config fragment (left out
 * when !with_config, or with a warning when it was made on other fragments). Caller frees with
 * strv_free. */
int pipeline_lock_mount_order(const struct lock *l, const char *lock_path, const char *manifest,
                              bool merged_usr, bool with_config, char ***digests, size_t *n,
                              struct pipeline_events *ev, struct mosaic_error *err);

/* The index of an ordered fragment list, built once and cached by the list's hash
 * (compose_index_cache_path) with index progress events; *index_path is its cache path. The
 * inputs' images are read as they are: the caller verifies them or trusts them. */
int pipeline_index_cached(const struct compose_input *in, size_t n, char **index_path,
                          struct pipeline_events *ev, struct mosaic_error *err);

/* The composition of the running mount at mountpoint, whatever the path looks like; its index
 * opened too when open_index. */
int pipeline_open_mount(const char *mountpoint, bool open_index, struct composition **out,
                        struct mosaic_error *err);

/* ---- mounting (mount.c) ------------------------------------------------------------------- */

/* A running writable mount's real mountpoint, upper and mode (from pipeline_open_mount);
 * -EINVAL for a read-only one, -ESRCH when its daemon is gone. */
int pipeline_writable_mount(const char *mountpoint, char **real, char **upper, char **mode,
                            struct mosaic_error *err);

/* ---- the build (build.c and a file per step) ---------------------------------------------- */

struct repos {
	struct repo *r;
	size_t n;
	enum repo_type type;
};

struct build {
	const struct pipeline_build_options *o;
	struct pipeline_events *ev;
	json_object *model;
	char *history; /* pipeline_history_name of the manifest and its facts */
	char *lock_path;
	char *sign_key;
	int64_t epoch; /* $SOURCE_DATE_EPOCH, -1 when unset */
	char *cache;
	struct provider_ctx ctx;
	struct repos rs;
	struct lock lock;
	struct store *store;
	char **package_files; /* the downloaded package of each locked package */
	unsigned generation;  /* what the generation step recorded (or found newest already) */
	bool new_generation;
};

int step_resolve(struct build *b, struct mosaic_error *err);
int step_write_lock(struct build *b, struct mosaic_error *err);
int step_download(struct build *b, struct mosaic_error *err);
/* Download progress (data: the build) as PIPELINE_PROGRESS events of the download step. */
void pipeline_download_progress(const struct download_progress *p, void *data);
int step_package_fragments(struct build *b, struct mosaic_error *err);
int step_extra_fragments(struct build *b, struct mosaic_error *err);
int step_merged_usr(struct build *b, struct mosaic_error *err);
int step_dpkg_database(struct build *b, struct mosaic_error *err);
int step_rpm_database(struct build *b, struct mosaic_error *err);
int step_configure(struct build *b, struct mosaic_error *err);
int step_record_root(struct build *b, struct mosaic_error *err);
int step_generation(struct build *b, struct mosaic_error *err);
int step_export(struct build *b, struct mosaic_error *err);

void repos_clear(struct repos *rs);

/* What a mount's state says of the composition c opened from src (source kind, path). */
json_object *pipeline_composition_info(const struct pipeline_source *src,
                                       const struct composition *c);
