/* mosaic generations [list] | diff | gc: the builds of a manifest recorded in the store
 * (pipeline/generation.c), listed, compared and dropped. */
#include "tools/cli.h"

#include <string.h>
#include <time.h>

static const char usage_generations[] =
    "Usage: mosaic generations [list] NAME [--json] [OPTIONS]\n"
    "       mosaic generations diff NAME A B [--json] [OPTIONS]\n"
    "       mosaic generations gc NAME --keep N [OPTIONS]\n"
    "\n"
    "Every 'mosaic build' records a generation of its manifest's history in the store: the\n"
    "ordered fragments it mounts, their index, and the manifest, lock and facts it was built\n"
    "from. A build whose fragments and index equal the newest generation's records none.\n"
    "NAME is a MANIFEST (its --fact and --role select the history, as for build) or a history\n"
    "name: the manifest's name, or NAME@KEY=VALUE,... when it was built with facts.\n"
    "\n"
    "  list        each generation: number, time, fragments, index digest and facts; '*'\n"
    "              marks the newest\n"
    "  diff A B    what changed from generation A to B: packages added, removed, upgraded\n"
    "              and downgraded, and the other fragments (databases, config, extras) that\n"
    "              changed, old -> new digest\n"
    "  gc          remove all but the N newest records and their gc roots; the fragments\n"
    "              only they kept go at the next 'mosaic store gc'\n"
    "\n"
    "  -s, --store STORE   the store (default: $MOSAIC_STORE, config, /var/lib/mosaic/store)\n"
    "      --fact KEY=VALUE  with a MANIFEST: a fact of its history (repeatable)\n"
    "      --role ROLE       the same as --fact role=ROLE\n"
    "      --keep N        gc: how many of the newest to keep (1 or more)\n"
    "      --json          list and diff: JSON on stdout\n"
    "  -h, --help          show this help\n"
    "\n"
    "An earlier generation is exported with 'mosaic export MANIFEST --generation N'.\n";

enum sub { SUB_LIST, SUB_DIFF, SUB_GC };
enum { OPT_JSON = 256, OPT_KEEP };

struct args {
	enum sub sub;
	struct pipeline_source src;
	bool json;
	unsigned keep, a, b;
	char *history;
};

static int parse(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {CLI_SOURCE_OPTIONS,
	                                     {"json", no_argument, NULL, OPT_JSON},
	                                     {"keep", required_argument, NULL, OPT_KEEP},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	const char *u = usage_generations;
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		int taken = cli_source_option(c, optarg, &a->src, u);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		switch (c) {
		case OPT_JSON:
			a->json = true;
			break;
		case OPT_KEEP:
			if (cli_parse_positive(optarg, &a->keep) < 0)
				return cli_usage(u, "--keep takes a number from 1, not '%s'",
				                 optarg);
			break;
		case 'h':
			fputs(u, stdout);
			return EXIT_OK;
		default:
			return cli_usage(u, "unknown option '%s'", argv[optind - 1]);
		}
	}
	int operands = argc - optind;
	if (a->sub == SUB_DIFF && operands != 3)
		return cli_usage(u, "give NAME and two generation numbers A B");
	if (a->sub != SUB_DIFF && operands != 1)
		return cli_usage(u, "give one NAME (a MANIFEST or a history name)");
	if (a->sub == SUB_GC && !a->keep)
		return cli_usage(u, "gc needs --keep N");
	if (a->sub != SUB_GC && a->keep)
		return cli_usage(u, "--keep is gc's");
	if (a->sub == SUB_GC && a->json)
		return cli_usage(u, "--json is for list and diff");
	if (a->src.lock || a->src.keyring)
		return cli_usage(u, "--lock and --keyring mean nothing to generations");
	if (a->sub == SUB_DIFF && (cli_parse_positive(argv[optind + 1], &a->a) < 0 ||
	                           cli_parse_positive(argv[optind + 2], &a->b) < 0))
		return cli_usage(u, "generation numbers are 1 or more, not '%s' and '%s'",
		                 argv[optind + 1], argv[optind + 2]);
	struct mosaic_error err = {0};
	if (pipeline_history_find(argv[optind], a->src.facts, &a->history, &err) < 0)
		return cli_fail(&err);
	return -1;
}

static void print_json(json_object *o)
{
	printf("%s\n",
	       json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
	                                             JSON_C_TO_STRING_NOSLASHESCAPE));
}

