/* providers/: the Debian metadata parsers, for untrusted input: Release files (the SHA256 list,
 * dates, by-hash) and Packages files into libsolv, with the SHA-256, size and base sets that
 * libsolv does not keep. No I/O: deb.c fetches and verifies, this reads buffers (and the fuzz
 * target feeds it). */
#include "providers/internal.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <solv/chksum.h>
#include <solv/knownid.h>
#include <solv/repo_deb.h>
#include <solv/repodata.h>

#include "common/deb822.h"



static bool strv_contains(char *const *v, const char *s)
{
	for (char *const *p = v; p && *p; p++)
		if (!strcmp(*p, s))
			return true;
	return false;
}

/* ---- Release ------------------------------------------------------------------------------- */

void release_clear(struct release *r)
{
	free(r->date);
	free(r->valid_until);
	strv_freev(r->architectures);
	strv_freev(r->components);
	for (size_t i = 0; i < r->n_files; i++)
		free(r->files[i].path);
	free(r->files);
	*r = (struct release){0};
}

int64_t release_date_parse(const char *s)
{
	static const char months[][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	const char *comma = strchr(s, ',');
	if (comma)
		s = comma + 1;
	int day, year, h, m, sec, n = 0;
	char mon[4], zone[16];
	if (sscanf(s, " %2d %3s %4d %2d:%2d:%2d %15s%n", &day, mon, &year, &h, &m, &sec, zone,
	           &n) != 7)
		return -1;
	if (s[n + strspn(s + n, " \t")] != '\0')
		return -1;
	int month = -1;
	for (int i = 0; i < 12; i++)
		if (!strcasecmp(mon, months[i]))
			month = i;
	int offset = 0;
	if (!strcmp(zone, "UTC") || !strcmp(zone, "GMT") || !strcmp(zone, "Z") ||
	    !strcmp(zone, "UT")) {
		offset = 0;
	} else if ((zone[0] == '+' || zone[0] == '-') && strlen(zone) == 5 &&
	           strspn(zone + 1, "0123456789") == 4) {
		int hh = (zone[1] - '0') * 10 + zone[2] - '0',
		    mm = (zone[3] - '0') * 10 + zone[4] - '0';
		offset = (zone[0] == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
	} else {
		return -1;
	}
	if (month < 0 || day < 1 || day > 31 || year < 1970 || h > 23 || m > 59 || sec > 60 ||
	    h < 0 || m < 0 || sec < 0)
		return -1;
	struct tm tm = {.tm_year = year - 1900,
	                .tm_mon = month,
	                .tm_mday = day,
	                .tm_hour = h,
	                .tm_min = m,
	                .tm_sec = sec};
	return (int64_t)timegm(&tm) - offset;
}

static int cmp_files(const void *a, const void *b)
{
	return strcmp(((const struct release_file *)a)->path,
	              ((const struct release_file *)b)->path);
}

/* Paths come from a signed file, but become URLs and are looked up by name: keep them plain. */
static bool plain_path(const char *p)
{
	if (!*p || *p == '/')
		return false;
	for (const char *c = p; *c; c++)
		if ((unsigned char)*c < 0x21 || *c == 0x7f || *c == '?' || *c == '#' || *c == '%')
			return false;
	for (const char *c = p; (c = strstr(c, "..")); c += 2)
		if ((c == p || c[-1] == '/') && (c[2] == '/' || c[2] == '\0'))
			return false;
	return true;
}

static int parse_sha256_list(const char *value, struct release *out, struct mosaic_error *err)
{
	size_t cap = 0, line = 0;
	if (*value == '\n')
		value++; /* the list starts on the line after "SHA256:" */
	for (const char *l = value; *l;) {
		const char *nl = strchrnul(l, '\n');
		_cleanup_free_ char *t = xstrndup(l, nl - l);
		l = *nl ? nl + 1 : nl;
		line++;
		char *words[4] = {0};
		size_t nw = 0;
		for (char *save = NULL, *w = strtok_r(t, " \t\r", &save); w;
		     w = strtok_r(NULL, " \t\r", &save)) {
			if (nw == 3) {
				nw++;
				break;
			}
			words[nw++] = w;
		}
		if (nw == 0)
			continue;
		if (nw != 3)
			return mosaic_errorf(err, -EINVAL,
			                     "SHA256 line %zu: expected 'digest size path'", line);
		for (char *c = words[0]; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		if (!is_sha256_hex(words[0]))
			return mosaic_errorf(err, -EINVAL, "SHA256 line %zu: '%.80s' is no SHA-256",
			                     line, words[0]);
		char *end;
		errno = 0;
		unsigned long long size = strtoull(words[1], &end, 10);
		if (errno || *end || !isdigit((unsigned char)words[1][0]))
			return mosaic_errorf(err, -EINVAL, "SHA256 line %zu: bad size '%.40s'",
			                     line, words[1]);
		if (!plain_path(words[2]))
			return mosaic_errorf(err, -EINVAL, "SHA256 line %zu: bad path '%.200s'",
			                     line, words[2]);
		if (out->n_files == cap) {
			cap = cap ? cap * 2 : 64;
			out->files = xrealloc(out->files, cap * sizeof(*out->files));
		}
		struct release_file *f = &out->files[out->n_files++];
		f->path = xstrdup(words[2]);
		memcpy(f->sha256, words[0], SHA256_HEX_LEN + 1);
		f->size = size;
	}
	if (out->n_files == 0)
		return 0;
	qsort_safe(out->files, out->n_files, sizeof(*out->files), cmp_files);
	for (size_t i = 1; i < out->n_files; i++)
		if (!strcmp(out->files[i - 1].path, out->files[i].path))
			return mosaic_errorf(err, -EINVAL, "SHA256 lists %s twice",
			                     out->files[i].path);
	return 0;
}

int release_parse(const char *text, size_t len, struct release *out, struct mosaic_error *err)
{
	struct deb822 p = {0};
	int r = deb822_parse(text, len, &p, err);
	if (r < 0)
		return r;
	struct release rel = {.date_time = -1, .valid_until_time = -1};
	const char *v;
	if ((v = deb822_get(&p, "Date"))) {
		rel.date = xstrdup(v);
		rel.date_time = release_date_parse(v);
	}
	if ((v = deb822_get(&p, "Valid-Until"))) {
		rel.valid_until = xstrdup(v);
		rel.valid_until_time = release_date_parse(v);
		if (rel.valid_until_time < 0)
			r = mosaic_errorf(err, -EINVAL, "Valid-Until '%.100s' is not a date", v);
	}
	rel.architectures = strv_split(deb822_get(&p, "Architectures"), " \t\n");
	rel.components = strv_split(deb822_get(&p, "Components"), " \t\n");
	v = deb822_get(&p, "Acquire-By-Hash");
	rel.acquire_by_hash = v && !strcasecmp(v, "yes");
	v = deb822_get(&p, "No-Support-for-Architecture-all");
	rel.no_support_arch_all = v && !strcmp(v, "Packages");
	v = deb822_get(&p, "SHA256");
	if (r >= 0 && !v)
		r = mosaic_errorf(err, -EINVAL, "no SHA256 list (older hashes are not trusted)");
	if (r >= 0)
		r = parse_sha256_list(v, &rel, err);
	deb822_clear(&p);
	if (r < 0) {
		release_clear(&rel);
		return r;
	}
	*out = rel;
	return 0;
}

const struct release_file *release_find(const struct release *r, const char *path)
{
	struct release_file key = {.path = (char *)path};
	if (!r->n_files)
		return NULL;
	return bsearch(&key, r->files, r->n_files, sizeof(key), cmp_files);
}

static bool has_component(const struct release *r, const char *comp)
{
	/* debian-security says "updates/main" and keeps the files under "main/". */
	for (char **c = r->components; *c; c++) {
		size_t l = strlen(*c), cl = strlen(comp);
		if (!strcmp(*c, comp) ||
		    (l > cl && (*c)[l - cl - 1] == '/' && !strcmp(*c + l - cl, comp)))
			return true;
	}
	return false;
}

static char *joined(char *const *v)
{
	size_t n = 1;
	for (char *const *p = v; *p; p++)
		n += strlen(*p) + 1;
	char *s = xmalloc(n), *o = s;
	for (char *const *p = v; *p; p++)
		o += sprintf(o, "%s%s", o == s ? "" : " ", *p);
	*o = '\0';
	return s;
}

int release_packages(const struct release *r, const char *comp, const char *arch,
                     const struct release_file **out, struct mosaic_error *err)
{
	static const char *const suffixes[] = {".xz", ".gz", ""};
	for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
		_cleanup_free_ char *path =
		    xasprintf("%s/binary-%s/Packages%s", comp, arch, suffixes[i]);
		const struct release_file *f = release_find(r, path);
		if (f) {
			*out = f;
			return 0;
		}
	}
	if (r->components[0] && !has_component(r, comp)) {
		_cleanup_free_ char *all = joined(r->components);
		return mosaic_errorf(
		    err, -ENOENT, "component '%s' is not in the Release (it has: %s)", comp, all);
	}
	if (r->architectures[0] && !strv_contains(r->architectures, arch)) {
		_cleanup_free_ char *all = joined(r->architectures);
		return mosaic_errorf(err, -ENOENT,
		                     "architecture '%s' is not in the Release (it has: %s)", arch,
		                     all);
	}
	return mosaic_errorf(err, -ENOENT, "the Release lists no %s/binary-%s/Packages index", comp,
	                     arch);
}

int release_check_valid_until(const struct release *r, int64_t now, struct mosaic_error *err)
{
	if (r->valid_until_time >= 0 && r->valid_until_time < now)
		return mosaic_errorf(
		    err, -EKEYEXPIRED,
		    "the Release expired on %s (Valid-Until); the mirror is out of "
		    "date, or set Acquire::Check-Valid-Until \"false\" as apt would",
		    r->valid_until);
	return 0;
}

char *release_fetch_path(const struct release *r, const struct release_file *f)
{
	if (!r->acquire_by_hash)
		return xstrdup(f->path);
	const char *slash = strrchr(f->path, '/');
	int dl = slash ? (int)(slash - f->path) : 0;
	return xasprintf("%.*s%sby-hash/SHA256/%s", dl, f->path, slash ? "/" : "", f->sha256);
}

/* ---- Packages -------------------------------------------------------------------------------- */

void deb_sets_clear(struct deb_sets *s)
{
	strv_free(s->essential, s->n_essential);
	strv_free(s->required, s->n_required);
	strv_free(s->important, s->n_important);
	*s = (struct deb_sets){0};
}

static void push(char ***v, size_t *n, const char *s, size_t len)
{
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	(*v)[(*n)++] = xstrndup(s, len);
}

/* What one stanza says beyond what libsolv keeps. */
struct stanza_sum {
	char *filename;
	char sha256[SHA256_HEX_LEN + 1];
	uint64_t size;
};

static int cmp_sums(const void *a, const void *b)
{
	return strcmp(((const struct stanza_sum *)a)->filename,
	              ((const struct stanza_sum *)b)->filename);
}

/* A field's value on its line: after "Name:" and blanks, without trailing blanks. */
static bool field(const char *line, size_t n, const char *name, const char **v, size_t *vlen)
{
	size_t nl = strlen(name);
	if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
		return false;
	const char *s = line + nl + 1, *e = line + n;
	while (s < e && (*s == ' ' || *s == '\t'))
		s++;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		e--;
	*v = s;
	*vlen = e - s;
	return true;
}

/* Walks the stanzas as libsolv splits them (at an empty line) and collects sums and sets. */
static void scan_packages(const char *text, size_t len, struct stanza_sum **sums, size_t *n_sums,
                          struct deb_sets *sets)
{
	const char *p = text, *end = text + len;
	size_t cap = 0;
	while (p < end) {
		const char *name = NULL, *file = NULL, *sha = NULL, *size = NULL;
		size_t name_len = 0, file_len = 0, sha_len = 0, size_len = 0;
		bool essential = false;
		int priority = 0; /* 1 required, 2 important */
		while (p < end) {
			const char *nl = memchr(p, '\n', end - p);
			const char *eol = nl ? nl : end;
			size_t n = eol - p;
			const char *v;
			size_t vl;
			if (n == 0) {
				p = eol + 1;
				break;
			}
			if (field(p, n, "Package", &v, &vl))
				name = v, name_len = vl;
			else if (field(p, n, "Filename", &v, &vl))
				file = v, file_len = vl;
			else if (field(p, n, "SHA256", &v, &vl))
				sha = v, sha_len = vl;
			else if (field(p, n, "Size", &v, &vl))
				size = v, size_len = vl;
			else if (field(p, n, "Essential", &v, &vl))
				essential = vl == 3 && !strncasecmp(v, "yes", 3);
			else if (field(p, n, "Priority", &v, &vl))
				priority = vl == 8 && !strncmp(v, "required", 8)    ? 1
				           : vl == 9 && !strncmp(v, "important", 9) ? 2
				                                                    : 0;
			p = nl ? nl + 1 : end;
		}
		if (!name || !name_len || memchr(name, '\0', name_len))
			continue;
		if (essential)
			push(&sets->essential, &sets->n_essential, name, name_len);
		if (priority == 1)
			push(&sets->required, &sets->n_required, name, name_len);
		if (priority == 2)
			push(&sets->important, &sets->n_important, name, name_len);
		if (!file || !file_len || !sha || sha_len != SHA256_HEX_LEN ||
		    memchr(file, '\0', file_len))
			continue;
		struct stanza_sum s = {0};
		for (size_t i = 0; i < SHA256_HEX_LEN; i++)
			s.sha256[i] = (char)tolower((unsigned char)sha[i]);
		if (!is_sha256_hex(s.sha256))
			continue;
		if (size) {
			_cleanup_free_ char *t = xstrndup(size, size_len);
			s.size = strtoull(t, NULL, 10);
		}
		s.filename = xstrndup(file, file_len);
		if (*n_sums == cap) {
			cap = cap ? cap * 2 : 1024;
			*sums = xrealloc(*sums, cap * sizeof(**sums));
		}
		(*sums)[(*n_sums)++] = s;
	}
}

/* The text without its SHA* fields (and their continuation lines). libsolv 0.7.23 copies a
 * SHA384 or SHA512 value into a buffer sized for SHA-256 when the stanza has no SHA256 field
 * (found by fuzz-deb-metadata); the SHA-256 is set from scan_packages anyway. */
static char *without_sha_fields(const char *text, size_t len, size_t *out_len)
{
	static const char *const names[] = {"sha1", "sha224", "sha256", "sha384", "sha512"};
	char *out = xmalloc(len + 1);
	size_t o = 0;
	bool dropping = false;
	for (const char *p = text, *end = text + len; p < end;) {
		const char *nl = memchr(p, '\n', end - p);
		const char *next = nl ? nl + 1 : end;
		if (*p != ' ' && *p != '\t') {
			const char *colon = memchr(p, ':', next - p);
			dropping = false;
			for (size_t i = 0; colon && i < ARRAY_SIZE(names); i++)
				dropping |= (size_t)(colon - p) == strlen(names[i]) &&
				            !strncasecmp(p, names[i], colon - p);
		}
		/* An empty line ends the stanza even after a dropped field. */
		if (!dropping || p == nl) {
			memcpy(out + o, p, next - p);
			o += next - p;
		}
		p = next;
	}
	out[o] = '\0';
	*out_len = o;
	return out;
}

int deb_packages_add(Repo *repo, const char *text, size_t len, struct deb_sets *sets,
                     const char *what, struct mosaic_error *err)
{
	Pool *pool = repo->pool;
	Id start = repo->end;
	if (len == 0)
		return 0;
	/* libsolv turns NUL bytes into line breaks, which would hide fields from the filter below;
	 * no Packages file has one. */
	const char *nul = memchr(text, '\0', len);
	if (nul)
		return mosaic_errorf(err, -EBADMSG, "%s: NUL byte at offset %zu", what,
		                     (size_t)(nul - text));
	size_t plen;
	_cleanup_free_ char *plain = without_sha_fields(text, len, &plen);
	FILE *f = plen ? fmemopen(plain, plen, "r") : NULL;
	if (plen && !f)
		return mosaic_errorf(err, -errno, "%s: %m", what);
	int r = f ? repo_add_debpackages(repo, f, 0) : 0;
	if (f)
		fclose(f);
	if (r != 0)
		return mosaic_errorf(err, -EBADMSG, "%s: %s", what, pool_errstr(pool));

	struct stanza_sum *sums = NULL;
	size_t n_sums = 0;
	scan_packages(text, len, &sums, &n_sums, sets);
	qsort_safe(sums, n_sums, sizeof(*sums), cmp_sums);

	Repodata *data = repo_last_repodata(repo);
	r = 0;
	for (Id p = start; p < repo->end && r >= 0; p++) {
		Solvable *s = pool->solvables + p;
		if (s->repo != repo)
			continue;
		unsigned medianr;
		const char *loc = solvable_get_location(s, &medianr);
		struct stanza_sum key = {.filename = (char *)loc}, *found = NULL;
		if (loc && n_sums)
			found = bsearch(&key, sums, n_sums, sizeof(key), cmp_sums);
		if (!loc || !*loc)
			r = mosaic_errorf(err, -EBADMSG, "%s: package %s has no Filename", what,
			                  pool_solvable2str(pool, s));
		else if (!found)
			r = mosaic_errorf(err, -EBADMSG,
			                  "%s: package %s has no SHA256 checksum; only SHA-256 is "
			                  "accepted",
			                  what, pool_solvable2str(pool, s));
		else {
			/* Two stanzas for one file must agree on what it is. */
			for (struct stanza_sum *q = found;
			     q > sums && !strcmp(q[-1].filename, loc);)
				found = --q;
			for (struct stanza_sum *q = found + 1;
			     q < sums + n_sums && !strcmp(q->filename, loc); q++)
				if (strcmp(q->sha256, found->sha256) != 0) {
					r = mosaic_errorf(
					    err, -EBADMSG,
					    "%s: two stanzas for %s disagree on its SHA256", what,
					    loc);
					break;
				}
			if (r >= 0) {
				repodata_set_checksum(data, p, SOLVABLE_CHECKSUM,
				                      REPOKEY_TYPE_SHA256, found->sha256);
				if (found->size)
					repodata_set_num(data, p, SOLVABLE_DOWNLOADSIZE,
					                 found->size);
			}
		}
	}
	repodata_internalize(data);
	for (size_t i = 0; i < n_sums; i++)
		free(sums[i].filename);
	free(sums);
	return r;
}
