/* pipeline/: a manifest as the commands take it: facts from the command line, this host's
 * architecture as the default one, and the lock beside it (one per history: NAME.lock, or
 * NAME@FACTS.lock when facts are given). */
#include "manifests/manifest.h"
#include "pipeline/internal.h"

#include <string.h>
#include <sys/utsname.h>

const char *model_str(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
}

bool model_bool(json_object *o, const char *key, bool def)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? json_object_get_boolean(v) : def;
}

json_object *model_get(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

char **model_strv(json_object *a)
{
	if (!a || !json_object_is_type(a, json_type_array))
		return NULL;
	size_t n = json_object_array_length(a);
	char **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = xstrdup(json_object_get_string(json_object_array_get_idx(a, i)));
	return v;
}

unsigned pipeline_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

bool pipeline_is_manifest(const char *path)
{
	size_t l = strlen(path);
	return (l > 5 && strcmp(path + l - 5, ".yaml") == 0) ||
	       (l > 4 && strcmp(path + l - 4, ".yml") == 0);
}

bool pipeline_is_index(const char *path)
{
	char magic[8];
	_cleanup_fclose_ FILE *f = fopen(path, "rb");
	return f && fread(magic, 1, 8, f) == 8 && memcmp(magic, "MOSAICIX", 8) == 0;
}

/* dpkg's name for the machine uname reports (what apt and the lock file call it). */
static const char *host_arch(void)
{
	static struct utsname u;
	static const struct {
		const char *machine, *arch;
	} map[] = {{"x86_64", "amd64"},    {"aarch64", "arm64"},      {"i386", "i386"},
	           {"i486", "i386"},       {"i586", "i386"},          {"i686", "i386"},
	           {"armv7l", "armhf"},    {"armv6l", "armel"},       {"ppc64le", "ppc64el"},
	           {"ppc64", "ppc64"},     {"s390x", "s390x"},        {"riscv64", "riscv64"},
	           {"mips64", "mips64el"}, {"loongarch64", "loong64"}};
	if (uname(&u) < 0)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(map); i++)
		if (strcmp(u.machine, map[i].machine) == 0)
			return map[i].arch;
	return u.machine;
}

int pipeline_fact_add(json_object *facts, const char *arg)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg)
		return -EINVAL;
	_cleanup_free_ char *key = xstrndup(arg, eq - arg);
	json_object *value = json_object_new_string(eq + 1), *cur;
	if (!json_object_object_get_ex(facts, key, &cur)) {
		json_object_object_add(facts, key, value);
	} else if (json_object_is_type(cur, json_type_array)) {
		json_object_array_add(cur, value);
	} else {
		json_object *list = json_object_new_array();
		json_object_array_add(list, json_object_get(cur));
		json_object_array_add(list, value);
		json_object_object_add(facts, key, list);
	}
	return 0;
}

int pipeline_manifest_load(const char *path, json_object *facts_in, json_object **model,
                           struct mosaic_error *err)
{
	json_object *facts = json_object_new_object();
	if (facts_in) {
		json_object_object_foreach(facts_in, k, v)
		{
			json_object_object_add(facts, k, json_object_get(v));
		}
	}
	const char *arch = host_arch();
	if (arch && !json_object_object_get_ex(facts, "arch", NULL))
		json_object_object_add(facts, "arch", json_object_new_string(arch));
	int r = manifest_load(path, facts, model, err);
	json_object_put(facts);
	/* Validation errors are shown as they are, one FILE:LINE:COL line each, like a
	 * compiler's. */
	if (r == -EINVAL && err)
		err->located = true;
	return r;
}

/* A history's name stays readable up to this length; beyond it the facts are hashed. */
#define HISTORY_READABLE_MAX 128

static bool fact_chars(const char *s)
{
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
	       strlen(s);
}

static int cmp_json_strings(const void *a, const void *b)
{
	return strcmp(json_object_get_string(*(json_object *const *)a),
	              json_object_get_string(*(json_object *const *)b));
}

/* The facts with their keys sorted and each value a sorted list of strings: one fact set, one
 * form, whatever order the options came in. *plain is cleared when a key or value holds a
 * character a readable name may not, or a value is not a string or a non-empty list of them. */
static json_object *facts_canonical(json_object *facts, bool *plain)
{
	size_t n = (size_t)json_object_object_length(facts), i = 0;
	_cleanup_free_ const char **keys = xcalloc(n + 1, sizeof(*keys));
	json_object_object_foreach(facts, k, v0)
	{
		(void)v0;
		keys[i++] = k;
	}
	qsort_safe(keys, n, sizeof(*keys), strcmp_ptr);
	json_object *out = json_object_new_object();
	for (i = 0; i < n; i++) {
		json_object *v = json_object_object_get(facts, keys[i]);
		json_object *list = json_object_new_array();
		bool is_list = json_object_is_type(v, json_type_array);
		size_t m = is_list ? json_object_array_length(v) : 1;
		for (size_t j = 0; j < m; j++) {
			json_object *e = is_list ? json_object_array_get_idx(v, j) : v;
			if (json_object_is_type(e, json_type_string))
				json_object_array_add(list, json_object_get(e));
			else
				*plain = false;
		}
		json_object_array_sort(list, cmp_json_strings);
		*plain &= fact_chars(keys[i]) && json_object_array_length(list) > 0;
		for (size_t j = 0; j < json_object_array_length(list); j++)
			*plain &=
			    fact_chars(json_object_get_string(json_object_array_get_idx(list, j)));
		json_object_object_add(out, keys[i], list);
	}
	return out;
}

char *pipeline_history_name(const char *manifest, json_object *model, json_object *facts)
{
	const char *name = model_str(model, "name");
	_cleanup_free_ char *fallback = NULL;
	if (!name) {
		const char *base = strrchr(manifest, '/') ? strrchr(manifest, '/') + 1 : manifest;
		name = fallback = xstrndup(base, strcspn(base, "."));
	}
	if (!facts || json_object_object_length(facts) == 0)
		return xstrdup(name);
	bool plain = true;
	json_object *canon = facts_canonical(facts, &plain);
	/* NAME@KEY=VALUE,KEY=VALUE+VALUE: the facts as given, readable in a directory listing. */
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	fprintf(f, "%s@", name);
	bool first = true;
	json_object_object_foreach(canon, k, v)
	{
		fprintf(f, "%s%s=", first ? "" : ",", k);
		first = false;
		for (size_t j = 0; j < json_object_array_length(v); j++)
			fprintf(f, "%s%s", j ? "+" : "",
			        json_object_get_string(json_object_array_get_idx(v, j)));
	}
	fclose(f);
	if (!plain || len > HISTORY_READABLE_MAX) {
		/* Characters a file name should not hold, or too long: NAME@ and 16 hex digits of
		 * the canonical facts, which no readable form can be (that always has a '='). */
		const char *text = json_object_to_json_string_ext(canon, JSON_C_TO_STRING_PLAIN);
		char hex[SHA256_HEX_LEN + 1];
		sha256_buffer(text, strlen(text), hex);
		free(out);
		out = xasprintf("%s@%.16s", name, hex);
	}
	json_object_put(canon);
	return out;
}

char *pipeline_lock_path(const char *manifest, json_object *model, json_object *facts)
{
	_cleanup_free_ char *dir = xstrdup(manifest);
	_cleanup_free_ char *history = pipeline_history_name(manifest, model, facts);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return xasprintf("%s.lock", history);
	*slash = 0;
	return xasprintf("%s/%s.lock", dir, history);
}
