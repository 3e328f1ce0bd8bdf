/* veritysnap verity, private: the salted block hasher, the tree geometry and the on-disk superblock shared by
 * the builder, the verifier and the readers. Not part of the public API. */
#ifndef VERITYSNAP_VERITY_VERITY_INTERNAL_H
#define VERITYSNAP_VERITY_VERITY_INTERNAL_H

#include <openssl/evp.h>

#include "verity/verity.h"

#define VERITY_MAX_LEVELS 63

/* Hashes blocks the way dm-verity does: v1 H(salt || block), v0 H(block || salt). One per thread. */
struct verity_hasher {
    EVP_MD *md;
    EVP_MD_CTX *primed; /* v1: already fed the salt, copied for every block */
    EVP_MD_CTX *work;
    uint8_t salt[VERITY_MAX_SALT];
    uint32_t salt_size;
    uint32_t format;
    uint32_t digest_size;
};

/* Sets up h for p's algorithm, salt and format; -EINVAL / -ENOMEM with a message. */
int verity_hasher_init(struct verity_hasher *h, const struct verity_params *p, struct vs_error *err);
void verity_hasher_fini(struct verity_hasher *h);

/* Digest of one block (data or hash) of len bytes into out (digest_size bytes); -EIO when OpenSSL fails. */
int verity_hasher_block(struct verity_hasher *h, const void *block, size_t len, uint8_t *out);

/* Shape of a tree: level 0 holds the data-block digests, level levels-1 is the single top block. On disk the
 * levels are stored top first, so level i starts at tree block level_start[i]. */
struct verity_geometry {
    uint32_t digest_size;
    uint32_t hash_per_block_bits; /* b: 2^b digests per hash block */
    uint32_t slot_size; /* bytes between digests in a hash block (v1: D rounded up to a power of two) */
    uint32_t levels;
    uint64_t level_blocks[VERITY_MAX_LEVELS];
    uint64_t level_start[VERITY_MAX_LEVELS];
    uint64_t tree_blocks;
};

/* Computes the geometry of a tree over data_blocks (>= 1) blocks with params p (already checked). */
int verity_geometry_compute(const struct verity_params *p, uint64_t data_blocks, struct verity_geometry *g,
                            struct vs_error *err);

/* Derives hash_start_block, tree_blocks, file_size and digest_size of l from its params, data_blocks and
 * hash_offset (F.5: with a superblock the tree starts at the next hash block after it, without one at
 * floor(offset / hbs)). */
int verity_layout_complete(struct verity_layout *l, struct vs_error *err);

/* The cryptsetup v1 superblock (F.4), all integers little-endian. */
struct verity_sb {
    uint8_t signature[8]; /* "verity\0\0" */
    uint32_t version;     /* 1 */
    uint32_t hash_type;   /* 0 Chrome OS, 1 normal */
    uint8_t uuid[16];
    uint8_t algorithm[32];
    uint32_t data_block_size;
    uint32_t hash_block_size;
    uint64_t data_blocks;
    uint16_t salt_size;
    uint8_t pad1[6];
    uint8_t salt[256];
    uint8_t pad2[168];
};
_Static_assert(sizeof(struct verity_sb) == VERITY_SUPERBLOCK_SIZE, "verity superblock is 512 bytes");

/* Encodes the superblock of a finished layout into out (512 bytes). */
void verity_superblock_encode(const struct verity_layout *l, uint8_t out[VERITY_SUPERBLOCK_SIZE]);

/* Decodes and validates a superblock into l->params, l->data_blocks and l->uuid; -EBADMSG / -ENOTSUP with a
 * message. */
int verity_superblock_decode(const uint8_t in[VERITY_SUPERBLOCK_SIZE], struct verity_layout *l,
                             struct vs_error *err);

/* The superblock UUID veritysnap writes, derived from the root hash (see verity_superblock.c). */
void verity_uuid_from_root(const uint8_t *root_hash, uint32_t digest_size, uint8_t uuid[16]);

/* Prefixes err's message with the formatted context and sets its code to code; returns code (err may be
 * NULL). */
int verity_error_wrap(struct vs_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* pread/pwrite of exactly len bytes; -errno, or -EIO on a short read (end of file). */
int verity_pread_full(int fd, void *buf, size_t len, uint64_t offset);

#endif
