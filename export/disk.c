/* The raw disk: a GPT (libfdisk) on a plain file with an EFI system partition (FAT32 made by
 * mkfs.vfat at its offset and filled by mtools, so nothing is mounted) and the root as ext4
 * written from the view (ext4.c). Sizes come from one walk of the view; every UUID derives
 * from a seed that walk hashes, so the same view gives the same disk. See docs/export.md. */
#include "export/export.h"

#include "compose/compose.h"

#include <fcntl.h>
#include <libfdisk/libfdisk.h>
#include <search.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

#define SECTOR        512u
#define ESP_TYPE      "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
#define ROOT_X86_64   "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
#define ESP_MIN       (64 * EXPORT_MIB)
#define SD_BOOT_PATH  "usr/lib/systemd/boot/efi/systemd-bootx64.efi"

/* ---- pure parts ------------------------------------------------------------------------------
 */

void export_derive_uuid(const uint8_t seed[SHA256_LEN], const char *label, uint8_t out[16])
{
	struct sha256 *h = sha256_new();
	sha256_update(h, seed, SHA256_LEN);
	sha256_update(h, label, strlen(label) + 1);
	char hex[SHA256_HEX_LEN + 1];
	sha256_final(h, hex);
	for (int i = 0; i < 16; i++)
		sscanf(hex + 2 * i, "%2hhx", &out[i]);
	out[6] = (out[6] & 0x0f) | 0x40; /* version 4 */
	out[8] = (out[8] & 0x3f) | 0x80; /* RFC 4122 variant */
}

void export_uuid_string(const uint8_t u[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
	         u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
	         u[13], u[14], u[15]);
}

int export_parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'T':
		shift += 10;
		/* fallthrough */
	case 'G':
		shift += 10;
		/* fallthrough */
	case 'M':
		shift += 10;
		/* fallthrough */
	case 'K':
		shift += 10;
		end++;
		if (*end == 'i')
			end++;
		if (*end == 'B')
			end++;
		break;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

void export_raw_result_clear(struct export_raw_result *res)
{
	free(res->kernel);
	free(res->initrd);
	res->kernel = res->initrd = NULL;
}

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

/* ---- the sizing walk -------------------------------------------------------------------------
 */

struct scan {
	struct export_scan v;
	struct export_fs_usage usage;
	void *links; /* tsearch set of link ids seen */
	bool has_sd_boot;
};

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static int scan_entry(void *ctx, const struct export_entry *e)
{
	struct scan *s = ctx;
	bool first = true;
	if (e->link_id) {
		uint64_t *id = xmalloc(sizeof(*id));
		*id = e->link_id;
		uint64_t **found = tsearch(id, &s->links, id_cmp);
		if (!found)
			abort(); /* out of memory */
		if (*found != id) {
			free(id);
			first = false;
		}
	}
	export_ext4_account(&s->usage, e, first);
	export_scan_entry(&s->v, e);
	if (S_ISREG(e->mode) && strcmp(e->path, SD_BOOT_PATH) == 0)
		s->has_sd_boot = true;
	return 0;
}

static void scan_clear(struct scan *s)
{
	tdestroy(s->links, free);
	export_scan_clear(&s->v);
}

/* ---- the ESP ---------------------------------------------------------------------------------
 */

struct esp_file {
	const char *dir, *name; /* on the ESP */
	char *staged;           /* the file written beside the image */
};

/* The kernel command line: root=PARTUUID= (Debian's initramfs-tools does not find the root by
 * its type GUID), ro, then the manifest's or the view's /etc/kernel/cmdline. */
static char *kernel_options(struct export_reader *r, const char *root_partuuid, const char *cmdline)
{
	_cleanup_free_ char *first = xasprintf("root=PARTUUID=%s ro", root_partuuid);
	return export_kernel_cmdline(r, first, cmdline);
}

static char *esp_path(const char *image, uint64_t offset)
{
	return xasprintf("%s@@%ju", image, (uintmax_t)offset);
}

