#include "layer_stream.h"

#include <errno.h>
#include <isa-l/igzip_lib.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/vs_digest.h"

#define IN_CAP (256u << 10)
#define CHUNK (1u << 20)
#define RING 4

struct chunk {
    uint8_t *data;
    size_t len;
};

struct layer_stream {
    tarfs_read_fn read_fn;
    void *read_ctx;
    enum tarfs_compression compression;
    uint8_t *in;
    size_t in_pos, in_len;
    bool in_eof;
    uint64_t in_offset;  /* compressed bytes consumed before in[0] */
    uint64_t out_offset; /* uncompressed bytes produced */
    bool done;
    bool member_done; /* gzip member / zstd frame complete */
    struct inflate_state *gz;
    ZSTD_DCtx *zstd;
    struct vs_sha256 *sha;
    /* Ring between the producer thread and the reader. */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    struct chunk ring[RING];
    unsigned head, filled;
    bool holding, stop, producer_done;
    int producer_rc;
    struct vs_error producer_err;
    const void *pending; /* layer_stream_read's view into the held chunk */
    size_t pending_len;
    layer_stream_tap_fn tap;
    void *tap_ctx;
};

static void *producer_run(void *arg);

static int fill(struct layer_stream *s, struct vs_error *err)
{
    if (s->in_eof)
        return 0;
    if (s->in_pos > 0) {
        memmove(s->in, s->in + s->in_pos, s->in_len - s->in_pos);
        s->in_offset += s->in_pos;
        s->in_len -= s->in_pos;
        s->in_pos = 0;
    }
    while (s->in_len < IN_CAP) {
        long n = s->read_fn(s->read_ctx, s->in + s->in_len, IN_CAP - s->in_len, err);
        if (n < 0)
            return (int)n;
        if (n == 0) {
            s->in_eof = true;
            break;
        }
        s->in_len += (size_t)n;
        if (s->in_len >= 4096)
            break;
    }
    return 0;
}

void layer_stream_free(struct layer_stream *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->not_full);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->not_empty);
    pthread_cond_destroy(&s->not_full);
    for (unsigned i = 0; i < RING; i++)
        free(s->ring[i].data);
    free(s->in);
    free(s->gz);
    ZSTD_freeDCtx(s->zstd);
    vs_sha256_free(s->sha);
    free(s);
}

