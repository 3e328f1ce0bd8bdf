#include "erofs_super.h"

#include <string.h>

#include "erofs_format.h"

uint32_t erofs_crc32c(uint32_t crc, const void *data, size_t len)
{
    static uint32_t table[256];
    if (!table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            table[i] = c;
        }
    }
    const uint8_t *p = data;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
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
