/* mosaic configure: turns a writable mount of unpacked packages into a configured system, the
 * way debootstrap's second stage does, with every change landing in the mount's upper layer. */
#include "configure/configure.h"
#include "fusefs/fusefs.h"
#include "tools/cli.h"

#include <libgen.h>
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

/* ---- configure_mount: a running writable mount configured by configure/ ---------------------- */

static const char *status_string(json_object *s, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(s, key, &v) && v ? json_object_get_string(v) : NULL;
}

/* The real mountpoint of a running writable mosaic mount; caller frees. */
static int writable_mount(const char *mountpoint, char **root)
{
	struct mosaic_error err = {0};
	json_object *st;
	if (fusefs_status(mountpoint, &st, &err) < 0)
		return cli_fail(&err);
	json_object *v;
	bool running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
	const char *mode = status_string(st, "mode"), *real = status_string(st, "mountpoint");
	int rc = EXIT_OK;
	if (!running) {
		fprintf(
		    stderr,
		    "mosaic: the daemon serving %s is not running; 'mosaic umount %s' and mount "
		    "it again\n",
		    mountpoint, mountpoint);
		rc = EXIT_FAIL;
	} else if (!mode || (strcmp(mode, "overlay") && strcmp(mode, "fuse"))) {
		fprintf(stderr,
		        "mosaic: %s is mounted read-only: configure writes into an upper layer "
		        "(mount it with --upper DIR)\n",
		        mountpoint);
		rc = EXIT_USAGE;
	} else {
		*root = xstrdup(real ? real : mountpoint);
	}
	json_object_put(st);
	return rc;
}

/* configure/'s events, printed as configure always printed them: a step's output on stdout
 * behind its name, everything else on stderr. */
static void print_event(const struct configure_event *ev, void *data)
{
	switch (ev->kind) {
	case CONFIGURE_STEP:
		fprintf(stderr, "mosaic: configure: %s\n", ev->step);
		break;
	case CONFIGURE_OUTPUT:
		printf("[%s] %s\n", ev->step, ev->text);
		/* Lines come as the step prints them, also when stdout is a pipe. */
		fflush(stdout);
		break;
	case CONFIGURE_INFO:
	case CONFIGURE_ERROR:
		fprintf(stderr, "mosaic: configure: %s\n", ev->text);
		break;
	case CONFIGURE_DETAIL:
		fprintf(stderr, "%s\n", ev->text);
		break;
	}
}

int configure_mount(const char *mountpoint, json_object *manifest, unsigned timeout)
{
	_cleanup_free_ char *root = NULL;
	int rc = writable_mount(mountpoint, &root);
	if (rc != EXIT_OK)
		return rc;
	struct mosaic_error err = {0};
	struct configure_options o = {.timeout = timeout, .event = print_event};
	if (mosaic_source_date_epoch(&o.source_date_epoch, &err) < 0 ||
	    configure_root(root, manifest, &o, &err) < 0)
		return cli_fail(&err);
	return EXIT_OK;
}

/* ---- the command ----------------------------------------------------------------------------- */

/* Mounts manifest's composition at mnt with upper, as 'mosaic mount MANIFEST MNT --upper DIR'. */
static int mount_manifest(const char *manifest, const char *mnt, const char *upper,
                          const char *store, const char *keyring, const char *lock)
{
	_cleanup_free_ char *up = xstrdup(upper);
	int r = mkdir_p(mnt, 0755);
	if (r == 0)
		r = mkdir_p(dirname(up), 0755);
	if (r < 0) {
		fprintf(stderr, "mosaic: configure: making %s: %s\n", mnt, strerror(-r));
		return EXIT_FAIL;
	}
	struct fusefs_options fo = {
	    .mountpoint = mnt, .upper = upper, .writable = FUSEFS_WRITABLE_AUTO};
	char *args[] = {(char *)manifest};
	return cli_mount(args, 1, store, keyring, lock, &fo, NULL);
}

static bool is_manifest(const char *path)
{
	size_t l = strlen(path);
	return (l > 5 && strcmp(path + l - 5, ".yaml") == 0) ||
	       (l > 4 && strcmp(path + l - 4, ".yml") == 0);
}

static bool mosaic_mounted(const char *mountpoint)
{
	json_object *st;
	if (fusefs_status(mountpoint, &st, NULL) < 0)
		return false;
	json_object_put(st);
	return true;
}

struct configure_opts {
	const char *manifest, *mountpoint, *store, *keyring, *lock, *upper;
	json_object *facts;
	unsigned timeout;
};

