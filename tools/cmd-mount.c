/* mosaic mount | umount | status */
#include "compose/compose.h"
#include "fusefs/fusefs.h"
#include "tools/cli.h"

#include <ftw.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>

static const char usage_mount[] =
    "Usage: mosaic mount (MANIFEST | INDEX | FRAGMENT...) MOUNTPOINT [OPTIONS]\n"
    "\n"
    "Mounts the composition of FRAGMENTs (lowest first; store refs, digests or .sqfs paths),\n"
    "of a prebuilt INDEX, or of a MANIFEST that 'mosaic build' built (its base lowest, then\n"
    "its packages in dependency order, then its extra fragments). Nothing is unpacked: metadata comes from the index (built once per\n"
    "fragment list and cached), and a fragment is opened and verified when a file in it is\n"
    "first read. Read-only unless --upper is given. Returns once the mount is usable.\n"
    "\n"
    "  -s, --store STORE       the store fragments come from\n"
    "      --keyring FILE      trusted public keys\n"
    "      --lock FILE         the MANIFEST's lock (default: NAME.lock beside it)\n"
    "      --upper DIR         writable upper layer (kernel overlayfs upper format)\n"
    "      --work DIR          overlayfs work dir (default: .NAME.work beside the upper)\n"
    "      --writable=MODE     overlay (kernel overlayfs over the view) or fuse (the daemon's\n"
    "                          own copy-up); without it: overlay, else fuse if refused\n"
    "      --read-only         no upper layer\n"
    "  -f, --foreground        serve in the foreground until unmounted\n"
    "  -o OPTIONS              extra FUSE mount options\n"
    "  -h, --help              show this help\n";

static const char usage_umount[] = "Usage: mosaic umount MOUNTPOINT [--lazy]\n"
                                   "\n"
                                   "Unmounts every layer mosaic mounted there and waits for "
                                   "the daemon to exit.\n"
                                   "  --lazy   detach even while busy\n";

static const char usage_status[] = "Usage: mosaic status MOUNTPOINT [--json]\n"
                                   "\n"
                                   "Shows the daemon's mode, fragments, fragment opens, "
                                   "and the upper's\n"
                                   "path and size (bytes allocated, hard links once: "
                                   "upper_size and\n"
                                   "upper_entries in --json).\n";

enum { OPT_KEYRING = 256, OPT_LOCK, OPT_UPPER, OPT_WORK, OPT_WRITABLE, OPT_READ_ONLY };

static bool is_manifest(const char *path)
{
	size_t l = strlen(path);
	return (l > 5 && strcmp(path + l - 5, ".yaml") == 0) ||
	       (l > 4 && strcmp(path + l - 4, ".yml") == 0);
}

static bool is_index(const char *path)
{
	char magic[8];
	FILE *f = fopen(path, "rb");
	bool yes = f && fread(magic, 1, 8, f) == 8 && memcmp(magic, "MOSAICIX", 8) == 0;
	if (f)
		fclose(f);
	return yes;
}

int cli_index_images(const char *path, const char *store, struct compose_index **idx,
                     char ***images, size_t *n)
{
	struct mosaic_error err = {0};
	if (compose_index_open(path, idx, &err) < 0)
		return cli_fail(&err);
	struct store *s;
	int r = cli_open_store(store, false, &s);
	if (r)
		return r;
	*n = compose_index_fragments(*idx);
	*images = xcalloc(*n ? *n : 1, sizeof(**images));
	for (size_t i = 0; i < *n; i++) {
		char dg[SHA256_HEX_LEN + 1];
		compose_index_fragment_digest(*idx, i, dg);
		(*images)[i] = store_object_path(s, dg, ".sqfs");
	}
	store_free(s);
	return 0;
}

