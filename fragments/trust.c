/* OpenPGP through gpgme: detached signatures over descriptors, and the keyring that decides
 * trust. A keyring file is imported once into a private GnuPG home under the cache, named by
 * the file's hash, so verification never consults the user's own keys. */
#include "fragments/internal.h"

#include <gpgme.h>
#include <locale.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

struct keyring {
	char *path; /* the keyring file */
	char *home; /* its private GnuPG home */
	char hash[SHA256_HEX_LEN + 1];
};

static pthread_once_t gpgme_once = PTHREAD_ONCE_INIT;

static void gpgme_init(void)
{
	gpgme_check_version(NULL);
	gpgme_set_locale(NULL, LC_CTYPE, setlocale(LC_CTYPE, NULL));
}

static void ctx_releasep(gpgme_ctx_t *c)
{
	if (*c)
		gpgme_release(*c);
}
static void data_releasep(gpgme_data_t *d)
{
	if (*d)
		gpgme_data_release(*d);
}
#define _cleanup_ctx_  _cleanup_(ctx_releasep)
#define _cleanup_data_ _cleanup_(data_releasep)

static int new_ctx(const char *home, gpgme_ctx_t *out, struct mosaic_error *err)
{
	pthread_once(&gpgme_once, gpgme_init);
	gpgme_ctx_t ctx;
	gpgme_error_t e = gpgme_new(&ctx);
	if (!e && home)
		e = gpgme_ctx_set_engine_info(ctx, GPGME_PROTOCOL_OpenPGP, NULL, home);
	if (e)
		return mosaic_errorf(err, -EIO, "gpgme: %s (is gnupg installed?)",
		                     gpgme_strerror(e));
	gpgme_set_armor(ctx, 0);
	*out = ctx;
	return 0;
}

static int rm_rf(const char *path)
{
	/* Only ever called on directories we made under the cache. */
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execlp("rm", "rm", "-rf", "--", path, (char *)NULL);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return 0;
}

char *keyring_default_path(void)
{
	return mosaic_config_get("MOSAIC_KEYRING", "keyring", "/etc/mosaic/keyring.gpg");
}

int keyring_open(const char *path, struct keyring **out, struct mosaic_error *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file(path, 64u << 20, &data, &len);
	if (r < 0)
		return mosaic_errorf(err, r, "keyring %s: %s; pass one with --keyring", path,
		                     strerror(-r));
	struct keyring *k = xcalloc(1, sizeof(*k));
	k->path = xstrdup(path);
	sha256_buffer(data, len, k->hash);
	_cleanup_free_ char *cache = mosaic_cache_dir();
	_cleanup_free_ char *base = path_join(cache, "keyrings");
	k->home = xasprintf("%s/%.32s", base, k->hash);

	struct stat st;
	if (stat(k->home, &st) == 0) {
		*out = k;
		return 0;
	}
	if ((r = mkdir_p(base, 0700)) < 0) {
		keyring_free(k);
		return mosaic_errorf(err, r, "%s: %s", base, strerror(-r));
	}
	/* Import into a temp home and rename it into place: concurrent openers each make their
	 * own and the first rename wins. */
	_cleanup_free_ char *tmp = xasprintf("%s/.tmp-XXXXXX", base);
	if (!mkdtemp(tmp)) {
		r = mosaic_errorf(err, -errno, "%s: %m", tmp);
		keyring_free(k);
		return r;
	}
	_cleanup_ctx_ gpgme_ctx_t ctx = NULL;
	_cleanup_data_ gpgme_data_t keys = NULL;
	/* Public keys need no gpg-agent; without this gpg starts one per home and leaves it. The
	 * keyring file is the trust decision, so no web of trust: "trust-model always" also spares
	 * gpg a trustdb check on every verification (a third of its time for a big keyring). */
	_cleanup_free_ char *conf = path_join(tmp, "gpg.conf");
	static const char gpg_conf[] = "no-autostart\ntrust-model always\n";
	if ((r = write_file_atomic(conf, gpg_conf, strlen(gpg_conf), 0600)) < 0) {
		r = mosaic_errorf(err, r, "%s: %s", conf, strerror(-r));
		goto fail;
	}
	if ((r = new_ctx(tmp, &ctx, err)) < 0)
		goto fail;
	gpgme_data_new_from_mem(&keys, data, len, 0);
	gpgme_error_t e = gpgme_op_import(ctx, keys);
	gpgme_import_result_t ir = e ? NULL : gpgme_op_import_result(ctx);
	if (e || !ir || ir->imported + ir->unchanged == 0) {
		r = mosaic_errorf(err, -EINVAL, "keyring %s: holds no OpenPGP public key%s%s", path,
		                  e ? ": " : "", e ? gpgme_strerror(e) : "");
		goto fail;
	}
	gpgme_release(TAKE_PTR(ctx));
	if (rename(tmp, k->home) < 0)
		rm_rf(tmp);
	*out = k;
	return 0;
fail:
	rm_rf(tmp);
	keyring_free(k);
	return r;
}

