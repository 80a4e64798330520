/* What the disk and ISO writers learn of a view in one walk before they write anything: a seed
 * that identifies it (their UUIDs derive from it), its newest mtime, its kernels and initrds;
 * and how they stage boot files beside the image. */
#include "compose/compose.h"
#include "export/internal.h"

#include <fcntl.h>
#include <string.h>

/* A kernel or initramfs read whole into memory to be staged. */
#define MAX_BOOT_FILE (1ull << 30)

static void hash_field(struct sha256 *h, const void *p, size_t n)
{
	uint64_t len = n;
	sha256_update(h, &len, sizeof(len));
	sha256_update(h, p, n);
}

void export_scan_begin(struct export_scan *s, const char *tag, const struct compose_index *idx,
                       int64_t epoch)
{
	*s = (struct export_scan){.meta = sha256_new(), .epoch = epoch, .newest = INT64_MIN};
	sha256_update(s->meta, tag, strlen(tag) + 1);
	for (uint32_t i = 0; i < compose_index_fragments(idx); i++) {
		char d[SHA256_HEX_LEN + 1];
		compose_index_fragment_digest(idx, i, d);
		sha256_update(s->meta, d, SHA256_HEX_LEN);
	}
}

void export_scan_entry(struct export_scan *s, const struct export_entry *e)
{
	s->entries++;
	if (e->mtime > s->newest)
		s->newest = e->mtime;
	/* What the view is (names, types, owners, sizes, clamped times, targets, xattrs); file
	 * contents are identified by the fragment digests hashed before. */
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
	if (!S_ISREG(e->mode) || e->depth != 2 || strncmp(e->path, "boot/", 5) != 0)
		return;
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

char *export_scan_initrd(const struct export_scan *s)
{
	if (!s->kernel)
		return NULL;
	char *initrd = xasprintf("boot/initrd.img-%s", strchr(s->kernel, '-') + 1);
	for (size_t i = 0; i < s->n_initrds; i++)
		if (strcmp(s->initrds[i], initrd) == 0)
			return initrd;
	free(initrd);
	return NULL;
}

void export_scan_seed(struct export_scan *s, uint8_t seed[SHA256_LEN])
{
	char hex[SHA256_HEX_LEN + 1];
	sha256_final(s->meta, hex);
	s->meta = NULL;
	for (int i = 0; i < SHA256_LEN; i++)
		sscanf(hex + 2 * i, "%2hhx", &seed[i]);
}

int64_t export_scan_time(const struct export_scan *s)
{
	/* Without an epoch every time the image sets itself is the view's newest mtime: still
	 * the same for the same view. */
	return s->epoch >= 0 ? s->epoch : s->newest == INT64_MIN ? 0 : s->newest;
}

void export_scan_clear(struct export_scan *s)
{
	free(s->kernel);
	strv_free(s->initrds, s->n_initrds);
	if (s->meta) {
		char hex[SHA256_HEX_LEN + 1];
		sha256_final(s->meta, hex);
	}
	*s = (struct export_scan){0};
}

int export_stage_buffer(const char *path, const void *data, size_t len, int64_t mtime,
                        struct mosaic_error *err)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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

int export_stage_view_file(struct export_reader *r, const char *view_path, const char *path,
                           int64_t mtime, struct mosaic_error *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int e = export_read_path(r, view_path, MAX_BOOT_FILE, &data, &len, err);
	if (e == -ENOENT)
		return mosaic_errorf(err, e, "the view has no regular file /%s", view_path);
	if (e < 0)
		return e;
	return export_stage_buffer(path, data, len, mtime, err);
}

int export_stage_host_file(const char *host_path, const char *path, int64_t mtime,
                           struct mosaic_error *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int e = read_file(host_path, MAX_BOOT_FILE, &data, &len);
	if (e < 0)
		return mosaic_errorf(err, e, "reading %s: %s", host_path, strerror(-e));
	return export_stage_buffer(path, data, len, mtime, err);
}

char *export_kernel_cmdline(struct export_reader *r, const char *first, const char *given)
{
	_cleanup_free_ char *view = NULL;
	size_t len;
	struct mosaic_error ignored = {0};
	if (!given && export_read_path(r, "etc/kernel/cmdline", 65536, &view, &len, &ignored) == 0)
		given = view;
	_cleanup_free_ char *extra = xstrdup(given ? given : "");
	for (char *p = extra; *p; p++)
		if (*p == '\n' || *p == '\t' || *p == '\r')
			*p = ' ';
	size_t l = strlen(extra);
	while (l > 0 && extra[l - 1] == ' ')
		extra[--l] = 0;
	const char *start = extra + strspn(extra, " ");
	return xasprintf("%s%s%s", first, *start ? " " : "", start);
}

char *export_os_release_value(const char *text, const char *key)
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