/* Formats the ESP at its offset and copies the boot files in, in a fixed order with fixed
 * times, so the FAT is the same bytes each time. */
static int write_esp(struct export_reader *r, const struct export_raw_options *o,
                     const struct scan *s, const struct export_partition *esp,
                     const struct export_partition *root, uint32_t volid, int64_t now,
                     struct export_raw_result *res, struct mosaic_error *err)
{
	_cleanup_free_ char *start = xasprintf("%ju", (uintmax_t)(esp->start / SECTOR));
	_cleanup_free_ char *offset = xasprintf("--offset=%ju", (uintmax_t)(esp->start / SECTOR));
	_cleanup_free_ char *kib = xasprintf("%ju", (uintmax_t)(esp->size / 1024));
	_cleanup_free_ char *id = xasprintf("%08x", volid);
	/* -s 1: at an offset in a larger file mkfs.vfat otherwise picks a cluster size mtools
	 * then misreads. --invariant fixes the creation time; -i the serial. */
	char *mkfs[] = {"mkfs.vfat",   "-F", "32", "-s", "1",   "-n",   "ESP",
	                "--invariant", "-i", id,   "-h", start, offset, (char *)o->path,
	                kib,           NULL};
	int e = export_run_tool(mkfs, "dosfstools", NULL, err);
	if (e < 0 || o->no_bootloader)
		return e;

