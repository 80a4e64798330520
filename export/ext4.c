/* The view as an ext4 filesystem, written with libext2fs straight from the reader: no unpacked
 * tree, no mount, no root. The calls follow what mke2fs does to make a filesystem and what its
 * -d option (misc/create_inode.c) does to fill one, with every random or time-based value
 * (UUID, hash seed, mkfs and inode times) given by the caller so the bytes are reproducible. */
#include "export/internal.h"

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <search.h>
#include <string.h>
#include <sys/sysmacros.h>

#define INODE_SIZE 256u
/* Room for xattrs inside a 256-byte inode: after the 128-byte base, the 32 extra bytes and the
 * 4-byte in-inode header. */
#define INLINE_XATTR_ROOM (INODE_SIZE - 128 - 32 - 4)
/* Symlink targets shorter than this live in i_block ("fast" symlinks). */
#define FAST_SYMLINK_MAX 59
/* The longest extent a 4 KiB-block filesystem holds, and extents in the inode itself. */
#define EXTENT_MAX_BLOCKS 32768u
#define MIN_BLOCKS        4096u

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return (a + b - 1) / b;
}

/* ---- sizing ----------------------------------------------------------------------------------
 */

/* Bytes of the entry header ext4 stores for xattr name (the namespace prefix is an index) and a
 * value of len bytes. */
static uint64_t xattr_bytes(const char *name, size_t len)
{
	static const char *const prefixes[] = {"user.",
	                                       "trusted.",
	                                       "security.",
	                                       "system.posix_acl_access",
	                                       "system.posix_acl_default",
	                                       "system."};
	size_t n = strlen(name);
	for (size_t i = 0; i < ARRAY_SIZE(prefixes); i++) {
		size_t p = strlen(prefixes[i]);
		if (strncmp(name, prefixes[i], p) == 0) {
			n -= p;
			break;
		}
	}
	return 16 + ((n + 3) & ~3ull) + ((len + 3) & ~3ull);
}

void export_ext4_account(struct export_fs_usage *u, const struct export_entry *e, bool first_link)
{
	/* The parent's directory entry: 8 bytes and the name rounded to 4, counted here and
	 * turned into blocks by export_ext4_size. Directories hold their own "." and "..". */
	uint64_t dirent = 8 + ((strlen(e->name) + 3) & ~3ull);
	u->dir_bytes += e->depth > 0 ? dirent : 0;
	if (!first_link)
		return;
	u->inodes++;
	if (S_ISDIR(e->mode)) {
		u->dir_bytes += 24;
		u->dirs++;
	} else if (S_ISREG(e->mode) && e->size > 0) {
		uint64_t b = div_up(e->size, EXPORT_EXT4_BLOCK);
		u->blocks += b;
		/* More than the inode's four extents need an extent block (one per 340 extents);
		 * runs also break at block-group metadata, so count one extent per half group. */
		uint64_t extents = div_up(b, EXTENT_MAX_BLOCKS / 2) + 1;
		if (extents > 4)
			u->blocks += div_up(extents, 340) + 1;
	} else if (S_ISLNK(e->mode) && e->size > FAST_SYMLINK_MAX)
		u->blocks++;
	uint64_t xb = 0;
	for (size_t i = 0; i < e->n_xattrs; i++)
		xb += xattr_bytes(e->xattrs[i].name, e->xattrs[i].len);
	if (xb > INLINE_XATTR_ROOM)
		u->blocks += div_up(xb + 32, EXPORT_EXT4_BLOCK);
}

