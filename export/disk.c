/* The raw disk: a GPT (libfdisk) on a plain file with an EFI system partition (FAT32 made by
 * mkfs.vfat at its offset and filled by mtools, so nothing is mounted) and the root as ext4
 * written from the view (ext4.c). Sizes come from one walk of the view; every UUID derives
 * from a seed that walk hashes, so the same view gives the same disk. See docs/export.md. */
#include "export/internal.h"

#include "compose/compose.h"

#include <fcntl.h>
#include <libfdisk/libfdisk.h>
#include <search.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SECTOR       512u
#define ESP_TYPE     "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
#define ROOT_X86_64  "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
#define SWAP_TYPE    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
#define LINUX_DATA   "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#define ESP_MIN      (64 * EXPORT_MIB)
#define SD_BOOT_PATH "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
#define FSTAB_PATH   "etc/fstab"

/* The Discoverable Partitions Specification's types for what a disk may mount on its own; any
 * other mount point is generic Linux data. */
static const struct {
	const char *mountpoint, *type, *name;
} part_types[] = {
    {"/usr", "8484680C-9521-48C6-9C11-B0720656F69E", "usr-x86-64"},
    {"/var", "4D21B016-B534-45C2-A9FB-5C16E091FD2D", "var"},
    {"/home", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "home"},
    {"/srv", "3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "srv"},
    {"/tmp", "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1", "tmp"},
};

/* ---- pure parts ------------------------------------------------------------------------------
 */

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
	free(res->bootloader);
	free(res->fstab);
	res->kernel = res->initrd = res->bootloader = res->fstab = NULL;
}

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

/* ---- the partitions asked for ----------------------------------------------------------------
 */

/* One filesystem or swap of the disk beyond the ESP; plan[0] is the root. */
struct plan {
	const char *mountpoint; /* "/", "/var"; NULL for swap */
	const char *rel;        /* the mount point as a view path: "", "var" */
	uint64_t size;          /* asked for; 0: from the content */
	bool squashfs;
	struct export_fs_usage usage;
	void *links; /* tsearch set of the link ids seen below it */
	bool seen;   /* its mount point is a directory of the view */
	uint64_t blocks, inodes;
	char name[37]; /* the GPT partition's name */
	const char *type;
};

static int plan_partitions(const struct export_raw_options *o, struct plan *plan, size_t *n,
                           struct mosaic_error *err)
{
	const char *fs = o->filesystem ? o->filesystem : "ext4";
	if (strcmp(fs, "erofs") == 0)
		return mosaic_errorf(err, -ENOTSUP,
		                     "an erofs root cannot be written from the composition: this "
		                     "system's mkfs.erofs (erofs-utils) builds only from an unpacked "
		                     "directory; use --filesystem squashfs for a read-only root");
	if (strcmp(fs, "ext4") != 0 && strcmp(fs, "squashfs") != 0)
		return mosaic_errorf(err, -EINVAL,
		                     "root filesystem '%s' is not known: ext4 or squashfs", fs);
	if (o->n_partitions + 3 > EXPORT_MAX_PARTITIONS)
		return mosaic_errorf(err, -E2BIG, "at most %d partitions besides the ESP and the root",
		                     EXPORT_MAX_PARTITIONS - 3);
	*n = 0;
	plan[(*n)++] = (struct plan){.mountpoint = "/", .rel = "", .squashfs = fs[0] == 's'};
	bool has_var = false;
	for (size_t i = 0; i < o->n_partitions; i++) {
		const struct export_partition_spec *p = &o->partitions[i];
		const char *m = p->mountpoint;
		if (!m) {
			if (!p->size)
				return mosaic_errorf(err, -EINVAL, "a swap partition needs a size");
			plan[(*n)++] = (struct plan){.size = p->size};
			continue;
		}
		if (m[0] != '/' || !m[1] || m[strlen(m) - 1] == '/' || strstr(m, "//") ||
		    strstr(m, "/./") || strstr(m, "/../") || strcmp(m + strlen(m) - 2, "/.") == 0 ||
		    strcmp(m + strlen(m) - 3, "/..") == 0)
			return mosaic_errorf(err, -EINVAL,
			                     "partition mount point '%s': give an absolute path "
			                     "other than / (like /var)",
			                     m);
		for (size_t j = 1; j < *n; j++)
			if (plan[j].mountpoint && strcmp(plan[j].mountpoint, m) == 0)
				return mosaic_errorf(err, -EINVAL,
				                     "partition mount point %s is given twice", m);
		if (strcmp(m, "/boot/efi") == 0 || strcmp(m, "/efi") == 0)
			return mosaic_errorf(err, -EINVAL,
			                     "%s is the ESP's: the disk always has one", m);
		has_var |= strcmp(m, "/var") == 0;
		plan[(*n)++] = (struct plan){.mountpoint = m, .rel = m + 1, .size = p->size};
	}
	/* A read-only root needs somewhere to write: /var of its own, sized from its content. */
	if (plan[0].squashfs && !has_var)
		plan[(*n)++] = (struct plan){.mountpoint = "/var", .rel = "var"};
	return 0;
}

