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
struct node;
struct switch_plan;

/* A fragment image a served composition uses; shared by every generation that has it. */
struct frag {
	pthread_mutex_t lock; /* libsquashfuse's caches are per handle and not thread-safe */
	char *path;
	char digest[65];
	struct fragment_image *image; /* opened and verified on first use */
	int error;                    /* a first use that failed fails every later one */
	uint64_t refs;                /* the generations that use it; atomics */
	bool dev;                     /* path is a directory served live (dev.c) */
	bool fresh; /* new with the generation being switched to: verified before it serves */
};

/* One composition the daemon serves or served (live.c): its index and fragments, and the view
 * inode number of each of its index inodes. A generation stays while the kernel holds a view
 * inode of it (an open file, a cwd), after a switch away from it. */
struct gen {
	struct compose_index *idx;
	struct frag **frags; /* index order */
	size_t n_frags;
	uint32_t *to_view; /* [index ino] its view ino; NULL: the same number (the first one) */
	uint64_t refs;     /* view inodes on it, +1 while served; atomics */
	uint64_t total_bytes;
	char *index_path;
	bool scratch;      /* index_path is the daemon's own (dev.c), removed with it */
	json_object *info; /* what the switch request said of it (generation, label) */
};

/* A view inode: what a node id the kernel holds means. A node id is never given two meanings:
 * a path whose content changes gets a new one, as a rename over it would. */
struct vnode {
	struct gen *gen;    /* NULL: unused */
	uint32_t ino;       /* its index inode in gen */
	uint64_t nlookup;   /* the kernel's references; atomics */
	struct node *upper; /* --writable=fuse: its upper object, if it has one (upper.c) */
	uint64_t last_name; /* --writable=fuse: view dir << 32 | (position + 1) where last seen */
};
/* View inodes are numbered below this; the upper's own objects (--writable=fuse) above. */
#define VIEW_INO_END ((fuse_ino_t)1 << 32)
#define VCHUNK_BITS  16
#define VCHUNK_SIZE  (1u << VCHUNK_BITS)
#define VCHUNKS      (1u << 16)

struct daemon {
	struct gen *cur;           /* the generation served */
	struct compose_index *idx; /* cur->idx (the upper's code reads it) */
	pthread_rwlock_t live;     /* requests read, a switch applies under the write side */
	struct vnode **vchunks;    /* [VCHUNKS] of VCHUNK_SIZE view inodes */
	uint32_t next_vino;        /* the next view inode number to give */
	struct fuse_session *se;
	struct keyring *keyring;
	char *state_dir;
	const char *mountpoint, *lower, *upper, *work; /* absolute */
	char *fallback;                          /* why kernel overlayfs was refused, when it was */
	const char *fuse_options, *keyring_path; /* as mounted: what a restart needs again */
	/* handover.c: this daemon gave its session away; what it took over from old_pid */
	bool handed_over;
	pid_t old_pid;
	json_object *handover;
	int *handover_fds;
	size_t handover_nfds;
	uint64_t fragment_opens, reads, bytes_read, invalidations; /* atomics */
	pthread_mutex_t stats_lock;
	double timeout;   /* entry and attribute timeout: changes come with invalidations */
	struct upper *up; /* --writable=fuse: the daemon's own upper layer (upper.c); else NULL */
	enum fusefs_writable mode;
	struct handle_slot **hchunks; /* [HCHUNKS] of HCHUNK_SIZE: fi->fh - 1 */
	uint64_t last_handle, *free_handles;
	size_t n_free_handles, cap_free_handles;
	pthread_mutex_t handles_lock;
	json_object *history;  /* the switches done, oldest first (state.json) */
	json_object *previous; /* what was served before each switch not undone, newest last */
	pthread_mutex_t switch_lock;     /* one switch at a time */
	uint64_t switches;               /* switches done (atomics) */
	int control_fd, control_stop[2]; /* control.c's socket and the pipe that stops it */
	pthread_t control;
	bool control_started;
	/* loop.c: the threads serving the session */
	pthread_t workers[8];
	bool workers_up, loop_stop;
	uint32_t loop_running; /* atomics */
	int loop_wake[2];
	pthread_mutex_t loop_lock;
	void *init_req; /* the connection's FUSE_INIT request, as the kernel sent it */
	size_t init_len;
	int dev_fd, dev_stop[2]; /* dev.c's inotify and the pipe that stops its thread */
	pthread_t dev_watch;
	bool dev_started;
	uint64_t dev_builds, dev_switches; /* atomics */
	/* --writable=fuse: called by a switch with the view held still, before the view inodes
	 * change meaning, so the upper can follow (upper.c) */
	void (*on_switch)(struct daemon *d, const struct switch_plan *p);
};

