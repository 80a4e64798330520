/* fragments/: the .rpm source. librpm checks the package (header digests, payload and file
 * digests, the header signature against the keyring we are given), describes it for the
 * descriptor, and its cpio payload is streamed into the image without unpacking anything to disk.
 *
 * Besides the payload, the fragment carries the package header for the package database that
 * compose/ synthesizes:
 *
 *     var/lib/mosaic/rpm/<name>-<version>-<release>.<arch>.rpmhdr
 *
 * a regular file, 0644 root:root, holding the header exactly as headerExport() gives it: no 8-byte
 * header magic, the signature tags merged in, which is what the rpmdb stores and headerImport()
 * reads back. Its mtime is the source date epoch when one is given, else the package's build time.
 */
#include "common/rpmlog.h"
#include "fragments/internal.h"

#include <endian.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>

#include <linux/capability.h>

#include <rpm/header.h>
#include <rpm/rpmarchive.h>
#include <rpm/rpmcrypto.h>
#include <rpm/rpmds.h>
#include <rpm/rpmfi.h>
#include <rpm/rpmfiles.h>
#include <rpm/rpmio.h>
#include <rpm/rpmkeyring.h>
#include <rpm/rpmlib.h>
#include <rpm/rpmpgp.h>
#include <rpm/rpmtd.h>
#include <rpm/rpmts.h>

#define RPM_HEADER_DIR "var/lib/mosaic/rpm"
#define OWNER_NOBODY   65534
#define CAPS_XATTR     "security.capability"
#define CAPS_XATTR_LEN (4 + 8 * VFS_CAP_U32_2) /* struct vfs_cap_data, revision 2 */

static void rpmtsp(rpmts *p)
{
	rpmtsFree(*p);
}
static void headerp(Header *p)
{
	headerFree(*p);
}
static void fdp(FD_t *p)
{
	if (*p)
		Fclose(*p);
}
static void rpmfilesp(rpmfiles *p)
{
	rpmfilesFree(*p);
}
static void rpmfip(rpmfi *p)
{
	rpmfiFree(*p);
}
static void rpmdsp(rpmds *p)
{
	rpmdsFree(*p);
}
static void rpmkeyringp(rpmKeyring *p)
{
	rpmKeyringFree(*p);
}
static void json_putp(json_object **p)
{
	json_object_put(*p);
}

/* ---- signature ---------------------------------------------------------------------------- */

/* librpm's keyring from ours. A key librpm cannot parse is left out rather than failing: the same
 * keyring also holds keys for other purposes, and the worst outcome is a recorded "nokey". */
static int rpm_keyring_new(const char *path, struct keyring *k, rpmKeyring *out,
                           struct mosaic_error *err)
{
	_cleanup_(rpmkeyringp) rpmKeyring kr = rpmKeyringNew();
	void **keys = NULL;
	size_t *lens = NULL, n = 0;
	int r;

	if (k) {
		r = keyring_export_keys(k, &keys, &lens, &n, err);
		if (r < 0)
			return mosaic_error_prefix(err, "%s: exporting the keyring for librpm",
			                           path);
	}
	for (size_t i = 0; i < n; i++) {
		rpmPubkey key = rpmPubkeyNew(keys[i], lens[i]);
		if (key) {
			rpmKeyringAddKey(kr, key);
			/* rpmsign may have used a signing subkey; add those too, as rpmkeys
			 * --import does. */
			int n_sub = 0;
			rpmPubkey *subs = rpmGetSubkeys(key, &n_sub);
			for (int j = 0; j < n_sub; j++) {
				rpmKeyringAddKey(kr, subs[j]);
				rpmPubkeyFree(subs[j]);
			}
			free(subs);
			rpmPubkeyFree(key);
		}
		free(keys[i]);
	}
	free(keys);
	free(lens);
	*out = TAKE_PTR(kr);
	return 0;
}

/* Whether the header carries an OpenPGP signature, and the signer's key id (16 hex digits, NULL
 * when the packet does not parse). */
