/* Internal to fusefs/: the daemon's state shared by the request handlers and the lifecycle. */
#pragma once

#define FUSE_USE_VERSION 314

#include "compose/compose.h"
#include "fusefs/fusefs.h"

#include <fuse_lowlevel.h>
#include <pthread.h>

struct fragment_image;

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
	double timeout; /* entry and attribute timeout: the view never changes while mounted */
};

extern const struct fuse_lowlevel_ops fusefs_ops;

/* Rewrites <state_dir>/stats.json from the counters. */
void daemon_write_stats(struct daemon *d);
