/* The package request syntax of manifests: "name", "name:arch", "name (>= 1.2)", "name>=1.2",
 * "name = 1.2-3", with Debian's relation operators and their common spellings. */
#include "manifests/internal.h"

#include <string.h>

static bool is_alnum(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_name_char(char c)
{
	return is_alnum(c) || c == '+' || c == '.' || c == '_' || c == '-';
}

static bool is_arch_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '_';
}

static bool is_version_char(char c)
{
	return is_alnum(c) || c == '.' || c == '+' || c == '~' || c == ':' || c == '_' || c == '-';
}

static bool is_op_char(char c)
{
	return c == '<' || c == '>' || c == '=' || c == '!' || c == '~';
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* Debian's operators, with "==", ">" and "<" as the spellings people also use. */
static const char *normalise_op(const char *op, size_t n)
{
	static const struct {
		const char *in, *out;
	} ops[] = {{"=", "="},   {"==", "="},  {">=", ">="}, {"<=", "<="},
	           {">>", ">>"}, {"<<", "<<"}, {">", ">>"},  {"<", "<<"}};
	for (size_t i = 0; i < ARRAY_SIZE(ops); i++)
		if (strlen(ops[i].in) == n && memcmp(ops[i].in, op, n) == 0)
			return ops[i].out;
	return NULL;
}

static int check_version(const char *spec, const char *v, struct mosaic_error *err)
{
	if (!(*v >= '0' && *v <= '9'))
		return mosaic_errorf(
		    err, -EINVAL,
		    "malformed version constraint in '%s': version '%s' must start "
		    "with a digit",
		    spec, v);
	for (const char *c = v; *c; c++)
		if (!is_version_char(*c))
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed version constraint in '%s': '%c' is not allowed "
			    "in a version",
			    spec, *c);
	const char *colon = strchr(v, ':');
	if (colon) {
		for (const char *c = v; c < colon; c++)
			if (!(*c >= '0' && *c <= '9'))
				return mosaic_errorf(
				    err, -EINVAL,
				    "malformed version constraint in '%s': the epoch "
				    "before ':' must be a number",
				    spec);
		if (!(colon[1] >= '0' && colon[1] <= '9'))
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed version constraint in '%s': the version after "
			    "the epoch must start with a digit",
			    spec);
	}
	return 0;
}

int manifest_parse_package(const char *spec, char **name, char **op, char **version,
                           struct mosaic_error *err)
{
	if (name)
		*name = NULL;
	if (op)
		*op = NULL;
	if (version)
		*version = NULL;

	const char *p = spec;
	while (is_space(*p))
		p++;
	if (!*p)
		return mosaic_errorf(err, -EINVAL, "empty package name");
	if (!is_alnum(*p))
		return mosaic_errorf(err, -EINVAL,
		                     "malformed package name '%s': a name must start with a letter "
		                     "or a digit",
		                     spec);
	const char *name_start = p;
	while (is_name_char(*p))
		p++;
	if (*p == ':') {
		p++;
		if (!is_arch_char(*p) || *p == '-')
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed package name '%s': expected an architecture "
			    "after ':'",
			    spec);
		while (is_arch_char(*p))
			p++;
	}
	const char *name_end = p;
	while (is_space(*p))
		p++;

	const char *the_op = "";
	_cleanup_free_ char *ver = NULL;
	if (*p) {
		bool paren = *p == '(';
		if (paren) {
			p++;
			while (is_space(*p))
				p++;
		}
		const char *op_start = p;
		while (is_op_char(*p))
			p++;
		if (p == op_start) {
			if (paren || (*p >= '0' && *p <= '9'))
				return mosaic_errorf(
				    err, -EINVAL,
				    "malformed version constraint in '%s': expected an "
				    "operator (=, >=, <=, >>, <<) before the version",
				    spec);
			if (p == name_end)
				return mosaic_errorf(
				    err, -EINVAL,
				    "malformed package name '%s': '%c' is not allowed in "
				    "a package name (letters, digits and + . _ -)",
				    spec, *p);
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed package name '%s': unexpected '%s' after the "
			    "name (a version constraint looks like 'name (>= 1.2)')",
			    spec, p);
		}
		const char *op_end = p;
		the_op = normalise_op(op_start, p - op_start);
		if (!the_op)
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed version constraint in '%s': unknown operator "
			    "'%.*s' (use =, >=, <=, >>, <<, > or <)",
			    spec, (int)(p - op_start), op_start);
		while (is_space(*p))
			p++;
		const char *v = p;
		while (*p && !is_space(*p) && *p != ')' && *p != '(')
			p++;
		if (p == v)
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed version constraint in '%s': no version after "
			    "'%.*s'",
			    spec, (int)(op_end - op_start), op_start);
		ver = xstrndup(v, p - v);
		int r = check_version(spec, ver, err);
		if (r < 0)
			return r;
		while (is_space(*p))
			p++;
		if (paren) {
			if (*p != ')')
				return mosaic_errorf(
				    err, -EINVAL,
				    "malformed version constraint in '%s': missing ')'", spec);
			p++;
			while (is_space(*p))
				p++;
		} else if (*p == ')') {
			return mosaic_errorf(
			    err, -EINVAL, "malformed version constraint in '%s': ')' without '('",
			    spec);
		}
		if (*p)
			return mosaic_errorf(
			    err, -EINVAL,
			    "malformed version constraint in '%s': unexpected '%s' "
			    "after the version",
			    spec, p);
	}

	if (name)
		*name = xstrndup(name_start, name_end - name_start);
	if (op)
		*op = xstrdup(the_op);
	if (version)
		*version = ver ? TAKE_PTR(ver) : xstrdup("");
	return 0;
}

int manifest_parse_constraint(const char *name, const char *constraint, char **op, char **version,
                              struct mosaic_error *err)
{
	const char *c = constraint;
	while (is_space(*c))
		c++;
	/* A bare version means exactly that version. */
	_cleanup_free_ char *spec = xasprintf("%s (%s%s)", name, is_op_char(*c) ? "" : "= ", c);
	_cleanup_free_ char *n = NULL;
	int r = manifest_parse_package(spec, &n, op, version, err);
	if (r < 0)
		return r;
	if (!**op) {
		free(*op);
		free(*version);
		*op = *version = NULL;
		return mosaic_errorf(err, -EINVAL, "malformed version constraint '%s'", constraint);
	}
	return 0;
}