static bool header_signature(Header h, char **keyid)
{
	static const rpmTagVal tags[] = {RPMTAG_RSAHEADER, RPMTAG_DSAHEADER, RPMTAG_SIGGPG,
	                                 RPMTAG_SIGPGP};

	*keyid = NULL;
	for (size_t i = 0; i < ARRAY_SIZE(tags); i++) {
		struct rpmtd_s td;
		if (!headerGet(h, tags[i], &td, HEADERGET_MINMEM))
			continue;
		pgpDigParams sig = NULL;
		if (td.type == RPM_BIN_TYPE &&
		    pgpPrtParams(td.data, td.count, PGPTAG_SIGNATURE, &sig) == 0) {
			const uint8_t *id = pgpDigParamsSignID(sig);
			char hex[2 * PGP_KEYID_LEN + 1];
			for (size_t b = 0; b < PGP_KEYID_LEN; b++)
				snprintf(hex + 2 * b, 3, "%02x", id[b]);
			*keyid = xstrdup(hex);
		}
		pgpDigParamsFree(sig);
		rpmtdFreeData(&td);
		return true;
	}
	return false;
}

/* ---- description -------------------------------------------------------------------------- */

/* A dependency set as strings like "name >= 1.0-1", duplicates (the same relation for several
 * scriptlets) dropped. */
static json_object *deps_json(Header h, rpmTagVal tag)
{
	json_object *a = json_object_new_array();
	_cleanup_(rpmdsp) rpmds ds = rpmdsNew(h, tag, 0);

	if (!ds)
		return a;
	rpmdsInit(ds);
	while (rpmdsNext(ds) >= 0) {
		_cleanup_free_ char *s = rpmdsNewDNEVR(NULL, ds);
		bool seen = false;
		for (size_t i = 0; i < json_object_array_length(a) && !seen; i++)
			seen = !strcmp(json_object_get_string(json_object_array_get_idx(a, i)), s);
		if (!seen)
			json_object_array_add(a, json_object_new_string(s));
	}
	return a;
}

static json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* ---- owners -------------------------------------------------------------------------------- */

/* The package names owners; the image needs ids. "root" is 0 everywhere. Other names are looked up
 * in this host's passwd and group databases, which is what rpm itself does at install time. A
 * name the host does not know becomes 65534 (nobody/nogroup) rather than root, so nothing ends up
 * root-owned by accident, and the path is listed under "unknown_owners" in the descriptor's rpm
 * section so that configuration can chown it once the user or group exists. */
struct owner_cache {
	bool group;
	size_t n;
	char **names;
	uint32_t *ids;
	bool *known;
};

static bool lookup_host(bool group, const char *name, uint32_t *id)
{
	size_t size = 16384;
	for (;;) {
		_cleanup_free_ char *buf = xmalloc(size);
		int r;
		if (group) {
			struct group gr, *res = NULL;
			r = getgrnam_r(name, &gr, buf, size, &res);
			if (r == 0 && res)
				*id = res->gr_gid;
			if (r == 0)
				return res != NULL;
		} else {
			struct passwd pw, *res = NULL;
			r = getpwnam_r(name, &pw, buf, size, &res);
			if (r == 0 && res)
				*id = res->pw_uid;
			if (r == 0)
				return res != NULL;
		}
		if (r != ERANGE || size >= (1u << 24))
			return false; /* an unreadable database counts as not knowing the name */
		size *= 2;
	}
}

static bool owner_id(struct owner_cache *c, const char *name, uint32_t *id)
{
	if (!name || !*name || !strcmp(name, "root")) {
		*id = 0;
		return true;
	}
	for (size_t i = 0; i < c->n; i++)
		if (!strcmp(c->names[i], name)) {
			*id = c->ids[i];
			return c->known[i];
		}
	uint32_t found = OWNER_NOBODY;
	bool known = lookup_host(c->group, name, &found);
	c->names = xrealloc(c->names, (c->n + 1) * sizeof(*c->names));
	c->ids = xrealloc(c->ids, (c->n + 1) * sizeof(*c->ids));
	c->known = xrealloc(c->known, (c->n + 1) * sizeof(*c->known));
	c->names[c->n] = xstrdup(name);
	c->ids[c->n] = known ? found : OWNER_NOBODY;
	c->known[c->n] = known;
	*id = c->ids[c->n++];
	return known;
}

static void owner_cache_clear(struct owner_cache *c)
{
	strv_free(c->names, c->n);
	free(c->ids);
	free(c->known);
	c->names = NULL;
	c->ids = NULL;
	c->known = NULL;
	c->n = 0;
}

/* ---- file capabilities ---------------------------------------------------------------------- */

