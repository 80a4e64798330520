/* pipeline/: generations, the builds of a manifest recorded one by one in the store
 * (<store>/generations/<HISTORY>/<N>.json, the format in generation-record.c; a history is
 * named in manifest.c): the build's step that records one, and listing, reading, comparing and
 * dropping them. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

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

/* ---- the records in the store ------------------------------------------------------------- */

static int open_store(const char *path, struct store **out, struct mosaic_error *err)
{
	_cleanup_free_ char *def = path ? NULL : store_default_path();
	return store_open(path ? path : def, false, out, err);
}

static char *history_dir(const struct store *s, const char *history)
{
	return xasprintf("%s/generations/%s", store_root(s), history);
}

/* The gc root that keeps a generation's fragments: roots/ is flat, so the history and the
 * number are in its name, the number after the last '-' (so one name per history and number). */
static char *root_path(const struct store *s, const char *history, unsigned number)
{
	return xasprintf("%s/roots/generation-%s-%u", store_root(s), history, number);
}

/* Takes the history's lock (exclusive): the build that numbers a record and gc that removes
 * some are never at work on one history at once. The directory is made if missing. */
static int history_lock(const char *dir, int *fd, struct mosaic_error *err)
{
	int r = mkdir_p(dir, 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
	_cleanup_free_ char *p = path_join(dir, "lock");
	*fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (*fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", p);
	if (flock(*fd, LOCK_EX) < 0) {
		r = mosaic_errorf(err, -errno, "%s: %m", p);
		close(*fd);
		*fd = -1;
	}
	return r;
}

static int cmp_unsigned(const void *a, const void *b)
{
	unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
	return x < y ? -1 : x > y;
}

/* The numbers of the records in dir (files N.json, N from 1 without leading zeros), ascending;
 * -ENOENT when dir does not exist. */
static int record_numbers(const char *dir, unsigned **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	struct dirent *de;
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		size_t digits = strspn(name, "0123456789");
		if (digits == 0 || digits > 9 || name[0] == '0' || strcmp(name + digits, ".json"))
			continue;
		*out = xrealloc(*out, (*n + 1) * sizeof(**out));
		(*out)[(*n)++] = (unsigned)strtoul(name, NULL, 10);
	}
	closedir(d);
	qsort_safe(*out, *n, sizeof(**out), cmp_unsigned);
	return 0;
}

/* Reads and checks record number of history: it must say it is that one. */
static int read_record(const struct store *s, const char *dir, const char *history, unsigned number,
                       struct pipeline_generation *g, struct mosaic_error *err)
{
	_cleanup_free_ char *path = xasprintf("%s/%u.json", dir, number);
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(path, (16u << 20) + 1, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	if ((r = pipeline_generation_parse(text, len, g, err)) < 0) {
		mosaic_error_prefix(err, "%s", path);
		return r;
	}
	if (g->number != number || strcmp(g->history, history) != 0) {
		r = mosaic_errorf(err, -EBADMSG, "%s: records generation %u of '%s' instead", path,
		                  g->number, g->history);
		pipeline_generation_clear(g);
		return r;
	}
	g->images = xcalloc(g->n_fragments + 1, sizeof(*g->images));
	for (size_t i = 0; i < g->n_fragments; i++)
		g->images[i] = store_object_path(s, g->digests[i], ".sqfs");
	g->path = TAKE_PTR(path);
	return 0;
}

static int no_history(const struct store *s, const char *history, struct mosaic_error *err)
{
	return mosaic_errorf(err, -ENOENT,
	                     "no generations of '%s' in %s ('mosaic build' records them; "
	                     "with facts the history is NAME@FACTS)",
	                     history, store_root(s));
}

void pipeline_generations_free(struct pipeline_generation *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		pipeline_generation_clear(&v[i]);
	free(v);
}

/* The store, the history's directory and its record numbers (sorted, at least one), for
 * listing and reading. */
static int open_history(const char *store, const char *history, struct store **s, char **dir,
                        unsigned **numbers, size_t *m, struct mosaic_error *err)
{
	if (!pipeline_history_valid(history))
		return mosaic_errorf(err, -EINVAL, "'%s' is not a history name", history);
	int r = open_store(store, s, err);
	if (r < 0)
		return r;
	*dir = history_dir(*s, history);
	*numbers = NULL;
	*m = 0;
	r = record_numbers(*dir, numbers, m);
	if (r == -ENOENT || (r == 0 && *m == 0))
		r = no_history(*s, history, err);
	else if (r < 0)
		r = mosaic_errorf(err, r, "%s: %s", *dir, strerror(-r));
	if (r < 0) {
		store_free(*s);
		free(*dir);
		free(*numbers);
		*dir = NULL;
		*numbers = NULL;
	}
	return r;
}

int pipeline_generations_list(const char *store, const char *history,
                              struct pipeline_generation **out, size_t *n, struct mosaic_error *err)
{
	*out = NULL;
	*n = 0;
	struct store *s;
	_cleanup_free_ char *dir = NULL;
	_cleanup_free_ unsigned *numbers = NULL;
	size_t m = 0;
	int r = open_history(store, history, &s, &dir, &numbers, &m, err);
	if (r < 0)
		return r;
	struct pipeline_generation *v = xcalloc(m, sizeof(*v));
	size_t k = 0;
	for (size_t i = 0; i < m; i++) {
		struct mosaic_error e = {0};
		r = read_record(s, dir, history, numbers[i], &v[k], &e);
		if (r == -ENOENT) /* removed by a gc since the directory was read */
			continue;
		if (r < 0) {
			v[k].number = numbers[i];
			v[k].path = xasprintf("%s/%u.json", dir, numbers[i]);
			v[k].error = xstrdup(e.msg);
		}
		k++;
	}
	r = k ? 0 : no_history(s, history, err);
	store_free(s);
	if (r < 0) {
		free(v);
		return r;
	}
	*out = v;
	*n = k;
	return 0;
}

int pipeline_generation_get(const char *store, const char *history, unsigned number,
                            struct pipeline_generation *out, struct mosaic_error *err)
{
	*out = (struct pipeline_generation){0};
	struct store *s;
	_cleanup_free_ char *dir = NULL;
	_cleanup_free_ unsigned *numbers = NULL;
	size_t m = 0;
	int r = open_history(store, history, &s, &dir, &numbers, &m, err);
	if (r < 0)
		return r;
	if (number && !bsearch(&number, numbers, m, sizeof(*numbers), cmp_unsigned))
		r = mosaic_errorf(err, -ENOENT, "'%s' has no generation %u (it has %u to %u)",
		                  history, number, numbers[0], numbers[m - 1]);
	else
		r = read_record(s, dir, history, number ? number : numbers[m - 1], out, err);
	store_free(s);
	return r;
}

/* ---- comparing two ------------------------------------------------------------------------ */

void pipeline_generation_changes_free(struct pipeline_generation_change *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].name);
		free(v[i].arch);
		free(v[i].old_version);
		free(v[i].new_version);
		free(v[i].old_digest);
		free(v[i].new_digest);
	}
	free(v);
}

