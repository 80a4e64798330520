/* mosaic commit: freezes a writable mount's upper layer into a signed config fragment, so that
 * the mount's fragments plus that one, without an upper, show what the mount shows now. */
#include "fusefs/fusefs.h"
#include "tools/cli.h"

#include <fcntl.h>
#include <string.h>

static const char usage_commit[] =
    "Usage: mosaic commit MOUNTPOINT -o STORE [--sign KEYID] [OPTIONS]\n"
    "\n"
    "Freezes the upper layer of a writable mosaic mount into a signed fragment of kind config\n"
    "and adds it to STORE: what the upper holds now, with deletions kept as whiteouts and\n"
    "replaced directories as opaque, so that the mount's fragments plus this one, mounted\n"
    "without an upper, show the tree the mount shows. The mount stays mounted and writable;\n"
    "stop writers first for a consistent snapshot. Prints DIGEST NAME -.\n"
    "\n"
    "  -o, --output STORE         the store to add to (default: $MOSAIC_STORE, config\n"
    "                             \"store\", /var/lib/mosaic/store)\n"
    "      --sign KEYID           the OpenPGP key that signs it ($MOSAIC_SIGN_KEY, config\n"
    "                             \"sign_key\")\n"
    "      --name NAME            fragment name and store ref (default: config)\n"
    "      --source-date-epoch T  timestamp of the image and descriptor (default:\n"
    "                             $SOURCE_DATE_EPOCH, else 0): the same upper and the same T\n"
    "                             give the same bytes\n"
    "      --json                 print a JSON object instead\n"
    "  -h, --help                 show this help\n";

enum { OPT_NAME = 256, OPT_SIGN, OPT_SDE, OPT_JSON };

static const char *status_string(json_object *s, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(s, key, &v) && v ? json_object_get_string(v) : NULL;
}

/* Overlay mode: the kernel writes through to the upper's files, so the upper already shows
 * every change; syncfs makes it durable before it is read. Fuse mode has no writeback cache:
 * every write is in the upper when write(2) returns, and the upper's syncfs covers the rest. */
static int sync_mount(const char *mountpoint, const char *upper, bool overlay)
{
	if (overlay) {
		_cleanup_close_ int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || syncfs(fd) < 0) {
			fprintf(stderr, "mosaic: syncing %s: %s\n", mountpoint, strerror(errno));
			return EXIT_FAIL;
		}
	}
	_cleanup_close_ int fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || syncfs(fd) < 0) {
		fprintf(stderr, "mosaic: upper %s: %s\n", upper, strerror(errno));
		return EXIT_FAIL;
	}
	return 0;
}

