/* What an image holds, written beside it: an SPDX 2.3 JSON document (the image, each locked
 * package, each fragment, and how they relate) and the image manifest. Both are made only from
 * the lock, the index and the image, so the same export gives the same bytes. */
#include "compose/compose.h"
#include "export/internal.h"
#include "fragments/fragment.h"
#include "providers/providers.h"

#include <curl/curl.h>
#include <string.h>
#include <time.h>

#define SBOM_NAMESPACE "https://mosaic.invalid/spdx/"

static void add_str(json_object *o, const char *key, const char *value)
{
	json_object_object_add(o, key, json_object_new_string(value));
}

static void add_take(json_object *o, const char *key, char *value)
{
	json_object_object_add(o, key, json_object_new_string(value));
	free(value);
}

/* An SPDX identifier part: letters, digits, '.' and '-' only. */
static char *spdx_id(const char *prefix, const char *name)
{
	char *s = xasprintf("%s%s", prefix, name);
	for (char *p = s + strlen(prefix); *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
			*p = '-';
	return s;
}

/* Percent-encoding of a purl component (libcurl's: everything but unreserved characters). */
static char *purl_escape(const char *s)
{
	char *c = curl_easy_escape(NULL, s, 0);
	if (!c)
		abort(); /* out of memory */
	char *out = xstrdup(c);
	curl_free(c);
	return out;
}

/* pkg:deb/debian/NAME@VERSION?arch=ARCH, or for rpm pkg:rpm/NAME@VERSION?arch=ARCH&epoch=E
 * (purl keeps an rpm epoch as a qualifier, a Debian one in the version). */
static char *purl(const struct package *p, bool rpm)
{
	_cleanup_free_ char *name = purl_escape(p->name), *arch = purl_escape(p->arch);
	if (!rpm) {
		_cleanup_free_ char *version = purl_escape(p->version);
		return xasprintf("pkg:deb/debian/%s@%s?arch=%s", name, version, arch);
	}
	const char *colon = strchr(p->version, ':');
	_cleanup_free_ char *version = purl_escape(colon ? colon + 1 : p->version);
	if (!colon)
		return xasprintf("pkg:rpm/%s@%s?arch=%s", name, version, arch);
	_cleanup_free_ char *epoch = xstrndup(p->version, colon - p->version);
	return xasprintf("pkg:rpm/%s@%s?arch=%s&epoch=%s", name, version, arch, epoch);
}

static json_object *checksum(const char *hex)
{
	json_object *a = json_object_new_array(), *c = json_object_new_object();
	add_str(c, "algorithm", "SHA256");
	add_str(c, "checksumValue", hex);
	json_object_array_add(a, c);
	return a;
}

/* The fields every package here shares: nothing about licences is asserted. */
static json_object *package(const char *id, const char *name, const char *version)
{
	json_object *o = json_object_new_object();
	add_str(o, "name", name);
	add_str(o, "SPDXID", id);
	if (version)
		add_str(o, "versionInfo", version);
	add_str(o, "supplier", "NOASSERTION");
	add_str(o, "downloadLocation", "NOASSERTION");
	json_object_object_add(o, "filesAnalyzed", json_object_new_boolean(false));
	add_str(o, "licenseConcluded", "NOASSERTION");
	add_str(o, "licenseDeclared", "NOASSERTION");
	add_str(o, "copyrightText", "NOASSERTION");
	return o;
}

static void relate(json_object *rels, const char *a, const char *type, const char *b)
{
	json_object *r = json_object_new_object();
	add_str(r, "spdxElementId", a);
	add_str(r, "relationshipType", type);
	add_str(r, "relatedSpdxElement", b);
	json_object_array_add(rels, r);
}

static bool repository_is_rpm(const struct lock *l, const char *repo)
{
	size_t n = l->repositories ? json_object_array_length(l->repositories) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *r = json_object_array_get_idx(l->repositories, i), *v;
		if (json_object_object_get_ex(r, "name", &v) &&
		    strcmp(json_object_get_string(v), repo) == 0)
			return json_object_object_get_ex(r, "type", &v) &&
			       strcmp(json_object_get_string(v), "rpm") == 0;
	}
	return false;
}

/* The role the lock gives an extra fragment ("merged-usr", "database", "config"), or NULL. */
static const char *lock_role(const struct lock *l, const char *digest)
{
	size_t n = l && l->fragments ? json_object_array_length(l->fragments) : 0;
	for (size_t i = 0; i < n; i++) {
		json_object *f = json_object_array_get_idx(l->fragments, i), *d, *r;
		if (json_object_object_get_ex(f, "digest", &d) &&
		    strcmp(json_object_get_string(d), digest) == 0 &&
		    json_object_object_get_ex(f, "role", &r))
			return json_object_get_string(r);
	}
	return NULL;
}

/* A fragment as an SPDX package: its digest is its checksum (the image's SHA-256), its
 * descriptor (read beside the image, not verified again) names it. */