static bool same_or_null(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

static bool is_package(const struct pipeline_generation *g, size_t i)
{
	return strcmp(g->kinds[i], "package") == 0;
}

struct changes {
	struct pipeline_generation_change *v;
	size_t n;
};

/* One change: fragment i of a (or SIZE_MAX: none) against fragment j of b (or none). */
static void change_add(struct changes *c, enum pipeline_generation_change_kind kind,
                       const struct pipeline_generation *a, size_t i,
                       const struct pipeline_generation *b, size_t j)
{
	const struct pipeline_generation *g = j != SIZE_MAX ? b : a;
	size_t k = j != SIZE_MAX ? j : i;
	c->v = xrealloc(c->v, (c->n + 1) * sizeof(*c->v));
	c->v[c->n++] = (struct pipeline_generation_change){
	    .kind = kind,
	    .package = is_package(g, k),
	    .name = xstrdup(g->names[k]),
	    .arch = dup_or_null(g->archs[k]),
	    .old_version = i != SIZE_MAX ? dup_or_null(a->versions[i]) : NULL,
	    .new_version = j != SIZE_MAX ? dup_or_null(b->versions[j]) : NULL,
	    .old_digest = i != SIZE_MAX ? xstrdup(a->digests[i]) : NULL,
	    .new_digest = j != SIZE_MAX ? xstrdup(b->digests[j]) : NULL,
	};
}

/* What fragment i of a became in b (j): an upgrade or downgrade when both are packages with
 * versions, by the rule of the package's repositories (RPM's for an .rpm, else Debian's). */
static enum pipeline_generation_change_kind compare(const struct pipeline_generation *a, size_t i,
                                                    const struct pipeline_generation *b, size_t j)
{
	const char *va = a->versions[i], *vb = b->versions[j];
	if (!is_package(a, i) || !va || !vb || strcmp(va, vb) == 0)
		return PIPELINE_GENERATION_CHANGED;
	bool rpm = b->sources[j] && strcmp(b->sources[j], "rpm") == 0;
	int c = package_version_compare(rpm ? REPO_RPM : REPO_DEB, va, vb);
	return c < 0   ? PIPELINE_GENERATION_UPGRADED
	       : c > 0 ? PIPELINE_GENERATION_DOWNGRADED
	               : PIPELINE_GENERATION_CHANGED;
}

static int cmp_change(const void *x, const void *y)
{
	const struct pipeline_generation_change *a = x, *b = y;
	if (a->package != b->package)
		return a->package ? -1 : 1;
	if (a->kind != b->kind)
		return (int)a->kind - (int)b->kind;
	int c = strcmp(a->name, b->name);
	return c ? c : strcmp(a->arch ? a->arch : "", b->arch ? b->arch : "");
}

int pipeline_generations_diff(const char *store, const char *history, unsigned a_number,
                              unsigned b_number, struct pipeline_generation_change **out, size_t *n,
                              struct mosaic_error *err)
{
	*out = NULL;
	*n = 0;
	struct pipeline_generation a, b;
	int r = pipeline_generation_get(store, history, a_number, &a, err);
	if (r < 0)
		return r;
	if ((r = pipeline_generation_get(store, history, b_number, &b, err)) < 0) {
		pipeline_generation_clear(&a);
		return r;
	}
	/* Fragments match by kind (package or not), name and architecture, in order: the first
	 * unmatched one of a for each of b. */
	_cleanup_free_ bool *used = xcalloc(a.n_fragments + 1, sizeof(*used));
	struct changes c = {0};
	for (size_t j = 0; j < b.n_fragments; j++) {
		size_t i = 0;
		for (; i < a.n_fragments; i++)
			if (!used[i] && is_package(&a, i) == is_package(&b, j) &&
			    strcmp(a.names[i], b.names[j]) == 0 &&
			    same_or_null(a.archs[i], b.archs[j]))
				break;
		if (i == a.n_fragments) {
			change_add(&c, PIPELINE_GENERATION_ADDED, &a, SIZE_MAX, &b, j);
			continue;
		}
		used[i] = true;
		if (strcmp(a.digests[i], b.digests[j]) != 0)
			change_add(&c, compare(&a, i, &b, j), &a, i, &b, j);
	}
	for (size_t i = 0; i < a.n_fragments; i++)
		if (!used[i])
			change_add(&c, PIPELINE_GENERATION_REMOVED, &a, i, &b, SIZE_MAX);
	qsort_safe(c.v, c.n, sizeof(*c.v), cmp_change);
	pipeline_generation_clear(&a);
	pipeline_generation_clear(&b);
	*out = c.v;
	*n = c.n;
	return 0;
}

/* ---- dropping old ones -------------------------------------------------------------------- */

int pipeline_generations_gc(const char *store, const char *history, unsigned keep,
                            unsigned **removed, size_t *n_removed, struct mosaic_error *err)
{
	*removed = NULL;
	*n_removed = 0;
	if (keep < 1)
		return mosaic_errorf(err, -EINVAL,
		                     "keep at least the newest generation (--keep 1 or more)");
	if (!pipeline_history_valid(history))
		return mosaic_errorf(err, -EINVAL, "'%s' is not a history name", history);
	struct store *s;
	int r = open_store(store, &s, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *dir = history_dir(s, history);
	_cleanup_free_ unsigned *numbers = NULL;
	_cleanup_close_ int lock = -1;
	size_t m = 0;
	r = record_numbers(dir, &numbers, &m);
	if (r == -ENOENT || (r == 0 && m == 0))
		r = no_history(s, history, err);
	else if (r < 0)
		r = mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
	if (r == 0 && (r = history_lock(dir, &lock, err)) == 0) {
		free(numbers);
		r = record_numbers(dir, &numbers, &m); /* again, under the lock */
		if (r < 0)
			r = mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
	}
	unsigned *v = xcalloc(m + 1, sizeof(*v));
	size_t k = 0;
	/* The record first: a root without its record keeps fragments a little longer, a record
	 * without its root would name fragments gc may already have removed. */
	for (size_t i = 0; r == 0 && i + keep < m; i++) {
		_cleanup_free_ char *path = xasprintf("%s/%u.json", dir, numbers[i]);
		_cleanup_free_ char *root = root_path(s, history, numbers[i]);
		if (unlink(path) < 0 && errno != ENOENT) {
			r = mosaic_errorf(err, -errno, "%s: %m", path);
			break;
		}
		if (unlink(root) < 0 && errno != ENOENT) {
			r = mosaic_errorf(err, -errno, "%s: %m", root);
			break;
		}
		v[k++] = numbers[i];
	}
	store_free(s);
	if (r < 0 && k == 0) {
		free(v);
		return r;
	}
	*removed = v;
	*n_removed = k;
	return r;
}

/* ---- the build's step --------------------------------------------------------------------- */

static int file_digest(const char *path, char **out, struct mosaic_error *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	char hex[SHA256_HEX_LEN + 1];
	int r = fd < 0 ? -errno : sha256_fd(fd, hex);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	*out = xstrdup(hex);
	return 0;
}

/* Fragment i of g from its descriptor in the store the build made it in (trusted as the other
 * steps trust it: the build signed what it made, and the mount of a generation verifies). */
static int describe(const struct store *s, struct pipeline_generation *g, size_t i,
                    struct mosaic_error *err)
{
	_cleanup_free_ char *p = store_object_path(s, g->digests[i], ".json");
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(p, 16u << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", p, strerror(-r));
	struct fragment_descriptor d;
	if ((r = fragment_descriptor_parse(text, len, &d, err)) < 0) {
		mosaic_error_prefix(err, "%s", p);
		return r;
	}
	json_object *source = model_get(d.json, "source");
	g->names[i] = xstrdup(d.name);
	g->kinds[i] = xstrdup(fragment_kind_to_string(d.kind));
	g->versions[i] = dup_or_null(d.version);
	g->archs[i] = dup_or_null(d.arch);
	g->sources[i] = dup_or_null(source ? model_str(source, "type") : NULL);
	fragment_descriptor_clear(&d);
	return 0;
}

/* Writes record g (its number set) without ever replacing one: a temp file linked to its
 * name, which fails if the name exists. */
static int write_record(const char *dir, const struct pipeline_generation *g,
                        struct mosaic_error *err)
{
	_cleanup_free_ char *path = xasprintf("%s/%u.json", dir, g->number);
	_cleanup_free_ char *tmp = xasprintf("%s/.%u.json.tmp-XXXXXX", dir, g->number);
	_cleanup_free_ char *text = pipeline_generation_format(g);
	_cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", dir);
	int r = write_all(fd, text, strlen(text));
	if (r == 0 && (fchmod(fd, 0644) < 0 || fsync(fd) < 0))
		r = -errno;
	if (r == 0 && link(tmp, path) < 0)
		r = -errno;
	unlink(tmp);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	fsync_parent(path);
	return 0;
}

static bool same_result(const struct pipeline_generation *a, const struct pipeline_generation *b)
{
	if (a->n_fragments != b->n_fragments || strcmp(a->index_digest, b->index_digest) != 0)
		return false;
	for (size_t i = 0; i < a->n_fragments; i++)
		if (strcmp(a->digests[i], b->digests[i]) != 0)
			return false;
	return true;
}

/* Numbers g and records it, with its gc root, under the history's lock; unless the newest
 * record already holds the same fragments and index (then g->number is that one's). */
static int record_add(const struct store *s, struct pipeline_generation *g, bool *added,
                      struct mosaic_error *err)
{
	_cleanup_free_ char *dir = history_dir(s, g->history);
	_cleanup_close_ int lock = -1;
	int r = history_lock(dir, &lock, err);
	if (r < 0)
		return r;
	_cleanup_free_ unsigned *numbers = NULL;
	size_t m = 0;
	if ((r = record_numbers(dir, &numbers, &m)) < 0)
		return mosaic_errorf(err, r, "%s: %s", dir, strerror(-r));
	*added = false;
	if (m) {
		/* A newest record that cannot be read is followed by a new one, not compared. */
		struct pipeline_generation newest;
		if (read_record(s, dir, g->history, numbers[m - 1], &newest, NULL) == 0) {
			bool same = same_result(&newest, g);
			pipeline_generation_clear(&newest);
			if (same) {
				g->number = numbers[m - 1];
				return 0;
			}
		}
		if (numbers[m - 1] >= 999999999)
			return mosaic_errorf(err, -EOVERFLOW, "%s: no more generation numbers",
			                     dir);
	}
	g->number = m ? numbers[m - 1] + 1 : 1;
	/* The root first, so that the record never names fragments nothing keeps. */
	_cleanup_free_ char *root = root_path(s, g->history, g->number);
	_cleanup_free_ char *roots = path_join(store_root(s), "roots");
	size_t len = 0;
	_cleanup_free_ char *text = xmalloc(g->n_fragments * (SHA256_HEX_LEN + 1) + 1);
	text[0] = 0;
	for (size_t i = 0; i < g->n_fragments; i++)
		len += (size_t)sprintf(text + len, "%s\n", g->digests[i]);
	if ((r = mkdir_p(roots, 0755)) < 0 || (r = write_file_atomic(root, text, len, 0644)) < 0)
		return mosaic_errorf(err, r, "%s: %s", root, strerror(-r));
	if ((r = write_record(dir, g, err)) < 0) {
		unlink(root);
		return r;
	}
	*added = true;
	return 0;
}

int step_generation(struct build *b, struct mosaic_error *err)
{
	char **digests = NULL;
	size_t n = 0;
	int r = pipeline_lock_mount_order(&b->lock, b->lock_path, b->o->manifest,
	                                  model_bool(b->model, "merged_usr", false), true, &digests,
	                                  &n, b->ev, err);
	if (r < 0)
		return r;
	struct pipeline_generation g = {
	    .time = (int64_t)time(NULL), /* the wall clock, not $SOURCE_DATE_EPOCH: a history */
	    .history = xstrdup(b->history),
	    .facts = b->o->facts ? json_object_get(b->o->facts) : json_object_new_object(),
	    .digests = digests,
	    .n_fragments = n,
	    .names = xcalloc(n + 1, sizeof(char *)),
	    .kinds = xcalloc(n + 1, sizeof(char *)),
	    .versions = xcalloc(n + 1, sizeof(char *)),
	    .archs = xcalloc(n + 1, sizeof(char *)),
	    .sources = xcalloc(n + 1, sizeof(char *)),
	    .images = xcalloc(n + 1, sizeof(char *)),
	};
	struct compose_input *in = xcalloc(n + 1, sizeof(*in));
	for (size_t i = 0; i < n && r == 0; i++) {
		if ((r = describe(b->store, &g, i, err)) < 0)
			break;
		g.images[i] = store_object_path(b->store, g.digests[i], ".sqfs");
		in[i] = (struct compose_input){.image_path = g.images[i],
		                               .digest = g.digests[i],
		                               .name = g.names[i],
		                               .package = strcmp(g.kinds[i], "package") == 0};
	}
	/* The index of exactly this list, through the cache a mount of it uses. */
	if (r == 0)
		r = pipeline_index_cached(in, n, &g.index_path, b->ev, err);
	free(in);
	if (r == 0)
		r = file_digest(g.index_path, &g.index_digest, err);
	if (r == 0) {
		g.manifest = realpath(b->o->manifest, NULL);
		if (!g.manifest)
			r = mosaic_errorf(err, -errno, "%s: %m", b->o->manifest);
	}
	if (r == 0)
		r = file_digest(g.manifest, &g.manifest_digest, err);
	if (r == 0)
		r = file_digest(b->lock_path, &g.lock_digest, err);
	if (r == 0)
		r = record_add(b->store, &g, &b->new_generation, err);
	if (r == 0) {
		b->generation = g.number;
		if (b->new_generation)
			pipeline_say(b->ev, PIPELINE_INFO, "generation",
			             "generation %u of %s: %zu fragments, index %.12s", g.number,
			             g.history, n, g.index_digest);
		else
			pipeline_say(b->ev, PIPELINE_INFO, "generation",
			             "generation %u of %s is the same build: no new generation",
			             g.number, g.history);
	}
	pipeline_generation_clear(&g);
	return r;
}