void export_ext4_size(const struct export_fs_usage *u, uint64_t free_bytes, uint64_t *blocks_out,
                      uint64_t *inodes_out)
{
	const uint64_t bs = EXPORT_EXT4_BLOCK, per_group = 8 * bs;
	/* Directory blocks: the entries' bytes over the room in a block (a 12-byte checksum tail
	 * each), with a block of slack per directory for how entries happen to pack, and the
	 * 16 KiB lost+found mke2fs makes. */
	uint64_t dir_blocks = div_up(u->dir_bytes, bs - 12) + u->dirs + 4;
	/* New files in the free space get inodes as mke2fs gives them: one per 16 KiB. */
	uint64_t inodes = u->inodes + u->inodes / 4 + free_bytes / 16384 + 64;
	uint64_t content = u->blocks + dir_blocks + div_up(free_bytes, bs);
	uint64_t blocks = content + content / 16 + 1024;
	for (int i = 0; i < 8; i++) {
		uint64_t groups = div_up(blocks, per_group);
		uint64_t desc_blocks = div_up(groups * 64, bs);
		/* Superblock backups: sparse_super puts them in groups 0, 1 and powers of 3, 5, 7;
		 * each carries the descriptors and the resize inode's reserved descriptors. */
		uint64_t backups = 1;
		for (uint64_t p3 = 1, p5 = 5, p7 = 7; p3 < groups || p5 < groups || p7 < groups;
		     p3 *= 3, p5 *= 5, p7 *= 7)
			backups += (p3 < groups) + (p5 < groups) + (p7 < groups);
		uint64_t meta = backups * (1 + desc_blocks + 1024) + groups * 2 +
		                div_up(inodes * INODE_SIZE, bs) + groups /* itable rounding */;
		int journal = ext2fs_default_journal_size(blocks);
		uint64_t need = content + meta + (journal > 0 ? (uint64_t)journal : 0) + 64;
		/* The root reserve (5%, mke2fs's default) on top, and 2% slack for allocation. */
		need = need + need / 19 + need / 50;
		/* 16 MiB at least: below 2048 blocks libext2fs makes no journal, and a journal
		 * needs 1024 blocks. */
		blocks = need < MIN_BLOCKS ? MIN_BLOCKS : need;
	}
	/* Whole MiBs: the partition after it stays aligned. */
	blocks = div_up(blocks, EXPORT_MIB / bs) * (EXPORT_MIB / bs);
	*blocks_out = blocks;
	*inodes_out = inodes;
}

/* ---- writing ---------------------------------------------------------------------------------
 */

struct link {
	uint64_t id;
	ext2_ino_t ino;
};

static int link_cmp(const void *a, const void *b)
{
	const struct link *x = a, *y = b;
	return (x->id > y->id) - (x->id < y->id);
}

struct ext4 {
	ext2_filsys fs;
	struct export_reader *r;
	const struct export_ext4_options *o;
	ext2_ino_t *dirs; /* the directory inode at each depth of the walk */
	size_t n_dirs;
	void *links; /* tsearch tree of struct link */
	ext2_file_t file;
	errcode_t write_error; /* of the last failed ext2fs_file_write */
	struct mosaic_error *err;
};

static int fs_error(struct ext4 *x, errcode_t code, const char *what, const char *path)
{
	int e = -EIO;
	if (code == EXT2_ET_BLOCK_ALLOC_FAIL || code == EXT2_ET_INODE_ALLOC_FAIL ||
	    code == EXT2_ET_DIR_NO_SPACE || code == ENOSPC || code == EXT2_ET_EA_NO_SPACE)
		e = -ENOSPC;
	else if (code > 0 && code < 4096)
		e = -(int)code;
	return mosaic_errorf(x->err, e, "ext4: %s /%s: %s", what, path, error_message(code));
}

static int file_type(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return EXT2_FT_REG_FILE;
	case S_IFDIR:
		return EXT2_FT_DIR;
	case S_IFLNK:
		return EXT2_FT_SYMLINK;
	case S_IFCHR:
		return EXT2_FT_CHRDEV;
	case S_IFBLK:
		return EXT2_FT_BLKDEV;
	case S_IFIFO:
		return EXT2_FT_FIFO;
	case S_IFSOCK:
		return EXT2_FT_SOCK;
	}
	return EXT2_FT_UNKNOWN;
}

/* ext2fs_link, growing the directory by a block when it is full (as mke2fs -d does). */
static errcode_t link_name(ext2_filsys fs, ext2_ino_t dir, const char *name, ext2_ino_t ino,
                           int type)
{
	errcode_t c = ext2fs_link(fs, dir, name, ino, type);
	if (c == EXT2_ET_DIR_NO_SPACE) {
		if ((c = ext2fs_expand_dir(fs, dir)))
			return c;
		c = ext2fs_link(fs, dir, name, ino, type);
	}
	return c;
}

