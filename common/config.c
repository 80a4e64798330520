/* Settings: environment first, then /etc/mosaic/config.json, then the built-in default. */
#include "common/common.h"

#include <json-c/json.h>
#include <string.h>

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

int mosaic_source_date_epoch(int64_t *out, struct mosaic_error *err)
{
	const char *e = getenv("SOURCE_DATE_EPOCH");
	*out = -1;
	if (!e || !*e)
		return 0;
	/* Digits only: strtoll would take " 12", "+12" or "12abc", and a date that is not what
	 * the user wrote must not quietly stamp a reproducible build. */
	if (strspn(e, "0123456789") != strlen(e) || strlen(e) > 18)
		return mosaic_errorf(err, -EINVAL,
		                     "$SOURCE_DATE_EPOCH is not seconds since 1970: '%s' (unset it, "
		                     "or give a number like 1700000000)",
		                     e);
	*out = strtoll(e, NULL, 10);
	return 0;
}
