/* Downloads for providers/: many files at once over the libcurl multi interface, each written to
 * dest.part while it is hashed, checked, then renamed; resumed, retried and cached. */
#include "providers/providers.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define DEFAULT_PARALLEL        6
#define DEFAULT_RETRIES         4
#define DEFAULT_CONNECT_TIMEOUT 30
#define DEFAULT_LOW_SPEED_TIME  60
#define LOW_SPEED_LIMIT         1024 /* bytes per second */
#define MAX_REDIRECTS           5
#define PROGRESS_INTERVAL       0.2 /* seconds between redraws of the progress line */
#define ERRORS_LISTED           3

enum job_state { JOB_PENDING, JOB_WAITING, JOB_ACTIVE, JOB_DONE };

struct job {
	struct download_item *item;
	enum job_state state;
	bool prepared;
	char *part;
	bool http;         /* http(s): resume with a Range header; status codes apply */
	bool part_trusted; /* .part may be continued: written by this run, or a digest checks it */
	bool restarted;    /* a mismatch after a resume already started it over once */
	bool ims;          /* conditional and dest exists: ask with If-Modified-Since */
	time_t ims_time;
	unsigned failures;    /* transient failures so far */
	double not_before;    /* monotonic time before which the next attempt must not start */
	time_t last_modified; /* the server's Last-Modified seen by an earlier attempt, or -1 */

	/* The current attempt. */
	CURL *easy;
	struct curl_slist *headers;
	int fd;
	struct sha256 *hash;
	uint64_t offset;   /* bytes of .part kept from before this attempt */
	uint64_t received; /* body bytes written by this attempt */
	bool checked;      /* the response status has been looked at */
	bool discard;      /* an error response: its body is not the file */
	bool too_long;     /* more bytes arrived than the expected size */
	bool bad_range;    /* a 206 that does not continue where .part ends */
	int write_error;   /* -errno from writing .part */
	bool have_range;
	uint64_t range_start; /* from Content-Range */
	char reason[64];      /* the status line's reason phrase */
	char errbuf[CURL_ERROR_SIZE];
};

struct run {
	const struct download_options *o;
	unsigned parallel, retries;
	long connect_timeout, low_speed_time;
	CURLM *multi;
	struct job *jobs;
	size_t n, next; /* jobs[next..] have never been looked at */
	unsigned active, waiting, done;
	struct download_stats *st;
	double start;

