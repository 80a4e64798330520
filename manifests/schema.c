/* The manifest schema (docs/manifest.md): the tables below say which keys exist at each level
 * and what their values must be; one walker checks a libyaml document against them and turns
 * it into json-c, with the document position of every value attached. */
#include "manifests/internal.h"

#include <string.h>

/* Values converted per load. Aliases let a few hundred bytes expand to billions of nodes. */
#define MAX_VISITS 1000000

struct walk {
	struct loader *l;
	yaml_document_t *doc;
	const char *file; /* display name */
	const char *path; /* absolute, for run steps */
	const char *dir;  /* base of relative paths */
};

enum stype {
	S_STRING,  /* any scalar but null, as text */
	S_BOOL,    /* true/false/yes/no */
	S_INT,     /* a plain decimal integer in [min, max] */
	S_ENUM,    /* one of values */
	S_LIST,    /* a sequence of item */
	S_STRINGS, /* a sequence of item (a string schema), or one such string */
	S_MAP,     /* a mapping with fields */
	S_CUSTOM,  /* convert does everything */
};

enum {
	STR_NONEMPTY = 1 << 0,
	STR_PATH = 1 << 1,     /* relative paths become absolute against the file's directory */
	STR_ABSOLUTE = 1 << 2, /* must already be absolute */
};

struct schema;
struct field {
	const char *key;
	const struct schema *schema;
	bool required;
};

/* subject: how messages name the value: "'packages'", "each item of 'suites'". */
typedef json_object *convert_fn(struct walk *w, yaml_node_t *n, const char *subject);
typedef bool valid_fn(struct walk *w, yaml_node_t *n, const char *subject, const char *value);
typedef void check_fn(struct walk *w, yaml_node_t *n, json_object *o);

struct schema {
	enum stype type;
	const char *what;           /* S_MAP: "repository" in "repository is missing ..." */
	const struct field *fields; /* S_MAP: ends with {NULL} */
	const char *const *denied;  /* S_MAP: keys valid elsewhere but not here */
	const char *denied_where;   /* S_MAP: "in a layer" */
	const struct schema *item;  /* S_LIST, S_STRINGS */
	const char *const *values;  /* S_ENUM: NULL-terminated */
	int64_t min, max;           /* S_INT */
	unsigned flags;             /* S_STRING */
	valid_fn *valid;            /* S_STRING */
	convert_fn *convert;        /* S_CUSTOM */
	check_fn *check;            /* S_MAP, S_LIST: after the value is converted */
};

static json_object *convert(struct walk *w, yaml_node_t *n, const struct schema *s,
                            const char *subject);

/* ---- scalars ------------------------------------------------------------------------------ */

static yaml_node_t *node(struct walk *w, int id)
{
	return yaml_document_get_node(w->doc, id);
}

static const char *text(yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

static bool is_plain(yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* YAML's core schema, for plain scalars only: quoting always makes a string. */
static bool is_null(yaml_node_t *n)
{
	if (!is_plain(n))
		return false;
	const char *t = text(n);
	return !*t || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 || strcmp(t, "Null") == 0 ||
	       strcmp(t, "NULL") == 0;
}

/* 1 true, 0 false, -1 not a boolean. */
static int bool_value(yaml_node_t *n)
{
	if (!is_plain(n))
		return -1;
	const char *t = text(n);
	if (strcasecmp(t, "true") == 0 || strcasecmp(t, "yes") == 0)
		return 1;
	if (strcasecmp(t, "false") == 0 || strcasecmp(t, "no") == 0)
		return 0;
	return -1;
}

static bool int_value(yaml_node_t *n, int64_t *out)
{
	if (!is_plain(n))
		return false;
	const char *t = text(n), *p = t;
	if (*p == '-' || *p == '+')
		p++;
	if (!*p || strspn(p, "0123456789") != strlen(p))
		return false;
	errno = 0;
	char *end;
	long long v = strtoll(t, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static const char *describe(yaml_node_t *n)
{
	int64_t i;
	switch (n->type) {
	case YAML_MAPPING_NODE:
		return "a mapping";
	case YAML_SEQUENCE_NODE:
		return "a list";
	default:
		if (is_null(n))
			return "null";
		if (bool_value(n) >= 0)
			return "a boolean";
		if (int_value(n, &i))
			return "an integer";
		return "a string";
	}
}

/* ---- errors and positions ----------------------------------------------------------------- */

static void __attribute__((format(printf, 3, 4)))
error_at(struct walk *w, const yaml_mark_t *m, const char *fmt, ...)
{
	char buf[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	loader_error(w->l, w->file, (int)m->line + 1, (int)m->column + 1, "%s", buf);
}

#define error_node(w, n, ...) error_at(w, &(n)->start_mark, __VA_ARGS__)

static json_object *with_pos(struct walk *w, yaml_node_t *n, json_object *o)
{
	pos_set(o, w->file, &n->start_mark);
	return o;
}

/* The key of o (a value in a mapping) starts at m. */
static void key_pos(json_object *o, const yaml_mark_t *m)
{
	struct pos *p = json_object_get_userdata(o);
	if (p) {
		p->kline = (int)m->line + 1;
		p->kcol = (int)m->column + 1;
	}
}

/* A text for messages: user strings can be long or hold control characters. */
static const char *shown(const char *s, char buf[static 64])
{
	size_t i = 0;
	for (; s[i] && i < 60; i++)
		buf[i] = (unsigned char)s[i] < 0x20 ? '?' : s[i];
	if (s[i]) {
		/* Do not cut a UTF-8 sequence in half. */
		while (i > 0 && ((unsigned char)buf[i] & 0xc0) == 0x80)
			i--;
		buf[i++] = '.';
		buf[i++] = '.';
		buf[i++] = '.';
	}
	buf[i] = '\0';
	return buf;
}

/* ---- did you mean ------------------------------------------------------------------------- */

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions). */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 64 || lb > 64)
		return SIZE_MAX;
	size_t d[65][65];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++)
		for (size_t j = 1; j <= lb; j++) {
			size_t cost = a[i - 1] != b[j - 1];
			size_t v = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < v)
				v = d[i][j - 1] + 1;
			if (d[i - 1][j - 1] + cost < v)
				v = d[i - 1][j - 1] + cost;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    d[i - 2][j - 2] + 1 < v)
				v = d[i - 2][j - 2] + 1;
			d[i][j] = v;
		}
	return d[la][lb];
}