static void print_result(const struct fragment_info *info, const char *mountpoint,
                         const char *upper, const char *mode, bool json)
{
	if (!json) {
		printf("%s %s -\n", info->digest, info->name);
		return;
	}
	json_object *o = json_object_new_object();
	json_object_object_add(o, "digest", json_object_new_string(info->digest));
	json_object_object_add(o, "name", json_object_new_string(info->name));
	json_object_object_add(o, "kind",
	                       json_object_new_string(fragment_kind_to_string(info->kind)));
	json_object_object_add(o, "mountpoint", json_object_new_string(mountpoint));
	json_object_object_add(o, "upper", json_object_new_string(upper));
	json_object_object_add(o, "mode", json_object_new_string(mode));
	json_object_object_add(o, "files", json_object_new_int64(info->files));
	json_object_object_add(o, "content_size", json_object_new_int64(info->source_size));
	json_object_object_add(o, "image_size", json_object_new_int64(info->image_size));
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
	                                                     JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

int cli_commit(const char *mountpoint, const char *output, struct fragment_create_options *o,
               struct fragment_info *info)
{
	struct mosaic_error err = {0};
	json_object *st;
	if (fusefs_status(mountpoint, &st, &err) < 0)
		return cli_fail(&err);
	int rc = EXIT_OK;
	const char *upper = status_string(st, "upper"), *mode = status_string(st, "mode");
	const char *real = status_string(st, "mountpoint");
	json_object *v;
	bool running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
	if (!running) {
		fprintf(
		    stderr,
		    "mosaic: the daemon serving %s is not running; 'mosaic umount %s' and mount "
		    "it again before committing\n",
		    mountpoint, mountpoint);
		rc = EXIT_FAIL;
	} else if (!upper || !mode || (strcmp(mode, "overlay") && strcmp(mode, "fuse"))) {
		fprintf(stderr,
		        "mosaic: %s is mounted read-only: there is no upper layer to commit (mount "
		        "it with --upper DIR to make changes)\n",
		        mountpoint);
		rc = EXIT_USAGE;
	} else {
		rc = sync_mount(real ? real : mountpoint, upper, strcmp(mode, "overlay") == 0);
	}
	struct store *s = NULL;
	if (rc == EXIT_OK)
		rc = cli_open_store(output, true, &s);
	if (rc == EXIT_OK && fragment_create(s, upper, o, info, &err) < 0)
		rc = cli_fail(&err);
	store_free(s);
	json_object_put(st);
	return rc;
}

static int commit(const char *mountpoint, const char *output, struct fragment_create_options *o,
                  bool json)
{
	struct fragment_info info = {0};
	int rc = cli_commit(mountpoint, output, o, &info);
	if (rc != EXIT_OK)
		return rc;
	json_object *st;
	struct mosaic_error err = {0};
	if (fusefs_status(mountpoint, &st, &err) < 0) {
		fragment_info_clear(&info);
		return cli_fail(&err);
	}
	const char *real = status_string(st, "mountpoint");
	print_result(&info, real ? real : mountpoint, status_string(st, "upper"),
	             status_string(st, "mode"), json);
	fragment_info_clear(&info);
	json_object_put(st);
	return EXIT_OK;
}

int cmd_commit(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"sign", required_argument, NULL, OPT_SIGN},
	    {"name", required_argument, NULL, OPT_NAME},
	    {"source-date-epoch", required_argument, NULL, OPT_SDE},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct fragment_create_options o = {
	    .name = "config",
	    .kind = FRAGMENT_CONFIG,
	    .source_date_epoch = 0,
	    .overlay_upper = true,
	    .workers = ncpu > 0 ? (unsigned)ncpu : 1,
	};
	const char *output = NULL, *sign = NULL;
	bool json = false;
	/* Reproducible by default: a config fragment is a pure function of the upper. */
	const char *sde = getenv("SOURCE_DATE_EPOCH");
	char *end;
	if (sde && *sde) {
		o.source_date_epoch = strtoll(sde, &end, 10);
		if (*end || o.source_date_epoch < 0)
			return cli_usage(usage_commit, "bad $SOURCE_DATE_EPOCH '%s'", sde);
	}
	int c;
	while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			output = optarg;
			break;
		case OPT_SIGN:
			sign = optarg;
			break;
		case OPT_NAME:
			if (!*optarg || strchr(optarg, '/') || optarg[0] == '.')
				return cli_usage(usage_commit, "bad --name '%s'", optarg);
			o.name = optarg;
			break;
		case OPT_SDE:
			o.source_date_epoch = strtoll(optarg, &end, 10);
			if (!*optarg || *end || o.source_date_epoch < 0)
				return cli_usage(usage_commit, "bad --source-date-epoch '%s'",
				                 optarg);
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'h':
			fputs(usage_commit, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_commit, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind + 1 != argc)
		return cli_usage(usage_commit, "give exactly one MOUNTPOINT");
	_cleanup_free_ char *sign_key =
	    sign ? xstrdup(sign) : mosaic_config_get("MOSAIC_SIGN_KEY", "sign_key", NULL);
	if (!sign_key || !*sign_key) {
		fprintf(stderr,
		        "mosaic: commit signs the fragment it makes: give --sign KEYID (or "
		        "set MOSAIC_SIGN_KEY, or \"sign_key\" in /etc/mosaic/config.json)\n");
		return EXIT_USAGE;
	}
	o.sign_key = sign_key;
	return commit(argv[optind], output, &o, json);
}