	/* Progress reports. */
	double last_draw;
	uint64_t total, finished_bytes, last_bytes, transferred;
	double rate;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* An HTTP date for If-Range, spelled out by hand: strftime would follow the locale. */
static void http_date(char buf[64], time_t t)
{
	static const char days[][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(buf, 64, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
	         months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static __attribute__((format(printf, 4, 5))) void job_fail(struct run *rn, struct job *j, int code,
                                                           const char *fmt, ...)
{
	struct download_item *it = j->item;
	va_list ap;
	int len = snprintf(it->error, sizeof(it->error), "%s: ", it->url);
	if (len < 0 || (size_t)len >= sizeof(it->error))
		len = sizeof(it->error) - 1;
	va_start(ap, fmt);
	vsnprintf(it->error + len, sizeof(it->error) - len, fmt, ap);
	va_end(ap);
	it->result = code;
	j->state = JOB_DONE;
	rn->done++;
}

static void job_succeed(struct run *rn, struct job *j)
{
	j->item->result = 0;
	j->item->error[0] = '\0';
	j->state = JOB_DONE;
	rn->done++;
	rn->finished_bytes += j->item->size ? j->item->size : j->offset + j->received;
}

/* Ends the current attempt: the handle leaves the multi, the file is closed. */
static void job_end_attempt(struct run *rn, struct job *j)
{
	if (j->easy) {
		curl_multi_remove_handle(rn->multi, j->easy);
		curl_easy_cleanup(j->easy);
		j->easy = NULL;
		rn->active--;
	}
	curl_slist_free_all(j->headers);
	j->headers = NULL;
	if (j->hash) {
		char discard[SHA256_HEX_LEN + 1];
		sha256_final(j->hash, discard);
		j->hash = NULL;
	}
	if (j->fd >= 0) {
		close(j->fd);
		j->fd = -1;
	}
}

static int hash_file(const char *path, char hex[SHA256_HEX_LEN + 1], uint64_t *size)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return -errno;
	*size = st.st_size;
	return sha256_fd(fd, hex);
}

/* Moves a complete, checked .part into place. */
static int commit_part(const char *part, const char *dest)
{
	_cleanup_close_ int fd = open(part, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		return -errno;
	if (rename(part, dest) < 0)
		return -errno;
	return fsync_parent(dest);
}

/* Looks at what is already on disk before the first attempt: a dest that is already right, or
 * a .part left complete by an interrupted run, needs no request. Returns true when the item is
 * settled. */
static bool job_prepare(struct run *rn, struct job *j)
{
	struct download_item *it = j->item;
	struct stat st;
	int r;

	j->prepared = true;
	if (!it->url || !it->dest || !*it->dest) {
		job_fail(rn, j, -EINVAL, "no destination given");
		return true;
	}
	if (it->sha256 && !is_sha256_hex(it->sha256)) {
		job_fail(rn, j, -EINVAL, "'%s' is not a lowercase hex sha256 digest", it->sha256);
		return true;
	}
	j->http =
	    strncasecmp(it->url, "http://", 7) == 0 || strncasecmp(it->url, "https://", 8) == 0;
	j->part = xasprintf("%s.part", it->dest);

	_cleanup_free_ char *parent = xstrdup(it->dest);
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = '\0';
		r = mkdir_p(parent, 0755);
		if (r < 0) {
			job_fail(rn, j, r, "cannot create %s: %s", parent, strerror(-r));
			return true;
		}
	}

	if (stat(it->dest, &st) == 0 && S_ISREG(st.st_mode)) {
		bool size_ok = !it->size || (uint64_t)st.st_size == it->size;
		if (it->sha256 && size_ok) {
			char hex[SHA256_HEX_LEN + 1];
			uint64_t size;
			if (hash_file(it->dest, hex, &size) == 0 && strcmp(hex, it->sha256) == 0) {
				it->cached = true;
				job_succeed(rn, j);
				return true;
			}
		} else if (!it->sha256 && size_ok) {
			if (!it->conditional) {
				it->cached = true;
				job_succeed(rn, j);
				return true;
			}
			j->ims = true;
			j->ims_time = st.st_mtime;
		}
	}

	/* A .part from an earlier run is continued only when a digest will check the result:
	 * without one there is no telling whether it came from the file the server has now. */
	j->part_trusted = it->sha256 != NULL;
	if (it->sha256 && stat(j->part, &st) == 0 && S_ISREG(st.st_mode)) {
		if (it->size && (uint64_t)st.st_size > it->size) {
			unlink(j->part);
		} else if (!it->size || (uint64_t)st.st_size == it->size) {
			char hex[SHA256_HEX_LEN + 1];
			uint64_t size;
			if (hash_file(j->part, hex, &size) == 0 && strcmp(hex, it->sha256) == 0 &&
			    (!it->size || size == it->size)) {
				r = commit_part(j->part, it->dest);
				if (r < 0) {
					job_fail(rn, j, r, "cannot rename %s: %s", j->part,
					         strerror(-r));
					return true;
				}
				it->resumed = true;
				job_succeed(rn, j);
				return true;
			}
			if (it->size)
				unlink(j->part);
		}
	}
	return false;
}

/* Decides what the response means for .part once its status is known: called with the first
 * body bytes, or at the end when there were none. */
static void job_check_status(struct job *j)
{
	long code = 0;

	j->checked = true;
	if (!j->http) {
		if (j->offset > 0)
			j->item->resumed = true;
		return;
	}
	curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
	if (code < 200 || code >= 300) {
		j->discard = true;
		return;
	}
	if (code == 206) {
		if (!j->have_range || j->range_start != j->offset)
			j->bad_range = true;
		else if (j->offset > 0)
			j->item->resumed = true;
		return;
	}
	if (j->offset > 0) {
		/* The server ignored the Range (or If-Range said the file changed): the whole file
		 * follows, so what .part held goes. */
		if (ftruncate(j->fd, 0) < 0 || lseek(j->fd, 0, SEEK_SET) < 0) {
			j->write_error = -errno;
			return;
		}
		char discard[SHA256_HEX_LEN + 1];
		sha256_final(j->hash, discard);
		j->hash = sha256_new();
		j->offset = 0;
	}
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct job *j = userdata;
	size_t len = size * nmemb;

	if (!j->checked)
		job_check_status(j);
	if (j->write_error < 0 || j->bad_range)
		return 0;
	if (j->discard)
		return len;
	if (j->item->size && j->offset + j->received + len > j->item->size) {
		j->too_long = true;
		return 0;
	}
	int r = write_all(j->fd, data, len);
	if (r < 0) {
		j->write_error = r;
		return 0;
	}
	sha256_update(j->hash, data, len);
	j->received += len;
	j->item->bytes += len;
	return len;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct job *j = userdata;
	size_t len = size * nmemb;
	char line[256];
	size_t n = len < sizeof(line) - 1 ? len : sizeof(line) - 1;

	memcpy(line, data, n);
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	if (strncmp(line, "HTTP/", 5) == 0) {
		/* A new response (after a redirect or a 100 Continue): forget the last one's. */
		j->have_range = false;
		j->reason[0] = '\0';
		const char *p = strchr(line, ' ');
		if (p && (p = strchr(p + 1, ' ')))
			snprintf(j->reason, sizeof(j->reason), "%s", p + 1);
	} else if (strncasecmp(line, "Content-Range:", 14) == 0) {
		unsigned long long start;
		if (sscanf(line + 14, " bytes %llu-", &start) == 1) {
			j->have_range = true;
			j->range_start = start;
		}
	}
	return len;
}

/* Reads what .part already holds into the hash, or empties it when it cannot be continued. */
static int job_open_part(struct job *j)
{
	struct stat st;

	j->fd = open(j->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (j->fd < 0 || fstat(j->fd, &st) < 0)
		return -errno;
	j->hash = sha256_new();
	if (st.st_size > 0 && j->part_trusted &&
	    (!j->item->size || (uint64_t)st.st_size < j->item->size)) {
		_cleanup_free_ char *buf = xmalloc(1 << 17);
		uint64_t off = 0;
		while (off < (uint64_t)st.st_size) {
			ssize_t r = pread(j->fd, buf, 1 << 17, off);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			if (r == 0)
				break;
			sha256_update(j->hash, buf, r);
			off += r;
		}
		j->offset = off;
		if (ftruncate(j->fd, off) < 0)
			return -errno;
	} else if (st.st_size > 0 && ftruncate(j->fd, 0) < 0) {
		return -errno;
	}
	if (lseek(j->fd, j->offset, SEEK_SET) < 0)
		return -errno;
	/* From here on .part holds what this run wrote. */
	j->part_trusted = true;
	return 0;
}

static void job_start(struct run *rn, struct job *j)
{
	struct download_item *it = j->item;
	char range[64], date[64];
	int r;

	j->offset = j->received = 0;
	j->checked = j->discard = j->too_long = j->bad_range = j->have_range = false;
	j->write_error = 0;
	j->reason[0] = j->errbuf[0] = '\0';
	it->attempts++;

	r = job_open_part(j);
	if (r < 0) {
		job_end_attempt(rn, j);
		job_fail(rn, j, r, "%s: %s", j->part, strerror(-r));
		return;
	}

	CURL *e = j->easy = curl_easy_init();
	if (!e)
		abort();
	rn->active++;
	curl_easy_setopt(e, CURLOPT_URL, it->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, j);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https,file");
	/* A server must not redirect to a local file. */
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "mosaic/" MOSAIC_VERSION);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, rn->connect_timeout);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long)LOW_SPEED_LIMIT);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, rn->low_speed_time);
	curl_easy_setopt(e, CURLOPT_FILETIME, 1L);
	if (strncasecmp(it->url, "https://", 8) == 0)
		/* Wait for an HTTP/2 connection to the host rather than open one per transfer. */
		curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);

	if (j->offset > 0) {
		if (j->http) {
			/* CURLOPT_RANGE rather than RESUME_FROM: libcurl fails a 200 answer to a
			 * resume, where taking the whole file as it comes costs no new request. */
			snprintf(range, sizeof(range), "%llu-", (unsigned long long)j->offset);
			curl_easy_setopt(e, CURLOPT_RANGE, range);
			if (j->last_modified >= 0) {
				char header[96];
				http_date(date, j->last_modified);
				snprintf(header, sizeof(header), "If-Range: %s", date);
				j->headers = curl_slist_append(j->headers, header);
				curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->headers);
			}
		} else {
			curl_easy_setopt(e, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)j->offset);
		}
	}
	if (j->ims) {
		curl_easy_setopt(e, CURLOPT_TIMECONDITION, (long)CURL_TIMECOND_IFMODSINCE);
		curl_easy_setopt(e, CURLOPT_TIMEVALUE_LARGE, (curl_off_t)j->ims_time);
	}

	CURLMcode mc = curl_multi_add_handle(rn->multi, e);
	if (mc != CURLM_OK) {
		job_end_attempt(rn, j);
		job_fail(rn, j, -EIO, "%s", curl_multi_strerror(mc));
		return;
	}
	j->state = JOB_ACTIVE;
}