void keyring_free(struct keyring *k)
{
	if (!k)
		return;
	free(k->path);
	free(k->home);
	free(k);
}

const char *keyring_hash(const struct keyring *k)
{
	return k->hash;
}

int openpgp_sign(const char *key_id, const void *data, size_t len, void **sig, size_t *sig_len,
                 struct mosaic_error *err)
{
	_cleanup_ctx_ gpgme_ctx_t ctx = NULL;
	_cleanup_data_ gpgme_data_t in = NULL, out = NULL;
	gpgme_key_t key = NULL;
	int r = new_ctx(NULL, &ctx, err);
	if (r < 0)
		return r;
	gpgme_error_t e = gpgme_get_key(ctx, key_id, &key, 1);
	if (e)
		return mosaic_errorf(err, -ENOKEY, "signing key %s: %s (is it in $GNUPGHOME?)",
		                     key_id, gpgme_strerror(e));
	gpgme_signers_add(ctx, key);
	gpgme_key_unref(key);
	gpgme_data_new_from_mem(&in, data, len, 0);
	gpgme_data_new(&out);
	e = gpgme_op_sign(ctx, in, out, GPGME_SIG_MODE_DETACH);
	if (e)
		return mosaic_errorf(err, -EIO, "signing with %s: %s", key_id, gpgme_strerror(e));
	size_t n;
	char *mem = gpgme_data_release_and_get_mem(TAKE_PTR(out), &n);
	*sig = xmalloc(n);
	memcpy(*sig, mem, n);
	*sig_len = n;
	gpgme_free(mem);
	return 0;
}

/* Judges a verification result. A bad signature anywhere fails; otherwise one good signature by
 * a key of the keyring is enough, as apt does: Debian signs a Release with two keys and a
 * keyring may hold only one of them. Otherwise the first signature's problem is the error.
 * metadata selects the words for repository metadata rather than fragment descriptors. */
static int judge_signatures(const struct keyring *k, gpgme_error_t e, gpgme_verify_result_t vr,
                            bool metadata, char **signer, struct mosaic_error *err)
{
	if (!vr || !vr->signatures)
		return mosaic_errorf(err, -EBADMSG,
		                     "signature is not a valid OpenPGP signature%s%s",
		                     e ? ": " : "", e ? gpgme_strerror(e) : "");
	const char *modified = metadata ? "the file" : "the descriptor";
	for (gpgme_signature_t s = vr->signatures; s; s = s->next)
		if (gpgme_err_code(s->status) == GPG_ERR_BAD_SIGNATURE)
			return mosaic_errorf(err, -EKEYREJECTED,
			                     "bad signature by key %s: %s or its signature was "
			                     "modified",
			                     s->fpr ? s->fpr : "(unknown)", modified);
	for (gpgme_signature_t s = vr->signatures; s; s = s->next)
		if (gpgme_err_code(s->status) == GPG_ERR_NO_ERROR &&
		    !(s->summary & (GPGME_SIGSUM_KEY_REVOKED | GPGME_SIGSUM_KEY_EXPIRED))) {
			if (signer)
				*signer = xstrdup(s->fpr ? s->fpr : "(unknown)");
			return 0;
		}
	gpgme_signature_t s = vr->signatures;
	const char *who = s->fpr ? s->fpr : "(unknown)";
	switch (gpgme_err_code(s->status)) {
	case GPG_ERR_NO_ERROR:
		return mosaic_errorf(err, -EKEYREVOKED, "signature by key %s, which is %s", who,
		                     s->summary & GPGME_SIGSUM_KEY_REVOKED ? "revoked" : "expired");
	case GPG_ERR_NO_PUBKEY:
		if (metadata)
			return mosaic_errorf(err, -ENOKEY,
			                     "signature by unknown key %s; add it to the "
			                     "repository's keyring %s",
			                     who, k->path);
		return mosaic_errorf(err, -ENOKEY,
		                     "signature by unknown key %s; add it with --keyring", who);
	case GPG_ERR_KEY_EXPIRED:
	case GPG_ERR_SIG_EXPIRED:
	case GPG_ERR_CERT_REVOKED:
		return mosaic_errorf(err, -EKEYREVOKED, "signature by key %s: %s", who,
		                     gpgme_strerror(s->status));
	default:
		return mosaic_errorf(err, -EBADMSG, "signature by key %s not accepted: %s", who,
		                     gpgme_strerror(s->status));
	}
}

static int verify_detached(struct keyring *k, const void *data, size_t len, const void *sig,
                           size_t sig_len, bool metadata, char **signer, struct mosaic_error *err)
{
	_cleanup_ctx_ gpgme_ctx_t ctx = NULL;
	_cleanup_data_ gpgme_data_t text = NULL, sigd = NULL;
	int r = new_ctx(k->home, &ctx, err);
	if (r < 0)
		return r;
	gpgme_data_new_from_mem(&text, data, len, 0);
	gpgme_data_new_from_mem(&sigd, sig, sig_len, 0);
	gpgme_error_t e = gpgme_op_verify(ctx, sigd, text, NULL);
	return judge_signatures(k, e, e ? NULL : gpgme_op_verify_result(ctx), metadata, signer,
	                        err);
}