static json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* "role=web,hw=a+b", or "-" for none. */
static void print_facts(json_object *facts)
{
	bool first = true;
	json_object_object_foreach(facts, k, v)
	{
		printf("%s%s=", first ? "" : ",", k);
		first = false;
		bool list = json_object_is_type(v, json_type_array);
		for (size_t i = 0; i < (list ? json_object_array_length(v) : 1); i++)
			printf("%s%s", i ? "+" : "",
			       json_object_get_string(list ? json_object_array_get_idx(v, i) : v));
	}
	if (first)
		printf("-");
}

static json_object *generation_json(const struct pipeline_generation *g, bool newest)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "number", json_object_new_int64(g->number));
	json_object_object_add(o, "path", json_object_new_string(g->path));
	if (g->error) {
		json_object_object_add(o, "error", json_object_new_string(g->error));
		return o;
	}
	json_object_object_add(o, "newest", json_object_new_boolean(newest));
	json_object_object_add(o, "time", json_object_new_int64(g->time));
	json_object_object_add(o, "history", json_object_new_string(g->history));
	json_object_object_add(o, "manifest", json_object_new_string(g->manifest));
	json_object_object_add(o, "manifest_digest", json_object_new_string(g->manifest_digest));
	json_object_object_add(o, "facts", json_object_get(g->facts));
	json_object_object_add(o, "lock_digest", json_object_new_string(g->lock_digest));
	json_object_object_add(o, "index_digest", json_object_new_string(g->index_digest));
	json_object_object_add(o, "index", json_object_new_string(g->index_path));
	json_object *frags = json_object_new_array();
	for (size_t i = 0; i < g->n_fragments; i++) {
		json_object *f = json_object_new_object();
		json_object_object_add(f, "digest", json_object_new_string(g->digests[i]));
		json_object_object_add(f, "name", json_object_new_string(g->names[i]));
		json_object_object_add(f, "version", string_or_null(g->versions[i]));
		json_object_object_add(f, "arch", string_or_null(g->archs[i]));
		json_object_object_add(f, "kind", json_object_new_string(g->kinds[i]));
		json_object_object_add(f, "source", string_or_null(g->sources[i]));
		json_object_object_add(f, "image", json_object_new_string(g->images[i]));
		json_object_array_add(frags, f);
	}
	json_object_object_add(o, "fragments", frags);
	return o;
}

