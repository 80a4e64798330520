/* A parser for Debian control paragraphs (deb822): "Field: value" lines, continuation lines
 * starting with a space or tab (trimmed, or kept verbatim as dpkg keeps them), '#' comments.
 * Input is untrusted (a .deb, a repository). */
#include "common/deb822.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define DEB822_MAX_BYTES  (4 << 20)
#define DEB822_MAX_FIELDS 1024

void deb822_clear(struct deb822 *p)
{
	for (size_t i = 0; i < p->n; i++) {
		free(p->fields[i].name);
		free(p->fields[i].value);
	}
	free(p->fields);
	p->fields = NULL;
	p->n = 0;
}

const char *deb822_get(const struct deb822 *p, const char *name)
{
	for (size_t i = 0; i < p->n; i++)
		if (strcasecmp(p->fields[i].name, name) == 0)
			return p->fields[i].value;
	return NULL;
}

static char *trim(const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	return xstrndup(s, n);
}

/* Parses one paragraph starting at text[*pos], counting lines in *line; stops after the blank
 * line that ends it (or at the end) and leaves *pos there. A paragraph of comments only gives
 * out->n == 0. */
static int parse_one(const char *text, size_t len, enum deb822_mode mode, size_t *pos, size_t *line,
                     struct deb822 *out, struct mosaic_error *err)
{
	struct deb822 p = {0};
	size_t cap = 0, vlen = 0, vcap = 0; /* length and room of the last value */
	const char *s = text + *pos, *end = text + len;
	bool started = false;

	while (s < end) {
		const char *nl = memchr(s, '\n', end - s);
		const char *eol = nl ? nl : end;
		size_t n = eol - s;
		(*line)++;
		if (memchr(s, '\0', n)) {
			deb822_clear(&p);
			return mosaic_errorf(err, -EINVAL, "line %zu: NUL byte", *line);
		}
		bool blank = true;
		for (size_t i = 0; i < n; i++)
			if (!isspace((unsigned char)s[i]))
				blank = false;
		if (blank) {
			if (started) {
				s = nl ? nl + 1 : end;
				break; /* end of the paragraph */
			}
		} else if (s[0] == '#') {
			/* comment */
		} else if (s[0] == ' ' || s[0] == '\t') {
			if (p.n == 0) {
				deb822_clear(&p);
				return mosaic_errorf(err, -EINVAL,
				                     "line %zu: continuation line before any field",
				                     *line);
			}
			struct deb822_field *f = &p.fields[p.n - 1];
			_cleanup_free_ char *t =
			    mode == DEB822_VERBATIM ? xstrndup(s, n) : trim(s, n);
			size_t tl = strlen(t);
			if (vlen + tl + 2 > vcap) {
				vcap = (vlen + tl + 2) * 2;
				f->value = xrealloc(f->value, vcap);
			}
			f->value[vlen++] = '\n';
			memcpy(f->value + vlen, t, tl + 1);
			vlen += tl;
		} else {
			const char *colon = memchr(s, ':', n);
			if (!colon || colon == s) {
				deb822_clear(&p);
				return mosaic_errorf(err, -EINVAL,
				                     "line %zu: expected 'Field: value'", *line);
			}
			for (const char *c = s; c < colon; c++)
				if (!isgraph((unsigned char)*c)) {
					deb822_clear(&p);
					return mosaic_errorf(
					    err, -EINVAL,
					    "line %zu: invalid character in field name", *line);
				}
			_cleanup_free_ char *name = xstrndup(s, colon - s);
			if (p.n >= DEB822_MAX_FIELDS) {
				deb822_clear(&p);
				return mosaic_errorf(err, -EINVAL, "line %zu: more than %d fields",
				                     *line, DEB822_MAX_FIELDS);
			}
			if (deb822_get(&p, name)) {
				deb822_clear(&p);
				return mosaic_errorf(err, -EINVAL, "line %zu: duplicate field '%s'",
				                     *line, name);
			}
			if (p.n == cap) {
				cap = cap ? cap * 2 : 16;
				p.fields = xrealloc(p.fields, cap * sizeof(*p.fields));
			}
			p.fields[p.n].name = TAKE_PTR(name);
			/* Verbatim: trimmed as a whole once the paragraph is read. */
			p.fields[p.n].value = mode == DEB822_VERBATIM
			                          ? xstrndup(colon + 1, eol - colon - 1)
			                          : trim(colon + 1, eol - colon - 1);
			vlen = strlen(p.fields[p.n].value);
			vcap = vlen + 1;
			p.n++;
			started = true;
		}
		s = nl ? nl + 1 : end;
	}
	if (mode == DEB822_VERBATIM)
		for (size_t i = 0; i < p.n; i++) {
			char *v = p.fields[i].value;
			p.fields[i].value = trim(v, strlen(v));
			free(v);
		}
	*pos = s - text;
	*out = p;
	return 0;
}

int deb822_parse_mode(const char *text, size_t len, enum deb822_mode mode, struct deb822 *out,
                      struct mosaic_error *err)
{
	/* Real control paragraphs are a few KiB; the limits keep hostile input linear. */
	if (len > DEB822_MAX_BYTES)
		return mosaic_errorf(err, -EFBIG, "control paragraph larger than %d bytes",
		                     DEB822_MAX_BYTES);
	size_t pos = 0, line = 0;
	struct deb822 p = {0};
	int r = parse_one(text, len, mode, &pos, &line, &p, err);
	if (r < 0)
		return r;
	if (p.n == 0)
		return mosaic_errorf(err, -EINVAL, "empty control paragraph");
	*out = p;
	return 0;
}

int deb822_parse(const char *text, size_t len, struct deb822 *out, struct mosaic_error *err)
{
	return deb822_parse_mode(text, len, DEB822_TRIM, out, err);
}

void deb822_free_all(struct deb822 *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		deb822_clear(&p[i]);
	free(p);
}

int deb822_parse_all(const char *text, size_t len, struct deb822 **out, size_t *n,
                     struct mosaic_error *err)
{
	if (len > DEB822_MAX_BYTES)
		return mosaic_errorf(err, -EFBIG, "text larger than %d bytes", DEB822_MAX_BYTES);
	struct deb822 *all = NULL;
	size_t count = 0, pos = 0, line = 0;
	while (pos < len) {
		struct deb822 p = {0};
		int r = parse_one(text, len, DEB822_TRIM, &pos, &line, &p, err);
		if (r < 0) {
			deb822_free_all(all, count);
			return r;
		}
		if (p.n == 0)
			continue;
		all = xrealloc(all, (count + 1) * sizeof(*all));
		all[count++] = p;
	}
	*out = all;
	*n = count;
	return 0;
}

json_object *deb822_relations(const char *value)
{
	json_object *a = json_object_new_array();
	const char *s = value;
	while (*s) {
		const char *comma = strchrnul(s, ',');
		_cleanup_free_ char *t = trim(s, comma - s);
		/* Folded fields keep their newlines; relations read better on one line. */
		for (char *c = t; *c; c++)
			if (*c == '\n')
				*c = ' ';
		if (*t)
			json_object_array_add(a, json_object_new_string(t));
		s = *comma ? comma + 1 : comma;
	}
	return a;
}
