/* Building a composition index: walk every fragment's metadata once (fragment_walk), merge
 * with kernel overlayfs's rules into one tree (package fragments with dpkg's for directories
 * and symlinks to them), then serialise it with sorted directories. */
#include "compose/index-format.h"
#include "fragments/fragment.h"

#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* A file as the view shows it; hard links within a fragment share one. */
struct minode {
	uint32_t mode, uid, gid, nlink;
	uint64_t size;
	int64_t mtime;
	uint32_t mtime_nsec;
	dev_t rdev;
	uint32_t fragment;
	uint64_t frag_inode;
	char *link;
	struct fragment_xattr *xattrs;
	size_t n_xattrs;
	uint32_t ino;
};

/* A name in the merged tree. Nodes live until the build ends, so a pointer is never reused
 * while the child map may still hold a stale entry for it. */
struct mnode {
	char *name;
	struct mnode *parent;
	struct minode *inode;
	struct mnode **children;
	size_t n_children, cap_children, pos; /* pos: index in the parent's children */
	uint32_t fragment;                    /* the fragment that last gave this name */
};

struct builder {
	const struct compose_input *in;
	size_t n_in;
	struct mnode **nodes; /* every node ever made */
	size_t n_nodes, cap_nodes;
	struct minode **inodes;
	size_t n_inodes, cap_inodes;
	struct mnode **map; /* (parent, name) -> live child; open addressing with tombstones */
	size_t map_cap, map_used;
	struct mnode *root;
	/* per fragment */
	uint32_t frag;
	struct mnode *stack[4096];
	struct minode **links; /* inode_number -> minode, for hard links */
	size_t cap_links;
	struct fragment_image **images; /* opened only to compare same-sized conflicting files */
	struct compose_result *res;
	struct mosaic_error *err;
};

static struct mnode TOMBSTONE;

