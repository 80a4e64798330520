/* The dpkg database of a composition: status, available, info/format and the trigger interest
 * files that `dpkg --unpack` of the same packages would leave, made into a fragment. */
#include "common/deb822.h"
#include "compose/compose.h"
#include "fragments/fragment.h"

#include <fcntl.h>
#include <gcrypt.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* 2: conffile hashes recorded, no arch file for a native-only set, no statoverride. */
#define DPKG_DB_VERSION 2
#define MD5_HEX_LEN     32

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* ---- writing paragraphs as dpkg does (lib/dpkg/parse.c's fieldinfos, dump.c) ---------------- */

enum fkind {
	F_TEXT,      /* as it is */
	F_NAME,      /* lower case, as dpkg keeps package names */
	F_BOOL,      /* only "yes" is written */
	F_STATUS,    /* made here */
	F_MULTIARCH, /* "no" is not written */
	F_VERSION,   /* a zero epoch is not written */
	F_DEPS,      /* parsed and written back in canonical form */
	F_CONFFILES, /* made here from the conffiles control file */
	F_AVAILABLE, /* only in available */
	F_DROP,      /* dpkg's own bookkeeping: never taken from a package */
};

/* dpkg 1.21's field order: known fields in this order, then the others as the package has them. */
static const struct {
	const char *name;
	enum fkind kind;
} fields[] = {
    {"Package", F_NAME},
    {"Essential", F_BOOL},
    {"Protected", F_BOOL},
    {"Status", F_STATUS},
    {"Priority", F_TEXT},
    {"Section", F_TEXT},
    {"Installed-Size", F_TEXT},
    {"Origin", F_TEXT},
    {"Maintainer", F_TEXT},
    {"Bugs", F_TEXT},
    {"Architecture", F_TEXT},
    {"Multi-Arch", F_MULTIARCH},
    {"Source", F_TEXT},
    {"Version", F_VERSION},
    {"Config-Version", F_DROP},
    {"Replaces", F_DEPS},
    {"Provides", F_DEPS},
    {"Depends", F_DEPS},
    {"Pre-Depends", F_DEPS},
    {"Recommends", F_DEPS},
    {"Suggests", F_DEPS},
    {"Breaks", F_DEPS},
    {"Conflicts", F_DEPS},
    {"Enhances", F_DEPS},
    {"Conffiles", F_CONFFILES},
    {"Filename", F_AVAILABLE},
    {"Size", F_AVAILABLE},
    {"MD5sum", F_AVAILABLE},
    {"MSDOS-Filename", F_AVAILABLE},
    {"Description", F_TEXT},
    {"Triggers-Pending", F_DROP},
    {"Triggers-Awaited", F_DROP},
};

/* dpkg's old names for known fields. */
static const struct {
	const char *alias, *name;
} nicknames[] = {{"Recommended", "Recommends"}, {"Optional", "Suggests"}, {"Class", "Priority"}};

static int field_index(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(nicknames); i++)
		if (strcasecmp(name, nicknames[i].alias) == 0)
			name = nicknames[i].name;
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		if (strcasecmp(name, fields[i].name) == 0)
			return (int)i;
	return -1;
}

