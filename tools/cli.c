/* tools/: the command line's shared parts: errors and usage, the options that name a
 * composition, and the printer of progress events (a redrawn line on a terminal, plain lines
 * in a log). */
#include "tools/cli.h"

#include <string.h>

int cli_fail(const struct mosaic_error *err)
{
	/* A manifest's validation errors go out as they are, one FILE:LINE:COL line each, like a
	 * compiler's. */
	if (err->located)
		fprintf(stderr, "%s\n", err->msg);
	else
		fprintf(stderr, "mosaic: %s\n", err->msg[0] ? err->msg : strerror(-err->code));
	return err->code == -EINVAL ? EXIT_USAGE : EXIT_FAIL;
}

int cli_usage(const char *u, const char *fmt, ...)
{
	va_list ap;
	fputs("mosaic: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	/* The synopsis line only; --help has the rest. */
	fprintf(stderr, "%.*s(see --help)\n", (int)(strchrnul(u, '\n') - u + 1), u);
	return EXIT_USAGE;
}

int cli_flags(int argc, char **argv, const char *usage, const struct cli_flag *flags,
              int n_operands, const char *what)
{
	size_t n = 0;
	while (flags && flags[n].name)
		n++;
	_cleanup_free_ struct option *opts = xcalloc(n + 2, sizeof(*opts));
	for (size_t i = 0; i < n; i++)
		opts[i] = (struct option){flags[i].name, no_argument, NULL, 256 + (int)i};
	opts[n] = (struct option){"help", no_argument, NULL, 'h'};
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage, stdout);
			return EXIT_OK;
		}
		if (c < 256 || c >= 256 + (int)n)
			return cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
		*flags[c - 256].set = true;
	}
	if (argc - optind != n_operands)
		return cli_usage(usage, "give %s", what);
	return -1;
}

int cli_source_option(int c, const char *arg, struct pipeline_source *src, const char *usage)
{
	switch (c) {
	case 's':
		src->store = arg;
		return 1;
	case CLI_OPT_KEYRING:
		src->keyring = arg;
		return 1;
	case CLI_OPT_LOCK:
		src->lock = arg;
		return 1;
	case CLI_OPT_GENERATION:
		if (cli_parse_positive(arg, &src->generation) < 0)
			return cli_usage(usage, "--generation takes a number from 1, not '%s'",
			                 arg);
		return 1;
	case CLI_OPT_FACT:
	case CLI_OPT_ROLE: {
		if (!src->facts)
			src->facts = json_object_new_object();
		_cleanup_free_ char *kv =
		    c == CLI_OPT_ROLE ? xasprintf("role=%s", arg) : xstrdup(arg);
		if (pipeline_fact_add(src->facts, kv) < 0)
			return cli_usage(usage, "--fact takes KEY=VALUE, not '%s'", arg);
		return 1;
	}
	}
	return 0;
}

void cli_source_clear(struct pipeline_source *src)
{
	json_object_put(src->facts);
	src->facts = NULL;
}

int cli_source_date_epoch(int64_t *out)
{
	struct mosaic_error err = {0};
	return mosaic_source_date_epoch(out, &err) < 0 ? cli_fail(&err) : 0;
}

