/* One export: the image, its SBOM and its manifest, each written under a temp name beside its
 * final one and renamed into place only once all three are complete. */
#include "export/internal.h"

#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>

struct temp {
	char *path;  /* the temp name, until renamed */
	char *final; /* where it goes */
};

static void temp_clear(struct temp *t)
{
	if (t->path)
		unlink(t->path);
	free(t->path);
	free(t->final);
	*t = (struct temp){0};
}

/* A fresh FINAL.tmp-XXXXXX beside final, with the mode a plain create would give. */
static int temp_open(struct temp *t, const char *final, struct mosaic_error *err)
{
	t->final = xstrdup(final);
	t->path = xasprintf("%s.tmp-XXXXXX", final);
	int fd = mkostemp(t->path, O_CLOEXEC);
	if (fd < 0) {
		int e = -errno;
		free(t->path);
		t->path = NULL;
		return mosaic_errorf(err, e, "creating a temp file beside %s: %s", final,
		                     strerror(-e));
	}
	mode_t mask = umask(0);
	umask(mask);
	if (fchmod(fd, 0666 & ~mask) < 0) {
		int e = -errno;
		close(fd);
		return mosaic_errorf(err, e, "%s: %s", t->path, strerror(-e));
	}
	return fd;
}

static int temp_finish(struct temp *t, int fd, struct mosaic_error *err)
{
	int e = fsync(fd) < 0 ? -errno : 0;
	if (close(fd) < 0 && e == 0)
		e = -errno;
	if (e < 0)
		return mosaic_errorf(err, e, "writing %s: %s", t->path, strerror(-e));
	return 0;
}

