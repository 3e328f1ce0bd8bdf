/* veritysnap tarfs: the tardev-snapshotter "tarfs index" (AKS confidential containers), internal to tarfs/.
 * The layer file is [uncompressed tar][index][dm-verity tree][trailer]; this writes and reads the index part,
 * byte-identical to microsoft/kata-containers release/3.2.0 src/tardev-snapshotter/tarindex (which walks the
 * tar with the Rust `tar` crate 0.4.38), quirks included, because AKS policies hash that exact output. */
#ifndef VERITYSNAP_TARFS_TARDEV_INDEX_H
#define VERITYSNAP_TARFS_TARDEV_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/vs_error.h"

/* Index geometry: 32-byte inodes and dirents, the index padded to 4 KiB, then a 4 KiB block holding
 * {u64 inode_table_offset, u64 inode_count} (little-endian) at bytes [3584, 3600). */
#define TARDEV_INODE_SIZE 32u
#define TARDEV_DIRENT_SIZE 32u
#define TARDEV_BLOCK_SIZE 4096u
#define TARDEV_SUPER_OFFSET 3584u
#define TARDEV_INODE_FLAG_OPAQUE 0x1u

/* An index being built from one tar stream. */
struct tardev_index;

/* Creates an index builder. warning (may be NULL) is called per entry for content the format cannot carry or
 * will hide; with strict, the first warning fails the build with -EBADMSG instead. */
struct tardev_index *tardev_index_new(void (*warning)(void *ctx, const char *entry, const char *message),
                                      void *warning_ctx, bool strict, struct vs_error *err);

/* Frees the builder (NULL is fine). */
void tardev_index_free(struct tardev_index *idx);

/* Feeds the raw uncompressed tar bytes in order, in chunks of any size; file data is skipped, never kept.
 * Corrupt input: -EBADMSG naming the byte offset (later calls repeat it); strict: the first warning too. */
int tardev_index_feed(struct tardev_index *idx, const void *buf, size_t len, struct vs_error *err);

/* After the last byte: writes the index as one sequential stream from offset tar_size (= bytes fed); sets
 * *index_size (tar_size + it is a multiple of 4096) and *entries (tar entries read); either may be NULL. */
int tardev_index_finish(struct tardev_index *idx,
                        int (*write)(void *ctx, uint64_t offset, const void *data, size_t len,
                                     struct vs_error *err),
                        void *write_ctx, uint64_t *index_size, uint64_t *entries, struct vs_error *err);

/* One entry of a tarfs index as the guest sees it. offset is the inode's raw field: data offset (regular
 * file, symlink target), dirent table offset (directory) or major<<32|minor (devices). */
struct tardev_entry {
    const char *path; /* from the root, no leading slash */
    uint32_t mode;    /* S_IFMT bits | 0777 bits; 0 for parents the tar did not list */
    uint32_t uid, gid;
    uint64_t mtime;
    uint64_t size;
    uint64_t offset;
    bool opaque;             /* trusted.overlay.opaque=y */
    const char *link_target; /* symlinks only, else NULL */
    uint32_t rdev_major, rdev_minor;
};

/* Reader for `inspect --list`: fd holds tar + index (data_size bytes, no verity part); calls fn per entry
 * reachable from the root (not the root itself), breadth-first; fn's non-zero return stops it. */
int tardev_index_list(int fd, uint64_t data_size, int (*fn)(void *ctx, const struct tardev_entry *e),
                      void *ctx, struct vs_error *err);

#endif
