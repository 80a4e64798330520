/* The served composition as a live, versioned object: generations (an index and its fragments),
 * the view inode numbers the kernel holds, and the switch from one generation to another.
 *
 * A node id the kernel holds is a view inode: a generation and an inode of its index. The first
 * generation's view inodes are its index inodes. A switch pairs the two indexes path by path (a
 * merge of their sorted directories) and gives a path of the new index the view inode it had
 * when its content is the same (same type and fragment file, link target or device), else a new
 * number, as a rename over the path would. The kernel is then told exactly what changed: the
 * entries whose inode changed, appeared or went, the listings that changed, and the attributes
 * of kept inodes that differ. A view inode whose path changed keeps its old generation, so an
 * open file or a running program reads what it opened until the kernel lets go of it; the old
 * generation's index and fragments stay open until then. docs/fusefs.md has the whole design. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- generations ---------------------------------------------------------------------------- */

static void frag_put(struct frag *f)
{
	if (!f || __atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	fragment_image_close(f->image);
	pthread_mutex_destroy(&f->lock);
	free(f->path);
	free(f);
}

static struct frag *frag_new(const char *path, const char *digest)
{
	struct frag *f = xcalloc(1, sizeof(*f));
	pthread_mutex_init(&f->lock, NULL);
	f->path = xstrdup(path);
	snprintf(f->digest, sizeof(f->digest), "%s", digest);
	f->refs = 1;
	f->dev = dev_is_dir(path);
	f->fresh = true;
	return f;
}

static void gen_free(struct gen *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n_frags; i++)
		frag_put(g->frags[i]);
	free(g->frags);
	free(g->to_view);
	compose_index_close(g->idx);
	if (g->scratch)
		unlink(g->index_path);
	free(g->index_path);
	json_object_put(g->info);
	free(g);
}

static void gen_put(struct gen *g)
{
	if (g && __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0)
		gen_free(g);
}

/* Opens the index at index_path with its images; a fragment the current generation has (same
 * digest) is shared with it, so it is not opened or verified again. */
static int frag_cmp(const void *a, const void *b)
{
	return strcmp((*(struct frag *const *)a)->digest, (*(struct frag *const *)b)->digest);
}

static int gen_open(struct daemon *d, const char *index_path, char *const *images, size_t n,
                    struct gen **out, struct mosaic_error *err)
{
	struct gen *g = xcalloc(1, sizeof(*g));
	g->index_path = xstrdup(index_path);
	int r = compose_index_open(index_path, &g->idx, err);
	if (r < 0) {
		gen_free(g);
		return r;
	}
	if (compose_index_fragments(g->idx) != n) {
		r = mosaic_errorf(err, -EINVAL, "index %s has %u fragments, %zu images given",
		                  index_path, compose_index_fragments(g->idx), n);
		gen_free(g);
		return r;
	}
	g->frags = xcalloc(n ? n : 1, sizeof(*g->frags));
	g->n_frags = n;
	/* The served generation's fragments by digest, to share them. */
	size_t ns = d->cur ? d->cur->n_frags : 0;
	_cleanup_free_ struct frag **served = xcalloc(ns + 1, sizeof(*served));
	if (ns) {
		memcpy(served, d->cur->frags, ns * sizeof(*served));
		qsort_safe(served, ns, sizeof(*served), frag_cmp);
	}
	for (size_t i = 0; i < n; i++) {
		struct frag key, *kp = &key, **hit;
		compose_index_fragment_digest(g->idx, i, key.digest);
		hit = ns ? bsearch(&kp, served, ns, sizeof(*served), frag_cmp) : NULL;
		struct frag *f = hit ? *hit : NULL;
		if (f)
			__atomic_add_fetch(&f->refs, 1, __ATOMIC_RELAXED);
		else
			f = frag_new(images[i], key.digest);
		g->frags[i] = f;
	}
	for (uint32_t i = 1; i <= compose_index_inodes(g->idx); i++)
		if (S_ISREG(compose_index_inode(g->idx, i)->mode))
			g->total_bytes += compose_index_inode(g->idx, i)->size;
	g->refs = 1;
	*out = g;
	return 0;
}

/* ---- view inodes ---------------------------------------------------------------------------- */

struct vnode *view_node(struct daemon *d, fuse_ino_t v)
{
	if (v == 0 || v >= d->next_vino)
		return NULL;
	struct vnode *c = d->vchunks[v >> VCHUNK_BITS];
	return c ? &c[v & (VCHUNK_SIZE - 1)] : NULL;
}