static int list_cmd(const struct args *a)
{
	struct mosaic_error err = {0};
	struct pipeline_generation *v;
	size_t n;
	if (pipeline_generations_list(a->src.store, a->history, &v, &n, &err) < 0)
		return cli_fail(&err);
	int rc = EXIT_OK;
	json_object *arr = a->json ? json_object_new_array() : NULL;
	if (!arr)
		printf("  %4s  %-19s  %9s  %-12s  %s\n", "GEN", "TIME", "FRAGMENTS", "INDEX",
		       "FACTS");
	for (size_t i = 0; i < n; i++) {
		const struct pipeline_generation *g = &v[i];
		bool newest = i == n - 1 && !g->error;
		if (g->error) {
			fprintf(stderr, "mosaic: %s\n", g->error);
			rc = EXIT_FAIL;
		}
		if (arr) {
			json_object_array_add(arr, generation_json(g, newest));
			continue;
		}
		if (g->error) {
			printf("  %4u  (unreadable)\n", g->number);
			continue;
		}
		char when[32] = "?";
		time_t t = (time_t)g->time;
		struct tm tm;
		if (localtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		printf("%c %4u  %-19s  %9zu  %.12s  ", newest ? '*' : ' ', g->number, when,
		       g->n_fragments, g->index_digest);
		print_facts(g->facts);
		printf("\n");
	}
	if (arr) {
		print_json(arr);
		json_object_put(arr);
	}
	pipeline_generations_free(v, n);
	return rc;
}

static const char *const change_names[] = {
    [PIPELINE_GENERATION_ADDED] = "added",       [PIPELINE_GENERATION_REMOVED] = "removed",
    [PIPELINE_GENERATION_UPGRADED] = "upgraded", [PIPELINE_GENERATION_DOWNGRADED] = "downgraded",
    [PIPELINE_GENERATION_CHANGED] = "changed",
};

/* A side of a change as people read it: a package's version, else the digest's first 12. */
static void print_side(const struct pipeline_generation_change *c, const char *version,
                       const char *digest)
{
	if (c->package && version)
		printf("%s", version);
	else
		printf("%.12s", digest ? digest : "-");
}

static int diff_cmd(const struct args *a)
{
	struct mosaic_error err = {0};
	struct pipeline_generation_change *v;
	size_t n;
	if (pipeline_generations_diff(a->src.store, a->history, a->a, a->b, &v, &n, &err) < 0)
		return cli_fail(&err);
	if (a->json) {
		json_object *o = json_object_new_object(), *arr = json_object_new_array();
		json_object_object_add(o, "history", json_object_new_string(a->history));
		json_object_object_add(o, "from", json_object_new_int64(a->a));
		json_object_object_add(o, "to", json_object_new_int64(a->b));
		for (size_t i = 0; i < n; i++) {
			json_object *e = json_object_new_object();
			json_object_object_add(e, "change",
			                       json_object_new_string(change_names[v[i].kind]));
			json_object_object_add(e, "package", json_object_new_boolean(v[i].package));
			json_object_object_add(e, "name", json_object_new_string(v[i].name));
			json_object_object_add(e, "arch", string_or_null(v[i].arch));
			json_object_object_add(e, "old_version", string_or_null(v[i].old_version));
			json_object_object_add(e, "new_version", string_or_null(v[i].new_version));
			json_object_object_add(e, "old_digest", string_or_null(v[i].old_digest));
			json_object_object_add(e, "new_digest", string_or_null(v[i].new_digest));
			json_object_array_add(arr, e);
		}
		json_object_object_add(o, "changes", arr);
		print_json(o);
		json_object_put(o);
	} else {
		printf("%s: generation %u -> %u%s\n", a->history, a->a, a->b,
		       n ? "" : ": no changes");
		for (size_t i = 0; i < n; i++) {
			const struct pipeline_generation_change *c = &v[i];
			printf("  %-10s  %s%s  ", change_names[c->kind], c->name,
			       c->package ? "" : " (fragment)");
			if (c->kind == PIPELINE_GENERATION_ADDED) {
				print_side(c, c->new_version, c->new_digest);
			} else if (c->kind == PIPELINE_GENERATION_REMOVED) {
				print_side(c, c->old_version, c->old_digest);
			} else if (c->kind == PIPELINE_GENERATION_CHANGED) {
				/* The same version made into another fragment: the digests say it.
				 */
				printf("%.12s -> %.12s", c->old_digest, c->new_digest);
			} else {
				print_side(c, c->old_version, c->old_digest);
				printf(" -> ");
				print_side(c, c->new_version, c->new_digest);
			}
			printf("\n");
		}
	}
	pipeline_generation_changes_free(v, n);
	return EXIT_OK;
}

static int gc_cmd(const struct args *a)
{
	struct mosaic_error err = {0};
	unsigned *removed;
	size_t n;
	int r = pipeline_generations_gc(a->src.store, a->history, a->keep, &removed, &n, &err);
	if (n) {
		printf("removed generation%s", n > 1 ? "s" : "");
		for (size_t i = 0; i < n; i++)
			printf("%s %u", i ? "," : "", removed[i]);
		printf(" of %s; 'mosaic store gc' removes the fragments only %s kept\n", a->history,
		       n > 1 ? "they" : "it");
	} else if (r == 0) {
		printf("%s has no more than %u generation%s: nothing removed\n", a->history,
		       a->keep, a->keep > 1 ? "s" : "");
	}
	free(removed);
	return r < 0 ? cli_fail(&err) : EXIT_OK;
}

int cmd_generations(int argc, char **argv)
{
	struct args a = {.sub = SUB_LIST};
	if (argc >= 2 && (strcmp(argv[1], "list") == 0 || strcmp(argv[1], "diff") == 0 ||
	                  strcmp(argv[1], "gc") == 0)) {
		a.sub = argv[1][0] == 'l' ? SUB_LIST : argv[1][0] == 'd' ? SUB_DIFF : SUB_GC;
		argc--;
		argv++;
	}
	int r = parse(argc, argv, &a);
	if (r < 0)
		r = a.sub == SUB_LIST   ? list_cmd(&a)
		    : a.sub == SUB_DIFF ? diff_cmd(&a)
		                        : gc_cmd(&a);
	free(a.history);
	cli_source_clear(&a.src);
	return r;
}
