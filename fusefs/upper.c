/* --writable=fuse: the daemon merges an upper directory in kernel overlayfs's format (chr 0/0
 * whiteouts, trusted.overlay.opaque=y) over the index, and does copy-up itself. docs/fusefs.md
 * has the design: inode numbers, the node table, caching and invalidation, crash safety. */
#include "fusefs/internal.h"
#include "fragments/fragment.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

/* Entries and attributes that come from the upper: everything that changes them goes through
 * the kernel, so this only bounds how long a mistake could last. */
#define UPPER_TIMEOUT 1.0
#define OVL_PREFIX    "trusted.overlay."
#define OVL_OPAQUE    "trusted.overlay.opaque"
#define N_STRIPES     64
#define COPY_CHUNK    (1 << 20)
#define NO_LIMIT      UINT64_MAX

/* An upper object the view shows. Index directories merged with an upper directory and index
 * files copied up in this mount keep their index ino; every other upper object gets a number
 * above the index's. A node holds an fd on its object while the kernel holds a reference.
 *
 * One name of an index file with several links is a node too, before any copy-up (origin
 * set): the kernel would take the names for one inode, but a copy-up breaks the links (as
 * overlayfs does without index=on), so each name gets a node id of its own, while st_ino stays
 * the index's until that name is copied up. */
struct node {
	fuse_ino_t ino;
	uint32_t origin; /* a name of a hard-linked index file, not copied up: that file */
	uint64_t where;  /* ... and where: index dir << 32 | (position + 1) */
	dev_t dev;       /* the upper object's identity */
	ino_t st_ino;
	int fd; /* directories O_RDONLY|O_DIRECTORY, others O_PATH; -1: unreferenced */
	struct file_handle *fh; /* instead of fd once the daemon holds up.fd_max of them */
	mode_t type;            /* S_IFMT */
	uint32_t lower;         /* directories: the index directory merged below (0: none) */
	uint64_t nlookup;       /* upper-only nodes; index nodes count in their view inode's */
	uint32_t nlink;         /* merged directories: 2 + subdirectories, cached; 0: unknown */
	bool dead;              /* its object is gone from the upper (and from the dev table) */
	struct node *next_ino, *next_dev, *next_where;
};

struct notice {
	struct notice *next;
	fuse_ino_t parent, ino;
	char *name; /* entry invalidation when set, else the inode's */
	off_t off;  /* inode: -1 for its attributes only */
};

/* An intrusive chained hash table of nodes: each table links through its own field of the node
 * and hashes its own key. */
struct table {
	struct node **tab;
	size_t size, count;
	size_t link;                           /* offsetof(struct node, next_...) */
	uint64_t (*key)(const struct node *n); /* the key, well mixed */
};

struct upper {
	struct daemon *d;
	int root_fd, work_fd, lock_fd; /* the upper, <work>/work, <work> (flock'd) */
	pthread_mutex_t lock;          /* the hash tables, and every node's fd, nlookup and dead */
	struct table inos, devs, wheres; /* nodes by ino, by (st_dev, st_ino), by where */
	fuse_ino_t next_ino;
	size_t fd_count, fd_max; /* fds the nodes hold; past fd_max, file handles instead */
	uint64_t tmp_seq;
	pthread_mutex_t copy_lock[N_STRIPES]; /* one copy-up of an index file at a time */
	pthread_mutex_t dir_lock[N_STRIPES];  /* entry changes in an upper dir vs a copy-up
	                                         restoring that dir's times */
	struct fuse_session *se;
	pthread_t thread;
	bool thread_started, stop, flush; /* flush: send what is queued before stopping */
	pthread_mutex_t nlock;
	pthread_cond_t ncond;
	struct notice *head, **tail;
};