/* A time in the 32-bit field and the two epoch bits of its _extra field (ext4's encoding up to
 * 2446); nanoseconds are always 0. */
static void set_time(int64_t t, __u32 *field, __u32 *extra)
{
	*field = (__u32)t;
	*extra = (__u32)(((uint64_t)(t - (int32_t)t) >> 32) & 3);
}

/* Owners, mode bits, times and the in-inode fields of an inode, read and written whole so the
 * extra part (times, in-inode xattrs) is kept. */
static errcode_t set_attrs(struct ext4 *x, ext2_ino_t ino, const struct export_entry *e)
{
	union {
		struct ext2_inode_large in;
		char buf[INODE_SIZE];
	} u;
	errcode_t c = ext2fs_read_inode_full(x->fs, ino, (struct ext2_inode *)&u.in, INODE_SIZE);
	if (c)
		return c;
	int64_t mtime = x->o->epoch >= 0 && e->mtime > x->o->epoch ? x->o->epoch : e->mtime;
	u.in.i_mode = (u.in.i_mode & S_IFMT) | (e->mode & 07777);
	u.in.i_uid = e->uid & 0xffff;
	u.in.i_gid = e->gid & 0xffff;
	ext2fs_set_i_uid_high(u.in, e->uid >> 16);
	ext2fs_set_i_gid_high(u.in, e->gid >> 16);
	u.in.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	/* atime and ctime as the mtime, as tar extraction leaves them; crtime the image's. */
	set_time(mtime, &u.in.i_mtime, &u.in.i_mtime_extra);
	set_time(mtime, &u.in.i_atime, &u.in.i_atime_extra);
	set_time(mtime, &u.in.i_ctime, &u.in.i_ctime_extra);
	set_time(x->o->now, &u.in.i_crtime, &u.in.i_crtime_extra);
	return ext2fs_write_inode_full(x->fs, ino, (struct ext2_inode *)&u.in, INODE_SIZE);
}

static errcode_t set_xattrs(struct ext4 *x, ext2_ino_t ino, const struct export_entry *e)
{
	if (e->n_xattrs == 0)
		return 0;
	struct ext2_xattr_handle *h;
	errcode_t c = ext2fs_xattrs_open(x->fs, ino, &h);
	if (c)
		return c;
	if (!(c = ext2fs_xattrs_read(h)))
		for (size_t i = 0; i < e->n_xattrs && !c; i++)
			c = ext2fs_xattr_set(h, e->xattrs[i].name, e->xattrs[i].value,
			                     e->xattrs[i].len);
	errcode_t c2 = ext2fs_xattrs_close(&h);
	return c ? c : c2;
}

/* A new inode of e's type linked into dir, written whole with its attributes. */
static errcode_t new_inode(struct ext4 *x, ext2_ino_t dir, const struct export_entry *e,
                           ext2_ino_t *out)
{
	ext2_ino_t ino;
	errcode_t c = ext2fs_new_inode(x->fs, dir, e->mode, NULL, &ino);
	if (c)
		return c;
	if ((c = link_name(x->fs, dir, e->name, ino, file_type(e->mode))))
		return c;
	ext2fs_inode_alloc_stats2(x->fs, ino, +1, 0);
	union {
		struct ext2_inode_large in;
		char buf[INODE_SIZE];
	} u;
	memset(&u, 0, sizeof(u));
	u.in.i_mode = e->mode & S_IFMT;
	u.in.i_links_count = 1;
	u.in.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	if (S_ISCHR(e->mode) || S_ISBLK(e->mode)) {
		/* The old 8:8 encoding when it fits, else the new one in i_block[1] (the kernel's
		 * ext4_inode encoding, as mke2fs -d writes it). */
		unsigned ma = major(e->rdev), mi = minor(e->rdev);
		if (ma < 256 && mi < 256)
			u.in.i_block[0] = ma * 256 + mi;
		else
			u.in.i_block[1] = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
	} else if (S_ISREG(e->mode)) {
		if ((c = ext2fs_inode_size_set(x->fs, (struct ext2_inode *)&u.in, e->size)))
			return c;
		u.in.i_flags |= EXT4_EXTENTS_FL;
		ext2_extent_handle_t eh;
		/* Writes an empty extent header into i_block. */
		if ((c = ext2fs_extent_open2(x->fs, ino, (struct ext2_inode *)&u.in, &eh)))
			return c;
		ext2fs_extent_free(eh);
	}
	if ((c = ext2fs_write_inode_full(x->fs, ino, (struct ext2_inode *)&u.in, INODE_SIZE)))
		return c;
	*out = ino;
	return 0;
}

