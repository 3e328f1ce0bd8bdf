/* The streaming tree builder: level-0 digests as data blocks arrive (in any order), the upper levels, the
 * superblock and the write-out at finish.
 * Level 0 is the whole cost: SHA-256 at ~1.2 GB/s per CPU second here, the speed of `openssl speed`. A second
 * hashing thread (opt-in, verity_builder_set_hash_thread) takes that off a caller that also decompresses and
 * computes the diff ID, but copying each block into its queue costs 15-25% more CPU (measured with
 * tests/verity/verity_bench), which is a loss when layers are unpacked in parallel or the machine is busy; so
 * it is off by default. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "verity/verity_internal.h"

/* Hash blocks are produced and written in runs of this many bytes. */
#define BUILDER_WRITE_CHUNK (1u << 20)
/* Data blocks queued for the hashing thread (256 x 4 KiB = 1 MiB). A sleeping thread is woken when WAKE_BATCH
 * blocks wait (or at a drain); a blocked caller when the queue is half empty. */
#define QUEUE_SLOTS 256
#define WAKE_BATCH 32

struct hash_queue {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    uint8_t *slots; /* QUEUE_SLOTS data blocks */
    uint64_t index[QUEUE_SLOTS];
    unsigned head, tail, count;
    bool stop, flush;
    bool worker_waiting,
        producer_waiting; /* wake only a waiting side, in batches, to keep futex calls rare */
    int error;            /* OpenSSL failed in the thread */
    uint64_t error_index;
};

struct verity_builder {
    struct verity_params params;
    struct verity_hasher hasher;
    uint32_t digest_size;
    uint8_t *digests;  /* level 0: digest_size bytes per data block */
    uint64_t *added;   /* one bit per data block */
    uint64_t capacity; /* blocks that digests and added have room for (a multiple of 64) */
    uint64_t count;    /* blocks added */
    uint64_t end;      /* highest index added + 1 */
    bool want_thread;
    bool thread_running;
    struct hash_queue q;
    struct verity_hasher thread_hasher;
};

struct verity_builder *verity_builder_new(const struct verity_params *p, struct vs_error *err)
{
    struct verity_builder *b = calloc(1, sizeof(*b));
    if (!b) {
        vs_fail(err, -ENOMEM, "verity: out of memory");
        return NULL;
    }
    b->params = *p;
    if (verity_hasher_init(&b->hasher, p, err) < 0) {
        free(b);
        return NULL;
    }
    b->digest_size = b->hasher.digest_size;
    return b;
}

static void *hash_thread_run(void *arg)
{
    struct verity_builder *b = arg;
    struct hash_queue *q = &b->q;
    uint32_t dbs = b->params.data_block_size, D = b->digest_size;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->count == 0 ? !q->stop : q->count < WAKE_BATCH && !q->flush && !q->stop) {
            q->worker_waiting = true;
            pthread_cond_wait(&q->not_empty, &q->lock);
            q->worker_waiting = false;
        }
        if (q->count == 0)
            break;
        /* Take every queued block up to the ring's end; the producer only writes free slots meanwhile, and
         * the digest array is only reallocated when the queue is empty. */
        unsigned first = q->tail, n = q->count < QUEUE_SLOTS - first ? q->count : QUEUE_SLOTS - first;
        uint8_t *digests = b->digests;
        pthread_mutex_unlock(&q->lock);
        int error = 0;
        uint64_t error_index = 0;
        for (unsigned i = first; i < first + n; i++)
            if (verity_hasher_block(&b->thread_hasher, q->slots + (size_t)i * dbs, dbs,
                                    digests + q->index[i] * D) < 0 &&
                !error) {
                error = -EIO;
                error_index = q->index[i];
            }
        pthread_mutex_lock(&q->lock);
        if (error && !q->error) {
            q->error = error;
            q->error_index = error_index;
        }
        q->tail = (first + n) % QUEUE_SLOTS;
        q->count -= n;
        if (q->producer_waiting && q->count <= QUEUE_SLOTS / 2)
            pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

