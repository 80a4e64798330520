/* download-tool: a thin driver over download_run for tests/integration/test_download.py. Prints
 * one JSON object with the run's stats and every item's result; exits 0 when all succeeded. */
#include "providers/providers.h"

#include <dirent.h>
#include <getopt.h>
#include <string.h>

static const char usage[] =
    "usage: download-tool [--parallel N] [--retries N] [--low-speed-time S] [--connect-timeout S]\n"
    "                     [--conditional] [--progress] URL DEST [SHA256|- [SIZE]] [URL DEST ...]\n";

static bool is_url(const char *s)
{
	return strstr(s, "://") != NULL;
}

/* Descriptors open besides stdin, stdout and stderr: download_run must leave none behind. */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atoi(e->d_name) > 2 && atoi(e->d_name) != dirfd(d))
			n++;
	closedir(d);
	return n;
}

/* The progress line on a terminal, as the mosaic command draws it: redrawn in place, cleared
 * when the run ends. */
static bool drawn;
static void draw_progress(const struct download_progress *p, void *data)
{
	(void)data;
	if (!isatty(STDERR_FILENO))
		return;
	if (p->done == p->n_files) {
		if (drawn)
			fputs("\r\033[K", stderr);
		drawn = false;
		return;
	}
	char d[32], t[32], r[32];
	format_bytes(d, sizeof(d), p->bytes);
	format_bytes(t, sizeof(t), p->total_bytes);
	format_bytes(r, sizeof(r), p->rate);
	fprintf(stderr, "\r\033[K%s: %zu/%zu files, %s/%s, %s/s", p->what, p->done, p->n_files, d,
	        t, r);
	fflush(stderr);
	drawn = true;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"parallel", required_argument, NULL, 'p'},
	    {"retries", required_argument, NULL, 'r'},
	    {"low-speed-time", required_argument, NULL, 'l'},
	    {"connect-timeout", required_argument, NULL, 'c'},
	    {"conditional", no_argument, NULL, 'C'},
	    {"progress", no_argument, NULL, 'P'},
	    {"help", no_argument, NULL, 'h'},
	    {},
	};
	struct download_options o = {.what = "download"};
	bool conditional = false;
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			o.parallel = strtoul(optarg, NULL, 10);
			break;
		case 'r':
			o.retries = strtoul(optarg, NULL, 10);
			break;
		case 'l':
			o.low_speed_time = strtol(optarg, NULL, 10);
			break;
		case 'c':
			o.connect_timeout = strtol(optarg, NULL, 10);
			break;
		case 'C':
			conditional = true;
			break;
		case 'P':
			o.progress = draw_progress;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}

	/* Items: URL DEST, then optionally SHA256 (or -) and SIZE, until the next URL. */
	size_t n = 0;
	_cleanup_free_ struct download_item *items = xcalloc(argc, sizeof(*items));
	for (int i = optind; i < argc;) {
		if (i + 1 >= argc || !is_url(argv[i])) {
			fputs(usage, stderr);
			return 2;
		}
		struct download_item *it = &items[n++];
		it->url = argv[i++];
		it->dest = argv[i++];
		it->conditional = conditional;
		if (i < argc && !is_url(argv[i])) {
			if (strcmp(argv[i], "-") != 0)
				it->sha256 = argv[i];
			i++;
			if (i < argc && !is_url(argv[i]))
				it->size = strtoull(argv[i++], NULL, 10);
		}
	}
	if (n == 0) {
		fputs(usage, stderr);
		return 2;
	}

	struct download_stats st;
	struct mosaic_error err = {0};
	int r = download_run(items, n, &o, &st, &err);

	json_object *out = json_object_new_object();
	json_object *js = json_object_new_object();
	json_object_object_add(js, "bytes", json_object_new_int64(st.bytes));
	json_object_object_add(js, "seconds", json_object_new_double(st.seconds));
	json_object_object_add(js, "fetched", json_object_new_int(st.fetched));
	json_object_object_add(js, "cached", json_object_new_int(st.cached));
	json_object_object_add(js, "resumed", json_object_new_int(st.resumed));
	json_object_object_add(js, "retries", json_object_new_int(st.retries));
	json_object_object_add(js, "failed", json_object_new_int(st.failed));
	json_object_object_add(out, "stats", js);
	json_object_object_add(out, "result", json_object_new_int(r));
	json_object_object_add(out, "error", json_object_new_string(r < 0 ? err.msg : ""));
	json_object *ja = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		struct download_item *it = &items[i];
		json_object *ji = json_object_new_object();
		json_object_object_add(ji, "url", json_object_new_string(it->url));
		json_object_object_add(ji, "dest", json_object_new_string(it->dest));
		json_object_object_add(ji, "result", json_object_new_int(it->result));
		json_object_object_add(ji, "error", json_object_new_string(it->error));
		json_object_object_add(ji, "bytes", json_object_new_int64(it->bytes));
		json_object_object_add(ji, "cached", json_object_new_boolean(it->cached));
		json_object_object_add(ji, "not_modified",
		                       json_object_new_boolean(it->not_modified));
		json_object_object_add(ji, "resumed", json_object_new_boolean(it->resumed));
		json_object_object_add(ji, "attempts", json_object_new_int(it->attempts));
		json_object_array_add(ja, ji);
	}
	json_object_object_add(out, "items", ja);
	json_object_object_add(out, "open_fds", json_object_new_int(open_fds()));
	puts(json_object_to_json_string_ext(out, JSON_C_TO_STRING_PRETTY |
	                                             JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(out);
	download_print_summary(stderr, &st, o.what);
	return r < 0 ? 1 : 0;
}
