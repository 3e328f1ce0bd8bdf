/* Userspace verification of a layer file, as `veritysetup verify` does it: every data block against level 0,
 * every hash block against its parent, the top block against the root, and all spare bytes of hash blocks
 * zero. The tree is checked top down before the data it covers; the data range is split between two threads
 * when the machine has two cores, since SHA-256 (~1.2 GB/s per core here) is the whole cost. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "verity/verity_internal.h"

#define VERIFY_READ_CHUNK (1u << 20)
/* Below this much data a second thread costs more than it saves. */
#define VERIFY_PARALLEL_MIN (32u << 20)
#define VERIFY_MAX_THREADS 2

struct verify_ctx {
    int fd;
    const struct verity_layout *l;
    struct verity_geometry g;
    uint8_t *upper; /* tree blocks above level 0 (tree blocks [0, level_start[0])) */
};

/* What went wrong, in check order. */
struct verify_finding {
    bool bad;
    bool in_tree;
    uint64_t block; /* data block index, or hash block index in the file in hbs units */
    int code;
    char message[512];
};

static void finding_set(struct verify_finding *f, bool in_tree, uint64_t block, int code, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));

static void finding_set(struct verify_finding *f, bool in_tree, uint64_t block, int code, const char *fmt,
                        ...)
{
    f->bad = code == -EBADMSG;
    f->in_tree = in_tree;
    f->block = block;
    f->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof(f->message), fmt, ap);
    va_end(ap);
}

static uint64_t tree_block_in_file(const struct verify_ctx *c, uint32_t level, uint64_t k)
{
    return c->l->hash_start_block + c->g.level_start[level] + k;
}

/* Index of the first spare byte that is not zero in hash block `block` holding `entries` digests, or -1. */
static long spare_not_zero(const struct verify_ctx *c, const uint8_t *block, uint64_t entries)
{
    uint32_t hbs = c->l->params.hash_block_size, slot = c->g.slot_size, D = c->g.digest_size;
    for (uint64_t j = 0; j < entries && slot > D; j++)
        for (uint32_t i = D; i < slot; i++)
            if (block[j * slot + i])
                return (long)(j * slot + i);
    for (uint64_t i = entries * slot; i < hbs; i++)
        if (block[i])
            return (long)i;
    return -1;
}

/* Checks hash block k of `level` (its bytes at block) against the expected digest; entries = digests it
 * holds. */
static bool check_hash_block(const struct verify_ctx *c, struct verity_hasher *h, uint32_t level, uint64_t k,
                             const uint8_t *block, const uint8_t *expected, uint64_t entries,
                             struct verify_finding *f)
{
    uint8_t d[VERITY_MAX_DIGEST];
    uint32_t hbs = c->l->params.hash_block_size;
    uint64_t fb = tree_block_in_file(c, level, k);
    /* Spare bytes first: a non-zero one is the more precise diagnosis (veritysetup: "Spare area is not
     * zeroed"). */
    long spare = spare_not_zero(c, block, entries);
    if (spare >= 0) {
        finding_set(f, true, fb, -EBADMSG,
                    "hash block %" PRIu64 " (tree level %u, offset %" PRIu64 "): spare byte %ld is not zero",
                    fb, level, fb * hbs, spare);
        return false;
    }
    if (verity_hasher_block(h, block, hbs, d) < 0) {
        finding_set(f, true, fb, -EIO, "OpenSSL failed to hash");
        return false;
    }
    if (memcmp(d, expected, c->g.digest_size) != 0) {
        finding_set(f, true, fb, -EBADMSG,
                    "hash block %" PRIu64 " (tree level %u, block %" PRIu64 ", offset %" PRIu64
                    ") does not match %s",
                    fb, level, k, fb * hbs, level + 1 == c->g.levels ? "the root hash" : "its parent");
        return false;
    }
    return true;
}

static uint64_t children_of(const struct verify_ctx *c, uint32_t level, uint64_t k)
{
    uint64_t below = level == 0 ? c->l->data_blocks : c->g.level_blocks[level - 1];
    uint64_t per = UINT64_C(1) << c->g.hash_per_block_bits, first = k * per;
    return below - first < per ? below - first : per;
}