static uint64_t key_hash(const struct mnode *parent, const char *name)
{
	uint64_t h = (uintptr_t)parent * 0x9E3779B97F4A7C15ull;
	for (const char *c = name; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211ull;
	return h;
}

static void map_grow(struct builder *b);

static struct mnode **map_find(struct builder *b, const struct mnode *parent, const char *name)
{
	size_t mask = b->map_cap - 1, i = key_hash(parent, name) & mask;
	struct mnode **tomb = NULL;
	for (;; i = (i + 1) & mask) {
		struct mnode *e = b->map[i];
		if (!e)
			return tomb ? tomb : &b->map[i];
		if (e == &TOMBSTONE) {
			if (!tomb)
				tomb = &b->map[i];
		} else if (e->parent == parent && strcmp(e->name, name) == 0) {
			return &b->map[i];
		}
	}
}

static struct mnode *child_get(struct builder *b, struct mnode *dir, const char *name)
{
	struct mnode *e = *map_find(b, dir, name);
	return e == &TOMBSTONE ? NULL : e;
}

static void map_grow(struct builder *b)
{
	struct mnode **old = b->map;
	size_t old_cap = b->map_cap;
	b->map_cap = old_cap ? old_cap * 2 : 4096;
	b->map = xcalloc(b->map_cap, sizeof(*b->map));
	b->map_used = 0;
	for (size_t i = 0; i < old_cap; i++)
		if (old[i] && old[i] != &TOMBSTONE) {
			*map_find(b, old[i]->parent, old[i]->name) = old[i];
			b->map_used++;
		}
	free(old);
}

static void child_remove(struct builder *b, struct mnode *c)
{
	struct mnode *dir = c->parent;
	struct mnode **slot = map_find(b, dir, c->name);
	if (*slot == c)
		*slot = &TOMBSTONE;
	dir->children[c->pos] = dir->children[--dir->n_children];
	dir->children[c->pos]->pos = c->pos;
}

static struct minode *minode_new(struct builder *b)
{
	struct minode *m = xcalloc(1, sizeof(*m));
	m->fragment = COMPOSE_NO_FRAGMENT;
	if (b->n_inodes == b->cap_inodes) {
		b->cap_inodes = b->cap_inodes ? b->cap_inodes * 2 : 1024;
		b->inodes = xrealloc(b->inodes, b->cap_inodes * sizeof(*b->inodes));
	}
	b->inodes[b->n_inodes++] = m;
	return m;
}

static struct mnode *node_new(struct builder *b, struct mnode *dir, const char *name)
{
	struct mnode *n = xcalloc(1, sizeof(*n));
	n->name = xstrdup(name);
	n->parent = dir;
	if (b->n_nodes == b->cap_nodes) {
		b->cap_nodes = b->cap_nodes ? b->cap_nodes * 2 : 1024;
		b->nodes = xrealloc(b->nodes, b->cap_nodes * sizeof(*b->nodes));
	}
	b->nodes[b->n_nodes++] = n;
	if (dir) {
		if ((b->map_used + 1) * 2 > b->map_cap)
			map_grow(b);
		*map_find(b, dir, name) = n;
		b->map_used++;
		if (dir->n_children == dir->cap_children) {
			dir->cap_children = dir->cap_children ? dir->cap_children * 2 : 8;
			dir->children =
			    xrealloc(dir->children, dir->cap_children * sizeof(*dir->children));
		}
		n->pos = dir->n_children;
		dir->children[dir->n_children++] = n;
	}
	return n;
}

static void set_attrs(struct builder *b, struct minode *m, const struct fragment_entry *e)
{
	m->mode = e->mode;
	m->uid = e->uid;
	m->gid = e->gid;
	m->nlink = e->nlink;
	m->size = e->size;
	m->mtime = e->mtime;
	m->rdev = e->rdev;
	m->fragment = b->frag;
	m->frag_inode = e->inode_id;
	m->mtime_nsec = e->mtime_nsec;
	free(m->link);
	m->link = e->link ? xstrdup(e->link) : NULL;
	if (S_ISREG(e->mode) && b->in[b->frag].dev)
		m->link = xstrdup(e->path); /* where the daemon reads it */
	for (size_t i = 0; i < m->n_xattrs; i++) {
		free(m->xattrs[i].name);
		free(m->xattrs[i].value);
	}
	free(m->xattrs);
	m->xattrs = NULL;
	m->n_xattrs = 0;
	for (size_t i = 0; i < e->n_xattrs; i++) {
		/* overlayfs keeps its own xattrs to itself, and so does the view. */
		if (strncmp(e->xattrs[i].name, "trusted.overlay.", 16) == 0)
			continue;
		m->xattrs = xrealloc(m->xattrs, (m->n_xattrs + 1) * sizeof(*m->xattrs));
		void *v = xmalloc(e->xattrs[i].len + 1);
		memcpy(v, e->xattrs[i].value, e->xattrs[i].len);
		m->xattrs[m->n_xattrs++] = (struct fragment_xattr){
		    .name = xstrdup(e->xattrs[i].name), .value = v, .len = e->xattrs[i].len};
	}
}

static bool opaque_xattr(const struct fragment_entry *e)
{
	for (size_t i = 0; i < e->n_xattrs; i++)
		if (strcmp(e->xattrs[i].name, "trusted.overlay.opaque") == 0 &&
		    e->xattrs[i].len == 1 && *(char *)e->xattrs[i].value == 'y')
			return true;
	return false;
}

/* Drops every child a lower fragment gave dir (an opaque directory hides them). */
static void hide_lower(struct builder *b, struct mnode *dir)
{
	for (size_t i = dir->n_children; i-- > 0;)
		if (dir->children[i]->fragment < b->frag)
			child_remove(b, dir->children[i]);
}

static char *node_path(const struct mnode *n)
{
	if (!n->parent)
		return xstrdup("/");
	_cleanup_free_ char *p = node_path(n->parent);
	return xasprintf("%s%s%s", p, strcmp(p, "/") ? "/" : "", n->name);
}

static int image_for(struct builder *b, uint32_t f, struct fragment_image **out)
{
	if (!b->images[f]) {
		int r = fragment_image_open(b->in[f].image_path, &b->images[f], b->err);
		if (r < 0)
			return r;
	}
	*out = b->images[f];
	return 0;
}

/* Whether two regular files of two fragments differ in content (sizes are equal). */
static int content_differs(struct builder *b, const struct minode *lo, uint32_t hi_frag,
                           uint64_t hi_inode)
{
	struct fragment_image *a, *c;
	struct fragment_file *fa = NULL, *fc = NULL;
	int r;
	if ((r = image_for(b, lo->fragment, &a)) < 0 || (r = image_for(b, hi_frag, &c)) < 0)
		return r;
	if (fragment_file_open(a, lo->frag_inode, &fa) < 0 ||
	    fragment_file_open(c, hi_inode, &fc) < 0) {
		free(fa);
		return mosaic_errorf(b->err, -EIO, "reading a file to compare contents failed");
	}
	static char x[1 << 16], y[1 << 16];
	int differs = 0;
	for (off_t off = 0; (uint64_t)off < lo->size && !differs; off += sizeof(x)) {
		ssize_t n = fragment_file_read(a, fa, off, x, sizeof(x));
		ssize_t m = fragment_file_read(c, fc, off, y, sizeof(y));
		if (n < 0 || m < 0) {
			differs = mosaic_errorf(b->err, -EIO, "reading a file to compare failed");
			break;
		}
		differs = n != m || memcmp(x, y, n) != 0;
	}
	free(fa);
	free(fc);
	return differs;
}

static int note_conflict(struct builder *b, struct mnode *old, const struct fragment_entry *e)
{
	struct minode *m = old->inode;
	/* Within one package a path can come twice only through a symlinked directory (bin/foo
	 * and usr/bin/foo on merged /usr): the package's own business, not a conflict. */
	if (!S_ISREG(e->mode) || !S_ISREG(m->mode) || m->fragment == COMPOSE_NO_FRAGMENT ||
	    m->fragment == b->frag || !b->in[m->fragment].package || !b->in[b->frag].package)
		return 0;
	int differs = m->size != e->size ? 1 : content_differs(b, m, b->frag, e->inode_id);
	if (differs <= 0)
		return differs;
	struct compose_result *res = b->res;
	res->conflicts = xrealloc(res->conflicts, (res->n_conflicts + 1) * sizeof(*res->conflicts));
	res->conflicts[res->n_conflicts++] = (struct compose_conflict){
	    .path = node_path(old), .lower = m->fragment, .upper = b->frag};
	return 0;
}

/* The directory a symlink in dir with target link leads to in the tree so far, as the kernel
 * resolves it in a chroot of the composition: absolute targets start at the root, ".." at the
 * root stays there, at most 40 symlinks are followed, this one included (the kernel's
 * MAXSYMLINKS). NULL when it dangles, loops or ends at something that is not a directory. */
static struct mnode *resolve_dir(struct builder *b, struct mnode *dir, const char *link,
                                 unsigned *hops)
{
	if (++*hops > 40 || !*link)
		return NULL;
	_cleanup_free_ char *copy = xstrdup(link);
	struct mnode *cur = link[0] == '/' ? b->root : dir;
	char *save = NULL;
	for (char *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (strcmp(c, ".") == 0)
			continue;
		if (strcmp(c, "..") == 0) {
			cur = cur->parent ? cur->parent : b->root;
			continue;
		}
		struct mnode *next = child_get(b, cur, c);
		if (next && S_ISLNK(next->inode->mode)) {
			if (!next->inode->link)
				return NULL;
			next = resolve_dir(b, cur, next->inode->link, hops);
		}
		if (!next || !S_ISDIR(next->inode->mode))
			return NULL;
		cur = next;
	}
	return cur;
}

static int merge_entry(void *ctx, const struct fragment_entry *e)
{
	struct builder *b = ctx;
	if (e->depth >= ARRAY_SIZE(b->stack) - 1)
		return mosaic_errorf(b->err, -ELOOP, "%s: directories nested too deep",
		                     b->in[b->frag].image_path);
	if (e->depth == 0) {
		/* Directories merge; the highest one's attributes show. */
		set_attrs(b, b->root->inode, e);
		b->root->fragment = b->frag;
		if (opaque_xattr(e))
			hide_lower(b, b->root);
		b->stack[1] = b->root;
		return 0;
	}
	struct mnode *dir = b->stack[e->depth];
	if (!dir)
		return 0; /* inside a directory this fragment replaced by a whiteout: nothing */

	/* Whiteouts: a 0/0 character device, or OCI-style .wh.NAME and .wh..wh..opq files. */
	const char *victim = NULL;
	if (S_ISCHR(e->mode) && e->rdev == makedev(0, 0))
		victim = e->name;
	else if (strcmp(e->name, ".wh..wh..opq") == 0) {
		hide_lower(b, dir);
		return 0;
	} else if (strncmp(e->name, ".wh.", 4) == 0)
		victim = e->name + 4;
	if (victim) {
		struct mnode *old = child_get(b, dir, victim);
		if (old && old->fragment < b->frag)
			child_remove(b, old);
		if (S_ISDIR(e->mode))
			b->stack[e->depth + 1] = NULL;
		return 0;
	}

	struct mnode *old = child_get(b, dir, e->name);
	if (b->in[b->frag].package && old && S_ISDIR(e->mode) && S_ISLNK(old->inode->mode)) {
		/* dpkg never replaces a symlink to a directory with a directory: what the package
		 * has below it goes where the symlink leads (on merged /usr, bin/ls lands in
		 * usr/bin/ls), and that directory keeps its attributes, as dpkg leaves an existing
		 * directory alone. */
		unsigned hops = 0;
		struct mnode *target = resolve_dir(b, dir, old->inode->link, &hops);
		if (target) {
			b->stack[e->depth + 1] = target;
			return 0;
		}
	}
	if (b->in[b->frag].package && old && S_ISLNK(e->mode) && S_ISDIR(old->inode->mode)) {
		/* Nor a directory with a symlink: dpkg keeps the directory and skips the link. */
		return 0;
	}
	if (S_ISDIR(e->mode) && old && S_ISDIR(old->inode->mode)) {
		set_attrs(b, old->inode, e);
		old->fragment = b->frag;
		if (opaque_xattr(e))
			hide_lower(b, old);
		b->stack[e->depth + 1] = old;
		return 0;
	}
	if (old) {
		int r = note_conflict(b, old, e);
		if (r < 0)
			return r;
		child_remove(b, old);
	}
	struct mnode *n = node_new(b, dir, e->name);
	n->fragment = b->frag;
	if (!S_ISDIR(e->mode) && e->nlink > 1) {
		if (e->inode_number >= b->cap_links) {
			size_t cap = (size_t)e->inode_number * 2 + 16;
			b->links = xrealloc(b->links, cap * sizeof(*b->links));
			memset(b->links + b->cap_links, 0,
			       (cap - b->cap_links) * sizeof(*b->links));
			b->cap_links = cap;
		}
		if (b->links[e->inode_number]) {
			n->inode = b->links[e->inode_number];
			return 0;
		}
		n->inode = b->links[e->inode_number] = minode_new(b);
	} else {
		n->inode = minode_new(b);
	}
	set_attrs(b, n->inode, e);
	if (S_ISDIR(e->mode))
		b->stack[e->depth + 1] = n;
	return 0;
}

/* ---- serialising -------------------------------------------------------------------------- */

struct buf {
	uint8_t *data;
	size_t len, cap;
};

static size_t buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 4096;
		b->data = xrealloc(b->data, b->cap);
	}
	size_t off = b->len;
	if (n)
		memcpy(b->data + off, p, n);
	b->len += n;
	return off;
}

