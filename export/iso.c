/* The live ISO: the view as /live/filesystem.squashfs (squashfs.c), the view's kernel and
 * initramfs beside it in the Debian live layout that live-boot's initramfs script looks for,
 * and GRUB for BIOS and UEFI, assembled by xorriso as a hybrid image (El Torito for a CD, an
 * MBR and a GPT for a disk), the way grub-mkrescue assembles one, but with every input fixed so
 * the bytes repeat. See docs/export.md. */
#include "export/internal.h"

#include "compose/compose.h"

#include <fcntl.h>
#include <search.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define LIVE_SCRIPT   "usr/share/initramfs-tools/scripts/live"
#define GRUB_DIR      EXPORT_GRUB_DIR
#define GRUB_HYBRID   GRUB_DIR "/i386-pc/boot_hybrid.img"

/* ---- the scan --------------------------------------------------------------------------------
 */

struct scan {
	struct export_scan v;
	bool has_live;
};

static int scan_entry(void *ctx, const struct export_entry *e)
{
	struct scan *s = ctx;
	export_scan_entry(&s->v, e);
	if (strcmp(e->path, LIVE_SCRIPT) == 0 && S_ISREG(e->mode))
		s->has_live = true;
	return 0;
}

/* ---- staging ---------------------------------------------------------------------------------
 */

static int set_time(const char *path, int64_t t, struct mosaic_error *err)
{
	const struct timespec ts[2] = {{.tv_sec = t}, {.tv_sec = t}};
	if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	return 0;
}

/* ISO 9660 volume ids are d-characters (A-Z, 0-9, _): ID_VERSION_ID_LIVE from os-release. */
static void volume_id(const char *osrel, char out[33])
{
	_cleanup_free_ char *id = osrel ? export_os_release_value(osrel, "ID") : NULL;
	_cleanup_free_ char *ver = osrel ? export_os_release_value(osrel, "VERSION_ID") : NULL;
	_cleanup_free_ char *v = xasprintf("%s%s%s_LIVE", id && *id ? id : "MOSAIC",
	                                   ver && *ver ? "_" : "", ver ? ver : "");
	size_t n = 0;
	for (const char *p = v; *p && n < 32; p++) {
		char c = *p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p;
		out[n++] = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '_';
	}
	out[n] = 0;
}

/* The FAT image the UEFI El Torito entry and the ISO's EFI partition point to, holding GRUB as
 * the removable-media path EFI/BOOT/BOOTX64.EFI. */
