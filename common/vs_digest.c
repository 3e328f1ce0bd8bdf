#include "vs_digest.h"
#include "vs_error.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

struct vs_sha256 {
    EVP_MD_CTX *md;
};

struct vs_sha256 *vs_sha256_new(void)
{
    struct vs_sha256 *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return NULL;
    ctx->md = EVP_MD_CTX_new();
    if (!ctx->md || EVP_DigestInit_ex(ctx->md, EVP_sha256(), NULL) != 1) {
        vs_sha256_free(ctx);
        return NULL;
    }
    return ctx;
}

void vs_sha256_free(struct vs_sha256 *ctx)
{
    if (!ctx)
        return;
    EVP_MD_CTX_free(ctx->md);
    free(ctx);
}

void vs_sha256_update(struct vs_sha256 *ctx, const void *data, size_t len)
{
    EVP_DigestUpdate(ctx->md, data, len);
}

void vs_sha256_final(struct vs_sha256 *ctx, uint8_t out[VS_SHA256_LEN])
{
    unsigned int n = VS_SHA256_LEN;
    EVP_DigestFinal_ex(ctx->md, out, &n);
}

void vs_sha256_reset(struct vs_sha256 *ctx)
{
    EVP_DigestInit_ex(ctx->md, EVP_sha256(), NULL);
}

void vs_sha256(const void *data, size_t len, uint8_t out[VS_SHA256_LEN])
{
    unsigned int n = VS_SHA256_LEN;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

void vs_digest_format(const uint8_t digest[VS_SHA256_LEN], char out[72])
{
    memcpy(out, "sha256:", 7);
    vs_hex_encode(digest, VS_SHA256_LEN, out + 7);
}