static json_object *fragment_package(const char *id, const char *digest, const char *image,
                                     const char *role)
{
	size_t l = strlen(image);
	_cleanup_free_ char *json = l > 5 ? xasprintf("%.*s.json", (int)(l - 5), image) : NULL;
	_cleanup_free_ char *text = NULL;
	size_t len;
	struct fragment_descriptor d = {0};
	bool have = json && read_file(json, 1 << 24, &text, &len) == 0 &&
	            fragment_descriptor_parse(text, len, &d, NULL) == 0;
	json_object *o = package(id, have ? d.name : digest, have ? d.version : NULL);
	json_object_object_add(o, "checksums", checksum(digest));
	add_str(o, "primaryPackagePurpose", "ARCHIVE");
	add_take(o, "comment",
	         xasprintf("mosaic fragment (squashfs), kind %s%s%s",
	                   have ? fragment_kind_to_string(d.kind) : "unknown",
	                   role ? ", lock role " : "", role ? role : ""));
	if (have)
		fragment_descriptor_clear(&d);
	return o;
}

json_object *export_sbom(const struct export_sbom_input *in)
{
	const struct lock *l = in->lock;
	char created[32];
	struct tm tm;
	time_t t = in->created;
	strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));

	json_object *doc = json_object_new_object();
	add_str(doc, "spdxVersion", "SPDX-2.3");
	add_str(doc, "dataLicense", "CC0-1.0");
	add_str(doc, "SPDXID", "SPDXRef-DOCUMENT");
	add_str(doc, "name", in->image_name);
	_cleanup_free_ char *ns_name = purl_escape(in->image_name);
	add_take(doc, "documentNamespace", xasprintf(SBOM_NAMESPACE "%s-%s", ns_name, in->sha256));
	json_object *ci = json_object_new_object(), *creators = json_object_new_array();
	json_object_array_add(creators, json_object_new_string("Tool: mosaic-" MOSAIC_VERSION));
	json_object_object_add(ci, "creators", creators);
	add_str(ci, "created", created);
	json_object_object_add(doc, "creationInfo", ci);
	json_object *describes = json_object_new_array();
	json_object_array_add(describes, json_object_new_string("SPDXRef-Image"));
	json_object_object_add(doc, "documentDescribes", describes);

	json_object *pkgs = json_object_new_array(), *rels = json_object_new_array();
	json_object *image = package("SPDXRef-Image", in->image_name, l ? l->name : NULL);
	json_object_object_add(image, "checksums", checksum(in->sha256));
	add_str(image, "primaryPackagePurpose", "OPERATING-SYSTEM");
	add_take(image, "comment",
	         xasprintf("mosaic export, format %s, %ju bytes", in->format, (uintmax_t)in->size));
	json_object_array_add(pkgs, image);
	relate(rels, "SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image");

	size_t np = l ? l->n_packages : 0;
	char **pids = xcalloc(np ? np : 1, sizeof(*pids));
	for (size_t i = 0; i < np; i++) {
		const struct package *p = &l->packages[i];
		_cleanup_free_ char *tag = xasprintf("%zu-%s", i + 1, p->name);
		pids[i] = spdx_id("SPDXRef-Package-", tag);
		json_object *o = package(pids[i], p->name, p->version);
		json_object_object_add(o, "checksums", checksum(p->sha256));
		add_take(o, "sourceInfo",
		         xasprintf("repository %s%s%s", p->repository,
		                   p->location && *p->location ? ": " : "",
		                   p->location ? p->location : ""));
		json_object *refs = json_object_new_array(), *ref = json_object_new_object();
		add_str(ref, "referenceCategory", "PACKAGE-MANAGER");
		add_str(ref, "referenceType", "purl");
		add_take(ref, "referenceLocator", purl(p, repository_is_rpm(l, p->repository)));
		json_object_array_add(refs, ref);
		json_object_object_add(o, "externalRefs", refs);
		add_str(o, "primaryPackagePurpose", "INSTALL");
		json_object_array_add(pkgs, o);
		relate(rels, "SPDXRef-Image", "CONTAINS", pids[i]);
	}

	uint32_t nf = compose_index_fragments(in->idx);
	for (uint32_t i = 0; i < nf; i++) {
		char digest[SHA256_HEX_LEN + 1];
		compose_index_fragment_digest(in->idx, i, digest);
		_cleanup_free_ char *id = spdx_id("SPDXRef-Fragment-", digest);
		json_object_array_add(
		    pkgs, fragment_package(id, digest, in->images[i], lock_role(l, digest)));
		relate(rels, "SPDXRef-Image", "CONTAINS", id);
		for (size_t j = 0; j < np; j++)
			if (strcmp(l->packages[j].fragment, digest) == 0)
				relate(rels, id, "GENERATED_FROM", pids[j]);
	}
	strv_free(pids, np);
	json_object_object_add(doc, "packages", pkgs);
	json_object_object_add(doc, "relationships", rels);
	return doc;
}

json_object *export_image_manifest(const struct export_sbom_input *in)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_int(1));
	add_str(o, "format", in->format);
	add_str(o, "image", in->image_name);
	json_object_object_add(o, "size", json_object_new_int64((int64_t)in->size));
	add_str(o, "sha256", in->sha256);
	json_object_object_add(o, "fragments",
	                       json_object_new_int64(compose_index_fragments(in->idx)));
	json_object_object_add(o, "packages",
	                       json_object_new_int64(in->lock ? (int64_t)in->lock->n_packages : 0));
	return o;
}