static bool hash_thread_start(struct verity_builder *b)
{
    struct hash_queue *q = &b->q;
    memset(q, 0, sizeof(*q));
    q->slots = malloc((size_t)QUEUE_SLOTS * b->params.data_block_size);
    if (!q->slots || verity_hasher_init(&b->thread_hasher, &b->params, NULL) < 0) {
        free(q->slots);
        return false;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    if (pthread_create(&q->thread, NULL, hash_thread_run, b) != 0) {
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->not_empty);
        pthread_cond_destroy(&q->not_full);
        verity_hasher_fini(&b->thread_hasher);
        free(q->slots);
        return false;
    }
    b->thread_running = true;
    return true;
}

/* Waits until every queued block is hashed; returns the thread's error and the block it failed on. */
static int hash_thread_drain(struct verity_builder *b, uint64_t *error_index)
{
    if (!b->thread_running)
        return 0;
    struct hash_queue *q = &b->q;
    pthread_mutex_lock(&q->lock);
    q->flush = true;
    if (q->worker_waiting)
        pthread_cond_signal(&q->not_empty);
    q->producer_waiting = true;
    while (q->count > 0)
        pthread_cond_wait(&q->not_full, &q->lock);
    q->producer_waiting = false;
    q->flush = false;
    int error = q->error;
    *error_index = q->error_index;
    pthread_mutex_unlock(&q->lock);
    return error;
}

static void hash_thread_stop(struct verity_builder *b)
{
    if (!b->thread_running)
        return;
    struct hash_queue *q = &b->q;
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    verity_hasher_fini(&b->thread_hasher);
    free(q->slots);
    b->thread_running = false;
}

void verity_builder_set_hash_thread(struct verity_builder *b, bool on)
{
    if (!on)
        hash_thread_stop(b);
    b->want_thread = on;
}

void verity_builder_free(struct verity_builder *b)
{
    if (!b)
        return;
    hash_thread_stop(b);
    verity_hasher_fini(&b->hasher);
    free(b->digests);
    free(b->added);
    free(b);
}

static int builder_reserve(struct verity_builder *b, uint64_t index, struct vs_error *err)
{
    if (index < b->capacity)
        return 0;
    if (index >= (UINT64_MAX >> 8) / b->digest_size)
        return vs_fail(err, -EINVAL, "verity: data block index %llu is out of range",
                       (unsigned long long)index);
    uint64_t cap = b->capacity ? b->capacity : 1024;
    while (cap <= index)
        cap *= 2;
    /* The hashing thread writes into digests: let it finish before the array moves. */
    uint64_t bad = 0;
    if (hash_thread_drain(b, &bad) < 0)
        return vs_fail(err, -EIO, "verity: OpenSSL failed to hash data block %llu", (unsigned long long)bad);
    uint8_t *d = realloc(b->digests, cap * b->digest_size);
    if (!d)
        return vs_fail(err, -ENOMEM, "verity: out of memory for %llu block digests", (unsigned long long)cap);
    b->digests = d;
    uint64_t *bits = realloc(b->added, cap / 64 * sizeof(uint64_t));
    if (!bits)
        return vs_fail(err, -ENOMEM, "verity: out of memory for %llu block digests", (unsigned long long)cap);
    memset(bits + b->capacity / 64, 0, (cap - b->capacity) / 64 * sizeof(uint64_t));
    b->added = bits;
    b->capacity = cap;
    return 0;
}