/* rpm keeps %caps in the header as libcap's text form ("cap_net_raw=ep", see cap_from_text(3))
 * and applies them with cap_set_file(). The kernel wants struct vfs_cap_data in
 * security.capability, which libcap builds only inside cap_set_file() (cap_copy_ext() is libcap's
 * own format, not the xattr). So the text is parsed here, which also keeps libcap out of the link,
 * and the xattr is laid out as cap_set_file() does for a file without a namespace root. */

/* Capability numbers 0..CAP_LAST_CAP (40, Linux 5.9) without the "cap_" prefix; later ones are
 * accepted by number, as libcap accepts them. */
static const char *const cap_names[] = {
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
};

enum { CAPS_EFFECTIVE, CAPS_INHERITABLE, CAPS_PERMITTED };
#define CAPS_BITS (32 * VFS_CAP_U32_2)

/* One capability name or number of a clause's list; returns its bit mask or 0. */
static uint64_t caps_name(const char *s, size_t n)
{
	if (n == 3 && !strncasecmp(s, "all", 3))
		return (UINT64_C(1) << ARRAY_SIZE(cap_names)) - 1;
	if (n > 0 && n <= 2 && s[0] >= '0' && s[0] <= '9' &&
	    (n == 1 || (s[1] >= '0' && s[1] <= '9'))) {
		unsigned v = (unsigned)(s[0] - '0');
		if (n == 2)
			v = v * 10 + (unsigned)(s[1] - '0');
		return v < CAPS_BITS ? UINT64_C(1) << v : 0;
	}
	if (n <= 4 || strncasecmp(s, "cap_", 4))
		return 0;
	for (size_t i = 0; i < ARRAY_SIZE(cap_names); i++)
		if (strlen(cap_names[i]) == n - 4 && !strncasecmp(s + 4, cap_names[i], n - 4))
			return UINT64_C(1) << i;
	return 0;
}

/* Whitespace-separated clauses, each a comma-separated list of names ("all", numbers; empty before
 * a leading '=' means all) and then operator-flags pairs: '=' resets the listed capabilities in
 * all three sets and raises them in the flagged ones, '+' raises, '-' lowers. */
static int caps_parse(const char *text, uint64_t sets[3])
{
	static const char *const space = " \t\n\r\f\v";
	const char *p = text;

	sets[CAPS_EFFECTIVE] = sets[CAPS_INHERITABLE] = sets[CAPS_PERMITTED] = 0;
	for (;;) {
		p += strspn(p, space);
		if (!*p)
			return 0;
		uint64_t list = 0;
		bool named = false;
		while (*p && !strchr("=+-", *p)) {
			size_t n = strcspn(p, ",=+- \t\n\r\f\v");
			uint64_t bits = caps_name(p, n);
			if (!bits)
				return -EINVAL;
			list |= bits;
			named = true;
			p += n;
			if (*p == ',')
				p++;
			else if (!*p || !strchr("=+-", *p))
				return -EINVAL;
		}
		if (!named) {
			if (*p != '=')
				return -EINVAL;
			list = (UINT64_C(1) << ARRAY_SIZE(cap_names)) - 1;
		}
		while (*p && strchr("=+-", *p)) {
			char op = *p++;
			if (op == '=')
				for (size_t s = 0; s < 3; s++)
					sets[s] &= ~list;
			size_t flags = 0;
			for (; *p == 'e' || *p == 'i' || *p == 'p'; p++, flags++) {
				size_t s = *p == 'e'   ? CAPS_EFFECTIVE
				           : *p == 'i' ? CAPS_INHERITABLE
				                       : CAPS_PERMITTED;
				if (op == '-')
					sets[s] &= ~list;
				else
					sets[s] |= list;
			}
			if (!flags && op != '=')
				return -EINVAL;
		}
		if (*p && !strchr(space, *p))
			return -EINVAL;
	}
}

/* The xattr value: revision 2, with the effective bit when any capability is effective, which then
 * has to cover every permitted and inheritable one (cap_set_file() refuses anything else). An
 * empty set still gives a value, as cap_set_file() writes one. Returns the length or -EINVAL. */
