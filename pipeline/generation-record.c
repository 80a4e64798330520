/* pipeline/: a generation's record, <store>/generations/<HISTORY>/<N>.json (docs/formats.md):
 * written by the build, read by everyone else as untrusted input (a store may be shared). */
#include "pipeline/internal.h"

#include <string.h>

bool pipeline_history_valid(const char *s)
{
	static const char alnum[] =
	    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	size_t n = strlen(s);
	return n > 0 && n <= PIPELINE_HISTORY_MAX && strchr(alnum, s[0]) &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+=,@-") ==
	           n;
}