static int child_cmp(const void *a, const void *b)
{
	return strcmp((*(struct mnode *const *)a)->name, (*(struct mnode *const *)b)->name);
}

struct writer {
	struct builder *b;
	struct compose_inode *inodes;
	uint32_t n_inodes;
	struct buf dirents, xattrs, strings;
};

static uint32_t encode_rdev(dev_t d)
{
	return (major(d) & 0xfff) << 20 | (minor(d) & 0xfffff);
}

/* Numbers inodes depth first (the root is 1); hard links keep the first number given. */
static void number(struct writer *w, struct mnode *n)
{
	if (!n->inode->ino)
		n->inode->ino = ++w->n_inodes;
	if (n->n_children > 1)
		qsort_safe(n->children, n->n_children, sizeof(*n->children), child_cmp);
	for (size_t i = 0; i < n->n_children; i++)
		number(w, n->children[i]);
}

static void emit(struct writer *w, struct mnode *n)
{
	struct minode *m = n->inode;
	struct compose_inode *ci = &w->inodes[m->ino - 1];
	if (ci->mode && !S_ISDIR(m->mode))
		return; /* a hard link already written */
	*ci = (struct compose_inode){
	    .mode = m->mode,
	    .uid = m->uid,
	    .gid = m->gid,
	    .nlink = m->nlink,
	    .size = m->size,
	    .mtime = m->mtime,
	    .rdev = encode_rdev(m->rdev),
	    .fragment = m->fragment,
	    .frag_inode = m->frag_inode,
	    .parent = n->parent ? n->parent->inode->ino : COMPOSE_ROOT_INO,
	    .xattr_first = w->xattrs.len / sizeof(struct compose_xattr),
	    .xattr_count = m->n_xattrs,
	    .mtime_nsec = m->mtime_nsec,
	};
	for (size_t i = 0; i < m->n_xattrs; i++) {
		struct compose_xattr x = {
		    .name_len = strlen(m->xattrs[i].name),
		    .value_len = m->xattrs[i].len,
		};
		x.name_off = buf_add(&w->strings, m->xattrs[i].name, x.name_len);
		x.value_off = buf_add(&w->strings, m->xattrs[i].value, x.value_len);
		buf_add(&w->xattrs, &x, sizeof(x));
	}
	if (S_ISLNK(m->mode) || (S_ISREG(m->mode) && m->link)) {
		ci->data_len = strlen(m->link ? m->link : "");
		ci->data_off = buf_add(&w->strings, m->link ? m->link : "", ci->data_len);
	} else if (S_ISDIR(m->mode)) {
		uint32_t subdirs = 0;
		ci->data_off = w->dirents.len / sizeof(struct compose_dirent);
		ci->data_len = n->n_children;
		for (size_t i = 0; i < n->n_children; i++) {
			struct mnode *c = n->children[i];
			struct compose_dirent d = {.name_len = strlen(c->name),
			                           .ino = c->inode->ino};
			d.name_off = buf_add(&w->strings, c->name, d.name_len);
			buf_add(&w->dirents, &d, sizeof(d));
			subdirs += S_ISDIR(c->inode->mode);
		}
		ci->nlink = 2 + subdirs;
		ci->size = (n->n_children + 2) * 32;
	}
	for (size_t i = 0; i < n->n_children; i++)
		emit(w, n->children[i]);
}

