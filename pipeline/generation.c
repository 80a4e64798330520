/* pipeline/: generations, the builds of a manifest recorded one by one in the store
 * (<store>/generations/<HISTORY>/<N>.json): naming a history after the manifest and its facts. */
#include "pipeline/internal.h"

#include <string.h>

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

int pipeline_history_find(const char *arg, json_object *facts, char **history,
                          struct mosaic_error *err)
{
	if (pipeline_is_manifest(arg)) {
		json_object *model;
		int r = pipeline_manifest_load(arg, facts, &model, err);
		if (r < 0)
			return r;
		*history = pipeline_history_name(arg, model, facts);
		json_object_put(model);
		return 0;
	}
	if (facts)
		return mosaic_errorf(err, -EINVAL,
		                     "--fact and --role select the history of a MANIFEST; '%s' is "
		                     "a history name already",
		                     arg);
	if (!pipeline_history_valid(arg))
		return mosaic_errorf(err, -EINVAL,
		                     "'%s' is neither a manifest (NAME.yaml) nor a history name "
		                     "(NAME or NAME@FACTS: letters, digits and . _ + = , @ -)",
		                     arg);
	*history = xstrdup(arg);
	return 0;
}