static void hash_thread_push(struct verity_builder *b, uint64_t index, const void *block)
{
    struct hash_queue *q = &b->q;
    uint32_t dbs = b->params.data_block_size;
    pthread_mutex_lock(&q->lock);
    if (q->count == QUEUE_SLOTS) {
        q->producer_waiting = true;
        while (q->count > QUEUE_SLOTS / 2)
            pthread_cond_wait(&q->not_full, &q->lock);
        q->producer_waiting = false;
    }
    memcpy(q->slots + (size_t)q->head * dbs, block, dbs);
    q->index[q->head] = index;
    q->head = (q->head + 1) % QUEUE_SLOTS;
    q->count++;
    if (q->worker_waiting && q->count >= WAKE_BATCH)
        pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

int verity_builder_add_block(struct verity_builder *b, uint64_t index, const void *block,
                             struct vs_error *err)
{
    int r = builder_reserve(b, index, err);
    if (r < 0)
        return r;
    uint64_t bit = UINT64_C(1) << (index % 64);
    if (b->added[index / 64] & bit)
        return vs_fail(err, -EINVAL, "verity: data block %llu was added twice", (unsigned long long)index);
    if (b->want_thread && !b->thread_running && !hash_thread_start(b))
        b->want_thread = false;
    if (b->thread_running)
        hash_thread_push(b, index, block);
    else if (verity_hasher_block(&b->hasher, block, b->params.data_block_size,
                                 b->digests + index * b->digest_size) < 0)
        return vs_fail(err, -EIO, "verity: OpenSSL failed to hash data block %llu",
                       (unsigned long long)index);
    b->added[index / 64] |= bit;
    b->count++;
    if (index + 1 > b->end)
        b->end = index + 1;
    return 0;
}

int verity_builder_add_blocks(struct verity_builder *b, uint64_t first_index, const void *data, size_t len,
                              struct vs_error *err)
{
    uint32_t dbs = b->params.data_block_size;
    if (len % dbs)
        return vs_fail(err, -EINVAL,
                       "verity: %zu bytes at data block %llu are not a multiple of the %u-byte block", len,
                       (unsigned long long)first_index, dbs);
    const uint8_t *p = data;
    for (size_t i = 0; i < len / dbs; i++) {
        int r = verity_builder_add_block(b, first_index + i, p + i * dbs, err);
        if (r < 0)
            return r;
    }
    return 0;
}

static int builder_check_complete(const struct verity_builder *b, uint64_t data_blocks, struct vs_error *err)
{
    if (b->end > data_blocks)
        return vs_fail(err, -EINVAL, "verity: data block %llu was added but the tree covers only %llu blocks",
                       (unsigned long long)(b->end - 1), (unsigned long long)data_blocks);
    if (b->count == data_blocks)
        return 0;
    for (uint64_t w = 0; w * 64 < data_blocks; w++) {
        if (b->added && w * 64 < b->capacity && b->added[w] == UINT64_MAX)
            continue;
        uint64_t bits = b->added && w * 64 < b->capacity ? b->added[w] : 0;
        uint64_t missing = w * 64 + (uint64_t)__builtin_ctzll(~bits);
        return vs_fail(err, -EINVAL, "verity: data block %llu of %llu was never added",
                       (unsigned long long)missing, (unsigned long long)data_blocks);
    }
    return vs_fail(err, -EINVAL, "verity: %llu blocks added for %llu", (unsigned long long)b->count,
                   (unsigned long long)data_blocks);
}

/* Builds level `level` from the digests of the level below (children), writes its blocks, returns its
 * digests. */
static int builder_level(struct verity_builder *b, const struct verity_geometry *g, uint32_t level,
                         const uint8_t *children, uint64_t child_count, uint64_t first_byte,
                         verity_write_fn write, void *write_ctx, uint8_t **out, struct vs_error *err)
{
    uint32_t hbs = b->params.hash_block_size, D = g->digest_size;
    uint64_t blocks = g->level_blocks[level], per_block = UINT64_C(1) << g->hash_per_block_bits;
    uint64_t run = BUILDER_WRITE_CHUNK / hbs;
    uint8_t *digests = malloc(blocks * D);
    uint8_t *buf = malloc((size_t)(run < blocks ? run : blocks) * hbs);
    int r = 0;
    if (!digests || !buf) {
        r = vs_fail(err, -ENOMEM, "verity: out of memory for tree level %u (%llu blocks)", level,
                    (unsigned long long)blocks);
        goto out;
    }
    for (uint64_t first = 0; first < blocks; first += run) {
        uint64_t n = blocks - first < run ? blocks - first : run;
        memset(buf, 0, (size_t)n * hbs);
        for (uint64_t k = first; k < first + n; k++) {
            uint8_t *block = buf + (k - first) * hbs;
            uint64_t c0 = k * per_block, c1 = c0 + per_block < child_count ? c0 + per_block : child_count;
            for (uint64_t c = c0; c < c1; c++)
                memcpy(block + (c - c0) * g->slot_size, children + c * D, D);
            if (verity_hasher_block(&b->hasher, block, hbs, digests + k * D) < 0) {
                r = vs_fail(err, -EIO, "verity: OpenSSL failed to hash a tree block");
                goto out;
            }
        }
        r = write(write_ctx, first_byte + first * hbs, buf, (size_t)n * hbs, err);
        if (r < 0)
            goto out;
    }
out:
    free(buf);
    if (r < 0) {
        free(digests);
        digests = NULL;
    }
    *out = digests;
    return r;
}

int verity_builder_finish(struct verity_builder *b, uint64_t data_blocks, uint64_t hash_offset,
                          verity_write_fn write, void *write_ctx, struct verity_layout *out,
                          struct vs_error *err)
{
    uint64_t bad = 0;
    int r = hash_thread_drain(b, &bad);
    hash_thread_stop(b);
    if (r < 0)
        return vs_fail(err, r, "verity: OpenSSL failed to hash data block %llu", (unsigned long long)bad);
    r = builder_check_complete(b, data_blocks, err);
    if (r < 0)
        return r;
    uint32_t hbs = b->params.hash_block_size;
    struct verity_layout l;
    memset(&l, 0, sizeof(l));
    l.params = b->params;
    l.data_blocks = data_blocks;
    if (hash_offset > UINT64_MAX - hbs)
        return vs_fail(err, -EINVAL, "verity: hash offset %llu is out of range",
                       (unsigned long long)hash_offset);
    l.hash_offset = (hash_offset + hbs - 1) / hbs * hbs;
    r = verity_layout_complete(&l, err);
    if (r < 0)
        return r;
    struct verity_geometry g;
    r = verity_geometry_compute(&l.params, data_blocks, &g, err);
    if (r < 0)
        return r;

    const uint8_t *children = b->digests;
    uint64_t child_count = data_blocks;
    uint8_t *level_digests = NULL;
    for (uint32_t i = 0; i < g.levels; i++) {
        uint8_t *next = NULL;
        r = builder_level(b, &g, i, children, child_count, (l.hash_start_block + g.level_start[i]) * hbs,
                          write, write_ctx, &next, err);
        free(level_digests);
        if (r < 0)
            return r;
        level_digests = next;
        children = next;
        child_count = g.level_blocks[i];
    }
    /* With no levels (one data block) the root is that block's digest. */
    memcpy(l.root_hash, children, g.digest_size);
    free(level_digests);

    verity_uuid_from_root(l.root_hash, g.digest_size, l.uuid);
    if (l.params.superblock) {
        /* The superblock, zero-filled up to the tree's first hash block. */
        size_t area = (size_t)((l.hash_start_block * hbs) - l.hash_offset);
        uint8_t *sb = calloc(1, area);
        if (!sb)
            return vs_fail(err, -ENOMEM, "verity: out of memory");
        verity_superblock_encode(&l, sb);
        r = write(write_ctx, l.hash_offset, sb, area, err);
        free(sb);
        if (r < 0)
            return r;
    }
    if (out)
        *out = l;
    return 0;
}
