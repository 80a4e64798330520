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
#define MAX_BOOT_FILE (1ull << 30)

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
	struct export_fs_usage usage;
	void *links; /* tsearch set of link ids seen */
	struct sha256 *meta;
	int64_t epoch;
	uint64_t entries;
	int64_t newest;
	char *kernel, *initrd_dir_best; /* boot/vmlinuz-VERSION with the highest VERSION */
	char **initrds;                 /* every boot/initrd.img-VERSION */
	size_t n_initrds;
	uint64_t boot_bytes; /* kernel and initrds, for the ESP's size */
	bool has_sd_boot;
};

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static void hash_field(struct sha256 *h, const void *p, size_t n)
{
	uint64_t len = n;
	sha256_update(h, &len, sizeof(len));
	sha256_update(h, p, n);
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
	s->entries++;
	if (e->mtime > s->newest)
		s->newest = e->mtime;
	/* The seed: what the view is (names, types, owners, sizes, clamped times, targets,
	 * xattrs); file contents are identified by the fragment digests hashed beside it. */
	int64_t mtime = s->epoch >= 0 && e->mtime > s->epoch ? s->epoch : e->mtime;
	uint64_t fields[] = {e->mode, e->uid, e->gid, e->size, (uint64_t)mtime, e->rdev};
	hash_field(s->meta, e->path, strlen(e->path));
	hash_field(s->meta, fields, sizeof(fields));
	if (e->link)
		hash_field(s->meta, e->link, strlen(e->link));
	for (size_t i = 0; i < e->n_xattrs; i++) {
		hash_field(s->meta, e->xattrs[i].name, strlen(e->xattrs[i].name));
		hash_field(s->meta, e->xattrs[i].value, e->xattrs[i].len);
	}

	if (S_ISREG(e->mode) && strcmp(e->path, SD_BOOT_PATH) == 0)
		s->has_sd_boot = true;
	if (S_ISREG(e->mode) && e->depth == 2 && strncmp(e->path, "boot/", 5) == 0) {
		if (strncmp(e->name, "vmlinuz-", 8) == 0) {
			if (!s->kernel || strverscmp(e->name, s->kernel + 5) > 0) {
				free(s->kernel);
				s->kernel = xstrdup(e->path);
			}
			s->boot_bytes += e->size;
		} else if (strncmp(e->name, "initrd.img-", 11) == 0) {
			s->initrds = xrealloc(s->initrds, (s->n_initrds + 1) * sizeof(*s->initrds));
			s->initrds[s->n_initrds++] = xstrdup(e->path);
			s->boot_bytes += e->size;
		}
	}
	return 0;
}

static void scan_clear(struct scan *s)
{
	tdestroy(s->links, free);
	free(s->kernel);
	strv_free(s->initrds, s->n_initrds);
	if (s->meta) {
		char hex[SHA256_HEX_LEN + 1];
		sha256_final(s->meta, hex);
	}
}

/* ---- running mkfs.vfat and mtools ------------------------------------------------------------
 */

/* Runs argv (looked up in PATH, then /usr/sbin and /sbin, where a normal user's PATH may not
 * reach mkfs.vfat) with MTOOLS_SKIP_CHECK=1; its stderr becomes the error message. */
static int run_tool(char *const argv[], const char *package, struct mosaic_error *err)
{
	size_t n_env = 0;
	while (environ[n_env])
		n_env++;
	_cleanup_free_ char **envp = xcalloc(n_env + 3, sizeof(*envp));
	size_t k = 0;
	for (size_t i = 0; i < n_env; i++)
		if (strncmp(environ[i], "MTOOLS_SKIP_CHECK=", 18) != 0 &&
		    strncmp(environ[i], "LC_ALL=", 7) != 0)
			envp[k++] = environ[i];
	/* mtools otherwise refuses a FAT whose size does not match the file it is in. */
	envp[k++] = "MTOOLS_SKIP_CHECK=1";
	envp[k++] = "LC_ALL=C";

	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return mosaic_errorf(err, -errno, "pipe: %m");
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	pid_t pid;
	int e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, envp);
	for (const char *const *dir = (const char *const[]){"/usr/sbin", "/sbin", NULL};
	     e == ENOENT && *dir && !strchr(argv[0], '/'); dir++) {
		_cleanup_free_ char *path = path_join(*dir, argv[0]);
		e = posix_spawn(&pid, path, &fa, NULL, argv, envp);
	}
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (e) {
		close(pipefd[0]);
		if (e == ENOENT)
			return mosaic_errorf(
			    err, -ENOENT,
			    "%s not found: install the package %s (apt-get install "
			    "%s)",
			    argv[0], package, package);
		return mosaic_errorf(err, -e, "running %s: %s", argv[0], strerror(e));
	}
	char out[2048];
	size_t len = 0;
	ssize_t n;
	char sink[512];
	while ((n = read(pipefd[0], len < sizeof(out) - 1 ? out + len : sink,
	                 len < sizeof(out) - 1 ? sizeof(out) - 1 - len : sizeof(sink))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		if (len < sizeof(out) - 1)
			len += n;
	}
	out[len] = 0;
	close(pipefd[0]);
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	while (len > 0 && out[len - 1] == '\n')
		out[--len] = 0;
	return mosaic_errorf(err, -EIO, "%s failed: %s", argv[0], len ? out : "(no message)");
}

