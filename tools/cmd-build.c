/* mosaic resolve | build: parses the options, runs the pipeline's steps (pipeline/build.c), and
 * says where the result is. */
#include "tools/cli.h"

#include <string.h>

static const char usage_resolve[] =
    "Usage: mosaic resolve MANIFEST [OPTIONS]\n"
    "\n"
    "Loads the manifest's repositories (signatures and checksums checked), resolves its\n"
    "packages and base set with libsolv and writes NAME.lock beside the manifest: each\n"
    "package with exact version, architecture, repository and checksum.\n"
    "\n"
    "  --lock FILE          where the lock is (default: NAME.lock beside the manifest)\n"
    "  --locked             do not resolve: check that the lock still matches the\n"
    "                       manifest and the repositories, and fail if not\n"
    "  --offline            use cached metadata only; never touch the network\n"
    "  --recommends         install Recommends too (the manifest's 'recommends' otherwise)\n"
    "  --fact KEY=VALUE     a fact for the manifest's when: conditions (repeatable)\n"
    "  --role ROLE          the same as --fact role=ROLE\n"
    "  -h, --help           show this help\n";

static const char usage_build[] =
    "Usage: mosaic build MANIFEST [OPTIONS]\n"
    "\n"
    "resolve, then download the packages (parallel, resumable, checksummed, signatures\n"
    "checked), make a signed fragment of each in the store (and, for Debian, one holding\n"
    "the dpkg database of them all; with the manifest's merged_usr, one holding /bin, /sbin\n"
    "and /lib as symlinks into /usr) and record them in the lock. Then configure: mount them\n"
    "with a scratch upper, run 'mosaic configure' with the manifest (package scripts, config:,\n"
    "run:), and commit the upper as a signed config fragment, recorded in the lock, that\n"
    "'mosaic mount MANIFEST' puts on top. The build is recorded as a generation of the\n"
    "manifest's history in the store ('mosaic generations'), unless it equals the newest one.\n"
    "With --fact or --role the lock and the history are NAME@FACTS.lock and NAME@FACTS.\n"
    "Incremental: what is cached is not downloaded again, a fragment is not made twice, and\n"
    "the same fragments with the same config: and run: reuse their config fragment.\n"
    "\n"
    "  --lock FILE --locked --offline --recommends --fact --role   as for resolve\n"
    "  -s, --store STORE    the store fragments go to (created if missing)\n"
    "      --sign KEYID     the OpenPGP key that signs fragments ($MOSAIC_SIGN_KEY, config\n"
    "                       \"sign_key\")\n"
    "  -j, --jobs N         fragments made at once (default: the number of CPUs)\n"
    "      --downloads N    parallel downloads (default 6)\n"
    "      --keyring FILE   trusted keys, to mount the fragments for configure\n"
    "      --no-configure   stop before configure: the manifest then mounts unconfigured\n"
    "      --configure      configure (the default)\n"
    "      --step-timeout S kill a configure step after S seconds (default 600; 0: none)\n"
    "      --no-export      skip the manifest's export: targets (made last, each as 'mosaic\n"
    "                       export' would make it)\n"
    "  -h, --help           show this help\n";

enum {
	OPT_LOCKED = 256,
	OPT_OFFLINE,
	OPT_RECOMMENDS,
	OPT_SIGN,
	OPT_DOWNLOADS,
	OPT_CONFIGURE,
	OPT_NO_CONFIGURE,
	OPT_STEP_TIMEOUT,
	OPT_NO_EXPORT,
};

static int parse(int argc, char **argv, bool build, struct pipeline_source *src,
                 struct pipeline_build_options *o)
{
	const char *usage = build ? usage_build : usage_resolve;
	static const struct option opts[] = {
	    CLI_SOURCE_OPTIONS,
	    {"locked", no_argument, NULL, OPT_LOCKED},
	    {"offline", no_argument, NULL, OPT_OFFLINE},
	    {"recommends", no_argument, NULL, OPT_RECOMMENDS},
	    {"sign", required_argument, NULL, OPT_SIGN},
	    {"jobs", required_argument, NULL, 'j'},
	    {"downloads", required_argument, NULL, OPT_DOWNLOADS},
	    {"configure", no_argument, NULL, OPT_CONFIGURE},
	    {"no-configure", no_argument, NULL, OPT_NO_CONFIGURE},
	    {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
	    {"no-export", no_argument, NULL, OPT_NO_EXPORT},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	int c;
	while ((c = getopt_long(argc, argv, build ? "s:j:h" : "h", opts, NULL)) != -1) {
		int taken = cli_source_option(c, optarg, src, usage);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		char *end;
		long v;
		switch (c) {
		case OPT_LOCKED:
			o->locked = true;
			break;
		case OPT_OFFLINE:
			o->offline = true;
			break;
		case OPT_RECOMMENDS:
			o->recommends = true;
			break;
		case OPT_SIGN:
			o->sign_key = optarg;
			break;
		case OPT_CONFIGURE:
		case OPT_NO_CONFIGURE:
			o->configure = c == OPT_CONFIGURE;
			break;
		case OPT_NO_EXPORT:
			o->export = false;
			break;
		case OPT_STEP_TIMEOUT:
			if (cli_parse_timeout(optarg, &o->step_timeout) < 0)
				return cli_usage(usage, "bad --step-timeout '%s'", optarg);
			break;
		case 'j':
		case OPT_DOWNLOADS:
			v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 64)
				return cli_usage(usage, "%s takes a number from 1 to 64, not '%s'",
				                 c == 'j' ? "--jobs" : "--downloads", optarg);
			*(c == 'j' ? &o->jobs : &o->downloads) = (unsigned)v;
			break;
		case 'h':
			fputs(usage, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind + 1 != argc)
		return cli_usage(usage, "give one MANIFEST");
	o->manifest = argv[optind];
	o->lock_path = src->lock;
	o->store = src->store;
	o->keyring = src->keyring;
	o->facts = src->facts;
	return -1;
}

static int run(int argc, char **argv, bool build)
{
	struct pipeline_source src = {0};
	struct pipeline_build_options o = {
	    .configure = true, .export = true, .step_timeout = 600, .progress = true};
	int r = parse(argc, argv, build, &src, &o);
	if (r >= 0) {
		cli_source_clear(&src);
		return r;
	}
	struct mosaic_error err = {0};
	struct pipeline_build_result res = {0};
	r = build ? pipeline_build(&o, &res, cli_events(), &err)
	          : pipeline_resolve(&o, &res, cli_events(), &err);
	if (r < 0)
		r = cli_fail(&err);
	else if (build)
		printf("%s: %zu packages, %zu fragments in %s; mount it with 'mosaic mount %s "
		       "MOUNTPOINT%s%s'\n",
		       res.lock_path, res.n_packages, res.n_fragments, res.store, o.manifest,
		       src.lock ? " --lock " : "", src.lock ? src.lock : "");
	else
		printf("%s: %zu packages%s\n", res.lock_path, res.n_packages,
		       o.locked ? ", still matching the repositories" : "");
	pipeline_build_result_clear(&res);
	cli_source_clear(&src);
	return r;
}

int cmd_resolve(int argc, char **argv)
{
	return run(argc, argv, false);
}

int cmd_build(int argc, char **argv)
{
	return run(argc, argv, true);
}
