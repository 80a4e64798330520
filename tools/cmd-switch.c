/* mosaic switch | rollback */
#include "tools/cli.h"

#include <math.h>
#include <string.h>

static const char usage_switch[] =
    "Usage: mosaic switch MOUNTPOINT (MANIFEST | INDEX | FRAGMENT...) [OPTIONS]\n"
    "       mosaic switch MOUNTPOINT [--add FRAGMENT] [--remove NAME] [--replace NAME=FRAGMENT]\n"
    "\n"
    "Switches a running mount to another composition without unmounting it: a MANIFEST\n"
    "'mosaic build' built (its newest generation), a prebuilt INDEX, FRAGMENTs (lowest first), or "
    "the fragments it\n"
    "serves with some removed, replaced or added on top. The new index is built (or found in\n"
    "the cache) and every new fragment verified before the mount changes at all; then every\n"
    "path shows the new composition at once. Paths that did not change keep their inode\n"
    "numbers; a process keeps reading a file it holds open until it closes it.\n"
    "\n"
    "  -s, --store STORE       the store fragments come from\n"
    "      --keyring FILE      trusted public keys\n"
    "      --lock FILE         the MANIFEST's lock (default: NAME.lock beside it)\n"
    "      --fact KEY=VALUE    a fact the MANIFEST's layers are matched against (repeatable)\n"
    "      --role ROLE         the same as --fact role=ROLE\n"
    "      --generation N      generation N of the MANIFEST's history, not its newest\n"
    "      --add FRAGMENT      put FRAGMENT on top of the served ones (repeatable)\n"
    "      --remove NAME       leave out the served fragment named NAME (repeatable)\n"
    "      --replace NAME=FRAGMENT\n"
    "                          serve FRAGMENT in the place of NAME (repeatable)\n"
    "      --check CMD         after the switch, run sh -c CMD in a chroot of the view; if it\n"
    "                          fails, switch back and exit 1\n"
    "      --check-host        run the check on the host instead ($MOSAIC_MOUNT is set)\n"
    "      --check-timeout S   a check running longer fails (default: 60)\n"
    "      --json              print what changed as JSON\n"
    "  -h, --help              show this help\n";

static const char usage_rollback[] =
    "Usage: mosaic rollback MOUNTPOINT [--check CMD] [--json]\n"
    "\n"
    "Switches a running mount back to what it served before its last switch (repeat to go\n"
    "further back), the same way 'mosaic switch' switches.\n"
    "\n"
    "      --check CMD         as for switch\n"
    "      --check-host        as for switch\n"
    "      --check-timeout S   as for switch\n"
    "      --json              print what changed as JSON\n"
    "  -h, --help              show this help\n";

enum {
	OPT_ADD = 256,
	OPT_REMOVE,
	OPT_REPLACE,
	OPT_CHECK,
	OPT_CHECK_HOST,
	OPT_CHECK_TIMEOUT,
	OPT_JSON
};

struct edits {
	char **v[3];
	size_t n[3];
};

static void edits_clear(struct edits *e)
{
	for (int i = 0; i < 3; i++)
		free(e->v[i]);
}

static void edits_add(struct edits *e, int which, char *arg)
{
	e->v[which] = xrealloc(e->v[which], (e->n[which] + 1) * sizeof(char *));
	e->v[which][e->n[which]++] = arg;
}

static void print_result(const struct pipeline_switch_result *res, const char *mnt, bool json,
                         bool rollback)
{
	const struct fusefs_switch_result *s = &res->sw;
	if (json) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "mountpoint", json_object_new_string(mnt));
		json_object_object_add(o, "fragments", json_object_new_int64(res->n_fragments));
		json_object_object_add(o, "kept", json_object_new_int64(s->kept));
		json_object_object_add(o, "added", json_object_new_int64(s->added));
		json_object_object_add(o, "removed", json_object_new_int64(s->removed));
		json_object_object_add(o, "changed", json_object_new_int64(s->changed));
		json_object_object_add(o, "invalidations", json_object_new_int64(s->invalidations));
		json_object_object_add(o, "held", json_object_new_int64(s->stranded));
		json_object_object_add(o, "ms", json_object_new_double(s->ms));
		json_object_object_add(o, "served", json_object_get(res->served));
		printf("%s\n", json_object_to_json_string_ext(
		                   o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(o);
		return;
	}
	printf("%s %s to %zu fragments in %.1f ms: %" PRIu64 " paths added, %" PRIu64
	       " removed, %" PRIu64 " replaced; %" PRIu64 " invalidations\n",
	       rollback ? "rolled" : "switched", mnt, res->n_fragments, s->ms, s->added, s->removed,
	       s->changed, s->invalidations);
}

