/* veritysnap common: incremental SHA-256 / SHA-512 over OpenSSL, for diff IDs and content digests. */
#ifndef VERITYSNAP_COMMON_VS_DIGEST_H
#define VERITYSNAP_COMMON_VS_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define VS_SHA256_LEN 32

struct vs_sha256;

/* Creates and frees an incremental SHA-256 context. */
struct vs_sha256 *vs_sha256_new(void);
void vs_sha256_free(struct vs_sha256 *ctx);

/* Adds bytes; finishes into out[32] (the context may then be reset with vs_sha256_reset). */
void vs_sha256_update(struct vs_sha256 *ctx, const void *data, size_t len);
void vs_sha256_final(struct vs_sha256 *ctx, uint8_t out[VS_SHA256_LEN]);
void vs_sha256_reset(struct vs_sha256 *ctx);

/* One-shot SHA-256. */
void vs_sha256(const void *data, size_t len, uint8_t out[VS_SHA256_LEN]);

/* Formats "sha256:<hex>" into out (72 bytes). */
void vs_digest_format(const uint8_t digest[VS_SHA256_LEN], char out[72]);

#endif
