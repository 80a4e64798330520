/* Internal to fusefs/: the daemon's state shared by the request handlers and the lifecycle, and
 * what each file of the module offers the files above it. */
#pragma once

#define FUSE_USE_VERSION 314

#include "compose/compose.h"
#include "fusefs/fusefs.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <sys/stat.h>

struct fragment_image;
struct fragment_file;
struct upper;

struct frag {
	pthread_mutex_t lock; /* libsquashfuse's caches are per handle and not thread-safe */
	char *path;
	struct fragment_image *image; /* opened and verified on first use */
	int error;                    /* a first use that failed fails every later one */
};

struct daemon {
	struct compose_index *idx;
	struct frag *frags;
	size_t n_frags;
	struct keyring *keyring;
	char *state_dir;
	uint64_t fragment_opens, reads, bytes_read; /* atomics */
	pthread_mutex_t stats_lock;
	uint64_t total_bytes; /* for statfs */
	double timeout;   /* entry and attribute timeout: the view never changes while mounted */
	struct upper *up; /* --writable=fuse: the daemon's own upper layer (upper.c); else NULL */
};

/* An open regular file: an upper file (fd) or a file inside a fragment. */
struct open_file {
	int fd; /* the upper file, or -1 */
	struct frag *frag;
	struct fragment_file *file;
};

/* The files of fusefs/ stack one way: view.c at the bottom, the read-only handlers (ops.c) on
 * the view, the upper's handlers (upper.c) on both, the lifecycle (lifecycle.c) on top. Each
 * section below is what one file offers to those above it. */

/* ---- view.c: the read-only view's primitives and the state directory --------------------- */

/* The attributes of index inode in, reported as ino. */
void fusefs_index_stat(const struct compose_inode *in, fuse_ino_t ino, struct stat *st);
/* Opens the regular file in of the index in its fragment (verifying the fragment on its first
 * use). Caller frees with fusefs_open_file_free. */
int fusefs_frag_open(struct daemon *d, const struct compose_inode *in, struct open_file **out);
/* Reads from a fragment file under its fragment's lock; bytes read or -errno. */
ssize_t fusefs_frag_pread(struct open_file *of, void *buf, size_t size, off_t off);
/* Reads index file ino without an open handle: its fragment is found from the inode, and opened
 * and verified on its first use. Bytes read or -errno. */
ssize_t fusefs_index_read(struct daemon *d, fuse_ino_t ino, void *buf, size_t size, off_t off);
/* Closes the upper fd or the fragment file and frees of (NULL is fine). */
void fusefs_open_file_free(struct open_file *of);
/* Writes o as <dir>/<name>, pretty-printed, atomically. */
int daemon_write_json(const char *dir, const char *name, json_object *o);
/* Rewrites <state_dir>/stats.json from the counters. */
void daemon_write_stats(struct daemon *d);

/* ---- ops.c: the read-only view's handlers ------------------------------------------------ */

extern const struct fuse_lowlevel_ops fusefs_ops;
/* Opens an index file with a handle (fuse mode, whose connection must keep sending opens: the
 * read-only view instead answers ENOSYS so the kernel stops sending them). */
void fusefs_index_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
/* What a layer above the view does with each entry that readdirplus hands the kernel: nodeid
 * gives the node id that index inode ino, at position pos of index directory dir, has there;
 * looked_up then counts the kernel's new reference to it. */
struct fusefs_readdir_hooks {
	fuse_ino_t (*nodeid)(struct daemon *d, fuse_ino_t ino, fuse_ino_t dir, uint32_t pos);
	void (*looked_up)(struct daemon *d, fuse_ino_t ino, fuse_ino_t dir, uint32_t pos);
};
/* readdir(plus) of an index directory. With hooks (--writable=fuse), every entry handed to the
 * kernel with readdirplus goes through them; NULL for the read-only view. */
void fusefs_index_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus,
                          const struct fusefs_readdir_hooks *hooks);

/* ---- upper.c: --writable=fuse, the read-only view merged with the upper ------------------- */

extern const struct fuse_lowlevel_ops fusefs_upper_ops;
/* Sets up d->up for serving: creates upper and work if missing (a new upper gets the index
 * root's owner and mode), checks they share a filesystem that takes whiteouts and trusted.*
 * xattrs, locks the work dir against a second daemon and empties <work>/work, where copy-ups
 * and new objects are prepared (what a killed daemon left there never showed and goes, as
 * kernel overlayfs empties it at mount). */
int upper_open(struct daemon *d, const char *upper, const char *work, struct mosaic_error *err);
/* Starts the thread that sends the kernel invalidations for session se. */
void upper_start(struct daemon *d, struct fuse_session *se);
/* Stops that thread, flushes the upper (syncfs) and frees d->up. */
void upper_close(struct daemon *d);
