/* The fragment descriptor (docs/formats.md): made deterministically, parsed defensively. */
#include "fragments/internal.h"

#include <string.h>

static const char *kind_names[] = {"base", "package", "config", "dev"};

const char *fragment_kind_to_string(enum fragment_kind k)
{
	return k >= 0 && (size_t)k < ARRAY_SIZE(kind_names) ? kind_names[k] : "unknown";
}

int fragment_kind_from_string(const char *s)
{
	for (size_t i = 0; i < ARRAY_SIZE(kind_names); i++)
		if (strcmp(s, kind_names[i]) == 0)
			return i;
	return -EINVAL;
}

void fragment_info_clear(struct fragment_info *info)
{
	free(info->name);
	free(info->version);
	free(info->arch);
	memset(info, 0, sizeof(*info));
}

void fragment_descriptor_clear(struct fragment_descriptor *d)
{
	json_object_put(d->json);
	memset(d, 0, sizeof(*d));
}

static int get_field(json_object *o, const char *key, json_type type, bool required,
                     json_object **out, struct mosaic_error *err)
{
	json_object *v = NULL;
	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null)) {
		*out = NULL;
		if (required)
			return mosaic_errorf(err, -EBADMSG, "descriptor: missing field '%s'", key);
		return 0;
	}
	if (!json_object_is_type(v, type))
		return mosaic_errorf(err, -EBADMSG, "descriptor: field '%s' must be a %s", key,
		                     json_type_to_name(type));
	*out = v;
	return 0;
}

static int check_string_array(json_object *o, const char *key, struct mosaic_error *err)
{
	json_object *a;
	int r = get_field(o, key, json_type_array, false, &a, err);
	if (r < 0 || !a)
		return r;
	for (size_t i = 0; i < json_object_array_length(a); i++)
		if (!json_object_is_type(json_object_array_get_idx(a, i), json_type_string))
			return mosaic_errorf(err, -EBADMSG, "descriptor: '%s' must hold strings",
			                     key);
	return 0;
}

static int get_u64(json_object *o, const char *key, uint64_t *out, struct mosaic_error *err)
{
	json_object *v;
	int r = get_field(o, key, json_type_int, true, &v, err);
	if (r < 0)
		return r;
	int64_t x = json_object_get_int64(v);
	if (x < 0)
		return mosaic_errorf(err, -EBADMSG, "descriptor: '%s' must not be negative", key);
	*out = x;
	return 0;
}

int fragment_descriptor_parse(const char *buf, size_t len, struct fragment_descriptor *out,
                              struct mosaic_error *err)
{
	struct fragment_descriptor d = {0};
	json_object *v, *image;
	int r;

	if (len > (16u << 20))
		return mosaic_errorf(err, -EFBIG, "descriptor: larger than 16 MiB");
	json_tokener *tok = json_tokener_new();
	d.json = json_tokener_parse_ex(tok, buf, len);
	enum json_tokener_error je = json_tokener_get_error(tok);
	size_t consumed = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (!d.json || je != json_tokener_success) {
		json_object_put(d.json);
		return mosaic_errorf(err, -EBADMSG, "descriptor: not valid JSON: %s",
		                     json_tokener_error_desc(je));
	}
	for (size_t i = consumed; i < len; i++)
		if (buf[i] != ' ' && buf[i] != '\n' && buf[i] != '\t' && buf[i] != '\r') {
			r = mosaic_errorf(err, -EBADMSG, "descriptor: trailing data after JSON");
			goto fail;
		}
	if (!json_object_is_type(d.json, json_type_object)) {
		r = mosaic_errorf(err, -EBADMSG, "descriptor: not a JSON object");
		goto fail;
	}
	if ((r = get_field(d.json, "mosaic_fragment", json_type_int, true, &v, err)) < 0)
		goto fail;
	if (json_object_get_int64(v) != FRAGMENT_FORMAT_VERSION) {
		r = mosaic_errorf(err, -EPROTONOSUPPORT,
		                  "descriptor: format version %" PRId64 " is not supported (this "
		                  "mosaic reads version %d)",
		                  json_object_get_int64(v), FRAGMENT_FORMAT_VERSION);
		goto fail;
	}
	if ((r = get_field(d.json, "name", json_type_string, true, &v, err)) < 0)
		goto fail;
	d.name = json_object_get_string(v);
	if (!*d.name || strchr(d.name, '/') || d.name[0] == '.') {
		r = mosaic_errorf(err, -EBADMSG, "descriptor: invalid name '%s'", d.name);
		goto fail;
	}
	if ((r = get_field(d.json, "version", json_type_string, false, &v, err)) < 0)
		goto fail;
	d.version = v ? json_object_get_string(v) : NULL;
	if ((r = get_field(d.json, "arch", json_type_string, false, &v, err)) < 0)
		goto fail;
	d.arch = v ? json_object_get_string(v) : NULL;
	if ((r = get_field(d.json, "kind", json_type_string, true, &v, err)) < 0)
		goto fail;
	if ((r = fragment_kind_from_string(json_object_get_string(v))) < 0) {
		r = mosaic_errorf(err, -EBADMSG, "descriptor: unknown kind '%s'",
		                  json_object_get_string(v));
		goto fail;
	}
	d.kind = r;
	if ((r = check_string_array(d.json, "provides", err)) < 0 ||
	    (r = check_string_array(d.json, "requires", err)) < 0)
		goto fail;
	if ((r = get_u64(d.json, "files", &d.files, err)) < 0)
		goto fail;
	if ((r = get_field(d.json, "created", json_type_int, true, &v, err)) < 0)
		goto fail;
	d.created = json_object_get_int64(v);
	if ((r = get_field(d.json, "image", json_type_object, true, &image, err)) < 0)
		goto fail;
	if ((r = get_field(image, "digest", json_type_string, true, &v, err)) < 0)
		goto fail;
	const char *dg = json_object_get_string(v);
	if (strncmp(dg, "sha256:", 7) != 0 || !is_sha256_hex(dg + 7)) {
		r = mosaic_errorf(err, -EBADMSG,
		                  "descriptor: image digest '%.80s' is not "
		                  "sha256:<64 hex digits>",
		                  dg);
		goto fail;
	}
	memcpy(d.digest, dg + 7, SHA256_HEX_LEN + 1);
	if ((r = get_u64(image, "size", &d.image_size, err)) < 0)
		goto fail;
	*out = d;
	return 0;
fail:
	json_object_put(d.json);
	return r;
}