/* "a(>=1),b|c ,\n d" → "a (>= 1), b | c, d"; the obsolete "<" and ">" mean "<=" and ">=". */
static void write_deps(FILE *f, const char *v)
{
	bool first_rel = true;
	while (*v) {
		const char *comma = strchr(v, ',');
		size_t rlen = comma ? (size_t)(comma - v) : strlen(v);
		_cleanup_free_ char *rel = xstrndup(v, rlen);
		v += rlen + (comma ? 1 : 0);
		bool first_alt = true;
		char *save = NULL;
		for (char *alt = strtok_r(rel, "|", &save); alt; alt = strtok_r(NULL, "|", &save)) {
			while (is_space(*alt))
				alt++;
			size_t nl = 0;
			while (alt[nl] && !is_space(alt[nl]) && !strchr("([<", alt[nl]))
				nl++;
			if (nl == 0)
				continue;
			fputs(first_alt ? (first_rel ? "" : ", ") : " | ", f);
			first_alt = false;
			fwrite(alt, 1, nl, f);
			char *rest = alt + nl;
			while (is_space(*rest))
				rest++;
			char *close = *rest == '(' ? strchr(rest, ')') : NULL;
			if (close) {
				char *op = rest + 1;
				while (is_space(*op))
					op++;
				size_t ol = 0;
				while (op[ol] && strchr("<>=", op[ol]))
					ol++;
				char *ver = op + ol, *vend = close;
				while (ver < vend && is_space(*ver))
					ver++;
				while (vend > ver && is_space(vend[-1]))
					vend--;
				const char *canon = ol == 1 && *op == '<'   ? "<="
				                    : ol == 1 && *op == '>' ? ">="
				                                            : NULL;
				fprintf(f, " (%.*s %.*s)", canon ? 2 : (int)ol, canon ? canon : op,
				        (int)(vend - ver), ver);
				rest = close + 1;
				while (is_space(*rest))
					rest++;
			}
			/* Anything else (arch or profile restrictions) as it is. */
			size_t tl = strlen(rest);
			while (tl && is_space(rest[tl - 1]))
				tl--;
			if (tl)
				fprintf(f, " %.*s", (int)tl, rest);
		}
		if (!first_alt)
			first_rel = false;
	}
}

/* A line of the conffiles text may end in a tab and the MD5 of the file the package ships
 * (compose_dpkg_fragment adds it): split it off into hash. */
static void conffile_hash(char *line, char *e, char **end, const char **hash)
{
	*hash = NULL;
	*end = e;
	char *tab = memrchr(line, '\t', e - line);
	if (!tab || e - tab - 1 != MD5_HEX_LEN ||
	    strspn(tab + 1, "0123456789abcdef") != MD5_HEX_LEN)
		return;
	*hash = tab + 1;
	*tab = 0;
	*end = tab;
}

static void write_conffiles(FILE *f, const char *conffiles)
{
	bool any = false;
	for (const char *s = conffiles; s && *s;) {
		const char *nl = strchr(s, '\n');
		size_t n = nl ? (size_t)(nl - s) : strlen(s);
		_cleanup_free_ char *line = xstrndup(s, n);
		s += n + (nl ? 1 : 0);
		char *l = line, *e = line + n;
		const char *hash;
		conffile_hash(line, e, &e, &hash);
		while (is_space(*l))
			l++;
		while (e > l && is_space(e[-1]))
			*--e = 0;
		if (!*l)
			continue;
		/* Flags come first in the control file ("remove-on-upgrade /etc/x"), last here. */
		const char *flag = NULL;
		if (*l != '/') {
			char *sp = l;
			while (*sp && !is_space(*sp))
				sp++;
			if (*sp) {
				*sp++ = 0;
				while (is_space(*sp))
					sp++;
				flag = l;
				l = sp;
			}
		}
		if (!any)
			fputs("Conffiles:\n", f);
		any = true;
		/* dpkg --unpack records "newconffile" and leaves the file as PATH.dpkg-new, which
		 * dpkg --configure moves into place, recording its hash. Here the file is in place
		 * already, so configure would keep "newconffile" for good (no .dpkg-new: nothing to
		 * do): record the hash that configure would have. */
		fprintf(f, " %s %s%s%s\n", l, hash ? hash : "newconffile", flag ? " " : "",
		        flag ? flag : "");
	}
}