/* An open regular file: an upper file or a live dev file (fd), or a file inside a fragment. */
struct open_file {
	int fd; /* the upper or dev file, or -1 */
	struct frag *frag;
	struct fragment_file *file;
	fuse_ino_t ino; /* the view inode it was opened as */
	int open_flags; /* as open(2) got them */
};

/* What a fi->fh value is: a slot of the daemon's handle table (view.c), so that a daemon
 * taking over the session can give every handle the kernel holds the same meaning. */
enum handle_kind { HANDLE_NONE, HANDLE_FILE, HANDLE_DIR };
struct handle_slot {
	void *p;
	enum handle_kind kind;
};
#define HCHUNK_SIZE 4096u
#define HCHUNKS     (1u << 20)

/* The files of fusefs/ stack one way: view.c at the bottom, the read-only handlers (ops.c) on
 * the view, the upper's handlers (upper.c) on both, the lifecycle (lifecycle.c) on top. Each
 * section below is what one file offers to those above it. */

/* ---- view.c: the read-only view's primitives and the state directory --------------------- */

/* The attributes of index inode in, reported as ino. */
void fusefs_index_stat(const struct compose_inode *in, fuse_ino_t ino, struct stat *st);
/* Opens the regular file in of generation g's index in its fragment (verifying the fragment on
 * its first use). Caller frees with fusefs_open_file_free. */
int fusefs_frag_open(struct daemon *d, const struct gen *g, const struct compose_inode *in,
                     struct open_file **out);
/* Whether path is a directory: a live dev fragment among a generation's images. */
bool dev_is_dir(const char *path);
/* Verifies f against the daemon's keyring (a good signature, and the very fragment the index
 * names) and opens its image. */
int fusefs_frag_check(struct daemon *d, struct frag *f, struct mosaic_error *err);
/* Reads from a fragment file under its fragment's lock; bytes read or -errno. */
ssize_t fusefs_frag_pread(struct open_file *of, void *buf, size_t size, off_t off);
/* Reads index file ino of g without an open handle: its fragment is found from the inode, and
 * opened and verified on its first use. Bytes read or -errno. */
ssize_t fusefs_index_read(struct daemon *d, const struct gen *g, uint32_t ino, void *buf,
                          size_t size, off_t off);
/* Closes the upper fd or the fragment file and frees of (NULL is fine). */
void fusefs_open_file_free(struct open_file *of);
/* Waits until fd is readable (true) or stop is (false): a watcher thread's loop. */
bool wait_readable(int fd, int stop);
/* Stops thread t, which polls stop[0], and closes that pipe. */
void thread_stop(pthread_t t, int stop[2]);
/* A new fi->fh for p; what a fi->fh is; and taking it out of the table (release). */
uint64_t handle_put(struct daemon *d, void *p, enum handle_kind kind);
void *handle_get(struct daemon *d, uint64_t fh);
void *handle_take(struct daemon *d, uint64_t fh);
void handles_free(struct daemon *d);
/* Writes o as <dir>/<name>, pretty-printed, atomically. */
int daemon_write_json(const char *dir, const char *name, json_object *o);
/* Rewrites <state_dir>/stats.json from the counters. */
void daemon_write_stats(struct daemon *d);
/* Rewrites <state_dir>/state.json: pid, mountpoint, mode, layers, the served generation's index,
 * fragments and what its switch said of it, and the history of switches. */
