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
    "  generations [list|diff|gc] NAME  the builds of a manifest recorded in the store\n"
    "  compose FRAGMENT... -o INDEX     build a composition index (overlay rules, conflicts)\n"
    "  mount (MANIFEST|INDEX|FRAGMENT...) DIR\n"
    "                                   mount a composition (read-only, or with an upper)\n"
    "  umount DIR                       unmount it and stop its daemon\n"
    "  status DIR                       show a mount's mode, fragments and fragment opens\n"
    "  switch DIR (MANIFEST|INDEX|FRAGMENT...)\n"
    "                                   switch a running mount to another composition\n"
    "  rollback DIR                     switch it back to what it served before\n"
    "  restart DIR                      hand a mount to a new daemon without unmounting\n"
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
	if (strcmp(cmd, "generations") == 0)
		return cmd_generations(argc - 1, argv + 1);
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
	if (strcmp(cmd, "switch") == 0)
		return cmd_switch(argc - 1, argv + 1);
	if (strcmp(cmd, "rollback") == 0)
		return cmd_rollback(argc - 1, argv + 1);
	if (strcmp(cmd, "restart") == 0)
		return cmd_restart(argc - 1, argv + 1);
	return cli_usage(usage, "unknown command '%s'", cmd);
}
