/* mosaic diff | origin: what a mount's upper changes against its fragments, and where a path of
 * the view comes from. Both read the mount's state, its index and its upper directory. */
#include "compose/compose.h"
#include "tools/cli.h"

#include <string.h>
#include <sys/stat.h>

static const char usage_diff[] =
    "Usage: mosaic diff MOUNTPOINT [--json] [--all]\n"
    "\n"
    "Lists what the mount's upper layer changes against its fragments, sorted by path, like\n"
    "'git status --short':\n"
    "  A  added (the fragments do not have the path)\n"
    "  M  modified (type, content, mode, owner, xattrs, symlink target or device differ)\n"
    "  D  deleted (a whiteout, an opaque directory or a file over a directory hides it)\n"
    "  =  a copy-up identical to the fragments' (only with --all)\n"
    "Everything below an added or deleted directory is listed too. Times are not compared.\n"
    "A read-only mount has no upper: nothing is listed.\n"
    "\n"
    "  --json      [{\"path\", \"change\", \"type\", \"what\"}]; change is added, modified,\n"
    "              deleted or unchanged; what (modified only) lists what differs\n"
    "  --all       list unchanged copy-ups too\n"
    "  -h, --help  show this help\n";

static const char usage_origin[] =
    "Usage: mosaic origin MOUNTPOINT PATH [--json]\n"
    "\n"
    "Says which fragment (and package) provides PATH, a path inside the view (/etc/hostname),\n"
    "in the layers below the upper, and whether the upper added, modified or deleted it.\n"
    "\n"
    "  --json      {\"path\", \"type\", \"fragment\", \"package\", \"upper\", \"what\"}\n"
    "  -h, --help  show this help\n";

static const char *type_name(mode_t type)
{
	switch (type & S_IFMT) {
	case S_IFREG:
		return "file";
	case S_IFDIR:
		return "dir";
	case S_IFLNK:
		return "symlink";
	case S_IFCHR:
		return "char";
	case S_IFBLK:
		return "block";
	case S_IFIFO:
		return "fifo";
	case S_IFSOCK:
		return "socket";
	}
	return "unknown";
}

static json_object *what_json(unsigned what)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {{COMPOSE_DIFF_TYPE, "type"},     {COMPOSE_DIFF_CONTENT, "content"},
	             {COMPOSE_DIFF_MODE, "mode"},     {COMPOSE_DIFF_OWNER, "owner"},
	             {COMPOSE_DIFF_XATTRS, "xattrs"}, {COMPOSE_DIFF_TARGET, "target"},
	             {COMPOSE_DIFF_RDEV, "rdev"}};
	json_object *a = json_object_new_array();
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (what & names[i].bit)
			json_object_array_add(a, json_object_new_string(names[i].name));
	return a;
}

int cmd_diff(int argc, char **argv)
{
	bool json = false, all = false;
	const struct cli_flag flags[] = {{"json", &json}, {"all", &all}, {}};
	int r = cli_flags(argc, argv, usage_diff, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct compose_diff_entry *v = NULL;
	size_t n = 0;
	bool read_only = false;
	struct mosaic_error err = {0};
	if (pipeline_diff(argv[optind], all, &v, &n, &read_only, &err) < 0)
		return cli_fail(&err);
	if (read_only)
		fprintf(stderr, "mosaic: %s is mounted read-only: no upper, no changes\n",
		        argv[optind]);
	if (json) {
		json_object *a = json_object_new_array();
		for (size_t i = 0; i < n; i++) {
			json_object *o = json_object_new_object();
			json_object_object_add(o, "path", json_object_new_string(v[i].path));
			json_object_object_add(
			    o, "change", json_object_new_string(compose_change_name(v[i].change)));
			json_object_object_add(o, "type",
			                       json_object_new_string(type_name(v[i].type)));
			if (v[i].change == COMPOSE_MODIFIED)
				json_object_object_add(o, "what", what_json(v[i].what));
			json_object_array_add(a, o);
		}
		printf("%s\n", json_object_to_json_string_ext(
		                   a, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(a);
	} else {
		static const char letter[] = {[COMPOSE_ADDED] = 'A',
		                              [COMPOSE_MODIFIED] = 'M',
		                              [COMPOSE_DELETED] = 'D',
		                              [COMPOSE_UNCHANGED] = '=',
		                              [COMPOSE_UNTOUCHED] = ' '};
		for (size_t i = 0; i < n; i++)
			printf("%c  %s\n", letter[v[i].change], v[i].path);
	}
	compose_diff_free(v, n);
	return EXIT_OK;
}

int cmd_origin(int argc, char **argv)
{
	bool json = false;
	const struct cli_flag flags[] = {{"json", &json}, {}};
	int r = cli_flags(argc, argv, usage_origin, flags, 2, "a MOUNTPOINT and a PATH");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	_cleanup_(pipeline_origin_clear) struct pipeline_origin e = {0};
	if (pipeline_origin(argv[optind], argv[optind + 1], &e, &err) < 0)
		return cli_fail(&err);
	const char *path = e.path;
	json_object *o = json_object_new_object(), *frag = e.fragment, *package = e.package;
	json_object_object_add(o, "path", json_object_new_string(path));
	json_object_object_add(o, "type", json_object_new_string(type_name(e.type)));
	json_object_object_add(o, "fragment", json_object_get(frag));
	json_object_object_add(o, "package", json_object_get(package));
	json_object_object_add(o, "upper", json_object_new_string(compose_change_name(e.change)));
	if (e.change == COMPOSE_MODIFIED)
		json_object_object_add(o, "what", what_json(e.what));

	if (json)
		printf("%s\n", json_object_to_json_string_ext(
		                   o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	else {
		json_object *v;
#define GET(obj, k) (json_object_object_get_ex(obj, k, &v) && v ? json_object_get_string(v) : "-")
		printf("path:      %s (%s)\n", path, type_name(e.type));
		if (frag) {
			printf("fragment:  %s\n", GET(frag, "digest"));
			printf("           %s %s (%s), layer %u of %zu from the bottom\n",
			       GET(frag, "name"), GET(frag, "version"), GET(frag, "kind"),
			       e.layer + 1, e.n_fragments);
			printf("image:     %s\n", GET(frag, "image"));
		} else
			printf("fragment:  none\n");
		if (package)
			printf("package:   %s\n", json_object_get_string(package));
		static const char *const says[] = {
		    [COMPOSE_UNTOUCHED] = "untouched (the fragment's)",
		    [COMPOSE_ADDED] = "added (only the upper has it)",
		    [COMPOSE_MODIFIED] = "modified",
		    [COMPOSE_DELETED] = "deleted (hidden by the upper)",
		    [COMPOSE_UNCHANGED] = "unchanged copy-up (the same as the fragment's)"};
		printf("upper:     %s", e.has_upper ? says[e.change] : "none (read-only mount)");
		if (e.change == COMPOSE_MODIFIED) {
			json_object *w = what_json(e.what);
			for (size_t i = 0; i < json_object_array_length(w); i++)
				printf("%s%s", i ? ", " : " (",
				       json_object_get_string(json_object_array_get_idx(w, i)));
			printf(")");
			json_object_put(w);
		}
		printf("\n");
#undef GET
	}
	json_object_put(o);
	return EXIT_OK;
}