int cli_inputs_index(const struct cli_inputs *ci, char **index_path)
{
	struct mosaic_error err = {0};
	char *cached = compose_index_cache_path(ci->in, ci->n);
	if (access(cached, R_OK) < 0) {
		_cleanup_free_ char *dir = xstrndup(cached, strrchr(cached, '/') - cached);
		mkdir_p(dir, 0755);
		if (compose_index_build(ci->in, ci->n, false, cached, NULL, &err) < 0) {
			free(cached);
			return cli_fail(&err);
		}
	}
	*index_path = cached;
	return 0;
}

int cli_mount(char **args, size_t n_args, const char *store, const char *keyring_path,
              const char *lock, struct fusefs_options *o_in, enum fusefs_writable *picked_out)
{
	struct fusefs_options o = *o_in;
	char **digests = NULL;
	size_t n_digests = 0;
	if (n_args == 1 && is_manifest(args[0])) {
		int r = cli_manifest_fragments(args[0], lock, &digests, &n_digests);
		if (r)
			return r;
		args = digests;
		n_args = n_digests;
	}

	_cleanup_free_ char *work = NULL, *cached_index = NULL;
	if (o.upper && !o.work) {
		_cleanup_free_ char *a = xstrdup(o.upper), *b = xstrdup(o.upper);
		work = xasprintf("%s/.%s.work", dirname(a), basename(b));
		o.work = work;
	}
	struct keyring *k = NULL;
	struct cli_inputs ci = {0};
	char **images = NULL;
	size_t n_images = 0;
	int r = cli_open_keyring(keyring_path, &k);
	if (r)
		goto out;
	o.keyring = k;

	struct mosaic_error err = {0};
	if (n_args == 1 && is_index(args[0])) {
		struct compose_index *idx = NULL;
		r = cli_index_images(args[0], store, &idx, &images, &n_images);
		compose_index_close(idx);
		if (r)
			goto out;
		o.index_path = args[0];
	} else {
		if ((r = cli_resolve_inputs(args, n_args, store, keyring_path, &ci)))
			goto out;
		if ((r = cli_inputs_index(&ci, &cached_index)))
			goto out;
		o.index_path = cached_index;
		n_images = ci.n;
		images = xcalloc(n_images ? n_images : 1, sizeof(*images));
		for (size_t i = 0; i < n_images; i++)
			images[i] = xstrdup(ci.in[i].image_path);
	}
	o.images = images;
	o.n_images = n_images;
	enum fusefs_writable picked;
	if (fusefs_mount(&o, &picked, &err) < 0) {
		r = cli_fail(&err);
		goto out;
	}
	if (picked_out)
		*picked_out = picked;
	else if (!o.foreground) {
		if (picked == FUSEFS_READ_ONLY)
			printf("mounted %s read-only (%zu fragments)\n", o.mountpoint, n_images);
		else
			printf("mounted %s writable with %s (upper %s, %zu fragments)\n",
			       o.mountpoint,
			       picked == FUSEFS_WRITABLE_OVERLAY ? "kernel overlayfs over the view"
			                                         : "the daemon's own copy-up",
			       o.upper, n_images);
		json_object *st, *fb;
		struct mosaic_error ignored = {0};
		if (picked == FUSEFS_WRITABLE_FUSE && fusefs_status(o.mountpoint, &st, &ignored) == 0) {
			if (json_object_object_get_ex(st, "fallback", &fb) && fb)
				printf("(kernel overlayfs was refused: %s)\n", json_object_get_string(fb));
			json_object_put(st);
		}
	}
	r = EXIT_OK;
out:
	strv_free(images, n_images);
	strv_free(digests, n_digests);
	cli_inputs_free(&ci);
	keyring_free(k);
	return r;
}

