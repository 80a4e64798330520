/* mosaic compose: fragments -> composition index; --list and --conflicts. */
#include "compose/compose.h"
#include "tools/cli.h"

#include <string.h>
#include <sys/stat.h>

static const char usage_compose[] =
    "Usage: mosaic compose FRAGMENT... -o INDEX [-s STORE] [--keyring FILE] [--strict]\n"
    "       mosaic compose --conflicts FRAGMENT... [-s STORE] [--keyring FILE]\n"
    "       mosaic compose --list INDEX\n"
    "\n"
    "Builds the composition index of FRAGMENTs (lowest first; each a store ref, digest or\n"
    ".sqfs path, verified against the keyring) with kernel overlayfs's rules: a higher\n"
    "non-directory replaces what lies below, directories merge, whiteouts (0/0 character\n"
    "devices, .wh.NAME) delete, opaque directories (.wh..wh..opq, trusted.overlay.opaque=y)\n"
    "hide what lies below.\n"
    "\n"
    "  -o, --output INDEX   where to write the index\n"
    "      --strict         fail when two package fragments ship one path with other content\n"
    "      --conflicts      only list such paths (\"PATH LOWER UPPER\")\n"
    "      --list INDEX     print an index's fragments and counts\n"
    "  -s, --store STORE    the store FRAGMENTs are resolved in\n"
    "      --keyring FILE   trusted public keys\n"
    "  -h, --help           show this help\n";

static int list_index(const char *path)
{
	struct mosaic_error err = {0};
	struct compose_index *x;
	if (compose_index_open(path, &x, &err) < 0)
		return cli_fail(&err);
	uint32_t dirs = 0, files = 0, links = 0, other = 0;
	for (uint32_t i = 1; i <= compose_index_inodes(x); i++) {
		mode_t m = compose_index_inode(x, i)->mode;
		dirs += S_ISDIR(m), files += S_ISREG(m), links += S_ISLNK(m);
		other += !S_ISDIR(m) && !S_ISREG(m) && !S_ISLNK(m);
	}
	printf("index %s: version %d, %u fragments, %u inodes (%u directories, %u files, %u "
	       "symlinks, %u other)\n",
	       path, COMPOSE_INDEX_VERSION, compose_index_fragments(x), compose_index_inodes(x),
	       dirs, files, links, other);
	for (uint32_t i = 0; i < compose_index_fragments(x); i++) {
		char d[65];
		compose_index_fragment_digest(x, i, d);
		printf("%3u %s\n", i, d);
	}
	compose_index_close(x);
	return EXIT_OK;
}

enum { OPT_KEYRING = 256, OPT_STRICT, OPT_CONFLICTS, OPT_LIST };

int cmd_compose(int argc, char **argv)
{
	static const struct option opts[] = {{"output", required_argument, NULL, 'o'},
	                                     {"store", required_argument, NULL, 's'},
	                                     {"keyring", required_argument, NULL, OPT_KEYRING},
	                                     {"strict", no_argument, NULL, OPT_STRICT},
	                                     {"conflicts", no_argument, NULL, OPT_CONFLICTS},
	                                     {"list", no_argument, NULL, OPT_LIST},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	const char *output = NULL, *store = NULL, *keyring = NULL;
	bool strict = false, conflicts = false, list = false;
	int c;
	while ((c = getopt_long(argc, argv, "o:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			output = optarg;
			break;
		case 's':
			store = optarg;
			break;
		case OPT_KEYRING:
			keyring = optarg;
			break;
		case OPT_STRICT:
			strict = true;
			break;
		case OPT_CONFLICTS:
			conflicts = true;
			break;
		case OPT_LIST:
			list = true;
			break;
		case 'h':
			fputs(usage_compose, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_compose, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (list) {
		if (optind + 1 != argc)
			return cli_usage(usage_compose, "--list takes exactly one INDEX");
		return list_index(argv[optind]);
	}
	if (optind >= argc)
		return cli_usage(usage_compose, "no FRAGMENT given");
	if (!output && !conflicts)
		return cli_usage(usage_compose, "no index given (-o INDEX)");

	const struct pipeline_source src = {
	    .args = argv + optind, .n_args = argc - optind, .store = store, .keyring = keyring};
	struct mosaic_error err = {0};
	struct compose_result res = {0};
	_cleanup_strv_ char **names = NULL;
	if (pipeline_compose(&src, conflicts ? NULL : output, strict && !conflicts, &res, &names,
	                     &err) < 0) {
		compose_result_clear(&res);
		return cli_fail(&err);
	}
	if (conflicts) {
		for (size_t i = 0; i < res.n_conflicts; i++)
			printf("%s %s %s\n", res.conflicts[i].path, names[res.conflicts[i].lower],
			       names[res.conflicts[i].upper]);
	} else {
		printf("%s: %zu fragments, %u inodes, %ju directory entries, %zu conflicts (higher "
		       "fragment wins)\n",
		       output, (size_t)(argc - optind), res.inodes, (uintmax_t)res.dirents,
		       res.n_conflicts);
	}
	compose_result_clear(&res);
	return EXIT_OK;
}
