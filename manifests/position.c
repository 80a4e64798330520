/* Where a manifest's values come from and what is wrong with them: the position attached to every
 * converted value, the load's error list that points at positions and its report, and the
 * lexical resolution every relative path goes through. Below both the schema walker (schema.c)
 * and the loader (manifest.c), which use it. */
#include "manifests/internal.h"

#include <string.h>

#define MAX_STORED_ERRORS 256
#define MAX_SHOWN_ERRORS  12

/* ---- positions ---------------------------------------------------------------------------- */

static void pos_free(json_object *o, void *userdata)
{
	free(userdata);
}

void pos_set(json_object *o, const char *file, const yaml_mark_t *mark)
{
	struct pos *p = xmalloc(sizeof(*p));
	*p = (struct pos){.file = file,
	                  .line = (int)mark->line + 1,
	                  .col = (int)mark->column + 1,
	                  .kline = (int)mark->line + 1,
	                  .kcol = (int)mark->column + 1};
	json_object_set_userdata(o, p, pos_free);
}

const struct pos *pos_of(json_object *o)
{
	static const struct pos none = {.file = ""};
	const struct pos *p = o ? json_object_get_userdata(o) : NULL;
	return p ? p : &none;
}

void pos_copy(json_object *to, json_object *from)
{
	const struct pos *p = json_object_get_userdata(from);
	if (!p)
		return;
	struct pos *c = xmalloc(sizeof(*c));
	*c = *p;
	json_object_set_userdata(to, c, pos_free);
}

void pos_mark_broken(json_object *o)
{
	struct pos *p = json_object_get_userdata(o);
	if (p)
		p->broken = true;
}

void pos_strip(json_object *o)
{
	if (!o)
		return;
	json_object_set_userdata(o, NULL, NULL);
	if (json_object_is_type(o, json_type_object)) {
		json_object_object_foreach(o, k, v)
		{
			(void)k;
			pos_strip(v);
		}
	} else if (json_object_is_type(o, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(o); i++)
			pos_strip(json_object_array_get_idx(o, i));
	}
}

/* ---- errors ------------------------------------------------------------------------------- */

void loader_error(struct loader *l, const char *file, int line, int col, const char *fmt, ...)
{
	l->n_errors++;
	if (l->n_diags >= MAX_STORED_ERRORS)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One error, one line. */
	for (char *c = msg; *c; c++)
		if ((unsigned char)*c < 0x20)
			*c = ' ';
	if (l->n_diags == l->cap_diags) {
		l->cap_diags = l->cap_diags ? l->cap_diags * 2 : 16;
		l->diags = xrealloc(l->diags, l->cap_diags * sizeof(*l->diags));
	}
	l->diags[l->n_diags] = (struct diag){.file = file,
	                                     .line = line > 0 ? line : 1,
	                                     .col = col > 0 ? col : 1,
	                                     .seq = (unsigned)l->n_diags,
	                                     .msg = xstrdup(msg)};
	l->n_diags++;
}

void loader_error_at(struct loader *l, json_object *o, bool key, const char *fmt, ...)
{
	const struct pos *p = pos_of(o);
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	loader_error(l, p->file, key ? p->kline : p->line, key ? p->kcol : p->col, "%s", msg);
}

static size_t file_rank(const struct loader *l, const char *file)
{
	for (size_t i = 0; i < l->n_files; i++)
		if (l->file_order[i] == file)
			return i;
	return l->n_files;
}

static const struct loader *sort_loader; /* qsort has no context argument */

static int diag_cmp(const void *a, const void *b)
{
	const struct diag *x = a, *y = b;
	size_t fx = file_rank(sort_loader, x->file), fy = file_rank(sort_loader, y->file);
	if (fx != fy)
		return fx < fy ? -1 : 1;
	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int loader_report(struct loader *l, struct mosaic_error *err)
{
	sort_loader = l;
	qsort_safe(l->diags, l->n_diags, sizeof(*l->diags), diag_cmp);
	sort_loader = NULL;
	size_t unique = 0;
	for (size_t i = 0; i < l->n_diags; i++) {
		struct diag *d = &l->diags[i];
		if (unique > 0) {
			struct diag *prev = &l->diags[unique - 1];
			if (prev->file == d->file && prev->line == d->line && prev->col == d->col &&
			    strcmp(prev->msg, d->msg) == 0) {
				free(d->msg);
				continue;
			}
		}
		l->diags[unique++] = *d;
	}
	size_t total = unique + (l->n_errors - l->n_diags);
	l->n_diags = unique;

	char buf[sizeof(err->msg)];
	size_t len = 0, shown = 0;
	const size_t room = sizeof(buf) - 48; /* for the "… and N more errors" line */
	for (; shown < unique && shown < MAX_SHOWN_ERRORS; shown++) {
		const struct diag *d = &l->diags[shown];
		char line[sizeof(buf)];
		int n = snprintf(line, sizeof(line), "%s%s:%d:%d: %s", shown ? "\n" : "", d->file,
		                 d->line, d->col, d->msg);
		if (n < 0 || len + (size_t)n >= room)
			break;
		memcpy(buf + len, line, n + 1);
		len += n;
	}
	if (shown < total)
		snprintf(buf + len, sizeof(buf) - len, "%s… and %zu more error%s",
		         shown ? "\n" : "", total - shown, total - shown == 1 ? "" : "s");
	return mosaic_errorf(err, -EINVAL, "%s", buf);
}

/* ---- paths -------------------------------------------------------------------------------- */

char *path_resolve(const char *dir, const char *path)
{
	_cleanup_free_ char *joined = path[0] == '/' ? xstrdup(path) : path_join(dir, path);
	size_t n = strlen(joined);
	bool abs = joined[0] == '/';
	char *out = xmalloc(n + 2);
	_cleanup_free_ size_t *starts = xmalloc((n + 1) * sizeof(*starts));
	_cleanup_free_ bool *up = xmalloc((n + 1) * sizeof(*up));
	size_t o = 0, depth = 0, base;
	if (abs)
		out[o++] = '/';
	base = o;
	for (const char *p = joined; *p;) {
		while (*p == '/')
			p++;
		size_t l = strcspn(p, "/");
		if (l == 0)
			break;
		const char *c = p;
		p += l;
		if (l == 1 && c[0] == '.')
			continue;
		bool dotdot = l == 2 && c[0] == '.' && c[1] == '.';
		if (dotdot && depth > 0 && !up[depth - 1]) {
			o = starts[--depth];
			continue;
		}
		if (dotdot && abs)
			continue; /* "/.." is "/" */
		starts[depth] = o;
		up[depth++] = dotdot;
		if (o > base)
			out[o++] = '/';
		memcpy(out + o, c, l);
		o += l;
	}
	if (o == 0)
		out[o++] = '.';
	out[o] = '\0';
	return out;
}
