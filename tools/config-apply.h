/* tools/: the manifest's config: section and run: steps applied to a mounted composition from
 * inside mosaic configure's chroot session, each step checked before it writes (docs/configure.md).
 */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

/* Where configure records what it has done, inside the composition. */
#define CONFIG_STATE_PATH "var/lib/mosaic/configure-state"

/* What config: and run: will do, read before the session: the files' sources come from the host,
 * which the chrooted session no longer sees. */
struct config_plan;

/* Makes the plan for manifest (a model from manifest_load; NULL or without config:/run: gives an
 * empty plan). Reads every files[].source. Caller frees with config_plan_free. */
int config_plan_new(json_object *manifest, struct config_plan **out, struct mosaic_error *err);
void config_plan_free(struct config_plan *p);
/* Whether the plan has config: keys or run: steps at all. */
bool config_plan_empty(const struct config_plan *p);
/* Whether some run: step has not yet completed in the composition at root (its state file). */
bool config_run_pending(const char *root, const struct config_plan *p);

/* In a chroot_session, with the process already chrooted into the composition: applies config:
 * in the documented order (users and groups, hostname, timezone, locale, files, services,
 * kernel_cmdline), running the composition's own tools with env and timeout seconds each.
 * Prints progress and failures to stderr. Returns EXIT_OK or EXIT_FAIL. */
int config_apply(const struct config_plan *p, char *const *env, unsigned timeout);
/* Then: the run: steps not yet recorded as done, in order, each "/bin/sh -c COMMAND"; records
 * each completed one. A failure is reported as FILE:LINE. Returns EXIT_OK or EXIT_FAIL. */
int config_run_steps(const struct config_plan *p, char *const *env, unsigned timeout);

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