static int caps_xattr(const char *text, uint8_t out[CAPS_XATTR_LEN])
{
	uint64_t sets[3];
	int r = caps_parse(text, sets);
	if (r < 0)
		return r;
	uint64_t raised = sets[CAPS_PERMITTED] | sets[CAPS_INHERITABLE];
	if (sets[CAPS_EFFECTIVE] && (raised & ~sets[CAPS_EFFECTIVE]))
		return -EINVAL;

	uint32_t words[1 + 2 * VFS_CAP_U32_2];
	words[0] =
	    htole32(VFS_CAP_REVISION_2 | (sets[CAPS_EFFECTIVE] ? VFS_CAP_FLAGS_EFFECTIVE : 0));
	for (size_t i = 0; i < VFS_CAP_U32_2; i++) {
		words[1 + 2 * i] = htole32((uint32_t)(sets[CAPS_PERMITTED] >> (32 * i)));
		words[2 + 2 * i] = htole32((uint32_t)(sets[CAPS_INHERITABLE] >> (32 * i)));
	}
	memcpy(out, words, sizeof(words));
	return (int)sizeof(words);
}

/* ---- payload ------------------------------------------------------------------------------ */

/* The rpmio layer that decompresses each RPMTAG_PAYLOADCOMPRESSOR. */
static const char *payload_io(const char *compressor)
{
	static const struct {
		const char *name, *io;
	} map[] = {
	    {"gzip", "r.gzdio"}, {"bzip2", "r.bzdio"}, {"xz", "r.xzdio"},
	    {"lzma", "r.lzdio"}, {"zstd", "r.zstdio"},
	};
	if (!compressor)
		return "r.gzdio"; /* rpm's default before the tag existed */
	for (size_t i = 0; i < ARRAY_SIZE(map); i++)
		if (!strcmp(map[i].name, compressor))
			return map[i].io;
	return NULL;
}

/* rpmReadPackageFile() checks the header only (it adds RPMVSF_NEEDPAYLOAD), so the payload is
 * checked here against RPMTAG_PAYLOADDIGEST, over the compressed bytes from offset to the end, as
 * rpm does before installing. Packages older than rpm 4.14 have no payload digest; their per-file
 * digests (checked while streaming) still cover every byte of content. */
static int check_payload_digest(const char *path, Header h, int fdno, off_t offset,
                                struct mosaic_error *err)
{
	struct rpmtd_s td;
	_cleanup_free_ char *want = NULL;

	if (!headerGet(h, RPMTAG_PAYLOADDIGEST, &td, HEADERGET_MINMEM))
		return 0;
	const char *s = rpmtdGetString(&td);
	want = s ? xstrdup(s) : NULL;
	rpmtdFreeData(&td);
	if (!want)
		return 0;

	int algo = (int)headerGetNumber(h, RPMTAG_PAYLOADDIGESTALGO);
	if (rpmDigestLength(algo) == 0)
		return mosaic_errorf(
		    err, -EOPNOTSUPP,
		    "%s: payload digest uses unknown algorithm %d; cannot check it", path, algo);
	DIGEST_CTX ctx = rpmDigestInit(algo, RPMDIGEST_NONE);
	_cleanup_free_ char *buf = xmalloc(1 << 16);
	for (;;) {
		ssize_t n = pread(fdno, buf, 1 << 16, offset);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			rpmDigestFinal(ctx, NULL, NULL, 0);
			return mosaic_errorf(err, r, "%s: reading the payload: %s", path,
			                     strerror(-r));
		}
		if (n == 0)
			break;
		rpmDigestUpdate(ctx, buf, (size_t)n);
		offset += n;
	}
	_cleanup_free_ char *got = NULL;
	rpmDigestFinal(ctx, (void **)&got, NULL, 1);
	if (!got || strcasecmp(got, want) != 0)
		return mosaic_errorf(
		    err, -EBADMSG,
		    "%s: payload digest mismatch (the package is corrupt or truncated)", path);
	return 0;
}

/* One regular file's content, read from the payload and checked against the header's digest. */
struct content_read {
	rpmfi fi;
	rpm_loff_t left;
	DIGEST_CTX digest;
	const unsigned char *want;
	size_t want_len;
	int error; /* sticky: once a read failed, every later call fails the same way */
	char why[128];
};

