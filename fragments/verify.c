/* Trust: a fragment is used only when its descriptor's signature is good for a key in the
 * keyring, the image has the size and digest the descriptor says, and the image parses. The
 * result is remembered under the cache keyed by each file's (dev, ino, size, mtime, ctime) and
 * the keyring's hash; ctime cannot be set back by a user, so a changed file is always seen. */
#include "fragments/internal.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

static void stat_key(char *buf, size_t len, const struct stat *st)
{
	snprintf(buf, len, "%ju:%ju:%jd:%ld.%09ld:%ld.%09ld", (uintmax_t)st->st_dev,
	         (uintmax_t)st->st_ino, (intmax_t)st->st_size, (long)st->st_mtim.tv_sec,
	         st->st_mtim.tv_nsec, (long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
}

static char *cache_path(const char *image_path)
{
	char real[PATH_MAX], hex[SHA256_HEX_LEN + 1];
	if (!realpath(image_path, real))
		snprintf(real, sizeof(real), "%s", image_path);
	sha256_buffer(real, strlen(real), hex);
	_cleanup_free_ char *cache = mosaic_cache_dir();
	return xasprintf("%s/verified/%.2s/%s", cache, hex, hex);
}

static bool is_sha256_hex_prefix(const char *name)
{
	return strspn(name, "0123456789abcdef") == SHA256_HEX_LEN;
}

/* Store objects are named by their digest; 12 hex digits name one well enough in messages. */
static const char *short_name(const char *image_path, char buf[16])
{
	const char *b = strrchr(image_path, '/');
	b = b ? b + 1 : image_path;
	if (strlen(b) == SHA256_HEX_LEN + 5 && is_sha256_hex_prefix(b)) {
		snprintf(buf, 16, "%.12s", b);
		return buf;
	}
	return b;
}

int fragment_verify(struct keyring *k, const char *image_path, struct fragment_descriptor *desc,
                    struct mosaic_error *err)
{
	size_t l = strlen(image_path);
	if (l < 5 || strcmp(image_path + l - 5, ".sqfs") != 0)
		return mosaic_errorf(err, -EINVAL, "%s: a fragment image ends in .sqfs",
		                     image_path);
	char namebuf[16];
	const char *name = short_name(image_path, namebuf);
	_cleanup_free_ char *stem = xstrndup(image_path, l - 5);
	_cleanup_free_ char *json = xasprintf("%s.json", stem);
	_cleanup_free_ char *sigp = xasprintf("%s.sig", json);
	struct stat st_img, st_json, st_sig;
	if (stat(image_path, &st_img) < 0)
		return mosaic_errorf(err, -errno, "fragment %s: image: %m", name);
	if (stat(json, &st_json) < 0)
		return mosaic_errorf(err, -errno, "fragment %s: descriptor %s: %m", name, json);
	if (stat(sigp, &st_sig) < 0)
		return mosaic_errorf(err, -ENOKEY,
		                     "fragment %s: unsigned (no %s); sign it with 'mosaic fragment "
		                     "create --sign KEYID'",
		                     name, sigp);

	char key[512], a[128], b[128], c[128];
	stat_key(a, sizeof(a), &st_img);
	stat_key(b, sizeof(b), &st_json);
	stat_key(c, sizeof(c), &st_sig);
	snprintf(key, sizeof(key), "v1 %s %s %s %s\n", keyring_hash(k), a, b, c);
	_cleanup_free_ char *cpath = cache_path(image_path);
	_cleanup_free_ char *cached = NULL;
	bool remembered =
	    read_file(cpath, sizeof(key), &cached, NULL) == 0 && strcmp(cached, key) == 0;

	_cleanup_free_ char *djson = NULL, *sig = NULL;
	size_t dlen, slen;
	int r;
	if ((r = read_file(json, 16u << 20, &djson, &dlen)) < 0)
		return mosaic_errorf(err, r, "fragment %s: descriptor: %s", name, strerror(-r));
	if (!remembered) {
		if ((r = read_file(sigp, 1u << 20, &sig, &slen)) < 0)
			return mosaic_errorf(err, r, "fragment %s: signature: %s", name,
			                     strerror(-r));
		if ((r = keyring_verify(k, djson, dlen, sig, slen, NULL, err)) < 0)
			return mosaic_error_prefix(err, "fragment %s", name);
	}
	struct fragment_descriptor d;
	if ((r = fragment_descriptor_parse(djson, dlen, &d, err)) < 0)
		return mosaic_error_prefix(err, "fragment %s", name);
	/* A store object named by a digest must hold that fragment (the descriptor's digest is
	 * the image's, checked below or when it was remembered), remembered or not. */
	const char *base = strrchr(image_path, '/');
	base = base ? base + 1 : image_path;
	if (strlen(base) == SHA256_HEX_LEN + 5 && is_sha256_hex_prefix(base) &&
	    strncmp(base, d.digest, SHA256_HEX_LEN) != 0)
		r = mosaic_errorf(err, -EBADMSG,
		                  "fragment %s: store object is named for another digest "
		                  "(it holds %.12s)",
		                  name, d.digest);
	if (r < 0) {
		fragment_descriptor_clear(&d);
		return r;
	}
	if (!remembered) {
		if ((uint64_t)st_img.st_size < d.image_size)
			r = mosaic_errorf(err, -EBADMSG,
			                  "fragment %s: truncated image: %jd of %ju bytes", name,
			                  (intmax_t)st_img.st_size, (uintmax_t)d.image_size);
		else if ((uint64_t)st_img.st_size != d.image_size)
			r = mosaic_errorf(
			    err, -EBADMSG,
			    "fragment %s: image has %jd bytes, the descriptor says %ju", name,
			    (intmax_t)st_img.st_size, (uintmax_t)d.image_size);
		if (r == 0) {
			char hex[SHA256_HEX_LEN + 1];
			_cleanup_close_ int fd = open(image_path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || (r = sha256_fd(fd, hex)) < 0)
				r = mosaic_errorf(err, fd < 0 ? -errno : r, "fragment %s: %m",
				                  name);
			else if (strcmp(hex, d.digest) != 0)
				r = mosaic_errorf(
				    err, -EBADMSG,
				    "fragment %s: image digest mismatch: the descriptor "
				    "says sha256:%.16s…, the image is sha256:%.16s…",
				    name, d.digest, hex);
		}
		if (r == 0 && (r = fragment_image_check(image_path, err)) < 0)
			mosaic_error_prefix(err, "fragment %s", name);
		if (r < 0) {
			fragment_descriptor_clear(&d);
			return r;
		}
		/* Best effort: a cache we cannot write only costs time. */
		_cleanup_free_ char *cdir = xstrndup(cpath, strrchr(cpath, '/') - cpath);
		if (mkdir_p(cdir, 0700) == 0)
			write_file_atomic(cpath, key, strlen(key), 0600);
	}
	if (desc)
		*desc = d;
	else
		fragment_descriptor_clear(&d);
	return 0;
}