/* ---- the ESP ---------------------------------------------------------------------------------
 */

struct esp_file {
	const char *dir, *name; /* on the ESP */
	char *staged;           /* the file written beside the image */
};

static int stage_buffer(const char *path, const void *data, size_t len, int64_t mtime,
                        struct mosaic_error *err)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "creating %s: %m", path);
	int e = write_all(fd, data, len);
	if (e < 0)
		return mosaic_errorf(err, e, "writing %s: %s", path, strerror(-e));
	const struct timespec t[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
	if (futimens(fd, t) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", path);
	return 0;
}

static int stage_view_file(struct export_reader *r, const char *view_path, const char *path,
                           int64_t mtime, struct mosaic_error *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int e = export_read_path(r, view_path, MAX_BOOT_FILE, &data, &len, err);
	if (e < 0)
		return e;
	return stage_buffer(path, data, len, mtime, err);
}

static int stage_host_file(const char *host_path, const char *path, int64_t mtime,
                           struct mosaic_error *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int e = read_file(host_path, MAX_BOOT_FILE, &data, &len);
	if (e < 0)
		return mosaic_errorf(err, e, "reading %s: %s", host_path, strerror(-e));
	return stage_buffer(path, data, len, mtime, err);
}

/* The first value of KEY= in an os-release text, unquoted; NULL if none. */
static char *os_release_value(const char *text, const char *key)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, key, kl) != 0 || p[kl] != '=')
			continue;
		const char *v = p + kl + 1, *end = strchrnul(v, '\n');
		if (end > v && (*v == '"' || *v == '\'') && end[-1] == *v) {
			v++;
			end--;
		}
		return xstrndup(v, end - v);
	}
	return NULL;
}

/* The kernel command line: root=PARTUUID= (Debian's initramfs-tools does not find the root by
 * its type GUID), ro, then the manifest's or the view's /etc/kernel/cmdline. */