/* Serialises with a fixed key order and no floating point, so equal input gives equal bytes. */
char *descriptor_build(const struct src_meta *m, const struct fragment_create_options *o,
                       enum fragment_kind kind, const char *digest, uint64_t image_size,
                       uint64_t files, uint64_t content_bytes, const char *source_sha256,
                       uint64_t source_size, const char *source_file, int64_t created)
{
	json_object *d = json_object_new_object();
	json_object_object_add(d, "mosaic_fragment", json_object_new_int(FRAGMENT_FORMAT_VERSION));
	json_object_object_add(d, "name", json_object_new_string(o->name ? o->name : m->name));
	const char *version = o->version ? o->version : m->version;
	const char *arch = o->arch ? o->arch : m->arch;
	json_object_object_add(d, "version", version ? json_object_new_string(version) : NULL);
	json_object_object_add(d, "arch", arch ? json_object_new_string(arch) : NULL);
	json_object_object_add(d, "kind", json_object_new_string(fragment_kind_to_string(kind)));
	json_object_object_add(
	    d, "provides", m->provides ? json_object_get(m->provides) : json_object_new_array());
	json_object_object_add(
	    d, "requires", m->requires ? json_object_get(m->requires) : json_object_new_array());
	json_object *src = json_object_new_object();
	json_object_object_add(src, "type", json_object_new_string(m->type));
	json_object_object_add(src, "file", json_object_new_string(source_file));
	json_object_object_add(src, "sha256",
	                       source_sha256 ? json_object_new_string(source_sha256) : NULL);
	json_object_object_add(src, "size", json_object_new_int64(source_size));
	json_object_object_add(d, "source", src);
	json_object_object_add(d, "files", json_object_new_int64(files));
	json_object_object_add(d, "content_size", json_object_new_int64(content_bytes));
	json_object *img = json_object_new_object();
	_cleanup_free_ char *dg = xasprintf("sha256:%s", digest);
	json_object_object_add(img, "digest", json_object_new_string(dg));
	json_object_object_add(img, "size", json_object_new_int64(image_size));
	json_object_object_add(img, "compression", json_object_new_string("zstd"));
	json_object_object_add(img, "block_size", json_object_new_int(128 * 1024));
	json_object_object_add(d, "image", img);
	json_object_object_add(d, "created", json_object_new_int64(created));
	if (m->extra)
		json_object_object_add(d, m->extra_key, json_object_get(m->extra));
	char *s = xasprintf("%s\n", json_object_to_json_string_ext(
	                                d, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
	                                       JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(d);
	return s;
}

void src_meta_clear(struct src_meta *m)
{
	free(m->type);
	free(m->name);
	free(m->version);
	free(m->arch);
	free(m->extra_key);
	json_object_put(m->provides);
	json_object_put(m->requires);
	json_object_put(m->extra);
	memset(m, 0, sizeof(*m));
}
