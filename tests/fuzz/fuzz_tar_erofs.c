/* libFuzzer target: an arbitrary layer (tar, or tar+gzip / tar+zstd by magic) through tarfs_convert_stream into
 * EROFS. The layer is read in uneven chunks; the sink holds the converter to the contract in tarfs.h (whole 4096-byte
 * blocks at block-aligned offsets, no block written twice, block 0 last and holding an EROFS superblock that agrees
 * with the result) and discards the bytes. Any broken promise aborts, so libFuzzer records the input. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tarfs/tarfs.h"

/* Images past this are refused by the sink (the converter must fail cleanly): keeps sparse-file and decompression
 * bombs from turning into timeouts while still crossing the interesting 4 GiB-free size classes. */
#define SINK_LIMIT (64u << 20)
#define SINK_BLOCKS (SINK_LIMIT / TARFS_BLOCK_SIZE)
#define EROFS_MAGIC 0xE0F5E1E2u

struct reader {
    const uint8_t *data;
    size_t size, pos;
    uint32_t rng;
};

struct sink_state {
    uint8_t written[SINK_BLOCKS / 8];
    uint64_t end;          /* highest byte written + 1 */
    uint64_t writes;
    int block0_seen;
    uint8_t block0[TARFS_BLOCK_SIZE];
};

static struct sink_state sink_state;

#define CHECK(cond, ...)                                                                                              \
    do {                                                                                                              \
        if (!(cond)) {                                                                                                \
            fprintf(stderr, "fuzz_tar_erofs: %s:%d: broken promise: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                                             \
            fputc('\n', stderr);                                                                                      \
            abort();                                                                                                  \
        }                                                                                                             \
    } while (0)

/* Short, uneven reads, as from a pipe or a network stream: 1, 7, 512, 4096, 65536 bytes or the rest. */
static long read_chunk(void *ctx, void *buf, size_t len, struct vs_error *err)
{
    (void)err;
    struct reader *r = ctx;
    static const size_t sizes[] = {1, 7, 512, 4096, 65536, SIZE_MAX};
    r->rng = r->rng * 1103515245u + 12345u;
    size_t n = sizes[(r->rng >> 16) % 6];
    if (n > len)
        n = len;
    if (n > r->size - r->pos)
        n = r->size - r->pos;
    memcpy(buf, r->data + r->pos, n);
    r->pos += n;
    return (long)n;
}

static int sink_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    struct sink_state *s = ctx;
    CHECK(data != NULL && len > 0, "write of %zu bytes at %llu", len, (unsigned long long)offset);
    CHECK(offset % TARFS_BLOCK_SIZE == 0 && len % TARFS_BLOCK_SIZE == 0, "unaligned write of %zu bytes at %llu",
          len, (unsigned long long)offset);
    CHECK(!s->block0_seen, "write at %llu after block 0 (block 0 must be last)", (unsigned long long)offset);
    if (offset + len > SINK_LIMIT || offset + len < offset)
        return vs_fail(err, -EFBIG, "fuzz sink: image larger than %u bytes", SINK_LIMIT);
    for (uint64_t b = offset / TARFS_BLOCK_SIZE; b < (offset + len) / TARFS_BLOCK_SIZE; b++) {
        CHECK(!(s->written[b / 8] & (1u << (b % 8))), "block %llu written twice", (unsigned long long)b);
        s->written[b / 8] |= (uint8_t)(1u << (b % 8));
    }
    /* Touch every byte so ASan catches a sink handed memory that is freed or too short. */
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < len; i += 512)
        sum ^= ((const uint8_t *)data)[i] ^ ((const uint8_t *)data)[i + 511];
    (void)sum;
    if (offset == 0) {
        memcpy(s->block0, data, TARFS_BLOCK_SIZE);
        s->block0_seen = 1;
    }
    if (offset + len > s->end)
        s->end = offset + len;
    s->writes++;
    return 0;
}

static void on_warning(void *ctx, const char *entry, const char *message)
{
    (void)ctx;
    CHECK(entry != NULL && message != NULL, "warning without entry or message");
    CHECK(strlen(message) < 4096, "unterminated warning");
    (void)strlen(entry);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(&sink_state, 0, sizeof(sink_state));
    struct reader r = {.data = data, .size = size, .pos = 0, .rng = (uint32_t)size * 2654435761u};
    /* The tail budget and strictness follow from the input's length, so every input replays the same way. */
    static const size_t budgets[] = {0, TARFS_BLOCK_SIZE, 64 * 1024};
    struct tarfs_options opts = {
        .format = TARFS_FORMAT_EROFS,
        .compression = TARFS_COMPRESSION_AUTO,
        .strict = (size & 8) != 0,
        .warning = on_warning,
        .tail_budget = budgets[size % 3],
    };
    struct tarfs_sink sink = {.write = sink_write, .ctx = &sink_state};
    struct tarfs_result res;
    struct vs_error err = {0};

    int rc = tarfs_convert_stream(read_chunk, &r, &opts, &sink, &res, &err);
    if (rc != 0) {
        CHECK(rc < 0, "positive return %d", rc);
        CHECK(memchr(err.message, 0, sizeof(err.message)) != NULL, "unterminated error message");
        CHECK(err.message[0] != 0, "error %d without a message", rc);
        return 0;
    }
    CHECK(res.format == TARFS_FORMAT_EROFS, "result format %d", (int)res.format);
    CHECK(res.image_size % TARFS_BLOCK_SIZE == 0 && res.image_size > 0, "image_size %llu",
          (unsigned long long)res.image_size);
    CHECK(res.blocks * TARFS_BLOCK_SIZE == res.image_size, "blocks %llu for image_size %llu",
          (unsigned long long)res.blocks, (unsigned long long)res.image_size);
    CHECK(sink_state.end <= res.image_size, "wrote up to %llu past image_size %llu",
          (unsigned long long)sink_state.end, (unsigned long long)res.image_size);
    CHECK(sink_state.block0_seen, "no superblock block written");
    /* diff_id covers the whole blob: success means every input byte was read (trailing junk is an error). */
    CHECK(r.pos == r.size, "success with %zu of %zu bytes unread", r.size - r.pos, r.size);
    const uint8_t *sb = sink_state.block0 + 1024;
    CHECK(le32(sb) == EROFS_MAGIC, "superblock magic %08x", le32(sb));
    CHECK(sb[12] == 12, "blkszbits %u", sb[12]);
    CHECK(le32(sb + 36) == res.blocks, "superblock blocks %u, result blocks %llu", le32(sb + 36),
          (unsigned long long)res.blocks);
    return 0;
}
