#include "erofs_super.h"

#include <string.h>

#include "erofs_format.h"

/* Bitwise, without a table: it covers 3 KiB once per image, and a lazily built table shared by layers
 * converted on several threads at once was a race (a thread saw a half-built table and wrote a wrong
 * checksum). */
uint32_t erofs_crc32c(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return crc;
}

void erofs_super_build(const struct erofs_super_params *p, uint8_t *block0)
{
    memset(block0, 0, EROFS_BLKSZ);
    struct erofs_super_block sb = {
        .magic = EROFS_SUPER_MAGIC,
        .feature_compat = EROFS_FEATURE_COMPAT_SB_CHKSUM | EROFS_FEATURE_COMPAT_MTIME,
        .blkszbits = EROFS_BLKSZBITS,
        .root_nid = (uint16_t)p->root_nid,
        .inos = p->inodes,
        .build_time = (uint64_t)p->epoch,
        .blocks = (uint32_t)p->blocks,
        .meta_blkaddr = (uint32_t)p->meta_blkaddr,
    };
    memcpy(sb.uuid, p->uuid, sizeof(sb.uuid));
    memcpy(block0 + EROFS_SUPER_OFFSET, &sb, sizeof(sb));
    uint32_t crc = erofs_crc32c(~0u, block0 + EROFS_SUPER_OFFSET, EROFS_BLKSZ - EROFS_SUPER_OFFSET);
    memcpy(block0 + EROFS_SUPER_OFFSET + 4, &crc, 4);
}
