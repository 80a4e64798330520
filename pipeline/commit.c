/* pipeline/: freezing a running writable mount's upper into a fragment, so that the mount's
 * fragments plus that one, without an upper, show what the mount shows now. */
#include "pipeline/internal.h"

#include <fcntl.h>
#include <string.h>

/* Overlay mode: the kernel writes through to the upper's files, so the upper already shows
 * every change; syncfs makes it durable before it is read. Fuse mode has no writeback cache:
 * every write is in the upper when write(2) returns, and the upper's syncfs covers the rest. */
static int sync_mount(const char *mountpoint, const char *upper, bool overlay,
                      struct mosaic_error *err)
{
	if (overlay) {
		_cleanup_close_ int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || syncfs(fd) < 0)
			return mosaic_errorf(err, -errno, "syncing %s: %s", mountpoint,
			                     strerror(errno));
	}
	_cleanup_close_ int fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || syncfs(fd) < 0)
		return mosaic_errorf(err, -errno, "upper %s: %s", upper, strerror(errno));
	return 0;
}

void pipeline_commit_result_clear(struct pipeline_commit_result *res)
{
	fragment_info_clear(&res->info);
	free(res->mountpoint);
	free(res->upper);
	free(res->mode);
	*res = (struct pipeline_commit_result){0};
}

int pipeline_commit(const char *mountpoint, const char *store,
                    const struct fragment_create_options *o, struct pipeline_commit_result *res,
                    struct mosaic_error *err)
{
	*res = (struct pipeline_commit_result){0};
	int r = pipeline_writable_mount(mountpoint, &res->mountpoint, &res->upper, &res->mode, err);
	if (r == 0)
		r = sync_mount(res->mountpoint, res->upper, strcmp(res->mode, "overlay") == 0, err);
	struct store *s = NULL;
	_cleanup_free_ char *def = store ? NULL : store_default_path();
	if (r == 0)
		r = store_open(store ? store : def, true, &s, err);
	if (r == 0)
		r = fragment_create(s, res->upper, o, &res->info, err);
	store_free(s);
	return r;
}
