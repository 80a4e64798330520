/* mosaic fragment create|verify|inspect */
#include "tools/cli.h"

#include <string.h>
#include <sys/stat.h>

static const char usage_fragment[] =
    "Usage: mosaic fragment COMMAND [ARGS...]\n"
    "\n"
    "  create SRC... -o STORE   make signed fragments from directories, tars, .deb or .rpm\n"
    "  verify FRAGMENT...       check signature, digest and image\n"
    "  inspect FRAGMENT         list the contents like ls -lR\n";

static const char usage_create[] =
    "Usage: mosaic fragment create SRC... -o STORE [OPTIONS]\n"
    "\n"
    "Turns each SRC (a directory, a tar archive in any compression, a .deb or an .rpm) into a\n"
    "squashfs fragment (zstd), its JSON descriptor and a detached OpenPGP signature, and adds\n"
    "them to STORE (created if missing). Prints one line per fragment: DIGEST NAME VERSION.\n"
    "\n"
    "  -o, --output STORE         the store to add to\n"
    "      --name N               fragment name (default: package name or file name)\n"
    "      --version V            version (default: the package's)\n"
    "      --arch A               architecture (default: the package's)\n"
    "      --kind K               base|package|config|dev (default: package for .deb/.rpm)\n"
    "      --sign KEYID           sign the descriptor with KEYID from $GNUPGHOME\n"
    "      --source-date-epoch T  timestamp for the image and descriptor (default:\n"
    "                             $SOURCE_DATE_EPOCH, else now); same input + same T gives\n"
    "                             byte-identical image and descriptor\n"
    "      --owner UID:GID        directory sources: own every entry by UID:GID\n"
    "      --keyring FILE         keys to check .rpm header signatures against\n"
    "  -l, --compression-level L  zstd level 1..22 (default 15, as mksquashfs; level 3 makes\n"
    "                             fragments about 4x faster and 13 percent larger)\n"
    "  -j, --jobs N               fragments made in parallel (default: number of CPUs)\n"
    "      --json                 print a JSON array of results instead\n"
    "  -h, --help                 show this help\n";

static const char usage_verify[] =
    "Usage: mosaic fragment verify FRAGMENT... [-s STORE] [--keyring FILE]\n"
    "\n"
    "FRAGMENT is an image path (with .json and .json.sig beside it), a digest or unique digest\n"
    "prefix, or a ref name in the store. Checks that the descriptor's signature is good for a\n"
    "key in the keyring, that the image matches the descriptor's size and digest, and that it\n"
    "parses as squashfs.\n"
    "\n"
    "  -s, --store STORE   the store (default: $MOSAIC_STORE, config, /var/lib/mosaic/store)\n"
    "      --keyring FILE  trusted public keys (default: $MOSAIC_KEYRING, config,\n"
    "                      /etc/mosaic/keyring.gpg)\n"
    "  -h, --help          show this help\n";

static const char usage_inspect[] =
    "Usage: mosaic fragment inspect FRAGMENT [-s STORE] [--json]\n"
    "\n"
    "Lists every entry with mode, link count, owner, size (or device numbers), mtime, path and\n"
    "symlink target; --json adds xattrs (hex values).\n"
    "\n"
    "  -s, --store STORE   the store to resolve FRAGMENT in\n"
    "      --json          print JSON\n"
    "  -h, --help          show this help\n";

enum {
	OPT_NAME = 256,
	OPT_VERSION,
	OPT_ARCH,
	OPT_KIND,
	OPT_SIGN,
	OPT_SDE,
	OPT_OWNER,
	OPT_KEYRING,
	OPT_JSON,
};

/* The progress line on a terminal: how many fragments are done, and the last one's source. */
static void show_progress(size_t done, size_t n, const struct fragment_job *job, void *data)
{
	fprintf(stderr, "\r[%zu/%zu] %-60.60s", done, n, job->src);
}