static struct daemon *D(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static bool is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

static void proc_path(int fd, char buf[static 32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}

static void tmp_name(struct upper *up, char buf[static 32])
{
	snprintf(buf, 32, "#m%" PRIx64, __atomic_add_fetch(&up->tmp_seq, 1, __ATOMIC_RELAXED));
}

static int dup_fd(int fd)
{
	int r = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	return r < 0 ? -errno : r;
}

static void reply_err(fuse_req_t req, int r)
{
	fuse_reply_err(req, r < 0 ? -r : r);
}

static bool is_opaque(int dirfd)
{
	char v[2];
	return fgetxattr(dirfd, OVL_OPAQUE, v, sizeof(v)) == 1 && v[0] == 'y';
}

static int set_opaque(int dirfd)
{
	return fsetxattr(dirfd, OVL_OPAQUE, "y", 1, 0) < 0 ? -errno : 0;
}

static bool ovl_name(const char *name)
{
	return strncmp(name, OVL_PREFIX, strlen(OVL_PREFIX)) == 0;
}

/* ---- the index side ------------------------------------------------------------------------ */

/* The index side is read in view inode numbers: every ino this file keeps or hands out is a view
 * inode (live.c), and a switch may change which index inode it is. An inode's strings and
 * xattrs are in its own generation's index; directory entries are the served index's (a
 * directory a switch took away has none). All with d->live held. */

static const struct compose_inode *vx_inode(struct daemon *d, fuse_ino_t v)
{
	struct gen *g;
	uint32_t i;
	return view_get(d, v, &g, &i);
}

/* The index v's strings (link target) are in. */
static struct compose_index *vx_index(struct daemon *d, fuse_ino_t v)
{
	struct gen *g;
	uint32_t i;
	return view_get(d, v, &g, &i) ? g->idx : d->cur->idx;
}

/* The xattrs of v, with the index their strings are in. */
static const struct compose_xattr *vx_xattrs(struct daemon *d, fuse_ino_t v, uint32_t *n,
                                             struct compose_index **idx)
{
	struct gen *g;
	uint32_t i;
	*n = 0;
	*idx = d->cur->idx;
	if (!view_get(d, v, &g, &i))
		return NULL;
	*idx = g->idx;
	return compose_index_xattrs(g->idx, i, n);
}

/* The entries of directory v in the served index; their inos are the served index's (vx_view
 * turns one into a view inode) and their names in d->cur->idx. */
static const struct compose_dirent *vx_dirents(struct daemon *d, fuse_ino_t v, uint32_t *n)
{
	struct gen *g;
	uint32_t i;
	*n = 0;
	if (!view_get(d, v, &g, &i) || g != d->cur)
		return NULL;
	return compose_index_dirents(g->idx, i, n);
}

static fuse_ino_t vx_view(struct daemon *d, uint32_t ino)
{
	return view_ino(d->cur, ino);
}

/* The position of name among the entries of directory v, or -1. */
static int64_t vx_find(struct daemon *d, fuse_ino_t v, const char *name)
{
	struct gen *g;
	uint32_t i;
	if (!v || !view_get(d, v, &g, &i) || g != d->cur)
		return -1;
	return compose_index_find(g->idx, i, name, strlen(name));
}

/* The view inode of name in index directory dir when it is a directory, else 0. */
static fuse_ino_t vx_subdir(struct daemon *d, fuse_ino_t dir, const char *name)
{
	int64_t pos = vx_find(d, dir, name);
	if (pos < 0)
		return 0;
	uint32_t n;
	uint32_t ino = vx_dirents(d, dir, &n)[pos].ino;
	return S_ISDIR(compose_index_inode(d->cur->idx, ino)->mode) ? vx_view(d, ino) : 0;
}

static bool vx_has(struct daemon *d, fuse_ino_t dir, const char *name)
{
	return dir && vx_find(d, dir, name) >= 0;
}

static void index_name(const struct compose_index *idx, const struct compose_dirent *de,
                       char buf[static NAME_MAX + 1])
{
	size_t l = de->name_len < NAME_MAX ? de->name_len : NAME_MAX;
	memcpy(buf, compose_index_string(idx, de->name_off), l);
	buf[l] = '\0';
}

/* ---- the node table ------------------------------------------------------------------------ */

static uint64_t key_ino(const struct node *n)
{
	return n->ino;
}

static uint64_t key_where(const struct node *n)
{
	return n->where;
}

static uint64_t mix_dev(dev_t dev, ino_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull ^ (dev + 1) * 0xC2B2AE3D27D4EB4Full;
	return h ^ h >> 29;
}

static uint64_t key_dev(const struct node *n)
{
	return mix_dev(n->dev, n->st_ino);
}

static struct node **link_of(const struct table *t, struct node *n)
{
	return (struct node **)((char *)n + t->link);
}

static struct node **bucket(const struct table *t, uint64_t key)
{
	return &t->tab[(key * 0x9E3779B97F4A7C15ull) >> 17 & (t->size - 1)];
}

static void table_init(struct table *t, size_t link, uint64_t (*key)(const struct node *n))
{
	*t = (struct table){.size = 1024, .link = link, .key = key};
	t->tab = xcalloc(t->size, sizeof(*t->tab));
}

static void table_insert(struct table *t, struct node *n)
{
	if (++t->count > t->size) {
		struct table bigger = *t;
		bigger.size = t->size * 2;
		bigger.tab = xcalloc(bigger.size, sizeof(*bigger.tab));
		for (size_t i = 0; i < t->size; i++)
			for (struct node *x = t->tab[i], *next; x; x = next) {
				next = *link_of(t, x);
				struct node **b = bucket(&bigger, t->key(x));
				*link_of(t, x) = *b;
				*b = x;
			}
		free(t->tab);
		t->tab = bigger.tab;
		t->size = bigger.size;
	}
	struct node **b = bucket(t, t->key(n));
	*link_of(t, n) = *b;
	*b = n;
}

static void table_remove(struct table *t, struct node *n)
{
	struct node **p = bucket(t, t->key(n));
	while (*p && *p != n)
		p = link_of(t, *p);
	if (*p) {
		*p = *link_of(t, n);
		t->count--;
	}
}

static void ino_insert(struct upper *up, struct node *n)
{
	table_insert(&up->inos, n);
}

static void dev_insert(struct upper *up, struct node *n)
{
	table_insert(&up->devs, n);
}

static void where_insert(struct upper *up, struct node *n)
{
	table_insert(&up->wheres, n);
}

static void ino_remove(struct upper *up, struct node *n)
{
	table_remove(&up->inos, n);
}

static void dev_remove(struct upper *up, struct node *n)
{
	table_remove(&up->devs, n);
}

static void where_remove(struct upper *up, struct node *n)
{
	table_remove(&up->wheres, n);
}

static struct node *ino_find(struct upper *up, fuse_ino_t ino)
{
	struct node *n = *bucket(&up->inos, ino);
	while (n && n->ino != ino)
		n = n->next_ino;
	return n;
}

static struct node *dev_find(struct upper *up, dev_t dev, ino_t ino)
{
	struct node *n = *bucket(&up->devs, mix_dev(dev, ino));
	while (n && (n->dev != dev || n->st_ino != ino))
		n = n->next_dev;
	return n;
}

static struct node *where_find(struct upper *up, uint64_t where)
{
	struct node *n = *bucket(&up->wheres, where);
	while (n && n->where != where)
		n = n->next_where;
	return n;
}

static bool is_alias(const struct node *n)
{
	return n && n->origin;
}

/* A view inode (an index inode of a generation), as opposed to an object only the upper has. */
static bool is_index(struct upper *up, fuse_ino_t ino)
{
	return ino >= 1 && ino < VIEW_INO_END;
}

/* The upper object of view inode ino, if it has one; its view inode's lookup count. */
static struct node *index_node(struct upper *up, fuse_ino_t ino)
{
	struct vnode *v = view_node(up->d, ino);
	return v ? __atomic_load_n(&v->upper, __ATOMIC_ACQUIRE) : NULL;
}

static void index_node_set(struct upper *up, fuse_ino_t ino, struct node *n)
{
	struct vnode *v = view_node(up->d, ino);
	if (v)
		__atomic_store_n(&v->upper, n, __ATOMIC_RELEASE);
}

static uint64_t *index_nlookup(struct upper *up, fuse_ino_t ino)
{
	static uint64_t none;
	struct vnode *v = view_node(up->d, ino);
	return v ? &v->nlookup : &none;
}

static void set_last_name(struct upper *up, fuse_ino_t ino, uint64_t where)
{
	struct vnode *v = view_node(up->d, ino);
	if (v)
		__atomic_store_n(&v->last_name, where, __ATOMIC_RELAXED);
}

/* The node of an ino the kernel holds (so it cannot go away under the caller), or NULL for an
 * index ino that has no upper object. The index side is lock-free: the hot path of a view
 * nobody wrote to. */
static struct node *node_get(struct upper *up, fuse_ino_t ino)
{
	if (is_index(up, ino))
		return index_node(up, ino);
	pthread_mutex_lock(&up->lock);
	struct node *n = ino_find(up, ino);
	pthread_mutex_unlock(&up->lock);
	return n;
}

static uint64_t refs_locked(struct upper *up, struct node *n)
{
	if (is_index(up, n->ino))
		return __atomic_load_n(index_nlookup(up, n->ino), __ATOMIC_RELAXED);
	return n->nlookup;
}

/* The nodes hold one fd per upper object the kernel holds, and the kernel holds as many inodes
 * as it has memory for (an unpacked /usr/share: some 70000), more than RLIMIT_NOFILE may allow
 * (and an unprivileged daemon cannot raise the hard limit). Up to fd_max, a node keeps an fd on
 * its object; past that, a file handle, which node_fd opens when a request needs it. */
static void node_drop_fd_locked(struct upper *up, struct node *n)
{
	if (n->fd >= 0) {
		close(n->fd);
		up->fd_count--;
	}
	n->fd = -1;
	free(n->fh);
	n->fh = NULL;
}

static bool node_live(const struct node *n)
{
	return n->fd >= 0 || n->fh;
}

/* Gives node n (referenced by the kernel, with neither fd nor handle) a way to its object, fd
 * open on it: an fd of its own, or a handle. */
static int node_keep_locked(struct upper *up, struct node *n, int fd)
{
	if (up->fd_count < up->fd_max) {
		n->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		if (n->fd >= 0) {
			up->fd_count++;
			return 0;
		}
		if (errno != EMFILE && errno != ENFILE)
			return -errno;
	}
	struct file_handle *h = malloc(sizeof(*h) + MAX_HANDLE_SZ);
	if (!h)
		return -ENOMEM;
	h->handle_bytes = MAX_HANDLE_SZ;
	int mount_id;
	if (name_to_handle_at(fd, "", h, &mount_id, AT_EMPTY_PATH) == 0) {
		n->fh = h;
		return 0;
	}
	free(h);
	/* no handles on this filesystem: an fd after all, if there is one */
	n->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (n->fd < 0)
		return -errno;
	up->fd_count++;
	return 0;
}

/* A new fd on the object of node n (which the kernel holds): directories O_RDONLY, others
 * O_PATH. -ESTALE when the node has no way to it. */
static int node_fd(struct upper *up, struct node *n)
{
	int fd = n->fd;
	if (fd >= 0)
		return dup_fd(fd);
	struct file_handle *h = n->fh;
	if (!h)
		return -ESTALE;
	int flags = S_ISDIR(n->type) ? O_RDONLY | O_DIRECTORY : O_PATH;
	fd = open_by_handle_at(up->root_fd, h, flags | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fd < 3) { /* keep 0..2 free, as dup_fd does */
		int r = dup_fd(fd);
		close(fd);
		return r;
	}
	return fd;
}

/* A node the kernel no longer holds lets go of its fd; a dead one goes altogether. */
static void node_unused_locked(struct upper *up, struct node *n)
{
	if (n->ino == FUSE_ROOT_ID || refs_locked(up, n) > 0)
		return;
	node_drop_fd_locked(up, n);
	if (n->origin) {
		/* a name of an index file, which a later lookup gives a node again */
		where_remove(up, n);
		ino_remove(up, n);
		free(n);
		return;
	}
	if (!n->dead)
		return;
	if (n->lower && n->lower != n->ino && index_node(up, n->lower) == n)
		index_node_set(up, n->lower, NULL);
	if (is_index(up, n->ino)) {
		index_node_set(up, n->ino, NULL);
		view_release(up->d, n->ino);
	} else
		ino_remove(up, n);
	free(n);
}

/* The node for the upper object st (fd is open on it and stays the caller's): as want (an
 * index directory merged with it, or an index file copied up to it) when that ino is free,
 * else as the node that already has it or a new number. With ref, one more kernel reference.
 * The node keeps an fd of its own while referenced. */
static struct node *node_register(struct upper *up, const struct stat *st, int fd, fuse_ino_t want,
                                  bool ref)
{
	pthread_mutex_lock(&up->lock);
	struct node *n = dev_find(up, st->st_dev, st->st_ino);
	if (n && want && S_ISDIR(st->st_mode) && !n->lower && !is_index(up, n->ino) &&
	    view_node(up->d, want) && !index_node(up, want)) {
		/* An upper directory that a switch put an index directory under: merged from
		 * now on, under the number the kernel already has for it. */
		n->lower = want;
		n->nlink = 0;
		index_node_set(up, want, n);
	}
	if (!n) {
		n = xcalloc(1, sizeof(*n));
		n->fd = -1;
		n->dev = st->st_dev;
		n->st_ino = st->st_ino;
		n->type = st->st_mode & S_IFMT;
		if (want && view_node(up->d, want) && !index_node(up, want)) {
			n->ino = want;
			n->lower = S_ISDIR(st->st_mode) ? want : 0;
			index_node_set(up, want, n);
		} else {
			n->ino = up->next_ino++;
			ino_insert(up, n);
		}
		dev_insert(up, n);
	}
	if (ref) {
		if (is_index(up, n->ino))
			__atomic_add_fetch(index_nlookup(up, n->ino), 1, __ATOMIC_RELAXED);
		else
			n->nlookup++;
	}
	if (!node_live(n) && refs_locked(up, n) > 0) {
		int r = node_keep_locked(up, n, fd);
		if (r < 0) {
			/* A node the kernel holds without a way to its object would answer
			 * ESTALE from then on: fail this request instead, without the reference
			 * it would have given. */
			int e = -r;
			if (ref) {
				if (is_index(up, n->ino))
					__atomic_sub_fetch(index_nlookup(up, n->ino), 1,
					                   __ATOMIC_RELAXED);
				else
					n->nlookup--;
				node_unused_locked(up, n);
			}
			pthread_mutex_unlock(&up->lock);
			errno = e;
			return NULL;
		}
	}
	pthread_mutex_unlock(&up->lock);
	return n;
}

static void node_forget(struct upper *up, fuse_ino_t ino, uint64_t count)
{
	if (is_index(up, ino) && !index_node(up, ino)) {
		view_forget(up->d, ino, count);
		return;
	}
	pthread_mutex_lock(&up->lock);
	struct node *n;
	if (is_index(up, ino)) {
		__atomic_sub_fetch(index_nlookup(up, ino), count, __ATOMIC_RELAXED);
		n = index_node(up, ino);
	} else {
		n = ino_find(up, ino);
		if (n)
			n->nlookup -= count < n->nlookup ? count : n->nlookup;
	}
	if (n)
		node_unused_locked(up, n);
	pthread_mutex_unlock(&up->lock);
}

/* The upper object (dev, ino) left the upper: its number must not stick to a reused inode. */
static void node_gone(struct upper *up, dev_t dev, ino_t ino)
{
	pthread_mutex_lock(&up->lock);
	struct node *n = dev_find(up, dev, ino);
	if (n && n->ino != FUSE_ROOT_ID) {
		dev_remove(up, n);
		n->dead = true;
		n->lower = 0;
		node_unused_locked(up, n);
	}
	pthread_mutex_unlock(&up->lock);
}

static void dir_changed(struct upper *up, fuse_ino_t dir)
{
	struct node *n = node_get(up, dir);
	if (n)
		__atomic_store_n(&n->nlink, 0, __ATOMIC_RELAXED);
}

/* The node id that index inode ino, found at position pos of index directory dir, has in the
 * view: ino, but for a file with several links, whose each name has a node of its own. */
static fuse_ino_t upper_lower_nodeid(struct daemon *d, fuse_ino_t ino, fuse_ino_t dir, uint32_t pos)
{
	struct upper *up = d->up;
	const struct compose_inode *in = vx_inode(d, ino);
	if (!in || S_ISDIR(in->mode) || in->nlink <= 1)
		return ino;
	uint64_t where = (uint64_t)dir << 32 | (pos + 1);
	pthread_mutex_lock(&up->lock);
	struct node *n = where_find(up, where);
	if (!n) {
		n = xcalloc(1, sizeof(*n));
		n->ino = up->next_ino++;
		n->fd = -1;
		n->type = in->mode & S_IFMT;
		n->origin = ino;
		n->where = where;
		ino_insert(up, n);
		where_insert(up, n);
	}
	fuse_ino_t r = n->ino;
	pthread_mutex_unlock(&up->lock);
	return r;
}

/* A lookup (or readdirplus entry) handed the kernel node id ino (upper_lower_nodeid of the
 * entry at position pos of index directory dir): one more reference. */
static void upper_index_looked_up(struct daemon *d, fuse_ino_t ino, fuse_ino_t dir, uint32_t pos)
{
	struct upper *up = d->up;
	if (is_index(up, ino)) {
		view_ref(d, ino);
		set_last_name(up, ino, (uint64_t)dir << 32 | (pos + 1));
		return;
	}
	pthread_mutex_lock(&up->lock);
	struct node *n = ino_find(up, ino);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&up->lock);
}

/* ---- invalidations, sent from a thread of their own ---------------------------------------- */

/* The kernel takes the parent's lock to invalidate an entry, and the request that made the
 * change may hold it: a notification is never sent from a request handler. */
static void notify(struct upper *up, fuse_ino_t parent, const char *name, fuse_ino_t ino, off_t off)
{
	if (!up->thread_started)
		return;
	struct notice *m = xcalloc(1, sizeof(*m));
	m->parent = parent;
	m->ino = ino;
	m->name = name ? xstrdup(name) : NULL;
	m->off = off;
	pthread_mutex_lock(&up->nlock);
	*up->tail = m;
	up->tail = &m->next;
	pthread_cond_signal(&up->ncond);
	pthread_mutex_unlock(&up->nlock);
}

static void *notify_thread(void *arg)
{
	struct upper *up = arg;
	pthread_mutex_lock(&up->nlock);
	for (;;) {
		while (!up->head && !up->stop)
			pthread_cond_wait(&up->ncond, &up->nlock);
		struct notice *m = up->head;
		if (!m)
			break;
		up->head = m->next;
		if (!up->head)
			up->tail = &up->head;
		pthread_mutex_unlock(&up->nlock);
		if (!up->stop || up->flush) {
			if (m->name)
				fuse_lowlevel_notify_inval_entry(up->se, m->parent, m->name,
				                                 strlen(m->name));
			else
				fuse_lowlevel_notify_inval_inode(up->se, m->ino, m->off, 0);
		}
		free(m->name);
		free(m);
		pthread_mutex_lock(&up->nlock);
	}
	pthread_mutex_unlock(&up->nlock);
	return NULL;
}

/* ---- reading upper directories ------------------------------------------------------------- */

struct uent {
	char *name;
	unsigned char type; /* DT_* */
	bool whiteout;
};

static int uent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct uent *)a)->name, ((const struct uent *)b)->name);
}

static void uents_free(struct uent *e, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(e[i].name);
	free(e);
}

static void closedirp(DIR **dp)
{
	if (*dp)
		closedir(*dp);
}

/* The entries of the upper directory dirfd, sorted by name. */
static int upper_list(int dirfd, struct uent **out, size_t *count)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	_cleanup_(closedirp) DIR *dp = fdopendir(fd);
	if (!dp) {
		close(fd);
		return -errno;
	}
	struct uent *e = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	errno = 0;
	while ((de = readdir(dp))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		unsigned char type = de->d_type;
		bool wh = false;
		if (type == DT_CHR || type == DT_UNKNOWN) {
			struct stat st;
			if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				continue;
			type = IFTODT(st.st_mode);
			wh = is_whiteout(&st);
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 32;
			e = xrealloc(e, cap * sizeof(*e));
		}
		e[n++] = (struct uent){xstrdup(de->d_name), type, wh};
		errno = 0;
	}
	if (errno) {
		int r = -errno;
		uents_free(e, n);
		return r;
	}
	qsort_safe(e, n, sizeof(*e), uent_cmp);
	*out = e;
	*count = n;
	return 0;
}

static struct uent *uents_find(struct uent *e, size_t n, const char *name)
{
	struct uent key = {.name = (char *)name};
	return n ? bsearch(&key, e, n, sizeof(*e), uent_cmp) : NULL;
}

/* 2 + the subdirectories a merged directory shows. */
static uint32_t merged_nlink(struct daemon *d, struct node *n, int fd)
{
	uint32_t c = __atomic_load_n(&n->nlink, __ATOMIC_RELAXED);
	if (c)
		return c;
	struct uent *e;
	size_t ne;
	if (upper_list(fd, &e, &ne) < 0)
		return 1;
	c = 2;
	for (size_t i = 0; i < ne; i++)
		c += e[i].type == DT_DIR;
	uint32_t nl;
	const struct compose_dirent *de = vx_dirents(d, n->lower, &nl);
	char name[NAME_MAX + 1];
	for (uint32_t i = 0; i < nl; i++) {
		if (!S_ISDIR(compose_index_inode(d->cur->idx, de[i].ino)->mode))
			continue;
		index_name(d->cur->idx, &de[i], name);
		c += !uents_find(e, ne, name);
	}
	uents_free(e, ne);
	__atomic_store_n(&n->nlink, c, __ATOMIC_RELAXED);
	return c;
}

