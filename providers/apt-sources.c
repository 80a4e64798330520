/* providers/: the host's apt sources as repository configs: one-line sources.list entries and
 * deb822 .sources stanzas, their Signed-By keyrings (or the host's trusted keyrings), and apt's
 * Acquire::Check-Valid-Until. Only 'deb' entries; the mirror is whatever the host uses. */
#include "providers/internal.h"

#include <ctype.h>
#include <dirent.h>
#include <fnmatch.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/deb822.h"

#define APT_FILE_MAX (4u << 20)
#define ARMOR_BEGIN  "-----BEGIN PGP PUBLIC KEY BLOCK-----"
#define ARMOR_END    "-----END PGP PUBLIC KEY BLOCK-----"

/* One source entry as apt describes it, before it becomes configs (one per URI and suite). */
struct entry {
	char **uris, **suites, **components; /* NULL-terminated */
	char *signed_by;                     /* NULL, paths/fingerprints, or a key block */
	int check_valid_until;               /* -1: apt's global setting */
	const char *file;
	size_t line;
};

struct state {
	const char *root;
	char *const *suites;
	bool check_valid_until;
	char *trusted; /* the combined host keyring, made on first use */
	struct repo_config *out;
	size_t n;
};

static char *rooted(const char *root, const char *path)
{
	if (!root || !*root || !strcmp(root, "/"))
		return xstrdup(path);
	return path_join(root, path);
}



static size_t strv_len(char *const *v)
{
	size_t n = 0;
	while (v && v[n])
		n++;
	return n;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names in dir ending in one of the suffixes, sorted; NULL-terminated, possibly empty. */
static char **list_dir(const char *dir, const char *const *suffixes)
{
	char **v = xcalloc(1, sizeof(*v));
	size_t n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return v;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		bool match = false;
		for (const char *const *s = suffixes; *s && !match; s++) {
			size_t sl = strlen(*s);
			match = l > sl && !strcmp(de->d_name + l - sl, *s);
		}
		if (!match || de->d_name[0] == '.')
			continue;
		v = xrealloc(v, (n + 2) * sizeof(*v));
		v[n++] = path_join(dir, de->d_name);
		v[n] = NULL;
	}
	closedir(d);
	qsort_safe(v, n, sizeof(*v), cmp_names);
	return v;
}

/* ---- apt.conf: Acquire::Check-Valid-Until ---------------------------------------------------- */

static int parse_bool(const char *s, size_t n)
{
	static const char *const yes[] = {"true", "yes", "1", "on", "enable"};
	static const char *const no[] = {"false", "no", "0", "off", "disable"};
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++)
		if (strlen(yes[i]) == n && !strncasecmp(s, yes[i], n))
			return 1;
	for (size_t i = 0; i < ARRAY_SIZE(no); i++)
		if (strlen(no[i]) == n && !strncasecmp(s, no[i], n))
			return 0;
	return -1;
}

/* A plain text match, as apt's own syntax allows both "Acquire::Check-Valid-Until" and the
 * nested "Acquire { Check-Valid-Until …; }"; comment lines are skipped. The last one wins. */
