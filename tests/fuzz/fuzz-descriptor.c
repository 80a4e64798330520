/* libFuzzer target for fragment_descriptor_parse: descriptors come from stores and mirrors we do
 * not control, and are parsed before their signature is known to be good. */
#include "fragments/fragment.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fragment_descriptor d = {0};
	struct mosaic_error err = {0};
	int r = fragment_descriptor_parse((const char *)data, size, &d, &err);
	if (r == 0) {
		/* What a caller reads afterwards must be there and well formed. */
		if (!d.json || !d.name || !*d.name || strchr(d.name, '/') ||
		    strlen(d.digest) != SHA256_HEX_LEN || !is_sha256_hex(d.digest) ||
		    d.kind < FRAGMENT_BASE || d.kind > FRAGMENT_DEV || d.image_size > INT64_MAX ||
		    d.files > INT64_MAX)
			__builtin_trap();
		(void)strlen(fragment_kind_to_string(d.kind));
		if (d.version)
			(void)strlen(d.version);
		if (d.arch)
			(void)strlen(d.arch);
		fragment_descriptor_clear(&d);
	} else {
		/* A rejection carries a negative errno and a NUL-terminated message. */
		if (r >= 0 || d.json || strnlen(err.msg, sizeof(err.msg)) == sizeof(err.msg) ||
		    !err.msg[0])
			__builtin_trap();
	}
	return 0;
}
