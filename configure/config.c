/* configure/: config: and run: of a manifest, applied inside the chroot session with the
 * composition's own tools (useradd, systemctl, locale-gen), each step checked before it writes
 * so that a second run changes nothing, and run: steps recorded so that a re-run carries on. */
#include "configure/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

struct config_file {
	const char *path, *owner; /* borrowed from the model */
	char *data;
	size_t len;
	mode_t mode;
};

struct config_plan {
	json_object *model;        /* a reference of our own */
	json_object *config, *run; /* borrowed from model; may be NULL */
	struct config_file *files;
	size_t n_files;
	char (*keys)[SHA256_HEX_LEN + 1]; /* one per run step */
	size_t n_run;
};

/* ---- the model ------------------------------------------------------------------------------ */

static json_object *jget(json_object *o, const char *key)
{
	json_object *v;
	return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v = jget(o, key);
	return v ? json_object_get_string(v) : NULL;
}

static bool jbool(json_object *o, const char *key)
{
	json_object *v = jget(o, key);
	return v && json_object_get_boolean(v);
}

static size_t jlen(json_object *a)
{
	return a && json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;
}

static json_object *jidx(json_object *a, size_t i)
{
	return json_object_array_get_idx(a, i);
}

int config_plan_new(json_object *manifest, struct config_plan **out, struct mosaic_error *err)
{
	struct config_plan *p = xcalloc(1, sizeof(*p));
	p->model = manifest ? json_object_get(manifest) : NULL;
	p->config = jget(manifest, "config");
	p->run = jget(manifest, "run");
	json_object *files = jget(p->config, "files");
	p->files = xcalloc(jlen(files) + 1, sizeof(*p->files));
	for (size_t i = 0; i < jlen(files); i++) {
		json_object *f = jidx(files, i);
		struct config_file *cf = &p->files[p->n_files++];
		cf->path = jstr(f, "path");
		cf->owner = jstr(f, "owner");
		const char *mode = jstr(f, "mode");
		cf->mode = mode ? (mode_t)strtoul(mode, NULL, 8) : 0644;
		const char *content = jstr(f, "content"), *source = jstr(f, "source");
		if (content) {
			cf->data = xstrdup(content);
			cf->len = strlen(content);
		} else if (source) {
			int r = read_file(source, 256 << 20, &cf->data, &cf->len);
			if (r < 0) {
				config_plan_free(p);
				return mosaic_errorf(err, r, "config.files %s: source %s: %s",
				                     cf->path, source, strerror(-r));
			}
		}
	}
	p->n_run = jlen(p->run);
	p->keys = xcalloc(p->n_run + 1, sizeof(*p->keys));
	for (size_t i = 0; i < p->n_run; i++)
		config_run_key(i ? p->keys[i - 1] : "", jstr(jidx(p->run, i), "command"),
		               p->keys[i]);
	*out = p;
	return 0;
}

void config_plan_free(struct config_plan *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_files; i++)
		free(p->files[i].data);
	free(p->files);
	free(p->keys);
	json_object_put(p->model);
	free(p);
}

bool config_plan_empty(const struct config_plan *p)
{
	return (!p->config || json_object_object_length(p->config) == 0) && p->n_run == 0;
}

void config_run_key(const char *prev, const char *command, char out[SHA256_HEX_LEN + 1])
{
	struct sha256 *h = sha256_new();
	sha256_update(h, "mosaic-run-1\n", 13);
	sha256_update(h, prev, strlen(prev));
	sha256_update(h, "\n", 1);
	sha256_update(h, command, strlen(command));
	sha256_final(h, out);
}

/* ---- passwd, group, hosts ----------------------------------------------------------------- */

char *config_db_field(const char *text, const char *name, unsigned field)
{
	size_t nlen = strlen(name);
	for (const char *l = text; l && *l;) {
		const char *nl = strchrnul(l, '\n');
		if ((size_t)(nl - l) > nlen && strncmp(l, name, nlen) == 0 && l[nlen] == ':') {
			const char *f = l;
			for (unsigned i = 0; i < field; i++) {
				f = memchr(f, ':', (size_t)(nl - f));
				if (!f)
					return NULL;
				f++;
			}
			const char *end = memchr(f, ':', (size_t)(nl - f));
			return xstrndup(f, (size_t)((end ? end : nl) - f));
		}
		l = *nl ? nl + 1 : nl;
	}
	return NULL;
}

bool config_group_has_member(const char *group_text, const char *group, const char *user)
{
	_cleanup_free_ char *members = config_db_field(group_text, group, 3);
	_cleanup_strv_ char **v = strv_split(members, ",");
	for (char **m = v; m && *m; m++)
		if (strcmp(*m, user) == 0)
			return true;
	return false;
}

static bool parse_id(const char *s, unsigned long *id)
{
	char *end;
	if (!*s || strspn(s, "0123456789") != strlen(s))
		return false;
	errno = 0;
	*id = strtoul(s, &end, 10);
	return errno == 0 && *id < 4294967295UL;
}

/* A name or a number in a passwd- or group-format text: the number. */
static int lookup_id(const char *text, const char *what, const char *file, const char *name,
                     unsigned long *id, struct mosaic_error *err)
{
	if (parse_id(name, id))
		return 0;
	_cleanup_free_ char *f = config_db_field(text, name, 2);
	if (!f || !parse_id(f, id))
		return mosaic_errorf(err, -ENOENT, "no %s '%s' in the composition's %s", what, name,
		                     file);
	return 0;
}

