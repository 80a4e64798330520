/* mosaic commit: freezes a writable mount's upper layer into a signed config fragment, so that
 * the mount's fragments plus that one, without an upper, show what the mount shows now. */
#include "tools/cli.h"

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

static int commit(const char *mountpoint, const char *output,
                  const struct fragment_create_options *o, bool json)
{
	struct mosaic_error err = {0};
	struct pipeline_commit_result res = {0};
	int r = pipeline_commit(mountpoint, output, o, &res, &err);
	if (r == 0)
		print_result(&res.info, res.mountpoint, res.upper, res.mode, json);
	pipeline_commit_result_clear(&res);
	return r < 0 ? cli_fail(&err) : EXIT_OK;
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
	    .source_date_epoch = -1,
	    .overlay_upper = true,
	    .workers = ncpu > 0 ? (unsigned)ncpu : 1,
	};
	const char *output = NULL, *sign = NULL;
	bool json = false;
	char *end;
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
	/* Reproducible by default: a config fragment is a pure function of the upper, stamped
	 * --source-date-epoch, else $SOURCE_DATE_EPOCH, else 0. */
	int r;
	if (o.source_date_epoch < 0 && (r = cli_source_date_epoch(&o.source_date_epoch)))
		return r;
	if (o.source_date_epoch < 0)
		o.source_date_epoch = 0;
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
