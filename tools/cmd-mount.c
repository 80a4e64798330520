/* mosaic mount | umount | status */
#include "tools/cli.h"

#include <string.h>
#include <time.h>

static const char usage_mount[] =
    "Usage: mosaic mount (MANIFEST | INDEX | FRAGMENT...) MOUNTPOINT [OPTIONS]\n"
    "\n"
    "Mounts the composition of FRAGMENTs (lowest first; store refs, digests or .sqfs paths),\n"
    "of a prebuilt INDEX, or of a MANIFEST that 'mosaic build' built (its base lowest, then\n"
    "its packages in dependency order, then its extra fragments). Nothing is unpacked: metadata "
    "comes from the index (built once per\n"
    "fragment list and cached), and a fragment is opened and verified when a file in it is\n"
    "first read. Read-only unless --upper is given. Returns once the mount is usable.\n"
    "\n"
    "  -s, --store STORE       the store fragments come from\n"
    "      --keyring FILE      trusted public keys\n"
    "      --lock FILE         the MANIFEST's lock (default: NAME.lock beside it)\n"
    "      --fact KEY=VALUE    a fact the MANIFEST's layers are matched against (repeatable)\n"
    "      --role ROLE         the same as --fact role=ROLE\n"
    "      --generation N      generation N of the MANIFEST's history (mosaic generations)\n"
    "      --upper DIR         writable upper layer (kernel overlayfs upper format)\n"
    "      --work DIR          overlayfs work dir (default: .NAME.work beside the upper)\n"
    "      --writable=MODE     overlay (kernel overlayfs over the view) or fuse (the daemon's\n"
    "                          own copy-up); without it: overlay, else fuse if refused\n"
    "      --read-only         no upper layer\n"
    "      --dev DIR           serve DIR live on top (repeatable): a change in it shows in\n"
    "                          the mount at once, unsigned\n"
    "  -f, --foreground        serve in the foreground until unmounted\n"
    "  -o OPTIONS              extra FUSE mount options\n"
    "  -h, --help              show this help\n";

static const char usage_umount[] = "Usage: mosaic umount MOUNTPOINT [--lazy]\n"
                                   "\n"
                                   "Unmounts every layer mosaic mounted there and waits for "
                                   "the daemon to exit.\n"
                                   "  --lazy   detach even while busy\n";

static const char usage_restart[] =
    "Usage: mosaic restart MOUNTPOINT\n"
    "\n"
    "Starts this mosaic binary as the mount's daemon and hands it the running daemon's FUSE\n"
    "session (after an upgrade, say): the view, its generations, the upper and the open files\n"
    "come along, and processes using the mount see a short pause, not an error. When the\n"
    "daemon is gone (killed), the mount comes back with what it served last instead; files\n"
    "that were open on it must be opened again.\n";

static const char usage_status[] = "Usage: mosaic status MOUNTPOINT [--json]\n"
                                   "\n"
                                   "Shows the daemon's mode, fragments, what it serves (and "
                                   "its live dev\n"
                                   "directories), the switches made, fragment opens, "
                                   "and the upper's\n"
                                   "path and size (bytes allocated, hard links once: "
                                   "upper_size and\n"
                                   "upper_entries in --json).\n";

enum { OPT_UPPER = 256, OPT_WORK, OPT_WRITABLE, OPT_READ_ONLY, OPT_DEV };

