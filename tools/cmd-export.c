/* mosaic export: the composed view of a built manifest, an index, a running mount or a fragment
 * list frozen into an image with its SBOM, read straight from the index, fragments and upper. */
#include "tools/cli.h"

#include <string.h>
#include <sys/stat.h>

static const char usage_export[] =
    "Usage: mosaic export (MANIFEST | INDEX | MOUNTPOINT | FRAGMENT...)\n"
    "                     --format tar|raw|iso|qcow2|vmdk|vhdx -o OUT [OPTIONS]\n"
    "\n"
    "Writes the composed view as an image at OUT, with OUT.spdx.json (SPDX 2.3: the image,\n"
    "every locked package and every fragment) and OUT.manifest.json beside it. The view is\n"
    "read from the index, the fragments and the upper directly: nothing is mounted, and no\n"
    "root is needed when the store is readable. For a MOUNTPOINT the running mount's index,\n"
    "fragments and upper are read (stop writers first). Owners, modes, devices, xattrs and\n"
    "capabilities come from the composition. Written to a temp name and renamed: a failure\n"
    "leaves nothing under OUT.\n"
    "\n"
    "  -f, --format FORMAT        tar: a POSIX pax root tarball (podman import, ...)\n"
    "                             raw: a GPT disk: an EFI system partition with\n"
    "                             systemd-boot and the composition's kernel, and an ext4\n"
    "                             root (no loop device, no mount, no root needed)\n"
    "                             iso: a hybrid live ISO (BIOS and UEFI, CD and disk):\n"
    "                             GRUB, /live/vmlinuz, /live/initrd.img and the view as\n"
    "                             /live/filesystem.squashfs; needs live-boot in the view\n"
    "                             qcow2, vmdk, vhdx: the raw disk converted by qemu-img\n"
    "  -o, --output OUT           the image to write\n"
    "      --source-date-epoch T  clamp every mtime to T and date the SBOM T (default:\n"
    "                             $SOURCE_DATE_EPOCH; else no clamping and the SBOM takes\n"
    "                             the newest mtime): the same view and T give the same bytes\n"
    "  -s, --store STORE          the store fragments come from\n"
    "      --keyring FILE         trusted public keys (every fragment is verified)\n"
    "      --lock FILE            the lock whose packages the SBOM lists (default for a\n"
    "                             MANIFEST: its lock beside it; else fragments only)\n"
    "      --fact KEY=VALUE       a fact the MANIFEST's layers are matched against\n"
    "      --role ROLE            the same as --fact role=ROLE\n"
    "      --generation N         generation N of the MANIFEST's history instead of its\n"
    "                             lock (see 'mosaic generations')\n"
    "      --upper DIR            an overlayfs-format upper over an INDEX or FRAGMENTs\n"
    "disks (raw, qcow2, vmdk, vhdx):\n"
    "      --size SIZE            the whole disk's size (K, M, G, T); default: the content\n"
    "                             plus --free-space\n"
    "      --free-space SIZE      room left in each ext4 filesystem sized from its\n"
    "                             content (default 256M)\n"
    "      --filesystem FS        the root's: ext4 (default), or squashfs: read-only, with\n"
    "                             /var on a writable ext4 partition of its own\n"
    "      --bootloader LOADER    systemd-boot (default) or grub, on the ESP\n"
    "      --partition MOUNTPOINT[:SIZE]\n"
    "                             that directory of the view on an ext4 partition of its\n"
    "                             own (/usr, /var, /home, ...; mounted by /etc/fstab);\n"
    "                             swap:SIZE a swap partition; repeatable\n"
    "disks and iso:\n"
    "      --no-bootloader        no kernel needed: a disk's ESP stays empty, an ISO\n"
    "                             holds the squashfs only and does not boot\n"
    "      --kernel-cmdline TEXT  after root=PARTUUID=... ro (disks) or boot=live (iso)\n"
    "                             (default: the manifest's config.kernel_cmdline, else\n"
    "                             the view's /etc/kernel/cmdline)\n"
    "  -h, --help                 show this help\n";