	_cleanup_free_ char *stage = xasprintf("%s.esp-XXXXXX", o->path);
	if (!mkdtemp(stage))
		return mosaic_errorf(err, -errno, "creating %s: %m", stage);
	_cleanup_free_ char *img = esp_path(o->path, esp->start);
	_cleanup_free_ char *d_efi = path_join(stage, "EFI"), *d_boot = path_join(d_efi, "BOOT");
	_cleanup_free_ char *d_loader = path_join(stage, "loader");
	_cleanup_free_ char *d_entries = path_join(d_loader, "entries");
	_cleanup_free_ char *d_mosaic = path_join(stage, "mosaic");
	_cleanup_free_ char *f_sdboot = path_join(stage, "BOOTX64.EFI");
	_cleanup_free_ char *f_conf = path_join(stage, "loader.conf");
	_cleanup_free_ char *f_entry = path_join(stage, "mosaic.conf");
	_cleanup_free_ char *version = xstrdup(strchr(s->v.kernel, '-') + 1);
	_cleanup_free_ char *f_kernel = xasprintf("%s/vmlinuz-%s", stage, version);
	_cleanup_free_ char *f_initrd = xasprintf("%s/initrd.img-%s", stage, version);
	_cleanup_free_ char *initrd = xasprintf("boot/initrd.img-%s", version);
	_cleanup_free_ char *k_dst = xasprintf("::/mosaic/vmlinuz-%s", version);
	_cleanup_free_ char *i_dst = xasprintf("::/mosaic/initrd.img-%s", version);
	_cleanup_free_ char *osrel = NULL, *title = NULL, *options = NULL, *entry = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	_cleanup_free_ char *have_initrd = export_scan_initrd(&s->v);
	if (!have_initrd) {
		e = mosaic_errorf(err, -ENOENT,
		                  "the composition has /%s but no /%s: configure it (mosaic "
		                  "configure; initramfs-tools makes the initramfs) or give "
		                  "--no-bootloader",
		                  s->v.kernel, initrd);
		goto out;
	}
	if (mkdir(d_efi, 0755) < 0 || mkdir(d_boot, 0755) < 0 || mkdir(d_loader, 0755) < 0 ||
	    mkdir(d_entries, 0755) < 0 || mkdir(d_mosaic, 0755) < 0) {
		e = mosaic_errorf(err, -errno, "creating directories in %s: %m", stage);
		goto out;
	}
	/* systemd-boot: the composition's own (its version matches the system and the SBOM lists
	 * it), else the host's from the package systemd-boot-efi. */
	if (s->has_sd_boot)
		e = export_stage_view_file(r, SD_BOOT_PATH, f_sdboot, now, err);
	else if (access("/" SD_BOOT_PATH, R_OK) == 0)
		e = export_stage_host_file("/" SD_BOOT_PATH, f_sdboot, now, err);
	else
		e = mosaic_errorf(err, -ENOENT,
		                  "no systemd-boot: neither the composition nor this host has /%s; "
		                  "add systemd-boot-efi to the manifest's packages or install it "
		                  "here (apt-get install systemd-boot-efi)",
		                  SD_BOOT_PATH);
	if (e < 0)
		goto out;
	if (export_read_path(r, "usr/lib/os-release", 65536, &osrel, &len, &ignored) == 0)
		title = export_os_release_value(osrel, "PRETTY_NAME");
	options = kernel_options(r, root->uuid, o->kernel_cmdline);
	entry = xasprintf("title %s\nversion %s\nlinux /mosaic/vmlinuz-%s\n"
	                  "initrd /mosaic/initrd.img-%s\noptions %s\n",
	                  title ? title : "mosaic", version, version, version, options);
	static const char loader_conf[] = "default mosaic.conf\ntimeout 0\n";
	if ((e = export_stage_view_file(r, s->v.kernel, f_kernel, now, err)) < 0 ||
	    (e = export_stage_view_file(r, initrd, f_initrd, now, err)) < 0 ||
	    (e = export_stage_buffer(f_conf, loader_conf, strlen(loader_conf), now, err)) < 0 ||
	    (e = export_stage_buffer(f_entry, entry, strlen(entry), now, err)) < 0)
		goto out;
	/* The directories first (each holds one directory at most, so their order is the
	 * arguments'), then each file by name, all with -m: times from the staged files. */
	const struct timespec t[2] = {{.tv_sec = now}, {.tv_sec = now}};
	const char *dirs[] = {d_boot, d_efi, d_entries, d_loader, d_mosaic};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++)
		if (utimensat(AT_FDCWD, dirs[i], t, 0) < 0) {
			e = mosaic_errorf(err, -errno, "%s: %m", dirs[i]);
			goto out;
		}
	char *mkdirs[] = {"mcopy", "-s", "-m", "-i", img, d_efi, d_loader, d_mosaic, "::/", NULL};
	char *copies[][7] = {
	    {"mcopy", "-m", "-i", img, f_sdboot, "::/EFI/BOOT/BOOTX64.EFI", NULL},
	    {"mcopy", "-m", "-i", img, f_conf, "::/loader/loader.conf", NULL},
	    {"mcopy", "-m", "-i", img, f_entry, "::/loader/entries/mosaic.conf", NULL},
	    {"mcopy", "-m", "-i", img, f_kernel, k_dst, NULL},
	    {"mcopy", "-m", "-i", img, f_initrd, i_dst, NULL},
	};
	/* The staged directories are empty: the files come after, one by one. */
	if ((e = export_run_tool(mkdirs, "mtools", NULL, err)) < 0)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(copies); i++)
		if ((e = export_run_tool(copies[i], "mtools", NULL, err)) < 0)
			goto out;
	res->kernel = xasprintf("/%s", s->v.kernel);
	res->initrd = xasprintf("/%s", initrd);
out:
	rm_tree(stage);
	return e;
}

/* ---- the disk --------------------------------------------------------------------------------
 */

static int fdisk_fail(struct mosaic_error *err, int rc, const char *what, const char *path)
{
	return mosaic_errorf(err, rc < 0 ? rc : -EIO, "GPT on %s: %s: %s", path, what,
	                     strerror(rc < 0 ? -rc : EIO));
}