/* The closest allowed key, if it is close enough to be a typo: at most two edits, and at most
 * a third of the longer word. */
static const char *closest_key(const char *key, const struct field *fields)
{
	const char *best = NULL;
	size_t best_d = SIZE_MAX;
	for (const struct field *f = fields; f->key; f++) {
		size_t d = edit_distance(key, f->key);
		size_t longer = strlen(key) > strlen(f->key) ? strlen(key) : strlen(f->key);
		if (d <= 2 && d * 3 <= longer && d < best_d) {
			best = f->key;
			best_d = d;
		}
	}
	return best;
}

/* ---- generic conversion ------------------------------------------------------------------- */

static json_object *convert_string(struct walk *w, yaml_node_t *n, const struct schema *s,
                                   const char *subject)
{
	char b[64];
	if (n->type != YAML_SCALAR_NODE || is_null(n)) {
		error_node(w, n, "%s must be a string, not %s", subject, describe(n));
		return NULL;
	}
	const char *t = text(n);
	if (strlen(t) != n->data.scalar.length) {
		error_node(w, n, "%s must not contain NUL characters", subject);
		return NULL;
	}
	if ((s->flags & STR_NONEMPTY) && !*t) {
		error_node(w, n, "%s must not be empty", subject);
		return NULL;
	}
	if ((s->flags & STR_ABSOLUTE) && *t != '/') {
		error_node(w, n, "%s must be an absolute path, not '%s'", subject, shown(t, b));
		return NULL;
	}
	if (s->valid && !s->valid(w, n, subject, t))
		return NULL;
	if ((s->flags & STR_PATH) && *t) {
		_cleanup_free_ char *abs = path_resolve(w->dir, t);
		return with_pos(w, n, json_object_new_string(abs));
	}
	return with_pos(w, n, json_object_new_string(t));
}

static json_object *convert_list(struct walk *w, yaml_node_t *n, const struct schema *s,
                                 const char *subject)
{
	if (n->type != YAML_SEQUENCE_NODE) {
		error_node(w, n, "%s must be a list, not %s", subject, describe(n));
		return NULL;
	}
	_cleanup_free_ char *item_subject = xasprintf("each item of %s", subject);
	json_object *a = with_pos(w, n, json_object_new_array());
	for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top;
	     i++) {
		yaml_node_t *v = node(w, *i);
		json_object *o = v ? convert(w, v, s->item, item_subject) : NULL;
		if (o)
			json_object_array_add(a, o);
	}
	if (s->check)
		s->check(w, n, a);
	return a;
}

/* Checks that a mapping key is a string and not given twice; returns it or NULL. */
static const char *map_key(struct walk *w, yaml_node_t *k, json_object *seen)
{
	char b[64];
	if (k->type != YAML_SCALAR_NODE || is_null(k)) {
		error_node(w, k, "keys must be strings, not %s", describe(k));
		return NULL;
	}
	const char *key = text(k);
	if (strlen(key) != k->data.scalar.length) {
		error_node(w, k, "keys must not contain NUL characters");
		return NULL;
	}
	if (json_object_object_get_ex(seen, key, NULL)) {
		error_node(w, k, "duplicate key '%s'", shown(key, b));
		return NULL;
	}
	json_object_object_add(seen, key, NULL);
	return key;
}

static json_object *convert_map(struct walk *w, yaml_node_t *n, const struct schema *s,
                                const char *subject)
{
	char b[64];
	if (n->type != YAML_MAPPING_NODE) {
		error_node(w, n, "%s must be a mapping, not %s", subject, describe(n));
		return NULL;
	}
	size_t errors = w->l->n_errors;
	json_object *o = with_pos(w, n, json_object_new_object());
	json_object *seen = json_object_new_object();
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(w, p->key), *v = node(w, p->value);
		if (!k || !v)
			continue;
		const char *key = map_key(w, k, seen);
		if (!key)
			continue;
		const struct field *f = s->fields;
		while (f->key && strcmp(f->key, key) != 0)
			f++;
		if (!f->key) {
			bool denied = false;
			for (const char *const *d = s->denied; d && *d; d++)
				denied = denied || strcmp(*d, key) == 0;
			const char *hint = denied ? NULL : closest_key(key, s->fields);
			if (denied)
				error_node(w, k, "'%s' is not allowed %s", key, s->denied_where);
			else if (hint)
				error_node(w, k, "unknown key '%s' (did you mean '%s'?)",
				           shown(key, b), hint);
			else
				error_node(w, k, "unknown key '%s'", shown(key, b));
			continue;
		}
		_cleanup_free_ char *field_subject = xasprintf("'%s'", key);
		json_object *cv = convert(w, v, f->schema, field_subject);
		if (!cv)
			continue;
		key_pos(cv, &k->start_mark);
		json_object_object_add(o, key, cv);
	}
	for (const struct field *f = s->fields; f->key; f++)
		if (f->required && !json_object_object_get_ex(seen, f->key, NULL))
			error_node(w, n, "%s is missing required key '%s'",
			           s->what ? s->what : subject, f->key);
	json_object_put(seen);
	if (s->check)
		s->check(w, n, o);
	if (w->l->n_errors > errors)
		pos_mark_broken(o);
	return o;
}