int cmd_mount(int argc, char **argv)
{
	static const struct option opts[] = {{"store", required_argument, NULL, 's'},
	                                     {"keyring", required_argument, NULL, OPT_KEYRING},
	                                     {"lock", required_argument, NULL, OPT_LOCK},
	                                     {"upper", required_argument, NULL, OPT_UPPER},
	                                     {"work", required_argument, NULL, OPT_WORK},
	                                     {"writable", required_argument, NULL, OPT_WRITABLE},
	                                     {"read-only", no_argument, NULL, OPT_READ_ONLY},
	                                     {"foreground", no_argument, NULL, 'f'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {}};
	struct fusefs_options o = {.writable = FUSEFS_WRITABLE_AUTO};
	const char *store = NULL, *keyring_path = NULL, *lock = NULL;
	bool read_only = false;
	int c;
	while ((c = getopt_long(argc, argv, "s:fo:h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			store = optarg;
			break;
		case OPT_KEYRING:
			keyring_path = optarg;
			break;
		case OPT_LOCK:
			lock = optarg;
			break;
		case OPT_UPPER:
			o.upper = optarg;
			break;
		case OPT_WORK:
			o.work = optarg;
			break;
		case OPT_WRITABLE:
			if (strcmp(optarg, "overlay") == 0)
				o.writable = FUSEFS_WRITABLE_OVERLAY;
			else if (strcmp(optarg, "fuse") == 0)
				o.writable = FUSEFS_WRITABLE_FUSE;
			else
				return cli_usage(usage_mount,
				                 "--writable is overlay or fuse, not '%s'", optarg);
			break;
		case OPT_READ_ONLY:
			read_only = true;
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'o':
			o.fuse_options = optarg;
			break;
		case 'h':
			fputs(usage_mount, stdout);
			return EXIT_OK;
		default:
			return cli_usage(usage_mount, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind < 2)
		return cli_usage(usage_mount, "give (INDEX | FRAGMENT...) and a MOUNTPOINT");
	if (read_only && o.upper)
		return cli_usage(usage_mount, "--read-only and --upper exclude each other");
	o.mountpoint = argv[argc - 1];
	char **args = argv + optind;
	size_t n_args = argc - optind - 1;

	return cli_mount(args, n_args, store, keyring_path, lock, &o, NULL);
}

void cli_mounted_clear(struct cli_mounted *m)
{
	compose_index_close(m->idx);
	strv_free(m->images, m->n_images);
	json_object_put(m->state);
}

int cli_mounted_open(const char *mountpoint, struct cli_mounted *m)
{
	struct mosaic_error err = {0};
	if (fusefs_status(mountpoint, &m->state, &err) < 0)
		return cli_fail(&err);
	json_object *v, *frags;
	if (!json_object_object_get_ex(m->state, "index", &v) || !v ||
	    !json_object_object_get_ex(m->state, "fragments", &frags) ||
	    !json_object_is_type(frags, json_type_array)) {
		fprintf(stderr, "mosaic: the state of %s names no index or fragments; remount it\n",
		        mountpoint);
		return EXIT_FAIL;
	}
	if (compose_index_open(json_object_get_string(v), &m->idx, &err) < 0)
		return cli_fail(&err);
	m->n_images = json_object_array_length(frags);
	if (m->n_images != compose_index_fragments(m->idx)) {
		fprintf(stderr, "mosaic: %s: the index has %u fragments, the state names %zu\n",
		        mountpoint, compose_index_fragments(m->idx), m->n_images);
		return EXIT_FAIL;
	}
	m->images = xcalloc(m->n_images ? m->n_images : 1, sizeof(*m->images));
	for (size_t i = 0; i < m->n_images; i++)
		m->images[i] = xstrdup(json_object_get_string(json_object_array_get_idx(frags, i)));
	if (json_object_object_get_ex(m->state, "upper", &v) && v)
		m->upper = json_object_get_string(v);
	return 0;
}

int cmd_umount(int argc, char **argv)
{
	bool lazy = false;
	const struct cli_flag flags[] = {{"lazy", &lazy}, {}};
	int r = cli_flags(argc, argv, usage_umount, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	if (fusefs_umount(argv[optind], lazy, &err) < 0)
		return cli_fail(&err);
	return EXIT_OK;
}

/* du of the upper: bytes allocated (hard links once) and entries, the upper root excluded. */
struct file_id {
	dev_t dev;
	ino_t ino;
	blkcnt_t blocks;
};
struct usage {
	uint64_t bytes, entries;
	struct file_id *linked; /* multiply linked files: counted once each, after the walk */
	size_t n_linked, cap;
};
static struct usage *usage_walk; /* nftw passes no context */

static int usage_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)path;
	(void)flag;
	struct usage *u = usage_walk;
	if (ftw->level == 0)
		return 0;
	u->entries++;
	if (S_ISDIR(st->st_mode) || st->st_nlink < 2) {
		u->bytes += (uint64_t)st->st_blocks * 512;
		return 0;
	}
	if (u->n_linked == u->cap) {
		u->cap = u->cap ? 2 * u->cap : 64;
		u->linked = xrealloc(u->linked, u->cap * sizeof(*u->linked));
	}
	u->linked[u->n_linked++] = (struct file_id){st->st_dev, st->st_ino, st->st_blocks};
	return 0;
}

static int file_id_cmp(const void *a, const void *b)
{
	const struct file_id *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return (x->ino > y->ino) - (x->ino < y->ino);
}

static void add_upper_usage(json_object *s)
{
	json_object *v;
	if (!json_object_object_get_ex(s, "upper", &v) || !v)
		return;
	struct usage u = {0};
	usage_walk = &u;
	int r = nftw(json_object_get_string(v), usage_one, 64, FTW_PHYS | FTW_MOUNT);
	usage_walk = NULL;
	if (u.n_linked)
		qsort_safe(u.linked, u.n_linked, sizeof(*u.linked), file_id_cmp);
	for (size_t i = 0; i < u.n_linked; i++)
		if (i == 0 || file_id_cmp(&u.linked[i - 1], &u.linked[i]) != 0)
			u.bytes += (uint64_t)u.linked[i].blocks * 512;
	free(u.linked);
	if (r == 0) {
		json_object_object_add(s, "upper_size", json_object_new_int64(u.bytes));
		json_object_object_add(s, "upper_entries", json_object_new_int64(u.entries));
	}
}

int cmd_status(int argc, char **argv)
{
	bool json = false;
	const struct cli_flag flags[] = {{"json", &json}, {}};
	int r = cli_flags(argc, argv, usage_status, flags, 1, "exactly one MOUNTPOINT");
	if (r >= 0)
		return r;
	struct mosaic_error err = {0};
	json_object *s;
	if (fusefs_status(argv[optind], &s, &err) < 0)
		return cli_fail(&err);
	add_upper_usage(s);
	if (json) {
		printf("%s\n", json_object_to_json_string_ext(
		                   s, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	} else {
		json_object *v;
#define GET(k) (json_object_object_get_ex(s, k, &v) && v ? json_object_get_string(v) : "-")
		printf("mountpoint:     %s\n", GET("mountpoint"));
		printf("daemon pid:     %s (%s)\n", GET("pid"), GET("running"));
		printf("mode:           %s\n", GET("mode"));
		printf("upper:          %s", GET("upper"));
		if (json_object_object_get_ex(s, "upper_size", &v)) {
			double size = json_object_get_int64(v);
			const char *unit = "bytes";
			static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", NULL};
			for (const char *const *u = units; *u && size >= 1024; u++) {
				size /= 1024;
				unit = *u;
			}
			printf(" (%.*f %s in %s entries)", *unit == 'b' ? 0 : 1, size, unit,
			       GET("upper_entries"));
		}
		printf("\n");
		printf("index:          %s\n", GET("index"));
		json_object_object_get_ex(s, "fragments", &v);
		printf("fragments:      %zu\n", v ? json_object_array_length(v) : 0);
		printf("fragment opens: %s\n", GET("fragment_opens"));
#undef GET
	}
	json_object_put(s);
	return EXIT_OK;
}
