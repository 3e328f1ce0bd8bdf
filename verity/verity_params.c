/* Parameters of a hash tree and the geometry that follows from them (F.1, F.2, F.5). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "verity/verity_internal.h"

void verity_params_default(struct verity_params *p)
{
    memset(p, 0, sizeof(*p));
    strcpy(p->hash_algorithm, "sha256");
    p->data_block_size = 4096;
    p->hash_block_size = 4096;
    p->salt_size = 32; /* zero bytes, as tardev and containerd use */
    p->format = 1;
    p->superblock = true;
}

static bool block_size_ok(uint32_t size)
{
    return size >= 512 && size <= 4096 && (size & (size - 1)) == 0;
}

uint32_t verity_digest_size(const struct verity_params *p)
{
    if (strcmp(p->hash_algorithm, "sha256") == 0)
        return 32;
    if (strcmp(p->hash_algorithm, "sha512") == 0)
        return 64;
    return 0;
}

int verity_params_check(const struct verity_params *p, struct vs_error *err)
{
    if (!memchr(p->hash_algorithm, '\0', sizeof(p->hash_algorithm)) || verity_digest_size(p) == 0)
        return vs_fail(err, -EINVAL, "verity: hash algorithm \"%.*s\" is not supported (sha256 or sha512)",
                       (int)sizeof(p->hash_algorithm), p->hash_algorithm);
    if (!block_size_ok(p->data_block_size))
        return vs_fail(err, -EINVAL, "verity: data block size %u is not a power of two in 512..4096",
                       p->data_block_size);
    if (!block_size_ok(p->hash_block_size))
        return vs_fail(err, -EINVAL, "verity: hash block size %u is not a power of two in 512..4096",
                       p->hash_block_size);
    if (p->salt_size > VERITY_MAX_SALT)
        return vs_fail(err, -EINVAL, "verity: salt of %u bytes is longer than %d", p->salt_size,
                       VERITY_MAX_SALT);
    if (p->format > 1)
        return vs_fail(err, -EINVAL, "verity: format %u is not 0 or 1", p->format);
    return 0;
}

int verity_geometry_compute(const struct verity_params *p, uint64_t data_blocks, struct verity_geometry *g,
                            struct vs_error *err)
{
    memset(g, 0, sizeof(*g));
    if (data_blocks == 0)
        return vs_fail(err, -EINVAL, "verity: a tree needs at least one data block");
    g->digest_size = verity_digest_size(p);
    uint32_t b = 0;
    while ((2u << b) * g->digest_size <= p->hash_block_size)
        b++;
    g->hash_per_block_bits = b;
    g->slot_size = p->format == 1 ? p->hash_block_size >> b : g->digest_size;

    /* Levels: the smallest L with ((N - 1) >> (L * b)) == 0; level i has ceil(N / 2^((i+1)b)) blocks. */
    uint64_t count = data_blocks;
    uint32_t levels = 0;
    while (levels * b < 64 && ((data_blocks - 1) >> (levels * b)) != 0) {
        count = ((count - 1) >> b) + 1;
        g->level_blocks[levels++] = count;
        if (levels > VERITY_MAX_LEVELS)
            return vs_fail(err, -EINVAL, "verity: more than %d tree levels", VERITY_MAX_LEVELS);
    }
    g->levels = levels;
    uint64_t start = 0;
    for (uint32_t i = levels; i-- > 0;) {
        g->level_start[i] = start;
        start += g->level_blocks[i];
    }
    g->tree_blocks = start;
    return 0;
}

int verity_layout_complete(struct verity_layout *l, struct vs_error *err)
{
    int r = verity_params_check(&l->params, err);
    if (r < 0)
        return r;
    struct verity_geometry g;
    r = verity_geometry_compute(&l->params, l->data_blocks, &g, err);
    if (r < 0)
        return r;
    uint32_t dbs = l->params.data_block_size, hbs = l->params.hash_block_size;
    if (l->data_blocks > UINT64_MAX / dbs || g.tree_blocks > UINT64_MAX / hbs / 2 ||
        l->hash_offset > UINT64_MAX / 2)
        return vs_fail(err, -EINVAL, "verity: %llu data blocks or hash offset %llu overflow 64 bits",
                       (unsigned long long)l->data_blocks, (unsigned long long)l->hash_offset);
    if (l->hash_offset < l->data_blocks * dbs)
        return vs_fail(err, -EINVAL, "verity: hash offset %llu overlaps the %llu data blocks (%llu bytes)",
                       (unsigned long long)l->hash_offset, (unsigned long long)l->data_blocks,
                       (unsigned long long)(l->data_blocks * dbs));
    if (l->params.superblock && l->hash_offset % VERITY_SUPERBLOCK_SIZE)
        return vs_fail(err, -EINVAL, "verity: superblock offset %llu is not 512-byte aligned",
                       (unsigned long long)l->hash_offset);
    if (l->params.superblock)
        l->hash_start_block = (l->hash_offset + VERITY_SUPERBLOCK_SIZE + hbs - 1) / hbs;
    else
        l->hash_start_block = l->hash_offset / hbs;
    if (l->hash_start_block * hbs < l->data_blocks * dbs)
        return vs_fail(err, -EINVAL, "verity: the tree at hash block %llu would overlap the data",
                       (unsigned long long)l->hash_start_block);
    l->tree_blocks = g.tree_blocks;
    l->file_size = (l->hash_start_block + g.tree_blocks) * hbs;
    l->digest_size = g.digest_size;
    return 0;
}

int verity_error_wrap(struct vs_error *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    vs_error_prefix(err, "%s", prefix);
    err->code = code;
    return code;
}