/* Makes room for view inodes up to last (only the switching thread grows the table). */
static void vnode_reserve(struct daemon *d, uint64_t last)
{
	for (uint64_t c = 0; c <= last >> VCHUNK_BITS && c < VCHUNKS; c++)
		if (!d->vchunks[c])
			__atomic_store_n(&d->vchunks[c], xcalloc(VCHUNK_SIZE, sizeof(struct vnode)),
			                 __ATOMIC_RELEASE);
}

const struct compose_inode *view_get(struct daemon *d, fuse_ino_t v, struct gen **g, uint32_t *ino)
{
	struct vnode *n = view_node(d, v);
	if (!n || !n->gen)
		return NULL;
	*g = n->gen;
	*ino = n->ino;
	return compose_index_inode(n->gen->idx, n->ino);
}

void view_ref(struct daemon *d, fuse_ino_t v)
{
	struct vnode *n = view_node(d, v);
	if (n)
		__atomic_add_fetch(&n->nlookup, 1, __ATOMIC_RELAXED);
}

void view_release(struct daemon *d, fuse_ino_t v)
{
	struct vnode *n = view_node(d, v);
	/* A view inode of a generation no longer served lives only as long as the kernel (or
	 * the upper) holds it; the served one's stay for the next lookup. */
	if (!n || !n->gen || n->gen == d->cur || __atomic_load_n(&n->nlookup, __ATOMIC_ACQUIRE) ||
	    __atomic_load_n(&n->upper, __ATOMIC_ACQUIRE))
		return;
	struct gen *g = __atomic_exchange_n(&n->gen, NULL, __ATOMIC_ACQ_REL);
	if (g)
		gen_put(g);
}

void view_forget(struct daemon *d, fuse_ino_t v, uint64_t count)
{
	struct vnode *n = view_node(d, v);
	if (!n || !n->gen)
		return;
	__atomic_sub_fetch(&n->nlookup, count, __ATOMIC_ACQ_REL);
	view_release(d, v);
}

/* The locks and the empty view inode table, for live_start and live_restore. */
static void live_init(struct daemon *d)
{
	pthread_rwlockattr_t a;
	pthread_rwlockattr_init(&a);
	/* A stream of readers must not keep a switch waiting. */
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&d->live, &a);
	pthread_rwlockattr_destroy(&a);
	pthread_mutex_init(&d->switch_lock, NULL);
	d->vchunks = xcalloc(VCHUNKS, sizeof(*d->vchunks));
}

int live_start(struct daemon *d, const char *index_path, char *const *images, size_t n,
               json_object *info, bool own_index, struct mosaic_error *err)
{
	live_init(d);
	struct gen *g;
	int r = gen_open(d, index_path, images, n, &g, err);
	if (r < 0)
		return r;
	g->scratch = own_index;
	for (size_t i = 0; i < g->n_frags; i++)
		g->frags[i]->fresh = false; /* verified on first use, as ever at mount */
	uint32_t ni = compose_index_inodes(g->idx);
	d->next_vino = ni + 1;
	vnode_reserve(d, ni);
	for (uint32_t i = 1; i <= ni; i++)
		*view_node(d, i) = (struct vnode){.gen = g, .ino = i};
	g->info = json_object_get(info);
	d->cur = g;
	d->idx = g->idx;
	return 0;
}

void live_stop(struct daemon *d)
{
	if (!d->vchunks)
		return;
	/* The kernel holds nothing any more: every generation goes. */
	struct gen *cur = d->cur;
	for (size_t c = 0; c < VCHUNKS; c++) {
		struct vnode *ch = d->vchunks[c];
		for (size_t i = 0; ch && i < VCHUNK_SIZE; i++)
			if (ch[i].gen && ch[i].gen != cur) {
				struct gen *g = ch[i].gen;
				ch[i].gen = NULL;
				gen_put(g);
			}
		free(ch);
	}
	free(d->vchunks);
	d->vchunks = NULL;
	gen_put(cur);
	d->cur = NULL;
	d->idx = NULL;
	pthread_rwlock_destroy(&d->live);
	pthread_mutex_destroy(&d->switch_lock);
}

/* ---- a switch ------------------------------------------------------------------------------- */