static json_object *convert(struct walk *w, yaml_node_t *n, const struct schema *s,
                            const char *subject)
{
	char b[64];
	if (++w->l->visits > MAX_VISITS) {
		if (!w->l->too_many_nodes)
			error_node(w, n, "too many values: aliases expand this manifest beyond %d",
			           MAX_VISITS);
		w->l->too_many_nodes = true;
		return NULL;
	}
	switch (s->type) {
	case S_STRING:
		return convert_string(w, n, s, subject);
	case S_BOOL: {
		int v = bool_value(n);
		if (v < 0) {
			if (n->type == YAML_SCALAR_NODE && !is_null(n))
				error_node(w, n, "%s must be true or false (or yes/no), not '%s'",
				           subject, shown(text(n), b));
			else
				error_node(w, n, "%s must be true or false (or yes/no), not %s",
				           subject, describe(n));
			return NULL;
		}
		return with_pos(w, n, json_object_new_boolean(v));
	}
	case S_INT: {
		int64_t v;
		if (!int_value(n, &v)) {
			if (n->type == YAML_SCALAR_NODE && !is_null(n))
				error_node(w, n, "%s must be an integer, not '%s'", subject,
				           shown(text(n), b));
			else
				error_node(w, n, "%s must be an integer, not %s", subject,
				           describe(n));
			return NULL;
		}
		if (v < s->min || v > s->max) {
			error_node(w, n, "%s must be between %jd and %jd, not %jd", subject,
			           (intmax_t)s->min, (intmax_t)s->max, (intmax_t)v);
			return NULL;
		}
		return with_pos(w, n, json_object_new_int64(v));
	}
	case S_ENUM: {
		if (n->type == YAML_SCALAR_NODE && !is_null(n))
			for (const char *const *e = s->values; *e; e++)
				if (strcmp(*e, text(n)) == 0)
					return with_pos(w, n, json_object_new_string(*e));
		char list[256] = "";
		size_t len = 0;
		for (const char *const *e = s->values; *e; e++) {
			const char *sep = e == s->values ? "" : e[1] ? ", " : " or ";
			len += snprintf(list + len, sizeof(list) - len, "%s%s", sep, *e);
			if (len >= sizeof(list))
				break;
		}
		if (n->type == YAML_SCALAR_NODE && !is_null(n))
			error_node(w, n, "%s must be one of %s, not '%s'", subject, list,
			           shown(text(n), b));
		else
			error_node(w, n, "%s must be one of %s, not %s", subject, list,
			           describe(n));
		return NULL;
	}
	case S_LIST:
		return convert_list(w, n, s, subject);
	case S_STRINGS:
		if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
			json_object *one = convert(w, n, s->item, subject);
			if (!one)
				return NULL;
			json_object *a = with_pos(w, n, json_object_new_array());
			json_object_array_add(a, one);
			return a;
		}
		if (n->type != YAML_SEQUENCE_NODE) {
			error_node(w, n, "%s must be a string or a list of strings, not %s",
			           subject, describe(n));
			return NULL;
		}
		return convert_list(w, n, s, subject);
	case S_MAP:
		return convert_map(w, n, s, subject);
	case S_CUSTOM:
		return s->convert(w, n, subject);
	}
	return NULL;
}

/* ---- value checks ------------------------------------------------------------------------- */

static bool chars_in(const char *s, const char *first, const char *rest)
{
	if (!*s || !strchr(first, *s))
		return false;
	return strspn(s + 1, rest) == strlen(s + 1);
}

#define LOWER  "abcdefghijklmnopqrstuvwxyz"
#define UPPER  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define DIGITS "0123456789"

static bool valid_manifest_name(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	if (chars_in(v, LOWER DIGITS, LOWER DIGITS ".+_-"))
		return true;
	error_node(w, n,
	           "invalid name '%s': use lowercase letters, digits and . + _ -, starting with a "
	           "letter or digit",
	           shown(v, b));
	return false;
}

static bool valid_arch(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	if (chars_in(v, LOWER DIGITS, LOWER DIGITS "_-"))
		return true;
	error_node(w, n, "invalid architecture '%s' (like amd64, arm64 or x86_64)", shown(v, b));
	return false;
}

static bool valid_repo_name(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	if (chars_in(v, LOWER UPPER DIGITS, LOWER UPPER DIGITS "._+-"))
		return true;
	error_node(w, n,
	           "invalid repository name '%s': use letters, digits and . _ + -, starting with a "
	           "letter or digit",
	           shown(v, b));
	return false;
}

static bool valid_account(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	size_t l = strlen(v);
	/* Debian's NAME_REGEX (adduser.conf), which useradd accepts too. */
	bool ok = l <= 32 && l > 0 && strchr(LOWER "_", v[0]) &&
	          strspn(v, LOWER DIGITS "_-") >= l - 1 &&
	          (strspn(v, LOWER DIGITS "_-") == l || v[l - 1] == '$');
	if (ok)
		return true;
	error_node(
	    w, n,
	    "invalid name '%s': use lowercase letters, digits, _ and -, starting with a letter "
	    "or _ (at most 32)",
	    shown(v, b));
	return false;
}

