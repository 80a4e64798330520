/* Error text helpers and aborting allocators. */
#include "common/common.h"

#include <string.h>

int mosaic_errorf(struct mosaic_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->code = code;
		err->located = false;
	}
	return code;
}

int mosaic_error_prefix(struct mosaic_error *err, const char *fmt, ...)
{
	if (!err)
		return 0;
	char prefix[512], old[sizeof(err->msg)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	err->located = false;
	size_t n = strlen(prefix);
	if (n > sizeof(err->msg) - 3)
		n = sizeof(err->msg) - 3;
	memcpy(err->msg, prefix, n);
	memcpy(err->msg + n, ": ", 2);
	size_t room = sizeof(err->msg) - n - 3;
	size_t ol = strnlen(old, room);
	memcpy(err->msg + n + 2, old, ol);
	err->msg[n + 2 + ol] = '\0';
	return err->code;
}

static void *check(void *p)
{
	if (!p) {
		fputs("mosaic: out of memory\n", stderr);
		abort();
	}
	return p;
}

void *xmalloc(size_t n)
{
	return check(malloc(n ? n : 1));
}

void *xcalloc(size_t n, size_t m)
{
	return check(calloc(n ? n : 1, m ? m : 1));
}

void *xrealloc(void *p, size_t n)
{
	return check(realloc(p, n ? n : 1));
}

char *xstrdup(const char *s)
{
	return check(strdup(s));
}

char *xstrndup(const char *s, size_t n)
{
	return check(strndup(s, n));
}

char *xasprintf(const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		check(NULL);
	return s;
}

void strv_free(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void strv_freev(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

char **strv_split(const char *s, const char *seps)
{
	char **v = xcalloc(1, sizeof(*v));
	size_t n = 0;
	while (s && *s) {
		s += strspn(s, seps);
		size_t l = strcspn(s, seps);
		if (!l)
			break;
		v = xrealloc(v, (n + 2) * sizeof(*v));
		v[n++] = xstrndup(s, l);
		v[n] = NULL;
		s += l;
	}
	return v;
}

int strcmp_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}