int config_owner_resolve(const char *owner, const char *passwd, const char *group, uid_t *uid,
                         gid_t *gid, struct mosaic_error *err)
{
	const char *colon = strchr(owner, ':');
	_cleanup_free_ char *user =
	    colon ? xstrndup(owner, (size_t)(colon - owner)) : xstrdup(owner);
	unsigned long u, g;
	int r = lookup_id(passwd, "user", "/etc/passwd", user, &u, err);
	if (r < 0)
		goto fail;
	if (colon) {
		r = lookup_id(group, "group", "/etc/group", colon + 1, &g, err);
		if (r < 0)
			goto fail;
	} else {
		_cleanup_free_ char *f = config_db_field(passwd, user, 3);
		if (!f || !parse_id(f, &g)) {
			r = mosaic_errorf(
			    err, -ENOENT,
			    "user '%s' has no line in the composition's /etc/passwd to "
			    "take the group from; give 'user:group'",
			    user);
			goto fail;
		}
	}
	*uid = (uid_t)u;
	*gid = (gid_t)g;
	return 0;
fail:
	mosaic_error_prefix(err, "owner '%s'", owner);
	return r;
}

/* The names of a host line: "fqdn short" for a dotted name, as Debian's installer writes. */
static char *host_names(const char *hostname)
{
	const char *dot = strchr(hostname, '.');
	if (!dot)
		return xstrdup(hostname);
	return xasprintf("%s\t%.*s", hostname, (int)(dot - hostname), hostname);
}

static bool line_starts_with_addr(const char *l, const char *nl, const char *addr)
{
	size_t n = strlen(addr);
	return (size_t)(nl - l) > n && strncmp(l, addr, n) == 0 && (l[n] == ' ' || l[n] == '\t');
}

char *config_hosts_text(const char *hosts, const char *hostname)
{
	_cleanup_free_ char *names = host_names(hostname);
	if (!hosts)
		return xasprintf("127.0.0.1\tlocalhost\n"
		                 "127.0.1.1\t%s\n"
		                 "\n"
		                 "# The following lines are desirable for IPv6 capable hosts\n"
		                 "::1     localhost ip6-localhost ip6-loopback\n"
		                 "ff02::1 ip6-allnodes\n"
		                 "ff02::2 ip6-allrouters\n",
		                 names);
	_cleanup_free_ char *line = xasprintf("127.0.1.1\t%s\n", names);
	size_t cap = strlen(hosts) + strlen(line) + 2, len = 0;
	char *out = xmalloc(cap);
	bool placed = false;
	/* A first pass finds whether there is a 127.0.1.1 line to replace; without one the line
	 * goes after the first 127.0.0.1 line, or first. */
	bool has = false, has_local = false;
	for (const char *l = hosts; *l;) {
		const char *nl = strchrnul(l, '\n');
		has |= line_starts_with_addr(l, nl, "127.0.1.1");
		has_local |= line_starts_with_addr(l, nl, "127.0.0.1");
		l = *nl ? nl + 1 : nl;
	}
	if (!has && !has_local) {
		len += (size_t)sprintf(out, "%s", line);
		placed = true;
	}
	for (const char *l = hosts; *l;) {
		const char *nl = strchrnul(l, '\n');
		bool ours = line_starts_with_addr(l, nl, "127.0.1.1");
		if (!ours) {
			memcpy(out + len, l, (size_t)(nl - l));
			len += (size_t)(nl - l);
			out[len++] = '\n';
		}
		if ((ours || (!has && line_starts_with_addr(l, nl, "127.0.0.1"))) && !placed) {
			len += (size_t)sprintf(out + len, "%s", line);
			placed = true;
		}
		l = *nl ? nl + 1 : nl;
	}
	out[len] = 0;
	return out;
}

/* ---- files, checked before they are written ------------------------------------------------ */

/* A file of the composition; a missing one reads as empty. */
static int read_text(const char *path, char **out, struct mosaic_error *err)
{
	size_t len;
	int r = read_file(path, 64 << 20, out, &len);
	if (r == -ENOENT) {
		*out = xstrdup("");
		return 0;
	}
	if (r < 0)
		return mosaic_errorf(err, r, "configure: %s: %s", path, strerror(-r));
	return 0;
}

/* mkdir -p of path's parents, root-owned 0755 as packages make them. */
static int make_parents(const char *path, struct mosaic_error *err)
{
	_cleanup_free_ char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	int r = mkdir_p(dir, 0755);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: making %s: %s", dir, strerror(-r));
	return 0;
}

static int fix_attrs(const char *path, const struct stat *st, mode_t mode, uid_t uid, gid_t gid)
{
	if ((st->st_uid != uid || st->st_gid != gid) && lchown(path, uid, gid) < 0)
		return -errno;
	/* chown clears set-id bits, so the mode comes second. */
	if ((st->st_mode & 07777) != mode && chmod(path, mode) < 0)
		return -errno;
	return 0;
}

/* Makes path hold exactly data with mode and owner. Nothing is written when it already does;
 * otherwise a temporary file beside it, owned and moded before it is renamed into place. */
