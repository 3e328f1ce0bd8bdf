/* The EROFS superblock (block 0) and its crc32c. */
#ifndef VERITYSNAP_TARFS_EROFS_SUPER_H
#define VERITYSNAP_TARFS_EROFS_SUPER_H

#include <stddef.h>
#include <stdint.h>

struct erofs_super_params {
    uint64_t root_nid;
    uint64_t inodes;
    int64_t epoch;        /* mtime of compact inodes */
    uint64_t blocks;      /* image blocks */
    uint64_t meta_blkaddr;
    uint8_t uuid[16];
};

/* Fills block0 (4096 bytes): zeros, the superblock at 1024, and the checksum over [1024, 4096). */
void erofs_super_build(const struct erofs_super_params *p, uint8_t *block0);

/* crc32c as the kernel's raw crc32c(seed, ...) computes it: reflected 0x82F63B78, no final xor. */
uint32_t erofs_crc32c(uint32_t crc, const void *data, size_t len);

#endif