/* The digest of level `level` block k as recorded one level up (or the root for the top block). */
static const uint8_t *parent_entry(const struct verify_ctx *c, uint32_t level, uint64_t k)
{
    if (level + 1 == c->g.levels)
        return c->l->root_hash;
    uint32_t hbs = c->l->params.hash_block_size, b = c->g.hash_per_block_bits;
    const uint8_t *parent = c->upper + (c->g.level_start[level + 1] + (k >> b)) * hbs;
    return parent + (k & ((UINT64_C(1) << b) - 1)) * c->g.slot_size;
}

static bool check_upper_levels(const struct verify_ctx *c, struct verity_hasher *h, struct verify_finding *f,
                               uint64_t *hash_blocks)
{
    uint32_t hbs = c->l->params.hash_block_size;
    for (uint32_t level = c->g.levels; level-- > 1;) {
        for (uint64_t k = 0; k < c->g.level_blocks[level]; k++) {
            const uint8_t *block = c->upper + (c->g.level_start[level] + k) * hbs;
            if (!check_hash_block(c, h, level, k, block, parent_entry(c, level, k), children_of(c, level, k),
                                  f))
                return false;
            (*hash_blocks)++;
        }
    }
    return true;
}

struct verify_worker {
    pthread_t thread;
    struct verify_ctx *c;
    uint64_t l0_first, l0_end; /* level-0 blocks [l0_first, l0_end) and the data they cover */
    int *stop_before;          /* workers with a higher index stop when a lower one found something */
    int index;
    uint64_t data_blocks, hash_blocks;
    struct verify_finding f;
};

static bool worker_should_stop(struct verify_worker *w)
{
    return __atomic_load_n(w->stop_before, __ATOMIC_RELAXED) < w->index;
}

