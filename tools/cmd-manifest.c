/* mosaic manifest show|check */
#include "tools/cli.h"

#include <string.h>

static const char usage_manifest[] =
    "Usage: mosaic manifest COMMAND [OPTIONS] MANIFEST\n"
    "\n"
    "  show MANIFEST    print the manifest after includes, defaults and matching layers\n"
    "  check MANIFEST   validate it: 'MANIFEST: ok', or every error as FILE:LINE:COL: message\n"
    "\n"
    "      --json             show: print the model as JSON (docs/manifest.md)\n"
    "      --fact KEY=VALUE   a fact layers and packages are matched against (repeatable; a\n"
    "                         key given twice becomes a list); arch defaults to this host's\n"
    "      --role ROLE        the same as --fact role=ROLE\n"
    "  -h, --help             show this help\n"
    "\n"
    "Exit status: 0 ok, 1 the manifest could not be read, 2 bad usage or an invalid manifest.\n";

enum { OPT_JSON = 256, OPT_FACT, OPT_ROLE };

static const char *str(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static void print_list(json_object *o, const char *key, const char *label)
{
	json_object *a;
	if (!json_object_object_get_ex(o, key, &a) || !json_object_array_length(a))
		return;
	printf(", %s", label);
	for (size_t i = 0; i < json_object_array_length(a); i++)
		printf(" %s", json_object_get_string(json_object_array_get_idx(a, i)));
}

static void print_summary(json_object *m)
{
	json_object *v;
	printf("name          %s\n", str(m, "name"));
	printf("arch          %s\n", str(m, "arch") ? str(m, "arch") : "-");
	if (json_object_object_get_ex(m, "repositories", &v)) {
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			json_object *r = json_object_array_get_idx(v, i), *host;
			printf("repository    %s: %s", str(r, "name"), str(r, "type"));
			if (json_object_object_get_ex(r, "host", &host) &&
			    json_object_get_boolean(host))
				printf(" from the host's apt sources");
			else
				printf(" %s", str(r, "uri") ? str(r, "uri") : str(r, "baseurl"));
			print_list(r, "suites", "suites");
			print_list(r, "components", "components");
			printf("\n");
		}
	}
	if (json_object_object_get_ex(m, "base", &v)) {
		json_object_object_foreach(v, k, bv)
		{
			printf("base          %s %s\n", k, json_object_get_string(bv));
		}
	}
	size_t n = json_object_object_get_ex(m, "packages", &v) ? json_object_array_length(v) : 0;
	printf("packages      %zu", n);
	for (size_t i = 0; i < n && i < 8; i++)
		printf("%s%s", i ? ", " : " (", str(json_object_array_get_idx(v, i), "name"));
	printf("%s\n", n > 8 ? ", ...)" : n ? ")" : "");
	printf("recommends    %s\n",
	       json_object_object_get_ex(m, "recommends", &v) && json_object_get_boolean(v) ? "yes"
	                                                                                    : "no");
	if (json_object_object_get_ex(m, "exclude", &v))
		printf("exclude       %zu\n", json_object_array_length(v));
	if (json_object_object_get_ex(m, "fragments", &v))
		printf("fragments     %zu\n", json_object_array_length(v));
	n = json_object_object_get_ex(m, "run", &v) ? json_object_array_length(v) : 0;
	printf("run           %zu step%s\n", n, n == 1 ? "" : "s");
	for (size_t i = 0; i < n; i++) {
		json_object *s = json_object_array_get_idx(v, i), *line;
		json_object_object_get_ex(s, "line", &line);
		printf("  %s:%d: %s\n", str(s, "file"), json_object_get_int(line),
		       str(s, "command"));
	}
	if (json_object_object_get_ex(m, "export", &v))
		for (size_t i = 0; i < json_object_array_length(v); i++)
			printf("export        %s\n",
			       str(json_object_array_get_idx(v, i), "format"));
}

int cmd_manifest(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage(usage_manifest, "no manifest command given");
	const char *sub = argv[1];
	if (strcmp(sub, "-h") == 0 || strcmp(sub, "--help") == 0) {
		fputs(usage_manifest, stdout);
		return EXIT_OK;
	}
	bool show = strcmp(sub, "show") == 0;
	if (!show && strcmp(sub, "check") != 0)
		return cli_usage(usage_manifest, "unknown manifest command '%s'", sub);
	argc--;
	argv++;

	static const struct option opts[] = {{"json", no_argument, NULL, OPT_JSON},
	                                     {"fact", required_argument, NULL, OPT_FACT},
	                                     {"role", required_argument, NULL, OPT_ROLE},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	json_object *facts = json_object_new_object();
	bool json = false;
	int c, r = 0;
	while (r == 0 && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_JSON:
			json = true;
			break;
		case OPT_FACT:
			if (pipeline_fact_add(facts, optarg) < 0)
				r = cli_usage(usage_manifest, "--fact needs KEY=VALUE, not '%s'",
				              optarg);
			break;
		case OPT_ROLE: {
			_cleanup_free_ char *f = xasprintf("role=%s", optarg);
			pipeline_fact_add(facts, f);
			break;
		}
		case 'h':
			fputs(usage_manifest, stdout);
			json_object_put(facts);
			return EXIT_OK;
		default:
			r = cli_usage(usage_manifest, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (r == 0 && optind != argc - 1)
		r = cli_usage(usage_manifest,
		              optind >= argc ? "no MANIFEST given" : "one MANIFEST at a time");
	if (r == 0 && !show && json)
		r = cli_usage(usage_manifest, "--json is for show");
	if (r) {
		json_object_put(facts);
		return r;
	}
	const char *path = argv[optind];
	json_object *model;
	struct mosaic_error err = {0};
	r = pipeline_manifest_load(path, facts, &model, &err);
	json_object_put(facts);
	if (r < 0)
		return cli_fail(&err);
	if (!show)
		printf("%s: ok\n", path);
	else if (json)
		printf("%s\n", json_object_to_json_string_ext(
		                   model, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
		                              JSON_C_TO_STRING_NOSLASHESCAPE));
	else
		print_summary(model);
	json_object_put(model);
	return EXIT_OK;
}