static void scan_apt_conf(const char *path, bool *value)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	if (read_file(path, APT_FILE_MAX, &text, &len) < 0)
		return;
	static const char key[] = "Check-Valid-Until";
	for (char *line = text; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		char *p = line + strspn(line, " \t");
		if (*p != '#' && strncmp(p, "//", 2) != 0) {
			char *k = strcasestr(p, key);
			if (k) {
				char *v = k + strlen(key);
				v += strspn(v, " \t\"");
				size_t n = strcspn(v, "\"; \t");
				int b = parse_bool(v, n);
				if (b >= 0)
					*value = b;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
}

static bool check_valid_until(const char *root)
{
	bool value = true; /* apt's default */
	static const char *const any[] = {"", NULL};
	_cleanup_free_ char *dir = rooted(root, "/etc/apt/apt.conf.d");
	char **files = list_dir(dir, any);
	for (char **f = files; *f; f++)
		scan_apt_conf(*f, &value);
	strv_freev(files);
	_cleanup_free_ char *main_conf = rooted(root, "/etc/apt/apt.conf");
	scan_apt_conf(main_conf, &value);
	return value;
}

/* ---- keyrings ----------------------------------------------------------------------------------
 */

static int b64_value(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Appends the binary packets of every armored public key block in text to *out. Returns the
 * number of blocks, or -EINVAL for a block that does not decode. */
static int dearmor(const char *text, size_t len, char **out, size_t *out_len)
{
	const char *p = text, *end = text + len;
	int blocks = 0;
	while ((p = memmem(p, end - p, ARMOR_BEGIN, strlen(ARMOR_BEGIN)))) {
		const char *stop = memmem(p, end - p, ARMOR_END, strlen(ARMOR_END));
		if (!stop)
			return -EINVAL;
		/* Decoded data is shorter than its text: room for all of it at once. */
		*out = xrealloc(*out, *out_len + (size_t)(stop - p));
		const char *l = memchr(p, '\n', stop - p);
		bool in_body = false;
		uint32_t acc = 0;
		int bits = 0;
		/* Armor headers ("Version: …") until an empty line, then base64 until the "=CRC"
		 * line. */
		while (l && l < stop) {
			const char *line = l + 1;
			const char *eol = memchr(line, '\n', stop - line);
			if (!eol)
				eol = stop;
			size_t n = eol - line;
			while (n && isspace((unsigned char)line[n - 1]))
				n--;
			if (!in_body) {
				if (n == 0 || !memchr(line, ':', n))
					in_body = true;
				if (n == 0 || memchr(line, ':', n)) {
					l = eol < stop ? eol : NULL;
					continue;
				}
			}
			if (n > 0 && line[0] == '=')
				break;
			for (size_t i = 0; i < n; i++) {
				if (line[i] == '=')
					break;
				int v = b64_value((unsigned char)line[i]);
				if (v < 0)
					return -EINVAL;
				acc = (acc << 6) | (uint32_t)v;
				bits += 6;
				if (bits >= 8) {
					bits -= 8;
					(*out)[(*out_len)++] = (char)((acc >> bits) & 0xff);
				}
			}
			l = eol < stop ? eol : NULL;
		}
		blocks++;
		p = stop + strlen(ARMOR_END);
	}
	return blocks;
}

/* Writes data to <cache>/keyrings-host/<sha256><suffix> unless it is there; returns the path. */
static int store_keyring(const void *data, size_t len, const char *suffix, char **path,
                         struct mosaic_error *err)
{
	char hex[SHA256_HEX_LEN + 1];
	sha256_buffer(data, len, hex);
	_cleanup_free_ char *cache = mosaic_cache_dir();
	_cleanup_free_ char *dir = path_join(cache, "keyrings-host");
	_cleanup_free_ char *p = xasprintf("%s/%s%s", dir, hex, suffix);
	struct stat st;
	if (stat(p, &st) != 0) {
		int r = mkdir_p(dir, 0755);
		if (r >= 0)
			r = write_file_atomic(p, data, len, 0644);
		if (r < 0)
			return mosaic_errorf(err, r, "%s: %s", p, strerror(-r));
	}
	*path = TAKE_PTR(p);
	return 0;
}

/* Concatenates keyring files into one binary keyring (armored ones dearmored; GnuPG keybox
 * files, which apt does not read either, are left out). *path stays NULL when no file had keys. */
static int combine_keyrings(char **files, char **path, struct mosaic_error *err)
{
	_cleanup_free_ char *all = NULL;
	size_t n = 0;
	for (char **f = files; *f; f++) {
		_cleanup_free_ char *data = NULL;
		size_t len;
		if (read_file(*f, 64u << 20, &data, &len) < 0 || len == 0)
			continue;
		if (memmem(data, len, ARMOR_BEGIN, strlen(ARMOR_BEGIN))) {
			if (dearmor(data, len, &all, &n) < 0)
				return mosaic_errorf(err, -EINVAL,
				                     "%s: armored key block does not decode", *f);
		} else if (len >= 12 && !memcmp(data + 8, "KBXf", 4)) {
			continue;
		} else {
			all = xrealloc(all, n + len);
			memcpy(all + n, data, len);
			n += len;
		}
	}
	*path = NULL;
	if (n == 0)
		return 0;
	return store_keyring(all, n, ".gpg", path, err);
}

/* The keyring apt uses for sources without Signed-By: trusted.gpg and trusted.gpg.d. */
static int host_trusted(struct state *st, char **path, struct mosaic_error *err)
{
	if (!st->trusted) {
		static const char *const kinds[] = {".gpg", ".asc", NULL};
		_cleanup_free_ char *dir = rooted(st->root, "/etc/apt/trusted.gpg.d");
		char **files = list_dir(dir, kinds);
		size_t nf = strv_len(files);
		files = xrealloc(files, (nf + 2) * sizeof(*files));
		memmove(files + 1, files, (nf + 1) * sizeof(*files));
		files[0] = rooted(st->root, "/etc/apt/trusted.gpg");
		int r = combine_keyrings(files, &st->trusted, err);
		strv_freev(files);
		if (r < 0)
			return r;
		/* No keys at all: name the file apt would read, so the error at load names it. */
		if (!st->trusted)
			st->trusted = rooted(st->root, "/etc/apt/trusted.gpg");
	}
	*path = xstrdup(st->trusted);
	return 0;
}

/* An inline key block in a deb822 Signed-By: the parser joined its lines with '\n'; a line
 * holding only "." stands for an empty line. */
static int inline_key(const char *value, char **path, struct mosaic_error *err)
{
	const char *begin = strstr(value, ARMOR_BEGIN);
	size_t n = strlen(begin);
	_cleanup_free_ char *text = xmalloc(n + 2);
	size_t o = 0;
	for (const char *l = begin; *l;) {
		const char *nl = strchrnul(l, '\n');
		if (!(nl - l == 1 && *l == '.')) {
			memcpy(text + o, l, nl - l);
			o += nl - l;
		}
		text[o++] = '\n';
		l = *nl ? nl + 1 : nl;
	}
	text[o] = '\0';
	return store_keyring(text, o, ".asc", path, err);
}

static int entry_keyring(struct state *st, const struct entry *e, char **path,
                         struct mosaic_error *err)
{
	if (!e->signed_by)
		return host_trusted(st, path, err);
	if (strstr(e->signed_by, ARMOR_BEGIN))
		return inline_key(e->signed_by, path, err);
	/* Paths, or fingerprints of keys in the trusted keyrings (taken as those keyrings). */
	char **words = strv_split(e->signed_by, " \t\n\r,");
	char **files = xcalloc(strv_len(words) + 1, sizeof(*files));
	size_t nf = 0;
	for (char **w = words; *w; w++)
		if ((*w)[0] == '/')
			files[nf++] = rooted(st->root, *w);
	strv_freev(words);
	int r;
	if (nf == 0)
		r = host_trusted(st, path, err);
	else if (nf == 1) {
		*path = TAKE_PTR(files[0]);
		r = 0;
	} else {
		r = combine_keyrings(files, path, err);
		if (r >= 0 && !*path)
			*path = xstrdup(files[0]);
	}
	strv_freev(files);
	return r;
}

/* ---- entries to configs ------------------------------------------------------------------------
 */

static bool suite_wanted(const struct state *st, const char *suite)
{
	if (!st->suites)
		return true;
	for (char *const *p = st->suites; *p; p++)
		if (fnmatch(*p, suite, 0) == 0)
			return true;
	return false;
}

static bool uri_supported(const char *uri)
{
	return !strncmp(uri, "http://", 7) || !strncmp(uri, "https://", 8) ||
	       !strncmp(uri, "file:/", 6);
}

static bool name_taken(const struct state *st, const char *name)
{
	for (size_t i = 0; i < st->n; i++)
		if (!strcmp(st->out[i].name, name))
			return true;
	return false;
}

static int add_entry(struct state *st, const struct entry *e, struct mosaic_error *err)
{
	for (char **u = e->uris; *u; u++) {
		if (!uri_supported(*u))
			continue;
		for (char **s = e->suites; *s; s++) {
			/* Flat repositories ("./", "sub/") have no dists/: not supported. */
			if (strchr(*s, '/') && (*s)[strlen(*s) - 1] == '/')
				continue;
			if (!suite_wanted(st, *s))
				continue;
			if (!e->components[0])
				return mosaic_errorf(err, -EINVAL,
				                     "%s:%zu: suite %s of %s names no component",
				                     e->file, e->line, *s, *u);
			struct repo_config c = {
			    .type = REPO_DEB,
			    .uri = strip_trailing_slashes(*u),
			    .suite = xstrdup(*s),
			    .check_valid_until = e->check_valid_until >= 0 ? e->check_valid_until
			                                                   : st->check_valid_until,
			};
			size_t nc = strv_len(e->components);
			c.components = xcalloc(nc + 1, sizeof(char *));
			for (size_t i = 0; i < nc; i++)
				c.components[i] = xstrdup(e->components[i]);
			c.name = xasprintf("host/%s", *s);
			for (unsigned k = 2; name_taken(st, c.name); k++) {
				free(c.name);
				c.name = xasprintf("host/%s#%u", *s, k);
			}
			int r = entry_keyring(st, e, &c.keyring, err);
			if (r < 0) {
				repo_config_clear(&c);
				return r;
			}
			st->out = xrealloc(st->out, (st->n + 1) * sizeof(*st->out));
			st->out[st->n++] = c;
		}
	}
	return 0;
}

static void entry_clear(struct entry *e)
{
	strv_freev(e->uris);
	strv_freev(e->suites);
	strv_freev(e->components);
	free(e->signed_by);
	*e = (struct entry){0};
}

/* "deb [opt=v,w opt2=x] uri suite comp…"; '#' starts a comment. */
static int parse_list_line(struct state *st, const char *file, size_t line, char *s,
                           struct mosaic_error *err)
{
	char *hash = strchr(s, '#');
	if (hash)
		*hash = '\0';
	s += strspn(s, " \t\r");
	if (!*s)
		return 0;
	size_t tl = strcspn(s, " \t\r[");
	bool deb = tl == 3 && !strncmp(s, "deb", 3);
	if (!deb)
		return 0; /* deb-src, or something this does not read */
	s += tl;
	s += strspn(s, " \t\r");
	struct entry e = {.check_valid_until = -1, .file = file, .line = line};
	if (*s == '[') {
		char *close = strchr(s, ']');
		if (!close)
			return mosaic_errorf(err, -EINVAL, "%s:%zu: '[' without ']'", file, line);
		*close = '\0';
		char **opts = strv_split(s + 1, " \t\n\r");
		for (char **o = opts; *o; o++) {
			char *eq = strchr(*o, '=');
			if (!eq)
				continue;
			*eq = '\0';
			const char *v = eq + 1;
			if (!strcasecmp(*o, "signed-by")) {
				free(e.signed_by);
				e.signed_by = xstrdup(v);
			} else if (!strcasecmp(*o, "check-valid-until")) {
				e.check_valid_until = parse_bool(v, strlen(v));
			}
		}
		strv_freev(opts);
		s = close + 1;
	}
	char **words = strv_split(s, " \t\n\r");
	size_t nw = strv_len(words);
	if (nw < 2) {
		strv_freev(words);
		return mosaic_errorf(err, -EINVAL, "%s:%zu: expected 'deb URI SUITE [COMPONENT…]'",
		                     file, line);
	}
	e.uris = xcalloc(2, sizeof(char *));
	e.uris[0] = words[0];
	e.suites = xcalloc(2, sizeof(char *));
	e.suites[0] = words[1];
	e.components = xcalloc(nw - 1, sizeof(char *));
	for (size_t i = 2; i < nw; i++)
		e.components[i - 2] = words[i];
	free(words);
	int r = add_entry(st, &e, err);
	entry_clear(&e);
	return r;
}

/* Reads an apt sources file; 0 with *text NULL when there is none. */
static int read_sources_file(const char *path, char **text, size_t *len, struct mosaic_error *err)
{
	*text = NULL;
	int r = read_file(path, APT_FILE_MAX, text, len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return mosaic_errorf(err, r, "%s: %s", path, strerror(-r));
	return 0;
}

static int parse_list(struct state *st, const char *path, struct mosaic_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_sources_file(path, &text, &len, err);
	if (r < 0 || !text)
		return r;
	size_t line = 0;
	for (char *s = text; s && *s;) {
		char *nl = strchr(s, '\n');
		if (nl)
			*nl = '\0';
		line++;
		if ((r = parse_list_line(st, path, line, s, err)) < 0)
			return r;
		s = nl ? nl + 1 : NULL;
	}
	return 0;
}

static int parse_sources(struct state *st, const char *path, struct mosaic_error *err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = read_sources_file(path, &text, &len, err);
	if (r < 0 || !text)
		return r;
	struct deb822 *stanzas = NULL;
	size_t n = 0;
	if ((r = deb822_parse_all(text, len, &stanzas, &n, err)) < 0) {
		mosaic_error_prefix(err, "%s", path);
		return r;
	}
	for (size_t i = 0; i < n && r >= 0; i++) {
		const struct deb822 *p = &stanzas[i];
		const char *enabled = deb822_get(p, "Enabled");
		if (enabled && parse_bool(enabled, strlen(enabled)) == 0)
			continue;
		char **types = strv_split(deb822_get(p, "Types"), " \t\n\r");
		bool deb = false;
		for (char **t = types; *t; t++)
			deb |= !strcmp(*t, "deb");
		strv_freev(types);
		if (!deb)
			continue;
		struct entry e = {
		    .uris = strv_split(deb822_get(p, "URIs"), " \t\n\r"),
		    .suites = strv_split(deb822_get(p, "Suites"), " \t\n\r"),
		    .components = strv_split(deb822_get(p, "Components"), " \t\n\r"),
		    .check_valid_until = -1,
		    .file = path,
		    .line = i + 1,
		};
		const char *sb = deb822_get(p, "Signed-By");
		if (sb && *sb)
			e.signed_by = xstrdup(sb);
		const char *cvu = deb822_get(p, "Check-Valid-Until");
		if (cvu)
			e.check_valid_until = parse_bool(cvu, strlen(cvu));
		if (!e.uris[0] || !e.suites[0])
			r = mosaic_errorf(err, -EINVAL, "%s: stanza %zu: no URIs or no Suites",
			                  path, i + 1);
		else
			r = add_entry(st, &e, err);
		entry_clear(&e);
	}
	deb822_free_all(stanzas, n);
	return r;
}

int apt_host_sources(const char *root, char *const *suites, struct repo_config **out, size_t *n,
                     struct mosaic_error *err)
{
	struct state st = {
	    .root = root, .suites = suites, .check_valid_until = check_valid_until(root)};
	_cleanup_free_ char *list = rooted(root, "/etc/apt/sources.list");
	int r = parse_list(&st, list, err);
	if (r >= 0) {
		static const char *const kinds[] = {".list", ".sources", NULL};
		_cleanup_free_ char *dir = rooted(root, "/etc/apt/sources.list.d");
		char **files = list_dir(dir, kinds);
		for (char **f = files; *f && r >= 0; f++) {
			size_t l = strlen(*f);
			if (l > 5 && !strcmp(*f + l - 5, ".list"))
				r = parse_list(&st, *f, err);
			else
				r = parse_sources(&st, *f, err);
		}
		strv_freev(files);
	}
	free(st.trusted);
	if (r < 0) {
		for (size_t i = 0; i < st.n; i++)
			repo_config_clear(&st.out[i]);
		free(st.out);
		return r;
	}
	*out = st.out;
	*n = st.n;
	return 0;
}
