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

void cli_inputs_free(struct cli_inputs *ci)
{
	for (size_t i = 0; i < ci->n; i++) {
		free((char *)ci->in[i].image_path);
		free((char *)ci->in[i].digest);
		free((char *)ci->in[i].name);
	}
	free(ci->in);
	memset(ci, 0, sizeof(*ci));
}

int cli_resolve_inputs(char **args, size_t n, const char *store, const char *keyring_path,
                       struct cli_inputs *out)
{
	struct keyring *k;
	int r = cli_open_keyring(keyring_path, &k);
	if (r)
		return r;
	out->in = xcalloc(n, sizeof(*out->in));
	out->n = 0;
	for (size_t i = 0; i < n; i++) {
		char *path = NULL;
		if ((r = cli_fragment_path(args[i], store, &path)))
			break;
		struct mosaic_error err = {0};
		struct fragment_descriptor d;
		if (fragment_verify(k, path, &d, &err) < 0) {
			free(path);
			r = cli_fail(&err);
			break;
		}
		out->in[out->n++] = (struct compose_input){
		    .image_path = path,
		    .digest = xstrdup(d.digest),
		    .name = xstrdup(d.name),
		    .package = d.kind == FRAGMENT_PACKAGE,
		};
		fragment_descriptor_clear(&d);
	}
	keyring_free(k);
	if (r)
		cli_inputs_free(out);
	return r;
}

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

	struct cli_inputs ci;
	int r = cli_resolve_inputs(argv + optind, argc - optind, store, keyring, &ci);
	if (r)
		return r;
	struct mosaic_error err = {0};
	struct compose_result res;
	_cleanup_free_ char *scratch = NULL;
	if (conflicts) {
		_cleanup_free_ char *cache = mosaic_cache_dir();
		scratch = xasprintf("%s/conflicts-%d.idx", cache, getpid());
		mkdir_p(cache, 0700);
	}
	r = compose_index_build(ci.in, ci.n, strict && !conflicts, conflicts ? scratch : output,
	                        &res, &err);
	if (scratch)
		unlink(scratch);
	if (r < 0) {
		compose_result_clear(&res);
		cli_inputs_free(&ci);
		return cli_fail(&err);
	}
	if (conflicts) {
		for (size_t i = 0; i < res.n_conflicts; i++)
			printf("%s %s %s\n", res.conflicts[i].path,
			       ci.in[res.conflicts[i].lower].name,
			       ci.in[res.conflicts[i].upper].name);
	} else {
		printf("%s: %zu fragments, %u inodes, %ju directory entries, %zu conflicts (higher "
		       "fragment wins)\n",
		       output, ci.n, res.inodes, (uintmax_t)res.dirents, res.n_conflicts);
	}
	compose_result_clear(&res);
	cli_inputs_free(&ci);
	return EXIT_OK;
}
