/* tools/: mosaic build's configure step: the config fragment of a composition. */
#pragma once

#include "providers/providers.h"
#include "tools/cli.h"

struct build_config {
	const char *manifest, *lock_path; /* the lock of an earlier build may name the fragment */
	const char *store, *keyring, *sign_key;
	json_object *model; /* the loaded manifest: its config: and run: */
	unsigned timeout;   /* --step-timeout */
	int64_t source_date_epoch;
};

/* What a config fragment was made on: a key of the ordered digests under it. */
void build_base_key(char *const *digests, size_t n, char hex[SHA256_HEX_LEN + 1]);
/* The config fragment of the composition digests: found by its key (the cache, or the lock of an
 * earlier build) in the store, or made: mounted with a scratch upper, configured, committed,
 * unmounted. *entry receives the lock's fragments entry {"role": "config", "source": key,
 * "base": the digests' key, "digest"}. Returns an exit code. */
int build_config_fragment(const struct build_config *c, struct store *s, char *const *digests,
                          size_t n, json_object **entry);
