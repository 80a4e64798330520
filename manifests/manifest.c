/* Loading a manifest: read and parse each file with libyaml, check it against the schema, follow
 * include:s (each file once, cycles refused), merge in order, apply the layers whose when:
 * matches the facts, check the merged model and hand it out without positions. */
#include "manifests/internal.h"

#include <fnmatch.h>
#include <limits.h>
#include <string.h>

#define MAX_MANIFEST_SIZE (16u << 20)
#define MAX_INCLUDE_DEPTH 32
#define MAX_NESTING       100

struct mfile {
	char *display; /* as messages name it: the include as written, below the includer's dir */
	char *path;    /* absolute (lexically): the base of its relative paths */
	char *real;    /* realpath, the identity for cycles and include-once; NULL for a buffer */
	char *dir;
	json_object *body; /* converted; NULL when the file did not even parse */
	struct mfile **includes;
	size_t n_includes;
	bool merged, arch_seen;
};

struct load {
	struct loader l;
	struct mfile **files; /* every file read, in order; owns them */
	size_t n_files;
	struct mfile *stack[MAX_INCLUDE_DEPTH + 1]; /* the chain of includes being read */
	size_t depth;
	bool from_buffer;
};

/* ---- paths -------------------------------------------------------------------------------- */

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return xstrdup(".");
	if (slash == path)
		return xstrdup("/");
	return xstrndup(path, slash - path);
}

/* ---- reading ------------------------------------------------------------------------------ */

static void yaml_problem(struct load *ld, struct mfile *f, yaml_parser_t *p, const char *data,
                         size_t len)
{
	if (p->error == YAML_MEMORY_ERROR) {
		fputs("mosaic: out of memory\n", stderr);
		abort();
	}
	const char *problem = p->problem ? p->problem : "invalid YAML";
	int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
	if (p->error == YAML_READER_ERROR) {
		/* Reader errors carry a byte offset, not a mark. */
		line = col = 1;
		for (size_t i = 0; i < p->problem_offset && i < len; i++) {
			if (data[i] == '\n') {
				line++;
				col = 1;
			} else if (((unsigned char)data[i] & 0xc0) != 0x80) {
				col++;
			}
		}
		if (p->problem_value != -1)
			loader_error(&ld->l, f->display, line, col, "%s (byte 0x%02x)", problem,
			             (unsigned)p->problem_value & 0xff);
		else
			loader_error(&ld->l, f->display, line, col, "%s", problem);
		return;
	}
	if (p->context)
		loader_error(&ld->l, f->display, line, col, "%s (%s at %zu:%zu)", problem,
		             p->context, p->context_mark.line + 1, p->context_mark.column + 1);
	else
		loader_error(&ld->l, f->display, line, col, "%s", problem);
}

/* libyaml 0.2.5 rescans every open flow collection for each token, which is quadratic in the
 * nesting depth, and has no limit of its own: a first pass over the events refuses deep nesting
 * before anything is loaded. Syntax errors are left to the load, which stops at the same place. */
