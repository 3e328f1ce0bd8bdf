/* EROFS on-disk structures (uncompressed subset), little-endian; sizes checked at compile time.
 * Facts from the kernel's fs/erofs/erofs_fs.h and erofs-utils, as summarised in reference/erofs-verity.md. */
#ifndef VERITYSNAP_TARFS_EROFS_FORMAT_H
#define VERITYSNAP_TARFS_EROFS_FORMAT_H

#include <stdint.h>

/* The structs are written as they are in memory: the writer supports little-endian hosts only. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "EROFS structures are little-endian");

#define EROFS_SUPER_OFFSET 1024
#define EROFS_SUPER_MAGIC 0xE0F5E1E2u
#define EROFS_BLKSZBITS 12
#define EROFS_BLKSZ (1u << EROFS_BLKSZBITS)
#define EROFS_NULL_ADDR 0xFFFFFFFFu
#define EROFS_NAME_LEN 255
#define EROFS_SLOT 32 /* nids count 32-byte slots from meta_blkaddr */

#define EROFS_FEATURE_COMPAT_SB_CHKSUM 0x1u
#define EROFS_FEATURE_COMPAT_MTIME 0x2u

#define EROFS_INODE_LAYOUT_COMPACT 0
#define EROFS_INODE_LAYOUT_EXTENDED 1
#define EROFS_INODE_FLAT_PLAIN 0
#define EROFS_INODE_FLAT_INLINE 2

enum erofs_file_type {
    EROFS_FT_UNKNOWN = 0,
    EROFS_FT_REG_FILE = 1,
    EROFS_FT_DIR = 2,
    EROFS_FT_CHRDEV = 3,
    EROFS_FT_BLKDEV = 4,
    EROFS_FT_FIFO = 5,
    EROFS_FT_SOCK = 6,
    EROFS_FT_SYMLINK = 7,
};

enum erofs_xattr_index {
    EROFS_XATTR_INDEX_USER = 1,
    EROFS_XATTR_INDEX_POSIX_ACL_ACCESS = 2,
    EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT = 3,
    EROFS_XATTR_INDEX_TRUSTED = 4,
    EROFS_XATTR_INDEX_SECURITY = 6,
};

struct erofs_super_block {
    uint32_t magic;
    uint32_t checksum;        /* crc32c of [1024, 4096) with this field zero */
    uint32_t feature_compat;
    uint8_t blkszbits;
    uint8_t sb_extslots;
    uint16_t root_nid;
    uint64_t inos;
    uint64_t build_time;      /* compact inodes' mtime (before 6.15: all of them; since: the epoch) */
    uint32_t build_time_nsec;
    uint32_t blocks;
    uint32_t meta_blkaddr;
    uint32_t xattr_blkaddr;
    uint8_t uuid[16];
    uint8_t volume_name[16];
    uint32_t feature_incompat;
    uint16_t available_compr_algs; /* must stay 0 on uncompressed images */
    uint16_t extra_devices;
    uint16_t devt_slotoff;
    uint8_t dirblkbits;
    uint8_t xattr_prefix_count;
    uint32_t xattr_prefix_start;
    uint64_t packed_nid;
    uint8_t xattr_filter_reserved;
    uint8_t reserved2[23];
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_super_block) == 128, "erofs superblock is 128 bytes");

struct erofs_inode_compact {
    uint16_t i_format;
    uint16_t i_xattr_icount;
    uint16_t i_mode;
    uint16_t i_nlink;
    uint32_t i_size;
    uint32_t i_mtime;  /* reserved before 6.15; 0 means "the superblock's time" on every kernel */
    uint32_t i_u;      /* raw_blkaddr or rdev */
    uint32_t i_ino;
    uint16_t i_uid;
    uint16_t i_gid;
    uint32_t i_reserved2;
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_inode_compact) == 32, "compact inode is 32 bytes");

struct erofs_inode_extended {
    uint16_t i_format;
    uint16_t i_xattr_icount;
    uint16_t i_mode;
    uint16_t i_reserved; /* startblk_hi on 48-bit images: must be 0 here */
    uint64_t i_size;
    uint32_t i_u;
    uint32_t i_ino;
    uint32_t i_uid;
    uint32_t i_gid;
    uint64_t i_mtime;
    uint32_t i_mtime_nsec;
    uint32_t i_nlink;
    uint8_t i_reserved2[16];
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_inode_extended) == 64, "extended inode is 64 bytes");

struct erofs_xattr_ibody_header {
    uint32_t h_name_filter; /* 0: no bloom filter */
    uint8_t h_shared_count;
    uint8_t h_reserved2[7];
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_xattr_ibody_header) == 12, "xattr ibody header is 12 bytes");

struct erofs_xattr_entry {
    uint8_t e_name_len;
    uint8_t e_name_index;
    uint16_t e_value_size;
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_xattr_entry) == 4, "xattr entry header is 4 bytes");

struct erofs_dirent {
    uint64_t nid;
    uint16_t nameoff;
    uint8_t file_type;
    uint8_t reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct erofs_dirent) == 12, "dirent is 12 bytes");

/* The kernel's "new" 32-bit device encoding (new_encode_dev). */
static inline uint32_t erofs_encode_dev(uint32_t major, uint32_t minor)
{
    return (minor & 0xffu) | (major << 8) | ((minor & ~0xffu) << 12);
}

#endif
