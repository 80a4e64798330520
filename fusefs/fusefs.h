/* fusefs/: the FUSE daemon that serves a composition index as a filesystem: metadata from the
 * index, file data read lazily from fragments, an overlayfs-format upper layer, and the
 * mount/unmount lifecycle. */
#pragma once

#include "common/common.h"

#include <json-c/json.h>

struct keyring;

enum fusefs_writable {
	FUSEFS_READ_ONLY,
	FUSEFS_WRITABLE_AUTO,    /* overlay where the kernel allows it, else fuse */
	FUSEFS_WRITABLE_OVERLAY, /* kernel overlayfs with the upper over the read-only view */
	FUSEFS_WRITABLE_FUSE,    /* the daemon copies up into the upper itself */
};

struct fusefs_options {
	const char *index_path;
	char *const *images; /* image path of each index fragment, in index order */
	size_t n_images;
	struct keyring *keyring;  /* verifies a fragment on its first use */
	const char *keyring_path; /* where it came from (a restarted daemon opens it again) */
	const char *mountpoint;
	const char *upper, *work; /* work: overlayfs's work dir (default: beside the upper) */
	enum fusefs_writable writable;
	bool foreground;
	const char *fuse_options; /* extra -o options, comma separated; may be NULL */
	json_object *info;        /* what the mount serves, for its state (may be NULL) */
	/* Directories served live on top, in order (dev fragments): a change in one shows in
	 * the mount at once. An image that is a directory is served live too. */
	char *const *dev_dirs;
	size_t n_dev;
};

const char *fusefs_writable_name(enum fusefs_writable w);

/* Mounts the view and serves it. In the background (unless foreground) it returns once the
 * mount is usable, with *picked the writable mode it chose; the daemon serves until unmounted
 * or sent SIGTERM. In the foreground it returns when the mount ends. */
int fusefs_mount(const struct fusefs_options *o, enum fusefs_writable *picked,
                 struct mosaic_error *err);
/* Takes down every layer mosaic mounted at mountpoint and waits for the daemon to exit. */
int fusefs_umount(const char *mountpoint, bool lazy, struct mosaic_error *err);
/* The daemon's state and statistics (pid, mode, fragments, fragment opens). Caller puts. */
int fusefs_status(const char *mountpoint, json_object **out, struct mosaic_error *err);

struct fusefs_switch_result {
	uint64_t kept, added, removed, changed; /* view inodes kept; paths added, gone, replaced */
	uint64_t invalidations;                 /* sent to the kernel */
	uint64_t stranded; /* old inodes still held (open files, working directories) */
	double ms;         /* in the daemon, from the request to the last invalidation */
};
/* Switches the running mount at mountpoint to the index at index_path with its images (index
 * order). The daemon verifies every fragment it does not serve yet before anything changes;
 * once this returns, every path of the mount shows the new composition, and processes keep what
 * they hold open. info (may be NULL) is kept as the generation's description (mosaic status),
 * reason in the mount's history of switches. The daemon keeps what it served before as
 * "previous" in its state (newest last); rollback says this switch goes back to the newest of
 * them, which it then forgets. */
int fusefs_switch(const char *mountpoint, const char *index_path, char *const *images, size_t n,
                  json_object *info, const char *reason, bool rollback,
                  struct fusefs_switch_result *res, struct mosaic_error *err);
/* Switches the mount back to the newest composition it served before (the daemon keeps up to
 * 16), which it then forgets; -EINVAL when there is none. */
int fusefs_rollback(const char *mountpoint, const char *reason, struct fusefs_switch_result *res,
                    struct mosaic_error *err);

struct fusefs_restart_result {
	pid_t old_pid, pid; /* the daemon before and after */
	bool remounted;     /* the old one was gone: mounted again from its state */
};
/* Starts this binary as the mount's new daemon and hands it the running daemon's FUSE session
 * (the view, its generations and view inodes, the upper and the open files come along); the
 * processes on the mount see a pause, never an error. When the daemon is gone (killed), the
 * mount is taken down and mounted again with what it served last. */
int fusefs_restart(const char *mountpoint, struct fusefs_restart_result *res,
                   struct mosaic_error *err);
