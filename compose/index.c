/* Reading a composition index: map it, check everything once, then answer lookups from the
 * mapping with no allocation (the FUSE daemon calls these on every request). */
#include "compose/index-format.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

struct compose_index {
	const uint8_t *base;
	size_t size;
	bool mapped;
	const struct index_header *h;
	const struct index_fragment *fragments;
	const struct compose_inode *inodes;
	const struct compose_dirent *dirents;
	const struct compose_xattr *xattrs;
	const char *strings;
};

static bool range_ok(uint64_t off, uint64_t count, uint64_t elem, uint64_t size)
{
	if (elem && count > UINT64_MAX / elem)
		return false;
	uint64_t len = count * elem;
	return off <= size && len <= size - off;
}

static bool str_ok(const struct compose_index *x, uint32_t off, uint32_t len)
{
	return (uint64_t)off + len <= x->h->strings_size;
}

static int validate(struct compose_index *x, struct mosaic_error *err)
{
	const struct index_header *h = x->h;
	uint64_t n = x->size;
#define BAD(what) mosaic_errorf(err, -EBADMSG, "corrupt composition index: %s", what)
	if (!range_ok(h->fragments_off, h->n_fragments, sizeof(struct index_fragment), n) ||
	    !range_ok(h->inodes_off, h->n_inodes, sizeof(struct compose_inode), n) ||
	    !range_ok(h->dirents_off, h->n_dirents, sizeof(struct compose_dirent), n) ||
	    !range_ok(h->xattrs_off, h->n_xattrs, sizeof(struct compose_xattr), n) ||
	    !range_ok(h->strings_off, h->strings_size, 1, n))
		return BAD("a table lies outside the file");
	if (h->fragments_off % 8 || h->inodes_off % 8 || h->dirents_off % 8 || h->xattrs_off % 8)
		return BAD("a table is misaligned");
	if (h->n_inodes < 1 || h->n_dirents > UINT32_MAX || h->n_xattrs > UINT32_MAX ||
	    h->strings_size > UINT32_MAX)
		return BAD("table sizes out of range");
	x->fragments = (const void *)(x->base + h->fragments_off);
	x->inodes = (const void *)(x->base + h->inodes_off);
	x->dirents = (const void *)(x->base + h->dirents_off);
	x->xattrs = (const void *)(x->base + h->xattrs_off);
	x->strings = (const char *)(x->base + h->strings_off);
	if (!S_ISDIR(x->inodes[0].mode))
		return BAD("the root is not a directory");
	for (uint32_t i = 0; i < h->n_inodes; i++) {
		const struct compose_inode *in = &x->inodes[i];
		if (in->fragment != COMPOSE_NO_FRAGMENT && in->fragment >= h->n_fragments)
			return BAD("an inode names a fragment that is not in the table");
		if ((uint64_t)in->xattr_first + in->xattr_count > h->n_xattrs)
			return BAD("an inode's xattrs lie outside the xattr table");
		if (S_ISDIR(in->mode)) {
			if ((uint64_t)in->data_off + in->data_len > h->n_dirents)
				return BAD("a directory's entries lie outside the table");
			if (in->parent < 1 || in->parent > h->n_inodes)
				return BAD("a directory's parent is out of range");
		} else if (S_ISLNK(in->mode) || S_ISREG(in->mode)) {
			if (in->data_len && !str_ok(x, in->data_off, in->data_len))
				return BAD("a symlink target or a dev file's path lies outside the "
				           "string table");
		}
	}
	for (uint64_t i = 0; i < h->n_dirents; i++) {
		const struct compose_dirent *d = &x->dirents[i];
		if (d->ino < 1 || d->ino > h->n_inodes || d->name_len == 0 ||
		    !str_ok(x, d->name_off, d->name_len))
			return BAD("a directory entry is out of range");
		if (memchr(x->strings + d->name_off, '/', d->name_len) ||
		    memchr(x->strings + d->name_off, '\0', d->name_len))
			return BAD("a directory entry has an invalid name");
	}
	for (uint64_t i = 0; i < h->n_xattrs; i++) {
		const struct compose_xattr *a = &x->xattrs[i];
		if (!str_ok(x, a->name_off, a->name_len) || !str_ok(x, a->value_off, a->value_len))
			return BAD("an xattr lies outside the string table");
	}
#undef BAD
	return 0;
}

