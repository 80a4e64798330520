/* manifests/: the YAML manifest (docs/manifest.md): parse with libyaml, validate against the
 * schema with file:line:col errors, merge include:s, apply the layers whose when: matches the
 * facts, and hand back one json-c model. No I/O beyond reading the manifest files. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

/* Loads the manifest at path with everything it includes, validated, merged and with the
 * matching layers applied. facts is an object of strings or arrays of strings ("arch",
 * "role", "hardware", ...; may be NULL); "arch" defaults to the manifest's arch. Relative
 * paths in the manifest (include, keyring, fragments, files) become absolute against the
 * directory of the file that names them. On a validation error err holds every error, one
 * per line, each "FILE:LINE:COL: message", and the result is -EINVAL. */
int manifest_load(const char *path, json_object *facts, json_object **out,
                  struct mosaic_error *err);

/* The same from a buffer (the fuzz target and tests); name is used in messages and as the
 * base of relative paths; include: is refused (no file I/O). */
int manifest_load_buffer(const char *name, const char *data, size_t len, json_object *facts,
                         json_object **out, struct mosaic_error *err);

/* Splits a package request "name", "name (>= 1.2)" or "name>=1.2" into its parts; op is one of
 * "", "=", ">=", "<=", ">>", "<<" (">" and "<" are taken as ">>" and "<<"), version is "" when op
 * is. The caller frees the three strings (any out pointer may be NULL). Returns 0 or -EINVAL
 * with err saying what is malformed. */
int manifest_parse_package(const char *spec, char **name, char **op, char **version,
                           struct mosaic_error *err);
