/* The UUIDs of an image (disk, partitions, filesystems, the ISO's marker), derived from the
 * seed a scan of the view hashes, so the same view gives the same UUIDs. */
#include "export/internal.h"

#include <stdio.h>
#include <string.h>

void export_derive_uuid(const uint8_t seed[SHA256_LEN], const char *label, uint8_t out[16])
{
	struct sha256 *h = sha256_new();
	sha256_update(h, seed, SHA256_LEN);
	sha256_update(h, label, strlen(label) + 1);
	char hex[SHA256_HEX_LEN + 1];
	sha256_final(h, hex);
	for (int i = 0; i < 16; i++)
		sscanf(hex + 2 * i, "%2hhx", &out[i]);
	out[6] = (out[6] & 0x0f) | 0x40; /* version 4 */
	out[8] = (out[8] & 0x3f) | 0x80; /* RFC 4122 variant */
}

void export_uuid_string(const uint8_t u[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
	         u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
	         u[13], u[14], u[15]);
}