static int add_partition(struct fdisk_context *cx, const struct export_partition *p,
                         const char *path, struct mosaic_error *err)
{
	struct fdisk_label *lb = fdisk_get_label(cx, NULL);
	struct fdisk_parttype *type = fdisk_label_get_parttype_from_string(lb, p->type_guid);
	struct fdisk_partition *pa = fdisk_new_partition();
	int rc = type ? 0 : -EINVAL;
	if (!rc)
		rc = fdisk_partition_set_type(pa, type);
	if (!rc)
		rc = fdisk_partition_set_partno(pa, p->number - 1);
	if (!rc)
		rc = fdisk_partition_set_start(pa, p->start / SECTOR);
	if (!rc)
		rc = fdisk_partition_set_size(pa, p->size / SECTOR);
	if (!rc)
		rc = fdisk_partition_set_uuid(pa, p->uuid);
	if (!rc)
		rc = fdisk_partition_set_name(pa, p->name);
	if (!rc)
		rc = fdisk_add_partition(cx, pa, NULL);
	fdisk_unref_partition(pa);
	fdisk_unref_parttype(type);
	return rc ? fdisk_fail(err, rc, p->name, path) : 0;
}

static int write_gpt(const char *path, const char *disk_uuid, const struct export_partition *parts,
                     size_t n, struct mosaic_error *err)
{
	struct fdisk_context *cx = fdisk_new_context();
	if (!cx)
		return mosaic_errorf(err, -ENOMEM, "libfdisk: no context");
	int rc = fdisk_assign_device(cx, path, 0);
	if (rc) {
		fdisk_unref_context(cx);
		return fdisk_fail(err, rc, "opening", path);
	}
	if ((rc = fdisk_create_disklabel(cx, "gpt")))
		rc = fdisk_fail(err, rc, "creating the label", path);
	else if ((rc = fdisk_set_disklabel_id_from_string(cx, disk_uuid)))
		rc = fdisk_fail(err, rc, "setting the disk GUID", path);
	for (size_t i = 0; i < n && !rc; i++)
		rc = add_partition(cx, &parts[i], path, err);
	if (!rc && (rc = fdisk_write_disklabel(cx)))
		rc = fdisk_fail(err, rc, "writing", path);
	int rc2 = fdisk_deassign_device(cx, 0);
	if (!rc && rc2)
		rc = fdisk_fail(err, rc2, "closing", path);
	fdisk_unref_context(cx);
	return rc;
}

int export_raw(struct export_reader *r, const struct export_raw_options *o,
               struct export_raw_result *res, struct mosaic_error *err)
{
	*res = (struct export_raw_result){.newest_mtime = INT64_MIN};
	struct scan s = {0};
	export_scan_begin(&s.v, "mosaic raw disk v1", export_reader_index(r), o->source_date_epoch);
	int e = export_walk(r, scan_entry, &s, err);
	if (e < 0)
		goto out;
	if (!s.v.kernel && !o->no_bootloader) {
		e = mosaic_errorf(err, -ENOENT,
		                  "the composition has no kernel (/boot/vmlinuz-*): add "
		                  "linux-image-amd64 (and initramfs-tools) to the manifest's "
		                  "packages, or give --no-bootloader for a disk without one");
		goto out;
	}
	res->entries = s.v.entries;
	res->newest_mtime = s.v.newest;
	int64_t now = export_scan_time(&s.v);
	uint8_t seed[SHA256_LEN];
	export_scan_seed(&s.v, seed);