struct notice_entry {
	fuse_ino_t parent, ino; /* an entry (name set) or an inode */
	char *name;
	size_t len;
	off_t off; /* inode: -1 for its attributes, 0 for attributes and contents (listings) */
};

struct plan {
	struct daemon *d;
	struct gen *old, *new;
	uint32_t *claimed; /* [old ino] the new inode that kept its view inode, 0 none */
	uint32_t next_vino;
	uint64_t paths; /* counted by assign_new */
	struct notice_entry *notes;
	size_t n_notes, cap_notes;
	struct live_switch_result *res;
};

static void note(struct plan *p, fuse_ino_t parent, const char *name, size_t len, fuse_ino_t ino,
                 off_t off)
{
	if (p->n_notes == p->cap_notes) {
		p->cap_notes = p->cap_notes ? 2 * p->cap_notes : 256;
		p->notes = xrealloc(p->notes, p->cap_notes * sizeof(*p->notes));
	}
	p->notes[p->n_notes++] = (struct notice_entry){.parent = parent,
	                                               .ino = ino,
	                                               .name = name ? xstrndup(name, len) : NULL,
	                                               .len = len,
	                                               .off = off};
}

static fuse_ino_t old_view(const struct plan *p, uint32_t ino)
{
	return view_ino(p->old, ino);
}

static bool same_xattrs(const struct plan *p, uint32_t o, uint32_t n)
{
	uint32_t no, nn;
	const struct compose_xattr *xo = compose_index_xattrs(p->old->idx, o, &no);
	const struct compose_xattr *xn = compose_index_xattrs(p->new->idx, n, &nn);
	if (no != nn)
		return false;
	for (uint32_t i = 0; i < no; i++)
		if (xo[i].name_len != xn[i].name_len || xo[i].value_len != xn[i].value_len ||
		    memcmp(compose_index_string(p->old->idx, xo[i].name_off),
		           compose_index_string(p->new->idx, xn[i].name_off), xo[i].name_len) ||
		    memcmp(compose_index_string(p->old->idx, xo[i].value_off),
		           compose_index_string(p->new->idx, xn[i].value_off), xo[i].value_len))
			return false;
	return true;
}

/* Whether what a reader of the file gets is the same: the type, and a regular file's fragment
 * file, a link's target, a device's number. */
static bool same_content(const struct plan *p, const struct compose_inode *a,
                         const struct compose_inode *b)
{
	if ((a->mode & S_IFMT) != (b->mode & S_IFMT))
		return false;
	switch (a->mode & S_IFMT) {
	case S_IFREG:
		if (a->frag_inode != b->frag_inode || a->fragment >= p->old->n_frags ||
		    b->fragment >= p->new->n_frags ||
		    p->old->frags[a->fragment] != p->new->frags[b->fragment])
			return false;
		/* A live dev file is the same file while it is the same inode of its directory
		 * (frag_inode: its st_ino): an edit in place is a change of its content under the
		 * same number, as on any filesystem (pair_entry drops its cached pages). A file of
		 * an image is the same only with the same size too. */
		return p->new->frags[b->fragment]->dev || a->size == b->size;
	case S_IFLNK:
		return a->data_len == b->data_len &&
		       memcmp(compose_index_string(p->old->idx, a->data_off),
		              compose_index_string(p->new->idx, b->data_off), a->data_len) == 0;
	case S_IFCHR:
	case S_IFBLK:
		return a->rdev == b->rdev;
	}
	return true;
}

/* A file of a live dev directory written in place: every write moves its mtime. */
static bool live_edit(const struct plan *p, uint32_t o, uint32_t n)
{
	const struct compose_inode *a = compose_index_inode(p->old->idx, o);
	const struct compose_inode *b = compose_index_inode(p->new->idx, n);
	return S_ISREG(b->mode) && b->fragment < p->new->n_frags &&
	       p->new->frags[b->fragment]->dev &&
	       (a->mtime != b->mtime || a->mtime_nsec != b->mtime_nsec || a->size != b->size);
}

static bool same_attrs(const struct plan *p, uint32_t o, uint32_t n)
{
	const struct compose_inode *a = compose_index_inode(p->old->idx, o);
	const struct compose_inode *b = compose_index_inode(p->new->idx, n);
	return a->mode == b->mode && a->uid == b->uid && a->gid == b->gid && a->nlink == b->nlink &&
	       a->size == b->size && a->mtime == b->mtime && same_xattrs(p, o, n);
}

