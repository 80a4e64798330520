/* libFuzzer target for deb822_parse (trimmed and verbatim), deb822_parse_all and
 * deb822_relations: control paragraphs come out of .deb files, apt sources and repository
 * metadata. */
#include "common/deb822.h"

#include <ctype.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct deb822 p = {0};
	struct mosaic_error err = {0};
	int r = deb822_parse((const char *)data, size, &p, &err);
	if (r < 0) {
		if (p.n || p.fields || !err.msg[0] ||
		    strnlen(err.msg, sizeof(err.msg)) == sizeof(err.msg))
			__builtin_trap();
	} else {
		if (p.n == 0)
			__builtin_trap();
		for (size_t i = 0; i < p.n; i++) {
			const char *name = p.fields[i].name, *value = p.fields[i].value;
			/* Names are non-empty, unique (case-insensitively): lookup finds this one.
			 */
			if (!*name || deb822_get(&p, name) != value || strchr(name, ':') ||
			    strchr(name, '\n'))
				__builtin_trap();
			json_object *a = deb822_relations(value);
			for (size_t j = 0; j < json_object_array_length(a); j++) {
				const char *rel =
				    json_object_get_string(json_object_array_get_idx(a, j));
				size_t l = strlen(rel);
				if (l == 0 || strchr(rel, ',') || strchr(rel, '\n') ||
				    rel[0] == ' ' || rel[l - 1] == ' ')
					__builtin_trap();
			}
			json_object_put(a);
		}
	}

	/* Verbatim values (dpkg's status): the same fields, each value trimmed as a whole. */
	struct deb822 v = {0};
	int rv = deb822_parse_mode((const char *)data, size, DEB822_VERBATIM, &v, &err);
	if (rv != r || (rv == 0 && v.n != p.n))
		__builtin_trap();
	for (size_t i = 0; rv == 0 && i < v.n; i++) {
		const char *value = v.fields[i].value;
		size_t l = strlen(value);
		if (strcmp(v.fields[i].name, p.fields[i].name) != 0 ||
		    (l &&
		     (isspace((unsigned char)value[0]) || isspace((unsigned char)value[l - 1]))))
			__builtin_trap();
	}
	if (rv == 0)
		deb822_clear(&v);

	/* Every paragraph (apt's .sources files): each one non-empty, and the first one is what
	 * deb822_parse gives when that succeeds. */
	struct deb822 *all = NULL;
	size_t n = 0;
	if (deb822_parse_all((const char *)data, size, &all, &n, &err) == 0) {
		for (size_t i = 0; i < n; i++)
			if (all[i].n == 0)
				__builtin_trap();
		if (r == 0 && (n == 0 || all[0].n != p.n))
			__builtin_trap();
		deb822_free_all(all, n);
	} else if (all || !err.msg[0]) {
		__builtin_trap();
	}
	if (r == 0)
		deb822_clear(&p);

	/* The relation splitter on the raw input too (it expects a C string). */
	char *s = xstrndup((const char *)data, size);
	json_object_put(deb822_relations(s));
	free(s);
	return 0;
}