	/* Layout: 1 MiB for the GPT, the ESP, the root, 1 MiB for the backup GPT. The ESP holds
	 * systemd-boot, the kernel and its initramfs with room for as much again (a kernel
	 * update), 64 MiB at least (FAT32 with 512-byte clusters needs 33). */
	uint64_t esp =
	    o->no_bootloader ? ESP_MIN : round_up(2 * s.v.boot_bytes + 16 * EXPORT_MIB, EXPORT_MIB);
	if (esp < ESP_MIN)
		esp = ESP_MIN;
	uint64_t blocks, inodes, min_blocks, min_inodes;
	export_ext4_size(&s.usage, 0, &min_blocks, &min_inodes);
	uint64_t fixed = 2 * EXPORT_MIB + esp;
	if (o->size) {
		uint64_t root = o->size > fixed ? (o->size - fixed) / EXPORT_MIB * EXPORT_MIB : 0;
		if (root < min_blocks * EXPORT_EXT4_BLOCK) {
			uint64_t need = fixed + min_blocks * EXPORT_EXT4_BLOCK;
			e = mosaic_errorf(
			    err, -ENOSPC,
			    "--size %ju MiB is too small: the content needs at least "
			    "%ju MiB (%ju MiB ESP, %ju MiB root); give --size %juM or "
			    "more, or leave --size out to size from the content",
			    (uintmax_t)(o->size / EXPORT_MIB), (uintmax_t)(need / EXPORT_MIB),
			    (uintmax_t)(esp / EXPORT_MIB),
			    (uintmax_t)(min_blocks * EXPORT_EXT4_BLOCK / EXPORT_MIB),
			    (uintmax_t)(round_up(need, EXPORT_MIB) / EXPORT_MIB));
			goto out;
		}
		uint64_t ignored;
		blocks = root / EXPORT_EXT4_BLOCK;
		export_ext4_size(&s.usage, root - min_blocks * EXPORT_EXT4_BLOCK, &ignored,
		                 &inodes);
	} else
		export_ext4_size(&s.usage, o->free_space, &blocks, &inodes);

	uint8_t u[16];
	export_derive_uuid(seed, "disk", u);
	export_uuid_string(u, res->disk_uuid);
	struct export_partition *pe = &res->parts[0], *pr = &res->parts[1];
	*pe = (struct export_partition){.number = 1,
	                                .type_guid = ESP_TYPE,
	                                .name = "esp",
	                                .filesystem = "vfat",
	                                .start = EXPORT_MIB,
	                                .size = esp};
	*pr = (struct export_partition){.number = 2,
	                                .type_guid = ROOT_X86_64,
	                                .name = "root-x86-64",
	                                .filesystem = "ext4",
	                                .start = EXPORT_MIB + esp,
	                                .size = blocks * EXPORT_EXT4_BLOCK};
	res->n_parts = 2;
	export_derive_uuid(seed, "esp", u);
	export_uuid_string(u, pe->uuid);
	export_derive_uuid(seed, "root-x86-64", u);
	export_uuid_string(u, pr->uuid);
	uint8_t volid[16], fs_uuid[16], hash_seed[16];
	export_derive_uuid(seed, "esp-fs", volid);
	snprintf(pe->fs_uuid, sizeof(pe->fs_uuid), "%02X%02X-%02X%02X", volid[0], volid[1],
	         volid[2], volid[3]);
	export_derive_uuid(seed, "root-fs", fs_uuid);
	export_uuid_string(fs_uuid, pr->fs_uuid);
	export_derive_uuid(seed, "root-fs-hash-seed", hash_seed);
	res->size = pr->start + pr->size + EXPORT_MIB;

	{
		_cleanup_close_ int fd = open(o->path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || ftruncate(fd, res->size) < 0) {
			e = mosaic_errorf(err, -errno, "%s: %m", o->path);
			goto out;
		}
	}
	if ((e = write_gpt(o->path, res->disk_uuid, res->parts, res->n_parts, err)) < 0)
		goto out;
	struct export_ext4_options eo = {.path = o->path,
	                                 .offset = pr->start,
	                                 .blocks = blocks,
	                                 .inodes = inodes,
	                                 .epoch = o->source_date_epoch,
	                                 .now = now,
	                                 .label = "root"};
	memcpy(eo.uuid, fs_uuid, 16);
	memcpy(eo.hash_seed, hash_seed, 16);
	if ((e = export_ext4_write(r, &eo, err)) < 0)
		goto out;
	e = write_esp(r, o, &s, pe, pr,
	              (uint32_t)volid[0] << 24 | volid[1] << 16 | volid[2] << 8 | volid[3], now,
	              res, err);
out:
	scan_clear(&s);
	if (e < 0)
		export_raw_result_clear(res);
	return e;
}
