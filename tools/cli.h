/* tools/: what the command files share: exit codes, usage errors, the options that name a
 * composition, and the one printer of the libraries' progress events. */
#pragma once

#include "common/common.h"
#include "pipeline/pipeline.h"

#include <getopt.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* Prints "mosaic: <message>" (a manifest's FILE:LINE:COL lines as they are) and returns the
 * exit code that fits the error: 2 for -EINVAL, else 1. */
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

/* Opens the store named by path (NULL: the default), the keyring (NULL: the default); turns a
 * FRAGMENT argument (image path or store reference) into an image path. Return exit codes. */
int cli_open_store(const char *path, bool create, struct store **out);
int cli_open_keyring(const char *path, struct keyring **out);
int cli_fragment_path(const char *arg, const char *store_path, char **out);

/* The options of every command that opens a composition or a manifest: -s/--store, --keyring,
 * --lock, --fact KEY=VALUE and --role ROLE. */
enum { CLI_OPT_KEYRING = 1000, CLI_OPT_LOCK, CLI_OPT_FACT, CLI_OPT_ROLE, CLI_OPT_GENERATION };
/* A list of initializers, which the formatter would brace as one. */
/* clang-format off */
#define CLI_SOURCE_OPTIONS                                                                         \
	{"store", required_argument, NULL, 's'},                                                   \
	{"keyring", required_argument, NULL, CLI_OPT_KEYRING},                                     \
	{"lock", required_argument, NULL, CLI_OPT_LOCK},                                           \
	{"fact", required_argument, NULL, CLI_OPT_FACT},                                           \
	{"role", required_argument, NULL, CLI_OPT_ROLE}
/* clang-format on */
/* --generation N: for the commands that open a MANIFEST's composition, one of its history's
 * generations instead of its lock (cli_source_option takes it into src->generation). */
/* clang-format off */
#define CLI_GENERATION_OPTION {"generation", required_argument, NULL, CLI_OPT_GENERATION}
/* clang-format on */
/* Takes getopt's c into src when it is one of those (or --generation): returns 1 when taken, 0
 * when c is another option, or the exit code of a bad value. src->facts is made on the first
 * fact. */
int cli_source_option(int c, const char *arg, struct pipeline_source *src, const char *usage);
void cli_source_clear(struct pipeline_source *src);
/* $SOURCE_DATE_EPOCH (-1 when unset) into *out; returns 0, or the exit code of a bad value. */
int cli_source_date_epoch(int64_t *out);
/* A number of seconds from 0 to a week (--step-timeout). */
int cli_parse_timeout(const char *arg, unsigned *out);
/* A generation number or count: 1 to 999999999 (-EINVAL otherwise). */
int cli_parse_positive(const char *arg, unsigned *out);

/* Where the libraries' progress goes: stderr, as a redrawn progress line when it is a terminal,
 * as plain lines otherwise; a step's output to stdout. */
struct pipeline_events *cli_events(void);
/* configure's events alone, printed the same way (the data argument is unused). */
void cli_configure_event(const struct configure_event *e, void *data);

int cmd_fragment(int argc, char **argv);
int cmd_compose(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_switch(int argc, char **argv);
int cmd_restart(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
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
int cmd_generations(int argc, char **argv);