int cli_parse_timeout(const char *arg, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(arg, &end, 10);
	if (!*arg || *end || errno || v > 7 * 24 * 3600 || arg[0] == '-')
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

int cli_parse_positive(const char *arg, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(arg, &end, 10);
	if (!*arg || *end || errno || v < 1 || v > 999999999 || arg[0] == '-' || arg[0] == '+' ||
	    arg[0] == ' ')
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

/* ---- progress ------------------------------------------------------------------------------ */

static struct {
	int tty;   /* -1: not asked yet */
	bool line; /* a progress line is drawn and must be cleared before other output */
	double last;
	char step[64]; /* the step last drawn: a new one is drawn at once */
} out = {.tty = -1};

static bool is_tty(void)
{
	if (out.tty < 0)
		out.tty = isatty(STDERR_FILENO);
	return out.tty;
}

static void clear_line(void)
{
	if (out.line) {
		fputs("\r\033[K", stderr);
		out.line = false;
	}
}

static void progress(const struct pipeline_event *e)
{
	if (e->total == 0)
		return;
	if (is_tty()) {
		/* Redrawn at most ten times a second; cleared when the work is done. */
		double now = now_s();
		if (e->done == e->total) {
			clear_line();
			return;
		}
		if (now - out.last < 0.1 && strcmp(out.step, e->step) == 0)
			return;
		out.last = now;
		snprintf(out.step, sizeof(out.step), "%s", e->step);
		char count[48] = "", bytes[64] = "";
		/* Work counted in bytes alone (an export's content) has no item count. */
		if (e->total != e->total_bytes)
			snprintf(count, sizeof(count), " %ju/%ju", (uintmax_t)e->done,
			         (uintmax_t)e->total);
		if (e->total_bytes) {
			char b[24], t[24];
			format_bytes(b, sizeof(b), e->bytes);
			format_bytes(t, sizeof(t), e->total_bytes);
			snprintf(bytes, sizeof(bytes), " %s/%s", b, t);
		}
		int width = 30, filled = (int)(width * e->done / e->total);
		fprintf(stderr, "\r\033[K%s [%.*s%*s]%s%s %-.40s", e->step, filled,
		        "##############################", width - filled, "", count, bytes,
		        e->item ? e->item : "");
		fflush(stderr);
		out.line = true;
		return;
	}
	/* In a log: a line at every tenth of the items of a long step, not one per item; the
	 * byte counts of a download only in its summary. */
	if (e->total_bytes || e->total < 10)
		return;
	uint64_t every = e->total / 10;
	if (e->done % every == 0 || e->done == e->total)
		fprintf(stderr, "%s: %ju of %ju\n", e->step, (uintmax_t)e->done,
		        (uintmax_t)e->total);
}

void cli_configure_event(const struct configure_event *e, void *data)
{
	(void)data;
	clear_line();
	switch (e->kind) {
	case CONFIGURE_STEP:
		if (e->total && is_tty())
			fprintf(stderr, "mosaic: configure: %s (%zu of %zu)\n", e->step, e->done,
			        e->total);
		else
			fprintf(stderr, "mosaic: configure: %s\n", e->step);
		break;
	case CONFIGURE_OUTPUT:
		/* Line by line as the step prints it: a reader of the pipe (a log, a test, a
		 * supervisor waiting for a line) sees where the run is. */
		printf("[%s] %s\n", e->step ? e->step : "", e->text);
		fflush(stdout);
		break;
	case CONFIGURE_INFO:
	case CONFIGURE_ERROR:
		fprintf(stderr, "mosaic: configure: %s\n", e->text);
		break;
	case CONFIGURE_DETAIL:
		fprintf(stderr, "%s\n", e->text);
		break;
	}
}

static void print_event(const struct pipeline_event *e, void *data)
{
	(void)data;
	switch (e->kind) {
	case PIPELINE_STEP:
		break;
	case PIPELINE_PROGRESS:
		progress(e);
		break;
	case PIPELINE_INFO:
		clear_line();
		fprintf(stderr, "%s\n", e->text);
		break;
	case PIPELINE_WARNING:
		clear_line();
		fprintf(stderr, "mosaic: warning: %s\n", e->text);
		break;
	case PIPELINE_CONFIGURE:
		cli_configure_event(e->configure, NULL);
		break;
	}
}

struct pipeline_events *cli_events(void)
{
	static struct pipeline_events ev = {print_event, NULL};
	return &ev;
}
int cli_open_store(const char *path, bool create, struct store **out)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *def = path ? NULL : store_default_path();
	int r = store_open(path ? path : def, create, out, &err);
	return r < 0 ? cli_fail(&err) : 0;
}

int cli_open_keyring(const char *path, struct keyring **out)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *def = path ? NULL : keyring_default_path();
	int r = keyring_open(path ? path : def, out, &err);
	return r < 0 ? cli_fail(&err) : 0;
}

int cli_fragment_path(const char *arg, const char *store_path, char **out)
{
	struct mosaic_error err = {0};
	return pipeline_fragment_path(arg, store_path, out, &err) < 0 ? cli_fail(&err) : 0;
}
