/* The lock file: the exact result of a resolution (and, after a build, the fragment made from
 * each package), so that a build can be repeated without resolving again. JSON in a fixed key
 * order with packages in installation order, so the same lock is the same bytes. */
#include "providers/providers.h"

#include <string.h>

#define LOCK_VERSION 1

void lock_clear(struct lock *l)
{
	free(l->name);
	free(l->arch);
	json_object_put(l->repositories);
	json_object_put(l->fragments);
	for (size_t i = 0; i < l->n_packages; i++)
		package_clear(&l->packages[i]);
	free(l->packages);
	*l = (struct lock){0};
}

static json_object *package_to_json(const struct package *p)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(p->name));
	json_object_object_add(o, "version", json_object_new_string(p->version));
	json_object_object_add(o, "arch", json_object_new_string(p->arch));
	json_object_object_add(o, "repository", json_object_new_string(p->repository));
	json_object_object_add(o, "location", json_object_new_string(p->location ? p->location : ""));
	json_object_object_add(o, "sha256", json_object_new_string(p->sha256));
	json_object_object_add(o, "size", json_object_new_int64((int64_t)p->size));
	json_object_object_add(o, "base", json_object_new_boolean(p->base));
	json_object_object_add(o, "essential", json_object_new_boolean(p->essential));
	json_object_object_add(o, "fragment",
	                       p->fragment[0] ? json_object_new_string(p->fragment) : NULL);
	return o;
}

int lock_write(const char *path, const struct lock *l, struct mosaic_error *err)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(LOCK_VERSION));
	json_object_object_add(o, "name", json_object_new_string(l->name));
	json_object_object_add(o, "arch", json_object_new_string(l->arch));
	json_object_object_add(o, "input", json_object_new_string(l->input));
	json_object_object_add(o, "repositories", json_object_get(l->repositories));
	json_object *pk = json_object_new_array();
	for (size_t i = 0; i < l->n_packages; i++)
		json_object_array_add(pk, package_to_json(&l->packages[i]));
	json_object_object_add(o, "packages", pk);
	json_object_object_add(o, "fragments",
	                       l->fragments ? json_object_get(l->fragments) :
	                                      json_object_new_array());
	const char *s = json_object_to_json_string_ext(
	    o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
	_cleanup_free_ char *text = xasprintf("%s\n", s);
	json_object_put(o);
	int r = write_file_atomic(path, text, strlen(text), 0644);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	return 0;
}

static const char *get_str(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static bool get_bool(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static int package_from_json(json_object *o, struct package *p, const char *path, size_t i,
                             struct mosaic_error *err)
{
	const char *name = get_str(o, "name"), *version = get_str(o, "version"),
	           *arch = get_str(o, "arch"), *repo = get_str(o, "repository"),
	           *sum = get_str(o, "sha256"), *frag = get_str(o, "fragment");
	if (!name || !version || !arch || !repo || !sum || !is_sha256_hex(sum) ||
	    (frag && !is_sha256_hex(frag)))
		return mosaic_errorf(err, -EINVAL,
		                     "%s: package %zu lacks name, version, arch, repository or a "
		                     "valid sha256",
		                     path, i + 1);
	json_object *v;
	*p = (struct package){
	    .name = xstrdup(name),
	    .version = xstrdup(version),
	    .arch = xstrdup(arch),
	    .repository = xstrdup(repo),
	    .location = xstrdup(get_str(o, "location") ? get_str(o, "location") : ""),
	    .size = json_object_object_get_ex(o, "size", &v) ? (uint64_t)json_object_get_int64(v) : 0,
	    .base = get_bool(o, "base"),
	    .essential = get_bool(o, "essential"),
	};
	snprintf(p->sha256, sizeof(p->sha256), "%s", sum);
	if (frag)
		snprintf(p->fragment, sizeof(p->fragment), "%s", frag);
	return 0;
}

int lock_read(const char *path, struct lock *l, struct mosaic_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(path, 64 << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	json_tokener *tok = json_tokener_new();
	json_object *o = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error je = json_tokener_get_error(tok);
	json_tokener_free(tok);
	if (!o || je != json_tokener_success) {
		json_object_put(o);
		return mosaic_errorf(err, -EINVAL, "%s: not a lock file: %s", path,
		                     json_tokener_error_desc(je));
	}
	json_object *v, *pk;
	const char *name = get_str(o, "name"), *arch = get_str(o, "arch"),
	           *input = get_str(o, "input");
	if (!json_object_object_get_ex(o, "version", &v) || json_object_get_int(v) != LOCK_VERSION ||
	    !name || !arch || !input || !json_object_object_get_ex(o, "packages", &pk) ||
	    !json_object_is_type(pk, json_type_array)) {
		json_object_put(o);
		return mosaic_errorf(err, -EINVAL,
		                     "%s: not a version %d lock file (name, arch, input and packages "
		                     "are required)",
		                     path, LOCK_VERSION);
	}
	*l = (struct lock){.name = xstrdup(name), .arch = xstrdup(arch)};
	snprintf(l->input, sizeof(l->input), "%s", input);
	if (json_object_object_get_ex(o, "repositories", &v))
		l->repositories = json_object_get(v);
	if (json_object_object_get_ex(o, "fragments", &v) && json_object_is_type(v, json_type_array))
		l->fragments = json_object_get(v);
	size_t n = json_object_array_length(pk);
	l->packages = xcalloc(n ? n : 1, sizeof(*l->packages));
	for (size_t i = 0; i < n; i++) {
		r = package_from_json(json_object_array_get_idx(pk, i), &l->packages[i], path, i,
		                      err);
		if (r < 0)
			break;
		l->n_packages++;
	}
	json_object_put(o);
	if (r < 0)
		lock_clear(l);
	return r;
}