static ssize_t content_read(void *ctx, void *buf, size_t len)
{
	struct content_read *c = ctx;

	if (c->error)
		return c->error;
	if (c->left == 0) {
		if (c->digest) {
			_cleanup_free_ unsigned char *got = NULL;
			size_t got_len = 0;
			rpmDigestFinal(c->digest, (void **)&got, &got_len, 0);
			c->digest = NULL;
			if (!got || got_len != c->want_len || memcmp(got, c->want, got_len)) {
				snprintf(c->why, sizeof(c->why), "file digest mismatch");
				return c->error = -EBADMSG;
			}
		}
		return 0;
	}
	if (len > c->left)
		len = c->left;
	ssize_t n = rpmfiArchiveRead(c->fi, buf, len);
	if (n <= 0) {
		snprintf(c->why, sizeof(c->why), "payload ends inside the file (%llu bytes short)",
		         (unsigned long long)c->left);
		return c->error = n < 0 ? -EIO : -EBADMSG;
	}
	if (c->digest)
		rpmDigestUpdate(c->digest, buf, (size_t)n);
	c->left -= (rpm_loff_t)n;
	return n;
}

struct memory_read {
	const uint8_t *p;
	size_t left;
};

static ssize_t memory_read(void *ctx, void *buf, size_t len)
{
	struct memory_read *m = ctx;
	if (len > m->left)
		len = m->left;
	memcpy(buf, m->p, len);
	m->p += len;
	m->left -= len;
	return (ssize_t)len;
}

static const char *strip_root(const char *p)
{
	while (*p == '/')
		p++;
	return p;
}

/* Adds the file the archive iterator stands on. */
static int add_file(const char *path, rpmfi fi, rpmfiles files, struct fwriter *w,
                    struct owner_cache *users, struct owner_cache *groups, json_object *unknown,
                    struct mosaic_error *err)
{
	const char *fn = strip_root(rpmfiFN(fi));
	rpm_mode_t mode = rpmfiFMode(fi);
	const int *links = NULL;
	uint32_t n_links = rpmfiFLinks(fi, &links);
	int r;

	/* Iterating content first (RPMFI_ITER_READ_ARCHIVE_CONTENT_FIRST), the first member of a
	 * hard link set comes with the data, which the payload stores with its last member, and the
	 * other members follow; each of those becomes a link to the first. */
	if (S_ISREG(mode) && n_links > 1 && !rpmfiArchiveHasContent(fi)) {
		_cleanup_free_ char *target = rpmfilesFN(files, links[0]);
		r = fwriter_add_hardlink(w, fn, strip_root(target), err);
		if (r < 0)
			return mosaic_error_prefix(err, "%s", path);
		return 0;
	}

	uint32_t uid, gid;
	const char *user = rpmfiFUser(fi), *group = rpmfiFGroup(fi);
	bool user_known = owner_id(users, user, &uid);
	bool group_known = owner_id(groups, group, &gid);
	if (!user_known || !group_known) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "path", json_object_new_string(fn));
		json_object_object_add(o, "user", string_or_null(user));
		json_object_object_add(o, "group", string_or_null(group));
		json_object_array_add(unknown, o);
	}

	struct fentry e = {
	    .mode = mode,
	    .uid = uid,
	    .gid = gid,
	    .mtime = rpmfiFMtime(fi),
	    .rdev = (dev_t)rpmfiFRdev(fi), /* rpm hands this to mknod() as it is */
	};
	struct fxattr caps_attr;
	uint8_t caps[CAPS_XATTR_LEN];

	if (S_ISLNK(mode)) {
		e.link = rpmfiFLink(fi);
		if (!e.link || !*e.link)
			return mosaic_errorf(err, -EBADMSG, "%s: symlink /%s has no target", path,
			                     fn);
	}
	if (!S_ISREG(mode)) {
		r = fwriter_add(w, fn, &e, NULL, NULL, err);
		return r < 0 ? mosaic_error_prefix(err, "%s", path) : 0;
	}

	const char *text = rpmfiFCaps(fi);
	if (text && *text) {
		r = caps_xattr(text, caps);
		if (r < 0)
			return mosaic_errorf(err, r,
			                     "%s: /%s: cannot turn capabilities '%s' into %s", path,
			                     fn, text, CAPS_XATTR);
		caps_attr = (struct fxattr){.key = CAPS_XATTR, .value = caps, .len = (size_t)r};
		e.xattrs = &caps_attr;
		e.n_xattrs = 1;
	}

	struct content_read c = {.fi = fi, .left = rpmfiFSize(fi)};
	int algo = 0;
	size_t want_len = 0;
	const unsigned char *want = rpmfiFDigest(fi, &algo, &want_len);
	/* Old packages have all-zero MD5 digests for empty files; an empty file needs no check. */
	if (want && want_len > 0 && c.left > 0 && rpmDigestLength(algo) == want_len) {
		c.digest = rpmDigestInit(algo, RPMDIGEST_NONE);
		c.want = want;
		c.want_len = want_len;
	}
	r = fwriter_add(w, fn, &e, content_read, &c, err);
	if (c.digest)
		rpmDigestFinal(c.digest, NULL, NULL, 0);
	if (r < 0 && c.error)
		return mosaic_errorf(err, c.error, "%s: /%s: %s", path, fn, c.why);
	if (r < 0)
		return mosaic_error_prefix(err, "%s", path);
	return 0;
}