/* Gives new inode n, and everything below it, view inodes of their own. */
/* The paths at and below old inode o. */
static uint64_t old_paths(const struct plan *p, uint32_t o)
{
	uint64_t c = 1;
	uint32_t k;
	const struct compose_dirent *de = compose_index_dirents(p->old->idx, o, &k);
	for (uint32_t i = 0; i < k; i++)
		c += old_paths(p, de[i].ino);
	return c;
}

/* A directory the kernel may hold (a cwd) that left the view: its cached listing goes. */
static void old_dir_gone(struct plan *p, uint32_t o)
{
	if (S_ISDIR(compose_index_inode(p->old->idx, o)->mode))
		note(p, 0, NULL, 0, old_view(p, o), 0);
}

static fuse_ino_t assign_new(struct plan *p, uint32_t n)
{
	p->paths++;
	if (p->new->to_view[n])
		return p->new->to_view[n]; /* another link of it */
	fuse_ino_t v = p->next_vino++;
	p->new->to_view[n] = v;
	const struct compose_inode *in = compose_index_inode(p->new->idx, n);
	if (S_ISDIR(in->mode)) {
		uint32_t k;
		const struct compose_dirent *de = compose_index_dirents(p->new->idx, n, &k);
		for (uint32_t i = 0; i < k; i++)
			assign_new(p, de[i].ino);
	}
	return v;
}

/* The view inode old inode o had, for new inode n when their content is the same; else 0. */
static fuse_ino_t keep(struct plan *p, uint32_t o, uint32_t n)
{
	fuse_ino_t v = old_view(p, o);
	if (!same_content(p, compose_index_inode(p->old->idx, o),
	                  compose_index_inode(p->new->idx, n)))
		return 0;
	/* Links that the new index splits or joins: one of them keeps the number. */
	if ((p->claimed[o] && p->claimed[o] != n) ||
	    (p->new->to_view[n] && p->new->to_view[n] != v))
		return 0;
	if (!p->claimed[o])
		p->res->kept++;
	p->claimed[o] = n;
	p->new->to_view[n] = v;
	return v;
}

static void pair_dirs(struct plan *p, uint32_t od, uint32_t nd, fuse_ino_t vdir);

/* One name both directories have. Whether the directory's listing changed. */
static bool pair_entry(struct plan *p, fuse_ino_t vdir, const char *name, size_t len, uint32_t o,
                       uint32_t n)
{
	fuse_ino_t v = keep(p, o, n);
	if (v) {
		if (live_edit(p, o, n))
			note(p, 0, NULL, 0, v, 0); /* attributes and cached pages */
		else if (!same_attrs(p, o, n))
			note(p, 0, NULL, 0, v, -1);
		if (S_ISDIR(compose_index_inode(p->new->idx, n)->mode))
			pair_dirs(p, o, n, v);
		return false;
	}
	/* What is below a replaced path is added or removed with it; the path itself changed. */
	p->res->changed++;
	p->paths = 0;
	assign_new(p, n);
	p->res->added += p->paths - 1;
	p->res->removed += old_paths(p, o) - 1;
	old_dir_gone(p, o);
	note(p, vdir, name, len, 0, 0);
	return true;
}

static void pair_dirs(struct plan *p, uint32_t od, uint32_t nd, fuse_ino_t vdir)
{
	struct compose_index *oi = p->old->idx, *ni = p->new->idx;
	uint32_t on, nn, i = 0, j = 0;
	const struct compose_dirent *oe = compose_index_dirents(oi, od, &on);
	const struct compose_dirent *ne = compose_index_dirents(ni, nd, &nn);
	bool listing = false;
	while (i < on || j < nn) {
		int c = i == on   ? 1
		        : j == nn ? -1
		                  : compose_name_cmp(
		                        compose_index_string(oi, oe[i].name_off), oe[i].name_len,
		                        compose_index_string(ni, ne[j].name_off), ne[j].name_len);
		if (c == 0) {
			listing |= pair_entry(p, vdir, compose_index_string(ni, ne[j].name_off),
			                      ne[j].name_len, oe[i].ino, ne[j].ino);
			i++, j++;
		} else if (c < 0) { /* gone */
			p->res->removed += old_paths(p, oe[i].ino);
			old_dir_gone(p, oe[i].ino);
			note(p, vdir, compose_index_string(oi, oe[i].name_off), oe[i].name_len, 0,
			     0);
			listing = true;
			i++;
		} else { /* new: the kernel may hold a negative entry for it */
			p->paths = 0;
			assign_new(p, ne[j].ino);
			p->res->added += p->paths;
			note(p, vdir, compose_index_string(ni, ne[j].name_off), ne[j].name_len, 0,
			     0);
			listing = true;
			j++;
		}
	}
	if (listing)
		note(p, 0, NULL, 0, vdir, 0);
}