static int content_sink(void *ctx, const void *buf, size_t len)
{
	struct ext4 *x = ctx;
	const char *p = buf;
	while (len > 0) {
		unsigned int chunk = len > (1u << 30) ? 1u << 30 : (unsigned int)len, written = 0;
		errcode_t c = ext2fs_file_write(x->file, p, chunk, &written);
		if (c || written == 0) {
			x->write_error = c ? c : EXT2_ET_SHORT_WRITE;
			return -EIO;
		}
		p += written;
		len -= written;
	}
	return 0;
}

static int add_entry(void *ctx, const struct export_entry *e)
{
	struct ext4 *x = ctx;
	errcode_t c;
	ext2_ino_t ino = 0, dir = e->depth > 0 ? x->dirs[e->depth - 1] : EXT2_ROOT_INO;
	if (e->depth == 0) {
		if ((c = set_attrs(x, EXT2_ROOT_INO, e)) || (c = set_xattrs(x, EXT2_ROOT_INO, e)))
			return fs_error(x, c, "writing", e->path);
		x->dirs[0] = EXT2_ROOT_INO;
		return 0;
	}
	if (e->link_id) {
		struct link key = {.id = e->link_id}, **found = tfind(&key, &x->links, link_cmp);
		if (found) {
			/* A later name of a file already written: one more link to its inode. */
			struct ext2_inode in;
			ino = (*found)->ino;
			if ((c = link_name(x->fs, dir, e->name, ino, file_type(e->mode))) ||
			    (c = ext2fs_read_inode(x->fs, ino, &in)))
				return fs_error(x, c, "linking", e->path);
			in.i_links_count++;
			if ((c = ext2fs_write_inode(x->fs, ino, &in)))
				return fs_error(x, c, "linking", e->path);
			return 0;
		}
	}
	if (S_ISDIR(e->mode)) {
		if (e->depth == 1 && strcmp(e->name, "lost+found") == 0)
			c = ext2fs_namei(x->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, "lost+found", &ino);
		else {
			c = ext2fs_mkdir(x->fs, dir, 0, e->name);
			if (c == EXT2_ET_DIR_NO_SPACE && !(c = ext2fs_expand_dir(x->fs, dir)))
				c = ext2fs_mkdir(x->fs, dir, 0, e->name);
			if (!c)
				c = ext2fs_namei(x->fs, EXT2_ROOT_INO, dir, e->name, &ino);
		}
		if (c)
			return fs_error(x, c, "making directory", e->path);
		if (e->depth >= x->n_dirs) {
			x->n_dirs = 2 * e->depth + 2;
			x->dirs = xrealloc(x->dirs, x->n_dirs * sizeof(*x->dirs));
		}
		x->dirs[e->depth] = ino;
	} else if (S_ISLNK(e->mode)) {
		if (strlen(e->link) >= EXPORT_EXT4_BLOCK)
			return mosaic_errorf(x->err, -ENAMETOOLONG,
			                     "ext4: symlink /%s: a target longer than %u bytes",
			                     e->path, EXPORT_EXT4_BLOCK - 1);
		c = ext2fs_symlink(x->fs, dir, 0, e->name, e->link);
		if (c == EXT2_ET_DIR_NO_SPACE && !(c = ext2fs_expand_dir(x->fs, dir)))
			c = ext2fs_symlink(x->fs, dir, 0, e->name, e->link);
		if (!c)
			c = ext2fs_namei(x->fs, EXT2_ROOT_INO, dir, e->name, &ino);
		if (c)
			return fs_error(x, c, "making symlink", e->path);
	} else if ((c = new_inode(x, dir, e, &ino)))
		return fs_error(x, c, "making", e->path);

	if ((c = set_attrs(x, ino, e)) || (c = set_xattrs(x, ino, e)))
		return fs_error(x, c, "writing", e->path);
	if (e->link_id) {
		struct link *l = xmalloc(sizeof(*l));
		*l = (struct link){.id = e->link_id, .ino = ino};
		if (!tsearch(l, &x->links, link_cmp))
			abort(); /* out of memory */
	}
	if (S_ISREG(e->mode) && e->size > 0) {
		if ((c = ext2fs_file_open(x->fs, ino, EXT2_FILE_WRITE, &x->file)))
			return fs_error(x, c, "opening", e->path);
		x->write_error = 0;
		int r = export_read_content(x->r, e, content_sink, x, x->err);
		c = ext2fs_file_close(x->file);
		x->file = NULL;
		if (x->write_error)
			return fs_error(x, x->write_error, "writing", e->path);
		if (r < 0)
			return r;
		if (c)
			return fs_error(x, c, "writing", e->path);
	}
	return 0;
}

