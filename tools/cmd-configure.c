/* mosaic configure: parses the options and configures a writable mount, or a built manifest's
 * own mount, through the pipeline (pipeline/configure.c, configure/). */
#include "tools/cli.h"

#include <string.h>

static const char usage_configure[] =
    "Usage: mosaic configure MANIFEST [MOUNTPOINT] [OPTIONS]\n"
    "       mosaic configure MOUNTPOINT [--manifest MANIFEST] [OPTIONS]\n"
    "\n"
    "Configures a writable mosaic mount in a chroot, in private mount and PID namespaces that\n"
    "carry /proc, /sys, /dev, /run and /tmp and vanish afterwards; every change lands in the\n"
    "upper. Debian packages first: each unpacked package's preinst ('install') in dependency\n"
    "order, then dpkg --configure -a with triggers deferred, the triggers once, and dpkg --audit,\n"
    "with services kept from starting (usr/sbin/policy-rc.d says 101 for the run). Then, with a\n"
    "MANIFEST, its config: (users and groups, hostname, timezone, locale, files, services,\n"
    "kernel_cmdline) and its run: steps. A second run changes nothing; a run after a failure\n"
    "carries on where that one stopped (docs/configure.md). Afterwards /etc/machine-id is\n"
    "emptied and the random seed removed, so that every copy of the system gets its own; with\n"
    "$SOURCE_DATE_EPOCH set, every step gets it and the logs that date the run are removed.\n"
    "\n"
    "A MANIFEST that 'mosaic build' built is mounted first unless MOUNTPOINT is a mosaic mount\n"
    "already (default MOUNTPOINT: roots/NAME/mnt beside its lock, upper roots/NAME/upper), and\n"
    "stays mounted afterwards.\n"
    "\n"
    "      --manifest MANIFEST  the manifest whose config: and run: apply to MOUNTPOINT\n"
    "  -s, --store STORE        mounting: the store fragments come from\n"
    "      --keyring FILE       mounting: trusted public keys\n"
    "      --lock FILE          mounting: the MANIFEST's lock (default: NAME.lock beside it)\n"
    "      --upper DIR          mounting: the upper layer (default: roots/NAME/upper)\n"
    "      --fact KEY=VALUE     a fact the manifest's layers are matched against (repeatable)\n"
    "      --role ROLE          the same as --fact role=ROLE\n"
    "      --step-timeout S     kill a step (its whole process group) after S seconds and\n"
    "                           report it (default 600; 0: no limit)\n"
    "  -h, --help               show this help\n";

enum { OPT_STEP_TIMEOUT = 256, OPT_MANIFEST, OPT_UPPER };

static int configure_cmd(int argc, char **argv, struct pipeline_source *src)
{
	static const struct option opts[] = {
	    CLI_SOURCE_OPTIONS,
	    {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
	    {"manifest", required_argument, NULL, OPT_MANIFEST},
	    {"upper", required_argument, NULL, OPT_UPPER},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	struct pipeline_configure_options o = {.configure = {.timeout = 600}};
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		int taken = cli_source_option(c, optarg, src, usage_configure);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		switch (c) {
		case OPT_STEP_TIMEOUT:
			if (cli_parse_timeout(optarg, &o.configure.timeout) < 0)
				return cli_usage(usage_configure, "bad --step-timeout '%s'",
				                 optarg);
			break;
		case OPT_MANIFEST:
			o.manifest = optarg;
			break;
		case OPT_UPPER:
			o.upper = optarg;
			break;
		case 'h':
			fputs(usage_configure, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_configure, "unknown option '%s'", argv[optind - 1]);
		}
	}
	int n = argc - optind;
	char **ops = argv + optind;
	if (n < 1 || n > 2)
		return cli_usage(usage_configure, "give MANIFEST [MOUNTPOINT], or MOUNTPOINT");
	if (pipeline_is_manifest(ops[0])) {
		if (o.manifest)
			return cli_usage(usage_configure,
			                 "give the manifest once: as the first operand "
			                 "or with --manifest");
		o.manifest = ops[0];
		o.mountpoint = n == 2 ? ops[1] : NULL;
	} else {
		if (n == 2)
			return cli_usage(usage_configure,
			                 "'%s' is not a manifest (NAME.yaml): give MANIFEST "
			                 "[MOUNTPOINT], or MOUNTPOINT",
			                 ops[0]);
		o.mountpoint = ops[0];
	}
	if (!o.manifest && (src->store || src->keyring || src->lock || o.upper))
		return cli_usage(usage_configure, "--store, --keyring, --lock and --upper are for "
		                                  "mounting a MANIFEST");
	int r = cli_source_date_epoch(&o.configure.source_date_epoch);
	if (r)
		return r;
	o.store = src->store;
	o.keyring = src->keyring;
	o.lock = src->lock;
	o.facts = src->facts;
	struct mosaic_error err = {0};
	struct pipeline_configure_result res = {0};
	r = pipeline_configure(&o, &res, cli_events(), &err);
	if (r < 0)
		r = cli_fail(&err);
	if (res.mounted)
		fprintf(stderr,
		        "mosaic: configure: %s stays mounted (upper %s); 'mosaic umount %s' when "
		        "done\n",
		        res.mountpoint, res.upper, res.mountpoint);
	pipeline_configure_result_clear(&res);
	return r;
}

int cmd_configure(int argc, char **argv)
{
	struct pipeline_source src = {0};
	int r = configure_cmd(argc, argv, &src);
	cli_source_clear(&src);
	return r;
}