static int mount_cmd(int argc, char **argv, struct pipeline_source *src, char ***devp)
{
	static const struct option opts[] = {CLI_SOURCE_OPTIONS,
	                                     CLI_GENERATION_OPTION,
	                                     {"upper", required_argument, NULL, OPT_UPPER},
	                                     {"work", required_argument, NULL, OPT_WORK},
	                                     {"writable", required_argument, NULL, OPT_WRITABLE},
	                                     {"read-only", no_argument, NULL, OPT_READ_ONLY},
	                                     {"dev", required_argument, NULL, OPT_DEV},
	                                     {"foreground", no_argument, NULL, 'f'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	struct fusefs_options o = {.writable = FUSEFS_WRITABLE_AUTO};
	bool read_only = false;
	int c;
	while ((c = getopt_long(argc, argv, "s:fo:h", opts, NULL)) != -1) {
		int taken = cli_source_option(c, optarg, src, usage_mount);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		switch (c) {
		case OPT_UPPER:
			o.upper = optarg;
			break;
		case OPT_WORK:
			o.work = optarg;
			break;
		case OPT_WRITABLE:
			if (strcmp(optarg, "overlay") == 0)
				o.writable = FUSEFS_WRITABLE_OVERLAY;
			else if (strcmp(optarg, "fuse") == 0)
				o.writable = FUSEFS_WRITABLE_FUSE;
			else
				return cli_usage(usage_mount,
				                 "--writable is overlay or fuse, not '%s'", optarg);
			break;
		case OPT_READ_ONLY:
			read_only = true;
			break;
		case OPT_DEV:
			*devp = xrealloc(*devp, (o.n_dev + 1) * sizeof(**devp));
			(*devp)[o.n_dev++] = optarg;
			o.dev_dirs = *devp;
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'o':
			o.fuse_options = optarg;
			break;
		case 'h':
			fputs(usage_mount, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_mount, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind < 2)
		return cli_usage(usage_mount, "give (INDEX | FRAGMENT...) and a MOUNTPOINT");
	if (read_only && o.upper)
		return cli_usage(usage_mount, "--read-only and --upper exclude each other");
	o.mountpoint = argv[argc - 1];
	src->args = argv + optind;
	src->n_args = argc - optind - 1;

	struct mosaic_error err = {0};
	struct pipeline_mount_result res = {0};
	if (pipeline_mount(src, &o, &res, cli_events(), &err) < 0)
		return cli_fail(&err);
	if (o.foreground) {
	} else if (res.picked == FUSEFS_READ_ONLY) {
		printf("mounted %s read-only (%zu fragments)\n", o.mountpoint, res.n_fragments);
	} else {
		printf("mounted %s writable with %s (upper %s, %zu fragments)\n", o.mountpoint,
		       res.picked == FUSEFS_WRITABLE_OVERLAY ? "kernel overlayfs over the view"
		                                             : "the daemon's own copy-up",
		       o.upper, res.n_fragments);
		if (res.fallback)
			printf("(kernel overlayfs was refused: %s)\n", res.fallback);
	}
	free(res.fallback);
	return EXIT_OK;
}

int cmd_mount(int argc, char **argv)
{
	struct pipeline_source src = {0};
	char **dev = NULL;
	int r = mount_cmd(argc, argv, &src, &dev);
	free(dev);
	cli_source_clear(&src);
	return r;
}

int cmd_umount(int argc, char **argv)
{
	bool lazy = false;
	const struct cli_flag flags[] = {{"lazy", &lazy}, {}};
	int r = cli_flags(argc, argv, usage_umount, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	if (fusefs_umount(argv[optind], lazy, &err) < 0)
		return cli_fail(&err);
	return EXIT_OK;
}

int cmd_status(int argc, char **argv)
{
	bool json = false;
	const struct cli_flag flags[] = {{"json", &json}, {}};
	int r = cli_flags(argc, argv, usage_status, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	json_object *s;
	if (pipeline_status(argv[optind], &s, &err) < 0)
		return cli_fail(&err);
	if (json) {
		printf("%s\n", json_object_to_json_string_ext(
		                   s, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	} else {
		json_object *v;
#define GET(k) (json_object_object_get_ex(s, k, &v) && v ? json_object_get_string(v) : "-")
		printf("mountpoint:     %s\n", GET("mountpoint"));
		printf("daemon pid:     %s (%s)\n", GET("pid"), GET("running"));
		printf("mode:           %s\n", GET("mode"));
		printf("upper:          %s", GET("upper"));
		if (json_object_object_get_ex(s, "upper_size", &v)) {
			double size = json_object_get_int64(v);
			const char *unit = "bytes";
			static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", NULL};
			for (const char *const *u = units; *u && size >= 1024; u++) {
				size /= 1024;
				unit = *u;
			}
			printf(" (%.*f %s in %s entries)", *unit == 'b' ? 0 : 1, size, unit,
			       GET("upper_entries"));
		}
		printf("\n");
		printf("index:          %s\n", GET("index"));
		json_object_object_get_ex(s, "fragments", &v);
		printf("fragments:      %zu\n", v ? json_object_array_length(v) : 0);
		json_object *g;
		if (json_object_object_get_ex(s, "generation", &g) && g) {
			json_object *x;
			printf("serving:        %s", json_object_object_get_ex(g, "source", &x)
			                                 ? json_object_get_string(x)
			                                 : "?");
			if (json_object_object_get_ex(g, "path", &x))
				printf(" %s", json_object_get_string(x));
			if (json_object_object_get_ex(g, "generation", &x))
				printf(", generation %s", json_object_get_string(x));
			printf("\n");
		}
		json_object_object_get_ex(s, "dev", &v);
		for (size_t i = 0; v && i < json_object_array_length(v); i++)
			printf("dev:            %s (live, unsigned)\n",
			       json_object_get_string(json_object_array_get_idx(v, i)));
		printf("fragment opens: %s\n", GET("fragment_opens"));
		printf("invalidations:  %s\n", GET("invalidations"));
		json_object_object_get_ex(s, "history", &v);
		size_t nh = v ? json_object_array_length(v) : 0;
		printf("switches:       %zu\n", nh);
		for (size_t i = nh > 10 ? nh - 10 : 0; i < nh; i++) {
			json_object *e = json_object_array_get_idx(v, i), *t, *why, *ms;
			char when[32] = "?";
			if (json_object_object_get_ex(e, "time", &t)) {
				time_t tt = json_object_get_int64(t);
				strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&tt));
			}
			json_object_object_get_ex(e, "reason", &why);
			json_object_object_get_ex(e, "ms", &ms);
			printf("  %s  %s (%.1f ms)\n", when,
			       why ? json_object_get_string(why) : "?",
			       ms ? json_object_get_double(ms) : 0.0);
		}
#undef GET
	}
	json_object_put(s);
	return EXIT_OK;
}

int cmd_restart(int argc, char **argv)
{
	const struct cli_flag flags[] = {{}};
	int r = cli_flags(argc, argv, usage_restart, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	struct fusefs_restart_result res;
	if (fusefs_restart(argv[optind], &res, &err) < 0)
		return cli_fail(&err);
	if (res.remounted)
		printf(
		    "the daemon of %s (pid %d) was gone: mounted again with what it served last\n",
		    argv[optind], (int)res.old_pid);
	else
		printf("restarted the daemon of %s: pid %d took the session over from pid %d\n",
		       argv[optind], (int)res.pid, (int)res.old_pid);
	return EXIT_OK;
}