static bool valid_hostname(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	if (strlen(v) <= 253 && chars_in(v, LOWER UPPER DIGITS, LOWER UPPER DIGITS ".-"))
		return true;
	error_node(w, n, "invalid hostname '%s': use letters, digits, . and - (at most 253)",
	           shown(v, b));
	return false;
}

static bool valid_owner(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	const char *colon = strchr(v, ':');
	bool ok = *v && *v != ':' && strcspn(v, " \t") == strlen(v) &&
	          (!colon || (colon[1] && !strchr(colon + 1, ':')));
	if (ok)
		return true;
	error_node(w, n, "%s must be 'user' or 'user:group', not '%s'", subject, shown(v, b));
	return false;
}

static bool valid_digest(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	char b[64];
	if (is_sha256_hex(v))
		return true;
	error_node(w, n, "%s must be a SHA-256 digest (64 lowercase hex digits), not '%s'", subject,
	           shown(v, b));
	return false;
}

static bool valid_package_name(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *name = NULL, *op = NULL, *version = NULL;
	if (manifest_parse_package(v, &name, &op, &version, &err) < 0) {
		error_node(w, n, "%s", err.msg);
		return false;
	}
	if (*op) {
		error_node(w, n, "%s takes package names without a version, not '%s'", subject, v);
		return false;
	}
	return true;
}

/* crypt(3) hashes are "$id$[param$]salt$hash"; "!" and "*" lock the account, and a leading
 * "!" locks one that has a hash. DES hashes (13 characters, no '$') are refused with the plain
 * text they cannot be told from. */
static bool valid_password(struct walk *w, yaml_node_t *n, const char *subject, const char *v)
{
	const char *h = v[0] == '!' ? v + 1 : v;
	if (strcmp(v, "!") == 0 || strcmp(v, "*") == 0 || strcmp(v, "!*") == 0)
		return true;
	if (h[0] == '$' && strspn(h + 1, LOWER DIGITS) > 0) {
		const char *rest = h + 1 + strspn(h + 1, LOWER DIGITS);
		if (rest[0] == '$' && rest[1] && strchr(rest + 1, '$') &&
		    strspn(rest, LOWER UPPER DIGITS "./$=,") == strlen(rest))
			return true;
	}
	/* The value itself is not repeated: it may be someone's password. */
	error_node(w, n,
	           "%s looks like a plain-text password; give a crypt(3) hash such as '$y$...' "
	           "(make one with 'mkpasswd -m yescrypt'), or '!' to lock the account",
	           subject);
	return false;
}

/* ---- custom values ------------------------------------------------------------------------ */

static const struct schema s_string = {S_STRING};
static const struct schema s_nonempty = {S_STRING, .flags = STR_NONEMPTY};
static const struct schema s_path = {S_STRING, .flags = STR_NONEMPTY | STR_PATH};
static const struct schema s_absolute = {S_STRING, .flags = STR_NONEMPTY | STR_ABSOLUTE};
static const struct schema s_bool = {S_BOOL};
static const struct schema s_strings = {S_LIST, .item = &s_nonempty};

static json_object *conv_when(struct walk *w, yaml_node_t *n, const char *subject)
{
	if (n->type != YAML_MAPPING_NODE) {
		error_node(w, n, "%s must be a mapping of facts to patterns, not %s", subject,
		           describe(n));
		return NULL;
	}
	json_object *o = with_pos(w, n, json_object_new_object());
	json_object *seen = json_object_new_object();
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(w, p->key), *v = node(w, p->value);
		const char *key = k && v ? map_key(w, k, seen) : NULL;
		if (!key)
			continue;
		_cleanup_free_ char *fact = xasprintf("fact '%s'", key);
		json_object *pats = NULL;
		if (!*key)
			error_node(w, k, "fact names must not be empty");
		else if (v->type == YAML_SCALAR_NODE && !is_null(v))
			pats = convert(w, v, &s_string, fact);
		else if (v->type == YAML_SEQUENCE_NODE &&
		         v->data.sequence.items.start == v->data.sequence.items.top)
			error_node(w, v, "%s needs at least one pattern", fact);
		else if (v->type == YAML_SEQUENCE_NODE)
			pats = convert(w, v, &s_strings, fact);
		else
			error_node(w, v, "%s must be a pattern or a list of patterns, not %s", fact,
			           describe(v));
		if (pats) {
			key_pos(pats, &k->start_mark);
			json_object_object_add(o, key, pats);
		}
	}
	json_object_put(seen);
	return o;
}

static const struct schema s_when = {S_CUSTOM, .convert = conv_when};

static const struct field package_fields[] = {
    {"name", &s_nonempty, true}, {"version", &s_nonempty}, {"when", &s_when}, {NULL}};
static const struct schema s_package_map = {S_MAP, .what = "package", .fields = package_fields};

/* name: and version: of a package mapping; the error goes to the value that is wrong. */
static int package_mapping(struct walk *w, json_object *m, char **name, char **op, char **version)
{
	struct mosaic_error err = {0};
	json_object *jn, *jv;
	if (!json_object_object_get_ex(m, "name", &jn))
		return -EINVAL; /* reported as missing */
	const struct pos *p = pos_of(jn);
	int r = manifest_parse_package(json_object_get_string(jn), name, op, version, &err);
	if (r == 0 && **op)
		r = mosaic_errorf(&err, -EINVAL,
		                  "the package name '%s' carries a version; give it in 'version'",
		                  json_object_get_string(jn));
	if (r == 0 && json_object_object_get_ex(m, "version", &jv)) {
		free(*op);
		free(*version);
		p = pos_of(jv);
		r = manifest_parse_constraint(*name, json_object_get_string(jv), op, version, &err);
	}
	if (r < 0)
		loader_error(w->l, w->file, p->line, p->col, "%s", err.msg);
	return r;
}

