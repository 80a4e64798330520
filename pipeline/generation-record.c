/* pipeline/: a generation's record, <store>/generations/<HISTORY>/<N>.json (docs/formats.md):
 * written by the build, read by everyone else as untrusted input (a store may be shared). */
#include "pipeline/internal.h"

#include <string.h>

/* Records are small (about 250 bytes a fragment); anything bigger is not one. */
#define RECORD_MAX_BYTES (16u << 20)

bool pipeline_history_valid(const char *s)
{
	static const char alnum[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	size_t n = strlen(s);
	return n > 0 && n <= PIPELINE_HISTORY_MAX && strchr(alnum, s[0]) &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+=,@-") ==
	           n;
}

void pipeline_generation_clear(struct pipeline_generation *g)
{
	if (!g)
		return;
	free(g->history);
	free(g->manifest);
	free(g->manifest_digest);
	free(g->lock_digest);
	free(g->index_digest);
	free(g->index_path);
	json_object_put(g->facts);
	strv_free(g->digests, g->n_fragments);
	strv_free(g->names, g->n_fragments);
	strv_free(g->kinds, g->n_fragments);
	strv_free(g->versions, g->n_fragments);
	strv_free(g->archs, g->n_fragments);
	strv_free(g->sources, g->n_fragments);
	strv_free(g->images, g->n_fragments);
	free(g->path);
	free(g->error);
	*g = (struct pipeline_generation){0};
}

static json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

char *pipeline_generation_format(const struct pipeline_generation *g)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(PIPELINE_GENERATION_VERSION));
	json_object_object_add(o, "number", json_object_new_int64(g->number));
	json_object_object_add(o, "time", json_object_new_int64(g->time));
	json_object_object_add(o, "history", json_object_new_string(g->history));
	json_object_object_add(o, "manifest", json_object_new_string(g->manifest));
	json_object_object_add(o, "manifest_digest", json_object_new_string(g->manifest_digest));
	json_object_object_add(o, "facts",
	                       g->facts ? json_object_get(g->facts) : json_object_new_object());
	json_object_object_add(o, "lock_digest", json_object_new_string(g->lock_digest));
	json_object *frags = json_object_new_array();
	for (size_t i = 0; i < g->n_fragments; i++) {
		json_object *f = json_object_new_object();
		json_object_object_add(f, "digest", json_object_new_string(g->digests[i]));
		json_object_object_add(f, "name", json_object_new_string(g->names[i]));
		json_object_object_add(f, "version", string_or_null(g->versions[i]));
		json_object_object_add(f, "arch", string_or_null(g->archs[i]));
		json_object_object_add(f, "kind", json_object_new_string(g->kinds[i]));
		json_object_object_add(f, "source", string_or_null(g->sources[i]));
		json_object_array_add(frags, f);
	}
	json_object_object_add(o, "fragments", frags);
	json_object_object_add(o, "index_digest", json_object_new_string(g->index_digest));
	json_object_object_add(o, "index", json_object_new_string(g->index_path));
	char *text = xasprintf("%s\n", json_object_to_json_string_ext(
	                                   o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
	                                          JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}

/* ---- reading ------------------------------------------------------------------------------ */

/* A string a terminal may be shown: no NUL inside, no control characters. */
static bool printable(json_object *v)
{
	const char *s = json_object_get_string(v);
	size_t n = (size_t)json_object_get_string_len(v);
	if (strlen(s) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* key of o as a copy in *out: a printable non-empty string; with optional, absent or null is
 * NULL. */
static int get_string(json_object *o, const char *key, bool optional, char **out, const char *where,
                      struct mosaic_error *err)
{
	json_object *v = NULL;
	*out = NULL;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		if (optional)
			return 0;
		return mosaic_errorf(err, -EBADMSG, "%s'%s' is missing", where, key);
	}
	if (!json_object_is_type(v, json_type_string) || !printable(v) ||
	    json_object_get_string_len(v) == 0)
		return mosaic_errorf(err, -EBADMSG, "%s'%s' is not a non-empty string of text",
		                     where, key);
	*out = xstrdup(json_object_get_string(v));
	return 0;
}

static int get_digest(json_object *o, const char *key, char **out, const char *where,
                      struct mosaic_error *err)
{
	int r = get_string(o, key, false, out, where, err);
	if (r == 0 && !is_sha256_hex(*out)) {
		free(TAKE_PTR(*out));
		r = mosaic_errorf(err, -EBADMSG, "%s'%s' is not a SHA-256 (64 hex digits)", where,
		                  key);
	}
	return r;
}

static int get_int(json_object *o, const char *key, int64_t min, int64_t max, int64_t *out,
                   struct mosaic_error *err)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return mosaic_errorf(err, -EBADMSG, "'%s' is missing or not an integer", key);
	errno = 0;
	*out = json_object_get_int64(v);
	if (errno || *out < min || *out > max)
		return mosaic_errorf(err, -EBADMSG, "'%s' is out of range", key);
	return 0;
}

/* facts: an object of strings or lists of strings, as --fact makes them. */
static int check_facts(json_object *facts, struct mosaic_error *err)
{
	if (!facts || !json_object_is_type(facts, json_type_object))
		return mosaic_errorf(err, -EBADMSG, "'facts' is missing or not an object");
	json_object_object_foreach(facts, k, v)
	{
		bool list = json_object_is_type(v, json_type_array);
		size_t n = list ? json_object_array_length(v) : 1;
		for (size_t i = 0; i < n; i++) {
			json_object *e = list ? json_object_array_get_idx(v, i) : v;
			if (!json_object_is_type(e, json_type_string) || !printable(e))
				return mosaic_errorf(
				    err, -EBADMSG, "fact '%.64s' is not a string or a list of them",
				    k);
		}
	}
	return 0;
}

static int kind_known(const char *k)
{
	static const char *const kinds[] = {"base", "package", "config", "dev"};
	for (size_t i = 0; i < ARRAY_SIZE(kinds); i++)
		if (strcmp(k, kinds[i]) == 0)
			return true;
	return false;
}

static int parse_fragments(json_object *a, struct pipeline_generation *g, struct mosaic_error *err)
{
	if (!a || !json_object_is_type(a, json_type_array))
		return mosaic_errorf(err, -EBADMSG, "'fragments' is missing or not a list");
	size_t n = json_object_array_length(a);
	g->digests = xcalloc(n + 1, sizeof(char *));
	g->names = xcalloc(n + 1, sizeof(char *));
	g->kinds = xcalloc(n + 1, sizeof(char *));
	g->versions = xcalloc(n + 1, sizeof(char *));
	g->archs = xcalloc(n + 1, sizeof(char *));
	g->sources = xcalloc(n + 1, sizeof(char *));
	g->n_fragments = n;
	for (size_t i = 0; i < n; i++) {
		json_object *f = json_object_array_get_idx(a, i);
		char where[48];
		snprintf(where, sizeof(where), "fragment %zu: ", i + 1);
		if (!json_object_is_type(f, json_type_object))
			return mosaic_errorf(err, -EBADMSG, "%snot an object", where);
		int r;
		if ((r = get_digest(f, "digest", &g->digests[i], where, err)) < 0 ||
		    (r = get_string(f, "name", false, &g->names[i], where, err)) < 0 ||
		    (r = get_string(f, "kind", false, &g->kinds[i], where, err)) < 0 ||
		    (r = get_string(f, "version", true, &g->versions[i], where, err)) < 0 ||
		    (r = get_string(f, "arch", true, &g->archs[i], where, err)) < 0 ||
		    (r = get_string(f, "source", true, &g->sources[i], where, err)) < 0)
			return r;
		if (!kind_known(g->kinds[i]))
			return mosaic_errorf(err, -EBADMSG,
			                     "%skind '%s' is not base, package, config or dev",
			                     where, g->kinds[i]);
	}
	return 0;
}

static int parse_object(json_object *o, struct pipeline_generation *g, struct mosaic_error *err)
{
	int64_t version, number;
	json_object *facts = NULL, *frags = NULL;
	int r;
	if (!json_object_is_type(o, json_type_object))
		return mosaic_errorf(err, -EBADMSG, "not a JSON object");
	if ((r = get_int(o, "version", INT64_MIN, INT64_MAX, &version, err)) < 0)
		return r;
	if (version != PIPELINE_GENERATION_VERSION)
		return mosaic_errorf(err, -EBADMSG,
		                     "record version %" PRId64 " is not one this mosaic reads (%d)",
		                     version, PIPELINE_GENERATION_VERSION);
	if ((r = get_int(o, "number", 1, INT32_MAX, &number, err)) < 0 ||
	    (r = get_int(o, "time", INT64_MIN, INT64_MAX, &g->time, err)) < 0 ||
	    (r = get_string(o, "history", false, &g->history, "", err)) < 0 ||
	    (r = get_string(o, "manifest", false, &g->manifest, "", err)) < 0 ||
	    (r = get_digest(o, "manifest_digest", &g->manifest_digest, "", err)) < 0 ||
	    (r = get_digest(o, "lock_digest", &g->lock_digest, "", err)) < 0 ||
	    (r = get_digest(o, "index_digest", &g->index_digest, "", err)) < 0 ||
	    (r = get_string(o, "index", false, &g->index_path, "", err)) < 0)
		return r;
	g->number = (unsigned)number;
	if (!pipeline_history_valid(g->history))
		return mosaic_errorf(err, -EBADMSG, "'history' is not a history name");
	json_object_object_get_ex(o, "facts", &facts);
	if ((r = check_facts(facts, err)) < 0)
		return r;
	g->facts = json_object_get(facts);
	json_object_object_get_ex(o, "fragments", &frags);
	return parse_fragments(frags, g, err);
}

int pipeline_generation_parse(const char *text, size_t len, struct pipeline_generation *out,
                              struct mosaic_error *err)
{
	*out = (struct pipeline_generation){0};
	if (len > RECORD_MAX_BYTES)
		return mosaic_errorf(err, -EFBIG, "more than %u bytes: not a generation record",
		                     RECORD_MAX_BYTES);
	json_tokener *tok = json_tokener_new();
	json_object *o = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	/* The writer ends with a newline; nothing else may follow (the buffer need not be
	 * NUL-terminated). */
	while (used < len && text[used] && strchr(" \t\r\n", text[used]))
		used++;
	int r = 0;
	if (jerr == json_tokener_continue)
		r = mosaic_errorf(err, -EBADMSG, "not JSON: it ends too early (truncated?)");
	else if (!o || jerr != json_tokener_success)
		r = mosaic_errorf(err, -EBADMSG, "not JSON: %s", json_tokener_error_desc(jerr));
	else if (used < len)
		r = mosaic_errorf(err, -EBADMSG, "bytes after the JSON object");
	else
		r = parse_object(o, out, err);
	json_object_put(o);
	if (r < 0)
		pipeline_generation_clear(out);
	return r;
}