static int index_init(struct compose_index *x, struct mosaic_error *err)
{
	if (x->size < sizeof(struct index_header))
		return mosaic_errorf(err, -EBADMSG, "not a composition index (too short)");
	x->h = (const void *)x->base;
	if (memcmp(x->h->magic, INDEX_MAGIC, 8) != 0)
		return mosaic_errorf(err, -EBADMSG, "not a composition index (bad magic)");
	if (x->h->version != COMPOSE_INDEX_VERSION)
		return mosaic_errorf(err, -EPROTONOSUPPORT,
		                     "composition index version %u is not supported (this mosaic "
		                     "reads version %d); rebuild it with 'mosaic compose'",
		                     x->h->version, COMPOSE_INDEX_VERSION);
	if (x->h->header_size != sizeof(struct index_header) || x->h->file_size != x->size)
		return mosaic_errorf(err, -EBADMSG,
		                     "corrupt composition index: size %zu, header says %ju",
		                     x->size, (uintmax_t)x->h->file_size);
	char want[SHA256_HEX_LEN + 1], got[SHA256_HEX_LEN + 1];
	for (int i = 0; i < SHA256_LEN; i++)
		snprintf(want + 2 * i, 3, "%02x", x->h->checksum[i]);
	sha256_buffer(x->base + x->h->header_size, x->size - x->h->header_size, got);
	if (strcmp(want, got) != 0)
		return mosaic_errorf(err, -EBADMSG, "corrupt composition index: checksum mismatch");
	return validate(x, err);
}

int compose_index_open_buffer(const void *data, size_t size, struct compose_index **out,
                              struct mosaic_error *err)
{
	struct compose_index *x = xcalloc(1, sizeof(*x));
	x->base = data;
	x->size = size;
	int r = index_init(x, err);
	if (r < 0) {
		free(x);
		return r;
	}
	*out = x;
	return 0;
}

int compose_index_open(const char *path, struct compose_index **out, struct mosaic_error *err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	if (st.st_size < (off_t)sizeof(struct index_header))
		return mosaic_errorf(err, -EBADMSG, "%s: not a composition index (too short)",
		                     path);
	void *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return mosaic_errorf(err, -errno, "%s: mmap: %m", path);
	struct compose_index *x = xcalloc(1, sizeof(*x));
	x->base = m;
	x->size = st.st_size;
	x->mapped = true;
	int r = index_init(x, err);
	if (r < 0) {
		mosaic_error_prefix(err, "%s", path);
		compose_index_close(x);
		return r;
	}
	*out = x;
	return 0;
}

void compose_index_close(struct compose_index *x)
{
	if (!x)
		return;
	if (x->mapped)
		munmap((void *)x->base, x->size);
	free(x);
}

uint32_t compose_index_fragments(const struct compose_index *x)
{
	return x->h->n_fragments;
}

void compose_index_fragment_digest(const struct compose_index *x, uint32_t i, char buf[65])
{
	for (int k = 0; k < SHA256_LEN; k++)
		snprintf(buf + 2 * k, 3, "%02x", x->fragments[i].digest[k]);
}

uint32_t compose_index_inodes(const struct compose_index *x)
{
	return x->h->n_inodes;
}

const struct compose_inode *compose_index_inode(const struct compose_index *x, uint64_t ino)
{
	if (ino < 1 || ino > x->h->n_inodes)
		return NULL;
	return &x->inodes[ino - 1];
}

const struct compose_dirent *compose_index_dirents(const struct compose_index *x, uint64_t dir,
                                                   uint32_t *count)
{
	const struct compose_inode *in = compose_index_inode(x, dir);
	if (!in || !S_ISDIR(in->mode)) {
		*count = 0;
		return NULL;
	}
	*count = in->data_len;
	return x->dirents + in->data_off;
}

int compose_name_cmp(const char *a, size_t al, const char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	return c ? c : (al > bl) - (al < bl);
}

int64_t compose_index_find(const struct compose_index *x, uint64_t dir, const char *name,
                           size_t len)
{
	uint32_t n;
	const struct compose_dirent *d = compose_index_dirents(x, dir, &n);
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = compose_name_cmp(name, len, x->strings + d[mid].name_off, d[mid].name_len);
		if (c == 0)
			return mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -1;
}

uint32_t compose_index_lookup(const struct compose_index *x, uint64_t dir, const char *name,
                              size_t len)
{
	int64_t pos = compose_index_find(x, dir, name, len);
	if (pos < 0)
		return 0;
	uint32_t n;
	return compose_index_dirents(x, dir, &n)[pos].ino;
}

const struct compose_xattr *compose_index_xattrs(const struct compose_index *x, uint64_t ino,
                                                 uint32_t *count)
{
	const struct compose_inode *in = compose_index_inode(x, ino);
	*count = in ? in->xattr_count : 0;
	return in ? x->xattrs + in->xattr_first : NULL;
}

const char *compose_index_string(const struct compose_index *x, uint32_t off)
{
	return x->strings + off;
}

uint32_t compose_index_resolve(const struct compose_index *x, const char *path)
{
	uint32_t ino = COMPOSE_ROOT_INO;
	const char *p = path;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		const char *end = strchrnul(p, '/');
		ino = compose_index_lookup(x, ino, p, end - p);
		if (!ino)
			return 0;
		p = end;
	}
	return ino;
}