/* The attributes of upper object fd as node n shows it. */
static int upper_stat(struct daemon *d, struct node *n, int fd, struct stat *st)
{
	if (fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	st->st_ino = n->ino;
	if (S_ISDIR(st->st_mode) && n->lower)
		st->st_nlink = merged_nlink(d, n, fd);
	return 0;
}

/* ---- lookup -------------------------------------------------------------------------------- */

static void lower_entry(struct daemon *d, uint32_t dir, const char *name, bool ref,
                        struct fuse_entry_param *e)
{
	int64_t pos = vx_find(d, dir, name);
	/* Negative answers from the index are cached long too: a name appears only through the
	 * kernel, which then drops the negative entry itself. */
	e->entry_timeout = d->timeout;
	if (pos < 0)
		return;
	uint32_t n;
	uint32_t x = vx_dirents(d, dir, &n)[pos].ino;
	fuse_ino_t ino = vx_view(d, x);
	e->ino = upper_lower_nodeid(d, ino, dir, pos);
	e->attr_timeout = d->timeout;
	fusefs_index_stat(compose_index_inode(d->cur->idx, x), ino, &e->attr);
	if (ref)
		upper_index_looked_up(d, e->ino, dir, pos);
	else if (e->ino == ino)
		set_last_name(d->up, ino, (uint64_t)dir << 32 | (pos + 1));
}

/* Registers the upper object name of directory dirfd (merged with index directory lower, or
 * 0) and fills e; a whiteout or a name that vanished gives a negative entry. */
static int upper_entry(struct daemon *d, int dirfd, uint32_t lower, const char *name, bool ref,
                       struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	_cleanup_close_ int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	e->entry_timeout = UPPER_TIMEOUT;
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (is_whiteout(&st))
		return 0;
	fuse_ino_t want = 0;
	if (S_ISDIR(st.st_mode)) {
		int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return -errno;
		close(fd);
		fd = dfd;
		if (lower && !is_opaque(fd))
			want = vx_subdir(d, lower, name);
	}
	struct node *n = node_register(d->up, &st, fd, want, ref);
	if (!n)
		return -errno;
	e->ino = n->ino;
	e->attr = st;
	e->attr.st_ino = n->ino;
	if (S_ISDIR(st.st_mode) && n->lower)
		e->attr.st_nlink = merged_nlink(d, n, fd);
	e->attr_timeout = UPPER_TIMEOUT;
	return 0;
}

/* What name in directory parent is, merged: e->ino 0 when nothing (a cacheable negative). */
static int lookup_child(struct daemon *d, fuse_ino_t parent, const char *name, bool ref,
                        struct fuse_entry_param *e)
{
	struct upper *up = d->up;
	memset(e, 0, sizeof(*e));
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	struct node *dir = node_get(up, parent);
	if (!dir) {
		/* No upper directory, so nothing below it has one: the index answers. */
		const struct compose_inode *in = vx_inode(d, parent);
		if (!in)
			return -ESTALE;
		if (!S_ISDIR(in->mode))
			return -ENOTDIR;
		lower_entry(d, parent, name, ref, e);
		return 0;
	}
	if (!S_ISDIR(dir->type))
		return -ENOTDIR;
	_cleanup_close_ int dfd = node_fd(up, dir);
	if (dfd < 0)
		return dfd;
	struct stat st;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT)
			return -errno;
		if (dir->lower)
			lower_entry(d, dir->lower, name, ref, e);
		else
			e->entry_timeout = UPPER_TIMEOUT;
		return 0;
	}
	if (is_whiteout(&st)) {
		e->entry_timeout = UPPER_TIMEOUT;
		return 0;
	}
	return upper_entry(d, dfd, dir->lower, name, ref, e);
}

/* ---- copy-up ------------------------------------------------------------------------------- */

static void dir_lock(struct upper *up, fuse_ino_t a, fuse_ino_t b)
{
	size_t x = a % N_STRIPES, y = b % N_STRIPES;
	if (x > y) {
		size_t t = x;
		x = y;
		y = t;
	}
	pthread_mutex_lock(&up->dir_lock[x]);
	if (y != x)
		pthread_mutex_lock(&up->dir_lock[y]);
}

static void dir_unlock(struct upper *up, fuse_ino_t a, fuse_ino_t b)
{
	size_t x = a % N_STRIPES, y = b % N_STRIPES;
	pthread_mutex_unlock(&up->dir_lock[x]);
	if (y != x)
		pthread_mutex_unlock(&up->dir_lock[y]);
}

/* Owner, then mode (chown clears setuid bits), on the object fd (any O_PATH fd). */
static int set_owner_mode(int fd, mode_t type, uid_t uid, gid_t gid, mode_t perm)
{
	if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (type != S_IFLNK) {
		char p[32];
		proc_path(fd, p);
		if (chmod(p, perm & 07777) < 0)
			return -errno;
	}
	return 0;
}

static int set_times(int fd, const struct timespec ts[2])
{
	if (utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0)
		return 0;
	if (errno != EINVAL)
		return -errno;
	char p[32]; /* kernels before 5.8 take no AT_EMPTY_PATH here */
	proc_path(fd, p);
	return utimensat(AT_FDCWD, p, ts, 0) < 0 ? -errno : 0;
}

/* Everything the index says about x but its content: owner, mode, xattrs, then times. */
static int copy_attrs(struct daemon *d, int fd, uint32_t x)
{
	const struct compose_inode *in = vx_inode(d, x);
	int r = set_owner_mode(fd, in->mode & S_IFMT, in->uid, in->gid, in->mode);
	if (r < 0)
		return r;
	uint32_t nx;
	struct compose_index *xi;
	const struct compose_xattr *xa = vx_xattrs(d, x, &nx, &xi);
	char p[32], name[XATTR_NAME_MAX + 1];
	proc_path(fd, p);
	for (uint32_t i = 0; i < nx; i++) {
		size_t l = xa[i].name_len < XATTR_NAME_MAX ? xa[i].name_len : XATTR_NAME_MAX;
		memcpy(name, compose_index_string(xi, xa[i].name_off), l);
		name[l] = '\0';
		if (setxattr(p, name, compose_index_string(xi, xa[i].value_off), xa[i].value_len,
		             0) < 0)
			return -errno;
	}
	struct timespec ts[2] = {{in->mtime, 0}, {in->mtime, 0}};
	return set_times(fd, ts);
}

static int copy_data(struct daemon *d, int fd, const struct compose_inode *in, uint64_t limit)
{
	uint64_t size = in->size < limit ? in->size : limit;
	if (size == 0)
		return 0;
	struct open_file *of;
	int r = fusefs_frag_open(d, d->cur, in, &of);
	if (r < 0)
		return r;
	_cleanup_free_ char *buf = xmalloc(COPY_CHUNK);
	static const char zero[4096];
	for (uint64_t off = 0; off < size && r == 0;) {
		size_t want = size - off < COPY_CHUNK ? size - off : COPY_CHUNK;
		ssize_t n = fusefs_frag_pread(of, buf, want, off);
		if (n <= 0) {
			r = n < 0 ? (int)n : -EIO;
			break;
		}
		/* Blocks of zeros stay holes, as cp --sparse=auto leaves them. */
		bool hole = n % sizeof(zero) == 0;
		for (ssize_t i = 0; hole && i < n; i += sizeof(zero))
			hole = memcmp(buf + i, zero, sizeof(zero)) == 0;
		if (!hole)
			r = write_all(fd, buf, n);
		else if (lseek(fd, n, SEEK_CUR) < 0)
			r = -errno;
		off += n;
	}
	fusefs_open_file_free(of);
	if (r == 0 && ftruncate(fd, size) < 0)
		r = -errno;
	return r;
}

/* Moves the finished object tmp (in the work dir) to name in upper directory pfd, which is
 * directory ino dir of the view, keeping pfd's times: a copy-up changes nothing the view shows.
 * -EEXIST when name exists. */
static int copy_up_commit(struct upper *up, const char *tmp, int pfd, fuse_ino_t dir,
                          const char *name)
{
	struct stat pst;
	dir_lock(up, dir, dir);
	int r = fstat(pfd, &pst) < 0 ? -errno : 0;
	if (r == 0 && renameat2(up->work_fd, tmp, pfd, name, RENAME_NOREPLACE) < 0)
		r = -errno;
	if (r == 0) {
		struct timespec ts[2] = {pst.st_atim, pst.st_mtim};
		futimens(pfd, ts);
	}
	dir_unlock(up, dir, dir);
	return r;
}

static void remove_tmp(struct upper *up, const char *tmp, bool dir)
{
	unlinkat(up->work_fd, tmp, dir ? AT_REMOVEDIR : 0);
}

/* Copies index directory x up as name in upper directory pfd (directory ino pdir). */
static int copy_up_dir_at(struct daemon *d, int pfd, fuse_ino_t pdir, const char *name, uint32_t x)
{
	struct upper *up = d->up;
	char tmp[32];
	tmp_name(up, tmp);
	if (mkdirat(up->work_fd, tmp, 0700) < 0)
		return -errno;
	_cleanup_close_ int fd = openat(up->work_fd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd < 0 ? -errno : copy_attrs(d, fd, x);
	if (r == 0)
		r = copy_up_commit(up, tmp, pfd, pdir, name);
	if (r < 0)
		remove_tmp(up, tmp, true);
	return r;
}

/* A new fd on the upper directory of index directory x. With create, x and its parents are
 * copied up when they have none; without, -ENODATA says x has none (the index alone shows
 * it). -ENOENT: x is no longer in the view (removed, or hidden by an opaque directory). */
static int index_dir_upper(struct daemon *d, uint32_t x, bool create, int *out)
{
	struct upper *up = d->up;
	if (x == COMPOSE_ROOT_INO) {
		int fd = dup_fd(up->root_fd);
		if (fd < 0)
			return fd;
		*out = fd;
		return 0;
	}
	/* A node with an fd answers; one the kernel let go of is found again by its path. */
	pthread_mutex_lock(&up->lock);
	struct node *n = index_node(up, x);
	int r = 1;
	if (n && n->dead)
		r = -ENOENT;
	else if (n && n->fd >= 0)
		r = dup_fd(n->fd); /* never 1: dup_fd gives 3 or more */
	else if (n && n->fh)
		r = node_fd(up, n); /* under the lock: the node may be let go of meanwhile */
	pthread_mutex_unlock(&up->lock);
	if (r != 1) {
		if (r < 0)
			return r;
		*out = r;
		return 0;
	}
	struct gen *g;
	uint32_t xi;
	const struct compose_inode *in = view_get(d, x, &g, &xi);
	if (!in || g != d->cur)
		return -ENOENT; /* a switch took it away */
	uint32_t p = vx_view(d, in->parent);
	_cleanup_close_ int pfd = -1;
	r = index_dir_upper(d, p, create, &pfd);
	if (r < 0)
		return r;
	uint32_t nd;
	const struct compose_dirent *de = compose_index_dirents(g->idx, in->parent, &nd);
	uint32_t pos = 0;
	while (pos < nd && de[pos].ino != xi)
		pos++;
	if (pos == nd)
		return -EIO;
	char name[NAME_MAX + 1];
	index_name(g->idx, &de[pos], name);
	for (int tries = 0; tries < 4; tries++) {
		struct stat st;
		if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (!S_ISDIR(st.st_mode))
				return -ENOENT;
			int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0)
				return -errno;
			struct node *n = NULL;
			if (!is_opaque(fd) && fstat(fd, &st) == 0 &&
			    !(n = node_register(up, &st, fd, x, false)) && errno == EMFILE) {
				close(fd);
				return -EMFILE;
			}
			if (!n || (n->ino != x && n->lower != x)) {
				close(fd);
				return -ENOENT;
			}
			*out = fd;
			return 0;
		}
		if (errno != ENOENT)
			return -errno;
		if (!create)
			return -ENODATA;
		r = copy_up_dir_at(d, pfd, p, name, x);
		if (r < 0 && r != -EEXIST)
			return r;
	}
	return -EIO;
}

/* Copies the non-directory index inode x up, found as name in upper directory pfd (directory
 * pdir of the view). A file that is one inode in the index keeps x as its number; a name of a
 * hard-linked one (its node alias) becomes a file of its own, as under overlayfs without
 * index=on. */