static json_object *conv_package(struct walk *w, yaml_node_t *n, const char *subject)
{
	_cleanup_free_ char *name = NULL, *op = NULL, *version = NULL;
	json_object *when = NULL;
	if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
		struct mosaic_error err = {0};
		json_object *s = convert(w, n, &s_string, subject);
		if (!s)
			return NULL;
		int r =
		    manifest_parse_package(json_object_get_string(s), &name, &op, &version, &err);
		json_object_put(s);
		if (r < 0) {
			error_node(w, n, "%s", err.msg);
			return NULL;
		}
	} else if (n->type == YAML_MAPPING_NODE) {
		json_object *m = convert(w, n, &s_package_map, subject);
		if (!m)
			return NULL;
		int r = package_mapping(w, m, &name, &op, &version);
		if (r == 0 && json_object_object_get_ex(m, "when", &when))
			json_object_get(when);
		json_object_put(m);
		if (r < 0)
			return NULL;
	} else {
		error_node(w, n, "%s must be a package name or a mapping, not %s", subject,
		           describe(n));
		return NULL;
	}
	json_object *o = with_pos(w, n, json_object_new_object());
	json_object_object_add(o, "name", json_object_new_string(name));
	if (*op) {
		json_object_object_add(o, "op", json_object_new_string(op));
		json_object_object_add(o, "version", json_object_new_string(version));
	}
	if (when)
		json_object_object_add(o, "when", when);
	return o;
}

/* A fragment reference in base: is a path when it looks like one (as on the command line). */
static bool looks_like_path(const char *s)
{
	size_t l = strlen(s);
	return strchr(s, '/') || (l > 5 && strcmp(s + l - 5, ".sqfs") == 0);
}

/* Exactly (or, with optional, at most) one of keys in o; names the second key given. */
static bool one_of(struct walk *w, yaml_node_t *n, json_object *o, const char *const *keys,
                   const char *what, bool optional)
{
	const char *first = NULL;
	json_object_object_foreach(o, k, v)
	{
		bool member = false;
		for (const char *const *key = keys; *key; key++)
			member = member || strcmp(*key, k) == 0;
		if (!member)
			continue;
		if (first) {
			const struct pos *p = pos_of(v);
			loader_error(w->l, w->file, p->kline, p->kcol,
			             "'%s' and '%s' cannot both be given in %s; use one", first, k,
			             what);
			return false;
		}
		first = k;
	}
	if (first || optional)
		return true;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(w, p->key);
		for (const char *const *key = keys; k && k->type == YAML_SCALAR_NODE && *key; key++)
			if (strcmp(text(k), *key) == 0)
				return false; /* given but invalid: that was reported */
	}
	char list[128] = "";
	size_t len = 0;
	for (const char *const *key = keys; *key; key++)
		len += snprintf(list + len, sizeof(list) - len, "%s'%s'",
		                key == keys ? ""
		                : key[1]    ? ", "
		                            : " or ",
		                *key);
	error_node(w, n, "%s needs one of %s", what, list);
	return false;
}

static const struct field fragment_fields[] = {
    {"path", &s_path},
    {"digest", &(const struct schema){S_STRING, .valid = valid_digest}},
    {"dev", &s_bool},
    {"name", &s_nonempty},
    {NULL}};
static const struct schema s_fragment_map = {S_MAP, .what = "fragment", .fields = fragment_fields};

static json_object *conv_fragment(struct walk *w, yaml_node_t *n, const char *subject)
{
	if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
		json_object *s = convert(w, n, &s_nonempty, subject);
		if (!s)
			return NULL;
		json_object *o = with_pos(w, n, json_object_new_object());
		if (is_sha256_hex(json_object_get_string(s))) {
			json_object_object_add(o, "digest", s);
		} else {
			_cleanup_free_ char *abs = path_resolve(w->dir, json_object_get_string(s));
			json_object_put(s);
			json_object_object_add(o, "path", json_object_new_string(abs));
			json_object_object_add(o, "dev", json_object_new_boolean(false));
		}
		return o;
	}
	if (n->type != YAML_MAPPING_NODE) {
		error_node(w, n, "%s must be a path, a digest or a mapping, not %s", subject,
		           describe(n));
		return NULL;
	}
	json_object *o = convert(w, n, &s_fragment_map, subject);
	if (!o)
		return NULL;
	static const char *const keys[] = {"path", "digest", NULL};
	if (!one_of(w, n, o, keys, "a fragment", false)) {
		json_object_put(o);
		return NULL;
	}
	if (json_object_object_get_ex(o, "digest", NULL)) {
		json_object_object_foreach(o, k, v)
		{
			if (strcmp(k, "digest") == 0)
				continue;
			const struct pos *p = pos_of(v);
			loader_error(w->l, w->file, p->kline, p->kcol,
			             "'%s' is only allowed with 'path'", k);
			json_object_put(o);
			return NULL;
		}
	} else if (!json_object_object_get_ex(o, "dev", NULL)) {
		json_object_object_add(o, "dev", json_object_new_boolean(false));
	}
	return o;
}