static size_t align8(struct buf *b)
{
	static const uint8_t zero[8];
	buf_add(b, zero, (8 - b->len % 8) % 8);
	return b->len;
}

static int write_index(struct builder *b, const char *out_path, struct mosaic_error *err)
{
	struct writer w = {.b = b};
	number(&w, b->root);
	w.inodes = xcalloc(w.n_inodes, sizeof(*w.inodes));
	emit(&w, b->root);

	struct index_header h = {.version = COMPOSE_INDEX_VERSION,
	                         .header_size = sizeof(struct index_header)};
	memcpy(h.magic, INDEX_MAGIC, 8);
	struct buf f = {0};
	buf_add(&f, &h, sizeof(h));
	h.fragments_off = align8(&f);
	for (size_t i = 0; i < b->n_in; i++) {
		struct index_fragment fr;
		for (int k = 0; k < SHA256_LEN; k++)
			sscanf(b->in[i].digest + 2 * k, "%2hhx", &fr.digest[k]);
		buf_add(&f, &fr, sizeof(fr));
	}
	h.inodes_off = align8(&f);
	buf_add(&f, w.inodes, (size_t)w.n_inodes * sizeof(*w.inodes));
	h.dirents_off = align8(&f);
	buf_add(&f, w.dirents.data, w.dirents.len);
	h.xattrs_off = align8(&f);
	buf_add(&f, w.xattrs.data, w.xattrs.len);
	h.strings_off = align8(&f);
	buf_add(&f, w.strings.data, w.strings.len);
	h.strings_size = w.strings.len;
	h.n_fragments = b->n_in;
	h.n_inodes = w.n_inodes;
	h.n_dirents = w.dirents.len / sizeof(struct compose_dirent);
	h.n_xattrs = w.xattrs.len / sizeof(struct compose_xattr);
	h.file_size = f.len;
	char hex[SHA256_HEX_LEN + 1];
	sha256_buffer(f.data + sizeof(h), f.len - sizeof(h), hex);
	for (int k = 0; k < SHA256_LEN; k++)
		sscanf(hex + 2 * k, "%2hhx", &h.checksum[k]);
	memcpy(f.data, &h, sizeof(h));

	int r = 0;
	if (w.strings.len > UINT32_MAX || h.n_dirents > UINT32_MAX)
		r = mosaic_errorf(err, -EFBIG, "composition too large for index version 1");
	else if ((r = write_file_atomic(out_path, f.data, f.len, 0644)) < 0)
		r = mosaic_errorf(err, r, "%s: %s", out_path, strerror(-r));
	if (b->res) {
		b->res->inodes = w.n_inodes;
		b->res->dirents = h.n_dirents;
	}
	free(f.data);
	free(w.inodes);
	free(w.dirents.data);
	free(w.xattrs.data);
	free(w.strings.data);
	return r;
}