struct layer_stream *layer_stream_new(tarfs_read_fn read_fn, void *read_ctx,
                                      enum tarfs_compression compression, struct vs_error *err)
{
    struct layer_stream *s = calloc(1, sizeof(*s));
    if (!s || !(s->in = malloc(IN_CAP)) || !(s->sha = vs_sha256_new())) {
        layer_stream_free(s);
        vs_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->not_empty, NULL);
    pthread_cond_init(&s->not_full, NULL);
    for (unsigned i = 0; i < RING; i++) {
        if (!(s->ring[i].data = malloc(CHUNK))) {
            layer_stream_free(s);
            vs_fail(err, -ENOMEM, "out of memory");
            return NULL;
        }
    }
    s->read_fn = read_fn;
    s->read_ctx = read_ctx;
    if (fill(s, err) < 0) {
        layer_stream_free(s);
        return NULL;
    }
    enum tarfs_compression magic = TARFS_COMPRESSION_NONE;
    if (s->in_len >= 2 && s->in[0] == 0x1f && s->in[1] == 0x8b)
        magic = TARFS_COMPRESSION_GZIP;
    else if (s->in_len >= 4 && memcmp(s->in, "\x28\xb5\x2f\xfd", 4) == 0)
        magic = TARFS_COMPRESSION_ZSTD;
    if (compression != TARFS_COMPRESSION_AUTO && compression != magic) {
        vs_fail(err, -EBADMSG, "layer was declared %s but its first bytes say %s",
                tarfs_compression_name(compression), tarfs_compression_name(magic));
        layer_stream_free(s);
        return NULL;
    }
    s->compression = magic;
    if (magic == TARFS_COMPRESSION_GZIP) {
        s->gz = calloc(1, sizeof(*s->gz));
        if (s->gz) {
            isal_inflate_init(s->gz);
            s->gz->crc_flag = ISAL_GZIP;
        }
    } else if (magic == TARFS_COMPRESSION_ZSTD) {
        s->zstd = ZSTD_createDCtx();
    }
    if ((magic == TARFS_COMPRESSION_GZIP && !s->gz) || (magic == TARFS_COMPRESSION_ZSTD && !s->zstd)) {
        layer_stream_free(s);
        vs_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    int rc = pthread_create(&s->thread, NULL, producer_run, s);
    if (rc != 0) {
        layer_stream_free(s);
        vs_fail(err, -rc, "cannot start the decompression thread");
        return NULL;
    }
    s->thread_started = true;
    return s;
}

/* Between gzip members or zstd frames: another one, zero padding, or the end. */
static int next_member(struct layer_stream *s, const uint8_t *magic, size_t magic_len, struct vs_error *err)
{
    for (;;) {
        while (s->in_pos < s->in_len && s->in[s->in_pos] == 0)
            s->in_pos++;
        if (s->in_pos < s->in_len)
            break;
        if (s->in_eof) {
            s->done = true;
            return 0;
        }
        int rc = fill(s, err);
        if (rc < 0)
            return rc;
    }
    if (s->in_len - s->in_pos < magic_len && !s->in_eof) {
        int rc = fill(s, err);
        if (rc < 0)
            return rc;
    }
    if (s->in_len - s->in_pos < magic_len || memcmp(s->in + s->in_pos, magic, magic_len) != 0)
        return vs_fail(err, -EBADMSG,
                       "unexpected bytes after the compressed stream at compressed offset %llu",
                       (unsigned long long)(s->in_offset + s->in_pos));
    s->member_done = false;
    if (s->gz) {
        isal_inflate_reset(s->gz);
        s->gz->crc_flag = ISAL_GZIP;
    }
    return 0;
}

static const char *isal_reason(int rc)
{
    switch (rc) {
    case ISAL_INVALID_BLOCK:
        return "invalid deflate block";
    case ISAL_INVALID_SYMBOL:
        return "invalid deflate symbol";
    case ISAL_INVALID_LOOKBACK:
        return "invalid deflate distance";
    case ISAL_INVALID_WRAPPER:
        return "invalid gzip header";
    case ISAL_UNSUPPORTED_METHOD:
        return "unsupported gzip method";
    case ISAL_INCORRECT_CHECKSUM:
        return "gzip trailer mismatch (CRC-32 or length)";
    default:
        return "corrupt gzip data";
    }
}

static long read_gzip(struct layer_stream *s, uint8_t *buf, size_t cap, struct vs_error *err)
{
    for (;;) {
        if (s->member_done) {
            int rc = next_member(s, (const uint8_t *)"\x1f\x8b", 2, err);
            if (rc < 0)
                return rc;
            if (s->done)
                return 0;
        }
        if (s->in_pos == s->in_len) {
            int rc = fill(s, err);
            if (rc < 0)
                return rc;
            if (s->in_len == 0 && s->in_eof)
                return vs_fail(err, -EBADMSG, "gzip stream is truncated at compressed offset %llu",
                               (unsigned long long)s->in_offset);
        }
        s->gz->next_in = s->in + s->in_pos;
        s->gz->avail_in = (uint32_t)(s->in_len - s->in_pos);
        s->gz->next_out = buf;
        s->gz->avail_out = (uint32_t)(cap > UINT32_MAX ? UINT32_MAX : cap);
        int rc = isal_inflate(s->gz);
        size_t used = (s->in_len - s->in_pos) - s->gz->avail_in;
        s->in_pos += used;
        size_t produced = (size_t)(s->gz->next_out - buf);
        if (rc < 0)
            return vs_fail(err, -EBADMSG, "%s at compressed offset %llu", isal_reason(rc),
                           (unsigned long long)(s->in_offset + s->in_pos));
        if (s->gz->block_state == ISAL_BLOCK_FINISH)
            s->member_done = true;
        if (produced > 0)
            return (long)produced;
        if (!s->member_done && used == 0) {
            if (s->in_eof)
                return vs_fail(err, -EBADMSG, "gzip stream is truncated at compressed offset %llu",
                               (unsigned long long)(s->in_offset + s->in_pos));
            int frc = fill(s, err);
            if (frc < 0)
                return frc;
        }
    }
}

static long read_zstd(struct layer_stream *s, uint8_t *buf, size_t cap, struct vs_error *err)
{
    for (;;) {
        if (s->member_done) {
            int rc = next_member(s, (const uint8_t *)"\x28\xb5\x2f\xfd", 4, err);
            if (rc < 0)
                return rc;
            if (s->done)
                return 0;
        }
        if (s->in_pos == s->in_len) {
            int rc = fill(s, err);
            if (rc < 0)
                return rc;
        }
        ZSTD_inBuffer in = {s->in, s->in_len, s->in_pos};
        ZSTD_outBuffer out = {buf, cap, 0};
        size_t ret = ZSTD_decompressStream(s->zstd, &out, &in);
        s->in_pos = in.pos;
        if (ZSTD_isError(ret))
            return vs_fail(err, -EBADMSG, "zstd: %s at compressed offset %llu", ZSTD_getErrorName(ret),
                           (unsigned long long)(s->in_offset + s->in_pos));
        if (ret == 0)
            s->member_done = true;
        if (out.pos > 0)
            return (long)out.pos;
        if (!s->member_done && s->in_pos == s->in_len && s->in_eof)
            return vs_fail(err, -EBADMSG, "zstd stream is truncated at compressed offset %llu",
                           (unsigned long long)(s->in_offset + s->in_pos));
    }
}

/* Decompresses up to cap bytes (the producer thread's work). */
static long produce(struct layer_stream *s, void *buf, size_t cap, struct vs_error *err)
{
    if (s->done || cap == 0)
        return 0;
    long n;
    if (s->gz) {
        n = read_gzip(s, buf, cap, err);
    } else if (s->zstd) {
        n = read_zstd(s, buf, cap, err);
    } else {
        if (s->in_pos == s->in_len) {
            int rc = fill(s, err);
            if (rc < 0)
                return rc;
        }
        n = (long)(s->in_len - s->in_pos < cap ? s->in_len - s->in_pos : cap);
        memcpy(buf, s->in + s->in_pos, (size_t)n);
        s->in_pos += (size_t)n;
        if (n == 0)
            s->done = true;
    }
    return n;
}

/* The producer: decompresses into a ring of chunks on its own thread, so that on two cores inflate overlaps
 * hashing, parsing and writing. */
static void *producer_run(void *arg)
{
    struct layer_stream *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (s->filled == RING && !s->stop)
            pthread_cond_wait(&s->not_full, &s->lock);
        bool stop = s->stop;
        unsigned slot = (s->head + s->filled) % RING;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        struct chunk *c = &s->ring[slot];
        c->len = 0;
        long n = 1;
        while (c->len < CHUNK && (n = produce(s, c->data + c->len, CHUNK - c->len, &s->producer_err)) > 0)
            c->len += (size_t)n;
        pthread_mutex_lock(&s->lock);
        if (c->len)
            s->filled++;
        if (n <= 0) {
            s->producer_done = true;
            s->producer_rc = n < 0 ? (int)n : 0;
        }
        pthread_cond_signal(&s->not_empty);
        pthread_mutex_unlock(&s->lock);
        if (n <= 0)
            break;
    }
    return NULL;
}

