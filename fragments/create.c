/* fragment_create: detect the source, stream it into a new image in the store's tmp/, hash it,
 * describe it, sign the description and commit all three into the store. */
#include "fragments/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

enum source_type { SRC_DIR, SRC_TAR, SRC_DEB, SRC_RPM };

static int detect(const char *src, enum source_type *t, struct mosaic_error *err)
{
	struct stat st;
	if (stat(src, &st) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", src);
	if (S_ISDIR(st.st_mode)) {
		*t = SRC_DIR;
		return 0;
	}
	unsigned char magic[8] = {0};
	_cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "%s: %m", src);
	if (read(fd, magic, sizeof(magic)) < 0)
		return mosaic_errorf(err, -errno, "%s: %m", src);
	if (memcmp(magic, "!<arch>\n", 8) == 0)
		*t = SRC_DEB;
	else if (magic[0] == 0xed && magic[1] == 0xab && magic[2] == 0xee && magic[3] == 0xdb)
		*t = SRC_RPM;
	else
		*t = SRC_TAR;
	return 0;
}

int fragment_create(struct store *s, const char *src, const struct fragment_create_options *o,
                    struct fragment_info *out, struct mosaic_error *err)
{
	static int (*const readers[])(const char *, struct fwriter *, struct src_meta *,
	                              const struct fragment_create_options *,
	                              struct mosaic_error *) = {
	    [SRC_DIR] = src_dir_read,
	    [SRC_TAR] = src_tar_read,
	    [SRC_DEB] = src_deb_read,
	    [SRC_RPM] = src_rpm_read,
	};
	enum source_type type = SRC_TAR;
	int r = detect(src, &type, err);
	if (r < 0)
		return r;

	int64_t now = time(NULL);
	int64_t when = o->source_date_epoch >= 0 ? o->source_date_epoch : now;
	_cleanup_free_ char *tmp = store_tmp_path(s, ".sqfs");
	struct fwriter_options wo = {.mtime = when, .workers = o->workers, .level = o->level};
	struct fwriter *w = NULL;
	struct src_meta m = {0};
	_cleanup_free_ char *desc = NULL;
	_cleanup_free_ void *sig = NULL;
	size_t sig_len = 0;
	char digest[SHA256_HEX_LEN + 1], src_hex[SHA256_HEX_LEN + 1];
	struct stat st;

	if ((r = fwriter_new(tmp, &wo, &w, err)) < 0)
		goto out;
	if ((r = readers[type](src, w, &m, o, err)) < 0)
		goto out;
	if ((r = fwriter_finish(w, err)) < 0)
		goto out;
	uint64_t files = fwriter_files(w), content = fwriter_content_bytes(w);
	fwriter_free(TAKE_PTR(w));

	{
		_cleanup_close_ int fd = open(tmp, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0 || (r = sha256_fd(fd, digest)) < 0) {
			r = mosaic_errorf(err, r < 0 ? r : -errno, "%s: %m", tmp);
			goto out;
		}
	}
	uint64_t image_size = st.st_size, source_size = 0;
	bool have_src_hash = false;
	if (type != SRC_DIR) {
		_cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0 || (r = sha256_fd(fd, src_hex)) < 0) {
			r = mosaic_errorf(err, r < 0 ? r : -errno, "%s: %m", src);
			goto out;
		}
		source_size = st.st_size;
		have_src_hash = true;
	} else {
		source_size = content;
	}

	const char *name = o->name ? o->name : m.name;
	if (!name || !*name || strchr(name, '/') || name[0] == '.') {
		r = mosaic_errorf(err, -EINVAL, "%s: cannot name the fragment '%s'; pass --name",
		                  src, name ? name : "");
		goto out;
	}
	enum fragment_kind kind = o->kind != FRAGMENT_KIND_AUTO          ? o->kind
	                          : (type == SRC_DEB || type == SRC_RPM) ? FRAGMENT_PACKAGE
	                                                                 : FRAGMENT_BASE;
	const char *base = strrchr(src, '/');
	base = base && base[1] ? base + 1 : src;
	desc = descriptor_build(&m, o, kind, digest, image_size, files, content,
	                        have_src_hash ? src_hex : NULL, source_size, base, when);
	if (o->sign_key &&
	    (r = openpgp_sign(o->sign_key, desc, strlen(desc), &sig, &sig_len, err)) < 0)
		goto out;
	if ((r = store_commit(s, tmp, digest, name, desc, strlen(desc), sig, sig_len, err)) < 0)
		goto out;

	if (out) {
		memcpy(out->digest, digest, sizeof(digest));
		out->name = xstrdup(name);
		const char *v = o->version ? o->version : m.version;
		const char *a = o->arch ? o->arch : m.arch;
		out->version = v ? xstrdup(v) : NULL;
		out->arch = a ? xstrdup(a) : NULL;
		out->kind = kind;
		out->image_size = image_size;
		out->source_size = source_size;
		out->files = files;
	}
out:
	fwriter_free(w);
	src_meta_clear(&m);
	if (r < 0)
		unlink(tmp);
	return r;
}
