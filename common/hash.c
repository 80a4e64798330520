/* SHA-256 through libgcrypt (already linked by gpgme), streaming and one-shot. */
#include "common/common.h"

#include <gcrypt.h>
#include <pthread.h>

struct sha256 {
	gcry_md_hd_t md;
};

static pthread_once_t gcrypt_once = PTHREAD_ONCE_INIT;

static void gcrypt_init(void)
{
	if (!gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
		gcry_check_version(NULL);
		gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
	}
}

struct sha256 *sha256_new(void)
{
	pthread_once(&gcrypt_once, gcrypt_init);
	struct sha256 *h = xmalloc(sizeof(*h));
	if (gcry_md_open(&h->md, GCRY_MD_SHA256, 0) != 0)
		abort();
	return h;
}

void sha256_update(struct sha256 *h, const void *data, size_t len)
{
	gcry_md_write(h->md, data, len);
}

void sha256_final(struct sha256 *h, char hex[SHA256_HEX_LEN + 1])
{
	const unsigned char *d = gcry_md_read(h->md, GCRY_MD_SHA256);
	for (int i = 0; i < SHA256_LEN; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
	gcry_md_close(h->md);
	free(h);
}

void sha256_buffer(const void *data, size_t len, char hex[SHA256_HEX_LEN + 1])
{
	struct sha256 *h = sha256_new();
	sha256_update(h, data, len);
	sha256_final(h, hex);
}

int sha256_fd(int fd, char hex[SHA256_HEX_LEN + 1])
{
	struct sha256 *h = sha256_new();
	_cleanup_free_ char *buf = xmalloc(1 << 20);
	off_t off = 0;
	for (;;) {
		ssize_t n = pread(fd, buf, 1 << 20, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int r = -errno;
			sha256_final(h, hex);
			return r;
		}
		if (n == 0)
			break;
		sha256_update(h, buf, n);
		off += n;
	}
	sha256_final(h, hex);
	return 0;
}

bool is_sha256_hex(const char *s)
{
	size_t i;
	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == SHA256_HEX_LEN;
}