static int copy_up_at(struct daemon *d, int pfd, fuse_ino_t pdir, const char *name, uint32_t x,
                      uint64_t limit, struct node *alias, int *out, fuse_ino_t *out_ino)
{
	struct upper *up = d->up;
	const struct compose_inode *in = vx_inode(d, x);
	char tmp[32];
	tmp_name(up, tmp);
	_cleanup_close_ int fd = -1;
	int r = 0;
	switch (in->mode & S_IFMT) {
	case S_IFREG:
		fd = openat(up->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		r = copy_data(d, fd, in, limit);
		break;
	case S_IFLNK: {
		char target[PATH_MAX + 1];
		size_t n = in->data_len < PATH_MAX ? in->data_len : PATH_MAX;
		memcpy(target, compose_index_string(vx_index(d, x), in->data_off), n);
		target[n] = '\0';
		if (symlinkat(target, up->work_fd, tmp) < 0)
			return -errno;
		break;
	}
	default:
		if (mknodat(up->work_fd, tmp, (in->mode & S_IFMT) | 0600,
		            makedev(in->rdev >> 20, in->rdev & 0xfffff)) < 0)
			return -errno;
	}
	_cleanup_close_ int pathfd = -1;
	if (r == 0) {
		pathfd = openat(up->work_fd, tmp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		r = pathfd < 0 ? -errno : copy_attrs(d, pathfd, x);
	}
	/* The data is on disk before the name is: a crash leaves the lower file or a whole copy. */
	if (r == 0 && fd >= 0 && fsync(fd) < 0)
		r = -errno;
	if (r == 0)
		r = copy_up_commit(up, tmp, pfd, pdir, name);
	if (r < 0) {
		remove_tmp(up, tmp, false);
		return r;
	}
	struct stat st;
	if (fstat(pathfd, &st) < 0)
		return -errno;
	struct node *n = alias;
	if (alias) {
		pthread_mutex_lock(&up->lock);
		where_remove(up, alias);
		alias->origin = 0;
		alias->where = 0;
		alias->dev = st.st_dev;
		alias->st_ino = st.st_ino;
		dev_insert(up, alias);
		if (!node_live(alias) && alias->nlookup > 0)
			node_keep_locked(up, alias, pathfd);
		pthread_mutex_unlock(&up->lock);
	} else if (!(n = node_register(up, &st, pathfd, in->nlink <= 1 ? x : 0, false)))
		return -errno;
	/* The kernel keeps the index's attributes for long; the copy has its own st_blocks and
	 * ctime, and a hard link's name its own number now. */
	notify(up, 0, NULL, n->ino, -1);
	*out = TAKE_FD(pathfd);
	*out_ino = n->ino;
	return 0;
}

/* The node of a name of a hard-linked index file, if the kernel was given one. */
static struct node *alias_at(struct upper *up, uint32_t dir, const char *name)
{
	int64_t pos = vx_find(up->d, dir, name);
	if (pos < 0)
		return NULL;
	pthread_mutex_lock(&up->lock);
	struct node *n = where_find(up, (uint64_t)dir << 32 | (pos + 1));
	pthread_mutex_unlock(&up->lock);
	return n;
}

/* Whether x shows as entry pos of index directory p (and so not hidden or replaced): then
 * the upper directory of p (copied up if need be) and the name. */
static bool lower_at(struct daemon *d, uint32_t x, uint32_t p, uint32_t pos,
                     char name[static NAME_MAX + 1], int *pfd_out)
{
	uint32_t nd;
	const struct compose_dirent *de = vx_dirents(d, p, &nd);
	if (pos >= nd || vx_view(d, de[pos].ino) != x)
		return false;
	index_name(d->cur->idx, &de[pos], name);
	int pfd = -1;
	struct stat st;
	if (index_dir_upper(d, p, true, &pfd) < 0)
		return false;
	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
		*pfd_out = pfd;
		return true;
	}
	close(pfd);
	return false;
}

/* Where the non-directory index inode x (with one link: the others have alias nodes) shows
 * in the view, still as itself: the name it was last looked up by. */
static int locate_lower(struct daemon *d, uint32_t x, fuse_ino_t *dir,
                        char name[static NAME_MAX + 1], int *pfd_out)
{
	struct vnode *vx = view_node(d, x);
	uint64_t last = vx ? __atomic_load_n(&vx->last_name, __ATOMIC_RELAXED) : 0;
	if (last && lower_at(d, x, last >> 32, (uint32_t)last - 1, name, pfd_out)) {
		*dir = last >> 32;
		return 0;
	}
	if (last)
		return -ENOENT; /* its one name shows something else now */
	struct compose_index *idx = d->cur->idx;
	uint32_t n_index = compose_index_inodes(idx);
	for (uint32_t i = 1; i <= n_index; i++) {
		if (!S_ISDIR(compose_index_inode(idx, i)->mode))
			continue;
		uint32_t nd;
		fuse_ino_t p = vx_view(d, i);
		const struct compose_dirent *de = compose_index_dirents(idx, i, &nd);
		for (uint32_t j = 0; j < nd; j++)
			if (vx_view(d, de[j].ino) == x && lower_at(d, x, p, j, name, pfd_out)) {
				*dir = p;
				return 0;
			}
	}
	return -ENOENT;
}

/* A new O_PATH fd (directories: O_RDONLY) on the upper object of ino, copying it up if it has
 * none (at most limit bytes of content), and the ino it has now. */
static int upper_object(struct daemon *d, fuse_ino_t ino, uint64_t limit, int *out,
                        fuse_ino_t *out_ino)
{
	struct upper *up = d->up;
	struct node *n = node_get(up, ino);
	if (is_alias(n)) {
		/* A name of a hard-linked index file: it becomes a file of its own. Copy-ups of
		 * one node take one lock (the stripe of its ino), whoever asks for them. */
		pthread_mutex_t *l = &up->copy_lock[ino % N_STRIPES];
		pthread_mutex_lock(l);
		int r = 0;
		bool copied = false;
		if (is_alias(n)) { /* not copied up meanwhile */
			uint32_t dir = n->where >> 32, pos = (uint32_t)n->where - 1;
			char name[NAME_MAX + 1];
			_cleanup_close_ int pfd = -1;
			r = lower_at(d, n->origin, dir, pos, name, &pfd) ? 0 : -ENOENT;
			if (r == 0)
				r = copy_up_at(d, pfd, dir, name, n->origin, limit, n, out,
				               out_ino);
			copied = r == 0;
		}
		pthread_mutex_unlock(l);
		if (r < 0 || copied)
			return r;
	}
	if (n) {
		int fd = node_fd(up, n);
		if (fd < 0)
			return fd;
		*out = fd;
		*out_ino = n->ino;
		return 0;
	}
	const struct compose_inode *in = vx_inode(d, ino);
	if (!in)
		return -ESTALE;
	*out_ino = ino;
	if (S_ISDIR(in->mode))
		return index_dir_upper(d, ino, true, out);
	pthread_mutex_t *l = &up->copy_lock[ino % N_STRIPES];
	pthread_mutex_lock(l);
	int r;
	n = node_get(up, ino);
	if (n) {
		/* copied up by another request while this one waited */
		r = node_fd(up, n);
		if (r >= 0) {
			*out = r;
			r = 0;
		}
	} else {
		fuse_ino_t dir;
		char name[NAME_MAX + 1];
		_cleanup_close_ int pfd = -1;
		r = locate_lower(d, ino, &dir, name, &pfd);
		if (r == 0)
			r = copy_up_at(d, pfd, dir, name, ino, limit, NULL, out, out_ino);
	}
	pthread_mutex_unlock(l);
	return r;
}

/* ---- directories being changed ------------------------------------------------------------- */

struct dirref {
	int fd;         /* the upper directory (the caller's) */
	uint32_t lower; /* the index directory merged below it, or 0 */
};

static void dirref_clear(struct dirref *r)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
}

/* The upper directory of directory ino, copied up with its parents when it has none. */
static int dir_upper(struct daemon *d, fuse_ino_t ino, struct dirref *out)
{
	struct node *n = node_get(d->up, ino);
	out->fd = -1;
	if (n) {
		if (!S_ISDIR(n->type))
			return -ENOTDIR;
		out->fd = node_fd(d->up, n);
		out->lower = n->lower;
		return out->fd < 0 ? out->fd : 0;
	}
	const struct compose_inode *in = vx_inode(d, ino);
	if (!in)
		return -ESTALE;
	if (!S_ISDIR(in->mode))
		return -ENOTDIR;
	out->lower = ino;
	return index_dir_upper(d, ino, true, &out->fd);
}

/* What a name of a directory is, in the upper and below it. */
struct slot {
	bool upper, whiteout; /* an upper entry; it is a whiteout */
	struct stat st;       /* the upper entry's */
	uint32_t lower;       /* the index inode the name shows when there is no upper entry */
	bool dir, merged;     /* it is a directory; an upper one with an index directory below */
};

static int slot_of(struct daemon *d, const struct dirref *p, const char *name, struct slot *s)
{
	memset(s, 0, sizeof(*s));
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (fstatat(p->fd, name, &s->st, AT_SYMLINK_NOFOLLOW) == 0) {
		s->upper = true;
		s->whiteout = is_whiteout(&s->st);
		s->dir = S_ISDIR(s->st.st_mode);
		if (s->dir && p->lower && vx_subdir(d, p->lower, name)) {
			int fd =
			    openat(p->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0)
				return -errno;
			s->merged = !is_opaque(fd);
			close(fd);
		}
		return 0;
	}
	if (errno != ENOENT)
		return -errno;
	int64_t pos = p->lower ? vx_find(d, p->lower, name) : -1;
	if (pos >= 0) {
		uint32_t n;
		uint32_t x = vx_dirents(d, p->lower, &n)[pos].ino;
		s->lower = vx_view(d, x);
		s->dir = S_ISDIR(compose_index_inode(d->cur->idx, x)->mode);
	}
	return 0;
}

static bool slot_exists(const struct slot *s)
{
	return (s->upper && !s->whiteout) || s->lower;
}

/* Whether the directory of slot s (name in p) is empty in the view; *whiteouts: its upper
 * holds whiteouts (so that rmdir of the upper alone would fail). */