static void write_paragraph(FILE *f, const struct deb822 *p, const char *conffiles, bool status)
{
	const char *slot[ARRAY_SIZE(fields)] = {0};
	for (size_t i = 0; i < p->n; i++) {
		int k = field_index(p->fields[i].name);
		if (k >= 0)
			slot[k] = p->fields[i].value;
	}
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		const char *v = slot[i], *name = fields[i].name;
		switch (fields[i].kind) {
		case F_STATUS:
			if (status)
				fputs("Status: install ok unpacked\n", f);
			continue;
		case F_CONFFILES:
			if (status)
				write_conffiles(f, conffiles);
			continue;
		case F_DROP:
			continue;
		case F_AVAILABLE:
			if (status)
				continue;
			break;
		default:
			break;
		}
		if (!v || !*v)
			continue;
		switch (fields[i].kind) {
		case F_NAME:
			fprintf(f, "%s: ", name);
			for (const char *c = v; *c; c++)
				fputc(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c, f);
			fputc('\n', f);
			break;
		case F_BOOL:
			if (strcasecmp(v, "yes") == 0)
				fprintf(f, "%s: yes\n", name);
			break;
		case F_MULTIARCH:
			if (strcasecmp(v, "no") != 0)
				fprintf(f, "%s: %s\n", name, v);
			break;
		case F_VERSION: {
			const char *colon = strchr(v, ':');
			bool zero = colon && colon > v && strspn(v, "0") == (size_t)(colon - v);
			fprintf(f, "%s: %s\n", name, zero ? colon + 1 : v);
			break;
		}
		case F_DEPS:
			fprintf(f, "%s: ", name);
			write_deps(f, v);
			fputc('\n', f);
			break;
		default:
			fprintf(f, "%s: %s\n", name, v);
		}
	}
	for (size_t i = 0; i < p->n; i++)
		if (field_index(p->fields[i].name) < 0)
			fprintf(f, "%s: %s\n", p->fields[i].name, p->fields[i].value);
	fputc('\n', f);
}

/* ---- the package set ------------------------------------------------------------------------ */

struct dpkg_pkg {
	struct deb822 para;
	char *name, *arch; /* name lower case */
	bool same;         /* Multi-Arch: same: dpkg names it name:arch */
	bool needs_arch;   /* dpkg's "nonambig" name carries the arch: same, or foreign */
	bool replaced;     /* a later package of the same name (and arch) takes its place */
	const struct compose_dpkg_package *in;
};

struct dpkg_set {
	struct dpkg_pkg *p;
	size_t n;
	struct dpkg_pkg **sorted; /* the live packages, in dpkg's order */
	size_t n_sorted;
};

static void dpkg_set_clear(struct dpkg_set *s)
{
	for (size_t i = 0; i < s->n; i++) {
		deb822_clear(&s->p[i].para);
		free(s->p[i].name);
		free(s->p[i].arch);
	}
	free(s->p);
	free(s->sorted);
	*s = (struct dpkg_set){0};
}

/* dpkg's pkg_sorter_by_nonambig_name_arch: by name, then the one without an arch qualifier
 * first, then by architecture. */
static int pkg_cmp(const void *a, const void *b)
{
	const struct dpkg_pkg *x = *(struct dpkg_pkg *const *)a, *y = *(struct dpkg_pkg *const *)b;
	int c = strcmp(x->name, y->name);
	if (c || strcmp(x->arch, y->arch) == 0)
		return c;
	if (x->needs_arch != y->needs_arch)
		return x->needs_arch ? 1 : -1;
	return strcmp(x->arch, y->arch);
}

