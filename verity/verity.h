/* veritysnap verity: dm-verity hash trees built while a layer image is written, the cryptsetup v1 superblock
 * and the tardev trailer, userspace verification of layer files, and activation of read-only dm-verity
 * devices. Knows nothing about tar or EROFS: it sees data blocks and a file. */
#ifndef VERITYSNAP_VERITY_VERITY_H
#define VERITYSNAP_VERITY_VERITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/vs_error.h"

#define VERITY_MAX_DIGEST 64
#define VERITY_MAX_SALT 256
#define VERITY_SUPERBLOCK_SIZE 512
#define VERITY_TARDEV_TRAILER_SIZE 4096

/* Parameters of one hash tree, as veritysetup names them. */
struct verity_params {
    char hash_algorithm[16];  /* "sha256" (default) or "sha512" */
    uint32_t data_block_size; /* power of two, 512..4096; default 4096 */
    uint32_t hash_block_size; /* power of two, 512..4096; default 4096 */
    uint8_t salt[VERITY_MAX_SALT];
    uint32_t salt_size; /* 0..256; default 32 zero bytes */
    uint32_t format;    /* 1 (salt before data, default) or 0 (Chrome OS: salt after) */
    bool superblock;    /* cryptsetup v1 superblock at the hash offset; default true */
};

/* Where a tree lives in a layer file and what it hashes to. */
struct verity_layout {
    struct verity_params params;
    uint64_t data_blocks;      /* data blocks covered (data_block_size each) */
    uint64_t hash_offset;      /* bytes: the superblock's offset, or the tree's when there is none */
    uint64_t hash_start_block; /* table's <hash_start_block>, in hash blocks */
    uint64_t tree_blocks;      /* hash blocks in the tree */
    uint64_t file_size;        /* bytes: hash_offset + superblock area + tree */
    uint8_t root_hash[VERITY_MAX_DIGEST];
    uint32_t digest_size;
    uint8_t uuid[16]; /* superblock UUID (derived from the root hash) */
};

/* Fills p with the defaults: sha256, 4096/4096, 32 zero bytes of salt, format 1, superblock on. */
void verity_params_default(struct verity_params *p);

/* Checks p (sizes, algorithm, salt length); -EINVAL with a message naming the bad parameter. */
int verity_params_check(const struct verity_params *p, struct vs_error *err);

/* Digest size in bytes of the configured algorithm (32 or 64). */
uint32_t verity_digest_size(const struct verity_params *p);

/* Streaming tree builder. Data blocks may arrive in any order, each once; memory is the level-0 hashes
 * (digest size per data block) plus, during finish, the upper levels. */
struct verity_builder;

struct verity_builder *verity_builder_new(const struct verity_params *p, struct vs_error *err);
void verity_builder_free(struct verity_builder *b);

/* Hashes level 0 in a second thread fed by a bounded queue (on) or in the caller's thread (off, the default).
 * The tree is the same either way; it pays only while a core is idle and the caller busy. */
void verity_builder_set_hash_thread(struct verity_builder *b, bool on);

/* Hashes data block `index` (data_block_size bytes at `block`, copied: the buffer may be reused at once). */
int verity_builder_add_block(struct verity_builder *b, uint64_t index, const void *block,
                             struct vs_error *err);

/* Hashes `len` bytes (a multiple of data_block_size) starting at data block `first_index`. */
int verity_builder_add_blocks(struct verity_builder *b, uint64_t first_index, const void *data, size_t len,
                              struct vs_error *err);

/* Writes the function's output somewhere (usually pwrite into the layer file). */
typedef int (*verity_write_fn)(void *ctx, uint64_t offset, const void *data, size_t len,
                               struct vs_error *err);

/* Finishes a tree over data_blocks blocks (all must have been added), writes [superblock][tree] at
 * hash_offset (rounded up to a hash block; must be >= data_blocks * data_block_size) through write, and fills
 * out. */
int verity_builder_finish(struct verity_builder *b, uint64_t data_blocks, uint64_t hash_offset,
                          verity_write_fn write, void *write_ctx, struct verity_layout *out,
                          struct vs_error *err);

