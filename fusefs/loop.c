/* The session loop: a fixed pool of threads that read requests from /dev/fuse and answer them,
 * and that can be paused with no request half served. libfuse's own loop cannot: a thread it
 * cancels may have read a request it then never answers, and the process that sent it would
 * wait forever. Here a thread stops only between requests: a pause sets a flag and interrupts
 * the threads' reads with SIGUSR2 (which never consumes a request), and a thread that holds a
 * request answers it first. That is what lets 'mosaic restart' hand the session to a new
 * daemon (control.c), and SIGTERM end the mount, without losing a request. The first request,
 * FUSE_INIT, is kept, so that the new daemon's libfuse can be told the connection's terms. */
#include "fusefs/internal.h"

#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#define WORKERS 8

static int wake_fd = -1; /* the signal handlers' way to the main thread */

static void on_term(int sig)
{
	(void)sig;
	int e = errno;
	if (wake_fd >= 0 && write(wake_fd, "T", 1) < 0) {
	}
	errno = e;
}

static void on_interrupt(int sig)
{
	(void)sig; /* only there to make a blocked read return EINTR */
}

static void wake(struct daemon *d, char c)
{
	if (write(d->loop_wake[1], &c, 1) < 0) {
	}
}

static void keep_init(struct daemon *d, const struct fuse_buf *b)
{
	if (b->flags & FUSE_BUF_IS_FD || b->size < sizeof(struct fuse_in_header))
		return;
	const struct fuse_in_header *h = b->mem;
	if (h->opcode != FUSE_INIT)
		return;
	/* Not loop_lock: a pause holds it while it waits for this very thread to stop. */
	static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
	pthread_mutex_lock(&init_lock);
	if (!d->init_len) {
		d->init_req = xmalloc(b->size);
		memcpy(d->init_req, b->mem, b->size);
		__atomic_store_n(&d->init_len, b->size, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&init_lock);
}

static void *worker(void *arg)
{
	struct daemon *d = arg;
	struct fuse_buf buf = {0};
	while (!__atomic_load_n(&d->loop_stop, __ATOMIC_ACQUIRE)) {
		int r = fuse_session_receive_buf(d->se, &buf);
		if (r == -EINTR || r == -EAGAIN)
			continue;
		if (r <= 0) { /* 0: the mount is gone */
			wake(d, 'E');
			break;
		}
		if (!__atomic_load_n(&d->init_len, __ATOMIC_ACQUIRE))
			keep_init(d, &buf);
		fuse_session_process_buf(d->se, &buf);
	}
	free(buf.mem);
	__atomic_sub_fetch(&d->loop_running, 1, __ATOMIC_ACQ_REL);
	return NULL;
}

static void workers_start(struct daemon *d)
{
	__atomic_store_n(&d->loop_stop, false, __ATOMIC_RELEASE);
	d->loop_running = WORKERS;
	for (size_t i = 0; i < WORKERS; i++)
		pthread_create(&d->workers[i], NULL, worker, d);
	d->workers_up = true;
}

/* Returns once every thread has stopped: each answered the request it held. */
static void workers_stop(struct daemon *d)
{
	if (!d->workers_up)
		return;
	__atomic_store_n(&d->loop_stop, true, __ATOMIC_RELEASE);
	/* A thread may be about to block in read when the signal comes: send it again until
	 * every thread is out. */
	while (__atomic_load_n(&d->loop_running, __ATOMIC_ACQUIRE) > 0) {
		for (size_t i = 0; i < WORKERS; i++)
			pthread_kill(d->workers[i], SIGUSR2);
		struct timespec ts = {0, 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	for (size_t i = 0; i < WORKERS; i++)
		pthread_join(d->workers[i], NULL);
	d->workers_up = false;
}

void loop_pause(struct daemon *d)
{
	pthread_mutex_lock(&d->loop_lock);
	workers_stop(d);
	pthread_mutex_unlock(&d->loop_lock);
}

void loop_resume(struct daemon *d)
{
	pthread_mutex_lock(&d->loop_lock);
	if (!d->workers_up)
		workers_start(d);
	pthread_mutex_unlock(&d->loop_lock);
}

void loop_handed_over(struct daemon *d)
{
	wake(d, 'H');
}

int loop_run(struct daemon *d)
{
	if (pipe2(d->loop_wake, O_CLOEXEC) < 0)
		return -errno;
	wake_fd = d->loop_wake[1];
	struct sigaction term = {.sa_handler = on_term}, intr = {.sa_handler = on_interrupt},
	                 ign = {.sa_handler = SIG_IGN}, old[4];
	sigemptyset(&term.sa_mask);
	sigemptyset(&intr.sa_mask);
	sigaction(SIGTERM, &term, &old[0]);
	sigaction(SIGINT, &term, &old[1]);
	sigaction(SIGHUP, &term, &old[2]);
	sigaction(SIGUSR2, &intr, NULL); /* no SA_RESTART: a read returns EINTR */
	sigaction(SIGPIPE, &ign, &old[3]);
	pthread_mutex_lock(&d->loop_lock);
	workers_start(d);
	pthread_mutex_unlock(&d->loop_lock);
	int result = LOOP_ENDED;
	for (;;) {
		char c;
		ssize_t n = read(d->loop_wake[0], &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || c == 'T' || c == 'E')
			break;
		if (c == 'H') {
			result = LOOP_HANDED_OVER;
			break;
		}
	}
	loop_pause(d);
	sigaction(SIGTERM, &old[0], NULL);
	sigaction(SIGINT, &old[1], NULL);
	sigaction(SIGHUP, &old[2], NULL);
	sigaction(SIGPIPE, &old[3], NULL);
	wake_fd = -1;
	close(d->loop_wake[0]);
	close(d->loop_wake[1]);
	return result;
}

int loop_replay_init(struct daemon *d, const void *req, size_t len)
{
	if (len < sizeof(struct fuse_in_header) ||
	    ((const struct fuse_in_header *)req)->opcode != FUSE_INIT)
		return -EINVAL;
	/* libfuse answers it; the kernel has no such request any more and refuses the answer
	 * with ENOENT, which libfuse takes quietly. */
	struct fuse_buf b = {.size = len, .mem = xmalloc(len)};
	memcpy(b.mem, req, len);
	fuse_session_process_buf(d->se, &b);
	free(b.mem);
	return 0;
}
