/* tools/: runs commands chrooted into a mounted composition, inside private mount and PID
 * namespaces that carry /proc, /sys, /dev, /run and /tmp for them and vanish with the run. */
#pragma once

#include "common/common.h"

/* One command run in the chroot: argv[0] is looked up in envp's PATH inside the root. */
struct chroot_step {
	const char *name;  /* prefixes each line of its output, and names it in reports */
	char *const *argv; /* NULL-terminated */
	char *const *envp; /* NULL-terminated: the whole environment */
	unsigned timeout;  /* seconds; 0: none */
	const char *input; /* path inside the root opened as its stdin; NULL: /dev/null */
	bool quiet;        /* keep its output in the tail only, not on stdout */
};

struct chroot_result {
	int status;     /* the exit code, 128 + signal if killed, 127 if it could not start */
	bool timed_out; /* it ran past its timeout and its process group was killed */
	char *tail;     /* its last lines of output (up to CHROOT_TAIL_LINES); caller frees */
};
/* Enough to find what one package's script printed in a long dpkg run. */
#define CHROOT_TAIL_LINES 2000

/* Inside a session: runs s chrooted into root in its own process group with stdin s->input (or
 * /dev/null), streams its output (stdout and stderr, line by line, "[name] " first) to stdout
 * unless quiet, and kills the whole group after s->timeout. Leftover processes of the group are
 * killed when it ends. Returns 0 with res filled, or -errno when it could not be started. */
int chroot_run_step(const char *root, const struct chroot_step *s, struct chroot_result *res);

/* Prints the last max lines of a step's output (tail may be NULL) to stderr, indented, or
 * "(none)". */
void chroot_print_tail(const char *tail, int max);

/* Runs fn(root, data) in a child process in new mount and PID namespaces (mounts private, so
 * nothing propagates to the host) with proc, sysfs (read-only), a minimal /dev (null, zero, full,
 * random, urandom, tty, ptmx + pts, shm, fd) and tmpfs /run and /tmp mounted under root. Missing
 * mount points are created in root first. Everything the child mounted or started ends with it,
 * on success and on failure; if this process dies, the child is killed too. Returns fn's result
 * (an exit code, 0..255), or -errno with err filled when the namespace could not be set up. */
int chroot_session(const char *root, int (*fn)(const char *root, void *data), void *data,
                   struct mosaic_error *err);