static int dpkg_set_load(const struct compose_dpkg_package *pkgs, size_t n, const char *native,
                         struct dpkg_set *out, struct mosaic_error *err)
{
	struct dpkg_set s = {.p = xcalloc(n ? n : 1, sizeof(*s.p)), .n = n};
	for (size_t i = 0; i < n; i++) {
		struct dpkg_pkg *p = &s.p[i];
		p->in = &pkgs[i];
		/* Values as dpkg keeps them: a description's continuation lines verbatim. */
		int r = deb822_parse_mode(pkgs[i].control, pkgs[i].control_len, DEB822_VERBATIM,
		                          &p->para, err);
		const char *name = r < 0 ? NULL : deb822_get(&p->para, "Package");
		const char *arch = r < 0 ? NULL : deb822_get(&p->para, "Architecture");
		if (r == 0 &&
		    (!name || !arch || !*name || !*arch || !deb822_get(&p->para, "Version")))
			r = mosaic_errorf(err, -EINVAL, "lacks Package, Version or Architecture");
		if (r < 0) {
			mosaic_error_prefix(err, "%s: control",
			                    pkgs[i].what ? pkgs[i].what : "package");
			s.n = i + 1;
			dpkg_set_clear(&s);
			return r;
		}
		p->name = xstrdup(name);
		for (char *c = p->name; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c += 'a' - 'A';
		p->arch = xstrdup(arch);
		const char *ma = deb822_get(&p->para, "Multi-Arch");
		p->same = ma && strcasecmp(ma, "same") == 0;
		p->needs_arch = p->same || (strcmp(arch, "all") != 0 && strcmp(arch, native) != 0);
		/* As unpacking them in order would: a later instance replaces an earlier one. */
		for (size_t k = 0; k < i; k++)
			if (!s.p[k].replaced && strcmp(s.p[k].name, p->name) == 0 &&
			    (!(s.p[k].same && p->same) || strcmp(s.p[k].arch, p->arch) == 0))
				s.p[k].replaced = true;
	}
	s.sorted = xcalloc(n ? n : 1, sizeof(*s.sorted));
	for (size_t i = 0; i < n; i++)
		if (!s.p[i].replaced)
			s.sorted[s.n_sorted++] = &s.p[i];
	qsort_safe(s.sorted, s.n_sorted, sizeof(*s.sorted), pkg_cmp);
	*out = s;
	return 0;
}

static char *set_text(const struct dpkg_set *s, bool status)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		abort(); /* only fails without memory */
	for (size_t i = 0; i < s->n_sorted; i++)
		write_paragraph(f, &s->sorted[i]->para, s->sorted[i]->in->conffiles, status);
	fclose(f);
	return buf;
}

int compose_dpkg_text(const struct compose_dpkg_package *pkgs, size_t n, const char *native_arch,
                      bool status, char **out, struct mosaic_error *err)
{
	struct dpkg_set s;
	int r = dpkg_set_load(pkgs, n, native_arch, &s, err);
	if (r < 0)
		return r;
	*out = set_text(&s, status);
	dpkg_set_clear(&s);
	return 0;
}

/* ---- the tree ------------------------------------------------------------------------------- */

static int put_file(int dirfd, const char *path, const char *data, size_t len, int64_t mtime)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int r = write_all(fd, data, len);
	if (r < 0)
		return r;
	if (fchmod(fd, 0644) < 0)
		return -errno;
	struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
	return futimens(fd, ts) < 0 ? -errno : 0;
}

static int put_dir(int dirfd, const char *path)
{
	if (mkdirat(dirfd, path, 0755) < 0)
		return -errno;
	return fchmodat(dirfd, path, 0755, 0) < 0 ? -errno : 0;
}

/* A trigger interest file being collected: triggers/File or triggers/<name>. */
struct interest {
	char *name;
	char *buf;
	size_t len;
	FILE *f;
};

/* Each one allocated on its own: the memory stream keeps pointers to buf and len. */
static FILE *interest_file(struct interest ***v, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp((*v)[i]->name, name) == 0)
			return (*v)[i]->f;
	*v = xrealloc(*v, (*n + 1) * sizeof(**v));
	struct interest *it = (*v)[(*n)++] = xmalloc(sizeof(*it));
	*it = (struct interest){.name = xstrdup(name)};
	it->f = open_memstream(&it->buf, &it->len);
	if (!it->f)
		abort();
	return it->f;
}

/* The interests of each package's triggers control file, in unpack order, as dpkg records them:
 * "PATH PKG[/noawait]" in File, "PKG[/noawait]" in a file named after the trigger. */
