/* common/: the small helpers every module shares: errors, cleanup, hashing, paths, files.
 * Nothing here knows about any module. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- ownership ---------------------------------------------------------------------------- */

static inline void freep(void *p)
{
	free(*(void **)p);
}
static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}
#define _cleanup_(f)     __attribute__((cleanup(f)))
#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)
/* Hands ownership on: returns the value and clears the variable so its cleanup does nothing. */
#define TAKE_PTR(p)                                                                                \
	({                                                                                         \
		__typeof__(p) _p = (p);                                                            \
		(p) = NULL;                                                                        \
		_p;                                                                                \
	})
#define TAKE_FD(fd)                                                                                \
	({                                                                                         \
		int _fd = (fd);                                                                    \
		(fd) = -1;                                                                         \
		_fd;                                                                               \
	})
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- errors ------------------------------------------------------------------------------- */

/* Library functions return -errno and, when there is more to say, fill this with the text. */
struct mosaic_error {
	int code; /* negative errno */
	char msg[1024];
	bool located; /* msg is one or more "FILE:LINE:COL: problem" lines, to be shown as they are */
};

/* Formats msg into err (which may be NULL) and returns code (a negative errno). */
int mosaic_errorf(struct mosaic_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes an already set message with more context ("while doing X: <old message>"). */
int mosaic_error_prefix(struct mosaic_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* qsort that accepts an empty (possibly NULL) array, which qsort itself must not be given. */
static inline void qsort_safe(void *base, size_t n, size_t size,
                              int (*cmp)(const void *, const void *))
{
	if (n > 1)
		qsort(base, n, size, cmp);
}
/* qsort comparator for an array of strings. */
int strcmp_ptr(const void *a, const void *b);
/* Frees n strings and the array. */
void strv_free(char **v, size_t n);
/* NULL-terminated string vectors: free one (NULL is fine), and split s at any of the characters
 * in seps into one (empty words dropped; s may be NULL). */
void strv_freev(char **v);
static inline void strv_freevp(char ***v)
{
	strv_freev(*v);
}
#define _cleanup_strv_ _cleanup_(strv_freevp)
char **strv_split(const char *s, const char *seps);

/* Allocation that aborts on failure: running out of memory is not an error we can report. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- hashing ------------------------------------------------------------------------------ */

#define SHA256_LEN     32
#define SHA256_HEX_LEN 64

struct sha256;
/* Streaming SHA-256 (libgcrypt). sha256_new never fails; sha256_final frees the context. */
struct sha256 *sha256_new(void);
void sha256_update(struct sha256 *h, const void *data, size_t len);
void sha256_final(struct sha256 *h, char hex[SHA256_HEX_LEN + 1]);
/* Hashes a whole buffer or an open file (from offset 0); returns 0 or -errno. */
void sha256_buffer(const void *data, size_t len, char hex[SHA256_HEX_LEN + 1]);
int sha256_fd(int fd, char hex[SHA256_HEX_LEN + 1]);
bool is_sha256_hex(const char *s);

/* "512 B", "12.3 kB", "4.1 MB", "1.25 GB" (powers of 1000): a size for people to read. */
void format_bytes(char *buf, size_t len, double bytes);
/* Seconds on the monotonic clock, for measuring durations. */
double now_s(void);

/* ---- paths -------------------------------------------------------------------------------- */

/* Normalises an archive path in place: drops leading "/" and "./", collapses "//" and "/./",
 * strips a trailing "/". Returns 0, or -EINVAL for a ".." component (the path could escape the
 * root). The root itself normalises to "". */
int path_normalise(char *path);
/* Joins two path parts with one "/"; caller frees. */
char *path_join(const char *a, const char *b);

/* ---- files -------------------------------------------------------------------------------- */

/* mkdir -p; returns 0 or -errno. */
int mkdir_p(const char *path, mode_t mode);
/* Reads a whole file (at most max bytes) into a NUL-terminated buffer the caller frees. */
int read_file(const char *path, size_t max, char **out, size_t *len);
/* Writes data to fd completely. */
int write_all(int fd, const void *data, size_t len);
/* Writes data to path atomically: temp file beside it, fsync, rename, fsync the directory. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* rm -rf that stays on path's filesystem (a mount below it is not entered); 0 or -errno. */
int rm_tree(const char *path);
/* fsyncs the directory that holds path. */
int fsync_parent(const char *path);

/* ---- configuration ------------------------------------------------------------------------ */

/* The per-user cache root: $MOSAIC_CACHE_DIR, else $XDG_CACHE_HOME/mosaic, else ~/.cache/mosaic.
 * Caller frees. */
char *mosaic_cache_dir(void);
/* A string setting: environment variable env if set, else key from the config file
 * ($MOSAIC_CONFIG or /etc/mosaic/config.json), else fallback. Caller frees; NULL if none. */
char *mosaic_config_get(const char *env, const char *key, const char *fallback);
/* $SOURCE_DATE_EPOCH, read in this one place: *out is its value, or -1 when it is unset or
 * empty (each caller decides what that means for it). A value that is not seconds since 1970
 * is -EINVAL with err saying so. */
int mosaic_source_date_epoch(int64_t *out, struct mosaic_error *err);