static bool transient_curl(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return true;
	default:
		return false;
	}
}

static int curl_errno(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
		return -ECONNRESET;
	case CURLE_FILE_COULDNT_READ_FILE:
		return -ENOENT;
	case CURLE_REMOTE_ACCESS_DENIED:
		return -EACCES;
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
		return -EINVAL;
	case CURLE_TOO_MANY_REDIRECTS:
		return -ELOOP;
	default:
		return -EIO;
	}
}

static int http_errno(long code)
{
	switch (code) {
	case 404:
	case 410:
		return -ENOENT;
	case 401:
	case 403:
		return -EACCES;
	default:
		return -EIO;
	}
}

/* A transient failure: try again after a backoff, or give up when the retries are spent. */
static void job_retry_or_fail(struct run *rn, struct job *j, int code, const char *what)
{
	struct download_item *it = j->item;

	j->failures++;
	if (j->failures <= rn->retries) {
		/* Others keep going while this one waits: 0.5 s, 1 s, 2 s, … */
		j->not_before =
		    now_s() + 0.5 * (double)(1u << (j->failures - 1 < 10 ? j->failures - 1 : 10));
		j->state = JOB_WAITING;
		rn->waiting++;
		rn->st->retries++;
		return;
	}
	/* Without a digest a later run cannot trust the .part, so it goes. */
	if (!it->sha256)
		unlink(j->part);
	if (it->attempts > 1)
		job_fail(rn, j, code, "%s (gave up after %u attempts)", what, it->attempts);
	else
		job_fail(rn, j, code, "%s", what);
}

