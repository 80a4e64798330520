/* mosaic store add|list|show|verify|gc */
#include "tools/cli.h"

#include <string.h>

static const char usage_store[] =
    "Usage: mosaic store COMMAND [-s STORE] [ARGS...]\n"
    "\n"
    "  add IMAGE.sqfs...     verify fragments made elsewhere and copy them in\n"
    "  list [--json]         list fragments: digest, kind, name, version, arch, size\n"
    "  show FRAGMENT         print a fragment's descriptor\n"
    "  verify [FRAGMENT...]  verify fragments (default: all)\n"
    "  gc [--dry-run]        remove fragments no ref or root names, and stale temp files\n"
    "\n"
    "  -s, --store STORE   the store (default: $MOSAIC_STORE, config, /var/lib/mosaic/store)\n"
    "      --keyring FILE  trusted public keys (add, verify)\n"
    "  -h, --help          show this help\n";

enum { OPT_KEYRING = 256, OPT_JSON, OPT_DRY_RUN };

struct store_args {
	const char *store, *keyring;
	bool json, dry_run;
	int first; /* index of the first positional argument */
};

static int parse(int argc, char **argv, struct store_args *a)
{
	static const struct option opts[] = {{"store", required_argument, NULL, 's'},
	                                     {"keyring", required_argument, NULL, OPT_KEYRING},
	                                     {"json", no_argument, NULL, OPT_JSON},
	                                     {"dry-run", no_argument, NULL, OPT_DRY_RUN},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	int c;
	while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			a->store = optarg;
			break;
		case OPT_KEYRING:
			a->keyring = optarg;
			break;
		case OPT_JSON:
			a->json = true;
			break;
		case OPT_DRY_RUN:
			a->dry_run = true;
			break;
		case 'h':
			fputs(usage_store, stdout);
			return -1;
		default:
			return cli_usage(usage_store, "unknown option '%s'", argv[optind - 1]);
		}
	}
	a->first = optind;
	return 0;
}

static int store_add_cmd(struct store_args *a, int argc, char **argv)
{
	if (a->first >= argc)
		return cli_usage(usage_store, "no IMAGE given");
	struct store *s;
	struct keyring *k;
	int r = cli_open_store(a->store, true, &s);
	if (r)
		return r;
	if ((r = cli_open_keyring(a->keyring, &k))) {
		store_free(s);
		return r;
	}
	int rc = EXIT_OK;
	for (int i = a->first; i < argc; i++) {
		struct mosaic_error err = {0};
		char digest[SHA256_HEX_LEN + 1];
		if (store_add(s, k, argv[i], digest, &err) < 0)
			rc = cli_fail(&err);
		else
			printf("%s %s\n", digest, argv[i]);
	}
	keyring_free(k);
	store_free(s);
	return rc;
}