static char *kernel_options(struct export_reader *r, const char *root_partuuid, const char *cmdline)
{
	_cleanup_free_ char *view = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	if (!cmdline &&
	    export_read_path(r, "etc/kernel/cmdline", 65536, &view, &len, &ignored) == 0)
		cmdline = view;
	_cleanup_free_ char *extra = xstrdup(cmdline ? cmdline : "");
	for (char *p = extra; *p; p++)
		if (*p == '\n' || *p == '\t' || *p == '\r')
			*p = ' ';
	size_t l = strlen(extra);
	while (l > 0 && extra[l - 1] == ' ')
		extra[--l] = 0;
	const char *start = extra + strspn(extra, " ");
	return xasprintf("root=PARTUUID=%s ro%s%s", root_partuuid, *start ? " " : "", start);
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
	int e = run_tool(mkfs, "dosfstools", err);
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
	_cleanup_free_ char *version = xstrdup(strchr(s->kernel, '-') + 1);
	_cleanup_free_ char *f_kernel = xasprintf("%s/vmlinuz-%s", stage, version);
	_cleanup_free_ char *f_initrd = xasprintf("%s/initrd.img-%s", stage, version);
	_cleanup_free_ char *initrd = xasprintf("boot/initrd.img-%s", version);
	_cleanup_free_ char *k_dst = xasprintf("::/mosaic/vmlinuz-%s", version);
	_cleanup_free_ char *i_dst = xasprintf("::/mosaic/initrd.img-%s", version);
	_cleanup_free_ char *osrel = NULL, *title = NULL, *options = NULL, *entry = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	bool have_initrd = false;
	for (size_t i = 0; i < s->n_initrds; i++)
		have_initrd |= strcmp(s->initrds[i], initrd) == 0;
	if (!have_initrd) {
		e = mosaic_errorf(err, -ENOENT,
		                  "the composition has /%s but no /%s: configure it (mosaic "
		                  "configure; initramfs-tools makes the initramfs) or give "
		                  "--no-bootloader",
		                  s->kernel, initrd);
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
		e = stage_view_file(r, SD_BOOT_PATH, f_sdboot, now, err);
	else if (access("/" SD_BOOT_PATH, R_OK) == 0)
		e = stage_host_file("/" SD_BOOT_PATH, f_sdboot, now, err);
	else
		e = mosaic_errorf(err, -ENOENT,
		                  "no systemd-boot: neither the composition nor this host has /%s; "
		                  "add systemd-boot-efi to the manifest's packages or install it "
		                  "here (apt-get install systemd-boot-efi)",
		                  SD_BOOT_PATH);
	if (e < 0)
		goto out;
	if (export_read_path(r, "usr/lib/os-release", 65536, &osrel, &len, &ignored) == 0)
		title = os_release_value(osrel, "PRETTY_NAME");
	options = kernel_options(r, root->uuid, o->kernel_cmdline);
	entry = xasprintf("title %s\nversion %s\nlinux /mosaic/vmlinuz-%s\n"
	                  "initrd /mosaic/initrd.img-%s\noptions %s\n",
	                  title ? title : "mosaic", version, version, version, options);
	static const char loader_conf[] = "default mosaic.conf\ntimeout 0\n";
	if ((e = stage_view_file(r, s->kernel, f_kernel, now, err)) < 0 ||
	    (e = stage_view_file(r, initrd, f_initrd, now, err)) < 0 ||
	    (e = stage_buffer(f_conf, loader_conf, strlen(loader_conf), now, err)) < 0 ||
	    (e = stage_buffer(f_entry, entry, strlen(entry), now, err)) < 0)
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
	if ((e = run_tool(mkdirs, "mtools", err)) < 0)
		goto out;
	for (size_t i = 0; i < ARRAY_SIZE(copies); i++)
		if ((e = run_tool(copies[i], "mtools", err)) < 0)
			goto out;
	res->kernel = xasprintf("/%s", s->kernel);
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
	struct scan s = {.meta = sha256_new(), .epoch = o->source_date_epoch, .newest = INT64_MIN};
	static const char tag[] = "mosaic raw disk v1";
	sha256_update(s.meta, tag, sizeof(tag));
	const struct compose_index *idx = export_reader_index(r);
	for (uint32_t i = 0; i < compose_index_fragments(idx); i++) {
		char d[65];
		compose_index_fragment_digest(idx, i, d);
		sha256_update(s.meta, d, 64);
	}
	int e = export_walk(r, scan_entry, &s, err);
	if (e < 0)
		goto out;
	if (!s.kernel && !o->no_bootloader) {
		e = mosaic_errorf(err, -ENOENT,
		                  "the composition has no kernel (/boot/vmlinuz-*): add "
		                  "linux-image-amd64 (and initramfs-tools) to the manifest's "
		                  "packages, or give --no-bootloader for a disk without one");
		goto out;
	}
	res->entries = s.entries;
	res->newest_mtime = s.newest;
	/* Without an epoch every time the image sets itself is the view's newest mtime: still
	 * the same for the same view. */
	int64_t now = o->source_date_epoch >= 0 ? o->source_date_epoch
	              : s.newest == INT64_MIN   ? 0
	                                        : s.newest;
	char hex[SHA256_HEX_LEN + 1];
	sha256_final(s.meta, hex);
	s.meta = NULL;
	uint8_t seed[SHA256_LEN];
	for (int i = 0; i < SHA256_LEN; i++)
		sscanf(hex + 2 * i, "%2hhx", &seed[i]);

	/* Layout: 1 MiB for the GPT, the ESP, the root, 1 MiB for the backup GPT. The ESP holds
	 * systemd-boot, the kernel and its initramfs with room for as much again (a kernel
	 * update), 64 MiB at least (FAT32 with 512-byte clusters needs 33). */
	uint64_t esp =
	    o->no_bootloader ? ESP_MIN : round_up(2 * s.boot_bytes + 16 * EXPORT_MIB, EXPORT_MIB);
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
