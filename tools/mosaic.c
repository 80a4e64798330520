/* The mosaic command: subcommand dispatch, help and version. Logic lives in the modules. */
#include "tools/cli.h"

#include <locale.h>
#include <string.h>

static const char usage[] =
    "Usage: mosaic COMMAND [ARGS...]\n"
    "\n"
    "Compose Linux root filesystems from signed squashfs fragments.\n"
    "\n"
    "Commands:\n"
    "  fragment create|verify|inspect   make, check and list fragments\n"
    "  store add|list|show|verify|gc    manage a content-addressed fragment store\n"
    "  manifest show|check MANIFEST     validate a manifest, show it merged (includes, layers)\n"
    "  resolve MANIFEST                 resolve its packages with libsolv into NAME.lock\n"
    "  build MANIFEST                   resolve, download, verify, one fragment per package\n"
    "  compose FRAGMENT... -o INDEX     build a composition index (overlay rules, conflicts)\n"
    "  mount (MANIFEST|INDEX|FRAGMENT...) DIR\n"
    "                                   mount a composition (read-only, or with an upper)\n"
    "  umount DIR                       unmount it and stop its daemon\n"
    "  status DIR                       show a mount's mode, fragments and fragment opens\n"
    "  configure DIR                    run the packages' scripts in a chroot, into the upper\n"
  "  commit DIR -o STORE              freeze a mount's upper into a signed config fragment\n"
    "  diff DIR                         list what the upper adds, modifies and deletes\n"
    "  origin DIR PATH                  which fragment and package PATH comes from\n"
    "  export (MANIFEST|INDEX|DIR) --format tar -o OUT\n"
    "                                   write the view as an image, with an SPDX SBOM\n"
    "  boot IMAGE [--iso]               run an exported image in qemu, its console here\n"
    "\n"
    "Options:\n"
    "  -h, --help      show this help (every command has its own --help)\n"
    "  -V, --version   show the version\n"
    "\n"
    "Exit status: 0 ok, 1 failure, 2 bad usage or bad input.\n";

int cli_fail(const struct mosaic_error *err)
{
	fprintf(stderr, "mosaic: %s\n", err->msg[0] ? err->msg : strerror(-err->code));
	return err->code == -EINVAL ? EXIT_USAGE : EXIT_FAIL;
}

int cli_usage(const char *u, const char *fmt, ...)
{
	va_list ap;
	fputs("mosaic: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	/* The synopsis line only; --help has the rest. */
	fprintf(stderr, "%.*s(see --help)\n", (int)(strchrnul(u, '\n') - u + 1), u);
	return EXIT_USAGE;
}

int cli_flags(int argc, char **argv, const char *usage, const struct cli_flag *flags,
              int n_operands, const char *what)
{
	size_t n = 0;
	while (flags && flags[n].name)
		n++;
	_cleanup_free_ struct option *opts = xcalloc(n + 2, sizeof(*opts));
	for (size_t i = 0; i < n; i++)
		opts[i] = (struct option){flags[i].name, no_argument, NULL, 256 + (int)i};
	opts[n] = (struct option){"help", no_argument, NULL, 'h'};
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage, stdout);
			return EXIT_OK;
		}
		if (c < 256 || c >= 256 + (int)n)
			return cli_usage(usage, "unknown option '%s'", argv[optind - 1]);
		*flags[c - 256].set = true;
	}
	if (argc - optind != n_operands)
		return cli_usage(usage, "give %s", what);
	return -1;
}

int cli_open_store(const char *path, bool create, struct store **out)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *def = path ? NULL : store_default_path();
	int r = store_open(path ? path : def, create, out, &err);
	return r < 0 ? cli_fail(&err) : 0;
}

int cli_open_keyring(const char *path, struct keyring **out)
{
	struct mosaic_error err = {0};
	_cleanup_free_ char *def = path ? NULL : keyring_default_path();
	int r = keyring_open(path ? path : def, out, &err);
	return r < 0 ? cli_fail(&err) : 0;
}

int cli_fragment_path(const char *arg, const char *store_path, char **out)
{
	size_t l = strlen(arg);
	if ((l > 5 && strcmp(arg + l - 5, ".sqfs") == 0) || strchr(arg, '/')) {
		if (access(arg, F_OK) < 0) {
			fprintf(stderr, "mosaic: %s: %s\n", arg, strerror(errno));
			return EXIT_FAIL;
		}
		*out = xstrdup(arg);
		return 0;
	}
	struct store *s;
	int r = cli_open_store(store_path, false, &s);
	if (r)
		return r;
	struct mosaic_error err = {0};
	char digest[SHA256_HEX_LEN + 1];
	r = store_resolve(s, arg, digest, &err);
	if (r == 0)
		*out = store_object_path(s, digest, ".sqfs");
	store_free(s);
	return r < 0 ? cli_fail(&err) : 0;
}

int main(int argc, char **argv)
{
	setlocale(LC_ALL, "");
	opterr = 0; /* unknown options are reported by cli_usage, once */
	if (argc < 2)
		return cli_usage(usage, "no command given");
	const char *cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		fputs(usage, stdout);
		return EXIT_OK;
	}
	if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
		printf("mosaic %s\n", MOSAIC_VERSION);
		return EXIT_OK;
	}
	if (strcmp(cmd, "fragment") == 0)
		return cmd_fragment(argc - 1, argv + 1);
	if (strcmp(cmd, "store") == 0)
		return cmd_store(argc - 1, argv + 1);
	if (strcmp(cmd, "manifest") == 0)
		return cmd_manifest(argc - 1, argv + 1);
	if (strcmp(cmd, "resolve") == 0)
		return cmd_resolve(argc - 1, argv + 1);
	if (strcmp(cmd, "build") == 0)
		return cmd_build(argc - 1, argv + 1);
	if (strcmp(cmd, "diff") == 0)
		return cmd_diff(argc - 1, argv + 1);
	if (strcmp(cmd, "origin") == 0)
		return cmd_origin(argc - 1, argv + 1);
	if (strcmp(cmd, "commit") == 0)
		return cmd_commit(argc - 1, argv + 1);
	if (strcmp(cmd, "configure") == 0)
		return cmd_configure(argc - 1, argv + 1);
	if (strcmp(cmd, "export") == 0)
		return cmd_export(argc - 1, argv + 1);
	if (strcmp(cmd, "boot") == 0)
		return cmd_boot(argc - 1, argv + 1);
	if (strcmp(cmd, "compose") == 0)
		return cmd_compose(argc - 1, argv + 1);
	if (strcmp(cmd, "mount") == 0)
		return cmd_mount(argc - 1, argv + 1);
	if (strcmp(cmd, "umount") == 0)
		return cmd_umount(argc - 1, argv + 1);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	return cli_usage(usage, "unknown command '%s'", cmd);
}