static int put_file(const struct configure_ctx *ctx, const char *path, const char *data, size_t len,
                    mode_t mode, uid_t uid, gid_t gid, struct mosaic_error *err)
{
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == len) {
		_cleanup_free_ char *cur = NULL;
		size_t cur_len;
		if (read_file(path, len, &cur, &cur_len) == 0 && cur_len == len &&
		    memcmp(cur, data, len) == 0) {
			int r = fix_attrs(path, &st, mode, uid, gid);
			if (r < 0)
				return mosaic_errorf(err, r, "configure: %s: %s", path,
				                     strerror(-r));
			return 0;
		}
	}
	int r = make_parents(path, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *tmp = xasprintf("%s.mosaic-XXXXXX", path);
	_cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return mosaic_errorf(err, -errno, "configure: writing %s: %m", path);
	r = write_all(fd, data, len);
	if (r == 0 && (fchown(fd, uid, gid) < 0 || fchmod(fd, mode) < 0 || fsync(fd) < 0))
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return mosaic_errorf(err, r, "configure: writing %s: %s", path, strerror(-r));
	}
	configure_say(ctx, CONFIGURE_INFO, NULL, "wrote %s", path);
	return 0;
}

/* A directory with mode and owner; fix: also correct them on one that exists. */
static int put_dir(const char *path, mode_t mode, uid_t uid, gid_t gid, bool fix,
                   struct mosaic_error *err)
{
	struct stat st;
	int r = 0;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		if (fix)
			r = fix_attrs(path, &st, mode, uid, gid);
	} else if ((r = make_parents(path, err)) < 0) {
		return r;
	} else if (mkdir(path, mode) < 0 || chown(path, uid, gid) < 0 || chmod(path, mode) < 0) {
		r = -errno;
	}
	if (r < 0)
		return mosaic_errorf(err, r, "configure: directory %s: %s", path, strerror(-r));
	return 0;
}

static int put_symlink(const struct configure_ctx *ctx, const char *path, const char *target,
                       struct mosaic_error *err)
{
	char cur[4096];
	ssize_t n = readlink(path, cur, sizeof(cur) - 1);
	if (n >= 0) {
		cur[n] = 0;
		if (strcmp(cur, target) == 0)
			return 0;
	}
	_cleanup_free_ char *tmp = xasprintf("%s.mosaic-new", path);
	unlink(tmp);
	if (symlink(target, tmp) < 0 || rename(tmp, path) < 0) {
		int r = -errno;
		unlink(tmp);
		return mosaic_errorf(err, r, "configure: linking %s: %s", path, strerror(-r));
	}
	configure_say(ctx, CONFIGURE_INFO, NULL, "linked %s -> %s", path, target);
	return 0;
}

/* ---- the composition's tools ------------------------------------------------------------- */

/* Runs argv in the chroot; out (if not NULL) gets its output, whatever its exit status.
 * Otherwise a failure is reported: -EIO. */
static int tool(const struct configure_ctx *ctx, char **argv, const char *input, bool quiet,
                char **out, struct mosaic_error *err)
{
	size_t n = 0;
	while (argv[n])
		n++;
	_cleanup_free_ char *name =
	    n > 1 ? xasprintf("%s %s", argv[0], argv[n - 1]) : xstrdup(argv[0]);
	const struct chroot_step s = {.name = name,
	                              .argv = argv,
	                              .envp = ctx->env,
	                              .timeout = ctx->o->timeout,
	                              .input = input,
	                              .quiet = quiet};
	struct chroot_result res;
	int r = chroot_run_step(ctx, "/", &s, &res);
	if (r < 0)
		return mosaic_errorf(err, r, "configure: '%s' could not start: %s", name,
		                     strerror(-r));
	if (out) {
		*out = res.tail;
		res.tail = NULL;
	} else if (res.timed_out || res.status != 0) {
		_cleanup_free_ char *what =
		    res.timed_out ? xasprintf("'%s' ran past --step-timeout %u s and was killed",
		                              name, ctx->o->timeout)
		                  : xasprintf("'%s' failed with exit status %d", name, res.status);
		configure_say(ctx, CONFIGURE_ERROR, name, "%s", what);
		configure_say_tail(ctx, name, res.tail, CONFIGURE_REPORT_LINES);
		r = mosaic_errorf(err, -EIO, "configure: %s", what);
	}
	free(res.tail);
	return r;
}

static void argv_push(char ***v, size_t *n, const char *s)
{
	*v = xrealloc(*v, (*n + 2) * sizeof(**v));
	(*v)[(*n)++] = xstrdup(s);
	(*v)[*n] = NULL;
}

static void argv_pushf(char ***v, size_t *n, const char *opt, unsigned long id)
{
	argv_push(v, n, opt);
	_cleanup_free_ char *s = xasprintf("%lu", id);
	argv_push(v, n, s);
}

/* ---- users and groups ------------------------------------------------------------------- */

static int apply_groups(const struct configure_ctx *ctx, json_object *groups,
                        struct mosaic_error *err)
{
	for (size_t i = 0; i < jlen(groups); i++) {
		json_object *g = jidx(groups, i), *gid = jget(g, "gid");
		const char *name = jstr(g, "name");
		_cleanup_free_ char *text = NULL;
		int r = read_text("/etc/group", &text, err);
		if (r < 0)
			return r;
		_cleanup_free_ char *cur = config_db_field(text, name, 2);
		_cleanup_strv_ char **argv = NULL;
		size_t n = 0;
		if (!cur) {
			argv_push(&argv, &n, "groupadd");
			if (gid)
				argv_pushf(&argv, &n, "--gid",
				           (unsigned long)json_object_get_int64(gid));
			if (jbool(g, "system"))
				argv_push(&argv, &n, "--system");
		} else if (gid &&
		           strtoul(cur, NULL, 10) != (unsigned long)json_object_get_int64(gid)) {
			argv_push(&argv, &n, "groupmod");
			argv_pushf(&argv, &n, "--gid", (unsigned long)json_object_get_int64(gid));
		} else {
			continue;
		}
		argv_push(&argv, &n, name);
		if ((r = tool(ctx, argv, NULL, false, NULL, err)) < 0)
			return r;
		configure_say(ctx, CONFIGURE_INFO, NULL, "group %s %s", name,
		              cur ? "changed" : "added");
	}
	return 0;
}

