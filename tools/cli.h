/* tools/: the mosaic command line. Shared helpers for the subcommand files. */
#pragma once

#include "common/common.h"
#include "fragments/fragment.h"
#include "fusefs/fusefs.h"

#include <getopt.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* Prints "mosaic: <message>" and returns the exit code that fits the error. */
int cli_fail(const struct mosaic_error *err);
int cli_usage(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For commands whose options are only on/off flags: parses --help and "--NAME" for each flag
 * (NULL-name-terminated), then checks that exactly n_operands operands follow (what names
 * them, for the error). Returns -1 to go on with the operands at argv[optind], else the exit
 * code to return. */
struct cli_flag {
	const char *name;
	bool *set;
};
int cli_flags(int argc, char **argv, const char *usage, const struct cli_flag *flags,
              int n_operands, const char *what);
/* Opens the store named by path (NULL: the default). */
int cli_open_store(const char *path, bool create, struct store **out);
int cli_open_keyring(const char *path, struct keyring **out);
/* Turns a FRAGMENT argument (image path or store reference) into an image path. */
int cli_fragment_path(const char *arg, const char *store_path, char **out);

/* Fragments named on the command line, resolved and verified, for compose and mount. */
struct compose_input;
struct cli_inputs {
	struct compose_input *in;
	size_t n;
};
int cli_resolve_inputs(char **args, size_t n, const char *store, const char *keyring,
                       struct cli_inputs *out);
void cli_inputs_free(struct cli_inputs *ci);
/* The composition index of ci (cmd-mount.c): built once per fragment list and cached; caller
 * frees *index_path. Returns an exit code. */
int cli_inputs_index(const struct cli_inputs *ci, char **index_path);
/* A prebuilt index (opened into *idx; the caller closes it, on failure too) and the images of
 * its fragments, found in the store by digest. Returns an exit code. */
struct compose_index;
int cli_index_images(const char *path, const char *store, struct compose_index **idx,
                     char ***images, size_t *n);

/* A running mosaic mount as diff, origin and export read it (cmd-mount.c): its index, its
 * fragment images in index order, its upper (NULL for a read-only mount). */
struct cli_mounted {
	json_object *state;
	struct compose_index *idx;
	char **images;
	size_t n_images;
	const char *upper; /* borrowed from state */
};
int cli_mounted_open(const char *mountpoint, struct cli_mounted *m);
void cli_mounted_clear(struct cli_mounted *m);

/* Manifests (cmd-manifest.c): a --fact KEY=VALUE (-EINVAL if malformed; a key given twice
 * becomes a list), and loading with the host's dpkg arch as the default fact; validation errors
 * are printed as FILE:LINE:COL lines (exit 2). */
int cli_fact_add(json_object *facts, const char *kv);
int cli_manifest_load(const char *path, json_object *facts, json_object **model);
/* Built manifests (cmd-build.c): the lock beside the manifest, and the fragment digests it
 * mounts, lowest first. */
char *cli_lock_path(const char *manifest, json_object *model);
int cli_manifest_fragments(const char *manifest, const char *lock_path, char ***digests, size_t *n);

/* Mounts (cmd-mount.c) the composition of args (one MANIFEST that was built, with lock or the
 * lock beside it; one INDEX; or FRAGMENTs) with the options in o (mountpoint, upper, ...;
 * a work dir beside the upper by default). Prints what it mounted unless picked is given, which
 * then receives the writable mode picked. Returns an exit code. */
int cli_mount(char **args, size_t n_args, const char *store, const char *keyring_path,
              const char *lock, struct fusefs_options *o, enum fusefs_writable *picked);
/* Commit (cmd-commit.c): freezes the upper of the running writable mount at mountpoint into a
 * fragment made with o in the store at output (created if missing); info receives it. */
int cli_commit(const char *mountpoint, const char *output, struct fragment_create_options *o,
               struct fragment_info *info);

/* Configure (cmd-configure.c): configures the packages of the running writable mosaic mount at
 * mountpoint in a chroot, then applies the manifest model's config: and run: steps (manifest
 * may be NULL: packages only). Idempotent and resumable. Returns an exit code. */
int configure_mount(const char *mountpoint, json_object *manifest, unsigned timeout);

int cmd_fragment(int argc, char **argv);
int cmd_compose(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_store(int argc, char **argv);
int cmd_manifest(int argc, char **argv);
int cmd_resolve(int argc, char **argv);
int cmd_build(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_origin(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_configure(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_boot(int argc, char **argv);
