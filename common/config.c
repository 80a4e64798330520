/* Settings: environment first, then /etc/mosaic/config.json, then the built-in default. */
#include "common/common.h"

#include <json-c/json.h>

char *mosaic_cache_dir(void)
{
	const char *e = getenv("MOSAIC_CACHE_DIR");
	if (e && *e)
		return xstrdup(e);
	e = getenv("XDG_CACHE_HOME");
	if (e && *e)
		return path_join(e, "mosaic");
	e = getenv("HOME");
	return path_join(e && *e ? e : "/root", ".cache/mosaic");
}

char *mosaic_config_get(const char *env, const char *key, const char *fallback)
{
	const char *e = env ? getenv(env) : NULL;
	if (e && *e)
		return xstrdup(e);
	const char *cfg = getenv("MOSAIC_CONFIG");
	json_object *root = json_object_from_file(cfg && *cfg ? cfg : "/etc/mosaic/config.json");
	char *v = NULL;
	json_object *o;
	if (root && json_object_object_get_ex(root, key, &o) &&
	    json_object_is_type(o, json_type_string))
		v = xstrdup(json_object_get_string(o));
	json_object_put(root);
	if (!v && fallback)
		v = xstrdup(fallback);
	return v;
}
