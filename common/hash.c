/* SHA-256 through libgcrypt (already linked by gpgme), streaming and one-shot. */
#include "common/common.h"

#include <gcrypt.h>
#include <pthread.h>
#include <sys/stat.h>

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

/* Zeros to hash a hole from; 64 KiB stays in the cache while it is hashed again and again. */
static const unsigned char zeros[1 << 16];

static void hash_zeros(struct sha256 *h, uint64_t len)
{
	while (len > 0) {
		size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
		sha256_update(h, zeros, n);
		len -= n;
	}
}

/* Hashes what pread gives from off on, to its end of file (or to end, if end is not
 * UINT64_MAX); returns the offset reached, or -errno. */
static int64_t hash_range(struct sha256 *h, int fd, char *buf, size_t size, uint64_t off,
                          uint64_t end)
{
	while (off < end) {
		size_t want = end - off < size ? (size_t)(end - off) : size;
		ssize_t n = pread(fd, buf, want, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		sha256_update(h, buf, n);
		off += n;
	}
	return (int64_t)off;
}

int sha256_fd(int fd, char hex[SHA256_HEX_LEN + 1])
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	struct sha256 *h = sha256_new();
	const size_t size = 1 << 20;
	_cleanup_free_ char *buf = xmalloc(size);
	/* A disk image is mostly holes: SEEK_DATA/SEEK_HOLE find them, and their zeros are
	 * hashed from memory instead of read (reading a hole makes the kernel allocate and
	 * clear a page cache page for every 4 KiB of it). lseek moves the file position, which
	 * is the caller's, so it is put back. Where holes cannot be told (not a regular file,
	 * or a filesystem without SEEK_DATA), the rest is read as it is. */
	off_t pos = S_ISREG(st.st_mode) ? lseek(fd, 0, SEEK_CUR) : -1;
	uint64_t end = pos >= 0 ? (uint64_t)st.st_size : 0;
	int64_t off = 0;
	bool short_read = false;
	while ((uint64_t)off < end) {
		off_t data = lseek(fd, off, SEEK_DATA);
		if (data < 0 && errno != ENXIO)
			break;
		/* ENXIO: no data after off, a hole to the end. */
		uint64_t d = data < 0 || (uint64_t)data > end ? end : (uint64_t)data;
		hash_zeros(h, d - (uint64_t)off);
		off = (int64_t)d;
		if (d == end)
			break;
		off_t hole = lseek(fd, data, SEEK_HOLE);
		uint64_t stop = hole < 0 || (uint64_t)hole > end ? end : (uint64_t)hole;
		off = hash_range(h, fd, buf, size, d, stop);
		if (off < 0 || (uint64_t)off < stop) {
			short_read = true; /* an error, or the file got shorter */
			break;
		}
	}
	if (pos >= 0)
		lseek(fd, pos, SEEK_SET);
	/* To the end of file as pread sees it: what was not looked at for holes, and anything
	 * written past the size fstat gave. */
	if (!short_read)
		off = hash_range(h, fd, buf, size, (uint64_t)off, UINT64_MAX);
	sha256_final(h, hex);
	return off < 0 ? (int)off : 0;
}

bool is_sha256_hex(const char *s)
{
	size_t i;
	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == SHA256_HEX_LEN;
}