/* Starts over from an empty .part at once: the partial file turned out not to continue. */
static void job_restart(struct run *rn, struct job *j)
{
	unlink(j->part);
	j->part_trusted = false;
	j->not_before = 0;
	j->state = JOB_WAITING;
	rn->waiting++;
	rn->st->retries++;
}

static void job_finish(struct run *rn, struct job *j, CURLcode cc)
{
	struct download_item *it = j->item;
	long code = 0, unmet = 0;
	curl_off_t filetime = -1;
	char what[CURL_ERROR_SIZE + 96];
	int r;

	curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_getinfo(j->easy, CURLINFO_CONDITION_UNMET, &unmet);
	curl_easy_getinfo(j->easy, CURLINFO_FILETIME_T, &filetime);
	if (filetime >= 0)
		j->last_modified = filetime;
	if (cc == CURLE_OK && !j->checked)
		job_check_status(j);
	bool was_resume = j->offset > 0;

	if (j->too_long || j->bad_range) {
		job_end_attempt(rn, j);
		unlink(j->part);
		if (was_resume && !j->restarted) {
			j->restarted = true;
			job_restart(rn, j);
		} else if (j->bad_range) {
			job_fail(rn, j, -EBADMSG,
			         "server answered a range request with the wrong range");
		} else {
			job_fail(rn, j, -EBADMSG, "size mismatch: expected %llu bytes, got more",
			         (unsigned long long)it->size);
		}
		return;
	}
	if (j->write_error < 0) {
		r = j->write_error;
		job_end_attempt(rn, j);
		job_fail(rn, j, r, "%s: %s", j->part, strerror(-r));
		return;
	}
	if (cc != CURLE_OK) {
		snprintf(what, sizeof(what), "%s",
		         j->errbuf[0] ? j->errbuf : curl_easy_strerror(cc));
		job_end_attempt(rn, j);
		if ((cc == CURLE_RANGE_ERROR || cc == CURLE_BAD_DOWNLOAD_RESUME) && was_resume)
			job_restart(rn, j);
		else if (transient_curl(cc))
			job_retry_or_fail(rn, j, curl_errno(cc), what);
		else {
			unlink(j->part);
			job_fail(rn, j, curl_errno(cc), "%s", what);
		}
		return;
	}
	if (unmet || (j->http && code == 304)) {
		job_end_attempt(rn, j);
		unlink(j->part);
		it->not_modified = true;
		job_succeed(rn, j);
		return;
	}
	if (j->http && (code < 200 || code >= 300)) {
		if (j->reason[0])
			snprintf(what, sizeof(what), "HTTP %ld %s", code, j->reason);
		else
			snprintf(what, sizeof(what), "HTTP %ld", code);
		job_end_attempt(rn, j);
		if (code == 416 && was_resume)
			job_restart(rn, j);
		else if (code >= 500 || code == 429 || code == 408)
			job_retry_or_fail(rn, j, -EIO, what);
		else {
			unlink(j->part);
			job_fail(rn, j, http_errno(code), "%s", what);
		}
		return;
	}

	/* Complete: check it, then move it into place. */
	uint64_t got = j->offset + j->received;
	char hex[SHA256_HEX_LEN + 1];
	sha256_final(j->hash, hex);
	j->hash = NULL;
	const char *mismatch = NULL;
	if (it->size && got != it->size) {
		snprintf(what, sizeof(what), "size mismatch: expected %llu bytes, got %llu",
		         (unsigned long long)it->size, (unsigned long long)got);
		mismatch = what;
	} else if (it->sha256 && strcmp(hex, it->sha256) != 0) {
		snprintf(what, sizeof(what), "sha256 mismatch: expected %s, got %s", it->sha256,
		         hex);
		mismatch = what;
	}
	if (mismatch) {
		job_end_attempt(rn, j);
		unlink(j->part);
		/* A resumed .part may have come from an older file: once more from the start. */
		if (was_resume && !j->restarted) {
			j->restarted = true;
			job_restart(rn, j);
		} else {
			job_fail(rn, j, -EBADMSG, "%s", mismatch);
		}
		return;
	}

	/* The server's Last-Modified becomes dest's mtime, so that a conditional request next
	 * time asks about the copy we have. */
	r = 0;
	if (filetime >= 0) {
		struct timespec ts[2] = {{.tv_nsec = UTIME_NOW}, {.tv_sec = filetime}};
		if (futimens(j->fd, ts) < 0)
			r = -errno;
	}
	if (r == 0 && fsync(j->fd) < 0)
		r = -errno;
	job_end_attempt(rn, j);
	if (r == 0 && rename(j->part, it->dest) < 0)
		r = -errno;
	if (r == 0)
		r = fsync_parent(it->dest);
	if (r < 0) {
		unlink(j->part);
		job_fail(rn, j, r, "cannot write %s: %s", it->dest, strerror(-r));
		return;
	}
	job_succeed(rn, j);
}

