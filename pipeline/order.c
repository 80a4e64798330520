/* pipeline/: the order a built manifest's fragments are mounted in, from its lock: the merged-/usr
 * links lowest, the base, the packages in installation order, their databases, the extras, and
 * the configuration made on all of those on top. Mount, export and configure all take it here. */
#include "compose/compose.h"
#include "pipeline/internal.h"

#include <string.h>

const char **pipeline_package_digests(const struct lock *l)
{
	const char **v = xcalloc(l->n_packages + 1, sizeof(*v));
	for (size_t i = 0; i < l->n_packages; i++)
		v[i] = l->packages[i].fragment;
	return v;
}

/* Debian's rpm keeps its database in the user's home (rpm-common's %_dbpath is ~/.rpmdb), so for
 * root, who configures, in /root/.rpmdb; the rpm of RPM distributions in /var/lib/rpm. */
const char *pipeline_rpm_dbpath(const struct lock *l)
{
	json_object *first = l->repositories && json_object_array_length(l->repositories)
	                         ? json_object_array_get_idx(l->repositories, 0)
	                         : NULL;
	const char *type = first ? model_str(first, "type") : NULL;
	return type && strcmp(type, "rpm") == 0 ? "var/lib/rpm" : "root/.rpmdb";
}

/* The fragments that may be RPM packages, in mount order (borrowed from the lock): an RPM lock's
 * packages, then the manifest's extra fragments, which is how a Debian manifest brings RPM
 * packages (one manifest resolves from one kind of repository). */
const char **pipeline_rpm_candidates(const struct lock *l, size_t *n)
{
	bool rpm_lock = strcmp(pipeline_rpm_dbpath(l), "var/lib/rpm") == 0;
	size_t ne = l->fragments ? json_object_array_length(l->fragments) : 0;
	const char **v = xcalloc(l->n_packages + ne + 1, sizeof(*v));
	size_t m = 0;
	for (size_t i = 0; rpm_lock && i < l->n_packages; i++)
		v[m++] = l->packages[i].fragment;
	for (size_t i = 0; i < ne; i++) {
		json_object *e = json_object_array_get_idx(l->fragments, i);
		const char *role = model_str(e, "role"), *d = model_str(e, "digest");
		if (role && d && strcmp(role, "extra") == 0)
			v[m++] = d;
	}
	*n = m;
	return v;
}

void pipeline_rpm_database_key(const struct lock *l, char key[SHA256_HEX_LEN + 1])
{
	size_t n;
	_cleanup_free_ const char **v = pipeline_rpm_candidates(l, &n);
	compose_rpm_key(v, n, pipeline_rpm_dbpath(l), key);
}

void pipeline_base_key(char *const *digests, size_t n, char hex[SHA256_HEX_LEN + 1])
{
	compose_digests_key("", (const char *const *)digests, n, hex);
}

/* Where a lock fragment of this role goes among the passes of the mount order (2 is the
 * packages'); unknown roles go with the extras; the config fragment, the frozen upper, on top. */
static int role_pass(const char *role)
{
	static const char *const order[] = {"merged-usr", "base", "", "database", "", "config"};
	if (strcmp(role, "rpm-database") == 0)
		return 3; /* with the dpkg one */
	for (int i = 0; i < (int)ARRAY_SIZE(order); i++)
		if (*order[i] && strcmp(role, order[i]) == 0)
			return i;
	return 4;
}

int pipeline_lock_mount_order(const struct lock *l, const char *lock_path, const char *manifest,
                              bool merged_usr, bool with_config, char ***digests, size_t *n,
                              struct pipeline_events *ev, struct mosaic_error *err)
{
	size_t ne = l->fragments ? json_object_array_length(l->fragments) : 0;
	char **out = xcalloc(l->n_packages + ne + 1, sizeof(*out));
	size_t m = 0;
	int r = 0;
	char key[SHA256_HEX_LEN + 1], rpm_key[SHA256_HEX_LEN + 1];
	_cleanup_free_ const char **frags = pipeline_package_digests(l);
	compose_dpkg_key(frags, l->n_packages, l->arch ? l->arch : "", key);
	pipeline_rpm_database_key(l, rpm_key);
	bool has_merged_usr = false;
	for (size_t i = 0; i < ne; i++) {
		const char *role = model_str(json_object_array_get_idx(l->fragments, i), "role");
		has_merged_usr |= role && strcmp(role, "merged-usr") == 0;
	}
	/* Packages unpacked without the links would not be a merged-/usr system. */
	if (merged_usr && !has_merged_usr)
		r = mosaic_errorf(
		    err, -ESTALE,
		    "%s was built without merged /usr, which the manifest asks for; run "
		    "'mosaic build %s'",
		    lock_path, manifest);
	for (int pass = 0; pass < 6 && r == 0; pass++) {
		for (size_t i = 0; pass == 2 && i < l->n_packages; i++) {
			if (!is_sha256_hex(l->packages[i].fragment)) {
				r = mosaic_errorf(
				    err, -ESTALE,
				    "%s has no fragment for %s; run 'mosaic build %s'", lock_path,
				    l->packages[i].name, manifest);
				break;
			}
			out[m++] = xstrdup(l->packages[i].fragment);
		}
		for (size_t i = 0; pass != 2 && i < ne && r == 0; i++) {
			json_object *e = json_object_array_get_idx(l->fragments, i);
			const char *role = model_str(e, "role"), *d = model_str(e, "digest");
			if (!role || !d || role_pass(role) != pass)
				continue;
			/* A database made for other packages (the lock was resolved again since)
			 * would describe what is not there. */
			bool rpm = strcmp(role, "rpm-database") == 0;
			if (pass == 3 &&
			    (!model_str(e, "source") ||
			     strcmp(model_str(e, "source"), rpm ? rpm_key : key) != 0)) {
				r = mosaic_errorf(
				    err, -ESTALE,
				    "%s: the %s database is not the one of its packages; "
				    "run 'mosaic build %s'",
				    lock_path, rpm ? "rpm" : "dpkg", manifest);
				break;
			}
			if (pass == 5) {
				char base[SHA256_HEX_LEN + 1];
				pipeline_base_key(out, m, base);
				if (!with_config)
					continue;
				/* A configuration made on other fragments would change what they do
				 * not hold any more: the system below mounts unconfigured instead.
				 */
				if (!model_str(e, "base") ||
				    strcmp(model_str(e, "base"), base) != 0) {
					pipeline_say(
					    ev, PIPELINE_WARNING, "mount",
					    "%s: the configuration was made for other "
					    "fragments; mounting them unconfigured ('mosaic "
					    "build %s' configures them again)",
					    lock_path, manifest);
					continue;
				}
			}
			out[m++] = xstrdup(d);
		}
	}
	if (r < 0) {
		strv_free(out, m);
		return r;
	}
	*digests = out;
	*n = m;
	return 0;
}