/* The supplementary groups a user asks for, sudo included; NULL-terminated. */
static char **user_groups(json_object *u)
{
	char **v = NULL;
	size_t n = 0;
	json_object *groups = jget(u, "groups");
	for (size_t i = 0; i < jlen(groups); i++)
		argv_push(&v, &n, json_object_get_string(jidx(groups, i)));
	if (jbool(u, "sudo"))
		argv_push(&v, &n, "sudo");
	if (!v)
		v = xcalloc(1, sizeof(*v));
	return v;
}

static char *strv_join_comma(char **v)
{
	size_t len = 1;
	for (char **s = v; *s; s++)
		len += strlen(*s) + 1;
	char *out = xcalloc(1, len), *p = out;
	for (char **s = v; *s; s++)
		p = stpcpy(stpcpy(p, s == v ? "" : ","), *s);
	return out;
}

/* Every group a user names must exist before useradd or usermod is asked for it. */
static int check_user_groups(json_object *users, struct mosaic_error *err)
{
	_cleanup_free_ char *group = NULL;
	int r = read_text("/etc/group", &group, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < jlen(users); i++) {
		json_object *u = jidx(users, i);
		_cleanup_strv_ char **groups = user_groups(u);
		for (char **g = groups; *g; g++) {
			_cleanup_free_ char *f = config_db_field(group, *g, 2);
			if (f)
				continue;
			if (strcmp(*g, "sudo") == 0 && jbool(u, "sudo"))
				return mosaic_errorf(err, -ENOENT,
				                     "configure: user %s: 'sudo: true' needs the "
				                     "group sudo, which the composition does not "
				                     "have (add the package sudo)",
				                     jstr(u, "name"));
			return mosaic_errorf(err, -ENOENT,
			                     "configure: user %s: no group '%s' in the "
			                     "composition (add it under config.groups)",
			                     jstr(u, "name"), *g);
		}
	}
	return 0;
}

static int add_or_change_user(const struct configure_ctx *ctx, json_object *u,
                              struct mosaic_error *err)
{
	const char *name = jstr(u, "name"), *shell = jstr(u, "shell"), *home = jstr(u, "home");
	json_object *uid = jget(u, "uid"), *gid = jget(u, "gid");
	_cleanup_free_ char *passwd = NULL, *group = NULL;
	int r;
	if ((r = read_text("/etc/passwd", &passwd, err)) < 0 ||
	    (r = read_text("/etc/group", &group, err)) < 0)
		return r;
	_cleanup_strv_ char **groups = user_groups(u);
	_cleanup_strv_ char **argv = NULL;
	size_t n = 0;
	_cleanup_free_ char *cur_uid = config_db_field(passwd, name, 2);
	if (!cur_uid) {
		argv_push(&argv, &n, "useradd");
		if (uid)
			argv_pushf(&argv, &n, "--uid", (unsigned long)json_object_get_int64(uid));
		if (gid)
			argv_pushf(&argv, &n, "--gid", (unsigned long)json_object_get_int64(gid));
		if (*groups) {
			_cleanup_free_ char *list = strv_join_comma(groups);
			argv_push(&argv, &n, "--groups");
			argv_push(&argv, &n, list);
		}
		if (shell) {
			argv_push(&argv, &n, "--shell");
			argv_push(&argv, &n, shell);
		}
		if (home) {
			argv_push(&argv, &n, "--home-dir");
			argv_push(&argv, &n, home);
		}
		if (jbool(u, "system"))
			argv_push(&argv, &n, "--system");
		/* A system account gets a home only when the manifest names one. */
		argv_push(&argv, &n,
		          !jbool(u, "system") || home ? "--create-home" : "--no-create-home");
	} else {
		_cleanup_free_ char *cur_gid = config_db_field(passwd, name, 3);
		_cleanup_free_ char *cur_home = config_db_field(passwd, name, 5);
		_cleanup_free_ char *cur_shell = config_db_field(passwd, name, 6);
		argv_push(&argv, &n, "usermod");
		if (uid && strtoul(cur_uid, NULL, 10) != (unsigned long)json_object_get_int64(uid))
			argv_pushf(&argv, &n, "--uid", (unsigned long)json_object_get_int64(uid));
		if (gid && (!cur_gid || strtoul(cur_gid, NULL, 10) !=
		                            (unsigned long)json_object_get_int64(gid)))
			argv_pushf(&argv, &n, "--gid", (unsigned long)json_object_get_int64(gid));
		if (shell && (!cur_shell || strcmp(cur_shell, shell))) {
			argv_push(&argv, &n, "--shell");
			argv_push(&argv, &n, shell);
		}
		if (home && (!cur_home || strcmp(cur_home, home))) {
			argv_push(&argv, &n, "--home");
			argv_push(&argv, &n, home);
		}
		/* Groups are added, never taken away: what packages gave the account stays. */
		char **missing = NULL;
		size_t m = 0;
		for (char **g = groups; *g; g++)
			if (!config_group_has_member(group, *g, name))
				argv_push(&missing, &m, *g);
		if (missing) {
			_cleanup_free_ char *list = strv_join_comma(missing);
			argv_push(&argv, &n, "--append");
			argv_push(&argv, &n, "--groups");
			argv_push(&argv, &n, list);
			strv_freev(missing);
		}
		if (n == 1)
			return 0;
	}
	argv_push(&argv, &n, name);
	if ((r = tool(ctx, argv, NULL, false, NULL, err)) < 0)
		return r;
	configure_say(ctx, CONFIGURE_INFO, NULL, "user %s %s", name, cur_uid ? "changed" : "added");
	return 0;
}