static const struct field run_fields[] = {
    {"command", &s_nonempty, true}, {"name", &s_nonempty}, {NULL}};
static const struct schema s_run_map = {S_MAP, .what = "run step", .fields = run_fields};

static json_object *conv_run(struct walk *w, yaml_node_t *n, const char *subject)
{
	json_object *o;
	if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
		json_object *c = convert(w, n, &s_nonempty, subject);
		if (!c)
			return NULL;
		o = with_pos(w, n, json_object_new_object());
		json_object_object_add(o, "command", c);
	} else if (n->type == YAML_MAPPING_NODE) {
		o = convert(w, n, &s_run_map, subject);
		if (!o || !json_object_object_get_ex(o, "command", NULL)) {
			json_object_put(o);
			return NULL;
		}
	} else {
		error_node(w, n, "%s must be a shell command or a mapping, not %s", subject,
		           describe(n));
		return NULL;
	}
	/* Where the step is written, for messages when it fails later. */
	json_object_object_add(o, "file", json_object_new_string(w->path));
	json_object_object_add(o, "line", json_object_new_int((int)n->start_mark.line + 1));
	return o;
}

/* "2G", "512M", "1.5GiB" or a number of bytes. */
static json_object *conv_size(struct walk *w, yaml_node_t *n, const char *subject)
{
	char b[64];
	int64_t v;
	if (int_value(n, &v) && v >= 0)
		return with_pos(w, n, json_object_new_int64(v));
	if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
		const char *t = text(n), *p = t + strspn(t, DIGITS);
		bool ok = p > t;
		if (ok && *p == '.') {
			p++;
			ok = strspn(p, DIGITS) > 0;
			p += strspn(p, DIGITS);
		}
		if (ok && *p && strchr("KMGTPkmgtp", *p)) {
			p++;
			if (strcmp(p, "iB") == 0 || strcmp(p, "B") == 0)
				p += strlen(p);
		} else if (ok && strcmp(p, "B") == 0) {
			p++;
		}
		if (ok && !*p && strlen(t) == n->data.scalar.length)
			return with_pos(w, n, json_object_new_string(t));
		error_node(w, n, "%s must be a size like '2G' or a number of bytes, not '%s'",
		           subject, shown(t, b));
		return NULL;
	}
	error_node(w, n, "%s must be a size like '2G' or a number of bytes, not %s", subject,
	           describe(n));
	return NULL;
}

/* Octal digits, quoted or not: "mode: 644" means 0644, as chmod reads it. */
static json_object *conv_mode(struct walk *w, yaml_node_t *n, const char *subject)
{
	char b[64];
	if (n->type == YAML_SCALAR_NODE && !is_null(n)) {
		const char *t = text(n);
		size_t l = strlen(t);
		if (l >= 1 && l <= 4 && strspn(t, "01234567") == l && l == n->data.scalar.length) {
			char mode[8];
			snprintf(mode, sizeof(mode), "%04lo", strtoul(t, NULL, 8));
			return with_pos(w, n, json_object_new_string(mode));
		}
		error_node(w, n, "%s must be octal digits like \"0644\", not '%s'", subject,
		           shown(t, b));
		return NULL;
	}
	error_node(w, n, "%s must be octal digits like \"0644\", not %s", subject, describe(n));
	return NULL;
}

/* ---- sections ----------------------------------------------------------------------------- */

static void check_unique_names(struct walk *w, yaml_node_t *n, json_object *a)
{
	size_t len = json_object_array_length(a);
	for (size_t i = 1; i < len; i++) {
		json_object *name, *other;
		if (!json_object_object_get_ex(json_object_array_get_idx(a, i), "name", &name))
			continue;
		for (size_t j = 0; j < i; j++) {
			if (!json_object_object_get_ex(json_object_array_get_idx(a, j), "name",
			                               &other) ||
			    strcmp(json_object_get_string(name), json_object_get_string(other)) !=
			        0)
				continue;
			const struct pos *p = pos_of(name), *q = pos_of(other);
			loader_error(w->l, w->file, p->line, p->col,
			             "duplicate repository name '%s' (first at line %d)",
			             json_object_get_string(name), q->line);
			break;
		}
	}
}

static const struct field repo_fields[] = {
    {"name", &(const struct schema){S_STRING, .valid = valid_repo_name}, true},
    {"type", &(const struct schema){S_ENUM, .values = (const char *const[]){"deb", "rpm", NULL}}},
    {"uri", &s_nonempty},
    {"host", &s_bool},
    {"baseurl", &s_nonempty},
    {"suites", &(const struct schema){S_STRINGS, .item = &s_nonempty}},
    {"components", &s_strings},
    {"keyring", &s_path},
    {"priority", &(const struct schema){S_INT, .min = INT32_MIN, .max = INT32_MAX}},
    {"check_valid_until", &s_bool},
    {NULL}};
static const struct schema s_repo = {S_MAP, .what = "repository", .fields = repo_fields};
static const struct schema s_repositories = {S_LIST, .item = &s_repo, .check = check_unique_names};

static void check_base(struct walk *w, yaml_node_t *n, json_object *o)
{
	static const char *const keys[] = {"set", "fragment", "image", NULL};
	one_of(w, n, o, keys, "'base'", false);
	json_object *f;
	if (json_object_object_get_ex(o, "fragment", &f) &&
	    looks_like_path(json_object_get_string(f))) {
		_cleanup_free_ char *abs = path_resolve(w->dir, json_object_get_string(f));
		json_object *nf = json_object_new_string(abs);
		pos_copy(nf, f);
		json_object_object_add(o, "fragment", nf);
	}
}