static void progress_report(struct run *rn, bool final)
{
	double now = now_s();
	if (!rn->o || !rn->o->progress || (!final && now - rn->last_draw < PROGRESS_INTERVAL))
		return;
	uint64_t done = rn->finished_bytes, transferred = 0;
	for (size_t i = 0; i < rn->n; i++) {
		struct job *j = &rn->jobs[i];
		transferred += j->item->bytes;
		if (j->state == JOB_ACTIVE || j->state == JOB_WAITING)
			done += j->offset + j->received;
	}
	double dt = now - rn->last_draw;
	double inst = rn->last_draw > 0 && dt > 0 ? (transferred - rn->transferred) / dt : 0;
	rn->rate = rn->rate > 0 ? 0.7 * rn->rate + 0.3 * inst : inst;
	rn->transferred = transferred;
	rn->last_draw = now;
	const struct download_progress p = {
	    .what = rn->o->what ? rn->o->what : "download",
	    .done = rn->done,
	    .n_files = rn->n,
	    .bytes = done,
	    .total_bytes = rn->total > done ? rn->total : done,
	    .rate = rn->rate,
	};
	rn->o->progress(&p, rn->o->progress_data);
}

/* Starts what may start now; returns the seconds until the next waiting job may, or -1. */
static double start_jobs(struct run *rn)
{
	double now = now_s(), next_wait = -1;

	if (rn->waiting > 0) {
		for (size_t i = 0; i < rn->next; i++) {
			struct job *j = &rn->jobs[i];
			if (j->state != JOB_WAITING)
				continue;
			if (j->not_before > now) {
				double w = j->not_before - now;
				if (next_wait < 0 || w < next_wait)
					next_wait = w;
				continue;
			}
			if (rn->active >= rn->parallel)
				break; /* a finishing transfer wakes the loop */
			rn->waiting--;
			job_start(rn, j);
		}
	}
	while (rn->active < rn->parallel && rn->next < rn->n) {
		struct job *j = &rn->jobs[rn->next++];
		if (!job_prepare(rn, j))
			job_start(rn, j);
	}
	return next_wait;
}

int download_run(struct download_item *items, size_t n, const struct download_options *o,
                 struct download_stats *st, struct mosaic_error *err)
{
	struct download_stats local = {0};
	struct run rn = {.o = o, .n = n};