static int stream_payload(const char *path, FD_t payload, Header h, struct fwriter *w,
                          json_object *unknown, struct mosaic_error *err)
{
	_cleanup_(rpmfilesp) rpmfiles files = rpmfilesNew(NULL, h, 0, RPMFI_KEEPHEADER);
	if (!files)
		return mosaic_errorf(err, -EBADMSG, "%s: the header's file list is malformed",
		                     path);
	_cleanup_(rpmfip) rpmfi fi =
	    rpmfiNewArchiveReader(payload, files, RPMFI_ITER_READ_ARCHIVE_CONTENT_FIRST);
	if (!fi)
		return mosaic_errorf(err, -EBADMSG, "%s: cannot open the cpio payload", path);

	struct owner_cache users = {.group = false}, groups = {.group = true};
	int r = 0;
	for (;;) {
		int fx = rpmfiNext(fi);
		if (fx == RPMERR_ITER_END)
			break;
		if (fx == RPMERR_ITER_SKIP) /* a %ghost that rpm < 4.11 put into the payload */
			continue;
		if (fx < 0) {
			_cleanup_free_ char *why = rpmfileStrerror(fx);
			r = mosaic_errorf(err, -EBADMSG, "%s: payload: %s", path, why);
			break;
		}
		/* %ghost files are not in the payload; the iterator never stops on them. */
		if (rpmfiFFlags(fi) & RPMFILE_GHOST)
			continue;
		r = add_file(path, fi, files, w, &users, &groups, unknown, err);
		if (r < 0)
			break;
	}
	owner_cache_clear(&users);
	owner_cache_clear(&groups);
	return r;
}

/* ---- the source ------------------------------------------------------------------------------ */

/* Reads the header of the package open as fd, checking digests and the header signature
 * against k (may be NULL: every signature is then "nokey"). status is "ok", "nokey",
 * "nottrusted", "bad" (the signature does not match; the digests do) or "unsigned"; keyid is the
 * signer's key id or NULL. A corrupt header or a file that is no package is an error. */
static int read_header_checked(const char *path, FD_t fd, struct keyring *k, Header *out,
                               const char **status, char **keyid, struct mosaic_error *err)
{
	char detail[RPM_SAID_MAX + 4];
	int r;

	rpm_said_clear();
	if (rpm_setup() < 0)
		return mosaic_errorf(err, -EIO, "%s: librpm could not read its configuration%s",
		                     path, rpm_said_detail(detail));

	_cleanup_(rpmkeyringp) rpmKeyring keyring = NULL;
	r = rpm_keyring_new(path, k, &keyring, err);
	if (r < 0)
		return r;
	_cleanup_(rpmtsp) rpmts ts = rpmtsCreate();
	/* Always our own keyring, empty without one: never the host's rpmdb keys. */
	rpmtsSetKeyring(ts, keyring);
	/* Every digest and signature the header has. A signature by a key we do not have comes back
	 * as NOKEY (recorded, not fatal); a digest mismatch as FAIL. */
	rpmtsSetVSFlags(ts, RPMVSF_DEFAULT);

	_cleanup_(headerp) Header h = NULL;
	rpmRC rc = rpmReadPackageFile(ts, fd, path, &h);
	switch (rc) {
	case RPMRC_OK:
	case RPMRC_NOKEY:
	case RPMRC_NOTTRUSTED:
		*status = rc == RPMRC_OK ? "ok" : rc == RPMRC_NOKEY ? "nokey" : "nottrusted";
		break;
	case RPMRC_NOTFOUND:
		return mosaic_errorf(err, -EINVAL, "%s: not an RPM package%s", path,
		                     rpm_said_detail(detail));
	default:
		/* FAIL is a bad signature or a corrupt header. Tell them apart by reading again
		 * with digests only: a package whose digests hold only has a bad signature, which
		 * is recorded like a missing key. */
		headerFree(h);
		h = NULL;
		rpm_said_detail(detail);
		rpmtsSetVSFlags(ts, RPMVSF_MASK_NOSIGNATURES);
		if (Fseek(fd, 0, SEEK_SET) < 0 || rpmReadPackageFile(ts, fd, path, &h) != RPMRC_OK)
			return mosaic_errorf(err, -EBADMSG,
			                     "%s: corrupt package: header digest mismatch or "
			                     "unreadable header%s",
			                     path, detail);
		*status = "bad";
		break;
	}
	rpm_said_clear(); /* a NOKEY warning is recorded, not a detail of later errors */
	if (!header_signature(h, keyid))
		*status = "unsigned";
	*out = TAKE_PTR(h);
	return 0;
}