void compose_result_clear(struct compose_result *r)
{
	for (size_t i = 0; i < r->n_conflicts; i++)
		free(r->conflicts[i].path);
	free(r->conflicts);
	memset(r, 0, sizeof(*r));
}

int compose_index_build(const struct compose_input *in, size_t n,
                        const struct compose_build_options *o, const char *out_path,
                        struct compose_result *res, struct mosaic_error *err)
{
	bool strict = o && o->strict;
	struct compose_result local = {0};
	struct builder b = {.in = in, .n_in = n, .res = res ? res : &local, .err = err};
	memset(b.res, 0, sizeof(*b.res));
	b.images = xcalloc(n ? n : 1, sizeof(*b.images));
	map_grow(&b);
	b.root = node_new(&b, NULL, "");
	b.root->inode = minode_new(&b);
	b.root->inode->mode = S_IFDIR | 0755;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		b.frag = i;
		memset(b.stack, 0, sizeof(b.stack));
		if (b.links)
			memset(b.links, 0, b.cap_links * sizeof(*b.links));
		r = in[i].dev ? fragment_walk_dir(in[i].image_path, merge_entry, &b, err)
		              : fragment_walk(in[i].image_path, merge_entry, &b, err);
		if (r == 0 && o && o->progress)
			o->progress(i + 1, n, b.n_nodes, o->data);
	}
	if (r == 0 && strict && b.res->n_conflicts > 0) {
		const struct compose_conflict *c = &b.res->conflicts[0];
		r = mosaic_errorf(
		    err, -EEXIST,
		    "%zu conflicting files, first %s: in %s and %s with other content "
		    "(without --strict the higher fragment wins)",
		    b.res->n_conflicts, c->path, in[c->lower].name, in[c->upper].name);
	}
	if (r == 0)
		r = write_index(&b, out_path, err);
	for (size_t i = 0; i < n; i++)
		fragment_image_close(b.images[i]);
	free(b.images);
	for (size_t i = 0; i < b.n_inodes; i++) {
		struct minode *m = b.inodes[i];
		for (size_t k = 0; k < m->n_xattrs; k++) {
			free(m->xattrs[k].name);
			free(m->xattrs[k].value);
		}
		free(m->xattrs);
		free(m->link);
		free(m);
	}
	for (size_t i = 0; i < b.n_nodes; i++) {
		free(b.nodes[i]->name);
		free(b.nodes[i]->children);
		free(b.nodes[i]);
	}
	free(b.inodes);
	free(b.nodes);
	free(b.map);
	free(b.links);
	if (b.res == &local)
		compose_result_clear(&local);
	return r;
}