/* The filesystem of plan that holds path (a view path, "" for the root): the one with the
 * longest mount point at or above it, plan[skip] left out (SIZE_MAX: none). */
static size_t plan_for(const struct plan *plan, size_t n, const char *path, size_t skip)
{
	size_t best = 0, best_len = 0;
	for (size_t i = 1; i < n; i++) {
		if (!plan[i].mountpoint || i == skip)
			continue;
		size_t l = strlen(plan[i].rel);
		if (l > best_len && strncmp(path, plan[i].rel, l) == 0 &&
		    (path[l] == '/' || path[l] == 0)) {
			best = i;
			best_len = l;
		}
	}
	return best;
}

/* The mount points right below plan[i]'s (the filesystems it holds only the directory of). */
static size_t plan_cuts(const struct plan *plan, size_t n, size_t i, char **cut)
{
	size_t k = 0;
	for (size_t j = 1; j < n; j++)
		if (j != i && plan[j].mountpoint && plan_for(plan, n, plan[j].rel, j) == i)
			cut[k++] = (char *)plan[j].rel;
	return k;
}

/* ---- the sizing walk -------------------------------------------------------------------------
 */

struct scan {
	struct export_scan v;
	struct plan *plan;
	size_t n_plan;
	bool has_sd_boot, has_fstab;
	struct mosaic_error *err;
};

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static void account(struct plan *p, const struct export_entry *e)
{
	bool first = true;
	if (e->link_id) {
		uint64_t *id = xmalloc(sizeof(*id));
		*id = e->link_id;
		uint64_t **found = tsearch(id, &p->links, id_cmp);
		if (!found)
			abort(); /* out of memory */
		if (*found != id) {
			free(id);
			first = false;
		}
	}
	export_ext4_account(&p->usage, e, first);
}

static int scan_entry(void *ctx, const struct export_entry *e)
{
	struct scan *s = ctx;
	size_t i = plan_for(s->plan, s->n_plan, e->path, SIZE_MAX);
	account(&s->plan[i], e);
	/* A mount point is an (empty) directory of the filesystem above it too. */
	if (i > 0 && strcmp(e->path, s->plan[i].rel) == 0) {
		if (!S_ISDIR(e->mode))
			return mosaic_errorf(s->err, -ENOTDIR,
			                     "partition mount point %s is not a directory in the "
			                     "composition",
			                     s->plan[i].mountpoint);
		s->plan[i].seen = true;
		account(&s->plan[plan_for(s->plan, s->n_plan, e->path, i)], e);
	}
	export_scan_entry(&s->v, e);
	if (S_ISREG(e->mode) && strcmp(e->path, SD_BOOT_PATH) == 0)
		s->has_sd_boot = true;
	if (strcmp(e->path, FSTAB_PATH) == 0)
		s->has_fstab = S_ISREG(e->mode);
	return 0;
}

static void scan_clear(struct scan *s)
{
	for (size_t i = 0; i < s->n_plan; i++)
		tdestroy(s->plan[i].links, free);
	export_scan_clear(&s->v);
}

/* ---- the ESP ---------------------------------------------------------------------------------
 */

/* The kernel command line: root=PARTUUID= (Debian's initramfs-tools does not find the root by
 * its type GUID), ro, then the manifest's or the view's /etc/kernel/cmdline; a read-only root
 * ends with ro, whatever came before. */
static char *kernel_options(struct export_reader *r, const char *root_partuuid, const char *cmdline,
                            bool read_only)
{
	_cleanup_free_ char *first = xasprintf("root=PARTUUID=%s ro", root_partuuid);
	char *line = export_kernel_cmdline(r, first, cmdline);
	if (!read_only)
		return line;
	char *ro = xasprintf("%s ro", line);
	free(line);
	return ro;
}