static int configure_manifest(struct configure_opts *o)
{
	json_object *model = NULL;
	int rc = cli_manifest_load(o->manifest, o->facts, &model);
	if (rc)
		return rc;
	_cleanup_free_ char *lock = o->lock ? xstrdup(o->lock) : cli_lock_path(o->manifest, model);
	_cleanup_free_ char *lock_dir = xstrdup(lock);
	_cleanup_free_ char *abs_dir = realpath(dirname(lock_dir), NULL);
	/* Beside the lock, under the manifest's name: a mount of its own per manifest. */
	_cleanup_free_ char *base =
	    xasprintf("%s/roots/%s", abs_dir ? abs_dir : lock_dir,
	              json_object_get_string(json_object_object_get(model, "name")));
	_cleanup_free_ char *mnt = o->mountpoint ? xstrdup(o->mountpoint) : path_join(base, "mnt");
	_cleanup_free_ char *upper = o->upper ? xstrdup(o->upper) : path_join(base, "upper");
	bool mounted_here = false;
	if (!mosaic_mounted(mnt)) {
		rc = mount_manifest(o->manifest, mnt, upper, o->store, o->keyring, o->lock);
		mounted_here = rc == EXIT_OK;
	} else if (o->upper) {
		rc = cli_usage(usage_configure,
		               "%s is mounted already: --upper is for a mount that "
		               "configure makes",
		               mnt);
	}
	if (rc == EXIT_OK)
		rc = configure_mount(mnt, model, o->timeout);
	if (mounted_here)
		fprintf(stderr,
		        "mosaic: configure: %s stays mounted (upper %s); 'mosaic umount %s' when "
		        "done\n",
		        mnt, upper, mnt);
	json_object_put(model);
	return rc;
}

enum {
	OPT_STEP_TIMEOUT = 256,
	OPT_MANIFEST,
	OPT_KEYRING,
	OPT_LOCK,
	OPT_UPPER,
	OPT_FACT,
	OPT_ROLE,
};

int cmd_configure(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
	    {"manifest", required_argument, NULL, OPT_MANIFEST},
	    {"store", required_argument, NULL, 's'},
	    {"keyring", required_argument, NULL, OPT_KEYRING},
	    {"lock", required_argument, NULL, OPT_LOCK},
	    {"upper", required_argument, NULL, OPT_UPPER},
	    {"fact", required_argument, NULL, OPT_FACT},
	    {"role", required_argument, NULL, OPT_ROLE},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	struct configure_opts o = {.timeout = 600, .facts = json_object_new_object()};
	int c, r = -1;
	char *end;
	while (r < 0 && (c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_STEP_TIMEOUT: {
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 10);
			if (!*optarg || *end || errno || v > 7 * 24 * 3600 || optarg[0] == '-')
				r = cli_usage(usage_configure, "bad --step-timeout '%s'", optarg);
			o.timeout = (unsigned)v;
			break;
		}
		case OPT_MANIFEST:
			o.manifest = optarg;
			break;
		case 's':
			o.store = optarg;
			break;
		case OPT_KEYRING:
			o.keyring = optarg;
			break;
		case OPT_LOCK:
			o.lock = optarg;
			break;
		case OPT_UPPER:
			o.upper = optarg;
			break;
		case OPT_FACT:
			if (cli_fact_add(o.facts, optarg) < 0)
				r = cli_usage(usage_configure, "--fact takes KEY=VALUE, not '%s'",
				              optarg);
			break;
		case OPT_ROLE: {
			_cleanup_free_ char *kv = xasprintf("role=%s", optarg);
			cli_fact_add(o.facts, kv);
			break;
		}
		case 'h':
			fputs(usage_configure, stdout);
			r = EXIT_OK;
			break;
		default:
			r = cli_usage(usage_configure, "unknown option '%s'", argv[optind - 1]);
		}
	}
	int n = argc - optind;
	char **ops = argv + optind;
	if (r < 0 && (n < 1 || n > 2))
		r = cli_usage(usage_configure, "give MANIFEST [MOUNTPOINT], or MOUNTPOINT");
	if (r < 0 && is_manifest(ops[0])) {
		if (o.manifest)
			r = cli_usage(usage_configure,
			              "give the manifest once: as the first operand "
			              "or with --manifest");
		o.manifest = ops[0];
		o.mountpoint = n == 2 ? ops[1] : NULL;
	} else if (r < 0) {
		if (n == 2)
			r = cli_usage(usage_configure,
			              "'%s' is not a manifest (NAME.yaml): give "
			              "MANIFEST [MOUNTPOINT], or MOUNTPOINT",
			              ops[0]);
		o.mountpoint = ops[0];
	}
	if (r < 0 && !o.manifest && (o.store || o.keyring || o.lock || o.upper))
		r = cli_usage(usage_configure, "--store, --keyring, --lock and --upper are for "
		                               "mounting a MANIFEST");
	if (r < 0)
		r = o.manifest ? configure_manifest(&o)
		               : configure_mount(o.mountpoint, NULL, o.timeout);
	json_object_put(o.facts);
	return r;
}