int keyring_verify(struct keyring *k, const void *data, size_t len, const void *sig, size_t sig_len,
                   char **signer, struct mosaic_error *err)
{
	return verify_detached(k, data, len, sig, sig_len, false, signer, err);
}

int keyring_verify_metadata(struct keyring *k, const void *data, size_t len, const void *sig,
                            size_t sig_len, char **signer, struct mosaic_error *err)
{
	return verify_detached(k, data, len, sig, sig_len, true, signer, err);
}

#define CLEARSIGN_BEGIN "-----BEGIN PGP SIGNED MESSAGE-----"
#define SIGNATURE_END   "-----END PGP SIGNATURE-----"

/* One clearsigned message and nothing around it: gpg would also accept text outside the signed
 * part, and only the signed part must ever be read (apt is as strict). */
static bool clearsigned_alone(const char *data, size_t len)
{
	size_t i = 0;
	while (i < len && (data[i] == '\n' || data[i] == '\r' || data[i] == ' '))
		i++;
	size_t bl = strlen(CLEARSIGN_BEGIN), el = strlen(SIGNATURE_END);
	if (len - i < bl || memcmp(data + i, CLEARSIGN_BEGIN, bl) != 0)
		return false;
	if (memmem(data + i + bl, len - i - bl, CLEARSIGN_BEGIN, bl))
		return false;
	const char *end = memmem(data + i, len - i, SIGNATURE_END, el);
	if (!end)
		return false;
	for (const char *p = end + el; p < data + len; p++)
		if (*p != '\n' && *p != '\r' && *p != ' ' && *p != '\t')
			return false;
	return memmem(end + el, data + len - end - el, SIGNATURE_END, el) == NULL;
}

int keyring_verify_clearsigned(struct keyring *k, const void *data, size_t len, char **plaintext,
                               size_t *plen, char **signer, struct mosaic_error *err)
{
	if (!clearsigned_alone(data, len))
		return mosaic_errorf(err, -EBADMSG,
		                     "not one clearsigned OpenPGP message (text outside the "
		                     "signed part, or no signature)");
	_cleanup_ctx_ gpgme_ctx_t ctx = NULL;
	_cleanup_data_ gpgme_data_t in = NULL, out = NULL;
	int r = new_ctx(k->home, &ctx, err);
	if (r < 0)
		return r;
	gpgme_data_new_from_mem(&in, data, len, 0);
	gpgme_data_new(&out);
	gpgme_error_t e = gpgme_op_verify(ctx, in, NULL, out);
	_cleanup_free_ char *who = NULL;
	r = judge_signatures(k, e, e ? NULL : gpgme_op_verify_result(ctx), true, &who, err);
	if (r < 0)
		return r;
	size_t n;
	char *mem = gpgme_data_release_and_get_mem(TAKE_PTR(out), &n);
	*plaintext = xmalloc(n + 1);
	if (n)
		memcpy(*plaintext, mem, n);
	(*plaintext)[n] = '\0';
	*plen = n;
	gpgme_free(mem);
	if (signer)
		*signer = TAKE_PTR(who);
	return 0;
}

int keyring_export_keys(struct keyring *k, void ***keys, size_t **lens, size_t *n,
                        struct mosaic_error *err)
{
	_cleanup_ctx_ gpgme_ctx_t ctx = NULL;
	int r = new_ctx(k->home, &ctx, err);
	if (r < 0)
		return r;
	char **fprs = NULL;
	size_t nf = 0;
	gpgme_key_t key;
	if (gpgme_op_keylist_start(ctx, NULL, 0) == 0) {
		while (gpgme_op_keylist_next(ctx, &key) == 0) {
			fprs = xrealloc(fprs, (nf + 1) * sizeof(*fprs));
			fprs[nf++] = xstrdup(key->fpr);
			gpgme_key_unref(key);
		}
		gpgme_op_keylist_end(ctx);
	}
	*keys = xcalloc(nf, sizeof(void *));
	*lens = xcalloc(nf, sizeof(size_t));
	*n = 0;
	for (size_t i = 0; i < nf; i++) {
		gpgme_data_t out;
		gpgme_data_new(&out);
		if (gpgme_op_export(ctx, fprs[i], 0, out) != 0) {
			gpgme_data_release(out);
			continue;
		}
		size_t len;
		char *mem = gpgme_data_release_and_get_mem(out, &len);
		(*keys)[*n] = xmalloc(len);
		memcpy((*keys)[*n], mem, len);
		(*lens)[*n] = len;
		(*n)++;
		gpgme_free(mem);
	}
	strv_free(fprs, nf);
	return 0;
}