static char *esp_path(const char *image, uint64_t offset)
{
	return xasprintf("%s@@%ju", image, (uintmax_t)offset);
}

/* The boot loader staged as f_loader (what goes to EFI/BOOT/BOOTX64.EFI) with its
 * configuration, for systemd-boot (loader.conf, an entry) or GRUB (grub.cfg; the image finds
 * the ESP by its volume id). */
struct loader_files {
	char *local, *esp; /* staged file, path on the ESP */
};

static int stage_loader(struct export_reader *r, const struct export_raw_options *o,
                        const struct scan *s, const char *stage, const char *esp_volid,
                        const char *version, const char *options, int64_t now,
                        struct loader_files files[3], struct mosaic_error *err)
{
	_cleanup_free_ char *osrel = NULL, *title = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	if (export_read_path(r, "usr/lib/os-release", 65536, &osrel, &len, &ignored) == 0)
		title = export_os_release_value(osrel, "PRETTY_NAME");
	const char *name = title ? title : "mosaic";
	files[0] = (struct loader_files){path_join(stage, "BOOTX64.EFI"),
	                                 xstrdup("::/EFI/BOOT/BOOTX64.EFI")};
	int e;
	if (o->bootloader && strcmp(o->bootloader, "grub") == 0) {
		/* GRUB's menu title is quoted: a quote in the name would end it. */
		for (char *p = title; p && *p; p++)
			if (*p == '\'' || *p == '\\')
				*p = ' ';
		_cleanup_free_ char *early = path_join(stage, "early.cfg");
		/* GRUB names a FAT volume id in lower case */
		_cleanup_free_ char *volid = xstrdup(esp_volid);
		for (char *p = volid; *p; p++)
			*p = *p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p;
		_cleanup_free_ char *early_text =
		    xasprintf("search --no-floppy --set=root --fs-uuid %s\n"
		              "set prefix=($root)/grub\n"
		              "configfile $prefix/grub.cfg\n",
		              volid);
		_cleanup_free_ char *cfg = xasprintf("serial --unit=0 --speed=115200\n"
		                                     "terminal_input console serial\n"
		                                     "terminal_output console serial\n"
		                                     "set default=0\n"
		                                     "set timeout=0\n"
		                                     "menuentry '%s' {\n"
		                                     "\tlinux /mosaic/vmlinuz-%s %s\n"
		                                     "\tinitrd /mosaic/initrd.img-%s\n"
		                                     "}\n",
		                                     name, version, options, version);
		files[1] = (struct loader_files){path_join(stage, "grub.cfg"),
		                                 xstrdup("::/grub/grub.cfg")};
		const char *const mods[] = {"efi_gop", "efi_uga", "all_video"};
		if ((e = export_stage_buffer(early, early_text, strlen(early_text), now, err)) < 0 ||
		    (e = export_stage_buffer(files[1].local, cfg, strlen(cfg), now, err)) < 0 ||
		    (e = export_grub_mkimage("x86_64-efi", early, files[0].local, mods,
		                             ARRAY_SIZE(mods), err)) < 0)
			return e;
		const struct timespec t[2] = {{.tv_sec = now}, {.tv_sec = now}};
		if (utimensat(AT_FDCWD, files[0].local, t, 0) < 0)
			return mosaic_errorf(err, -errno, "%s: %m", files[0].local);
		return 0;
	}
	/* systemd-boot: the composition's own (its version matches the system and the SBOM lists
	 * it), else the host's from the package systemd-boot-efi. */
	if (s->has_sd_boot)
		e = export_stage_view_file(r, SD_BOOT_PATH, files[0].local, now, err);
	else if (access("/" SD_BOOT_PATH, R_OK) == 0)
		e = export_stage_host_file("/" SD_BOOT_PATH, files[0].local, now, err);
	else
		e = mosaic_errorf(err, -ENOENT,
		                  "no systemd-boot: neither the composition nor this host has /%s; "
		                  "add systemd-boot-efi to the manifest's packages or install it "
		                  "here (apt-get install systemd-boot-efi)",
		                  SD_BOOT_PATH);
	if (e < 0)
		return e;
	_cleanup_free_ char *entry = xasprintf("title %s\nversion %s\nlinux /mosaic/vmlinuz-%s\n"
	                                       "initrd /mosaic/initrd.img-%s\noptions %s\n",
	                                       name, version, version, version, options);
	static const char loader_conf[] = "default mosaic.conf\ntimeout 0\n";
	files[1] = (struct loader_files){path_join(stage, "loader.conf"),
	                                 xstrdup("::/loader/loader.conf")};
	files[2] = (struct loader_files){path_join(stage, "mosaic.conf"),
	                                 xstrdup("::/loader/entries/mosaic.conf")};
	if ((e = export_stage_buffer(files[1].local, loader_conf, strlen(loader_conf), now, err)) <
	        0 ||
	    (e = export_stage_buffer(files[2].local, entry, strlen(entry), now, err)) < 0)
		return e;
	return 0;
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
	_cleanup_free_ char *version = xstrdup(strchr(s->v.kernel, '-') + 1);
	_cleanup_free_ char *f_kernel = xasprintf("%s/vmlinuz-%s", stage, version);
	_cleanup_free_ char *f_initrd = xasprintf("%s/initrd.img-%s", stage, version);
	_cleanup_free_ char *initrd = xasprintf("boot/initrd.img-%s", version);
	_cleanup_free_ char *k_dst = xasprintf("::/mosaic/vmlinuz-%s", version);
	_cleanup_free_ char *i_dst = xasprintf("::/mosaic/initrd.img-%s", version);
	_cleanup_free_ char *options = NULL, *have_initrd = export_scan_initrd(&s->v);
	bool grub = o->bootloader && strcmp(o->bootloader, "grub") == 0;
	struct loader_files loader[3] = {0};
	/* The directories the files go to, staged empty so that mcopy -s makes them dated. */
	static const char *const sd_dirs[] = {"EFI", "EFI/BOOT", "loader", "loader/entries",
	                                      "mosaic"};
	static const char *const grub_dirs[] = {"EFI", "EFI/BOOT", "grub", "mosaic"};
	const char *const *dirs = grub ? grub_dirs : sd_dirs;
	size_t n_dirs = grub ? ARRAY_SIZE(grub_dirs) : ARRAY_SIZE(sd_dirs);
	_cleanup_free_ char *tree = path_join(stage, "tree");
	_cleanup_free_ char *t_efi = path_join(tree, "EFI"), *t_mosaic = path_join(tree, "mosaic");
	_cleanup_free_ char *t_cfg = path_join(tree, dirs[2]);
	if (!have_initrd) {
		e = mosaic_errorf(err, -ENOENT,
		                  "the composition has /%s but no /%s: configure it (mosaic "
		                  "configure; initramfs-tools makes the initramfs) or give "
		                  "--no-bootloader",
		                  s->v.kernel, initrd);
		goto out;
	}
	if (mkdir(tree, 0755) < 0) {
		e = mosaic_errorf(err, -errno, "creating %s: %m", tree);
		goto out;
	}
	for (size_t i = 0; i < n_dirs; i++) {
		_cleanup_free_ char *d = path_join(tree, dirs[i]);
		if (mkdir(d, 0755) < 0) {
			e = mosaic_errorf(err, -errno, "creating %s: %m", d);
			goto out;
		}
	}
	options = kernel_options(r, root->uuid, o->kernel_cmdline,
	                         o->filesystem && strcmp(o->filesystem, "squashfs") == 0);
	if ((e = stage_loader(r, o, s, stage, esp->fs_uuid, version, options, now, loader, err)) <
	        0 ||
	    (e = export_stage_view_file(r, s->v.kernel, f_kernel, now, err)) < 0 ||
	    (e = export_stage_view_file(r, initrd, f_initrd, now, err)) < 0)
		goto out;
	/* Deepest first, so each directory's time is set after what is made in it. */
	const struct timespec t[2] = {{.tv_sec = now}, {.tv_sec = now}};
	for (size_t i = n_dirs; i-- > 0;) {
		_cleanup_free_ char *d = path_join(tree, dirs[i]);
		if (utimensat(AT_FDCWD, d, t, 0) < 0) {
			e = mosaic_errorf(err, -errno, "%s: %m", d);
			goto out;
		}
	}
	/* The top directories with -s (their order is the arguments'), then each file by name,
	 * all with -m: times from the staged files. */
	char *mkdirs[] = {"mcopy", "-s", "-m", "-i", img, t_efi, t_cfg, t_mosaic, "::/", NULL};
	if ((e = export_run_tool(mkdirs, "mtools", NULL, err)) < 0)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(loader) && loader[i].local; i++) {
		char *copy[] = {"mcopy", "-m", "-i", img, loader[i].local, loader[i].esp, NULL};
		if ((e = export_run_tool(copy, "mtools", NULL, err)) < 0)
			goto out;
	}
	char *copies[][7] = {
	    {"mcopy", "-m", "-i", img, f_kernel, k_dst, NULL},
	    {"mcopy", "-m", "-i", img, f_initrd, i_dst, NULL},
	};
	for (size_t i = 0; i < ARRAY_SIZE(copies); i++)
		if ((e = export_run_tool(copies[i], "mtools", NULL, err)) < 0)
			goto out;
	res->kernel = xasprintf("/%s", s->v.kernel);
	res->initrd = xasprintf("/%s", initrd);
	res->bootloader = xstrdup(grub ? "grub" : "systemd-boot");
