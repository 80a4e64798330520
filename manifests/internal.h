/* manifests/ internals shared by the positions and errors (position.c), the schema walker
 * (schema.c), the loader and merger (manifest.c) and the package syntax (package.c). Not part
 * of the module's interface. position.c is at the bottom; schema.c uses it; manifest.c uses
 * both. */
#pragma once

#include "manifests/manifest.h"

#include <yaml.h>

/* Where a value came from. The walker attaches one to every json object it makes (as json-c
 * userdata) so that checks after merging can still point at the file; the loader strips them
 * before the model is handed out (json_object_deep_copy refuses objects with userdata). */
struct pos {
	const char *file; /* display name; owned by the loader, outlives the model's positions */
	int line, col;    /* 1-based, of the value */
	int kline, kcol;  /* of its key when the value sits in a mapping, else line/col */
	bool broken;      /* a mapping with errors inside: checks after merging skip it */
};

/* Error list and limits of one load. */
struct diag {
	const char *file;
	int line, col;
	unsigned seq;
	char *msg;
};

struct loader {
	struct diag *diags;
	size_t n_diags, cap_diags;
	size_t n_errors; /* all of them, also those past the stored maximum */
	unsigned long visits;
	bool too_many_nodes;
	bool name_given;         /* some file has a name: key, valid or not */
	const char **file_order; /* display names in the order their files were opened */
	size_t n_files;
};

/* ---- position.c ------------------------------------------------------------------------- */

/* Records "FILE:LINE:COL: message". */
void loader_error(struct loader *l, const char *file, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The same at the position of a converted value (key: at its key instead). */
void loader_error_at(struct loader *l, json_object *o, bool key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Never NULL: values made after the walk get an empty position. */
const struct pos *pos_of(json_object *o);
void pos_copy(json_object *to, json_object *from);
void pos_mark_broken(json_object *o);
void pos_set(json_object *o, const char *file, const yaml_mark_t *mark);
/* Removes the positions from o and everything in it: json_object_deep_copy refuses userdata it
 * does not know, and the file names die with the loader, so the model goes out clean. */
void pos_strip(json_object *o);
/* Every error recorded, in file order, one per line into err (as many as fit, then how many
 * more there are); returns -EINVAL. */
int loader_report(struct loader *l, struct mosaic_error *err);
/* Resolves path against dir (unless it is absolute) and removes "." and ".." components
 * lexically; the result is absolute when dir is. Caller frees. */
char *path_resolve(const char *dir, const char *path);

/* ---- schema.c --------------------------------------------------------------------------- */

/* Validates one parsed document against the manifest schema and converts it to json (with
 * positions). file: display name for messages; path: absolute name for run steps; dir: base
 * of relative paths. Returns NULL when the document is not even a mapping (error recorded);
 * otherwise the converted mapping, which may be partial when errors were recorded. */
json_object *schema_convert(struct loader *l, yaml_document_t *doc, const char *file,
                            const char *path, const char *dir);

/* Checks of the merged model that only make sense after includes and layers (repositories
 * are merged by name, so an entry may be completed by a later file), and fills defaults. */
void schema_check_model(struct loader *l, json_object *model);

/* ---- package.c -------------------------------------------------------------------------- */

/* Parses "[op] version" (no op: "="), as a package mapping's version: says. */
int manifest_parse_constraint(const char *name, const char *constraint, char **op, char **version,
                              struct mosaic_error *err);
