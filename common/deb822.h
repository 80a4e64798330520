/* Debian control paragraphs (deb822): "Field: value" lines, continuation lines, '#' comments.
 * Used for .deb control files, apt's .sources files and repository Release files. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

struct deb822_field {
	char *name, *value; /* value: continuation lines joined with '\n' (see deb822_mode) */
};
struct deb822 {
	struct deb822_field *fields;
	size_t n;
};
/* What a value keeps of its lines. */
enum deb822_mode {
	DEB822_TRIM,     /* every line trimmed */
	DEB822_VERBATIM, /* continuation lines as written (indentation and trailing blanks, as
	                  * dpkg's status keeps a Description), only the whole value trimmed */
};
/* Parses the first paragraph of untrusted text; -EINVAL with err naming the line. */
int deb822_parse_mode(const char *text, size_t len, enum deb822_mode mode, struct deb822 *out,
                      struct mosaic_error *err);
/* deb822_parse_mode with DEB822_TRIM. */
int deb822_parse(const char *text, size_t len, struct deb822 *out, struct mosaic_error *err);
/* Parses every paragraph (blank lines separate them; paragraphs of comments only are skipped)
 * into an array the caller frees with deb822_free_all; *n may be 0. */
int deb822_parse_all(const char *text, size_t len, struct deb822 **out, size_t *n,
                     struct mosaic_error *err);
void deb822_free_all(struct deb822 *p, size_t n);
const char *deb822_get(const struct deb822 *p, const char *name); /* case-insensitive */
void deb822_clear(struct deb822 *p);
/* Splits a dependency field ("a (>= 1), b | c") into a JSON array of its comma-separated
 * relations, each trimmed. */
json_object *deb822_relations(const char *value);