/* librpm's handle on path (with a descriptor of its own). */
static int open_rpm(const char *path, FD_t *out, struct mosaic_error *err)
{
	_cleanup_close_ int fdno = open(path, O_RDONLY | O_CLOEXEC);
	if (fdno < 0)
		return mosaic_errorf(err, -errno, "%s: %s", path, strerror(errno));
	FD_t fd = fdDup(fdno);
	if (!fd || Ferror(fd)) {
		if (fd)
			Fclose(fd);
		return mosaic_errorf(err, -EIO, "%s: librpm cannot open it", path);
	}
	*out = fd;
	return 0;
}

int rpm_signature_check(struct keyring *k, const char *path, const char **status, char **keyid,
                        struct mosaic_error *err)
{
	_cleanup_(fdp) FD_t fd = NULL;
	int r = open_rpm(path, &fd, err);
	if (r < 0)
		return r;
	_cleanup_(headerp) Header h = NULL;
	_cleanup_free_ char *id = NULL;
	r = read_header_checked(path, fd, k, &h, status, &id, err);
	if (r < 0)
		return r;
	if (keyid)
		*keyid = TAKE_PTR(id);
	return 0;
}

int src_rpm_read(const char *path, struct fwriter *w, struct src_meta *m,
                 const struct fragment_create_options *o, struct mosaic_error *err)
{
	char detail[RPM_SAID_MAX + 4];
	int r;

	_cleanup_(fdp) FD_t fd = NULL;
	if ((r = open_rpm(path, &fd, err)) < 0)
		return r;

	_cleanup_(headerp) Header h = NULL;
	const char *status;
	_cleanup_free_ char *keyid = NULL;
	r = read_header_checked(path, fd, o ? o->keyring : NULL, &h, &status, &keyid, err);
	if (r < 0)
		return r;
	bool verified = !strcmp(status, "ok");

	const char *name = headerGetString(h, RPMTAG_NAME);
	const char *version = headerGetString(h, RPMTAG_VERSION);
	const char *release = headerGetString(h, RPMTAG_RELEASE);
	const char *arch = headerIsSource(h) ? "src" : headerGetString(h, RPMTAG_ARCH);
	if (!name || !*name || !version || !*version || !release || !*release || !arch || !*arch)
		return mosaic_errorf(err, -EBADMSG,
		                     "%s: header lacks the name, version, release or architecture",
		                     path);
	if (strchr(name, '/') || strchr(version, '/') || strchr(release, '/') || strchr(arch, '/'))
		return mosaic_errorf(
		    err, -EBADMSG, "%s: '/' in the package's name, version, release or arch", path);
	bool has_epoch = headerIsEntry(h, RPMTAG_EPOCH);
	uint64_t epoch = headerGetNumber(h, RPMTAG_EPOCH);
	_cleanup_free_ char *evr = has_epoch
	                               ? xasprintf("%" PRIu64 ":%s-%s", epoch, version, release)
	                               : xasprintf("%s-%s", version, release);

	const char *format = headerGetString(h, RPMTAG_PAYLOADFORMAT);
	if (format && strcmp(format, "cpio") != 0)
		return mosaic_errorf(err, -EOPNOTSUPP,
		                     "%s: payload format '%s' is not supported (only cpio)", path,
		                     format);
	const char *compressor = headerGetString(h, RPMTAG_PAYLOADCOMPRESSOR);
	const char *io = payload_io(compressor);
	if (!io)
		return mosaic_errorf(err, -EOPNOTSUPP, "%s: unknown payload compressor '%s'", path,
		                     compressor);

	off_t offset = Ftell(fd);
	if (offset < 0)
		return mosaic_errorf(err, -EIO, "%s: cannot tell where the payload starts", path);
	r = check_payload_digest(path, h, Fileno(fd), offset, err);
	if (r < 0)
		return r;

	_cleanup_(json_putp) json_object *requires = deps_json(h, RPMTAG_REQUIRENAME);
	_cleanup_(json_putp) json_object *provides = deps_json(h, RPMTAG_PROVIDENAME);
	_cleanup_(json_putp) json_object *unknown = json_object_new_array();

	/* Fdopen pushes the decompressor onto fd itself: the same FD_t, closed once. */
	FD_t payload = Fdopen(fd, io);
	if (!payload || Ferror(payload))
		return mosaic_errorf(err, -EBADMSG, "%s: cannot open the %s payload%s", path,
		                     compressor ? compressor : "gzip", rpm_said_detail(detail));
	fd = payload;
	r = stream_payload(path, fd, h, w, unknown, err);
	if (r < 0)
		return r;

	/* The header for the package database (see the top of this file). */
	unsigned int blob_len = 0;
	_cleanup_free_ void *blob = headerExport(h, &blob_len);
	if (!blob)
		return mosaic_errorf(err, -EBADMSG, "%s: cannot export the header", path);
	_cleanup_free_ char *hdr_path =
	    xasprintf(RPM_HEADER_DIR "/%s-%s-%s.%s.rpmhdr", name, version, release, arch);
	int64_t build_time = (int64_t)headerGetNumber(h, RPMTAG_BUILDTIME);
	struct fentry e = {
	    .mode = S_IFREG | 0644,
	    .mtime = o && o->source_date_epoch >= 0 ? o->source_date_epoch : build_time,
	};
	struct memory_read mr = {.p = blob, .left = blob_len};
	r = fwriter_add(w, hdr_path, &e, memory_read, &mr, err);
	if (r < 0)
		return mosaic_error_prefix(err, "%s", path);

	json_object *sig = json_object_new_object();
	json_object_object_add(sig, "verified", json_object_new_boolean(verified));
	json_object_object_add(sig, "status", json_object_new_string(status));
	json_object_object_add(sig, "key", string_or_null(keyid));

	_cleanup_(json_putp) json_object *x = json_object_new_object();
	json_object_object_add(x, "name", json_object_new_string(name));
	json_object_object_add(x, "epoch",
	                       has_epoch ? json_object_new_int64((int64_t)epoch) : NULL);
	json_object_object_add(x, "version", json_object_new_string(version));
	json_object_object_add(x, "release", json_object_new_string(release));
	json_object_object_add(x, "arch", json_object_new_string(arch));
	json_object_object_add(x, "requires", json_object_get(requires));
	json_object_object_add(x, "provides", json_object_get(provides));
	json_object_object_add(x, "conflicts", deps_json(h, RPMTAG_CONFLICTNAME));
	json_object_object_add(x, "obsoletes", deps_json(h, RPMTAG_OBSOLETENAME));
	json_object_object_add(x, "summary", string_or_null(headerGetString(h, RPMTAG_SUMMARY)));
	json_object_object_add(x, "license", string_or_null(headerGetString(h, RPMTAG_LICENSE)));
	json_object_object_add(x, "sourcerpm",
	                       string_or_null(headerGetString(h, RPMTAG_SOURCERPM)));
	json_object_object_add(x, "buildtime", json_object_new_int64(build_time));
	json_object_object_add(x, "signature", sig);
	json_object_object_add(x, "header", json_object_new_string(hdr_path));
	json_object_object_add(x, "unknown_owners", TAKE_PTR(unknown));

	m->type = xstrdup("rpm");
	m->name = xstrdup(name);
	m->version = TAKE_PTR(evr);
	m->arch = xstrdup(arch);
	m->provides = TAKE_PTR(provides);
	m->requires = TAKE_PTR(requires);
	m->extra = TAKE_PTR(x);
	m->extra_key = xstrdup("rpm");
	return 0;
}