static int fragment_create_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"name", required_argument, NULL, OPT_NAME},
	    {"version", required_argument, NULL, OPT_VERSION},
	    {"arch", required_argument, NULL, OPT_ARCH},
	    {"kind", required_argument, NULL, OPT_KIND},
	    {"sign", required_argument, NULL, OPT_SIGN},
	    {"source-date-epoch", required_argument, NULL, OPT_SDE},
	    {"owner", required_argument, NULL, OPT_OWNER},
	    {"keyring", required_argument, NULL, OPT_KEYRING},
	    {"jobs", required_argument, NULL, 'j'},
	    {"compression-level", required_argument, NULL, 'l'},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	struct fragment_create_options o = {.kind = FRAGMENT_KIND_AUTO, .source_date_epoch = -1};
	const char *output = NULL, *keyring_path = NULL;
	long jobs = sysconf(_SC_NPROCESSORS_ONLN);
	bool json = false;
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "o:j:l:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			output = optarg;
			break;
		case OPT_NAME:
			o.name = optarg;
			break;
		case OPT_VERSION:
			o.version = optarg;
			break;
		case OPT_ARCH:
			o.arch = optarg;
			break;
		case OPT_KIND:
			if ((o.kind = fragment_kind_from_string(optarg)) < 0)
				return cli_usage(usage_create, "unknown kind '%s'", optarg);
			break;
		case OPT_SIGN:
			o.sign_key = optarg;
			break;
		case OPT_SDE:
			o.source_date_epoch = strtoll(optarg, &end, 10);
			if (*end || o.source_date_epoch < 0)
				return cli_usage(usage_create, "bad --source-date-epoch '%s'",
				                 optarg);
			break;
		case OPT_OWNER: {
			unsigned long u, g;
			if (sscanf(optarg, "%lu:%lu", &u, &g) != 2)
				return cli_usage(usage_create, "bad --owner '%s' (want UID:GID)",
				                 optarg);
			o.owner_set = true;
			o.uid = u;
			o.gid = g;
			break;
		}
		case OPT_KEYRING:
			keyring_path = optarg;
			break;
		case 'j':
			jobs = strtol(optarg, &end, 10);
			if (*end || jobs < 1)
				return cli_usage(usage_create, "bad --jobs '%s'", optarg);
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'l':
			o.level = strtol(optarg, &end, 10);
			if (*end || o.level < 1 || o.level > 22)
				return cli_usage(usage_create,
				                 "bad --compression-level '%s' (1..22)", optarg);
			break;
		case 'h':
			fputs(usage_create, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_create, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage(usage_create, "no SRC given");
	if (!output)
		return cli_usage(usage_create, "no store given (-o STORE)");
	/* Without --source-date-epoch: $SOURCE_DATE_EPOCH, else now (-1). */
	int r;
	if (o.source_date_epoch < 0 && (r = cli_source_date_epoch(&o.source_date_epoch)))
		return r;

	struct store *s;
	r = cli_open_store(output, true, &s);
	if (r)
		return r;
	if (keyring_path && (r = cli_open_keyring(keyring_path, &o.keyring))) {
		store_free(s);
		return r;
	}
	size_t n = argc - optind;
	if ((size_t)jobs > n)
		jobs = n;
	/* One image at a time gets every core; many images get one core each. */
	o.workers = jobs == 1 ? (unsigned)sysconf(_SC_NPROCESSORS_ONLN) : 1;
	bool progress = isatty(2) && n > 1;
	struct fragment_job *work = xcalloc(n, sizeof(*work));
	for (size_t i = 0; i < n; i++)
		work[i] = (struct fragment_job){.src = argv[optind + i], .o = o};
	/* Each job's r and err say what failed; all of them are reported below. */
	fragment_create_many(s, work, n, (unsigned)jobs, progress ? show_progress : NULL, NULL);
	if (progress)
		fputc('\n', stderr);

	int rc = EXIT_OK;
	json_object *arr = json ? json_object_new_array() : NULL;
	for (size_t i = 0; i < n; i++) {
		struct fragment_job *j = &work[i];
		if (j->r < 0) {
			int e = cli_fail(&j->err);
			rc = rc == EXIT_OK || e == EXIT_FAIL ? e : rc;
			continue;
		}
		if (json) {
			json_object *o2 = json_object_new_object();
			json_object_object_add(o2, "source", json_object_new_string(j->src));
			json_object_object_add(o2, "digest",
			                       json_object_new_string(j->info.digest));
			json_object_object_add(o2, "name", json_object_new_string(j->info.name));
			json_object_object_add(
			    o2, "version",
			    j->info.version ? json_object_new_string(j->info.version) : NULL);
			json_object_object_add(
			    o2, "kind",
			    json_object_new_string(fragment_kind_to_string(j->info.kind)));
			json_object_object_add(o2, "files", json_object_new_int64(j->info.files));
			json_object_object_add(o2, "source_size",
			                       json_object_new_int64(j->info.source_size));
			json_object_object_add(o2, "image_size",
			                       json_object_new_int64(j->info.image_size));
			json_object_array_add(arr, o2);
		} else {
			printf("%s %s %s\n", j->info.digest, j->info.name,
			       j->info.version ? j->info.version : "-");
		}
		fragment_info_clear(&j->info);
	}
	if (json) {
		printf("%s\n", json_object_to_json_string_ext(
		                   arr, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(arr);
	}
	free(work);
	keyring_free(o.keyring);
	store_free(s);
	return rc;
}

static int fragment_verify_cmd(int argc, char **argv)
{
	static const struct option opts[] = {{"store", required_argument, NULL, 's'},
	                                     {"keyring", required_argument, NULL, OPT_KEYRING},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	const char *store = NULL, *keyring_path = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			store = optarg;
			break;
		case OPT_KEYRING:
			keyring_path = optarg;
			break;
		case 'h':
			fputs(usage_verify, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_verify, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage(usage_verify, "no FRAGMENT given");
	struct keyring *k;
	int r = cli_open_keyring(keyring_path, &k);
	if (r)
		return r;
	int rc = EXIT_OK;
	for (int i = optind; i < argc; i++) {
		_cleanup_free_ char *path = NULL;
		if ((r = cli_fragment_path(argv[i], store, &path))) {
			rc = r;
			continue;
		}
		struct mosaic_error err = {0};
		struct fragment_descriptor d;
		if (fragment_verify(k, path, &d, &err) < 0) {
			int e = cli_fail(&err);
			rc = rc == EXIT_FAIL ? rc : e;
			continue;
		}
		printf("%s %s %s: OK\n", d.digest, d.name, d.version ? d.version : "-");
		fragment_descriptor_clear(&d);
	}
	keyring_free(k);
	return rc;
}

static int fragment_inspect_cmd(int argc, char **argv)
{
	static const struct option opts[] = {{"store", required_argument, NULL, 's'},
	                                     {"json", no_argument, NULL, OPT_JSON},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	const char *store = NULL;
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			store = optarg;
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'h':
			fputs(usage_inspect, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_inspect, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind + 1 != argc)
		return cli_usage(usage_inspect, "give exactly one FRAGMENT");
	_cleanup_free_ char *path = NULL;
	int r = cli_fragment_path(argv[optind], store, &path);
	if (r)
		return r;
	struct mosaic_error err = {0};
	if (fragment_inspect(path, json, stdout, &err) < 0)
		return cli_fail(&err);
	return EXIT_OK;
}

int cmd_fragment(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage(usage_fragment, "no fragment command given");
	const char *sub = argv[1];
	if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0) {
		fputs(usage_fragment, stdout);
		return EXIT_OK;
	}
	if (strcmp(sub, "create") == 0)
		return fragment_create_cmd(argc - 1, argv + 1);
	if (strcmp(sub, "verify") == 0)
		return fragment_verify_cmd(argc - 1, argv + 1);
	if (strcmp(sub, "inspect") == 0)
		return fragment_inspect_cmd(argc - 1, argv + 1);
	return cli_usage(usage_fragment, "unknown fragment command '%s'", sub);
}