static int slot_empty(struct daemon *d, const struct dirref *p, const char *name,
                      const struct slot *s, bool *whiteouts)
{
	*whiteouts = false;
	uint32_t n;
	if (!s->upper) {
		vx_dirents(d, s->lower, &n);
		return n ? -ENOTEMPTY : 0;
	}
	_cleanup_close_ int fd =
	    openat(p->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct uent *e;
	size_t ne;
	int r = upper_list(fd, &e, &ne);
	if (r < 0)
		return r;
	for (size_t i = 0; i < ne && r == 0; i++) {
		if (!e[i].whiteout)
			r = -ENOTEMPTY;
		*whiteouts = true;
	}
	if (r == 0 && s->merged) {
		fuse_ino_t lower = vx_subdir(d, p->lower, name);
		const struct compose_dirent *de = vx_dirents(d, lower, &n);
		char nm[NAME_MAX + 1];
		for (uint32_t i = 0; i < n && r == 0; i++) {
			index_name(d->cur->idx, &de[i], nm);
			if (!uents_find(e, ne, nm))
				r = -ENOTEMPTY;
		}
	}
	uents_free(e, ne);
	return r;
}

static int remove_tree_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	_cleanup_(closedirp) DIR *dp = fdopendir(fd);
	if (!dp) {
		close(fd);
		return -errno;
	}
	struct dirent *de;
	while ((de = readdir(dp)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			remove_tree_at(fd, de->d_name);
	return unlinkat(dirfd, name, AT_REMOVEDIR) < 0 ? -errno : 0;
}

static int make_whiteout(struct upper *up, char tmp[static 32])
{
	tmp_name(up, tmp);
	return mknodat(up->work_fd, tmp, S_IFCHR | 0, makedev(0, 0)) < 0 ? -errno : 0;
}

/* Replaces the upper directory name of p (empty in the view, its upper holding whiteouts)
 * by an empty opaque one, as overlayfs does before it renames over such a directory. */
static int clear_dir(struct upper *up, const struct dirref *p, const char *name)
{
	char tmp[32];
	tmp_name(up, tmp);
	if (mkdirat(up->work_fd, tmp, 0700) < 0)
		return -errno;
	_cleanup_close_ int fd = openat(up->work_fd, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd < 0 ? -errno : set_opaque(fd);
	if (r == 0 && renameat2(up->work_fd, tmp, p->fd, name, RENAME_EXCHANGE) < 0)
		r = -errno;
	if (r < 0) {
		remove_tmp(up, tmp, true);
		return r;
	}
	remove_tree_at(up->work_fd, tmp);
	return 0;
}

/* ---- request handlers ---------------------------------------------------------------------- */

static void up_init(void *userdata, struct fuse_conn_info *conn)
{
	unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_READDIRPLUS | FUSE_CAP_PARALLEL_DIROPS |
	                FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_ATOMIC_O_TRUNC;
	conn->want |= conn->capable & want;
	/* The kernel applies the umask (no DONT_MASK) and kills setuid bits on a write by
	 * sending a setattr (no HANDLE_KILLPRIV: the daemon writes as root, which keeps them).
	 * No export support: the view has no file handles that survive a copy-up. */
	conn->want &= ~(FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_DONT_MASK | FUSE_CAP_HANDLE_KILLPRIV |
	                FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_EXPORT_SUPPORT);
	conn->max_readahead = 1 << 20;
	conn->max_write = 1 << 20;
}

static void up_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int r = lookup_child(D(req), parent, name, true, &e);
	if (r < 0)
		return reply_err(req, r);
	fuse_reply_entry(req, &e);
}

static void up_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(D(req)->up, ino, nlookup);
	fuse_reply_none(req);
}

static void up_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		node_forget(D(req)->up, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void up_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct node *n = node_get(d->up, ino);
	if (!n)
		return fusefs_index_ops.getattr(req, ino, fi);
	if (is_alias(n)) {
		struct stat st;
		fusefs_index_stat(vx_inode(d, n->origin), n->origin, &st);
		return (void)fuse_reply_attr(req, &st, d->timeout);
	}
	struct open_file *of = fi ? handle_get(D(req), fi->fh) : NULL;
	_cleanup_close_ int own = -1;
	int fd = of && of->fd >= 0 ? of->fd : (own = node_fd(d->up, n));
	if (fd < 0)
		return reply_err(req, fd);
	struct stat st;
	int r = upper_stat(d, n, fd, &st);
	if (r < 0)
		return reply_err(req, r);
	st.st_ino = ino;
	fuse_reply_attr(req, &st, UPPER_TIMEOUT);
}

static void up_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct open_file *of = fi ? handle_get(D(req), fi->fh) : NULL;
	uint64_t limit = to_set & FUSE_SET_ATTR_SIZE ? (uint64_t)attr->st_size : NO_LIMIT;
	_cleanup_close_ int fd = -1;
	fuse_ino_t real;
	int r = upper_object(d, ino, limit, &fd, &real);
	if (r < 0)
		return reply_err(req, r);
	struct stat st;
	if (fstat(fd, &st) < 0)
		return reply_err(req, -errno);
	char p[32];
	proc_path(fd, p);
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = to_set & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t)-1;
		gid_t gid = to_set & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t)-1;
		if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return reply_err(req, -errno);
	}
	if (to_set & FUSE_SET_ATTR_MODE) {
		if (S_ISLNK(st.st_mode))
			return reply_err(req, -EOPNOTSUPP);
		if (chmod(p, attr->st_mode & 07777) < 0)
			return reply_err(req, -errno);
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (of && of->fd >= 0 ? ftruncate(of->fd, attr->st_size) < 0
		                      : truncate(p, attr->st_size) < 0)
			return reply_err(req, -errno);
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		r = set_times(fd, ts);
		if (r < 0)
			return reply_err(req, r);
	}
	struct node *n = node_get(d->up, real);
	r = n ? upper_stat(d, n, fd, &st) : fstat(fd, &st) < 0 ? -errno : 0;
	if (r < 0)
		return reply_err(req, r);
	st.st_ino = ino;
	fuse_reply_attr(req, &st, UPPER_TIMEOUT);
}

static void up_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = node_get(D(req)->up, ino);
	if (!n || is_alias(n))
		return fusefs_index_ops.readlink(req, n ? n->origin : ino);
	_cleanup_close_ int fd = node_fd(D(req)->up, n);
	if (fd < 0)
		return reply_err(req, fd);
	char buf[PATH_MAX + 1];
	ssize_t l = readlinkat(fd, "", buf, PATH_MAX);
	if (l < 0)
		return reply_err(req, -errno);
	buf[l] = '\0';
	fuse_reply_readlink(req, buf);
}

/* Creates a new object (mode's type) as name in directory parent: made in the work dir with
 * its final owner, mode and opaque marker, then renamed into place (over a whiteout if one is
 * there), so that it appears whole or not at all. Fills e; *fd_out: the open file (create). */
static int make_object(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev,
                       const char *link, int open_flags, int link_fd, struct fuse_entry_param *e,
                       int *fd_out)
{
	struct daemon *d = D(req);
	struct upper *up = d->up;
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	mode_t type = mode & S_IFMT;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (type == S_IFCHR && rdev == makedev(0, 0) && link_fd < 0)
		return -EPERM; /* it would read as a whiteout, so overlayfs refuses it too */
	_cleanup_(dirref_clear) struct dirref p = {-1, 0};
	int r = dir_upper(d, parent, &p);
	if (r < 0)
		return r;
	struct stat pst;
	if (fstat(p.fd, &pst) < 0)
		return -errno;
	uid_t uid = ctx->uid;
	gid_t gid = ctx->gid;
	if (pst.st_mode & S_ISGID) {
		gid = pst.st_gid;
		if (type == S_IFDIR)
			mode |= S_ISGID;
	}
	dir_lock(up, parent, parent);
	struct slot s;
	r = slot_of(d, &p, name, &s);
	if (r == 0 && slot_exists(&s))
		r = -EEXIST;
	char tmp[32];
	tmp_name(up, tmp);
	_cleanup_close_ int fd = -1, pathfd = -1;
	if (r == 0) {
		if (link_fd >= 0)
			r = linkat(link_fd, "", up->work_fd, tmp, AT_EMPTY_PATH);
		else if (type == S_IFREG)
			r = fd = openat(up->work_fd, tmp, O_CREAT | O_EXCL | O_CLOEXEC | open_flags,
			                0600);
		else if (type == S_IFDIR)
			r = mkdirat(up->work_fd, tmp, 0700);
		else if (type == S_IFLNK)
			r = symlinkat(link, up->work_fd, tmp);
		else
			r = mknodat(up->work_fd, tmp, type | 0600, rdev);
		r = r < 0 ? -errno : 0;
	}
	bool made = r == 0;
	if (r == 0) {
		pathfd = openat(up->work_fd, tmp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		r = pathfd < 0 ? -errno : 0;
	}
	if (r == 0 && link_fd < 0)
		r = set_owner_mode(pathfd, type, uid, gid, mode);
	/* A new directory where the parent has a lower one is opaque: nothing below shows
	 * through it (overlayfs does the same, over a whiteout and in any merged parent). */
	if (r == 0 && type == S_IFDIR && (s.whiteout || p.lower)) {
		int dfd = openat(pathfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		r = dfd < 0 ? -errno : set_opaque(dfd);
		if (dfd >= 0)
			close(dfd);
	}
	if (r == 0) {
		if (!s.whiteout)
			r = renameat2(up->work_fd, tmp, p.fd, name, RENAME_NOREPLACE);
		else if (type != S_IFDIR)
			r = renameat(up->work_fd, tmp, p.fd, name);
		else if ((r = renameat2(up->work_fd, tmp, p.fd, name, RENAME_EXCHANGE)) == 0)
			unlinkat(up->work_fd, tmp, 0); /* the whiteout, swapped out */
		r = r < 0 ? -errno : 0;
	}
	if (r < 0 && made)
		remove_tmp(up, tmp, type == S_IFDIR);
	if (r == 0)
		dir_changed(up, parent);
	dir_unlock(up, parent, parent);
	if (r < 0)
		return r;
	r = upper_entry(d, p.fd, 0, name, true, e);
	if (r == 0 && !e->ino)
		r = -ENOENT;
	if (r == 0 && fd_out)
		*fd_out = TAKE_FD(fd);
	return r;
}

static void reply_made(fuse_req_t req, int r, const struct fuse_entry_param *e)
{
	if (r < 0)
		return reply_err(req, r);
	fuse_reply_entry(req, e);
}

static void up_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct fuse_entry_param e;
	reply_made(req, make_object(req, parent, name, mode, rdev, NULL, 0, -1, &e, NULL), &e);
}

static void up_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fuse_entry_param e;
	reply_made(
	    req, make_object(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL, 0, -1, &e, NULL),
	    &e);
}

static void up_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	reply_made(req, make_object(req, parent, name, S_IFLNK | 0777, 0, link, 0, -1, &e, NULL),
	           &e);
}

static void up_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct daemon *d = D(req);
	_cleanup_close_ int fd = -1;
	fuse_ino_t real;
	int r = upper_object(d, ino, NO_LIMIT, &fd, &real);
	struct stat st;
	if (r == 0 && fstat(fd, &st) < 0)
		r = -errno;
	struct fuse_entry_param e;
	if (r == 0)
		r = make_object(req, newparent, newname, st.st_mode, 0, NULL, 0, fd, &e, NULL);
	reply_made(req, r, &e);
}

static int open_flags(int flags)
{
	/* O_APPEND stays out: the kernel sends every write with its offset. */
	return (flags & (O_ACCMODE | O_SYNC | O_DSYNC | O_NOATIME)) | O_CLOEXEC;
}

static void reply_open_file(fuse_req_t req, struct fuse_file_info *fi, int fd, bool create,
                            const struct fuse_entry_param *e)
{
	struct open_file *of = calloc(1, sizeof(*of));
	if (!of) {
		close(fd);
		return reply_err(req, -ENOMEM);
	}
	of->fd = fd;
	of->open_flags = fi->flags;
	fi->fh = handle_put(D(req), of, HANDLE_FILE);
	/* The upper file may differ from what the page cache holds for this inode. */
	fi->keep_cache = 0;
	int r = create ? fuse_reply_create(req, e, fi) : fuse_reply_open(req, fi);
	if (r == -ENOENT) /* the open was interrupted: no release will come */
		fusefs_open_file_free(handle_take(D(req), fi->fh));
}

static void up_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	int fd = -1;
	int r = make_object(req, parent, name, S_IFREG | (mode & 07777), 0, NULL,
	                    open_flags(fi->flags), -1, &e, &fd);
	if (r < 0)
		return reply_err(req, r);
	reply_open_file(req, fi, fd, true, &e);
}

static void up_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	bool write = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	struct node *n = node_get(d->up, ino);
	if (!write && (!n || is_alias(n)))
		return fusefs_index_open(req, n ? n->origin : ino, fi);
	_cleanup_close_ int pathfd = -1;
	fuse_ino_t real;
	int r = upper_object(d, ino, fi->flags & O_TRUNC ? 0 : NO_LIMIT, &pathfd, &real);
	if (r < 0)
		return reply_err(req, r);
	char p[32];
	proc_path(pathfd, p);
	int fd = open(p, open_flags(fi->flags) | (fi->flags & O_TRUNC));
	if (fd < 0)
		return reply_err(req, -errno);
	reply_open_file(req, fi, fd, false, NULL);
}

static void up_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
	fusefs_ops.read(req, ino, size, off, fi);
}

static void up_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fusefs_ops.release(req, ino, fi);
}

static void up_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in_buf, off_t off,
                         struct fuse_file_info *fi)
{
	struct open_file *of = handle_get(D(req), fi->fh);
	if (of->fd < 0)
		return reply_err(req, -EBADF);
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in_buf));
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = of->fd;
	out.buf[0].pos = off;
	ssize_t n = fuse_buf_copy(&out, in_buf, 0);
	if (n < 0)
		return reply_err(req, (int)n);
	fuse_reply_write(req, n);
}

static void up_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct open_file *of = handle_get(D(req), fi->fh);
	int r = 0;
	if (of->fd >= 0) {
		/* what close(2) of the upper file would report (NFS, quotas) */
		int fd = dup(of->fd);
		r = fd < 0 || close(fd) < 0 ? -errno : 0;
	}
	reply_err(req, r);
}

static void up_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct open_file *of = handle_get(D(req), fi->fh);
	int r = 0;
	if (of->fd >= 0)
		r = (datasync ? fdatasync(of->fd) : fsync(of->fd)) < 0 ? -errno : 0;
	reply_err(req, r);
}

static void up_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
	struct open_file *of = handle_get(D(req), fi->fh);
	if (of->fd < 0)
		return reply_err(req, -EBADF);
	reply_err(req, fallocate(of->fd, mode, off, len) < 0 ? -errno : 0);
}