static int make_efi_image(const char *stage, const char *efi, uint32_t volid, int64_t t,
                          struct mosaic_error *err)
{
	struct stat st;
	if (stat(efi, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", efi);
	/* room for the FAT itself and a margin, in whole 64 KiB */
	uint64_t kib = ((uint64_t)st.st_size + st.st_size / 8 + 256 * 1024 + 65535) / 65536 * 64;
	_cleanup_free_ char *img = path_join(stage, "efi.img");
	_cleanup_free_ char *d_efi = path_join(stage, "EFI"), *d_boot = path_join(d_efi, "BOOT");
	_cleanup_free_ char *id = xasprintf("%08x", volid);
	_cleanup_free_ char *blocks = xasprintf("%ju", (uintmax_t)kib);
	{
		_cleanup_close_ int fd = open(img, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0 || ftruncate(fd, kib * 1024) < 0)
			return mosaic_errorf(err, -errno, "%s: %m", img);
	}
	if (mkdir(d_efi, 0755) < 0 || mkdir(d_boot, 0755) < 0)
		return mosaic_errorf(err, -errno, "creating directories in %s: %m", stage);
	int e;
	if ((e = set_time(d_boot, t, err)) < 0 || (e = set_time(d_efi, t, err)) < 0)
		return e;
	char *mkfs[] = {"mkfs.vfat", "-n", "EFIBOOT", "--invariant", "-i", id, img, blocks, NULL};
	char *mkdirs[] = {"mcopy", "-s", "-m", "-i", img, d_efi, "::/", NULL};
	char *copy[] = {"mcopy", "-m", "-i", img, (char *)efi, "::/EFI/BOOT/BOOTX64.EFI", NULL};
	if ((e = export_run_tool(mkfs, "dosfstools", NULL, err)) < 0 ||
	    (e = export_run_tool(mkdirs, "mtools", NULL, err)) < 0 ||
	    (e = export_run_tool(copy, "mtools", NULL, err)) < 0)
		return e;
	return set_time(img, t, err);
}

/* GRUB for both firmwares: each image carries an early config that finds the ISO by its marker
 * file (whatever the firmware calls the device: a CD, a disk, a partition of it) and reads the
 * ISO's /boot/grub/grub.cfg. */
static int stage_grub(struct export_reader *r, const char *stage, const char *marker,
                      const char *title, const char *cmdline, uint32_t volid, int64_t t,
                      struct mosaic_error *err)
{
	static const char *const need[][2] = {
	    {GRUB_DIR "/x86_64-efi/linux.mod", "grub-efi-amd64-bin"},
	    {GRUB_DIR "/i386-pc/cdboot.img", "grub-pc-bin"},
	    {GRUB_HYBRID, "grub-pc-bin"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(need); i++)
		if (access(need[i][0], R_OK) < 0)
			return mosaic_errorf(err, -ENOENT,
			                     "%s is missing: install the package %s (apt-get "
			                     "install %s)",
			                     need[i][0], need[i][1], need[i][1]);
	(void)r;
	_cleanup_free_ char *early = path_join(stage, "early.cfg");
	_cleanup_free_ char *cfg = path_join(stage, "grub.cfg");
	_cleanup_free_ char *efi = path_join(stage, "BOOTX64.EFI");
	_cleanup_free_ char *bios = path_join(stage, "eltorito.img");
	_cleanup_free_ char *early_text = xasprintf("search --no-floppy --set=root --file %s\n"
	                                            "set prefix=($root)/boot/grub\n"
	                                            "configfile $prefix/grub.cfg\n",
	                                            marker);
	/* The serial console too, so a VM started with -nographic (mosaic boot) shows the menu;
	 * no wait: a live image boots its one entry. */
	_cleanup_free_ char *cfg_text = xasprintf("serial --unit=0 --speed=115200\n"
	                                          "terminal_input console serial\n"
	                                          "terminal_output console serial\n"
	                                          "set default=0\n"
	                                          "set timeout=0\n"
	                                          "menuentry '%s (live)' {\n"
	                                          "\tlinux /live/vmlinuz %s\n"
	                                          "\tinitrd /live/initrd.img\n"
	                                          "}\n",
	                                          title, cmdline);
	int e;
	if ((e = export_stage_buffer(early, early_text, strlen(early_text), t, err)) < 0 ||
	    (e = export_stage_buffer(cfg, cfg_text, strlen(cfg_text), t, err)) < 0)
		return e;
	const char *efi_mods[] = {"efi_gop", "efi_uga", "all_video"};
	const char *bios_mods[] = {"biosdisk"};
	if ((e = export_grub_mkimage("x86_64-efi", early, efi, efi_mods, ARRAY_SIZE(efi_mods), err)) < 0 ||
	    (e = export_grub_mkimage("i386-pc-eltorito", early, bios, bios_mods, ARRAY_SIZE(bios_mods),
	                      err)) < 0)
		return e;
	if ((e = set_time(efi, t, err)) < 0 || (e = set_time(bios, t, err)) < 0)
		return e;
	return make_efi_image(stage, efi, volid, t, err);
}

/* ---- the ISO ---------------------------------------------------------------------------------
 */

void export_iso_result_clear(struct export_iso_result *res)
{
	free(res->kernel);
	free(res->initrd);
	free(res->cmdline);
	res->kernel = res->initrd = res->cmdline = NULL;
}

static char *graft(const char *iso_path, const char *stage, const char *name)
{
	return xasprintf("%s=%s/%s", iso_path, stage, name);
}

static int run_xorriso(const struct export_iso_options *o, const char *stage,
                       const struct export_iso_result *res, const char *marker, int64_t t,
                       struct mosaic_error *err)
{
	struct tm tm;
	time_t tt = t;
	gmtime_r(&tt, &tm);
	char date[32];
	strftime(date, sizeof(date), "%Y%m%d%H%M%S00", &tm);
	_cleanup_free_ char *mdate = xasprintf("--modification-date=%s", date);
	_cleanup_free_ char *sde = xasprintf("SOURCE_DATE_EPOCH=%jd", (intmax_t)t);
	_cleanup_free_ char *all_dates = xasprintf("=%jd", (intmax_t)t);
	_cleanup_free_ char *g_sqfs =
	    graft("/live/filesystem.squashfs", stage, "filesystem.squashfs");
	_cleanup_free_ char *g_marker = xasprintf("%s=%s/marker", marker, stage);
	_cleanup_free_ char *g_kernel = graft("/live/vmlinuz", stage, "vmlinuz");
	_cleanup_free_ char *g_initrd = graft("/live/initrd.img", stage, "initrd.img");
	_cleanup_free_ char *g_cfg = graft("/boot/grub/grub.cfg", stage, "grub.cfg");
	_cleanup_free_ char *g_bios =
	    graft("/boot/grub/i386-pc/eltorito.img", stage, "eltorito.img");
	_cleanup_free_ char *g_efi = graft("/boot/grub/efi.img", stage, "efi.img");
	/* grub-mkrescue's options: El Torito for BIOS (GRUB's cdboot core, patched with its own
	 * place by --grub2-boot-info) and UEFI (the FAT image), GRUB's hybrid MBR that starts the
	 * same core from a disk, and the FAT image as a partition a UEFI firmware boots from a
	 * disk. SOURCE_DATE_EPOCH and --modification-date fix the volume's dates (and the
	 * volume UUID made of them), --set_all_file_dates the directories xorriso makes for the
	 * graft points, which would otherwise be dated now. */
	const char *common[] = {"xorriso",
	                        "-as",
	                        "mkisofs",
	                        "-quiet",
	                        "-iso-level",
	                        "3",
	                        "-r",
	                        "-J",
	                        "-joliet-long",
	                        "-V",
	                        res->volume_id,
	                        mdate,
	                        "--set_all_file_dates",
	                        all_dates,
	                        "-graft-points",
	                        "-o",
	                        o->path};
	const char *boot[] = {"-b",
	                      "boot/grub/i386-pc/eltorito.img",
	                      "-no-emul-boot",
	                      "-boot-load-size",
	                      "4",
	                      "-boot-info-table",
	                      "--grub2-boot-info",
	                      "--grub2-mbr",
	                      GRUB_HYBRID,
	                      "--efi-boot",
	                      "boot/grub/efi.img",
	                      "-efi-boot-part",
	                      "--efi-boot-image",
	                      "--protective-msdos-label"};
	const char *files[] = {g_marker, g_sqfs, g_kernel, g_initrd, g_cfg, g_bios, g_efi};
	size_t n_files = o->no_bootloader ? 2 : ARRAY_SIZE(files);
	size_t n_boot = o->no_bootloader ? 0 : ARRAY_SIZE(boot);
	_cleanup_free_ char **argv =
	    xcalloc(ARRAY_SIZE(common) + n_boot + n_files + 1, sizeof(*argv));
	size_t k = 0;
	for (size_t i = 0; i < ARRAY_SIZE(common); i++)
		argv[k++] = (char *)common[i];
	for (size_t i = 0; i < n_boot; i++)
		argv[k++] = (char *)boot[i];
	for (size_t i = 0; i < n_files; i++)
		argv[k++] = (char *)files[i];
	char *env[] = {sde, NULL};
	return export_run_tool(argv, "xorriso", env, err);
}

int export_iso(struct export_reader *r, const struct export_iso_options *o,
               struct export_iso_result *res, struct mosaic_error *err)
{
	*res = (struct export_iso_result){.newest_mtime = INT64_MIN};
	struct scan s = {0};
	export_scan_begin(&s.v, "mosaic live iso v1", export_reader_index(r), o->source_date_epoch);
	_cleanup_free_ char *stage = NULL, *osrel = NULL, *initrd = NULL, *title = NULL;
	_cleanup_free_ char *sqfs = NULL, *marker_file = NULL, *marker = NULL;
	int e = export_walk(r, scan_entry, &s, err);
	if (e < 0)
		goto out;
	if (!o->no_bootloader) {
		if (!s.v.kernel) {
			e = mosaic_errorf(err, -ENOENT,
			                  "the composition has no kernel (/boot/vmlinuz-*): add "
			                  "linux-image-amd64, initramfs-tools and live-boot to the "
			                  "manifest's packages, or give --no-bootloader for an ISO "
			                  "without one");
			goto out;
		}
		initrd = export_scan_initrd(&s.v);
		if (!initrd) {
			e = mosaic_errorf(
			    err, -ENOENT,
			    "the composition has /%s but no /boot/initrd.img-%s: configure it (mosaic "
			    "configure; initramfs-tools makes the initramfs) or give "
			    "--no-bootloader",
			    s.v.kernel, strchr(s.v.kernel, '-') + 1);
			goto out;
		}
		if (!s.has_live) {
			e = mosaic_errorf(err, -ENOENT,
			                  "the composition has no /%s: a live ISO needs live-boot "
			                  "(its initramfs script finds /live/filesystem.squashfs); "
			                  "add live-boot to the manifest's packages and configure "
			                  "it again, or give --no-bootloader",
			                  LIVE_SCRIPT);
			goto out;
		}
	}
	res->entries = s.v.entries;
	res->newest_mtime = s.v.newest;
	int64_t now = export_scan_time(&s.v);
	uint8_t seed[SHA256_LEN], u[16];
	export_scan_seed(&s.v, seed);
	export_derive_uuid(seed, "iso-id", u);
	export_uuid_string(u, res->id_uuid);
	export_derive_uuid(seed, "iso-efi-fs", u);
	uint32_t volid = (uint32_t)u[0] << 24 | u[1] << 16 | u[2] << 8 | u[3];
	size_t len;
	struct mosaic_error ignored = {0};
	if (export_read_path(r, "usr/lib/os-release", 65536, &osrel, &len, &ignored) < 0 &&
	    export_read_path(r, "etc/os-release", 65536, &osrel, &len, &ignored) < 0)
		osrel = NULL;
	volume_id(osrel, res->volume_id);
	title = osrel ? export_os_release_value(osrel, "PRETTY_NAME") : NULL;
	/* A quote would end GRUB's menu title. */
	for (char *p = title; p && *p; p++)
		if (*p == '\'' || *p == '\\')
			*p = ' ';

	stage = xasprintf("%s.iso-XXXXXX", o->path);
	if (!mkdtemp(stage)) {
		e = mosaic_errorf(err, -errno, "creating %s: %m", stage);
		free(stage);
		stage = NULL;
		goto out;
	}
	sqfs = path_join(stage, "filesystem.squashfs");
	marker_file = path_join(stage, "marker");
	marker = xasprintf("/.disk/mosaic-%s", res->id_uuid);
	const struct export_squashfs_options so = {
	    .path = sqfs, .source_date_epoch = o->source_date_epoch, .mtime = now};
	if ((e = export_squashfs(r, &so, &res->squashfs, err)) < 0)
		goto out;
	{
		_cleanup_close_ int fd = open(sqfs, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			e = mosaic_errorf(err, -errno, "%s: %m", sqfs);
			goto out;
		}
		if ((e = sha256_fd(fd, res->squashfs_sha256)) < 0) {
			mosaic_errorf(err, e, "hashing %s: %s", sqfs, strerror(-e));
			goto out;
		}
	}
	static const char marker_text[] = "mosaic live ISO\n";
	if ((e = set_time(sqfs, now, err)) < 0 ||
	    (e = export_stage_buffer(marker_file, marker_text, strlen(marker_text), now, err)) < 0)
		goto out;
	if (!o->no_bootloader) {
		_cleanup_free_ char *k = path_join(stage, "vmlinuz");
		_cleanup_free_ char *i = path_join(stage, "initrd.img");
		res->cmdline = export_kernel_cmdline(r, "boot=live", o->kernel_cmdline);
		if ((e = export_stage_view_file(r, s.v.kernel, k, now, err)) < 0 ||
		    (e = export_stage_view_file(r, initrd, i, now, err)) < 0 ||
		    (e = stage_grub(r, stage, marker, title ? title : "mosaic", res->cmdline, volid,
		                    now, err)) < 0)
			goto out;
		res->kernel = xasprintf("/%s", s.v.kernel);
		res->initrd = xasprintf("/%s", initrd);
	}
	if ((e = run_xorriso(o, stage, res, marker, now, err)) < 0)
		goto out;
	struct stat st;
	if (stat(o->path, &st) < 0) {
		e = mosaic_errorf(err, -errno, "%s: %m", o->path);
		goto out;
	}
	res->size = st.st_size;
out:
	if (stage)
		rm_tree(stage);
	export_scan_clear(&s.v);
	if (e < 0)
		export_iso_result_clear(res);
	return e;
}