/* ---- write combining -------------------------------------------------------------------------
 */

/* libext2fs writes a file's content a block at a time (zeros when a block is allocated, then
 * its data), and unix_io_manager's 8-block cache hands each block down as a pwrite of its own:
 * 34,000 system calls for debian-minimal's 136 MB. This io manager sits in front of
 * unix_io_manager and keeps the last few runs of consecutive blocks written, handing each run
 * down as one write when it is full or something else needs its blocks. What ends up in the
 * file is the same: a run always holds the newest copy of its blocks and reads are served from
 * it; a write or read that only partly overlaps a run, a byte write, a flush and an option
 * change first write the runs concerned down. */
#define RUN_BYTES (1u << 20)
#define N_RUNS    4

struct run {
	unsigned long long start, n; /* blocks; n 0: unused */
	unsigned long used;          /* when last written, to give up the least recent */
	char *buf;                   /* RUN_BYTES */
};

struct combine {
	io_channel inner;
	struct run runs[N_RUNS];
	unsigned long clock;
};

static struct struct_io_manager combine_manager;

static errcode_t run_write_down(struct combine *c, struct run *r)
{
	if (r->n == 0)
		return 0;
	errcode_t e = io_channel_write_blk64(c->inner, r->start, (int)r->n, r->buf);
	r->n = 0;
	return e;
}

/* Writes down every run that holds a block of [block, block + n) (all of them: n 0). */
static errcode_t runs_write_down(struct combine *c, unsigned long long block, unsigned long long n)
{
	errcode_t e = 0;
	for (int i = 0; i < N_RUNS; i++) {
		struct run *r = &c->runs[i];
		if (r->n && (n == 0 || (block < r->start + r->n && r->start < block + n))) {
			errcode_t e2 = run_write_down(c, r);
			e = e ? e : e2;
		}
	}
	return e;
}

/* Blocks a transfer touches: count blocks, or -count bytes. */
static unsigned long long span(io_channel ch, int count)
{
	return count >= 0 ? (unsigned long long)count
	                  : ((unsigned long long)-count + ch->block_size - 1) / ch->block_size;
}

static errcode_t combine_open(const char *name, int flags, io_channel *out)
{
	io_channel inner;
	errcode_t e = unix_io_manager->open(name, flags, &inner);
	if (e)
		return e;
	struct combine *c = xcalloc(1, sizeof(*c));
	c->inner = inner;
	for (int i = 0; i < N_RUNS; i++)
		c->runs[i].buf = xmalloc(RUN_BYTES);
	io_channel ch = xcalloc(1, sizeof(*ch));
	ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	ch->manager = &combine_manager;
	ch->name = xstrdup(name);
	ch->block_size = inner->block_size;
	ch->refcount = 1;
	ch->flags = inner->flags;
	ch->align = inner->align;
	ch->private_data = c;
	*out = ch;
	return 0;
}

static errcode_t combine_close(io_channel ch)
{
	if (--ch->refcount > 0)
		return 0;
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, 0, 0), e2 = io_channel_close(c->inner);
	for (int i = 0; i < N_RUNS; i++)
		free(c->runs[i].buf);
	free(c);
	free(ch->name);
	free(ch);
	return e ? e : e2;
}