static int read_descriptor(struct store *s, const char *digest, struct fragment_descriptor *d,
                           struct mosaic_error *err)
{
	_cleanup_free_ char *p = store_object_path(s, digest, ".json");
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_file(p, 16u << 20, &text, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", p, strerror(-r));
	return fragment_descriptor_parse(text, len, d, err);
}

static int store_list_cmd(struct store_args *a)
{
	struct store *s;
	int r = cli_open_store(a->store, false, &s);
	if (r)
		return r;
	struct mosaic_error err = {0};
	char **v;
	size_t n;
	if (store_list(s, &v, &n, &err) < 0) {
		store_free(s);
		return cli_fail(&err);
	}
	json_object *arr = a->json ? json_object_new_array() : NULL;
	int rc = EXIT_OK;
	for (size_t i = 0; i < n; i++) {
		struct fragment_descriptor d;
		if (read_descriptor(s, v[i], &d, &err) < 0) {
			fprintf(stderr, "mosaic: fragment %s: %s\n", v[i], err.msg);
			rc = EXIT_FAIL;
			continue;
		}
		if (arr) {
			json_object *o = json_object_new_object();
			json_object_object_add(o, "digest", json_object_new_string(v[i]));
			json_object_object_add(
			    o, "kind", json_object_new_string(fragment_kind_to_string(d.kind)));
			json_object_object_add(o, "name", json_object_new_string(d.name));
			json_object_object_add(
			    o, "version", d.version ? json_object_new_string(d.version) : NULL);
			json_object_object_add(o, "arch",
			                       d.arch ? json_object_new_string(d.arch) : NULL);
			json_object_object_add(o, "image_size",
			                       json_object_new_int64(d.image_size));
			json_object_object_add(o, "files", json_object_new_int64(d.files));
			json_object_array_add(arr, o);
		} else {
			printf("%.16s  %-7s  %-30s %-20s %-6s %10ju\n", v[i],
			       fragment_kind_to_string(d.kind), d.name, d.version ? d.version : "-",
			       d.arch ? d.arch : "-", (uintmax_t)d.image_size);
		}
		fragment_descriptor_clear(&d);
	}
	if (arr) {
		printf("%s\n", json_object_to_json_string_ext(
		                   arr, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(arr);
	}
	strv_free(v, n);
	store_free(s);
	return rc;
}

static int store_show_cmd(struct store_args *a, int argc, char **argv)
{
	if (a->first + 1 != argc)
		return cli_usage(usage_store, "give exactly one FRAGMENT");
	struct store *s;
	int r = cli_open_store(a->store, false, &s);
	if (r)
		return r;
	struct mosaic_error err = {0};
	char digest[SHA256_HEX_LEN + 1];
	struct fragment_descriptor d;
	if (store_resolve(s, argv[a->first], digest, &err) < 0 ||
	    read_descriptor(s, digest, &d, &err) < 0) {
		store_free(s);
		return cli_fail(&err);
	}
	printf("%s\n", json_object_to_json_string_ext(d.json, JSON_C_TO_STRING_PRETTY |
	                                                          JSON_C_TO_STRING_SPACED |
	                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
	fragment_descriptor_clear(&d);
	store_free(s);
	return EXIT_OK;
}

static int store_verify_cmd(struct store_args *a, int argc, char **argv)
{
	struct store *s;
	struct keyring *k;
	int r = cli_open_store(a->store, false, &s);
	if (r)
		return r;
	if ((r = cli_open_keyring(a->keyring, &k))) {
		store_free(s);
		return r;
	}
	struct mosaic_error err = {0};
	char **v = NULL;
	size_t n = 0;
	int rc = EXIT_OK;
	if (a->first < argc) {
		for (int i = a->first; i < argc; i++) {
			char digest[SHA256_HEX_LEN + 1];
			if (store_resolve(s, argv[i], digest, &err) < 0) {
				rc = cli_fail(&err);
				continue;
			}
			v = xrealloc(v, (n + 1) * sizeof(*v));
			v[n++] = xstrdup(digest);
		}
	} else if (store_list(s, &v, &n, &err) < 0) {
		rc = cli_fail(&err);
	}
	size_t good = 0;
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *p = store_object_path(s, v[i], ".sqfs");
		if (fragment_verify(k, p, NULL, &err) < 0) {
			cli_fail(&err);
			rc = EXIT_FAIL;
		} else {
			good++;
		}
	}
	printf("%zu of %zu fragments verified\n", good, n);
	strv_free(v, n);
	keyring_free(k);
	store_free(s);
	return rc;
}

static int store_gc_cmd(struct store_args *a)
{
	struct store *s;
	int r = cli_open_store(a->store, false, &s);
	if (r)
		return r;
	struct mosaic_error err = {0};
	struct store_gc_stats st;
	r = store_gc(s, a->dry_run, &st, &err);
	store_free(s);
	if (r < 0)
		return cli_fail(&err);
	printf("%s %zu fragments and %zu temporary files (%.1f MiB); kept %zu\n",
	       a->dry_run ? "would remove" : "removed", st.removed_fragments, st.removed_temp,
	       st.freed_bytes / 1048576.0, st.kept);
	return EXIT_OK;
}

int cmd_store(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage(usage_store, "no store command given");
	const char *sub = argv[1];
	if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0) {
		fputs(usage_store, stdout);
		return EXIT_OK;
	}
	struct store_args a = {0};
	argc--;
	argv++;
	int r = parse(argc, argv, &a);
	if (r < 0)
		return EXIT_OK;
	if (r > 0)
		return r;
	if (strcmp(sub, "add") == 0)
		return store_add_cmd(&a, argc, argv);
	if (strcmp(sub, "list") == 0)
		return store_list_cmd(&a);
	if (strcmp(sub, "show") == 0)
		return store_show_cmd(&a, argc, argv);
	if (strcmp(sub, "verify") == 0)
		return store_verify_cmd(&a, argc, argv);
	if (strcmp(sub, "gc") == 0)
		return store_gc_cmd(&a);
	return cli_usage(usage_store, "unknown store command '%s'", sub);
}
