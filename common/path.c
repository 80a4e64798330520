/* Archive path normalisation and joining. */
#include "common/common.h"

#include <string.h>

int path_normalise(char *path)
{
	char *out = path;
	const char *p = path;

	while (*p) {
		while (*p == '/')
			p++;
		const char *end = strchrnul(p, '/');
		size_t n = end - p;
		if (n == 0)
			break;
		if (n == 1 && p[0] == '.') {
			p = end;
			continue;
		}
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return -EINVAL;
		if (out != path)
			*out++ = '/';
		memmove(out, p, n);
		out += n;
		p = end;
	}
	*out = '\0';
	return 0;
}

char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a);
	while (la > 1 && a[la - 1] == '/')
		la--;
	while (*b == '/')
		b++;
	if (la == 0)
		return xstrdup(b);
	if (la == 1 && a[0] == '/')
		return xasprintf("/%s", b);
	if (*b == '\0')
		return xstrndup(a, la);
	return xasprintf("%.*s/%s", (int)la, a, b);
}