out:
	for (size_t i = 0; i < ARRAY_SIZE(loader); i++) {
		free(loader[i].local);
		free(loader[i].esp);
	}
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

/* Copies the file src into the disk at offset: its data only, so its holes stay zeros. */
static int copy_into(const char *disk, uint64_t offset, const char *src, struct mosaic_error *err)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int out = open(disk, O_WRONLY | O_CLOEXEC);
	if (in < 0 || out < 0)
		return mosaic_errorf(err, -errno, "copying %s into %s: %m", src, disk);
	_cleanup_free_ char *buf = xmalloc(EXPORT_MIB);
	off_t pos = 0;
	for (;;) {
		off_t data = lseek(in, pos, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			return 0;
		off_t hole = data < 0 ? -1 : lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			return mosaic_errorf(err, -errno, "%s: %m", src);
		for (pos = data; pos < hole;) {
			size_t want = hole - pos < (off_t)EXPORT_MIB ? (size_t)(hole - pos) : EXPORT_MIB;
			ssize_t n = pread(in, buf, want, pos);
			if (n <= 0)
				return mosaic_errorf(err, n < 0 ? -errno : -EIO, "reading %s: %s", src,
				                     n < 0 ? strerror(errno) : "short read");
			for (ssize_t done = 0; done < n;) {
				ssize_t w = pwrite(out, buf + done, n - done, offset + pos + done);
				if (w < 0 && errno == EINTR)
					continue;
				if (w < 0)
					return mosaic_errorf(err, -errno, "writing %s: %m", disk);
				done += w;
			}
			pos += n;
		}
	}
}