static bool nesting_ok(struct load *ld, struct mfile *f, const char *data, size_t len)
{
	yaml_parser_t parser;
	yaml_event_t event;
	if (!yaml_parser_initialize(&parser)) {
		fputs("mosaic: out of memory\n", stderr);
		abort();
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
	bool ok = true;
	int depth = 0;
	while (yaml_parser_parse(&parser, &event)) {
		yaml_event_type_t type = event.type;
		if (type == YAML_SEQUENCE_START_EVENT || type == YAML_MAPPING_START_EVENT) {
			if (++depth > MAX_NESTING) {
				loader_error(&ld->l, f->display, (int)event.start_mark.line + 1,
				             (int)event.start_mark.column + 1,
				             "lists and mappings nest deeper than %d levels",
				             MAX_NESTING);
				ok = false;
			}
		} else if (type == YAML_SEQUENCE_END_EVENT || type == YAML_MAPPING_END_EVENT) {
			depth--;
		}
		yaml_event_delete(&event);
		if (!ok || type == YAML_STREAM_END_EVENT)
			break;
	}
	yaml_parser_delete(&parser);
	return ok;
}

static json_object *parse(struct load *ld, struct mfile *f, const char *data, size_t len)
{
	if (!nesting_ok(ld, f, data, len))
		return NULL;
	yaml_parser_t parser;
	yaml_document_t doc;
	if (!yaml_parser_initialize(&parser)) {
		fputs("mosaic: out of memory\n", stderr);
		abort();
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
	json_object *body = NULL;
	if (!yaml_parser_load(&parser, &doc)) {
		yaml_problem(ld, f, &parser, data, len);
	} else {
		body = schema_convert(&ld->l, &doc, f->display, f->path, f->dir);
		yaml_document_delete(&doc);
		/* A second document would otherwise be ignored without a word. */
		if (!yaml_parser_load(&parser, &doc)) {
			yaml_problem(ld, f, &parser, data, len);
		} else {
			if (yaml_document_get_root_node(&doc))
				loader_error(
				    &ld->l, f->display, (int)doc.start_mark.line + 1,
				    (int)doc.start_mark.column + 1,
				    "a manifest is one YAML document, this is a second one");
			yaml_document_delete(&doc);
		}
	}
	yaml_parser_delete(&parser);
	return body;
}

static struct mfile *mfile_new(struct load *ld, const char *display, const char *path,
                               const char *real)
{
	struct mfile *f = xcalloc(1, sizeof(*f));
	f->display = xstrdup(display);
	f->path = xstrdup(path);
	f->real = real ? xstrdup(real) : NULL;
	f->dir = dir_of(path);
	ld->files = xrealloc(ld->files, (ld->n_files + 1) * sizeof(*ld->files));
	ld->files[ld->n_files++] = f;
	ld->l.file_order = xrealloc(ld->l.file_order, ld->n_files * sizeof(*ld->l.file_order));
	ld->l.file_order[ld->l.n_files++] = f->display;
	return f;
}

static void mfile_free(struct mfile *f)
{
	free(f->display);
	free(f->path);
	free(f->real);
	free(f->dir);
	json_object_put(f->body);
	free(f->includes);
	free(f);
}

static const char *base_name(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

static struct mfile *load(struct load *ld, const char *display, const char *path, const char *real,
                          const char *data, size_t len);

static void include_one(struct load *ld, struct mfile *f, json_object *item)
{
	const char *written = json_object_get_string(item);
	_cleanup_free_ char *path = path_resolve(f->dir, written);
	_cleanup_free_ char *display_dir = dir_of(f->display);
	_cleanup_free_ char *display = path_resolve(display_dir, written);
	_cleanup_free_ char *real = realpath(path, NULL);
	if (!real) {
		loader_error_at(&ld->l, item, false, "cannot include '%s': %s", written,
		                strerror(errno));
		return;
	}
	for (size_t i = 0; i < ld->depth; i++) {
		if (strcmp(ld->stack[i]->real, real) != 0)
			continue;
		char chain[512];
		size_t len = 0;
		for (size_t j = i; j < ld->depth && len < sizeof(chain); j++)
			len += snprintf(chain + len, sizeof(chain) - len, "%s → ",
			                base_name(ld->stack[j]->display));
		if (len < sizeof(chain))
			snprintf(chain + len, sizeof(chain) - len, "%s", base_name(display));
		loader_error_at(&ld->l, item, false, "include cycle: %s", chain);
		return;
	}
	struct mfile *child = NULL;
	for (size_t i = 0; i < ld->n_files && !child; i++)
		if (ld->files[i]->real && strcmp(ld->files[i]->real, real) == 0)
			child =
			    ld->files[i]; /* included before: merged once, where first included */
	if (!child) {
		if (ld->depth >= MAX_INCLUDE_DEPTH) {
			loader_error_at(&ld->l, item, false, "includes nest deeper than %d",
			                MAX_INCLUDE_DEPTH);
			return;
		}
		_cleanup_free_ char *data = NULL;
		size_t len;
		int r = read_file(path, MAX_MANIFEST_SIZE, &data, &len);
		if (r < 0) {
			loader_error_at(&ld->l, item, false, "cannot include '%s': %s", written,
			                r == -EFBIG ? "larger than 16 MiB" : strerror(-r));
			return;
		}
		child = load(ld, display, path, real, data, len);
	}
	f->includes = xrealloc(f->includes, (f->n_includes + 1) * sizeof(*f->includes));
	f->includes[f->n_includes++] = child;
}

/* Reads one file's document and, depth first, what it includes. */
static struct mfile *load(struct load *ld, const char *display, const char *path, const char *real,
                          const char *data, size_t len)
{
	struct mfile *f = mfile_new(ld, display, path, real);
	f->body = parse(ld, f, data, len);
	json_object *inc;
	if (!f->body || !json_object_object_get_ex(f->body, "include", &inc))
		return f;
	if (ld->from_buffer) {
		loader_error_at(&ld->l, inc, true,
		                "'include' needs a manifest read from a file, not from a buffer");
		return f;
	}
	ld->stack[ld->depth++] = f;
	for (size_t i = 0; i < json_object_array_length(inc); i++)
		include_one(ld, f, json_object_array_get_idx(inc, i));
	ld->depth--;
	return f;
}

/* ---- facts and conditions ----------------------------------------------------------------- */

static bool fact_matches(json_object *value, json_object *patterns)
{
	if (!value || json_object_is_type(value, json_type_null))
		return false;
	const char *v = json_object_get_string(value);
	if (json_object_is_type(patterns, json_type_string))
		return fnmatch(json_object_get_string(patterns), v, 0) == 0;
	for (size_t i = 0; i < json_object_array_length(patterns); i++)
		if (fnmatch(json_object_get_string(json_object_array_get_idx(patterns, i)), v, 0) ==
		    0)
			return true;
	return false;
}

/* Every fact named must match one of its patterns; a list-valued fact matches when any of its
 * elements does; an absent fact matches nothing. */
static bool when_matches(json_object *when, json_object *facts)
{
	json_object_object_foreach(when, name, patterns)
	{
		json_object *value;
		if (!facts || !json_object_object_get_ex(facts, name, &value) || !value)
			return false;
		bool any = false;
		if (json_object_is_type(value, json_type_array)) {
			for (size_t i = 0; i < json_object_array_length(value) && !any; i++)
				any = fact_matches(json_object_array_get_idx(value, i), patterns);
		} else {
			any = fact_matches(value, patterns);
		}
		if (!any)
			return false;
	}
	return true;
}

/* The architecture every when: sees: the manifest's own (last one set, in merge order). */
static void find_arch(struct mfile *f, json_object **arch)
{
	if (f->arch_seen || !f->body)
		return;
	f->arch_seen = true;
	for (size_t i = 0; i < f->n_includes; i++)
		find_arch(f->includes[i], arch);
	json_object *a;
	if (json_object_object_get_ex(f->body, "arch", &a))
		*arch = a;
}

/* ---- merging ------------------------------------------------------------------------------ */

static json_object *find_named(json_object *list, const char *name, size_t *idx)
{
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *item = json_object_array_get_idx(list, i), *n;
		if (json_object_object_get_ex(item, "name", &n) &&
		    strcmp(json_object_get_string(n), name) == 0) {
			if (idx)
				*idx = i;
			return item;
		}
	}
	return NULL;
}

/* A later package entry replaces an earlier one of the same name where it stood. */
static void merge_packages(json_object *dst, json_object *src, json_object *facts)
{
	for (size_t i = 0; i < json_object_array_length(src); i++) {
		json_object *p = json_object_array_get_idx(src, i), *when, *name;
		if (json_object_object_get_ex(p, "when", &when)) {
			if (!when_matches(when, facts))
				continue;
			json_object_object_del(p, "when");
		}
		size_t idx;
		if (!json_object_object_get_ex(p, "name", &name))
			continue;
		if (find_named(dst, json_object_get_string(name), &idx))
			json_object_array_put_idx(dst, idx, json_object_get(p));
		else
			json_object_array_add(dst, json_object_get(p));
	}
}

/* A later repository of the same name overrides the keys it gives; a later 'uri' or 'host:
 * true' replaces the other way of naming the archive. */
static void merge_repositories(json_object *dst, json_object *src)
{
	for (size_t i = 0; i < json_object_array_length(src); i++) {
		json_object *r = json_object_array_get_idx(src, i), *name, *host;
		if (!json_object_object_get_ex(r, "name", &name))
			continue;
		json_object *cur = find_named(dst, json_object_get_string(name), NULL);
		if (!cur) {
			json_object_array_add(dst, json_object_get(r));
			continue;
		}
		if (pos_of(r)->broken)
			pos_mark_broken(cur);
		if (json_object_object_get_ex(r, "uri", NULL))
			json_object_object_del(cur, "host");
		if (json_object_object_get_ex(r, "host", &host) && json_object_get_boolean(host))
			json_object_object_del(cur, "uri");
		json_object_object_foreach(r, k, v)
		{
			json_object_object_add(cur, k, json_object_get(v));
		}
	}
}

static void merge_unique(json_object *dst, json_object *src)
{
	for (size_t i = 0; i < json_object_array_length(src); i++) {
		json_object *s = json_object_array_get_idx(src, i);
		bool seen = false;
		for (size_t j = 0; j < json_object_array_length(dst) && !seen; j++)
			seen = strcmp(json_object_get_string(json_object_array_get_idx(dst, j)),
			              json_object_get_string(s)) == 0;
		if (!seen)
			json_object_array_add(dst, json_object_get(s));
	}
}

/* Mappings merge key by key, lists append, scalars replace. */
static void merge_object(json_object *dst, json_object *src)
{
	json_object_object_foreach(src, k, v)
	{
		json_object *cur = NULL;
		if (json_object_object_get_ex(dst, k, &cur) && cur &&
		    json_object_get_type(cur) == json_object_get_type(v) &&
		    json_object_is_type(v, json_type_object)) {
			merge_object(cur, v);
		} else if (cur && json_object_get_type(cur) == json_object_get_type(v) &&
		           json_object_is_type(v, json_type_array)) {
			for (size_t i = 0; i < json_object_array_length(v); i++)
				json_object_array_add(
				    cur, json_object_get(json_object_array_get_idx(v, i)));
		} else {
			json_object_object_add(dst, k, json_object_get(v));
		}
	}
}

static json_object *list_in(json_object *model, const char *key)
{
	json_object *a;
	if (!json_object_object_get_ex(model, key, &a)) {
		a = json_object_new_array();
		json_object_object_add(model, key, a);
	}
	return a;
}

static void merge_body(json_object *model, json_object *body, json_object *facts)
{
	json_object_object_foreach(body, k, v)
	{
		json_object *cur;
		if (strcmp(k, "include") == 0 || strcmp(k, "layers") == 0 || strcmp(k, "when") == 0)
			continue;
		if (strcmp(k, "packages") == 0) {
			merge_packages(list_in(model, k), v, facts);
		} else if (strcmp(k, "repositories") == 0) {
			merge_repositories(list_in(model, k), v);
		} else if (strcmp(k, "exclude") == 0) {
			merge_unique(list_in(model, k), v);
		} else if (strcmp(k, "base") == 0 && json_object_object_get_ex(model, k, &cur)) {
			/* set, fragment and image are alternatives: the later one wins. */
			json_object_object_del(cur, "set");
			json_object_object_del(cur, "fragment");
			json_object_object_del(cur, "image");
			merge_object(cur, v);
		} else {
			json_object *one = json_object_new_object();
			json_object_object_add(one, k, json_object_get(v));
			merge_object(model, one);
			json_object_put(one);
		}
	}
}

static void merge_file(struct mfile *f, struct mfile *top, json_object *model, json_object *facts,
                       json_object *included)
{
	if (f->merged || !f->body)
		return;
	f->merged = true;
	for (size_t i = 0; i < f->n_includes; i++)
		merge_file(f->includes[i], top, model, facts, included);
	if (f != top)
		json_object_array_add(included, json_object_new_string(f->path));
	merge_body(model, f->body, facts);
	json_object *layers;
	if (!json_object_object_get_ex(f->body, "layers", &layers))
		return;
	for (size_t i = 0; i < json_object_array_length(layers); i++) {
		json_object *layer = json_object_array_get_idx(layers, i), *when;
		if (json_object_object_get_ex(layer, "when", &when) && when_matches(when, facts))
			merge_body(model, layer, facts);
	}
}

/* ---- the whole load ----------------------------------------------------------------------- */

static void load_free(struct load *ld)
{
	for (size_t i = 0; i < ld->n_files; i++)
		mfile_free(ld->files[i]);
	free(ld->files);
	for (size_t i = 0; i < ld->l.n_diags; i++)
		free(ld->l.diags[i].msg);
	free(ld->l.diags);
	free(ld->l.file_order);
}

static int load_all(struct load *ld, const char *display, const char *path, const char *real,
                    const char *data, size_t len, json_object *facts, json_object **out,
                    struct mosaic_error *err)
{
	struct mfile *top = load(ld, display, path, real, data, len);
	json_object *model = NULL;
	if (top->body) {
		json_object *arch = NULL, *fact_arch = NULL;
		find_arch(top, &arch);
		if (facts)
			json_object_object_get_ex(facts, "arch", &fact_arch);
		if (fact_arch && json_object_is_type(fact_arch, json_type_array))
			fact_arch = json_object_array_get_idx(fact_arch, 0);
		if (fact_arch && !json_object_is_type(fact_arch, json_type_string))
			fact_arch = NULL;

		/* The facts every when: sees, with the manifest's arch over the caller's default.
		 */
		json_object *seen = json_object_new_object();
		if (facts && json_object_is_type(facts, json_type_object)) {
			json_object_object_foreach(facts, k, v)
			{
				json_object_object_add(seen, k, json_object_get(v));
			}
		}
		if (arch)
			json_object_object_add(seen, "arch", json_object_get(arch));

		model = json_object_new_object();
		json_object *included = json_object_new_array();
		merge_file(top, top, model, seen, included);
		json_object_put(seen);
		if (json_object_array_length(included))
			json_object_object_add(model, "include", included);
		else
			json_object_put(included);
		if (!arch && fact_arch)
			json_object_object_add(model, "arch", json_object_get(fact_arch));
		if (!json_object_object_get_ex(model, "name", NULL) && !ld->l.name_given)
			loader_error_at(&ld->l, top->body, false,
			                "manifest is missing required key 'name'");
		schema_check_model(&ld->l, model);
	}
	if (ld->l.n_errors) {
		json_object_put(model);
		return loader_report(&ld->l, err);
	}
	pos_strip(model);
	*out = model;
	return 0;
}

int manifest_load(const char *path, json_object *facts, json_object **out, struct mosaic_error *err)
{
	*out = NULL;
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file(path, MAX_MANIFEST_SIZE, &data, &len);
	if (r < 0)
		return mosaic_errorf(err, r == -EINVAL ? -EIO : r, "%s: %s", path,
		                     r == -EFBIG ? "larger than 16 MiB" : strerror(-r));
	_cleanup_free_ char *real = realpath(path, NULL);
	if (!real)
		return mosaic_errorf(err, -errno, "%s: %s", path, strerror(errno));
	_cleanup_free_ char *cwd = getcwd(NULL, 0);
	_cleanup_free_ char *abs = path_resolve(cwd ? cwd : "/", path);
	struct load ld = {0};
	r = load_all(&ld, path, abs, real, data, len, facts, out, err);
	load_free(&ld);
	return r;
}

int manifest_load_buffer(const char *name, const char *data, size_t len, json_object *facts,
                         json_object **out, struct mosaic_error *err)
{
	*out = NULL;
	_cleanup_free_ char *cwd = getcwd(NULL, 0);
	_cleanup_free_ char *abs = path_resolve(cwd ? cwd : "/", name);
	struct load ld = {.from_buffer = true};
	int r = load_all(&ld, name, abs, NULL, data, len, facts, out, err);
	load_free(&ld);
	return r;
}