static const struct field base_fields[] = {
    {"set", &(const struct schema){S_ENUM, .values = (const char *const[]){"essential", "required",
                                                                           "important", NULL}}},
    {"fragment", &s_nonempty},
    {"image", &s_path},
    {NULL}};
static const struct schema s_base = {S_MAP, .what = "'base'", .fields = base_fields,
                                     .check = check_base};

static const struct schema s_package = {S_CUSTOM, .convert = conv_package};
static const struct schema s_packages = {S_LIST, .item = &s_package};
static const struct schema s_exclude = {
    S_LIST, .item = &(const struct schema){S_STRING, .valid = valid_package_name}};
static const struct schema s_fragments = {
    S_LIST, .item = &(const struct schema){S_CUSTOM, .convert = conv_fragment}};
static const struct schema s_run = {S_LIST,
                                    .item = &(const struct schema){S_CUSTOM, .convert = conv_run}};

static const struct schema s_account_name = {S_STRING, .valid = valid_account};
static const struct schema s_id = {S_INT, .min = 0, .max = 4294967294};

static const struct field user_fields[] = {
    {"name", &s_account_name, true},
    {"uid", &s_id},
    {"gid", &s_id},
    {"groups", &(const struct schema){S_LIST, .item = &s_account_name}},
    {"password", &(const struct schema){S_STRING, .valid = valid_password}},
    {"ssh_keys", &s_strings},
    {"shell", &s_absolute},
    {"home", &s_absolute},
    {"sudo", &s_bool},
    {"system", &s_bool},
    {NULL}};
static const struct field group_fields[] = {
    {"name", &s_account_name, true}, {"gid", &s_id}, {"system", &s_bool}, {NULL}};
static const struct field services_fields[] = {
    {"enable", &s_strings}, {"disable", &s_strings}, {NULL}};

static void check_file(struct walk *w, yaml_node_t *n, json_object *o)
{
	static const char *const keys[] = {"content", "source", NULL};
	one_of(w, n, o, keys, "a file", false);
}

static const struct field file_fields[] = {
    {"path", &s_absolute, true},
    {"content", &s_string},
    {"source", &s_path},
    {"mode", &(const struct schema){S_CUSTOM, .convert = conv_mode}},
    {"owner", &(const struct schema){S_STRING, .valid = valid_owner}},
    {NULL}};

static const struct field config_fields[] = {
    {"hostname", &(const struct schema){S_STRING, .valid = valid_hostname}},
    {"timezone", &s_nonempty},
    {"locale", &s_nonempty},
    {"users",
     &(const struct schema){
         S_LIST, .item = &(const struct schema){S_MAP, .what = "user", .fields = user_fields}}},
    {"groups",
     &(const struct schema){
         S_LIST, .item = &(const struct schema){S_MAP, .what = "group", .fields = group_fields}}},
    {"services", &(const struct schema){S_MAP, .fields = services_fields}},
    {"files", &(const struct schema){S_LIST, .item = &(const struct schema){S_MAP, .what = "file",
                                                                            .fields = file_fields,
                                                                            .check = check_file}}},
    {"kernel_cmdline", &s_string},
    {NULL}};
static const struct schema s_config = {S_MAP, .fields = config_fields};

static const struct schema s_size = {S_CUSTOM, .convert = conv_size};
static const struct field partition_fields[] = {
    {"mountpoint", &s_absolute}, {"size", &s_size}, {"type", &s_nonempty}, {NULL}};
static const struct field export_fields[] = {
    {"format",
     &(const struct schema){S_ENUM, .values = (const char *const[]){"raw", "iso", "qcow2", "vmdk",
                                                                    "vhdx", "tar", NULL}},
     true},
    {"output", &s_path},
    {"filesystem",
     &(const struct schema){S_ENUM,
                            .values = (const char *const[]){"ext4", "erofs", "squashfs", NULL}}},
    {"bootloader",
     &(const struct schema){S_ENUM, .values = (const char *const[]){"systemd-boot", "grub", NULL}}},
    {"size", &s_size},
    {"free_space", &s_size},
    {"partitions",
     &(const struct schema){S_LIST, .item = &(const struct schema){S_MAP, .what = "partition",
                                                                   .fields = partition_fields}}},
    {NULL}};
static const struct schema s_exports = {
    S_LIST, .item = &(const struct schema){S_MAP, .what = "export", .fields = export_fields}};

/* What a layer may set: everything but the manifest's identity and structure. */
// clang-format off
#define BODY_FIELDS                                                                                \
	{"repositories", &s_repositories}, {"base", &s_base}, {"packages", &s_packages},           \
	{"recommends", &s_bool}, {"merged_usr", &s_bool}, {"exclude", &s_exclude},                 \
	{"fragments", &s_fragments}, {"config", &s_config}, {"run", &s_run}, {"export", &s_exports}
// clang-format on

static const struct field layer_fields[] = {{"when", &s_when, true}, BODY_FIELDS, {NULL}};
static const struct schema s_layer = {
    S_MAP, .what = "layer", .fields = layer_fields,
    .denied = (const char *const[]){"name", "arch", "include", "layers", NULL},
    .denied_where = "in a layer"};

static const struct field top_fields[] = {
    {"name", &(const struct schema){S_STRING, .valid = valid_manifest_name}},
    {"arch", &(const struct schema){S_STRING, .valid = valid_arch}},
    /* Resolved by the loader, which also wants the text as written for messages. */
    {"include", &(const struct schema){S_STRINGS, .item = &s_nonempty}},
    BODY_FIELDS,
    {"layers", &(const struct schema){S_LIST, .item = &s_layer}},
    {NULL}};