/* A swap area made by mkswap in a file of its own (mkswap here has no --offset), then copied
 * in: only its first page is written. */
static int write_swap(const char *disk, const struct export_partition *p,
                      struct mosaic_error *err)
{
	_cleanup_free_ char *tmp = xasprintf("%s.swap-XXXXXX", disk);
	int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "creating %s: %m", tmp);
	int e = 0;
	if (ftruncate(fd, p->size) < 0)
		e = mosaic_errorf(err, -errno, "%s: %m", tmp);
	close(fd);
	char *mkswap[] = {"mkswap", "-U", (char *)p->fs_uuid, "-L", "swap", tmp, NULL};
	if (e == 0)
		e = export_run_tool(mkswap, "util-linux", NULL, err);
	if (e == 0)
		e = copy_into(disk, p->start, tmp, err);
	unlink(tmp);
	return e;
}

/* The fstab lines for the disk's own filesystems, after what the view's /etc/fstab says. */
static char *fstab_text(struct export_reader *r, const struct scan *s,
                        const struct export_raw_result *res)
{
	_cleanup_free_ char *old = NULL;
	size_t len = 0;
	struct mosaic_error ignored = {0};
	if (!s->has_fstab || export_read_path(r, FSTAB_PATH, 1 << 20, &old, &len, &ignored) < 0)
		len = 0;
	_cleanup_free_ char *text = xasprintf("%.*s%s# the partitions of this disk (mosaic export)\n",
	                                      (int)len, len ? old : "",
	                                      len && old[len - 1] != '\n' ? "\n" : "");
	for (size_t i = 1; i < res->n_parts; i++) {
		const struct export_partition *p = &res->parts[i];
		bool ro = strcmp(p->filesystem, "squashfs") == 0, swap = !p->mountpoint;
		char *line = xasprintf("%sPARTUUID=%s %s %s %s 0 %d\n", text, p->uuid,
		                       swap ? "none" : p->mountpoint, p->filesystem,
		                       swap ? "sw" : ro ? "ro" : "defaults",
		                       swap || ro ? 0 : i == 1 ? 1 : 2);
		free(text);
		text = line;
	}
	return TAKE_PTR(text);
}