	if (!st)
		st = &local;
	memset(st, 0, sizeof(*st));
	rn.st = st;
	rn.parallel = o && o->parallel ? o->parallel : DEFAULT_PARALLEL;
	rn.retries = o && o->retries ? o->retries : DEFAULT_RETRIES;
	rn.connect_timeout =
	    o && o->connect_timeout > 0 ? o->connect_timeout : DEFAULT_CONNECT_TIMEOUT;
	rn.low_speed_time = o && o->low_speed_time > 0 ? o->low_speed_time : DEFAULT_LOW_SPEED_TIME;
	rn.start = now_s();

	for (size_t i = 0; i < n; i++) {
		struct download_item *it = &items[i];
		it->result = 0;
		it->error[0] = '\0';
		it->bytes = 0;
		it->cached = it->not_modified = it->resumed = false;
		it->attempts = 0;
		rn.total += it->size;
	}
	if (n == 0)
		return 0;

	pthread_once(&curl_once, curl_init);
	if (curl_init_result != CURLE_OK)
		return mosaic_errorf(err, -EIO, "cannot initialise libcurl: %s",
		                     curl_easy_strerror(curl_init_result));
	rn.multi = curl_multi_init();
	if (!rn.multi)
		abort();
	rn.jobs = xcalloc(n, sizeof(*rn.jobs));
	for (size_t i = 0; i < n; i++) {
		rn.jobs[i].item = &items[i];
		rn.jobs[i].fd = -1;
		rn.jobs[i].last_modified = -1;
	}

	while (rn.done < n) {
		double wait = start_jobs(&rn);
		int running = 0;
		if (rn.active > 0)
			curl_multi_perform(rn.multi, &running);
		CURLMsg *msg;
		int left;
		bool finished = false;
		while ((msg = curl_multi_info_read(rn.multi, &left))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			struct job *j = NULL;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
			job_finish(&rn, j, msg->data.result);
			finished = true;
		}
		progress_report(&rn, false);
		if (rn.done == n)
			break;
		if (finished)
			continue; /* free slots: fill them before waiting */

		int timeout = 1000;
		if (o && o->progress)
			timeout = PROGRESS_INTERVAL * 1000;
		if (wait >= 0 && wait * 1000 < timeout)
			timeout = (int)(wait * 1000) + 1;
		curl_multi_poll(rn.multi, NULL, 0, timeout, NULL);
	}
	progress_report(&rn, true);
	curl_multi_cleanup(rn.multi);

	int first = 0;
	size_t failed = 0;
	char list[sizeof(err->msg)] = "";
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		struct download_item *it = &items[i];
		free(rn.jobs[i].part);
		st->bytes += it->bytes;
		if (it->result < 0) {
			st->failed++;
			if (!first)
				first = it->result;
			if (failed++ < ERRORS_LISTED && len < sizeof(list))
				len += snprintf(list + len, sizeof(list) - len, "%s%s",
				                failed > 1 ? "; " : "", it->error);
			continue;
		}
		if (it->cached || it->not_modified)
			st->cached++;
		else
			st->fetched++;
		if (it->resumed)
			st->resumed++;
	}
	free(rn.jobs);
	st->seconds = now_s() - rn.start;

	if (!first)
		return 0;
	if (failed == 1)
		return mosaic_errorf(err, first, "%s", list);
	if (failed > ERRORS_LISTED)
		return mosaic_errorf(err, first, "%zu of %zu downloads failed: %s; and %zu more",
		                     failed, n, list, failed - ERRORS_LISTED);
	return mosaic_errorf(err, first, "%zu of %zu downloads failed: %s", failed, n, list);
}

void download_print_summary(FILE *f, const struct download_stats *st, const char *what)
{
	char size[32], rate[32];
	format_bytes(size, sizeof(size), st->bytes);
	format_bytes(rate, sizeof(rate), st->seconds > 0 ? st->bytes / st->seconds : 0);
	fprintf(f, "%s: %s in %.1f s (%s/s), %u fetched, %u cached", what ? what : "download", size,
	        st->seconds, rate, st->fetched, st->cached);
	if (st->resumed)
		fprintf(f, ", %u resumed", st->resumed);
	if (st->retries)
		fprintf(f, ", %u %s", st->retries, st->retries == 1 ? "retry" : "retries");
	if (st->failed)
		fprintf(f, ", %u failed", st->failed);
	fputc('\n', f);
}