enum {
	OPT_SDE = 256,
	OPT_UPPER,
	OPT_SIZE,
	OPT_FREE_SPACE,
	OPT_NO_BOOTLOADER,
	OPT_CMDLINE,
	OPT_FILESYSTEM,
	OPT_BOOTLOADER,
	OPT_PARTITION
};

/* --partition MOUNTPOINT[:SIZE] or swap:SIZE. */
static int parse_partition(const char *arg, struct export_partition_spec *p)
{
	const char *colon = strchr(arg, ':');
	_cleanup_free_ char *where = colon ? xstrndup(arg, colon - arg) : xstrdup(arg);
	*p = (struct export_partition_spec){0};
	if (colon && export_parse_size(colon + 1, &p->size) < 0)
		return -EINVAL;
	if (strcmp(where, "swap") == 0)
		return p->size ? 0 : -EINVAL;
	if (where[0] != '/')
		return -EINVAL;
	p->mountpoint = arg; /* a prefix of arg: cut at the colon below */
	if (colon)
		*(char *)colon = 0;
	return 0;
}

static int parse_epoch(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		return -EINVAL;
	*out = v;
	return 0;
}

static int export_cmd(int argc, char **argv, struct pipeline_source *src)
{
	static const struct option opts[] = {
	    {"format", required_argument, NULL, 'f'},
	    {"output", required_argument, NULL, 'o'},
	    {"source-date-epoch", required_argument, NULL, OPT_SDE},
	    CLI_SOURCE_OPTIONS,
	    CLI_GENERATION_OPTION,
	    {"upper", required_argument, NULL, OPT_UPPER},
	    {"size", required_argument, NULL, OPT_SIZE},
	    {"free-space", required_argument, NULL, OPT_FREE_SPACE},
	    {"no-bootloader", no_argument, NULL, OPT_NO_BOOTLOADER},
	    {"kernel-cmdline", required_argument, NULL, OPT_CMDLINE},
	    {"filesystem", required_argument, NULL, OPT_FILESYSTEM},
	    {"bootloader", required_argument, NULL, OPT_BOOTLOADER},
	    {"partition", required_argument, NULL, OPT_PARTITION},
	    {"help", no_argument, NULL, 'h'},
	    {}};
	const char *format = NULL, *output = NULL, *upper = NULL, *cmdline = NULL;
	const char *filesystem = NULL, *bootloader = NULL;
	struct export_partition_spec parts[EXPORT_MAX_PARTITIONS];
	size_t n_parts = 0;
	int64_t epoch = -1;
	uint64_t size = 0, free_space = 256 * EXPORT_MIB;
	bool no_bootloader = false, disk_only = false, boot_option = false;
	int c;
	while ((c = getopt_long(argc, argv, "f:o:s:h", opts, NULL)) != -1) {
		int taken = cli_source_option(c, optarg, src, usage_export);
		if (taken == 1)
			continue;
		if (taken)
			return taken;
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'o':
			output = optarg;
			break;
		case OPT_SDE:
			if (parse_epoch(optarg, &epoch) < 0)
				return cli_usage(
				    usage_export,
				    "--source-date-epoch takes seconds since 1970, not '%s'",
				    optarg);
			break;
		case OPT_UPPER:
			upper = optarg;
			break;
		case OPT_SIZE:
		case OPT_FREE_SPACE:
			if (export_parse_size(optarg, c == OPT_SIZE ? &size : &free_space) < 0 ||
			    (c == OPT_SIZE && size == 0))
				return cli_usage(usage_export,
				                 "%s takes a size like 512M or 2G, not '%s'",
				                 argv[optind - 1], optarg);
			disk_only = true;
			break;
		case OPT_NO_BOOTLOADER:
			no_bootloader = boot_option = true;
			break;
		case OPT_CMDLINE:
			cmdline = optarg;
			boot_option = true;
			break;
		case OPT_FILESYSTEM:
			if (strcmp(optarg, "ext4") != 0 && strcmp(optarg, "squashfs") != 0 &&
			    strcmp(optarg, "erofs") != 0)
				return cli_usage(usage_export,
				                 "--filesystem takes ext4 or squashfs, not '%s'",
				                 optarg);
			filesystem = optarg;
			disk_only = true;
			break;
		case OPT_BOOTLOADER:
			if (strcmp(optarg, "systemd-boot") != 0 && strcmp(optarg, "grub") != 0)
				return cli_usage(
				    usage_export,
				    "--bootloader takes systemd-boot or grub, not '%s'", optarg);
			bootloader = optarg;
			disk_only = true;
			break;
		case OPT_PARTITION:
			if (n_parts == ARRAY_SIZE(parts) - 3)
				return cli_usage(usage_export, "too many --partition");
			if (parse_partition(optarg, &parts[n_parts]) < 0)
				return cli_usage(
				    usage_export,
				    "--partition takes MOUNTPOINT[:SIZE] (like /var:2G) or "
				    "swap:SIZE, not '%s'",
				    optarg);
			n_parts++;
			disk_only = true;
			break;
		case 'h':
			fputs(usage_export, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_export, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind == argc)
		return cli_usage(usage_export, "give a MANIFEST, INDEX, MOUNTPOINT or FRAGMENTs");
	if (!format)
		return cli_usage(usage_export, "give --format tar, raw, iso, qcow2, vmdk or vhdx");
	bool disk = strcmp(format, "raw") == 0 || strcmp(format, "qcow2") == 0 ||
	            strcmp(format, "vmdk") == 0 || strcmp(format, "vhdx") == 0;
	bool iso = strcmp(format, "iso") == 0;
	if (!disk && !iso && strcmp(format, "tar") != 0)
		return cli_usage(usage_export,
		                 "--format '%s' is not known: tar, raw, iso, qcow2, vmdk and vhdx "
		                 "are",
		                 format);
	if (disk_only && !disk)
		return cli_usage(usage_export,
		                 "--size, --free-space, --filesystem, --bootloader and --partition "
		                 "are for --format raw, qcow2, vmdk and vhdx");
	if (boot_option && !disk && !iso)
		return cli_usage(usage_export,
		                 "--no-bootloader and --kernel-cmdline are for --format raw, "
		                 "qcow2, vmdk, vhdx and iso");
	if (!output)
		return cli_usage(usage_export, "give -o OUT");
	int r;
	if (epoch < 0 && (r = cli_source_date_epoch(&epoch)))
		return r;
	src->args = argv + optind;
	src->n_args = argc - optind;
	const struct export_options o = {.format = format,
	                                 .output = output,
	                                 .source_date_epoch = epoch,
	                                 .size = size,
	                                 .free_space = free_space,
	                                 .filesystem = filesystem,
	                                 .bootloader = bootloader,
	                                 .partitions = parts,
	                                 .n_partitions = n_parts,
	                                 .no_bootloader = no_bootloader,
	                                 .kernel_cmdline = cmdline};
	struct export_tar_result res;
	struct mosaic_error err = {0};
	r = pipeline_export(src, upper, &o, &res, cli_events(), &err);
	if (r < 0)
		return cli_fail(&err);
	printf("%s %s %ju bytes, %ju entries%s\n", output, res.sha256, (uintmax_t)res.size,
	       (uintmax_t)res.entries, res.skipped ? " (sockets left out)" : "");
	return EXIT_OK;
}

int cmd_export(int argc, char **argv)
{
	struct pipeline_source src = {0};
	int r = export_cmd(argc, argv, &src);
	cli_source_clear(&src);
	return r;
}
