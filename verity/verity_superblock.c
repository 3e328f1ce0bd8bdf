/* The cryptsetup v1 superblock (F.4): writer, reader and the UUID rule. */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "verity/verity_internal.h"

static const uint8_t verity_signature[8] = {'v', 'e', 'r', 'i', 't', 'y', 0, 0};

/* veritysetup writes a random UUID, which makes two builds of one layer differ (containerd's files differ per
 * node). Ours is a function of the root hash so the file is reproducible: the first 16 bytes of
 * SHA-256("veritysnap-verity-uuid" || root hash), with the RFC 9562 version 8 (custom) and variant 10 bits
 * set. */
void verity_uuid_from_root(const uint8_t *root_hash, uint32_t digest_size, uint8_t uuid[16])
{
    static const char domain[] = "veritysnap-verity-uuid";
    uint8_t d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(ctx, domain, sizeof(domain) - 1) == 1 &&
        EVP_DigestUpdate(ctx, root_hash, digest_size) == 1 && EVP_DigestFinal_ex(ctx, d, &n) == 1 && n >= 16)
        memcpy(uuid, d, 16);
    else
        memset(uuid, 0, 16); /* OpenSSL out of memory: a nil-based UUID still marks version and variant */
    EVP_MD_CTX_free(ctx);
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x80);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

void verity_superblock_encode(const struct verity_layout *l, uint8_t out[VERITY_SUPERBLOCK_SIZE])
{
    struct verity_sb sb;
    memset(&sb, 0, sizeof(sb));
    memcpy(sb.signature, verity_signature, sizeof(sb.signature));
    sb.version = htole32(1);
    sb.hash_type = htole32(l->params.format);
    memcpy(sb.uuid, l->uuid, sizeof(sb.uuid));
    strncpy((char *)sb.algorithm, l->params.hash_algorithm, sizeof(sb.algorithm) - 1);
    sb.data_block_size = htole32(l->params.data_block_size);
    sb.hash_block_size = htole32(l->params.hash_block_size);
    sb.data_blocks = htole64(l->data_blocks);
    sb.salt_size = htole16((uint16_t)l->params.salt_size);
    memcpy(sb.salt, l->params.salt, l->params.salt_size);
    memcpy(out, &sb, sizeof(sb));
}

int verity_superblock_decode(const uint8_t in[VERITY_SUPERBLOCK_SIZE], struct verity_layout *l,
                             struct vs_error *err)
{
    struct verity_sb sb;
    memcpy(&sb, in, sizeof(sb));
    if (memcmp(sb.signature, verity_signature, sizeof(sb.signature)) != 0)
        return vs_fail(err, -EBADMSG, "no verity superblock (signature is not \"verity\")");
    if (le32toh(sb.version) != 1)
        return vs_fail(err, -ENOTSUP, "verity superblock version %u is not supported (only 1)",
                       le32toh(sb.version));
    if (le32toh(sb.hash_type) > 1)
        return vs_fail(err, -EBADMSG, "verity superblock hash type %u is not 0 or 1", le32toh(sb.hash_type));
    if (!memchr(sb.algorithm, '\0', sizeof(sb.algorithm)))
        return vs_fail(err, -EBADMSG, "verity superblock algorithm name is not terminated");
    if (strlen((const char *)sb.algorithm) >= sizeof(l->params.hash_algorithm))
        return vs_fail(err, -ENOTSUP, "verity superblock algorithm \"%s\" is not supported",
                       (const char *)sb.algorithm);
    memset(&l->params, 0, sizeof(l->params));
    strcpy(l->params.hash_algorithm, (const char *)sb.algorithm);
    l->params.format = le32toh(sb.hash_type);
    l->params.data_block_size = le32toh(sb.data_block_size);
    l->params.hash_block_size = le32toh(sb.hash_block_size);
    l->params.salt_size = le16toh(sb.salt_size);
    l->params.superblock = true;
    if (l->params.salt_size > VERITY_MAX_SALT)
        return vs_fail(err, -EBADMSG, "verity superblock salt size %u is larger than %d", l->params.salt_size,
                       VERITY_MAX_SALT);
    memcpy(l->params.salt, sb.salt, l->params.salt_size);
    l->data_blocks = le64toh(sb.data_blocks);
    memcpy(l->uuid, sb.uuid, sizeof(l->uuid));
    if (verity_digest_size(&l->params) == 0)
        return vs_fail(err, -ENOTSUP,
                       "verity superblock algorithm \"%s\" is not supported (sha256 or sha512)",
                       l->params.hash_algorithm);
    int r = verity_params_check(&l->params, err);
    if (r < 0)
        return verity_error_wrap(err, -EBADMSG, "verity superblock");
    if (l->data_blocks == 0)
        return vs_fail(err, -EBADMSG, "verity superblock covers 0 data blocks");
    return 0;
}

int verity_layout_read_superblock(int fd, uint64_t hash_offset, struct verity_layout *out,
                                  struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    if (hash_offset % VERITY_SUPERBLOCK_SIZE)
        return vs_fail(err, -EINVAL, "verity superblock offset %llu is not 512-byte aligned",
                       (unsigned long long)hash_offset);
    uint8_t buf[VERITY_SUPERBLOCK_SIZE];
    int r = verity_pread_full(fd, buf, sizeof(buf), hash_offset);
    if (r < 0)
        return vs_fail(err, r == -EIO ? -EBADMSG : r, "cannot read the verity superblock at offset %llu: %s",
                       (unsigned long long)hash_offset, r == -EIO ? "file too short" : strerror(-r));
    r = verity_superblock_decode(buf, out, err);
    if (r < 0)
        return verity_error_wrap(err, r, "at offset %llu", (unsigned long long)hash_offset);
    out->hash_offset = hash_offset;
    r = verity_layout_complete(out, err);
    if (r < 0)
        return verity_error_wrap(err, -EBADMSG, "verity superblock at offset %llu",
                                 (unsigned long long)hash_offset);
    return 0;
}