static void up_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct daemon *d = D(req);
	struct upper *up = d->up;
	_cleanup_(dirref_clear) struct dirref p = {-1, 0};
	int r = dir_upper(d, parent, &p);
	if (r < 0)
		return reply_err(req, r);
	dir_lock(up, parent, parent);
	struct slot s;
	r = slot_of(d, &p, name, &s);
	if (r == 0 && !slot_exists(&s))
		r = -ENOENT;
	if (r == 0 && s.dir)
		r = -EISDIR;
	char tmp[32] = "";
	bool lower = vx_has(d, p.lower, name);
	if (r == 0 && lower)
		r = make_whiteout(up, tmp);
	if (r == 0) {
		/* Where the index has the name, a whiteout takes its place in one rename. */
		if (!lower)
			r = unlinkat(p.fd, name, 0);
		else if (s.upper)
			r = renameat(up->work_fd, tmp, p.fd, name);
		else
			r = renameat2(up->work_fd, tmp, p.fd, name, RENAME_NOREPLACE);
		r = r < 0 ? -errno : 0;
		if (r < 0 && *tmp)
			remove_tmp(up, tmp, false);
	}
	if (r == 0) {
		dir_changed(up, parent);
		if (s.upper && s.st.st_nlink <= 1)
			node_gone(up, s.st.st_dev, s.st.st_ino);
	}
	dir_unlock(up, parent, parent);
	reply_err(req, r);
}

static void up_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct daemon *d = D(req);
	struct upper *up = d->up;
	_cleanup_(dirref_clear) struct dirref p = {-1, 0};
	int r = dir_upper(d, parent, &p);
	if (r < 0)
		return reply_err(req, r);
	dir_lock(up, parent, parent);
	struct slot s;
	bool whiteouts = false;
	r = slot_of(d, &p, name, &s);
	if (r == 0 && !slot_exists(&s))
		r = -ENOENT;
	if (r == 0 && !s.dir)
		r = -ENOTDIR;
	if (r == 0)
		r = slot_empty(d, &p, name, &s, &whiteouts);
	bool lower = vx_has(d, p.lower, name);
	char tmp[32] = "", gone[32] = "";
	if (r == 0 && lower)
		r = make_whiteout(up, tmp);
	if (r == 0) {
		if (!s.upper)
			r = renameat2(up->work_fd, tmp, p.fd, name, RENAME_NOREPLACE);
		else if (lower) /* the directory and a whiteout trade places */
			r = renameat2(up->work_fd, tmp, p.fd, name, RENAME_EXCHANGE);
		else if (!whiteouts)
			r = unlinkat(p.fd, name, AT_REMOVEDIR);
		else {
			tmp_name(up, gone);
			r = renameat(p.fd, name, up->work_fd, gone);
		}
		r = r < 0 ? -errno : 0;
		if (r < 0 && *tmp)
			remove_tmp(up, tmp, false);
		else if (r == 0 && s.upper && (lower || *gone))
			remove_tree_at(up->work_fd, *gone ? gone : tmp);
	}
	if (r == 0) {
		dir_changed(up, parent);
		if (s.upper)
			node_gone(up, s.st.st_dev, s.st.st_ino);
	}
	dir_unlock(up, parent, parent);
	reply_err(req, r);
}

/* Copies up the index non-directory x that shows as name of directory p (directory pdir of
 * the view), as the node the kernel has for that name. */
static int copy_up_name(struct daemon *d, const struct dirref *p, fuse_ino_t pdir, const char *name,
                        uint32_t x)
{
	struct upper *up = d->up;
	struct node *alias = alias_at(up, p->lower, name);
	pthread_mutex_t *l = &up->copy_lock[(alias ? alias->ino : x) % N_STRIPES];
	pthread_mutex_lock(l);
	int r = 0, fd = -1;
	fuse_ino_t ino;
	/* unless another request copied it up while this one waited */
	if (alias ? is_alias(alias) : !node_get(up, x))
		r = copy_up_at(d, p->fd, pdir, name, x, NO_LIMIT, alias, &fd, &ino);
	pthread_mutex_unlock(l);
	if (fd >= 0)
		close(fd);
	return r;
}

static void up_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
	struct daemon *d = D(req);
	struct upper *up = d->up;
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return reply_err(req, -EINVAL);
	bool exchange = flags & RENAME_EXCHANGE;
	_cleanup_(dirref_clear) struct dirref sp = {-1, 0}, dp = {-1, 0};
	int r = dir_upper(d, parent, &sp);
	if (r == 0)
		r = dir_upper(d, newparent, &dp);
	if (r < 0)
		return reply_err(req, r);
	struct slot src, dst;
	if ((r = slot_of(d, &sp, name, &src)) < 0 || (r = slot_of(d, &dp, newname, &dst)) < 0)
		return reply_err(req, r);
	if (!slot_exists(&src) || (exchange && !slot_exists(&dst)))
		return reply_err(req, -ENOENT);
	/* A directory with lower content moves only with redirect_dir, which this upper format
	 * leaves out: EXDEV, and mv copies it, as under overlayfs with redirect_dir=off. */
	if (src.dir && (src.lower || src.merged))
		return reply_err(req, -EXDEV);
	if (exchange && dst.dir && (dst.lower || dst.merged))
		return reply_err(req, -EXDEV);
	if ((flags & RENAME_NOREPLACE) && slot_exists(&dst))
		return reply_err(req, -EEXIST);
	if (src.lower) {
		if ((r = copy_up_name(d, &sp, parent, name, src.lower)) < 0 ||
		    (r = slot_of(d, &sp, name, &src)) < 0)
			return reply_err(req, r);
	}
	if (exchange && dst.lower) {
		if ((r = copy_up_name(d, &dp, newparent, newname, dst.lower)) < 0 ||
		    (r = slot_of(d, &dp, newname, &dst)) < 0)
			return reply_err(req, r);
	}
	dir_lock(up, parent, newparent);
	bool whiteouts = false;
	if (!exchange && dst.dir && slot_exists(&dst)) {
		r = slot_empty(d, &dp, newname, &dst, &whiteouts);
		if (r == 0 && whiteouts)
			r = clear_dir(up, &dp, newname);
	}
	unsigned rflags = exchange ? RENAME_EXCHANGE : 0;
	bool drop_whiteout = false;
	if (!exchange && vx_has(d, sp.lower, name))
		/* the name leaves the index's entry behind: a whiteout takes its place */
		rflags = dst.whiteout ? RENAME_EXCHANGE : RENAME_WHITEOUT;
	else if (!exchange && src.dir && dst.whiteout) {
		rflags = RENAME_EXCHANGE; /* a directory cannot replace a whiteout */
		drop_whiteout = true;
	}
	/* A directory moved into a merged directory is opaque there, as overlayfs marks it. */
	if (r == 0 && src.dir && dp.lower) {
		_cleanup_close_ int fd =
		    openat(sp.fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		r = fd < 0 ? -errno : is_opaque(fd) ? 0 : set_opaque(fd);
	}
	if (r == 0 && exchange && dst.dir && sp.lower) {
		_cleanup_close_ int fd =
		    openat(dp.fd, newname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		r = fd < 0 ? -errno : is_opaque(fd) ? 0 : set_opaque(fd);
	}
	if (r == 0 && renameat2(sp.fd, name, dp.fd, newname, rflags) < 0) {
		r = -errno;
		if (r == -EINVAL && rflags == RENAME_WHITEOUT) {
			/* an upper filesystem without RENAME_WHITEOUT: two steps */
			char tmp[32];
			r = make_whiteout(up, tmp);
			if (r == 0 && renameat(sp.fd, name, dp.fd, newname) < 0)
				r = -errno;
			if (r == 0 &&
			    renameat2(up->work_fd, tmp, sp.fd, name, RENAME_NOREPLACE) < 0)
				r = -errno;
			if (r < 0)
				remove_tmp(up, tmp, false);
		}
	}
	if (r == 0 && drop_whiteout)
		unlinkat(sp.fd, name, 0);
	if (r == 0) {
		dir_changed(up, parent);
		dir_changed(up, newparent);
		if (!exchange && dst.upper && !dst.whiteout && (dst.dir || dst.st.st_nlink <= 1))
			node_gone(up, dst.st.st_dev, dst.st.st_ino);
	}
	dir_unlock(up, parent, newparent);
	reply_err(req, r);
}

/* ---- directories --------------------------------------------------------------------------- */

struct dent {
	char *name;
	uint32_t lower; /* an index entry (ino), or 0 for an upper one */
	uint32_t pos;   /* its position in the index directory */
};

struct dir_handle {
	struct dent *e;
	size_t n;
	bool loaded;
};

static void dir_handle_clear(struct dir_handle *h)
{
	for (size_t i = 0; i < h->n; i++)
		free(h->e[i].name);
	free(h->e);
	h->e = NULL;
	h->n = 0;
	h->loaded = false;
}

/* The merged listing: upper entries but whiteouts, then the index's the upper does not have. */
static int dir_load(struct daemon *d, struct node *n, int fd, struct dir_handle *h)
{
	dir_handle_clear(h);
	struct uent *e;
	size_t ne;
	int r = upper_list(fd, &e, &ne);
	if (r < 0)
		return r;
	uint32_t nl = 0;
	const struct compose_dirent *de = n->lower ? vx_dirents(d, n->lower, &nl) : NULL;
	h->e = xcalloc(ne + nl + 1, sizeof(*h->e));
	for (size_t i = 0; i < ne; i++)
		if (!e[i].whiteout)
			h->e[h->n++] = (struct dent){xstrdup(e[i].name), 0, 0};
	char name[NAME_MAX + 1];
	for (uint32_t i = 0; i < nl; i++) {
		index_name(d->cur->idx, &de[i], name);
		if (!uents_find(e, ne, name))
			h->e[h->n++] = (struct dent){xstrdup(name), vx_view(d, de[i].ino), i};
	}
	uents_free(e, ne);
	h->loaded = true;
	return 0;
}

static void up_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct daemon *d = D(req);
	struct node *n = node_get(d->up, ino);
	if (n && !S_ISDIR(n->type))
		return reply_err(req, -ENOTDIR);
	if (!n) {
		const struct compose_inode *in = vx_inode(d, ino);
		if (!in)
			return reply_err(req, -ESTALE);
		if (!S_ISDIR(in->mode))
			return reply_err(req, -ENOTDIR);
		/* All from the index: the kernel may cache the listing (a change in it
		 * goes through the kernel, which then drops the cache itself). */
		fi->cache_readdir = 1;
		fi->keep_cache = 1;
	}
	struct dir_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return reply_err(req, -ENOMEM);
	fi->fh = handle_put(d, h, HANDLE_DIR);
	if (fuse_reply_open(req, fi) == -ENOENT)
		free(handle_take(d, fi->fh));
}

/* An index directory listed with readdirplus hands each entry to the kernel under the node id it
 * has in the merged view, with one more lookup reference. */
static const struct fusefs_readdir_hooks index_hooks = {
    .nodeid = upper_lower_nodeid,
    .looked_up = upper_index_looked_up,
};

static void up_readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                              struct fuse_file_info *fi, bool plus)
{
	struct daemon *d = D(req);
	struct node *n = node_get(d->up, ino);
	if (!n)
		return fusefs_index_readdir(req, ino, size, off, plus, &index_hooks);
	_cleanup_close_ int dfd = node_fd(d->up, n);
	if (dfd < 0)
		return reply_err(req, dfd);
	struct dir_handle *h = handle_get(d, fi->fh);
	if (off == 0 || !h->loaded) {
		int r = dir_load(d, n, dfd, h);
		if (r < 0)
			return reply_err(req, r);
	}
	_cleanup_free_ char *buf = malloc(size);
	if (!buf)
		return reply_err(req, -ENOMEM);
	size_t used = 0;
	for (off_t i = off; i < (off_t)h->n + 2; i++) {
		struct fuse_entry_param e = {0};
		const char *nm;
		if (i < 2) {
			nm = i == 0 ? "." : "..";
			e.attr.st_ino = i == 0 ? ino : FUSE_ROOT_ID;
			e.attr.st_mode = S_IFDIR;
		} else {
			struct dent *x = &h->e[i - 2];
			nm = x->name;
			if (x->lower) {
				e.ino = upper_lower_nodeid(d, x->lower, n->lower, x->pos);
				e.attr_timeout = e.entry_timeout = d->timeout;
				fusefs_index_stat(vx_inode(d, x->lower), x->lower, &e.attr);
				if (plus)
					upper_index_looked_up(d, e.ino, n->lower, x->pos);
			} else {
				int r = upper_entry(d, dfd, n->lower, nm, plus, &e);
				if (r < 0 || !e.ino)
					continue; /* gone since the listing was read */
			}
		}
		size_t rem = size - used, need;
		if (plus) {
			struct fuse_entry_param none = {.attr = e.attr};
			none.attr.st_ino = e.attr.st_ino;
			need = fuse_add_direntry_plus(req, buf + used, rem, nm, i < 2 ? &none : &e,
			                              i + 1);
		} else
			need = fuse_add_direntry(req, buf + used, rem, nm, &e.attr, i + 1);
		if (need > rem) {
			if (plus && i >= 2)
				node_forget(d->up, e.ino, 1);
			break;
		}
		used += need;
	}
	fuse_reply_buf(req, buf, used);
}