void daemon_write_state(struct daemon *d);

/* ---- live.c: generations, view inodes and switching ---------------------------------------- */

/* Serves the index at index_path with its images as the first generation: its view inodes are
 * its index inodes. */
int live_start(struct daemon *d, const char *index_path, char *const *images, size_t n,
               json_object *info, bool own_index, struct mosaic_error *err);
/* Lets go of every generation (the kernel holds nothing any more). */
void live_stop(struct daemon *d);
/* With d->live held for reading: the index inode that view inode v is, with its generation and
 * number there; NULL for a node id that means nothing. */
const struct compose_inode *view_get(struct daemon *d, fuse_ino_t v, struct gen **g, uint32_t *ino);
/* The view inode v (with d->live held), NULL for a number that means nothing. */
struct vnode *view_node(struct daemon *d, fuse_ino_t v);
/* The view inode of index inode ino of g. */
static inline fuse_ino_t view_ino(const struct gen *g, uint32_t ino)
{
	return g->to_view ? g->to_view[ino] : ino;
}
/* The kernel took one more reference to v (a lookup or a readdirplus entry), or let go of
 * count of them; with d->live held for reading. */
void view_ref(struct daemon *d, fuse_ino_t v);
void view_forget(struct daemon *d, fuse_ino_t v, uint64_t count);
/* Lets go of v when neither the kernel nor the upper holds it and its generation is no longer
 * served (with d->live held for reading). */
void view_release(struct daemon *d, fuse_ino_t v);

/* What a switch pairs (d->on_switch reads it): the generations, and for each old index inode
 * the new one that keeps its view inode (0: none). */
struct switch_plan {
	struct gen *old, *new;
	const uint32_t *claimed;
};

struct live_switch_result {
	uint64_t kept, added, removed, changed; /* view inodes kept; paths added, gone, replaced */
	uint64_t invalidations;                 /* sent to the kernel */
	uint64_t stranded; /* old view inodes the kernel still holds (open files, cwds) */
	double planned_ms, ms;
};
/* Switches the view to the index at index_path with its images: every fragment the served
 * generation does not have is verified and opened first (a failure changes nothing); the view
 * then changes at once, and the kernel is told exactly what changed before this returns.
 * info is kept with the generation (what status shows of it); own_index: index_path is the
 * daemon's own, removed when the generation goes. expect: when not 0, switch only if the
 * switch count is still expect - 1 (else -EAGAIN: the caller built on what is no longer
 * served). */
int live_switch(struct daemon *d, const char *index_path, char *const *images, size_t n,
                json_object *info, bool own_index, uint64_t expect, struct live_switch_result *res,
                struct mosaic_error *err);

/* ---- ops.c: the read-only view's handlers ------------------------------------------------ */

/* A request handler fn run with d->live held for reading: locked_fn. */
#define FUSEFS_LOCKED(fn, params, args)                                                            \
	static void locked_##fn params                                                             \
	{                                                                                          \
		struct daemon *d_ = fuse_req_userdata(req);                                        \
		pthread_rwlock_rdlock(&d_->live);                                                  \
		fn args;                                                                           \
		pthread_rwlock_unlock(&d_->live);                                                  \
	}

/* The read-only view's handlers, each holding d->live; and the same without taking it (for
 * the upper's handlers, which hold it already): getattr, readlink, read, release, getxattr,
 * listxattr. */
extern const struct fuse_lowlevel_ops fusefs_ops, fusefs_index_ops;
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
int upper_open(struct daemon *d, const char *upper, const char *work, int held_lock,
               struct mosaic_error *err);
/* For a handover: the work dir's lock fd; stopping the invalidation thread once it has sent
 * what is queued (upper_start starts it again); the node table as JSON (objects by file
 * handle), and restoring it after upper_open (held_lock: the lock fd that came with it); a
 * new, empty directory handle. */