static errcode_t combine_set_blksize(io_channel ch, int blksize)
{
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, 0, 0);
	if (!e && !(e = io_channel_set_blksize(c->inner, blksize)))
		ch->block_size = blksize;
	return e;
}

static errcode_t combine_read_blk64(io_channel ch, unsigned long long block, int count, void *data)
{
	struct combine *c = ch->private_data;
	unsigned long long n = span(ch, count);
	for (int i = 0; i < N_RUNS; i++) {
		struct run *r = &c->runs[i];
		if (r->n && block >= r->start && block + n <= r->start + r->n) {
			memcpy(data, r->buf + (block - r->start) * ch->block_size,
			       count >= 0 ? (size_t)count * ch->block_size : (size_t)-count);
			return 0;
		}
	}
	errcode_t e = runs_write_down(c, block, n);
	return e ? e : io_channel_read_blk64(c->inner, block, count, data);
}

static errcode_t combine_write_blk64(io_channel ch, unsigned long long block, int count,
                                     const void *data)
{
	struct combine *c = ch->private_data;
	unsigned long long n = span(ch, count), cap = RUN_BYTES / ch->block_size;
	if (count <= 0 || n > cap) {
		errcode_t e = runs_write_down(c, block, n);
		return e ? e : io_channel_write_blk64(c->inner, block, count, data);
	}
	/* Into a run that holds or ends right before it, else a new run in place of the least
	 * recent; other runs with any of its blocks are written down first. */
	struct run *to = NULL;
	for (int i = 0; i < N_RUNS && !to; i++) {
		struct run *r = &c->runs[i];
		if (r->n && block >= r->start && block <= r->start + r->n &&
		    block + n <= r->start + cap)
			to = r;
	}
	for (int i = 0; i < N_RUNS; i++) {
		struct run *r = &c->runs[i];
		if (r != to && r->n && block < r->start + r->n && r->start < block + n) {
			errcode_t e = run_write_down(c, r);
			if (e)
				return e;
		}
	}
	if (!to) {
		to = &c->runs[0];
		for (int i = 1; i < N_RUNS; i++)
			if (c->runs[i].used < to->used)
				to = &c->runs[i];
		errcode_t e = run_write_down(c, to);
		if (e)
			return e;
		to->start = block;
	}
	memcpy(to->buf + (block - to->start) * ch->block_size, data, n * ch->block_size);
	if (block + n > to->start + to->n)
		to->n = block + n - to->start;
	to->used = ++c->clock;
	return 0;
}

static errcode_t combine_read_blk(io_channel ch, unsigned long block, int count, void *data)
{
	return combine_read_blk64(ch, block, count, data);
}

static errcode_t combine_write_blk(io_channel ch, unsigned long block, int count, const void *data)
{
	return combine_write_blk64(ch, block, count, data);
}

static errcode_t combine_flush(io_channel ch)
{
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, 0, 0);
	return e ? e : io_channel_flush(c->inner);
}

static errcode_t combine_write_byte(io_channel ch, unsigned long offset, int count,
                                    const void *data)
{
	struct combine *c = ch->private_data;
	unsigned long long first = offset / ch->block_size;
	unsigned long long last =
	    (offset + (unsigned long)count + ch->block_size - 1) / ch->block_size;
	errcode_t e = runs_write_down(c, first, last - first);
	return e ? e : io_channel_write_byte(c->inner, offset, count, data);
}

static errcode_t combine_set_option(io_channel ch, const char *option, const char *arg)
{
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, 0, 0);
	if (e)
		return e;
	if (!c->inner->manager->set_option)
		return EXT2_ET_INVALID_ARGUMENT;
	return c->inner->manager->set_option(c->inner, option, arg);
}

static errcode_t combine_get_stats(io_channel ch, io_stats *stats)
{
	struct combine *c = ch->private_data;
	if (!c->inner->manager->get_stats)
		return EXT2_ET_UNIMPLEMENTED;
	return c->inner->manager->get_stats(c->inner, stats);
}

static errcode_t combine_discard(io_channel ch, unsigned long long block, unsigned long long count)
{
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, block, count);
	return e ? e : io_channel_discard(c->inner, block, count);
}