/* Builds the tardev trailer block (4096 bytes) for a layout: bytes [3584,3600) hold little-endian
 * {u32 data_block_size, u32 hash_block_size, u64 data_blocks}; the rest is zero. */
void verity_tardev_trailer(const struct verity_layout *layout, uint8_t out[VERITY_TARDEV_TRAILER_SIZE]);

/* Reads the layout of an existing layer file: from a cryptsetup superblock at hash_offset (superblock =
 * true), or from the tardev trailer at the end of the file (sha256, no superblock, zero salt, tree at
 * ceil(data / hbs) blocks; file_size then excludes the trailer, which must follow the tree exactly). Neither
 * holds the root hash: the caller fills root_hash (label, sidecar). -EBADMSG / -ENOTSUP with a message naming
 * the bad field. */
int verity_layout_read_superblock(int fd, uint64_t hash_offset, struct verity_layout *out,
                                  struct vs_error *err);
int verity_layout_read_tardev(int fd, struct verity_layout *out, struct vs_error *err);

/* Recomputes every data and hash block of a layer file against its tree and the root hash
 * (layout->root_hash), and requires zero spare bytes in hash blocks as veritysetup does; with a superblock,
 * its fields must match the layout (the UUID only when layout->uuid is not all zero). Uses params,
 * data_blocks, hash_offset and root_hash; the rest is derived. The tree is checked top down before the data
 * under it, so the first bad block is the one reported. On a mismatch or a short file returns -EBADMSG and
 * says in err which block is bad and whether it is data or tree. */
struct verity_verify_report {
    uint64_t data_blocks_checked;
    uint64_t hash_blocks_checked;
    bool bad;
    bool bad_in_tree;   /* true: a hash block (or the root), false: a data block */
    uint64_t bad_block; /* index of the first bad block: a data block number, or for the tree the block's
                         * index in the file in hash_block_size units (the superblock's is
                         * hash_offset / hash_block_size, the top tree block's hash_start_block) */
};
int verity_verify_fd(int fd, const struct verity_layout *layout, struct verity_verify_report *report,
                     struct vs_error *err);

/* The dm table line (`<start> <len> verity <version> <data> <hash> <dbs> <hbs> <blocks> <hash_start> <alg>
 * <root> <salt|->`) for a device path, and a `veritysetup verify` command line for a file (quoted for sh when
 * needed). Return 0, -EINVAL for an inconsistent layout, or -ENOSPC when cap is too small. */
int verity_table_line(const struct verity_layout *layout, const char *device, char *out, size_t cap);
int verity_veritysetup_command(const struct verity_layout *layout, const char *file, char *out, size_t cap);

/* Activates a read-only dm-verity device `name` over a layer file (attached to a loop device), and tears it
 * down. Where the kernel has no device-mapper, returns -ENODEV with a clear message. */
int verity_activate(const char *name, const char *file, const struct verity_layout *layout, char *device_path,
                    size_t device_path_cap, struct vs_error *err);
int verity_deactivate(const char *name, struct vs_error *err);

/* Lists active dm-verity devices whose name starts with prefix (callback per name); removes them all (trying
 * every one, returning the first failure). -ENODEV without device-mapper. */
int verity_list_devices(const char *prefix, void (*fn)(void *ctx, const char *name), void *ctx,
                        struct vs_error *err);
int verity_remove_devices(const char *prefix, struct vs_error *err);

/* Writes a sidecar JSON (`<layer>.dmverity`: roothash, hashoffset, and the other parameters) atomically, and
 * reads it back. hashoffset is the superblock's byte offset as containerd uses it (the tree's without one);
 * containerd's two-key sidecar (roothash, hashoffset) reads with its defaults (sha256, 4096, 32 zero bytes of
 * salt, superblock, data_blocks = hashoffset / 4096). -ENOENT when missing, -EBADMSG when malformed. */
int verity_sidecar_write(const char *layer_path, const struct verity_layout *layout, struct vs_error *err);
int verity_sidecar_read(const char *layer_path, struct verity_layout *out, struct vs_error *err);

#endif