static void up_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
	up_readdir_common(req, ino, size, off, fi, false);
}

static void up_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
	up_readdir_common(req, ino, size, off, fi, true);
}

static void up_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *h = handle_take(D(req), fi->fh);
	if (h)
		dir_handle_clear(h);
	free(h);
	fuse_reply_err(req, 0);
}

static void up_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct node *n = node_get(D(req)->up, ino);
	int r = 0;
	_cleanup_close_ int fd = n && node_live(n) ? node_fd(D(req)->up, n) : -1;
	if (fd >= 0)
		r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? -errno : 0;
	reply_err(req, r);
}

static void up_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	if (fstatvfs(D(req)->up->root_fd, &sv) < 0)
		return reply_err(req, -errno);
	fuse_reply_statfs(req, &sv);
}

/* ---- xattrs: the upper object's, but overlayfs's own names, which the view does not show ---- */

static void up_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct node *n = node_get(D(req)->up, ino);
	if (!n || is_alias(n))
		return fusefs_index_ops.getxattr(req, n ? n->origin : ino, name, size);
	if (ovl_name(name))
		return reply_err(req, -ENODATA);
	_cleanup_close_ int fd = node_fd(D(req)->up, n);
	if (fd < 0)
		return reply_err(req, fd);
	char p[32];
	proc_path(fd, p);
	if (size == 0) {
		ssize_t l = getxattr(p, name, NULL, 0);
		return l < 0 ? reply_err(req, -errno) : (void)fuse_reply_xattr(req, l);
	}
	_cleanup_free_ char *buf = malloc(size);
	if (!buf)
		return reply_err(req, -ENOMEM);
	ssize_t l = getxattr(p, name, buf, size);
	if (l < 0)
		return reply_err(req, -errno);
	fuse_reply_buf(req, buf, l);
}

static void up_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct node *n = node_get(D(req)->up, ino);
	if (!n || is_alias(n))
		return fusefs_index_ops.listxattr(req, n ? n->origin : ino, size);
	_cleanup_close_ int fd = node_fd(D(req)->up, n);
	if (fd < 0)
		return reply_err(req, fd);
	char p[32];
	proc_path(fd, p);
	ssize_t l;
	_cleanup_free_ char *buf = NULL;
	for (;;) {
		l = listxattr(p, NULL, 0);
		if (l < 0)
			return reply_err(req, -errno);
		free(buf);
		buf = malloc(l + 1);
		if (!buf)
			return reply_err(req, -ENOMEM);
		l = listxattr(p, buf, l);
		if (l >= 0)
			break;
		if (errno != ERANGE)
			return reply_err(req, -errno);
	}
	size_t out = 0;
	for (ssize_t i = 0; i < l;) {
		size_t nl = strlen(buf + i) + 1;
		if (!ovl_name(buf + i)) {
			memmove(buf + out, buf + i, nl);
			out += nl;
		}
		i += nl;
	}
	if (size == 0)
		return (void)fuse_reply_xattr(req, out);
	if (size < out)
		return reply_err(req, -ERANGE);
	fuse_reply_buf(req, buf, out);
}

static void up_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
	if (ovl_name(name))
		return reply_err(req, -EPERM);
	_cleanup_close_ int fd = -1;
	fuse_ino_t real;
	int r = upper_object(D(req), ino, NO_LIMIT, &fd, &real);
	if (r < 0)
		return reply_err(req, r);
	char p[32];
	proc_path(fd, p);
	reply_err(req, setxattr(p, name, value, size, flags) < 0 ? -errno : 0);
}

static void up_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct daemon *d = D(req);
	if (ovl_name(name))
		return reply_err(req, -EPERM);
	struct node *node = node_get(d->up, ino);
	if (!node || is_alias(node)) {
		/* nothing to copy up for a name the file does not have */
		uint32_t n;
		struct compose_index *xi;
		const struct compose_xattr *x = vx_xattrs(d, node ? node->origin : ino, &n, &xi);
		bool has = false;
		for (uint32_t i = 0; i < n && !has; i++)
			has = x[i].name_len == strlen(name) &&
			      memcmp(compose_index_string(xi, x[i].name_off), name,
			             x[i].name_len) == 0;
		if (!has)
			return reply_err(req, -ENODATA);
	}
	_cleanup_close_ int fd = -1;
	fuse_ino_t real;
	int r = upper_object(d, ino, NO_LIMIT, &fd, &real);
	if (r < 0)
		return reply_err(req, r);
	char p[32];
	proc_path(fd, p);
	reply_err(req, removexattr(p, name) < 0 ? -errno : 0);
}

/* Every handler that reads the view or the node table runs under d->live, so that a switch
 * never shows it half done; those that only use an open file's fd do not need it. */
