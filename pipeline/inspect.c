/* pipeline/: what a running mount's upper changed (diff), and where one of its paths comes from
 * (origin): the fragment, its descriptor and package, and the upper's part. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <string.h>

int pipeline_diff(const char *mountpoint, bool all, struct compose_diff_entry **out, size_t *n,
                  bool *read_only, struct mosaic_error *err)
{
	struct composition *c;
	int r = pipeline_open_mount(mountpoint, true, &c, err);
	if (r < 0)
		return r;
	*out = NULL;
	*n = 0;
	*read_only = !c->upper;
	if (c->upper)
		r = compose_diff(c->idx, c->images, c->upper, all, out, n, err);
	composition_free(c);
	return r;
}

/* The descriptor beside a fragment image (<hex>.sqfs -> <hex>.json), or NULL if unreadable;
 * *package receives the package's own name (Debian's Package, RPM's name, else the
 * fragment's) for a package fragment. */
static json_object *fragment_json(const char *image, json_object **package)
{
	*package = NULL;
	size_t l = strlen(image);
	if (l < 5 || strcmp(image + l - 5, ".sqfs") != 0)
		return NULL;
	_cleanup_free_ char *path = xasprintf("%.*s.json", (int)(l - 5), image);
	_cleanup_free_ char *buf = NULL;
	size_t len;
	struct fragment_descriptor d = {0};
	if (read_file(path, 16 << 20, &buf, &len) < 0 ||
	    fragment_descriptor_parse(buf, len, &d, NULL) < 0)
		return NULL;
	json_object *o = json_object_new_object(), *v, *name;
	json_object_object_add(o, "name", json_object_new_string(d.name));
	json_object_object_add(o, "version", d.version ? json_object_new_string(d.version) : NULL);
	json_object_object_add(o, "arch", d.arch ? json_object_new_string(d.arch) : NULL);
	json_object_object_add(o, "kind", json_object_new_string(fragment_kind_to_string(d.kind)));
	if (d.kind == FRAGMENT_PACKAGE) {
		if (json_object_object_get_ex(d.json, "deb", &v) &&
		    json_object_object_get_ex(v, "Package", &name))
			*package = json_object_get(name);
		else if (json_object_object_get_ex(d.json, "rpm", &v) &&
		         json_object_object_get_ex(v, "name", &name))
			*package = json_object_get(name);
		else
			*package = json_object_new_string(d.name);
	}
	fragment_descriptor_clear(&d);
	return o;
}

void pipeline_origin_clear(struct pipeline_origin *o)
{
	free(o->path);
	json_object_put(o->fragment);
	json_object_put(o->package);
	*o = (struct pipeline_origin){0};
}

int pipeline_origin(const char *mountpoint, const char *path, struct pipeline_origin *out,
                    struct mosaic_error *err)
{
	*out = (struct pipeline_origin){0};
	struct composition *c;
	int r = pipeline_open_mount(mountpoint, true, &c, err);
	if (r < 0)
		return r;
	struct compose_diff_entry e;
	if ((r = compose_diff_path(c->idx, c->images, c->upper, path, &e, err)) < 0) {
		composition_free(c);
		return r;
	}
	const struct compose_inode *in = e.ino ? compose_index_inode(c->idx, e.ino) : NULL;
	if (in && in->fragment != COMPOSE_NO_FRAGMENT) {
		char digest[SHA256_HEX_LEN + 1];
		compose_index_fragment_digest(c->idx, in->fragment, digest);
		json_object *frag = fragment_json(c->images[in->fragment], &out->package);
		if (!frag)
			frag = json_object_new_object();
		json_object_object_add(frag, "digest", json_object_new_string(digest));
		json_object_object_add(frag, "index", json_object_new_int(in->fragment));
		json_object_object_add(frag, "image",
		                       json_object_new_string(c->images[in->fragment]));
		out->fragment = frag;
		out->layer = in->fragment;
	}
	out->path = e.path;
	out->type = e.type;
	out->change = e.change;
	out->what = e.what;
	out->n_fragments = c->n_images;
	out->has_upper = c->upper != NULL;
	composition_free(c);
	return 0;
}