int export_raw(struct export_reader *r, const struct export_raw_options *o,
               struct export_raw_result *res, struct mosaic_error *err)
{
	*res = (struct export_raw_result){.newest_mtime = INT64_MIN};
	struct plan plan[EXPORT_MAX_PARTITIONS];
	struct scan s = {.plan = plan, .err = err};
	_cleanup_free_ char *sqfs = NULL;
	int e = plan_partitions(o, plan, &s.n_plan, err);
	if (e < 0)
		return e;
	export_scan_begin(&s.v, "mosaic raw disk v1", export_reader_index(r), o->source_date_epoch);
	/* The layout is part of what the UUIDs derive from. */
	for (size_t i = 0; i < s.n_plan; i++) {
		_cleanup_free_ char *what =
		    xasprintf("%s %ju %d", plan[i].mountpoint ? plan[i].mountpoint : "swap",
		              (uintmax_t)plan[i].size, plan[i].squashfs);
		sha256_update(s.v.meta, what, strlen(what) + 1);
	}
	if (o->bootloader) {
		sha256_update(s.v.meta, o->bootloader, strlen(o->bootloader) + 1);
	}
	export_reader_restrict(r, "", NULL, 0);
	if ((e = export_walk(r, scan_entry, &s, err)) < 0)
		goto out;
	for (size_t i = 1; i < s.n_plan; i++)
		if (plan[i].mountpoint && !plan[i].seen) {
			e = mosaic_errorf(err, -ENOENT,
			                  "the composition has no directory %s to mount a partition "
			                  "on: add it (a config: file below it, or a run: step "
			                  "that makes it)",
			                  plan[i].mountpoint);
			goto out;
		}
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

	/* Names, types and UUIDs first: /etc/fstab names the partitions by their UUIDs. */
	uint8_t u[16];
	export_derive_uuid(seed, "disk", u);
	export_uuid_string(u, res->disk_uuid);
	struct export_partition *pe = &res->parts[0];
	*pe = (struct export_partition){
	    .number = 1, .type_guid = ESP_TYPE, .filesystem = "vfat", .start = EXPORT_MIB};
	snprintf(pe->name, sizeof(pe->name), "esp");
	res->n_parts = 1 + s.n_plan;
	uint8_t fs_uuids[EXPORT_MAX_PARTITIONS][16];
	for (size_t i = 0; i < s.n_plan; i++) {
		struct export_partition *p = &res->parts[1 + i];
		*p = (struct export_partition){.number = 2 + i, .mountpoint = plan[i].mountpoint};
		if (i == 0) {
			p->type_guid = ROOT_X86_64;
			snprintf(p->name, sizeof(p->name), "root-x86-64");
			p->filesystem = plan[0].squashfs ? "squashfs" : "ext4";
		} else if (!plan[i].mountpoint) {
			p->type_guid = SWAP_TYPE;
			snprintf(p->name, sizeof(p->name), "swap");
			p->filesystem = "swap";
		} else {
			p->type_guid = LINUX_DATA;
			p->filesystem = "ext4";
			/* "/srv/www" is named "srv-www" */
			snprintf(p->name, sizeof(p->name), "%s", plan[i].rel);
			for (char *c = p->name; *c; c++)
				*c = *c == '/' ? '-' : *c;
			for (size_t t = 0; t < ARRAY_SIZE(part_types); t++)
				if (strcmp(plan[i].mountpoint, part_types[t].mountpoint) == 0) {
					p->type_guid = part_types[t].type;
					snprintf(p->name, sizeof(p->name), "%s", part_types[t].name);
				}
		}
		/* two swaps get two UUIDs */
		_cleanup_free_ char *label = i == 0 ? xstrdup(p->name)
		                                    : xasprintf("%s %zu", p->name, i);
		_cleanup_free_ char *fs_label = xasprintf("%s-fs", label);
		export_derive_uuid(seed, label, u);
		export_uuid_string(u, p->uuid);
		export_derive_uuid(seed, fs_label, fs_uuids[i]);
		export_uuid_string(fs_uuids[i], p->fs_uuid);
	}
	/* The root keeps the names it always had. */
	export_derive_uuid(seed, "root-x86-64", u);
	export_uuid_string(u, res->parts[1].uuid);
	uint8_t volid[16], hash_seed[16];
	export_derive_uuid(seed, "root-fs", fs_uuids[0]);
	export_uuid_string(fs_uuids[0], res->parts[1].fs_uuid);
	export_derive_uuid(seed, "esp", u);
	export_uuid_string(u, pe->uuid);
	export_derive_uuid(seed, "esp-fs", volid);
	snprintf(pe->fs_uuid, sizeof(pe->fs_uuid), "%02X%02X-%02X%02X", volid[0], volid[1],
	         volid[2], volid[3]);
	export_derive_uuid(seed, "root-fs-hash-seed", hash_seed);