static const struct schema s_top = {S_MAP, .what = "manifest", .fields = top_fields};

json_object *schema_convert(struct loader *l, yaml_document_t *doc, const char *file,
                            const char *path, const char *dir)
{
	struct walk w = {.l = l, .doc = doc, .file = file, .path = path, .dir = dir};
	yaml_node_t *root = yaml_document_get_root_node(doc);
	if (!root) {
		loader_error(l, file, 1, 1,
		             "the manifest is empty (expected a mapping with 'name')");
		return NULL;
	}
	if (root->type != YAML_MAPPING_NODE) {
		error_node(&w, root, "the manifest must be a mapping, not %s", describe(root));
		return NULL;
	}
	/* A name that is given but invalid is reported as such, not as missing after merging. */
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(&w, p->key);
		if (k && k->type == YAML_SCALAR_NODE && strcmp(text(k), "name") == 0)
			l->name_given = true;
	}
	return convert(&w, root, &s_top, "manifest");
}

/* ---- after merging ------------------------------------------------------------------------ */

static bool get_bool(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* Puts o's keys in the order of fields (others after them). */
static void reorder(json_object *o, const struct field *fields)
{
	json_object *tmp = json_object_new_object();
	json_object_object_foreach(o, k, v)
	{
		json_object_object_add(tmp, k, json_object_get(v));
	}
	json_object_object_foreach(tmp, dk, dv)
	{
		(void)dv;
		json_object_object_del(o, dk);
	}
	for (const struct field *f = fields; f->key; f++) {
		json_object *v;
		if (json_object_object_get_ex(tmp, f->key, &v))
			json_object_object_add(o, f->key, json_object_get(v));
	}
	json_object_object_foreach(tmp, ak, av)
	{
		if (!json_object_object_get_ex(o, ak, NULL))
			json_object_object_add(o, ak, json_object_get(av));
	}
	json_object_put(tmp);
}

static void check_repository(struct loader *l, json_object *r)
{
	const struct pos *rp = pos_of(r);
	json_object *type, *v;
	if (rp->broken)
		return; /* what is wrong inside was reported; more would be guesses */
	if (!json_object_object_get_ex(r, "type", &type)) {
		loader_error(l, rp->file, rp->line, rp->col,
		             "repository is missing required key 'type'");
		return;
	}
	bool deb = strcmp(json_object_get_string(type), "deb") == 0;
	static const char *const deb_only[] = {"uri", "host", "suites", "components", NULL};
	for (const char *const *k = deb ? (const char *const[]){"baseurl", NULL} : deb_only; *k;
	     k++) {
		if (!json_object_object_get_ex(r, *k, &v))
			continue;
		const struct pos *p = pos_of(v);
		loader_error(l, p->file, p->kline, p->kcol,
		             "'%s' is not allowed in %s repository%s", *k, deb ? "a deb" : "an rpm",
		             strcmp(*k, "uri") == 0       ? " (use 'baseurl')"
		             : strcmp(*k, "baseurl") == 0 ? " (use 'uri')"
		                                          : "");
	}
	bool host = get_bool(r, "host");
	if (deb) {
		json_object *uri = NULL;
		json_object_object_get_ex(r, "uri", &uri);
		if (uri && host) {
			json_object_object_get_ex(r, "host", &v);
			const struct pos *p = pos_of(v);
			loader_error(l, p->file, p->kline, p->kcol,
			             "'uri' and 'host: true' cannot both be given in a repository; "
			             "use one");
		} else if (!uri && !host) {
			loader_error(l, rp->file, rp->line, rp->col,
			             "deb repository needs 'uri' or 'host: true'");
		} else if (uri && !json_object_object_get_ex(r, "suites", NULL)) {
			loader_error(l, rp->file, rp->line, rp->col,
			             "repository is missing required key 'suites'");
		}
		if (!json_object_object_get_ex(r, "components", NULL)) {
			json_object *c = json_object_new_array();
			json_object_array_add(c, json_object_new_string("main"));
			json_object_object_add(r, "components", c);
		}
	} else if (!json_object_object_get_ex(r, "baseurl", NULL)) {
		loader_error(l, rp->file, rp->line, rp->col,
		             "repository is missing required key 'baseurl'");
	}
	if (!host && !json_object_object_get_ex(r, "keyring", NULL))
		loader_error(l, rp->file, rp->line, rp->col,
		             "repository is missing required key 'keyring'");
	if (!json_object_object_get_ex(r, "priority", NULL))
		json_object_object_add(r, "priority", json_object_new_int(0));
	if (!json_object_object_get_ex(r, "check_valid_until", NULL))
		json_object_object_add(r, "check_valid_until", json_object_new_boolean(true));
	reorder(r, repo_fields);
}

void schema_check_model(struct loader *l, json_object *model)
{
	json_object *repos;
	if (json_object_object_get_ex(model, "repositories", &repos))
		for (size_t i = 0; i < json_object_array_length(repos); i++)
			check_repository(l, json_object_array_get_idx(repos, i));
	if (!json_object_object_get_ex(model, "recommends", NULL))
		json_object_object_add(model, "recommends", json_object_new_boolean(false));
	if (!json_object_object_get_ex(model, "merged_usr", NULL))
		json_object_object_add(model, "merged_usr", json_object_new_boolean(false));
	reorder(model, top_fields);
}