static int temp_write_json(struct temp *t, const char *final, json_object *o,
                           struct mosaic_error *err)
{
	int fd = temp_open(t, final, err);
	if (fd < 0)
		return fd;
	const char *s = json_object_to_json_string_ext(
	    o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
	int e = write_all(fd, s, strlen(s));
	if (e == 0)
		e = write_all(fd, "\n", 1);
	if (e < 0) {
		close(fd);
		return mosaic_errorf(err, e, "writing %s: %s", t->path, strerror(-e));
	}
	return temp_finish(t, fd, err);
}

static int temp_commit(struct temp *t, struct mosaic_error *err)
{
	if (rename(t->path, t->final) < 0)
		return mosaic_errorf(err, -errno, "renaming %s to %s: %m", t->path, t->final);
	free(t->path);
	t->path = NULL;
	return 0;
}

static json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* The raw disk's layout in its image manifest: the disk GUID, and each partition's number,
 * type GUID, partition UUID, name, start and size (bytes), filesystem and its UUID, and the
 * boot entry's kernel and initramfs. */
static void add_partitions(json_object *man, const struct export_raw_result *d)
{
	json_object_object_add(man, "disk_uuid", json_object_new_string(d->disk_uuid));
	json_object *parts = json_object_new_array();
	for (size_t i = 0; i < d->n_parts; i++) {
		const struct export_partition *p = &d->parts[i];
		json_object *o = json_object_new_object();
		json_object_object_add(o, "number", json_object_new_int(p->number));
		json_object_object_add(o, "type", json_object_new_string(p->type_guid));
		json_object_object_add(o, "uuid", json_object_new_string(p->uuid));
		json_object_object_add(o, "name", json_object_new_string(p->name));
		json_object_object_add(o, "start", json_object_new_int64((int64_t)p->start));
		json_object_object_add(o, "size", json_object_new_int64((int64_t)p->size));
		json_object_object_add(o, "filesystem", json_object_new_string(p->filesystem));
		json_object_object_add(o, "mountpoint", string_or_null(p->mountpoint));
		json_object_object_add(o, "fs_uuid", json_object_new_string(p->fs_uuid));
		json_object_array_add(parts, o);
	}
	json_object_object_add(man, "partitions", parts);
	json_object *boot = json_object_new_object();
	json_object_object_add(boot, "kernel", string_or_null(d->kernel));
	json_object_object_add(boot, "initrd", string_or_null(d->initrd));
	json_object_object_add(boot, "loader", string_or_null(d->bootloader));
	json_object_object_add(man, "boot", boot);
}

/* The ISO's layout in its image manifest: the volume id, the marker GRUB finds it by, the
 * files of the live layout, the squashfs's size and hash, and the boot entry. */
static void add_iso(json_object *man, const struct export_iso_result *d)
{
	json_object_object_add(man, "volume_id", json_object_new_string(d->volume_id));
	json_object_object_add(man, "id_uuid", json_object_new_string(d->id_uuid));
	json_object *sq = json_object_new_object();
	json_object_object_add(sq, "path", json_object_new_string("/live/filesystem.squashfs"));
	json_object_object_add(sq, "size", json_object_new_int64((int64_t)d->squashfs.size));
	json_object_object_add(sq, "sha256", json_object_new_string(d->squashfs_sha256));
	json_object_object_add(sq, "compression", json_object_new_string("zstd"));
	json_object_object_add(sq, "entries", json_object_new_int64((int64_t)d->squashfs.entries));
	json_object_object_add(man, "squashfs", sq);
	json_object *boot = json_object_new_object();
	json_object *el_torito = json_object_new_array();
	if (d->kernel) {
		json_object_array_add(el_torito, json_object_new_string("bios"));
		json_object_array_add(el_torito, json_object_new_string("uefi"));
	}
	json_object_object_add(boot, "loader", d->kernel ? json_object_new_string("grub") : NULL);
	json_object_object_add(boot, "el_torito", el_torito);
	json_object_object_add(boot, "kernel",
	                       d->kernel ? json_object_new_string("/live/vmlinuz") : NULL);
	json_object_object_add(boot, "initrd",
	                       d->kernel ? json_object_new_string("/live/initrd.img") : NULL);
	json_object_object_add(boot, "kernel_from", string_or_null(d->kernel));
	json_object_object_add(boot, "initrd_from", string_or_null(d->initrd));
	json_object_object_add(boot, "cmdline", string_or_null(d->cmdline));
	json_object_object_add(man, "boot", boot);
}

static bool is_converted(const char *format)
{
	return strcmp(format, "qcow2") == 0 || strcmp(format, "vmdk") == 0 ||
	       strcmp(format, "vhdx") == 0;
}

int export_run(struct export_reader *r, const struct export_options *o,
               struct export_tar_result *res_out, struct mosaic_error *err)
{
	bool converted = is_converted(o->format);
	bool raw = converted || strcmp(o->format, "raw") == 0;
	bool iso = strcmp(o->format, "iso") == 0;
	if (!raw && !iso && strcmp(o->format, "tar") != 0)
		return mosaic_errorf(err, -EINVAL,
		                     "export format '%s' is not known: use tar, raw, iso, qcow2, "
		                     "vmdk or vhdx",
		                     o->format);
	struct temp image = {0}, sbom = {0}, manifest = {0}, disk_temp = {0};
	struct export_tar_result res;
	struct export_raw_result disk = {0};
	struct export_iso_result isor = {0};
	_cleanup_free_ char *sbom_path = xasprintf("%s.spdx.json", o->output);
	_cleanup_free_ char *manifest_path = xasprintf("%s.manifest.json", o->output);
	_cleanup_free_ char *raw_path = xasprintf("%s.raw", o->output);
	_cleanup_free_ char *copy = xstrdup(o->output);
	json_object *doc = NULL, *man = NULL;
	int e, fd = temp_open(&image, o->output, err);
	if (fd < 0) {
		e = fd;
		goto out;
	}
	if (raw) {
		/* The disk is written by path (libfdisk, libext2fs and mkfs.vfat/mtools each open
		 * it); fd stays open for the hash and the fsync. A converted disk is first made
		 * raw in a temp file of its own, then qemu-img writes the image's temp name. */
		int raw_fd = -1;
		if (converted && (raw_fd = temp_open(&disk_temp, raw_path, err)) < 0) {
			e = raw_fd;
			close(fd);
			goto out;
		}
		if (raw_fd >= 0)
			close(raw_fd);
		const struct export_raw_options ro = {.path =
		                                          converted ? disk_temp.path : image.path,
		                                      .size = o->size,
		                                      .free_space = o->free_space,
		                                      .source_date_epoch = o->source_date_epoch,
		                                      .no_bootloader = o->no_bootloader,
		                                      .kernel_cmdline = o->kernel_cmdline,
		                                      .filesystem = o->filesystem,
		                                      .bootloader = o->bootloader,
		                                      .partitions = o->partitions,
		                                      .n_partitions = o->n_partitions};
		e = export_raw(r, &ro, &disk, err);
		if (e == 0 && converted)
			e = export_convert(disk_temp.path, o->format, image.path, err);
		if (e == 0) {
			res = (struct export_tar_result){.size = disk.size,
			                                 .entries = disk.entries,
			                                 .newest_mtime = disk.newest_mtime};
			struct stat st;
			if (converted && fstat(fd, &st) == 0)
				res.size = st.st_size;
			if ((e = sha256_fd(fd, res.sha256)) < 0)
				mosaic_errorf(err, e, "hashing %s: %s", image.path, strerror(-e));
		}
	} else if (iso) {
		const struct export_iso_options io = {.path = image.path,
		                                      .source_date_epoch = o->source_date_epoch,
		                                      .no_bootloader = o->no_bootloader,
		                                      .kernel_cmdline = o->kernel_cmdline};
		e = export_iso(r, &io, &isor, err);
		if (e == 0) {
			res = (struct export_tar_result){.size = isor.size,
			                                 .entries = isor.entries,
			                                 .newest_mtime = isor.newest_mtime};
			if ((e = sha256_fd(fd, res.sha256)) < 0)
				mosaic_errorf(err, e, "hashing %s: %s", image.path, strerror(-e));
		}
	} else
		e = export_tar(r, fd, o->source_date_epoch, &res, err);
	if (e < 0) {
		close(fd);
		mosaic_error_prefix(err, "%s", o->output);
		goto out;
	}
	if ((e = temp_finish(&image, fd, err)) < 0)
		goto out;
	struct export_sbom_input in = {
	    .image_name = basename(copy),
	    .format = o->format,
	    .sha256 = res.sha256,
	    .size = res.size,
	    .created = o->source_date_epoch >= 0       ? o->source_date_epoch
	               : res.newest_mtime == INT64_MIN ? 0
	                                               : res.newest_mtime,
	    .idx = export_reader_index(r),
	    .images = export_reader_images(r),
	    .lock = o->lock,
	};
	doc = export_sbom(&in);
	man = export_image_manifest(&in);
	if (raw)
		add_partitions(man, &disk);
	if (converted)
		json_object_object_add(man, "virtual_size",
		                       json_object_new_int64((int64_t)disk.size));
	if (iso)
		add_iso(man, &isor);
	if ((e = temp_write_json(&sbom, sbom_path, doc, err)) < 0 ||
	    (e = temp_write_json(&manifest, manifest_path, man, err)) < 0)
		goto out;
	/* The image last: an image under OUT always has its SBOM and manifest beside it. */
	if ((e = temp_commit(&sbom, err)) < 0 || (e = temp_commit(&manifest, err)) < 0 ||
	    (e = temp_commit(&image, err)) < 0)
		goto out;
	fsync_parent(o->output);
	if (res_out)
		*res_out = res;
out:
	export_raw_result_clear(&disk);
	export_iso_result_clear(&isor);
	json_object_put(doc);
	json_object_put(man);
	temp_clear(&image);
	temp_clear(&sbom);
	temp_clear(&manifest);
	temp_clear(&disk_temp);
	return e;
}