	if (s.n_plan > 1 || plan[0].squashfs) {
		res->fstab = fstab_text(r, &s, res);
		export_reader_put_file(r, FSTAB_PATH, res->fstab, strlen(res->fstab), 0644, now);
		const struct export_entry fe = {.path = FSTAB_PATH,
		                                .name = "fstab",
		                                .depth = 2,
		                                .mode = S_IFREG | 0644,
		                                .size = strlen(res->fstab),
		                                .nlink = 1};
		account(&plan[plan_for(plan, s.n_plan, FSTAB_PATH, SIZE_MAX)], &fe);
	}

	/* A squashfs root is written first: its size is the partition's. */
	char *cut[EXPORT_MAX_PARTITIONS];
	if (plan[0].squashfs) {
		sqfs = xasprintf("%s.root-XXXXXX", o->path);
		int fd = mkostemp(sqfs, O_CLOEXEC);
		if (fd < 0) {
			e = mosaic_errorf(err, -errno, "creating %s: %m", sqfs);
			free(TAKE_PTR(sqfs));
			goto out;
		}
		close(fd);
		export_reader_restrict(r, "", cut, plan_cuts(plan, s.n_plan, 0, cut));
		const struct export_squashfs_options so = {
		    .path = sqfs, .source_date_epoch = o->source_date_epoch, .mtime = now};
		struct export_squashfs_result sr;
		if ((e = export_squashfs(r, &so, &sr, err)) < 0)
			goto out;
		plan[0].size = round_up(sr.size, EXPORT_MIB);
	}

