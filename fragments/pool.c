/* fragment_create_many: many fragments made by one pool of threads, the largest source first so
 * that no big package is left to finish alone at the end. fragment_create is safe on threads:
 * every library handle it uses is its own (libsquashfs writer, libarchive reader, rpmts and
 * rpmKeyring, gpgme context), and the process-wide set-ups (librpm, gpgme, libgcrypt) run once
 * under pthread_once. */
#include "fragments/fragment.h"

#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

struct pool {
	struct store *s;
	struct fragment_job *jobs;
	size_t *order; /* job indices, largest source first */
	size_t n, next, done;
	void (*progress)(size_t done, size_t n, const struct fragment_job *job, void *data);
	void *data;
	pthread_mutex_t lock;
};

struct sized {
	off_t size; /* a regular file's size; 0 for directories and what cannot be read */
	size_t index;
};

static int larger_first(const void *a, const void *b)
{
	const struct sized *x = a, *y = b;
	if (x->size != y->size)
		return x->size < y->size ? 1 : -1;
	return x->index < y->index ? -1 : x->index > y->index;
}

static void *worker(void *arg)
{
	struct pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->lock);
		size_t i = p->next++;
		pthread_mutex_unlock(&p->lock);
		if (i >= p->n)
			return NULL;
		struct fragment_job *j = &p->jobs[p->order[i]];
		j->r = fragment_create(p->s, j->src, &j->o, &j->info, &j->err);
		pthread_mutex_lock(&p->lock);
		p->done++;
		if (p->progress)
			p->progress(p->done, p->n, j, p->data);
		pthread_mutex_unlock(&p->lock);
	}
}

int fragment_create_many(struct store *s, struct fragment_job *jobs, size_t n, unsigned n_workers,
                         void (*progress)(size_t done, size_t n, const struct fragment_job *job,
                                          void *data),
                         void *data)
{
	_cleanup_free_ struct sized *sizes = xcalloc(n ? n : 1, sizeof(*sizes));
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		jobs[i].info = (struct fragment_info){0};
		jobs[i].err = (struct mosaic_error){0};
		jobs[i].r = 0;
		sizes[i].index = i;
		sizes[i].size = stat(jobs[i].src, &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : 0;
	}
	qsort_safe(sizes, n, sizeof(*sizes), larger_first);
	_cleanup_free_ size_t *order = xcalloc(n ? n : 1, sizeof(*order));
	for (size_t i = 0; i < n; i++)
		order[i] = sizes[i].index;

	struct pool p = {
	    .s = s, .jobs = jobs, .order = order, .n = n, .progress = progress, .data = data};
	pthread_mutex_init(&p.lock, NULL);
	size_t want = n_workers ? n_workers : 1;
	if (want > n)
		want = n;
	_cleanup_free_ pthread_t *th = xcalloc(want ? want : 1, sizeof(*th));
	size_t started = 0;
	while (started < want && pthread_create(&th[started], NULL, worker, &p) == 0)
		started++;
	if (started == 0)
		worker(&p); /* no thread to be had: every job in this one */
	for (size_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&p.lock);

	for (size_t i = 0; i < n; i++)
		if (jobs[i].r < 0)
			return jobs[i].r;
	return 0;
}