static int switch_cmd(int argc, char **argv, bool rollback, struct pipeline_source *src,
                      struct edits *e)
{
	const char *usage = rollback ? usage_rollback : usage_switch;
	static const struct option opts[] = {
	    CLI_SOURCE_OPTIONS,
	    CLI_GENERATION_OPTION,
	    {"add", required_argument, NULL, OPT_ADD},
	    {"remove", required_argument, NULL, OPT_REMOVE},
	    {"replace", required_argument, NULL, OPT_REPLACE},
	    {"check", required_argument, NULL, OPT_CHECK},
	    {"check-host", no_argument, NULL, OPT_CHECK_HOST},
	    {"check-timeout", required_argument, NULL, OPT_CHECK_TIMEOUT},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	struct pipeline_switch_options o = {.rollback = rollback, .check_timeout = 60};
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		int taken = rollback ? 0 : cli_source_option(c, optarg, src, usage);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		switch (c) {
		case OPT_ADD:
		case OPT_REMOVE:
		case OPT_REPLACE:
			if (rollback)
				return cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
			edits_add(e, c - OPT_ADD, optarg);
			break;
		case OPT_CHECK:
			o.check = optarg;
			break;
		case OPT_CHECK_HOST:
			o.check_on_host = true;
			break;
		case OPT_CHECK_TIMEOUT: {
			char *end;
			o.check_timeout = strtod(optarg, &end);
			if (*end || !(o.check_timeout > 0) || !isfinite(o.check_timeout))
				return cli_usage(usage, "--check-timeout wants seconds, not '%s'",
				                 optarg);
			break;
		}
		case OPT_JSON:
			json = true;
			break;
		case 'h':
			fputs(usage, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
		}
	}
	bool editing = e->n[0] || e->n[1] || e->n[2];
	if (argc - optind < 1)
		return cli_usage(usage, "give the MOUNTPOINT");
	o.mountpoint = argv[optind];
	if (rollback && argc - optind != 1)
		return cli_usage(usage, "give only the MOUNTPOINT");
	if (!rollback && editing == (argc - optind > 1))
		return cli_usage(usage, "give what to switch to: (MANIFEST | INDEX | FRAGMENT...), "
		                        "or --add/--remove/--replace, not both");
	o.remove = e->v[1];
	o.n_remove = e->n[1];
	o.replace = e->v[2];
	o.n_replace = e->n[2];
	o.add = e->v[0];
	o.n_add = e->n[0];
	o.store = src->store;
	o.keyring = src->keyring;
	if (!rollback && !editing) {
		src->args = argv + optind + 1;
		src->n_args = argc - optind - 1;
		o.target = src;
	}
	struct mosaic_error err = {0};
	struct pipeline_switch_result res;
	int r = pipeline_switch(&o, &res, cli_events(), &err);
	if (r < 0) {
		pipeline_switch_result_clear(&res);
		return r == -ECANCELED ? (cli_fail(&err), EXIT_FAIL) : cli_fail(&err);
	}
	print_result(&res, o.mountpoint, json, rollback);
	pipeline_switch_result_clear(&res);
	return EXIT_OK;
}

static int run(int argc, char **argv, bool rollback)
{
	struct pipeline_source src = {0};
	struct edits e = {0};
	int r = switch_cmd(argc, argv, rollback, &src, &e);
	edits_clear(&e);
	cli_source_clear(&src);
	return r;
}

int cmd_switch(int argc, char **argv)
{
	return run(argc, argv, false);
}

int cmd_rollback(int argc, char **argv)
{
	return run(argc, argv, true);
}