FUSEFS_LOCKED(up_lookup, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
FUSEFS_LOCKED(up_forget, (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup), (req, ino, nlookup))
FUSEFS_LOCKED(up_forget_multi, (fuse_req_t req, size_t count, struct fuse_forget_data *forgets),
              (req, count, forgets))
FUSEFS_LOCKED(up_getattr, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
              (req, ino, fi))
FUSEFS_LOCKED(up_setattr,
              (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
               struct fuse_file_info *fi),
              (req, ino, attr, to_set, fi))
FUSEFS_LOCKED(up_readlink, (fuse_req_t req, fuse_ino_t ino), (req, ino))
FUSEFS_LOCKED(up_mknod,
              (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev),
              (req, parent, name, mode, rdev))
FUSEFS_LOCKED(up_mkdir, (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode),
              (req, parent, name, mode))
FUSEFS_LOCKED(up_unlink, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
FUSEFS_LOCKED(up_rmdir, (fuse_req_t req, fuse_ino_t parent, const char *name), (req, parent, name))
FUSEFS_LOCKED(up_symlink, (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name),
              (req, link, parent, name))
FUSEFS_LOCKED(up_rename,
              (fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
               const char *newname, unsigned int flags),
              (req, parent, name, newparent, newname, flags))
FUSEFS_LOCKED(up_link, (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname),
              (req, ino, newparent, newname))
FUSEFS_LOCKED(up_open, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi), (req, ino, fi))
FUSEFS_LOCKED(up_opendir, (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi),
              (req, ino, fi))
FUSEFS_LOCKED(up_readdir,
              (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
              (req, ino, size, off, fi))
FUSEFS_LOCKED(up_readdirplus,
              (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi),
              (req, ino, size, off, fi))
FUSEFS_LOCKED(up_fsyncdir,
              (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi),
              (req, ino, datasync, fi))
FUSEFS_LOCKED(up_statfs, (fuse_req_t req, fuse_ino_t ino), (req, ino))
FUSEFS_LOCKED(up_setxattr,
              (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
               int flags),
              (req, ino, name, value, size, flags))
FUSEFS_LOCKED(up_getxattr, (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size),
              (req, ino, name, size))
FUSEFS_LOCKED(up_listxattr, (fuse_req_t req, fuse_ino_t ino, size_t size), (req, ino, size))
FUSEFS_LOCKED(up_removexattr, (fuse_req_t req, fuse_ino_t ino, const char *name), (req, ino, name))
FUSEFS_LOCKED(up_create,
              (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
               struct fuse_file_info *fi),
              (req, parent, name, mode, fi))

const struct fuse_lowlevel_ops fusefs_upper_ops = {
    .init = up_init,
    .lookup = locked_up_lookup,
    .forget = locked_up_forget,
    .forget_multi = locked_up_forget_multi,
    .getattr = locked_up_getattr,
    .setattr = locked_up_setattr,
    .readlink = locked_up_readlink,
    .mknod = locked_up_mknod,
    .mkdir = locked_up_mkdir,
    .unlink = locked_up_unlink,
    .rmdir = locked_up_rmdir,
    .symlink = locked_up_symlink,
    .rename = locked_up_rename,
    .link = locked_up_link,
    .open = locked_up_open,
    .read = up_read,
    .write_buf = up_write_buf,
    .flush = up_flush,
    .release = up_release,
    .fsync = up_fsync,
    .opendir = locked_up_opendir,
    .readdir = locked_up_readdir,
    .readdirplus = locked_up_readdirplus,
    .releasedir = up_releasedir,
    .fsyncdir = locked_up_fsyncdir,
    .statfs = locked_up_statfs,
    .setxattr = locked_up_setxattr,
    .getxattr = locked_up_getxattr,
    .listxattr = locked_up_listxattr,
    .removexattr = locked_up_removexattr,
    .create = locked_up_create,
    .fallocate = up_fallocate,
};

/* ---- a switch ------------------------------------------------------------------------------ */

/* Where (view directory << 32 | position + 1) is in the new generation p->new when the entry
 * there is still the same view inode; 0 when it is not. */
static uint64_t remap_where(struct daemon *d, const struct switch_plan *p, uint64_t where)
{
	fuse_ino_t vdir = where >> 32;
	uint32_t pos = (uint32_t)where - 1, n, nn;
	struct vnode *vn = view_node(d, vdir);
	if (!where || !vn || vn->gen != p->old || !p->claimed[vn->ino])
		return 0;
	uint32_t od = vn->ino, nd = p->claimed[od];
	const struct compose_dirent *de = compose_index_dirents(p->old->idx, od, &n);
	if (pos >= n)
		return 0;
	int64_t np = compose_index_find(
	    p->new->idx, nd, compose_index_string(p->old->idx, de[pos].name_off), de[pos].name_len);
	const struct compose_dirent *ne = compose_index_dirents(p->new->idx, nd, &nn);
	if (np < 0 || p->claimed[de[pos].ino] != ne[np].ino)
		return 0;
	return (uint64_t)vdir << 32 | (np + 1);
}

/* Whether view inode v (an old one) keeps its number in the new generation. */
static bool kept(struct daemon *d, const struct switch_plan *p, fuse_ino_t v)
{
	struct vnode *vn = view_node(d, v);
	return vn && (vn->gen != p->old || p->claimed[vn->ino]);
}

static void follow_lower(struct daemon *d, const struct switch_plan *p, struct node *n)
{
	if (!n->lower)
		return;
	n->nlink = 0; /* the merged count changes with the index */
	if (kept(d, p, n->lower))
		return;
	/* The index directory below went: the upper directory stands alone. */
	if (n->lower != n->ino && index_node(d->up, n->lower) == n)
		index_node_set(d->up, n->lower, NULL);
	n->lower = 0;
}

/* The view is held still and about to change meaning (live.c): positions in directories are
 * the new index's from now on, directories merged over an index directory that went stand
 * alone, and the kernel is told the rest by the switch's own invalidations. */
static void upper_on_switch(struct daemon *d, const struct switch_plan *p)
{
	struct upper *up = d->up;
	pthread_mutex_lock(&up->lock);
	/* Names of hard-linked index files: found by their new position, or no longer. */
	size_t na = 0;
	struct node **aliases = xcalloc(up->wheres.count + 1, sizeof(*aliases));
	for (size_t i = 0; i < up->wheres.size; i++)
		for (struct node *n = up->wheres.tab[i]; n; n = n->next_where)
			aliases[na++] = n;
	for (size_t i = 0; i < na; i++) {
		struct node *n = aliases[i];
		where_remove(up, n);
		n->where = kept(d, p, n->origin) ? remap_where(d, p, n->where) : 0;
		if (n->where)
			where_insert(up, n);
	}
	free(aliases);
	for (fuse_ino_t v = 1; v < d->next_vino; v++) {
		struct vnode *vn = view_node(d, v);
		if (!vn || !vn->gen)
			continue;
		if (vn->last_name)
			vn->last_name = remap_where(d, p, vn->last_name);
		if (vn->upper && vn->upper->ino == v)
			follow_lower(d, p, vn->upper);
	}
	for (size_t i = 0; i < up->inos.size; i++)
		for (struct node *n = up->inos.tab[i]; n; n = n->next_ino)
			follow_lower(d, p, n);
	pthread_mutex_unlock(&up->lock);
}

/* ---- setting up and taking down ------------------------------------------------------------ */

static int probe(int work_fd, const char *work, struct mosaic_error *err)
{
	if (mknodat(work_fd, "#probe", S_IFCHR | 0, makedev(0, 0)) < 0)
		return mosaic_errorf(err, -errno,
		                     "cannot make a whiteout (character device 0/0) in %s: %m; "
		                     "--writable=fuse needs root",
		                     work);
	unlinkat(work_fd, "#probe", 0);
	if (mkdirat(work_fd, "#probe", 0700) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", work);
	_cleanup_close_ int fd = openat(work_fd, "#probe", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = fd < 0 ? -errno : set_opaque(fd);
	unlinkat(work_fd, "#probe", AT_REMOVEDIR);
	if (r < 0)
		return mosaic_errorf(err, r,
		                     "cannot set trusted.* xattrs in %s: %s; the upper needs a "
		                     "filesystem with them (ext4, xfs, btrfs, tmpfs) and root",
		                     work, strerror(-r));
	return 0;
}

static bool path_within(const char *a, const char *b)
{
	size_t l = strlen(b);
	return strncmp(a, b, l) == 0 && (a[l] == '/' || a[l] == '\0' || strcmp(b, "/") == 0);
}

int upper_open(struct daemon *d, const char *upper, const char *work, int held_lock,
               struct mosaic_error *err)
{
	const struct compose_inode *root = vx_inode(d, FUSE_ROOT_ID);
	struct stat st, wst;
	bool fresh = stat(upper, &st) < 0 && errno == ENOENT;
	int r = mkdir_p(upper, 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "upper %s: %s", upper, strerror(-r));
	/* A new upper starts as a copy-up of the root: the view's root keeps its attributes. */
	if (fresh && root &&
	    (chown(upper, root->uid, root->gid) < 0 || chmod(upper, root->mode & 07777) < 0))
		return mosaic_errorf(err, -errno, "upper %s: %m", upper);
	if ((r = mkdir_p(work, 0755)) < 0)
		return mosaic_errorf(err, r, "work dir %s: %s", work, strerror(-r));
	char ru[PATH_MAX], rw[PATH_MAX];
	if (!realpath(upper, ru) || !realpath(work, rw) || stat(ru, &st) < 0 || stat(rw, &wst) < 0)
		return mosaic_errorf(err, -errno, "upper %s or work dir %s: %m", upper, work);
	if (st.st_dev != wst.st_dev)
		return mosaic_errorf(err, -EXDEV,
		                     "the work dir %s is not on the upper's filesystem (%s); "
		                     "pick one beside it with --work",
		                     work, upper);
	if (path_within(ru, rw) || path_within(rw, ru))
		return mosaic_errorf(err, -EINVAL,
		                     "the upper %s and the work dir %s must not contain each other",
		                     upper, work);

	/* A daemon taking over the session gets the lock its predecessor holds. */
	_cleanup_close_ int lock_fd =
	    held_lock >= 0 ? held_lock : open(rw, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lock_fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", rw);
	if (held_lock < 0 && flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
		return mosaic_errorf(err, errno == EWOULDBLOCK ? -EBUSY : -errno,
		                     "the work dir %s is in use by another mosaic mount", work);
	/* What a daemon killed mid-copy-up left: never visible, thrown away (as overlayfs
	 * empties its work dir at mount). */
	remove_tree_at(lock_fd, "work");
	if (mkdirat(lock_fd, "work", 0700) < 0)
		return mosaic_errorf(err, -errno, "%s/work: %m", work);
	_cleanup_close_ int work_fd =
	    openat(lock_fd, "work", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (work_fd < 0)
		return mosaic_errorf(err, -errno, "%s/work: %m", work);
	if ((r = probe(work_fd, rw, err)) < 0)
		return r;
	_cleanup_close_ int root_fd = open(ru, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0 || fstat(root_fd, &st) < 0)
		return mosaic_errorf(err, -errno, "upper %s: %m", upper);

	/* One fd per inode the kernel holds, and the kernel keeps every inode it has room for (a
	 * tar of /usr/share makes some 70000): a hard limit such as 20000 would run out. Root
	 * (CAP_SYS_RESOURCE) may raise the hard limit up to fs.nr_open; else take the hard limit.
	 */
	struct rlimit rl = {1024, 1024};
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rlim_t want = rl.rlim_max;
		FILE *f = fopen("/proc/sys/fs/nr_open", "re");
		unsigned long long nr;
		if (f && fscanf(f, "%llu", &nr) == 1 && nr > want)
			want = nr;
		if (f)
			fclose(f);
		struct rlimit raised = {want, want};
		if (want > rl.rlim_max && setrlimit(RLIMIT_NOFILE, &raised) == 0)
			rl = raised;
		else if (rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}

	struct upper *up = xcalloc(1, sizeof(*up));
	up->d = d;
	table_init(&up->inos, offsetof(struct node, next_ino), key_ino);
	table_init(&up->devs, offsetof(struct node, next_dev), key_dev);
	table_init(&up->wheres, offsetof(struct node, next_where), key_where);
	up->next_ino = VIEW_INO_END;
	/* half the fds for the nodes, the rest for open files and the requests' own */
	up->fd_max = rl.rlim_cur == RLIM_INFINITY ? SIZE_MAX / 2 : (size_t)rl.rlim_cur / 2;
	pthread_mutex_init(&up->lock, NULL);
	for (size_t i = 0; i < N_STRIPES; i++) {
		pthread_mutex_init(&up->copy_lock[i], NULL);
		pthread_mutex_init(&up->dir_lock[i], NULL);
	}
	pthread_mutex_init(&up->nlock, NULL);
	pthread_cond_init(&up->ncond, NULL);
	up->tail = &up->head;
	struct node *n = xcalloc(1, sizeof(*n));
	n->ino = FUSE_ROOT_ID;
	n->dev = st.st_dev;
	n->st_ino = st.st_ino;
	n->type = S_IFDIR;
	n->lower = COMPOSE_ROOT_INO;
	up->root_fd = n->fd = TAKE_FD(root_fd);
	index_node_set(up, FUSE_ROOT_ID, n);
	dev_insert(up, n);
	up->work_fd = TAKE_FD(work_fd);
	up->lock_fd = TAKE_FD(lock_fd);
	d->up = up;
	d->on_switch = upper_on_switch;
	return 0;
}

void upper_start(struct daemon *d, struct fuse_session *se)
{
	struct upper *up = d->up;
	up->se = se;
	up->stop = false;
	up->thread_started = pthread_create(&up->thread, NULL, notify_thread, up) == 0;
}

static void notify_stop(struct upper *up)
{
	if (!up->thread_started)
		return;
	pthread_mutex_lock(&up->nlock);
	up->stop = true;
	pthread_cond_signal(&up->ncond);
	pthread_mutex_unlock(&up->nlock);
	pthread_join(up->thread, NULL);
	up->thread_started = false;
}

void upper_close(struct daemon *d)
{
	struct upper *up = d->up;
	if (!up)
		return;
	notify_stop(up);
	syncfs(up->root_fd);
	for (size_t i = 0; i < up->inos.size; i++)
		for (struct node *n = up->inos.tab[i], *next; n; n = next) {
			next = n->next_ino;
			if (n->fd >= 0)
				close(n->fd);
			free(n->fh);
			free(n);
		}
	for (fuse_ino_t i = 1; i < d->next_vino; i++) {
		struct node *n = index_node(up, i);
		if (n && n->fd >= 0)
			close(n->fd);
		if (n)
			free(n->fh);
		free(n);
		index_node_set(up, i, NULL);
	}
	close(up->work_fd);
	close(up->lock_fd);
	free(up->inos.tab);
	free(up->devs.tab);
	free(up->wheres.tab);
	pthread_mutex_destroy(&up->lock);
	for (size_t i = 0; i < N_STRIPES; i++) {
		pthread_mutex_destroy(&up->copy_lock[i]);
		pthread_mutex_destroy(&up->dir_lock[i]);
	}
	for (struct notice *m = up->head, *next; m; m = next) {
		next = m->next;
		free(m->name);
		free(m);
	}
	pthread_mutex_destroy(&up->nlock);
	pthread_cond_destroy(&up->ncond);
	free(up);
	d->up = NULL;
	d->on_switch = NULL;
}

/* ---- handing the upper to another daemon ---------------------------------------------------- */

int upper_lock_fd(struct daemon *d)
{
	return d->up ? d->up->lock_fd : -1;
}

void upper_pause(struct daemon *d)
{
	if (!d->up)
		return;
	d->up->flush = true;
	notify_stop(d->up);
	d->up->flush = false;
}

static void hex_of(const unsigned char *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
}

static json_object *node_save(struct upper *up, struct node *n)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "ino", json_object_new_int64(n->ino));
	json_object_object_add(o, "dev", json_object_new_int64(n->dev));
	json_object_object_add(o, "st_ino", json_object_new_int64(n->st_ino));
	json_object_object_add(o, "type", json_object_new_int(n->type));
	json_object_object_add(o, "lower", json_object_new_int64(n->lower));
	json_object_object_add(o, "origin", json_object_new_int64(n->origin));
	json_object_object_add(o, "where", json_object_new_int64(n->where));
	json_object_object_add(o, "nlookup", json_object_new_int64(n->nlookup));
	json_object_object_add(o, "dead", json_object_new_boolean(n->dead));
	/* The new daemon finds the object by a file handle: fds stay with this process. */
	struct file_handle *h = n->fh;
	_cleanup_free_ struct file_handle *made = NULL;
	if (!h && n->fd >= 0) {
		made = malloc(sizeof(*made) + MAX_HANDLE_SZ);
		int mount_id;
		made->handle_bytes = MAX_HANDLE_SZ;
		if (name_to_handle_at(n->fd, "", made, &mount_id, AT_EMPTY_PATH) == 0)
			h = made;
	}
	if (h) {
		char hex[2 * MAX_HANDLE_SZ + 1];
		hex_of(h->f_handle, h->handle_bytes, hex);
		json_object_object_add(o, "handle_type", json_object_new_int(h->handle_type));
		json_object_object_add(o, "handle", json_object_new_string(hex));
	}
	(void)up;
	return o;
}

json_object *upper_save(struct daemon *d)
{
	struct upper *up = d->up;
	json_object *o = json_object_new_object(), *arr = json_object_new_array();
	pthread_mutex_lock(&up->lock);
	json_object_object_add(o, "next_ino", json_object_new_int64(up->next_ino));
	for (size_t i = 0; i < up->inos.size; i++)
		for (struct node *n = up->inos.tab[i]; n; n = n->next_ino)
			json_object_array_add(arr, node_save(up, n));
	for (fuse_ino_t v = 2; v < d->next_vino; v++) {
		struct node *n = index_node(up, v);
		if (n && n->ino == v)
			json_object_array_add(arr, node_save(up, n));
	}
	pthread_mutex_unlock(&up->lock);
	json_object_object_add(o, "nodes", arr);
	return o;
}

static int64_t get_i64(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

int upper_restore(struct daemon *d, json_object *saved, struct mosaic_error *err)
{
	struct upper *up = d->up;
	json_object *arr;
	if (!json_object_object_get_ex(saved, "nodes", &arr))
		return mosaic_errorf(err, -EINVAL, "the handover has no upper nodes");
	up->next_ino = get_i64(saved, "next_ino");
	if (up->next_ino < VIEW_INO_END)
		up->next_ino = VIEW_INO_END;
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *o = json_object_array_get_idx(arr, i), *h;
		struct node *n = xcalloc(1, sizeof(*n));
		n->fd = -1;
		n->ino = get_i64(o, "ino");
		n->dev = get_i64(o, "dev");
		n->st_ino = get_i64(o, "st_ino");
		n->type = get_i64(o, "type");
		n->lower = get_i64(o, "lower");
		n->origin = get_i64(o, "origin");
		n->where = get_i64(o, "where");
		n->nlookup = get_i64(o, "nlookup");
		json_object *dead;
		n->dead =
		    json_object_object_get_ex(o, "dead", &dead) && json_object_get_boolean(dead);
		if (json_object_object_get_ex(o, "handle", &h)) {
			const char *hex = json_object_get_string(h);
			size_t nb = strlen(hex) / 2;
			if (nb <= MAX_HANDLE_SZ) {
				n->fh = xmalloc(sizeof(*n->fh) + MAX_HANDLE_SZ);
				n->fh->handle_bytes = nb;
				n->fh->handle_type = get_i64(o, "handle_type");
				for (size_t k = 0; k < nb; k++)
					sscanf(hex + 2 * k, "%2hhx", &n->fh->f_handle[k]);
			}
		}
		if (is_index(up, n->ino))
			index_node_set(up, n->ino, n);
		else
			ino_insert(up, n);
		if (n->lower && n->lower != n->ino && !index_node(up, n->lower))
			index_node_set(up, n->lower, n); /* an upper directory merged by a switch */
		if (!n->dead)
			dev_insert(up, n);
		if (n->origin && n->where)
			where_insert(up, n);
	}
	return 0;
}

void *upper_dir_handle_new(void)
{
	return xcalloc(1, sizeof(struct dir_handle));
}
