/* veritysnap tarfs: decodes an OCI layer (tar, tar+gzip, tar+zstd) or a directory tree and writes a read-only
 * layer image in one streaming pass: an EROFS image (4096-byte blocks) or the original tar with a tarfs index.
 * Knows nothing about dm-verity, gRPC or containerd: every image byte goes to a caller's sink, which may hash it. */
#ifndef VERITYSNAP_TARFS_TARFS_H
#define VERITYSNAP_TARFS_TARFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/vs_error.h"

#define TARFS_BLOCK_SIZE 4096u

enum tarfs_format {
    TARFS_FORMAT_EROFS = 0, /* EROFS, 4 KiB blocks, tails inlined */
    TARFS_FORMAT_TARFS = 1, /* original tar + tardev-compatible tarfs index (AKS Kata guests) */
};

enum tarfs_compression {
    TARFS_COMPRESSION_AUTO = 0, /* from magic bytes */
    TARFS_COMPRESSION_NONE,
    TARFS_COMPRESSION_GZIP,
    TARFS_COMPRESSION_ZSTD,
};

/* Where image bytes go. Writes never overlap. Offsets are absolute in the image. For EROFS every write is whole
 * 4096-byte blocks at block-aligned offsets, in any order (data first, metadata next, block 0 last); for tarfs the
 * writes are one sequential byte stream. Both formats end on a 4096-byte boundary. Returns 0 or a negative code. */
struct tarfs_sink {
    int (*write)(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err);
    void *ctx;
};

/* Called for content a format cannot carry or will hide (tarfs: xattrs, unreachable entries, skipped types).
 * With options.strict, the first warning becomes an -EBADMSG error instead. */
typedef void (*tarfs_warning_fn)(void *ctx, const char *entry, const char *message);

struct tarfs_options {
    enum tarfs_format format;
    enum tarfs_compression compression;
    bool strict;
    tarfs_warning_fn warning;
    void *warning_ctx;
    /* Bytes of small-file tails kept in memory until the metadata is written; past it, tails get their own data
     * block. Bounds memory on layers with very many small files. 0 means the default (24 MiB). */
    size_t tail_budget;
    /* Bytes the image may grow to; a layer that expands beyond it (a sparse file, a decompression bomb) is refused
     * with -EFBIG before it fills the disk. 0: no limit. */
    uint64_t max_image_size;
};

struct tarfs_result {
    enum tarfs_format format;
    uint64_t image_size;          /* bytes of the image (EROFS, or tar + index), a multiple of 4096 */
    uint64_t blocks;              /* image_size / 4096 */
    uint64_t entries;             /* tar entries read (or directory entries walked) */
    uint64_t uncompressed_size;   /* bytes of the uncompressed tar (0 for a directory) */
    uint8_t diff_id[32];          /* sha256 of the uncompressed tar; for a directory, a digest of the walked tree */
    enum tarfs_compression compression; /* what the input was */
};

/* Reads bytes of the layer; returns the count (0 at the end) or a negative code with err filled. */
typedef long (*tarfs_read_fn)(void *ctx, void *buf, size_t len, struct vs_error *err);

/* Converts a layer read through read_fn (compressed or not) into an image written to sink. */
int tarfs_convert_stream(tarfs_read_fn read_fn, void *read_ctx, const struct tarfs_options *opts,
                         const struct tarfs_sink *sink, struct tarfs_result *result, struct vs_error *err);

/* Same, reading from a file descriptor (a file or a pipe). */
int tarfs_convert_fd(int fd, const struct tarfs_options *opts, const struct tarfs_sink *sink,
                     struct tarfs_result *result, struct vs_error *err);

/* Converts one layer into both forms at once, reading and decompressing it once: the EROFS image to erofs_sink
 * and the tarfs form (the tar + tardev's index) to tarfs_sink, each as the single-format calls would write it.
 * opts->format is not used. */
int tarfs_convert_stream_both(tarfs_read_fn read_fn, void *read_ctx, const struct tarfs_options *opts,
                              const struct tarfs_sink *erofs_sink, const struct tarfs_sink *tarfs_sink,
                              struct tarfs_result *erofs_result, struct tarfs_result *tarfs_result,
                              struct vs_error *err);
int tarfs_convert_fd_both(int fd, const struct tarfs_options *opts, const struct tarfs_sink *erofs_sink,
                          const struct tarfs_sink *tarfs_sink, struct tarfs_result *erofs_result,
                          struct tarfs_result *tarfs_result, struct vs_error *err);

/* Converts a directory tree (an active snapshot's upper dir) into an EROFS image. Overlay whiteouts (0/0 char
 * devices) and trusted.overlay.opaque are kept; other trusted.overlay.* xattrs are dropped. */
int tarfs_convert_dir(const char *path, const struct tarfs_options *opts, const struct tarfs_sink *sink,
                      struct tarfs_result *result, struct vs_error *err);

/* What a layer image holds, read back from its own metadata (for inspect and verify). */
struct tarfs_image_info {
    enum tarfs_format format;
    uint64_t image_size;     /* erofs: the superblock's block count * 4096 */
    uint64_t inodes;
    uint64_t root_nid;
    uint64_t meta_blkaddr;
    int64_t epoch;           /* the superblock's time (compact inodes) */
    uint8_t uuid[16];
    uint32_t feature_compat, feature_incompat;
    bool checksum_ok;        /* superblock crc32c matches */
};

/* Reads the EROFS superblock at the start of fd; -EBADMSG when the file is not an EROFS image this reader knows. */
int tarfs_erofs_probe(int fd, struct tarfs_image_info *info, struct vs_error *err);

/* One file of an image, as inspect --list prints it. */
struct tarfs_entry {
    const char *path;        /* from the root, no leading slash; "" for the root */
    uint32_t mode;
    uint32_t uid, gid;
    int64_t mtime;
    uint32_t mtime_nsec;
    uint64_t size;
    uint32_t nlink;
    uint64_t ino;            /* erofs: nid; tarfs: index inode number */
    const char *link_target; /* symlinks only */
    uint32_t rdev_major, rdev_minor;
    bool opaque;             /* trusted.overlay.opaque=y */
    uint32_t xattr_count;
};

/* Walks the file tree of an image (erofs: from its metadata, depth first, sorted; tarfs: from the index, whose
 * data part is data_size bytes of fd), calling fn per entry; a nonzero return from fn stops the walk. */
int tarfs_list(int fd, enum tarfs_format format, uint64_t data_size,
               int (*fn)(void *ctx, const struct tarfs_entry *e), void *ctx, struct vs_error *err);

/* Parses "erofs" / "tarfs" and "gzip" / "zstd" / "none" / "auto" (also OCI media types); -EINVAL otherwise. */
int tarfs_format_parse(const char *name, enum tarfs_format *out);
const char *tarfs_format_name(enum tarfs_format format);
int tarfs_compression_from_media_type(const char *media_type, enum tarfs_compression *out);
const char *tarfs_compression_name(enum tarfs_compression c);

#endif