/* The hash goes through a file on the session's /run (a tmpfs that vanishes with it), never on a
 * command line. */
static int set_password(const struct configure_ctx *ctx, json_object *u, struct mosaic_error *err)
{
	const char *name = jstr(u, "name"), *password = jstr(u, "password");
	if (!password)
		return 0;
	_cleanup_free_ char *shadow = NULL;
	int r = read_text("/etc/shadow", &shadow, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *cur = config_db_field(shadow, name, 1);
	if (cur && strcmp(cur, password) == 0)
		return 0;
	static const char input[] = "/run/mosaic-chpasswd";
	_cleanup_free_ char *line = xasprintf("%s:%s\n", name, password);
	_cleanup_close_ int fd = open(input, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || (r = write_all(fd, line, strlen(line))) < 0)
		return mosaic_errorf(err, fd < 0 ? -errno : r, "configure: %s: %s", input,
		                     strerror(fd < 0 ? errno : -r));
	char *argv[] = {"chpasswd", "--encrypted", NULL};
	r = tool(ctx, argv, input, false, NULL, err);
	unlink(input);
	if (r == 0)
		configure_say(ctx, CONFIGURE_INFO, NULL, "user %s: password set", name);
	return r;
}

static int put_ssh_keys(const struct configure_ctx *ctx, json_object *u, struct mosaic_error *err)
{
	json_object *keys = jget(u, "ssh_keys");
	const char *name = jstr(u, "name");
	if (!keys)
		return 0;
	_cleanup_free_ char *passwd = NULL;
	int r = read_text("/etc/passwd", &passwd, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *home = config_db_field(passwd, name, 5);
	uid_t uid;
	gid_t gid;
	if (!home || !*home || config_owner_resolve(name, passwd, "", &uid, &gid, NULL) < 0)
		return mosaic_errorf(err, -ENOENT,
		                     "configure: user %s: no home directory for ssh_keys", name);
	size_t len = 0;
	for (size_t i = 0; i < jlen(keys); i++)
		len += strlen(json_object_get_string(jidx(keys, i))) + 1;
	_cleanup_free_ char *text = xcalloc(1, len + 1);
	char *p = text;
	for (size_t i = 0; i < jlen(keys); i++)
		p = stpcpy(stpcpy(p, json_object_get_string(jidx(keys, i))), "\n");
	_cleanup_free_ char *ssh = path_join(home, ".ssh");
	_cleanup_free_ char *auth = path_join(ssh, "authorized_keys");
	/* sshd's StrictModes refuses keys that others can write, or a directory they can enter. */
	if ((r = put_dir(home, 0755, uid, gid, false, err)) < 0 ||
	    (r = put_dir(ssh, 0700, uid, gid, true, err)) < 0 ||
	    (r = put_file(ctx, auth, text, len, 0600, uid, gid, err)) < 0)
		return r;
	return 0;
}

static int apply_users(const struct configure_ctx *ctx, json_object *users,
                       struct mosaic_error *err)
{
	int r = check_user_groups(users, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < jlen(users); i++) {
		json_object *u = jidx(users, i);
		/* Debian's base-passwd has the group sudo in every system; the command comes with
		 * the package. */
		if (jbool(u, "sudo") && access("/usr/bin/sudo", X_OK) < 0)
			configure_say(ctx, CONFIGURE_INFO, NULL,
			              "warning: user %s is in the group sudo, but the composition "
			              "has no sudo command (add the package sudo)",
			              jstr(u, "name"));
		if ((r = add_or_change_user(ctx, u, err)) < 0 ||
		    (r = set_password(ctx, u, err)) < 0 || (r = put_ssh_keys(ctx, u, err)) < 0)
			return r;
	}
	return 0;
}

/* ---- hostname, timezone, locale ------------------------------------------------------------ */

static int put_text(const struct configure_ctx *ctx, const char *path, const char *text,
                    struct mosaic_error *err)
{
	return put_file(ctx, path, text, strlen(text), 0644, 0, 0, err);
}

static int apply_hostname(const struct configure_ctx *ctx, const char *hostname,
                          struct mosaic_error *err)
{
	_cleanup_free_ char *line = xasprintf("%s\n", hostname);
	int r = put_text(ctx, "/etc/hostname", line, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *hosts = NULL;
	size_t len;
	r = read_file("/etc/hosts", 16 << 20, &hosts, &len);
	if (r < 0 && r != -ENOENT)
		return mosaic_errorf(err, r, "configure: /etc/hosts: %s", strerror(-r));
	_cleanup_free_ char *text = config_hosts_text(r < 0 ? NULL : hosts, hostname);
	return put_text(ctx, "/etc/hosts", text, err);
}

static bool zone_name_ok(const char *zone)
{
	if (!*zone || *zone == '/' ||
	    strspn(zone, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                 "0123456789/_+-.") != strlen(zone))
		return false;
	_cleanup_strv_ char **parts = strv_split(zone, "/");
	for (char **p = parts; *p; p++)
		if (strcmp(*p, ".") == 0 || strcmp(*p, "..") == 0)
			return false;
	return true;
}

static int apply_timezone(const struct configure_ctx *ctx, const char *zone,
                          struct mosaic_error *err)
{
	_cleanup_free_ char *file = path_join("/usr/share/zoneinfo", zone);
	struct stat st;
	if (!zone_name_ok(zone) || stat(file, &st) < 0 || !S_ISREG(st.st_mode))
		return mosaic_errorf(err, -ENOENT,
		                     "configure: timezone '%s' is not in the composition's "
		                     "/usr/share/zoneinfo (is tzdata installed? zones look like "
		                     "Europe/Berlin)",
		                     zone);
	/* What tzdata's own postinst and timedatectl make. */
	_cleanup_free_ char *line = xasprintf("%s\n", zone);
	int r;
	if ((r = put_symlink(ctx, "/etc/localtime", file, err)) < 0 ||
	    (r = put_text(ctx, "/etc/timezone", line, err)) < 0)
		return r;
	return 0;
}

/* ---- the state file ------------------------------------------------------------------------ */

static json_object *state_read(const struct configure_ctx *ctx, const char *path)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	json_object *s = NULL;
	if (read_file(path, 16 << 20, &text, &len) == 0) {
		s = json_tokener_parse(text);
		if (!s || !json_object_is_type(s, json_type_object) ||
		    json_object_get_int(jget(s, "version")) != 1) {
			configure_say(ctx, CONFIGURE_INFO, NULL,
			              "%s is not a state file this mosaic reads; every run: step "
			              "runs again",
			              path);
			json_object_put(s);
			s = NULL;
		}
	}
	if (!s) {
		s = json_object_new_object();
		json_object_object_add(s, "version", json_object_new_int(1));
	}
	if (!json_object_is_type(jget(s, "run"), json_type_array))
		json_object_object_add(s, "run", json_object_new_array());
	return s;
}

/* Written only when it changes, with nothing in it that differs between runs (no times). */
static int state_write(const char *path, json_object *s, struct mosaic_error *err)
{
	const char *text = json_object_to_json_string_ext(s, JSON_C_TO_STRING_PRETTY |
	                                                         JSON_C_TO_STRING_NOSLASHESCAPE);
	_cleanup_free_ char *line = xasprintf("%s\n", text);
	_cleanup_free_ char *cur = NULL;
	size_t len;
	if (read_file(path, 16 << 20, &cur, &len) == 0 && strcmp(cur, line) == 0)
		return 0;
	int r = make_parents(path, err);
	if (r == 0 && (r = write_file_atomic(path, line, strlen(line), 0644)) < 0)
		return mosaic_errorf(err, r, "configure: writing %s: %s", path, strerror(-r));
	return r;
}

/* ---- locale --------------------------------------------------------------------------------- */

static bool is_c_locale(const char *l)
{
	return strcmp(l, "C") == 0 || strcmp(l, "POSIX") == 0 || strcasecmp(l, "C.UTF-8") == 0 ||
	       strcasecmp(l, "C.utf8") == 0;
}

/* The line of /usr/share/i18n/SUPPORTED for locale ("en_US.UTF-8 UTF-8"); caller frees. */
static char *supported_line(const char *locale)
{
	_cleanup_free_ char *text = NULL;
	if (read_text("/usr/share/i18n/SUPPORTED", &text, NULL) < 0)
		return NULL;
	size_t n = strlen(locale);
	for (const char *l = text; *l;) {
		const char *nl = strchrnul(l, '\n');
		if ((size_t)(nl - l) > n && strncmp(l, locale, n) == 0 && l[n] == ' ')
			return xstrndup(l, (size_t)(nl - l));
		l = *nl ? nl + 1 : nl;
	}
	return NULL;
}

/* locale.gen with line enabled: uncommented where it is commented out, else appended. */
static char *locale_gen_text(const char *text, const char *line)
{
	size_t n = strlen(line), cap = strlen(text) + n + 3, len = 0;
	char *out = xmalloc(cap);
	bool found = false;
	for (const char *l = text; *l;) {
		const char *nl = strchrnul(l, '\n');
		const char *s = l;
		if (*s == '#') {
			s++;
			while (*s == ' ')
				s++;
		}
		if (!found && (size_t)(nl - s) == n && strncmp(s, line, n) == 0) {
			l = s;
			found = true;
		}
		memcpy(out + len, l, (size_t)(nl - l));
		len += (size_t)(nl - l);
		out[len++] = '\n';
		l = *nl ? nl + 1 : nl;
	}
	if (!found)
		len += (size_t)sprintf(out + len, "%s\n", line);
	out[len] = 0;
	return out;
}

static int apply_locale(const struct configure_ctx *ctx, const char *locale, json_object *state,
                        struct mosaic_error *err)
{
	_cleanup_free_ char *lang = xasprintf("LANG=%s\n", locale);
	int r = put_text(ctx, "/etc/default/locale", lang, err);
	if (r < 0)
		return r;
	if (is_c_locale(locale))
		return 0; /* built into glibc (C.UTF-8 since 2.35) */
	if (access("/usr/sbin/locale-gen", X_OK) < 0) {
		configure_say(ctx, CONFIGURE_INFO, NULL,
		              "warning: locale %s: the composition has no locale-gen (package "
		              "locales) to generate it; only /etc/default/locale is set",
		              locale);
		return 0;
	}
	_cleanup_free_ char *line = supported_line(locale);
	if (!line)
		return mosaic_errorf(err, -ENOENT,
		                     "configure: locale '%s' is not in the composition's "
		                     "/usr/share/i18n/SUPPORTED",
		                     locale);
	_cleanup_free_ char *gen = NULL;
	if ((r = read_text("/etc/locale.gen", &gen, err)) < 0)
		return r;
	_cleanup_free_ char *want = locale_gen_text(gen, line);
	if ((r = put_text(ctx, "/etc/locale.gen", want, err)) < 0)
		return r;
	/* locale-gen rebuilds the whole archive, so it runs only when locale.gen changed since it
	 * last ran here. */
	char key[SHA256_HEX_LEN + 1];
	sha256_buffer(want, strlen(want), key);
	const char *done = jstr(state, "locale_gen");
	if (done && strcmp(done, key) == 0 && access("/usr/lib/locale/locale-archive", F_OK) == 0)
		return 0;
	char *argv[] = {"locale-gen", NULL};
	if ((r = tool(ctx, argv, NULL, false, NULL, err)) < 0)
		return r;
	json_object_object_add(state, "locale_gen", json_object_new_string(key));
	return state_write("/" CONFIG_STATE_PATH, state, err);
}

/* ---- files, services, kernel command line ------------------------------------------------ */

static int apply_files(const struct configure_ctx *ctx, const struct config_plan *p,
                       struct mosaic_error *err)
{
	int r;
	for (size_t i = 0; i < p->n_files; i++) {
		const struct config_file *f = &p->files[i];
		uid_t uid = 0;
		gid_t gid = 0;
		if (f->owner) {
			_cleanup_free_ char *passwd = NULL, *group = NULL;
			if ((r = read_text("/etc/passwd", &passwd, err)) < 0 ||
			    (r = read_text("/etc/group", &group, err)) < 0)
				return r;
			r = config_owner_resolve(f->owner, passwd, group, &uid, &gid, err);
			if (r < 0) {
				mosaic_error_prefix(err, "configure: file %s", f->path);
				return r;
			}
		}
		if ((r = put_file(ctx, f->path, f->data, f->len, f->mode, uid, gid, err)) < 0)
			return r;
	}
	return 0;
}

/* systemctl is-enabled's word for unit ("enabled", "disabled", "static", ...), or "" when the
 * unit is unknown. Caller frees. */
static char *unit_state(const struct configure_ctx *ctx, const char *unit)
{
	char *argv[] = {"systemctl", "is-enabled", (char *)unit, NULL};
	char *out = NULL;
	if (tool(ctx, argv, NULL, true, &out, NULL) < 0 || !out)
		return xstrdup("");
	out[strcspn(out, "\n")] = 0;
	return out;
}

static bool word_in(const char *w, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(w, *list) == 0)
			return true;
	return false;
}

/* systemctl in a chroot works on the unit files offline and starts nothing (systemd's
 * running_in_chroot()), the same as systemctl --root. */
static int apply_services(const struct configure_ctx *ctx, json_object *services,
                          struct mosaic_error *err)
{
	json_object *enable = jget(services, "enable"), *disable = jget(services, "disable");
	if (!jlen(enable) && !jlen(disable))
		return 0;
	if (access("/usr/bin/systemctl", X_OK) < 0 && access("/bin/systemctl", X_OK) < 0)
		return mosaic_errorf(err, -ENOENT,
		                     "configure: config.services needs systemd, but the "
		                     "composition has no systemctl (add the package systemd)");
	/* Left alone: already so, or nothing enable/disable could change. */
	static const char *const enabled[] = {"enabled",   "static",    "alias",
	                                      "generated", "transient", NULL};
	static const char *const disabled[] = {"disabled",  "static",    "masked", "alias",
	                                       "generated", "transient", "",       NULL};
	for (int pass = 0; pass < 2; pass++) {
		json_object *units = pass ? disable : enable;
		for (size_t i = 0; i < jlen(units); i++) {
			const char *unit = json_object_get_string(jidx(units, i));
			_cleanup_free_ char *st = unit_state(ctx, unit);
			if (word_in(st, pass ? disabled : enabled))
				continue;
			char *argv[] = {"systemctl", pass ? "disable" : "enable", (char *)unit,
			                NULL};
			int r = tool(ctx, argv, NULL, false, NULL, err);
			if (r < 0)
				return r;
			configure_say(ctx, CONFIGURE_INFO, NULL, "service %s %s", unit,
			              pass ? "disabled" : "enabled");
		}
	}
	return 0;
}

static int apply_kernel_cmdline(const struct configure_ctx *ctx, const char *cmdline,
                                struct mosaic_error *err)
{
	/* Where kernel-install and mosaic export read the command line from. */
	_cleanup_free_ char *text = xasprintf("%s\n", cmdline);
	return put_text(ctx, "/etc/kernel/cmdline", text, err);
}

int config_apply(const struct configure_ctx *ctx, const struct config_plan *p,
                 struct mosaic_error *err)
{
	json_object *c = p->config;
	if (!c || json_object_object_length(c) == 0)
		return 0;
	configure_say(ctx, CONFIGURE_INFO, NULL, "applying config:");
	json_object *state = state_read(ctx, "/" CONFIG_STATE_PATH);
	int r = 0;
	if (r == 0 && jget(c, "groups"))
		r = apply_groups(ctx, jget(c, "groups"), err);
	if (r == 0 && jget(c, "users"))
		r = apply_users(ctx, jget(c, "users"), err);
	if (r == 0 && jstr(c, "hostname"))
		r = apply_hostname(ctx, jstr(c, "hostname"), err);
	if (r == 0 && jstr(c, "timezone"))
		r = apply_timezone(ctx, jstr(c, "timezone"), err);
	if (r == 0 && jstr(c, "locale"))
		r = apply_locale(ctx, jstr(c, "locale"), state, err);
	if (r == 0)
		r = apply_files(ctx, p, err);
	if (r == 0 && jget(c, "services"))
		r = apply_services(ctx, jget(c, "services"), err);
	if (r == 0 && jstr(c, "kernel_cmdline"))
		r = apply_kernel_cmdline(ctx, jstr(c, "kernel_cmdline"), err);
	json_object_put(state);
	return r;
}

/* ---- run: steps ----------------------------------------------------------------------------- */

bool config_run_pending(const char *root, const struct config_plan *p)
{
	if (p->n_run == 0)
		return false;
	_cleanup_free_ char *path = path_join(root, CONFIG_STATE_PATH);
	_cleanup_free_ char *text = NULL;
	size_t len;
	if (read_file(path, 16 << 20, &text, &len) < 0)
		return true;
	json_object *s = json_tokener_parse(text);
	json_object *done = jget(s, "run");
	bool pending = jlen(done) < p->n_run;
	for (size_t i = 0; !pending && i < p->n_run; i++)
		pending = strcmp(json_object_get_string(jidx(done, i)), p->keys[i]) != 0;
	json_object_put(s);
	return pending;
}

/* What names a step in output and messages: its name, else its command. */
static char *step_label(json_object *step, bool short_form)
{
	const char *name = jstr(step, "name"), *cmd = jstr(step, "command");
	if (name)
		return xstrdup(name);
	size_t n = strcspn(cmd, "\n");
	if (short_form && n > 40)
		return xasprintf("%.37s...", cmd);
	return n < strlen(cmd) ? xasprintf("%.*s...", (int)n, cmd) : xstrdup(cmd);
}

int config_run_steps(const struct configure_ctx *ctx, const struct config_plan *p,
                     struct mosaic_error *err)
{
	if (p->n_run == 0)
		return 0;
	static const char path[] = "/" CONFIG_STATE_PATH;
	json_object *state = state_read(ctx, path);
	json_object *done = jget(state, "run");
	size_t ran = 0, skipped = 0;
	int r = 0;
	for (size_t i = 0; i < p->n_run && r == 0; i++) {
		json_object *step = jidx(p->run, i);
		if (i < jlen(done) &&
		    strcmp(json_object_get_string(jidx(done, i)), p->keys[i]) == 0) {
			skipped++;
			continue;
		}
		/* Keys chain, so nothing recorded after a changed step can match any more. */
		if (i < jlen(done))
			json_object_array_del_idx(done, i, jlen(done) - i);
		_cleanup_free_ char *label = step_label(step, false);
		_cleanup_free_ char *prefix = step_label(step, true);
		/* manifest_load gives every step its place; a model made otherwise may not. */
		const char *file = jstr(step, "file");
		_cleanup_free_ char *where = xasprintf("%s:%d", file ? file : "manifest",
		                                       json_object_get_int(jget(step, "line")));
		_cleanup_free_ char *title =
		    xasprintf("run step %zu of %zu: %s", i + 1, p->n_run, label);
		char *argv[] = {"/bin/sh", "-c", (char *)jstr(step, "command"), NULL};
		const struct chroot_step s = {
		    .name = prefix, .argv = argv, .envp = ctx->env, .timeout = ctx->o->timeout};
		struct chroot_result res;
		configure_step(ctx, title, i + 1, p->n_run);
		r = chroot_run_step(ctx, "/", &s, &res);
		if (r < 0) {
			r = mosaic_errorf(err, r,
			                  "configure: %s: run step '%s' could not start: %s", where,
			                  label, strerror(-r));
			break;
		}
		if (res.timed_out || res.status != 0) {
			_cleanup_free_ char *what =
			    res.timed_out
			        ? xasprintf("%s: run step '%s' ran past --step-timeout %u s and "
			                    "was killed",
			                    where, label, ctx->o->timeout)
			        : xasprintf("%s: run step '%s' failed with exit status %d", where,
			                    label, res.status);
			configure_say(ctx, CONFIGURE_ERROR, prefix, "%s", what);
			configure_say_report(ctx, prefix, res.tail,
			                     "the steps before it are recorded as done; fix it and "
			                     "run mosaic configure again to carry on from it");
			r = mosaic_errorf(err, -EIO, "configure: %s", what);
		} else {
			json_object_array_add(done, json_object_new_string(p->keys[i]));
			ran++;
		}
		free(res.tail);
		/* Also after a failure: the steps before it stay recorded. */
		struct mosaic_error e = {0};
		configure_keep_first(ctx, state_write(path, state, &e), &e, &r, err);
	}
	json_object_put(state);
	if (r == 0)
		configure_say(ctx, CONFIGURE_INFO, NULL, "run: %zu step%s ran, %zu already done",
		              ran, ran == 1 ? "" : "s", skipped);
	return r;
}