int upper_lock_fd(struct daemon *d);
void upper_pause(struct daemon *d);
json_object *upper_save(struct daemon *d);
int upper_restore(struct daemon *d, json_object *saved, struct mosaic_error *err);
void *upper_dir_handle_new(void);
/* Starts the thread that sends the kernel invalidations for session se. */
void upper_start(struct daemon *d, struct fuse_session *se);
/* Stops that thread, flushes the upper (syncfs) and frees d->up. */
void upper_close(struct daemon *d);

/* ---- control.c: the control channel ------------------------------------------------------- */

/* Listens on <state_dir>/control for requests (a switch, a ping) from root or the mount's
 * owner, in a thread of its own, once the session (d->se) serves. */
int control_start(struct daemon *d, struct mosaic_error *err);
/* The same on the listening socket d->control_fd that a handover brought. */
int control_start_inherited(struct daemon *d, struct mosaic_error *err);
void control_stop(struct daemon *d);
/* Sends req to the daemon whose state directory is state_dir; its reply in *out when it says
 * ok, else the error it gave (-EPERM for a caller it does not serve). */
int fusefs_control(const char *state_dir, const char *mountpoint, json_object *req,
                   json_object **out, struct mosaic_error *err);

/* The view's generations and view inodes into out (and files beside the state), for a daemon
 * that takes over the session; live_restore is that daemon's live_start. */
int live_save(struct daemon *d, json_object *out, struct mosaic_error *err);
int live_restore(struct daemon *d, json_object *in, struct mosaic_error *err);

/* ---- dev.c: live dev directories ----------------------------------------------------------- */

/* Builds, in the state directory, the index of images as they are now (directories walked
 * live, the others described by the descriptor beside them); *index_path: caller frees. */
int dev_compose(struct daemon *d, char *const *images, size_t n, char **index_path,
                struct mosaic_error *err);
/* Watches the served dev directories (if any) and switches to a new index on every change. */
int dev_start(struct daemon *d, struct mosaic_error *err);
void dev_stop(struct daemon *d);

/* ---- loop.c: serving the session ------------------------------------------------------------ */

enum { LOOP_ENDED, LOOP_HANDED_OVER };
/* Serves d->se with a pool of threads until SIGTERM, SIGINT or SIGHUP, the end of the mount,
 * or a handover (loop_handed_over); LOOP_ENDED or LOOP_HANDED_OVER. */
int loop_run(struct daemon *d);
/* From another thread: stop taking requests; returns once none is being served (every one
 * read was answered). loop_resume takes them again. */
void loop_pause(struct daemon *d);
void loop_resume(struct daemon *d);
/* Ends loop_run (after loop_pause) with LOOP_HANDED_OVER: another daemon serves the session. */
void loop_handed_over(struct daemon *d);
/* A new daemon's session learns the connection's terms from the FUSE_INIT request the old one
 * kept (d->init_req), without the kernel: libfuse answers it, the kernel drops the answer. */
int loop_replay_init(struct daemon *d, const void *req, size_t len);

/* ---- handover.c: restarting without unmounting --------------------------------------------- */

/* The old daemon's side, on a "handover" request on sock (its control thread): pauses, sends the
 * session, and waits for "taken". true: the session is the new daemon's (this one ends without
 * unmounting); false: it serves on. */
bool handover_give(struct daemon *d, int sock);
/* The new daemon's side: asks the daemon listening on control for the session; fills d (the
 * mount, the generations and view inodes, the history) and *fuse_fd. sock_out: the connection,
 * which the caller closes (a close without "taken" gives the session back). */
int handover_take(struct daemon *d, const char *control, int *sock_out, int *fuse_fd,
                  struct mosaic_error *err);
/* The lock fd of the upper that came with it (-1: none). */
int handover_lock_fd(struct daemon *d);
/* Once the session and the upper are set up: the upper's nodes and the open handles, then
 * "taken" to the old daemon. */
int handover_finish(struct daemon *d, int sock, struct mosaic_error *err);