long layer_stream_next(struct layer_stream *s, const void **data, struct vs_error *err)
{
    struct chunk *hash_now = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->holding) {
        /* The caller is done with the chunk it held. */
        s->head = (s->head + 1) % RING;
        s->filled--;
        s->holding = false;
        pthread_cond_signal(&s->not_full);
    }
    while (s->filled == 0 && !s->producer_done)
        pthread_cond_wait(&s->not_empty, &s->lock);
    long n;
    if (s->filled > 0) {
        struct chunk *c = &s->ring[s->head];
        *data = c->data;
        n = (long)c->len;
        s->holding = true;
        s->out_offset += c->len;
        hash_now = c;
    } else if (s->producer_rc < 0) {
        if (err)
            *err = s->producer_err;
        n = s->producer_rc;
    } else {
        n = 0;
    }
    pthread_mutex_unlock(&s->lock);
    /* The diff ID is hashed here, on the reader's side, to balance the two cores: inflate alone is the
     * producer's whole job (measured: inflate + hash on one side left the other idle a third of the time). */
    if (hash_now)
        vs_sha256_update(s->sha, hash_now->data, hash_now->len);
    if (hash_now && s->tap) {
        int rc = s->tap(s->tap_ctx, hash_now->data, hash_now->len, err);
        if (rc < 0)
            return rc;
    }
    return n;
}

void layer_stream_set_tap(struct layer_stream *s, layer_stream_tap_fn tap, void *ctx)
{
    s->tap = tap;
    s->tap_ctx = ctx;
}

long layer_stream_read(struct layer_stream *s, void *buf, size_t cap, struct vs_error *err)
{
    if (s->pending_len == 0) {
        long n = layer_stream_next(s, &s->pending, err);
        if (n <= 0)
            return n;
        s->pending_len = (size_t)n;
    }
    size_t n = s->pending_len < cap ? s->pending_len : cap;
    memcpy(buf, s->pending, n);
    s->pending = (const uint8_t *)s->pending + n;
    s->pending_len -= n;
    return (long)n;
}

int layer_stream_drain(struct layer_stream *s, struct vs_error *err)
{
    uint8_t buf[64 << 10];
    long n;
    while ((n = layer_stream_read(s, buf, sizeof(buf), err)) > 0)
        ;
    return n < 0 ? (int)n : 0;
}

uint64_t layer_stream_offset(const struct layer_stream *s)
{
    return s->out_offset;
}

void layer_stream_finish(struct layer_stream *s, uint8_t diff_id[32], enum tarfs_compression *compression)
{
    if (s->thread_started) {
        pthread_join(s->thread, NULL); /* it has ended: the reader saw the end */
        s->thread_started = false;
    }
    vs_sha256_final(s->sha, diff_id);
    *compression = s->compression;
}