static void collect_interests(const struct dpkg_set *s, struct interest ***v, size_t *nv)
{
	for (size_t i = 0; i < s->n; i++) {
		const struct dpkg_pkg *p = &s->p[i];
		if (p->replaced || !p->in->triggers)
			continue;
		_cleanup_free_ char *text = xstrdup(p->in->triggers);
		_cleanup_free_ char *who =
		    p->same ? xasprintf("%s:%s", p->name, p->arch) : xstrdup(p->name);
		char *save = NULL;
		for (char *line = strtok_r(text, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			char *save2 = NULL;
			const char *directive = strtok_r(line, " \t\r", &save2);
			const char *trig = directive ? strtok_r(NULL, " \t\r", &save2) : NULL;
			if (!trig || *directive == '#' || strncmp(directive, "interest", 8) != 0)
				continue;
			const char *opt =
			    strcmp(directive, "interest-noawait") == 0 ? "/noawait" : "";
			if (*trig == '/') {
				fprintf(interest_file(v, nv, "File"), "%s %s%s\n", trig, who, opt);
				continue;
			}
			/* A name that is no plain file name (or one of dpkg's own) cannot be one.
			 */
			if (strchr(trig, '/') || *trig == '.' || strcmp(trig, "File") == 0 ||
			    strcmp(trig, "Lock") == 0 || strcmp(trig, "Unincorp") == 0)
				continue;
			fprintf(interest_file(v, nv, trig), "%s%s\n", who, opt);
		}
	}
}

static int write_tree(int root, const struct dpkg_set *s, const char *native, int64_t mtime)
{
	static const char *const dirs[] = {"var",
	                                   "var/lib",
	                                   "var/lib/dpkg",
	                                   "var/lib/dpkg/info",
	                                   "var/lib/dpkg/updates",
	                                   "var/lib/dpkg/triggers"};
	int r = 0;
	for (size_t i = 0; i < ARRAY_SIZE(dirs) && r == 0; i++)
		r = put_dir(root, dirs[i]);
	if (r < 0)
		return r;

	_cleanup_free_ char *status = set_text(s, true), *available = set_text(s, false);
	/* The native architecture, then the foreign ones the packages use, as dpkg's arch file
	 * lists them after dpkg --add-architecture. Only dpkg --add-architecture writes that
	 * file: with native packages alone there is none (dpkg then knows the native one). */
	size_t na = 0;
	const char **archs = xcalloc(s->n + 1, sizeof(*archs));
	for (size_t i = 0; i < s->n; i++) {
		const char *a = s->p[i].arch;
		bool seen = strcmp(a, native) == 0 || strcmp(a, "all") == 0;
		for (size_t k = 0; k < na && !seen; k++)
			seen = strcmp(archs[k], a) == 0;
		if (!seen)
			archs[na++] = a;
	}
	qsort_safe(archs, na, sizeof(*archs), strcmp_ptr);
	char *arch_text = NULL;
	size_t arch_len = 0;
	FILE *af = open_memstream(&arch_text, &arch_len);
	if (!af)
		abort();
	fprintf(af, "%s\n", native);
	for (size_t i = 0; i < na; i++)
		fprintf(af, "%s\n", archs[i]);
	fclose(af);
	free(archs);

	const struct {
		const char *path, *data;
	} files[] = {
	    {"var/lib/dpkg/status", status},
	    {"var/lib/dpkg/available", available},
	    {"var/lib/dpkg/arch", na ? arch_text : NULL},
	    /* dpkg-divert's; dpkg-statoverride makes statoverride when first used */
	    {"var/lib/dpkg/diversions", ""},
	    /* dselect's access method, as debootstrap and mmdebstrap set it */
	    {"var/lib/dpkg/cmethopt", "apt apt\n"},
	    /* the multiarch layout of info/ ("pkg:arch.list" for Multi-Arch: same) */
	    {"var/lib/dpkg/info/format", "1\n"},
	    {"var/lib/dpkg/triggers/Unincorp", ""},
	};
	for (size_t i = 0; i < ARRAY_SIZE(files) && r == 0; i++)
		if (files[i].data)
			r = put_file(root, files[i].path, files[i].data, strlen(files[i].data),
			             mtime);
	free(arch_text);

	struct interest **iv = NULL;
	size_t ni = 0;
	collect_interests(s, &iv, &ni);
	for (size_t i = 0; i < ni; i++) {
		fclose(iv[i]->f);
		_cleanup_free_ char *p = xasprintf("var/lib/dpkg/triggers/%s", iv[i]->name);
		if (r == 0)
			r = put_file(root, p, iv[i]->buf, iv[i]->len, mtime);
		free(iv[i]->name);
		free(iv[i]->buf);
		free(iv[i]);
	}
	free(iv);

	/* Directories last: writing into them moved their times. */
	struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
	for (size_t i = ARRAY_SIZE(dirs); i-- > 0 && r == 0;)
		if (utimensat(root, dirs[i], ts, AT_SYMLINK_NOFOLLOW) < 0)
			r = -errno;
	if (r == 0 && futimens(root, ts) < 0)
		r = -errno;
	return r;
}

int compose_dpkg_tree(const struct compose_dpkg_package *pkgs, size_t n, const char *native_arch,
                      int64_t mtime, const char *root, struct mosaic_error *err)
{
	struct dpkg_set s;
	int r = dpkg_set_load(pkgs, n, native_arch, &s, err);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = fd < 0 ? -errno : write_tree(fd, &s, native_arch, mtime);
	dpkg_set_clear(&s);
	if (r < 0)
		return mosaic_errorf(err, r, "%s: writing the dpkg database: %s", root,
		                     strerror(-r));
	return 0;
}

/* ---- the fragment --------------------------------------------------------------------------- */

void compose_dpkg_key(const char *const *digests, size_t n, const char *native_arch,
                      char hex[SHA256_HEX_LEN + 1])
{
	_cleanup_free_ char *salt =
	    xasprintf("mosaic dpkg database v%d\n%s\n", DPKG_DB_VERSION, native_arch);
	compose_digests_key(salt, digests, n, hex);
}

/* Regular files of an image by path (no leading slash), found in one walk. */
struct image_find {
	char **want;
	size_t n;
	uint64_t *inode, *size;
	bool *found;
};

static int find_visit(void *ctx, const struct fragment_entry *e)
{
	struct image_find *f = ctx;
	for (size_t i = 0; i < f->n; i++)
		if (S_ISREG(e->mode) && f->want[i] && strcmp(e->path, f->want[i]) == 0) {
			f->inode[i] = e->inode_id;
			f->size[i] = e->size;
			f->found[i] = true;
		}
	return 0;
}

static void image_find_init(struct image_find *f, char **want, size_t n)
{
	*f = (struct image_find){
	    .want = want,
	    .n = n,
	    .inode = xcalloc(n + 1, sizeof(*f->inode)),
	    .size = xcalloc(n + 1, sizeof(*f->size)),
	    .found = xcalloc(n + 1, sizeof(*f->found)),
	};
}

static void image_find_clear(struct image_find *f)
{
	free(f->inode);
	free(f->size);
	free(f->found);
}

/* Feeds the file's content to h (an MD5 context) when h is given, else returns it in *out. */
static int read_image_file(struct fragment_image *im, const char *image, const char *path,
                           uint64_t inode, uint64_t size, gcry_md_hd_t h, char **out,
                           struct mosaic_error *err)
{
	if (!h && size > (1 << 24))
		return mosaic_errorf(err, -EFBIG, "%s: %s is too large", image, path);
	char *buf = xmalloc(h ? 65536 : size + 1);
	uint64_t got = 0;
	while (got < size) {
		size_t want = h ? (size - got < 65536 ? size - got : 65536) : size - got;
		ssize_t k = fragment_image_read(im, inode, got, h ? buf : buf + got, want);
		if (k <= 0) {
			free(buf);
			return mosaic_errorf(err, k < 0 ? (int)k : -EIO, "%s: reading %s", image,
			                     path);
		}
		if (h)
			gcry_md_write(h, buf, k);
		got += k;
	}
	if (h) {
		free(buf);
		return 0;
	}
	buf[got] = 0;
	*out = buf;
	return 0;
}

/* The path of a conffiles line ("[flags] /path"), or NULL. */
static char *conffile_path(const char *line, size_t n)
{
	const char *slash = memchr(line, '/', n);
	if (!slash)
		return NULL;
	size_t len = n - (slash - line);
	while (len && is_space(slash[len - 1]))
		len--;
	return len > 1 ? xstrndup(slash + 1, len - 1) : NULL;
}

/* The conffiles text with each conffile's MD5 (of what the package ships) after a tab, where
 * the fragment holds the file (write_conffiles records it then). */
static int hash_conffiles(const char *image, struct fragment_image *im, const char *conffiles,
                          char **out, struct mosaic_error *err)
{
	size_t n = 0;
	for (const char *c = conffiles; *c; c++)
		n += *c == '\n';
	n++;
	char **paths = xcalloc(n, sizeof(*paths));
	size_t k = 0;
	for (const char *s = conffiles; *s;) {
		size_t len = strcspn(s, "\n");
		paths[k++] = conffile_path(s, len);
		s += len + (s[len] ? 1 : 0);
	}
	struct image_find f;
	image_find_init(&f, paths, k);
	int r = fragment_walk(image, find_visit, &f, err);
	char *text = NULL;
	size_t text_len = 0;
	FILE *o = open_memstream(&text, &text_len);
	if (!o)
		abort();
	size_t i = 0;
	for (const char *s = conffiles; *s && r == 0; i++) {
		size_t len = strcspn(s, "\n");
		fwrite(s, 1, len, o);
		if (f.found[i]) {
			gcry_md_hd_t h;
			if (gcry_md_open(&h, GCRY_MD_MD5, 0) != 0)
				abort(); /* only fails without memory */
			r = read_image_file(im, image, paths[i], f.inode[i], f.size[i], h, NULL,
			                    err);
			const unsigned char *d = gcry_md_read(h, GCRY_MD_MD5);
			fputc('\t', o);
			for (int b = 0; b < 16; b++)
				fprintf(o, "%02x", d[b]);
			gcry_md_close(h);
		}
		fputc('\n', o);
		s += len + (s[len] ? 1 : 0);
	}
	fclose(o);
	image_find_clear(&f);
	for (size_t j = 0; j < k; j++)
		free(paths[j]);
	free(paths);
	if (r < 0) {
		free(text);
		return r;
	}
	*out = text;
	return 0;
}

/* The conffiles and triggers control files a .deb fragment carries in var/lib/dpkg/info/, the
 * conffiles with their hashes (hash_conffiles). */
static int read_info_files(const char *image, const char *info_name, char **conffiles,
                           char **triggers, struct mosaic_error *err)
{
	_cleanup_free_ char *c = xasprintf("var/lib/dpkg/info/%s.conffiles", info_name);
	_cleanup_free_ char *t = xasprintf("var/lib/dpkg/info/%s.triggers", info_name);
	char *want[] = {c, t};
	struct image_find f;
	image_find_init(&f, want, 2);
	int r = fragment_walk(image, find_visit, &f, err);
	struct fragment_image *im = NULL;
	if (r == 0 && (f.found[0] || f.found[1]))
		r = fragment_image_open(image, &im, err);
	_cleanup_free_ char *plain = NULL;
	if (r == 0 && f.found[0])
		r = read_image_file(im, image, c, f.inode[0], f.size[0], NULL, &plain, err);
	if (r == 0 && f.found[1])
		r = read_image_file(im, image, t, f.inode[1], f.size[1], NULL, triggers, err);
	if (r == 0 && plain)
		r = hash_conffiles(image, im, plain, conffiles, err);
	if (im)
		fragment_image_close(im);
	image_find_clear(&f);
	return r;
}

struct dpkg_tree {
	const struct compose_dpkg_package *pkgs;
	size_t n;
	const char *native;
	int64_t epoch;
};

static int fill_tree(const char *root, void *ctx, struct mosaic_error *err)
{
	const struct dpkg_tree *t = ctx;
	return compose_dpkg_tree(t->pkgs, t->n, t->native, t->epoch, root, err);
}

int compose_dpkg_fragment(struct store *s, struct keyring *k, const char *const *digests, size_t n,
                          const char *native_arch, const char *sign_key,
                          char digest[SHA256_HEX_LEN + 1], bool *made, struct mosaic_error *err)
{
	char key[SHA256_HEX_LEN + 1];
	compose_dpkg_key(digests, n, native_arch, key);
	if (made)
		*made = false;
	if (compose_generated_find(s, "dpkg-database", key, digest))
		return 0;

	/* common/hash.c initializes libgcrypt (once, on first use), which the MD5s of the
	 * conffiles need before gcry_md_open. */
	char none[SHA256_HEX_LEN + 1];
	sha256_buffer("", 0, none);

	struct compose_dpkg_package *pkgs = xcalloc(n ? n : 1, sizeof(*pkgs));
	struct fragment_descriptor *descs = xcalloc(n ? n : 1, sizeof(*descs));
	char **conffiles = xcalloc(n ? n : 1, sizeof(char *));
	char **triggers = xcalloc(n ? n : 1, sizeof(char *));
	size_t np = 0;
	int64_t epoch = 0;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		struct fragment_descriptor *d = &descs[i];
		_cleanup_free_ char *image = store_object_path(s, digests[i], ".sqfs");
		r = compose_read_descriptor(s, k, digests[i], d, err);
		if (r < 0)
			break;
		if (d->created > epoch)
			epoch = d->created;
		json_object *deb, *control;
		if (!json_object_object_get_ex(d->json, "deb", &deb) ||
		    !json_object_object_get_ex(deb, "control", &control) ||
		    !json_object_is_type(control, json_type_string))
			continue;
		struct compose_dpkg_package *p = &pkgs[np];
		p->control = json_object_get_string(control);
		p->control_len = json_object_get_string_len(control);
		p->what = d->name;
		/* The info files are named as fragments/ names them: "pkg:arch" for Multi-Arch:
		 * same, else "pkg". */
		json_object *ma = NULL, *arch = NULL, *name = NULL;
		json_object_object_get_ex(deb, "Multi-Arch", &ma);
		json_object_object_get_ex(deb, "Architecture", &arch);
		json_object_object_get_ex(deb, "Package", &name);
		const char *pkg = name ? json_object_get_string(name) : d->name;
		_cleanup_free_ char *info =
		    ma && arch && strcasecmp(json_object_get_string(ma), "same") == 0
		        ? xasprintf("%s:%s", pkg, json_object_get_string(arch))
		        : xstrdup(pkg);
		r = read_info_files(image, info, &conffiles[np], &triggers[np], err);
		p->conffiles = conffiles[np];
		p->triggers = triggers[np];
		np++;
	}
	if (r == 0) {
		struct dpkg_tree t = {pkgs, np, native_arch, epoch};
		const struct compose_generated g = {
		    .name = "dpkg-database",
		    .arch = native_arch,
		    .kind = FRAGMENT_CONFIG,
		    .sign_key = sign_key,
		    .epoch = epoch,
		    .fill = fill_tree,
		    .ctx = &t,
		};
		r = compose_generated_make(s, &g, digest, err);
	}
	if (r == 0) {
		/* Only a cache: without it the next build makes the database again. */
		(void)compose_generated_remember("dpkg-database", key, digest, NULL);
		if (made)
			*made = true;
	}
	for (size_t i = 0; i < n; i++) {
		fragment_descriptor_clear(&descs[i]);
		free(conffiles[i]);
		free(triggers[i]);
	}
	free(conffiles);
	free(triggers);
	free(descs);
	free(pkgs);
	return r;
}