static errcode_t combine_zeroout(io_channel ch, unsigned long long block, unsigned long long count)
{
	struct combine *c = ch->private_data;
	errcode_t e = runs_write_down(c, block, count);
	return e ? e : io_channel_zeroout(c->inner, block, count);
}

static struct struct_io_manager combine_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "mosaic write-combining I/O manager",
    .open = combine_open,
    .close = combine_close,
    .set_blksize = combine_set_blksize,
    .read_blk = combine_read_blk,
    .write_blk = combine_write_blk,
    .flush = combine_flush,
    .write_byte = combine_write_byte,
    .set_option = combine_set_option,
    .get_stats = combine_get_stats,
    .read_blk64 = combine_read_blk64,
    .write_blk64 = combine_write_blk64,
    .discard = combine_discard,
    .zeroout = combine_zeroout,
};

/* The empty filesystem as mke2fs makes it for ext4 with Debian's mke2fs.conf: 4 KiB blocks,
 * 256-byte inodes, has_journal, ext_attr, resize_inode, dir_index, filetype, extent, 64bit,
 * flex_bg (16 groups), sparse_super, large_file, huge_file, dir_nlink, extra_isize,
 * metadata_csum; acl and user_xattr default mount options; no periodic fsck. */
static errcode_t make_fs(const struct export_ext4_options *o, ext2_filsys *out)
{
	struct ext2_super_block p = {0};
	ext2fs_blocks_count_set(&p, o->blocks);
	ext2fs_r_blocks_count_set(&p, o->blocks / 20);
	p.s_log_block_size = 2; /* 1024 << 2 */
	p.s_log_cluster_size = 2;
	p.s_rev_level = EXT2_DYNAMIC_REV;
	p.s_inode_size = INODE_SIZE;
	p.s_inodes_count = o->inodes > UINT32_MAX ? UINT32_MAX : o->inodes;
	p.s_desc_size = EXT2_MIN_DESC_SIZE_64BIT;
	p.s_log_groups_per_flex = 4;
	p.s_max_mnt_count = (__u16)-1;
	p.s_default_mount_opts = EXT2_DEFM_ACL | EXT2_DEFM_XATTR_USER;
	ext2fs_set_feature_xattr(&p);
	ext2fs_set_feature_resize_inode(&p);
	ext2fs_set_feature_dir_index(&p);
	ext2fs_set_feature_filetype(&p);
	ext2fs_set_feature_extents(&p);
	ext2fs_set_feature_64bit(&p);
	ext2fs_set_feature_flex_bg(&p);
	ext2fs_set_feature_sparse_super(&p);
	ext2fs_set_feature_large_file(&p);
	ext2fs_set_feature_huge_file(&p);
	ext2fs_set_feature_dir_nlink(&p);
	ext2fs_set_feature_extra_isize(&p);
	ext2fs_set_feature_metadata_csum(&p);

	ext2_filsys fs;
	errcode_t c = ext2fs_initialize(o->path, EXT2_FLAG_64BITS, &p, &combine_manager, &fs);
	if (c)
		return c;
	/* Everything ext2fs would take from the clock or the random source, fixed. */
	fs->now = o->now;
	fs->super->s_mkfs_time = fs->super->s_lastcheck = (__u32)o->now;
	fs->super->s_checkinterval = 0;
	memcpy(fs->super->s_uuid, o->uuid, 16);
	memcpy(fs->super->s_hash_seed, o->hash_seed, 16);
	fs->super->s_def_hash_version = EXT2_HASH_HALF_MD4;
	fs->super->s_checksum_type = EXT2_CRC32C_CHKSUM;
	strncpy((char *)fs->super->s_volume_name, o->label ? o->label : "",
	        sizeof(fs->super->s_volume_name));
	ext2fs_init_csum_seed(fs);
	_cleanup_free_ char *opt = xasprintf("offset=%ju", (uintmax_t)o->offset);
	if ((c = io_channel_set_options(fs->io, opt)) || (c = ext2fs_allocate_tables(fs)))
		goto fail;
	/* The file is fresh zeros, so the inode tables already are what mke2fs would write:
	 * mark them so (the kernel then does not zero them again). */
	for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
		ext2fs_bg_flags_set(fs, g, EXT2_BG_INODE_ZEROED);
		ext2fs_group_desc_csum_set(fs, g);
	}
	/* Reserved inodes carry checksums with metadata_csum, as mke2fs writes them. */
	char zero[INODE_SIZE] = {0};
	for (ext2_ino_t ino = 1; ino < EXT2_FIRST_INODE(fs->super); ino++)
		if ((c = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)zero, INODE_SIZE)))
			goto fail;
	if ((c = ext2fs_mkdir(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, 0)))
		goto fail;
	/* lost+found as mke2fs makes it: 16 KiB, so e2fsck can reconnect files without
	 * allocating. */
	ext2_ino_t lf;
	if ((c = ext2fs_mkdir(fs, EXT2_ROOT_INO, 0, "lost+found")) ||
	    (c = ext2fs_namei(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, "lost+found", &lf)))
		goto fail;
	for (;;) {
		struct ext2_inode in;
		if ((c = ext2fs_read_inode(fs, lf, &in)))
			goto fail;
		if (EXT2_I_SIZE(&in) >= 16384)
			break;
		if ((c = ext2fs_expand_dir(fs, lf)))
			goto fail;
	}
	for (ext2_ino_t ino = EXT2_ROOT_INO + 1; ino < EXT2_FIRST_INODE(fs->super); ino++)
		ext2fs_inode_alloc_stats2(fs, ino, +1, 0);
	ext2fs_mark_ib_dirty(fs);
	ext2fs_mark_inode_bitmap2(fs->inode_map, EXT2_BAD_INO);
	ext2fs_inode_alloc_stats2(fs, EXT2_BAD_INO, +1, 0);
	if ((c = ext2fs_update_bb_inode(fs, NULL)) || (c = ext2fs_create_resize_inode(fs)))
		goto fail;
	struct ext2fs_journal_params jp;
	if ((c = ext2fs_get_journal_params(&jp, fs)) ||
	    (c = ext2fs_add_journal_inode3(fs, &jp, ~0ULL,
	                                   EXT2_MKJOURNAL_LAZYINIT | EXT2_MKJOURNAL_NO_MNT_CHECK)))
		goto fail;
	*out = fs;
	return 0;