static void plan_clear(struct plan *p)
{
	for (size_t i = 0; i < p->n_notes; i++)
		free(p->notes[i].name);
	free(p->notes);
	free(p->claimed);
}

/* Verifies and opens every fragment of g that the served generation does not have. */
static int verify_new(struct daemon *d, struct gen *g, struct mosaic_error *err)
{
	for (size_t i = 0; i < g->n_frags; i++) {
		struct frag *f = g->frags[i];
		/* Only what the served generation does not have: the fragments it shares are
		 * verified on their first use, as at mount. A dev directory is live and unsigned
		 * by design. */
		if (!f->fresh || f->image || f->dev)
			continue;
		int r = fusefs_frag_check(d, f, err);
		if (r < 0)
			return mosaic_errorf(err, r, "fragment %.12s (%s): %s; %s", f->digest,
			                     f->path, err->msg,
			                     "the served composition is unchanged");
		__atomic_add_fetch(&d->fragment_opens, 1, __ATOMIC_RELAXED);
		f->fresh = false;
	}
	return 0;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int live_switch(struct daemon *d, const char *index_path, char *const *images, size_t n,
                json_object *info, bool own_index, uint64_t expect, struct live_switch_result *res,
                struct mosaic_error *err)
{
	*res = (struct live_switch_result){0};
	double t0 = now_ms();
	pthread_mutex_lock(&d->switch_lock);
	if (expect && __atomic_load_n(&d->switches, __ATOMIC_ACQUIRE) + 1 != expect) {
		pthread_mutex_unlock(&d->switch_lock);
		return -EAGAIN; /* another switch came first: what the caller built is stale */
	}
	struct gen *g = NULL;
	int r = gen_open(d, index_path, images, n, &g, err);
	if (r == 0)
		r = verify_new(d, g, err);
	if (r < 0) {
		pthread_mutex_unlock(&d->switch_lock);
		gen_free(g);
		return r;
	}
	g->info = json_object_get(info);
	g->scratch = own_index;
	struct plan p = {.d = d, .old = d->cur, .new = g, .next_vino = d->next_vino, .res = res};
	uint32_t n_old = compose_index_inodes(p.old->idx), n_new = compose_index_inodes(g->idx);
	p.claimed = xcalloc(n_old + 1, sizeof(*p.claimed));
	g->to_view = xcalloc(n_new + 1, sizeof(*g->to_view));
	if (!keep(&p, COMPOSE_ROOT_INO, COMPOSE_ROOT_INO)) {
		/* both roots are directories: a root always keeps its number */
		g->to_view[COMPOSE_ROOT_INO] = FUSE_ROOT_ID;
		p.claimed[COMPOSE_ROOT_INO] = COMPOSE_ROOT_INO;
	}
	if (!same_attrs(&p, COMPOSE_ROOT_INO, COMPOSE_ROOT_INO))
		note(&p, 0, NULL, 0, FUSE_ROOT_ID, -1);
	pair_dirs(&p, COMPOSE_ROOT_INO, COMPOSE_ROOT_INO, FUSE_ROOT_ID);
	for (uint32_t i = 1; i <= n_new; i++) /* unreachable inodes: an index has none */
		if (!g->to_view[i])
			g->to_view[i] = p.next_vino++;
	vnode_reserve(d, p.next_vino);
	res->planned_ms = now_ms() - t0;

	/* Apply: no request runs while the view inodes change meaning. */
	pthread_rwlock_wrlock(&d->live);
	struct gen *old = d->cur;
	if (d->on_switch)
		d->on_switch(d, &(struct switch_plan){.old = old, .new = g, .claimed = p.claimed});
	for (uint32_t i = 1; i <= n_new; i++) {
		struct vnode *vn =
		    &d->vchunks[g->to_view[i] >> VCHUNK_BITS][g->to_view[i] & (VCHUNK_SIZE - 1)];
		if (vn->gen != old || !p.claimed[vn->ino] || p.claimed[vn->ino] != i)
			vn->last_name = 0; /* a new view inode: nothing is known of it */
		vn->gen = g;
		vn->ino = i;
	}
	d->next_vino = p.next_vino;
	uint64_t stranded = 0;
	for (uint32_t i = 1; i <= n_old; i++) {
		if (p.claimed[i])
			continue;
		struct vnode *vn = view_node(d, view_ino(old, i));
		if (!vn || vn->gen != old || vn->ino != i)
			continue;
		if (__atomic_load_n(&vn->nlookup, __ATOMIC_RELAXED) == 0 && !vn->upper)
			*vn = (struct vnode){0};
		else
			stranded++; /* held by the kernel: it keeps the old generation alive */
	}
	d->cur = g;
	d->idx = g->idx;
	__atomic_add_fetch(&d->switches, 1, __ATOMIC_ACQ_REL);
	/* the served reference becomes the stranded ones' */
	__atomic_add_fetch(&old->refs, stranded, __ATOMIC_ACQ_REL);
	pthread_rwlock_unlock(&d->live);
	gen_put(old);

	/* Tell the kernel, outside the lock: an invalidation waits for the lookups running in
	 * that directory, and those wait for the lock. */
	for (size_t i = 0; i < p.n_notes; i++) {
		const struct notice_entry *x = &p.notes[i];
		int e = x->name
		            ? fuse_lowlevel_notify_inval_entry(d->se, x->parent, x->name, x->len)
		            : fuse_lowlevel_notify_inval_inode(d->se, x->ino, x->off, 0);
		/* -ENOENT: the kernel holds nothing there, which is what was wanted */
		if (e == 0 || e == -ENOENT)
			res->invalidations++;
	}
	__atomic_add_fetch(&d->invalidations, res->invalidations, __ATOMIC_RELAXED);
	res->stranded = stranded;
	res->ms = now_ms() - t0;
	plan_clear(&p);
	pthread_mutex_unlock(&d->switch_lock);
	return 0;
}

/* ---- handing the view to another daemon ----------------------------------------------------- */

struct saved_vnode {
	uint32_t gen; /* 1 + the generation's place in "gens"; 0: unused */
	uint32_t ino;
	uint64_t nlookup, last_name;
};

static char *handover_file(struct daemon *d, const char *name)
{
	return path_join(d->state_dir, name);
}

static int write_blob(const char *path, const void *p, size_t len, struct mosaic_error *err)
{
	int r = write_file_atomic(path, p, len, 0600);
	return r < 0 ? mosaic_errorf(err, r, "%s: %s", path, strerror(-r)) : 0;
}

int live_save(struct daemon *d, json_object *out, struct mosaic_error *err)
{
	/* The generations still in use: the served one and those the kernel still holds. */
	struct gen **gens = NULL;
	size_t n = 0;
	for (fuse_ino_t v = 0; v < d->next_vino; v++) {
		struct vnode *vn = v ? view_node(d, v) : NULL;
		struct gen *g = v ? (vn ? vn->gen : NULL) : d->cur;
		if (!g)
			continue;
		size_t i = 0;
		while (i < n && gens[i] != g)
			i++;
		if (i == n) {
			gens = xrealloc(gens, (n + 1) * sizeof(*gens));
			gens[n++] = g;
		}
	}
	json_object *arr = json_object_new_array();
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct gen *g = gens[i];
		json_object *o = json_object_new_object(), *imgs = json_object_new_array();
		json_object_object_add(o, "index", json_object_new_string(g->index_path));
		for (size_t j = 0; j < g->n_frags; j++)
			json_object_array_add(imgs, json_object_new_string(g->frags[j]->path));
		json_object_object_add(o, "images", imgs);
		json_object_object_add(o, "info", json_object_get(g->info));
		json_object_object_add(o, "scratch", json_object_new_boolean(g->scratch));
		if (g->to_view) {
			_cleanup_free_ char *name = xasprintf("handover-map-%zu", i);
			_cleanup_free_ char *p = handover_file(d, name);
			r = write_blob(p, g->to_view,
			               (compose_index_inodes(g->idx) + 1) * sizeof(*g->to_view),
			               err);
			json_object_object_add(o, "map", json_object_new_string(p));
		}
		json_object_array_add(arr, o);
	}
	json_object_object_add(out, "gens", arr);
	json_object_object_add(out, "next_vino", json_object_new_int64(d->next_vino));
	struct saved_vnode *sv = xcalloc(d->next_vino, sizeof(*sv));
	for (fuse_ino_t v = 1; v < d->next_vino; v++) {
		struct vnode *vn = view_node(d, v);
		if (!vn || !vn->gen)
			continue;
		size_t i = 0;
		while (gens[i] != vn->gen)
			i++;
		sv[v] = (struct saved_vnode){i + 1, vn->ino, vn->nlookup, vn->last_name};
	}
	_cleanup_free_ char *p = handover_file(d, "handover-vnodes");
	if (r == 0)
		r = write_blob(p, sv, d->next_vino * sizeof(*sv), err);
	json_object_object_add(out, "vnodes", json_object_new_string(p));
	free(sv);
	free(gens);
	return r;
}

