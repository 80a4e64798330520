/* libFuzzer target for manifest_load_buffer and manifest_parse_package: manifests are written by
 * people and passed around, and their YAML reaches libyaml, the schema walker and the merger. */
#include "manifests/manifest.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static json_object *facts;
	if (!facts)
		facts = json_tokener_parse("{\"arch\": \"amd64\", \"role\": \"server\", "
		                           "\"hardware\": [\"wifi\", \"virtio-net\"]}");

	struct mosaic_error err = {0};
	json_object *model = NULL;
	int r = manifest_load_buffer("fuzz.yaml", (const char *)data, size, facts, &model, &err);
	if (r < 0) {
		/* Every failure is a validation error with its text, and nothing is handed out. */
		if (r != -EINVAL || model || strncmp(err.msg, "fuzz.yaml:", 10) != 0)
			__builtin_trap();
	} else {
		json_object *name, *copy = NULL;
		if (r != 0 || !json_object_is_type(model, json_type_object) ||
		    !json_object_object_get_ex(model, "name", &name) ||
		    json_object_object_get_ex(model, "layers", NULL))
			__builtin_trap();
		/* The model is plain json: no positions left behind, so it copies and prints. */
		if (json_object_deep_copy(model, &copy, NULL) != 0 ||
		    !json_object_to_json_string(copy))
			__builtin_trap();
		json_object_put(copy);
		json_object_put(model);
	}

	char *s = xstrndup((const char *)data, size);
	char *name, *op, *version;
	if (manifest_parse_package(s, &name, &op, &version, &err) == 0) {
		if (!*name || (!*op) != (!*version))
			__builtin_trap();
		free(name);
		free(op);
		free(version);
	} else if (!err.msg[0]) {
		__builtin_trap();
	}
	free(s);
	return 0;
}