fail:
	ext2fs_free(fs);
	return c;
}

/* Starts writing the range back to disk without waiting for it: the fsync before the rename
 * then finds little left to do. Only a hint; failures do not matter. */
static void start_writeback(const char *path, uint64_t offset, uint64_t len)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0)
		sync_file_range(fd, (off64_t)offset, (off64_t)len, SYNC_FILE_RANGE_WRITE);
}

static void link_free(void *p)
{
	free(p);
}

int export_ext4_write(struct export_reader *r, const struct export_ext4_options *o,
                      struct mosaic_error *err)
{
	initialize_ext2_error_table();
	struct ext4 x = {.r = r, .o = o, .err = err, .n_dirs = 64};
	errcode_t c = make_fs(o, &x.fs);
	if (c) {
		int e = c == EXT2_ET_TOOSMALL ? -ENOSPC : -EIO;
		return mosaic_errorf(err, e,
		                     "ext4: making the filesystem (%ju blocks, %ju inodes): %s",
		                     (uintmax_t)o->blocks, (uintmax_t)o->inodes, error_message(c));
	}
	x.dirs = xcalloc(x.n_dirs, sizeof(*x.dirs));
	int e = export_walk(r, add_entry, &x, err);
	if (e == 0) {
		/* No fsync here: the image is synced once, whole, before it is renamed into place
		 * (and a disk to convert never needs it). Writeback of what was written starts
		 * now, so the disk works while the image is hashed. */
		c = ext2fs_close2(x.fs, EXT2_FLAG_FLUSH_NO_SYNC);
		if (c) {
			ext2fs_free(x.fs); /* ext2fs_close2 frees it only when it succeeds */
			e = mosaic_errorf(err, -EIO, "ext4: writing the filesystem: %s",
			                  error_message(c));
		} else
			start_writeback(o->path, o->offset, o->blocks * EXPORT_EXT4_BLOCK);
	} else
		ext2fs_free(x.fs);
	tdestroy(x.links, link_free);
	free(x.dirs);
	return e;
}