	/* Sizes: the ESP holds the boot loader, the kernel and its initramfs with room for as
	 * much again (a kernel update), 64 MiB at least (FAT32 with 512-byte clusters needs
	 * 33); an ext4 filesystem its content plus free space unless a size is given; with
	 * --size, what is left goes to the root, or with a read-only root to the first ext4
	 * filesystem without a size of its own. */
	uint64_t esp =
	    o->no_bootloader ? ESP_MIN : round_up(2 * s.v.boot_bytes + 16 * EXPORT_MIB, EXPORT_MIB);
	if (esp < ESP_MIN)
		esp = ESP_MIN;
	pe->size = esp;
	size_t flex = SIZE_MAX;
	for (size_t i = 0; i < s.n_plan && o->size && flex == SIZE_MAX; i++)
		if (plan[i].mountpoint && !plan[i].squashfs && !plan[i].size)
			flex = i;
	uint64_t fixed = 2 * EXPORT_MIB + esp, flex_min = 0;
	for (size_t i = 0; i < s.n_plan; i++) {
		struct plan *p = &plan[i];
		uint64_t min_blocks, min_inodes;
		if (!p->mountpoint || p->squashfs) {
			p->size = round_up(p->size, EXPORT_MIB);
			fixed += p->size;
			continue;
		}
		export_ext4_size(&p->usage, 0, &min_blocks, &min_inodes);
		uint64_t min = round_up(min_blocks * EXPORT_EXT4_BLOCK, EXPORT_MIB);
		if (p->size && p->size < min) {
			e = mosaic_errorf(err, -ENOSPC,
			                  "partition %s: %ju MiB is too small: its content needs at "
			                  "least %ju MiB",
			                  p->mountpoint, (uintmax_t)(p->size / EXPORT_MIB),
			                  (uintmax_t)(min / EXPORT_MIB));
			goto out;
		}
		if (i == flex) {
			flex_min = min;
			continue;
		}
		if (p->size)
			p->size = round_up(p->size, EXPORT_MIB);
		else {
			export_ext4_size(&p->usage, o->free_space, &p->blocks, &p->inodes);
			p->size = round_up(p->blocks * EXPORT_EXT4_BLOCK, EXPORT_MIB);
		}
		fixed += p->size;
	}
	if (o->size && (o->size < fixed + flex_min)) {
		uint64_t need = round_up(fixed + flex_min, EXPORT_MIB);
		e = mosaic_errorf(err, -ENOSPC,
		                  "--size %ju MiB is too small: the content needs at least %ju MiB "
		                  "(%ju MiB ESP, %ju MiB root); give --size %juM or more, or leave "
		                  "--size out to size from the content",
		                  (uintmax_t)(o->size / EXPORT_MIB), (uintmax_t)(need / EXPORT_MIB),
		                  (uintmax_t)(esp / EXPORT_MIB),
		                  (uintmax_t)((flex == 0 ? flex_min : plan[0].size) / EXPORT_MIB),
		                  (uintmax_t)(need / EXPORT_MIB));
		goto out;
	}
	if (flex != SIZE_MAX)
		plan[flex].size = (o->size - fixed) / EXPORT_MIB * EXPORT_MIB;
	uint64_t start = EXPORT_MIB + esp;
	for (size_t i = 0; i < s.n_plan; i++) {
		struct plan *p = &plan[i];
		if (p->mountpoint && !p->squashfs) {
			/* Inodes for the content plus what the free space would hold. */
			uint64_t min_blocks, ignored;
			export_ext4_size(&p->usage, 0, &min_blocks, &ignored);
			p->blocks = p->size / EXPORT_EXT4_BLOCK;
			export_ext4_size(&p->usage, p->size - min_blocks * EXPORT_EXT4_BLOCK, &ignored,
			                 &p->inodes);
		}
		res->parts[1 + i].start = start;
		res->parts[1 + i].size = p->size;
		start += p->size;
	}
	res->size = o->size ? o->size / EXPORT_MIB * EXPORT_MIB : start + EXPORT_MIB;

	{
		_cleanup_close_ int fd = open(o->path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || ftruncate(fd, res->size) < 0) {
			e = mosaic_errorf(err, -errno, "%s: %m", o->path);
			goto out;
		}
	}
	if ((e = write_gpt(o->path, res->disk_uuid, res->parts, res->n_parts, err)) < 0)
		goto out;
	/* The ESP first: mkfs.vfat fsyncs the image, which after the filesystems would wait for
	 * all of them to reach the disk; written before, their writeback runs while the image is
	 * hashed. */
	if ((e = write_esp(r, o, &s, pe, &res->parts[1],
	                   (uint32_t)volid[0] << 24 | volid[1] << 16 | volid[2] << 8 | volid[3],
	                   now, res, err)) < 0)
		goto out;
	for (size_t i = 0; i < s.n_plan; i++) {
		struct export_partition *p = &res->parts[1 + i];
		if (!plan[i].mountpoint) {
			e = write_swap(o->path, p, err);
		} else if (plan[i].squashfs) {
			e = copy_into(o->path, p->start, sqfs, err);
		} else {
			struct export_ext4_options eo = {.path = o->path,
			                                 .offset = p->start,
			                                 .blocks = plan[i].blocks,
			                                 .inodes = plan[i].inodes,
			                                 .epoch = o->source_date_epoch,
			                                 .now = now,
			                                 .label = i == 0 ? "root" : p->name};
			memcpy(eo.uuid, fs_uuids[i], 16);
			/* each filesystem's directory hashes get a seed of their own */
			_cleanup_free_ char *hs = xasprintf("%s-fs-hash-seed", p->name);
			export_derive_uuid(seed, hs, eo.hash_seed);
			if (i == 0)
				memcpy(eo.hash_seed, hash_seed, 16);
			export_reader_restrict(r, plan[i].rel, cut, plan_cuts(plan, s.n_plan, i, cut));
			e = export_ext4_write(r, &eo, err);
		}
		if (e < 0) {
			mosaic_error_prefix(err, "%s", p->mountpoint ? p->mountpoint : "swap");
			goto out;
		}
	}
out:
	export_reader_restrict(r, "", NULL, 0);
	if (sqfs)
		unlink(sqfs);
	scan_clear(&s);
	if (e < 0)
		export_raw_result_clear(res);
	return e;
}