int live_restore(struct daemon *d, json_object *in, struct mosaic_error *err)
{
	live_init(d);
	json_object *arr, *v;
	if (!json_object_object_get_ex(in, "gens", &arr) || !json_object_array_length(arr) ||
	    !json_object_object_get_ex(in, "next_vino", &v))
		return mosaic_errorf(err, -EINVAL, "the handover names no generation");
	size_t n = json_object_array_length(arr);
	struct gen **gens = xcalloc(n, sizeof(*gens));
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		json_object *o = json_object_array_get_idx(arr, i), *x;
		json_object_object_get_ex(o, "images", &x);
		size_t ni = x ? json_object_array_length(x) : 0;
		char **imgs = xcalloc(ni + 1, sizeof(*imgs));
		for (size_t j = 0; j < ni; j++)
			imgs[j] = (char *)json_object_get_string(json_object_array_get_idx(x, j));
		json_object_object_get_ex(o, "index", &x);
		/* Fragments shared between generations are opened once: d->cur is the last one
		 * restored, which gen_open shares with. */
		r = gen_open(d, json_object_get_string(x), imgs, ni, &gens[i], err);
		free(imgs);
		if (r < 0)
			break;
		gens[i]->refs = 0;
		for (size_t j = 0; j < gens[i]->n_frags; j++)
			gens[i]->frags[j]->fresh = false;
		if (json_object_object_get_ex(o, "info", &x) && x)
			gens[i]->info = json_object_get(x);
		gens[i]->scratch =
		    json_object_object_get_ex(o, "scratch", &x) && json_object_get_boolean(x);
		if (json_object_object_get_ex(o, "map", &x) && x) {
			_cleanup_free_ char *blob = NULL;
			size_t len,
			    want = (compose_index_inodes(gens[i]->idx) + 1) * sizeof(uint32_t);
			r = read_file(json_object_get_string(x), want + 1, &blob, &len);
			if (r < 0 || len != want) {
				r = mosaic_errorf(err, r < 0 ? r : -EINVAL, "%s: not the map of %s",
				                  json_object_get_string(x), gens[i]->index_path);
				break;
			}
			gens[i]->to_view = xmalloc(want);
			memcpy(gens[i]->to_view, blob, want);
		}
		if (i == 0)
			d->cur = gens[0]; /* the served one is first */
	}
	d->next_vino = json_object_get_int64(v);
	json_object_object_get_ex(in, "vnodes", &v);
	_cleanup_free_ char *blob = NULL;
	size_t len = 0;
	if (r == 0 && (r = read_file(json_object_get_string(v), (size_t)d->next_vino * 32 + 1,
	                             &blob, &len)) < 0)
		r = mosaic_errorf(err, r, "the handover's view inodes: %s", strerror(-r));
	if (r == 0 && len != d->next_vino * sizeof(struct saved_vnode))
		r = mosaic_errorf(err, -EINVAL, "the handover's view inodes are cut short");
	if (r == 0) {
		vnode_reserve(d, d->next_vino);
		const struct saved_vnode *sv = (const void *)blob;
		for (fuse_ino_t x = 1; x < d->next_vino; x++) {
			if (!sv[x].gen || sv[x].gen > n)
				continue;
			struct gen *g = gens[sv[x].gen - 1];
			*view_node(d, x) = (struct vnode){.gen = g,
			                                  .ino = sv[x].ino,
			                                  .nlookup = sv[x].nlookup,
			                                  .last_name = sv[x].last_name};
			if (g != gens[0])
				g->refs++;
		}
		gens[0]->refs++;
		d->cur = gens[0];
		d->idx = gens[0]->idx;
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			if (gens[i])
				gen_free(gens[i]);
		d->cur = NULL;
	}
	free(gens);
	return r;
}