static void *verify_worker_run(void *arg)
{
    struct verify_worker *w = arg;
    const struct verify_ctx *c = w->c;
    const struct verity_layout *l = c->l;
    uint32_t dbs = l->params.data_block_size, hbs = l->params.hash_block_size, D = c->g.digest_size;
    uint32_t b = c->g.hash_per_block_bits;
    uint64_t per = UINT64_C(1) << b;
    struct verity_hasher h;
    struct vs_error herr;
    uint8_t *data = NULL, *l0 = NULL;
    uint64_t l0_run = VERIFY_READ_CHUNK / hbs, l0_loaded_first = 0, l0_loaded_n = 0, l0_checked = w->l0_first;
    if (verity_hasher_init(&h, &l->params, &herr) < 0) {
        finding_set(&w->f, false, 0, herr.code, "%s", herr.message);
        return NULL;
    }
    data = malloc(VERIFY_READ_CHUNK > dbs ? VERIFY_READ_CHUNK : dbs);
    l0 = malloc(l0_run * hbs);
    if (!data || !l0) {
        finding_set(&w->f, false, 0, -ENOMEM, "out of memory");
        goto out;
    }
    uint64_t d_first = w->l0_first << b;
    uint64_t d_end = w->l0_end << b < l->data_blocks ? w->l0_end << b : l->data_blocks;
    uint64_t run = VERIFY_READ_CHUNK / dbs;
    for (uint64_t d0 = d_first; d0 < d_end; d0 += run) {
        if (worker_should_stop(w))
            goto out;
        uint64_t n = d_end - d0 < run ? d_end - d0 : run;
        int r = verity_pread_full(c->fd, data, (size_t)(n * dbs), d0 * dbs);
        if (r < 0) {
            finding_set(&w->f, false, d0, r, "cannot read data blocks %" PRIu64 "..%" PRIu64 ": %s", d0,
                        d0 + n - 1, strerror(-r));
            goto out;
        }
        for (uint64_t x = d0; x < d0 + n; x++) {
            uint64_t k = x >> b;
            if (k >= l0_loaded_first + l0_loaded_n) {
                l0_loaded_first = k;
                l0_loaded_n = w->l0_end - k < l0_run ? w->l0_end - k : l0_run;
                r = verity_pread_full(c->fd, l0, (size_t)(l0_loaded_n * hbs),
                                      tree_block_in_file(c, 0, k) * hbs);
                if (r < 0) {
                    finding_set(&w->f, true, tree_block_in_file(c, 0, k), r, "cannot read hash blocks: %s",
                                strerror(-r));
                    goto out;
                }
            }
            const uint8_t *l0_block = l0 + (k - l0_loaded_first) * hbs;
            if (k >= l0_checked) {
                if (!check_hash_block(c, &h, 0, k, l0_block, parent_entry(c, 0, k), children_of(c, 0, k),
                                      &w->f))
                    goto out;
                w->hash_blocks++;
                l0_checked = k + 1;
            }
            uint8_t digest[VERITY_MAX_DIGEST];
            if (verity_hasher_block(&h, data + (x - d0) * dbs, dbs, digest) < 0) {
                finding_set(&w->f, false, x, -EIO, "OpenSSL failed to hash");
                goto out;
            }
            if (memcmp(digest, l0_block + (x & (per - 1)) * c->g.slot_size, D) != 0) {
                finding_set(&w->f, false, x, -EBADMSG,
                            "data block %" PRIu64 " (offset %" PRIu64
                            ") does not match its digest in hash block %" PRIu64,
                            x, x * dbs, tree_block_in_file(c, 0, k));
                goto out;
            }
            w->data_blocks++;
        }
    }
out:
    if (w->f.code) {
        int seen = __atomic_load_n(w->stop_before, __ATOMIC_RELAXED);
        while (w->index < seen && !__atomic_compare_exchange_n(w->stop_before, &seen, w->index, false,
                                                               __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
    }
    free(data);
    free(l0);
    verity_hasher_fini(&h);
    return NULL;
}

static bool check_superblock(const struct verify_ctx *c, struct verify_finding *f)
{
    const struct verity_layout *l = c->l;
    uint64_t fb = l->hash_offset / l->params.hash_block_size;
    uint8_t buf[VERITY_SUPERBLOCK_SIZE];
    int r = verity_pread_full(c->fd, buf, sizeof(buf), l->hash_offset);
    if (r < 0) {
        finding_set(f, true, fb, r, "cannot read the superblock at offset %" PRIu64 ": %s", l->hash_offset,
                    strerror(-r));
        return false;
    }
    struct verity_layout found;
    struct vs_error e;
    memset(&found, 0, sizeof(found));
    r = verity_superblock_decode(buf, &found, &e);
    const char *field = NULL;
    static const uint8_t nil[16];
    if (r < 0)
        field = e.message;
    else if (found.params.format != l->params.format)
        field = "hash type";
    else if (strcmp(found.params.hash_algorithm, l->params.hash_algorithm) != 0)
        field = "algorithm";
    else if (found.params.data_block_size != l->params.data_block_size)
        field = "data block size";
    else if (found.params.hash_block_size != l->params.hash_block_size)
        field = "hash block size";
    else if (found.data_blocks != l->data_blocks)
        field = "data blocks";
    else if (found.params.salt_size != l->params.salt_size ||
             memcmp(found.params.salt, l->params.salt, l->params.salt_size) != 0)
        field = "salt";
    else if (memcmp(l->uuid, nil, 16) != 0 && memcmp(found.uuid, l->uuid, 16) != 0)
        field = "uuid";
    if (!field)
        return true;
    finding_set(f, true, fb, -EBADMSG, "superblock at offset %" PRIu64 " (hash block %" PRIu64 "): %s%s",
                l->hash_offset, fb, field, r < 0 ? "" : " differs from the layout");
    return false;
}

int verity_verify_fd(int fd, const struct verity_layout *layout, struct verity_verify_report *report,
                     struct vs_error *err)
{
    struct verity_verify_report rep;
    memset(&rep, 0, sizeof(rep));
    if (report)
        *report = rep;
    struct verity_layout l = *layout;
    int r = verity_layout_complete(&l, err);
    if (r < 0)
        return r;
    struct verify_ctx c = {.fd = fd, .l = &l};
    r = verity_geometry_compute(&l.params, l.data_blocks, &c.g, err);
    if (r < 0)
        return r;
    uint32_t dbs = l.params.data_block_size, hbs = l.params.hash_block_size;
    struct verify_finding f;
    memset(&f, 0, sizeof(f));

    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0)
        return vs_fail(err, -errno, "verity verify: cannot find the file size: %s", strerror(errno));
    if ((uint64_t)size < l.file_size) {
        bool in_tree = (uint64_t)size >= l.data_blocks * dbs;
        uint64_t block = in_tree ? (uint64_t)size / hbs : (uint64_t)size / dbs;
        finding_set(&f, in_tree, block, -EBADMSG,
                    "the file is %lld bytes, the data and tree need %" PRIu64 " (%s block %" PRIu64
                    " is missing)",
                    (long long)size, l.file_size, in_tree ? "hash" : "data", block);
        goto done;
    }
    if (l.params.superblock && !check_superblock(&c, &f))
        goto done;

    struct verity_hasher h;
    r = verity_hasher_init(&h, &l.params, err);
    if (r < 0)
        return r;
    if (c.g.levels == 0) {
        /* One data block: its digest is the root hash itself. */
        uint8_t *block = malloc(dbs), d[VERITY_MAX_DIGEST];
        r = block ? verity_pread_full(fd, block, dbs, 0) : -ENOMEM;
        if (r < 0)
            finding_set(&f, false, 0, r, "cannot read data block 0: %s", strerror(-r));
        else if (verity_hasher_block(&h, block, dbs, d) < 0)
            finding_set(&f, false, 0, -EIO, "OpenSSL failed to hash");
        else if (memcmp(d, l.root_hash, c.g.digest_size) != 0)
            finding_set(&f, false, 0, -EBADMSG, "data block 0 (offset 0) does not match the root hash");
        else
            rep.data_blocks_checked = 1;
        free(block);
        verity_hasher_fini(&h);
        goto done;
    }

    uint64_t upper_blocks = c.g.level_start[0];
    if (upper_blocks) {
        c.upper = malloc(upper_blocks * hbs);
        r = c.upper ? verity_pread_full(fd, c.upper, upper_blocks * hbs, l.hash_start_block * hbs) : -ENOMEM;
        if (r < 0)
            finding_set(&f, true, l.hash_start_block, r, "cannot read the upper tree levels: %s",
                        strerror(-r));
    }
    bool upper_ok = !f.code && check_upper_levels(&c, &h, &f, &rep.hash_blocks_checked);
    verity_hasher_fini(&h);
    if (upper_ok) {
        uint64_t l0 = c.g.level_blocks[0];
        int threads = 1;
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        if (cpus > 1 && l.data_blocks * dbs >= VERIFY_PARALLEL_MIN && l0 >= VERIFY_MAX_THREADS)
            threads = VERIFY_MAX_THREADS;
        struct verify_worker w[VERIFY_MAX_THREADS];
        int stop_before = threads;
        memset(w, 0, sizeof(w));
        for (int i = 0; i < threads; i++) {
            w[i].c = &c;
            w[i].index = i;
            w[i].stop_before = &stop_before;
            w[i].l0_first = l0 * (uint64_t)i / (uint64_t)threads;
            w[i].l0_end = l0 * (uint64_t)(i + 1) / (uint64_t)threads;
        }
        int started = 1;
        for (int i = 1; i < threads; i++, started++)
            if (pthread_create(&w[i].thread, NULL, verify_worker_run, &w[i]) != 0)
                break;
        if (started < threads) {
            /* No second thread: do its range here too. */
            w[0].l0_end = l0;
            threads = 1;
        }
        verify_worker_run(&w[0]);
        for (int i = 1; i < started; i++)
            pthread_join(w[i].thread, NULL);
        for (int i = 0; i < started; i++) {
            rep.data_blocks_checked += w[i].data_blocks;
            rep.hash_blocks_checked += w[i].hash_blocks;
        }
        for (int i = 0; i < started; i++)
            if (w[i].f.code) {
                f = w[i].f;
                break;
            }
    }
    free(c.upper);

done:
    if (f.code == -EBADMSG) {
        rep.bad = true;
        rep.bad_in_tree = f.in_tree;
        rep.bad_block = f.block;
    }
    if (report)
        *report = rep;
    if (f.code)
        return vs_fail(err, f.code, "verity verify: %s", f.message);
    return 0;
}
