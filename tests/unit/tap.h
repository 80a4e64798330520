/* A tiny TAP producer for the unit tests: each test program includes it once, calls plan() (or
 * not: done() then prints the plan at the end), checks with ok()/is_int()/is_str(), ends with
 * done(). */
#pragma once

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_planned = -1;
static int tap_run;
static int tap_failed;

/* Announces how many checks will run; done() fails if the count differs. */
static inline void plan(int n)
{
	tap_planned = n;
	printf("1..%d\n", n);
	fflush(stdout);
}

/* A '#' line: shown by TAP harnesses, never counted as a result. */
static inline __attribute__((format(printf, 1, 2))) void diag(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("# ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
}

static inline bool tap_vresult(bool pass, const char *fmt, va_list ap)
{
	tap_run++;
	if (!pass)
		tap_failed++;
	/* A description is one line: newlines in it would end the TAP line early. */
	char desc[512];
	vsnprintf(desc, sizeof(desc), fmt, ap);
	for (char *c = desc; *c; c++)
		if (*c == '\n' || *c == '#')
			*c = *c == '\n' ? ' ' : '_';
	printf("%sok %d - %s\n", pass ? "" : "not ", tap_run, desc);
	fflush(stdout);
	return pass;
}

/* Records one result; returns cond so a caller can skip what depends on it. */
static inline __attribute__((format(printf, 2, 3))) bool ok(bool cond, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	bool r = tap_vresult(cond, fmt, ap);
	va_end(ap);
	return r;
}

static inline __attribute__((format(printf, 3, 4))) bool is_int(intmax_t got, intmax_t want,
                                                                const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	bool r = tap_vresult(got == want, fmt, ap);
	va_end(ap);
	if (!r)
		diag("  got: %jd, expected: %jd", got, want);
	return r;
}

/* NULL equals only NULL. */
static inline __attribute__((format(printf, 3, 4))) bool is_str(const char *got, const char *want,
                                                                const char *fmt, ...)
{
	bool same = (got && want) ? strcmp(got, want) == 0 : got == want;
	va_list ap;
	va_start(ap, fmt);
	bool r = tap_vresult(same, fmt, ap);
	va_end(ap);
	if (!r)
		diag("  got: '%s', expected: '%s'", got ? got : "(null)", want ? want : "(null)");
	return r;
}

/* Runs a shell command line made from fmt; a failure is reported as a diagnostic (the caller
 * checks the status). Returns system()'s status. */
static inline __attribute__((format(printf, 1, 2))) int sh(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *cmd = NULL;
	if (vasprintf(&cmd, fmt, ap) < 0)
		abort();
	va_end(ap);
	int st = system(cmd);
	if (st != 0)
		diag("command failed (%d): %s", st, cmd);
	free(cmd);
	return st;
}

/* Prints the plan if none was given and returns the exit status: non-zero on any failure or
 * when the number of checks run differs from the plan. */
static inline int done(void)
{
	if (tap_planned < 0)
		printf("1..%d\n", tap_run);
	else if (tap_run != tap_planned) {
		diag("planned %d checks but ran %d", tap_planned, tap_run);
		return EXIT_FAILURE;
	}
	if (tap_failed)
		diag("%d of %d checks failed", tap_failed, tap_run);
	fflush(stdout);
	return tap_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
