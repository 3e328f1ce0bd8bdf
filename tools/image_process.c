/* Converting every layer of an image: each blob is pushed by its source through a tee (SHA-256 of the
 * compressed bytes) into a pipe the converter reads, so it is read once, decompressed once, and both digests
 * are checked in the same pass. Layers run concurrently on a bounded pool of workers; a TTY gets a progress
 * bar per layer. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/vs_digest.h"
#include "image.h"
#include "tool.h"

enum job_state { JOB_WAITING, JOB_RUNNING, JOB_CACHED, JOB_DONE, JOB_FAILED };

struct job {
    struct image_layer *layer;
    _Atomic int state;
    _Atomic uint64_t bytes;
    double started;
    _Atomic double finished; /* 0 until done: the rate of a finished layer stays put */
};

struct pool {
    struct image_source *src;
    const struct image_process_options *o;
    struct image_cache *cache;
    pthread_mutex_t lock; /* cache, first error */
    struct job *jobs;
    size_t job_count;
    _Atomic size_t next;
    _Atomic bool stop;
    bool failed;
    struct vs_error err;
    /* progress */
    pthread_t progress_thread;
    _Atomic bool progress_done;
    int progress_lines;
};

/* One layer's tee: hashes what the source pushes and hands it to the converter's pipe. */
struct tee {
    struct pool *pool;
    struct job *job;
    struct vs_sha256 *sha;
    int fd;
    bool consumer_gone; /* the converter stopped reading (done or failed): keep hashing, stop writing */
    uint64_t bytes;
};

struct converter {
    int fd;
    const char *out_path;
    struct layer_file_options opts;
    struct layer_file_result result;
    struct vs_error err;
    int rc;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *converter_main(void *arg)
{
    struct converter *c = arg;
    c->rc = layer_file_build_fd(c->fd, c->out_path, &c->opts, &c->result, &c->err);
    /* Closing our end makes the tee's next write fail with EPIPE if the converter stopped before the end. */
    close(c->fd);
    return NULL;
}

static int tee_chunk(void *ctx, const void *data, size_t len, struct vs_error *err)
{
    struct tee *t = ctx;
    if (atomic_load(&t->pool->stop))
        return vs_fail(err, -ECANCELED, "cancelled");
    const struct image_descriptor *d = &t->job->layer->desc;
    if (d->size >= 0 && t->bytes + len > (uint64_t)d->size)
        return vs_fail(err, -EBADMSG, "the blob is longer than the %lld bytes its descriptor says",
                       (long long)d->size);
    vs_sha256_update(t->sha, data, len);
    t->bytes += len;
    atomic_store(&t->job->bytes, t->bytes);
    const char *p = data;
    while (len && !t->consumer_gone) {
        ssize_t n = write(t->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EPIPE) {
            t->consumer_gone = true;
            break;
        }
        if (n < 0)
            return vs_fail(err, -errno, "feeding the converter: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void pool_fail(struct pool *p, const struct vs_error *e)
{
    pthread_mutex_lock(&p->lock);
    if (!p->failed && e->code != -ECANCELED) {
        p->failed = true;
        p->err = *e;
    }
    atomic_store(&p->stop, true);
    pthread_mutex_unlock(&p->lock);
}

static char *output_name(const struct pool *p, const struct image_layer *l, bool partial)
{
    char *path;
    const char *ext = tarfs_format_name(p->o->layer.tarfs.format);
    if (asprintf(&path, "%s/%s%s.%s", p->o->output_dir, partial ? ".partial-" : "", l->diff_id + 7, ext) < 0)
        return NULL;
    return path;
}

static void remove_layer_file(const char *path)
{
    char side[4096];
    unlink(path);
    snprintf(side, sizeof(side), "%s.dmverity", path);
    unlink(side);
}

static int rename_layer_file(const char *from, const char *to, bool sidecar, struct vs_error *err)
{
    if (rename(from, to) < 0)
        return vs_fail(err, -errno, "renaming '%s' to '%s': %s", from, to, strerror(errno));
    if (sidecar) {
        char a[4096], b[4096];
        snprintf(a, sizeof(a), "%s.dmverity", from);
        snprintf(b, sizeof(b), "%s.dmverity", to);
        if (rename(a, b) < 0 && errno != ENOENT)
            return vs_fail(err, -errno, "renaming '%s' to '%s': %s", a, b, strerror(errno));
    }
    return 0;
}

static int run_layer(struct pool *p, struct job *j, struct vs_error *err)
{
    struct image_layer *l = j->layer;
    const struct image_process_options *o = p->o;
    if (p->cache && !o->output_dir) {
        pthread_mutex_lock(&p->lock);
        json_t *hit = image_cache_get(p->cache, l->diff_id, &o->layer);
        pthread_mutex_unlock(&p->lock);
        if (hit) {
            l->result = hit;
            l->from_cache = true;
            atomic_store(&j->state, JOB_CACHED);
            return 0;
        }
    }
    j->started = now();
    atomic_store(&j->state, JOB_RUNNING);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return vs_fail(err, -errno, "pipe: %s", strerror(errno));
    /* A bigger pipe means fewer wake-ups between the tee and the converter. */
    (void)fcntl(pfd[1], F_SETPIPE_SZ, 1 << 20);
    struct converter *c = calloc(1, sizeof(*c));
    char *partial = o->output_dir ? output_name(p, l, true) : NULL;
    char *final = o->output_dir ? output_name(p, l, false) : NULL;
    c->fd = pfd[0];
    c->out_path = partial;
    c->opts = o->layer;
    c->opts.tarfs.compression = l->compression;
    struct tee t = {p, j, vs_sha256_new(), pfd[1], false, 0};
    pthread_t th;
    int rc = pthread_create(&th, NULL, converter_main, c);
    if (rc != 0) {
        close(pfd[0]);
        close(pfd[1]);
        vs_sha256_free(t.sha);
        free(c);
        free(partial);
        free(final);
        return vs_fail(err, -rc, "starting a thread: %s", strerror(rc));
    }
    struct vs_error serr = {0};
    int src = p->src->ops->stream(p->src, &l->desc, tee_chunk, &t, &serr);
    close(pfd[1]);
    pthread_join(th, NULL);
    uint8_t d[VS_SHA256_LEN];
    vs_sha256_final(t.sha, d);
    vs_sha256_free(t.sha);
    vs_digest_format(d, l->digest);
    const char *name = l->desc.digest[0] ? l->desc.digest : l->desc.path;
    char got_diff[IMAGE_DIGEST_MAX] = "";
    if (c->rc == 0)
        vs_digest_format(c->result.image.diff_id, got_diff);
    /* The most telling error first: a bad blob explains a converter failure, not the reverse. */
    if (src < 0)
        rc = vs_fail(err, serr.code, "layer %d (%s): %s", l->index, name, serr.message);
    else if (l->desc.digest[0] && strcmp(l->digest, l->desc.digest) != 0)
        rc = vs_fail(err, -EBADMSG, "layer %d: digest mismatch: the descriptor says %s, the blob is %s",
                     l->index, l->desc.digest, l->digest);
    else if (l->desc.size >= 0 && t.bytes != (uint64_t)l->desc.size)
        rc = vs_fail(err, -EBADMSG, "layer %d (%s): the blob has %llu bytes, its descriptor says %lld",
                     l->index, name, (unsigned long long)t.bytes, (long long)l->desc.size);
    else if (c->rc < 0)
        rc = vs_fail(err, c->err.code, "layer %d (%s): %s", l->index, name, c->err.message);
    else if (strcmp(got_diff, l->diff_id) != 0)
        rc = vs_fail(err, -EBADMSG,
                     "layer %d (%s): diff ID mismatch: the config says %s, the uncompressed layer is %s",
                     l->index, name, l->diff_id, got_diff);
    if (rc == 0 && final)
        rc = rename_layer_file(partial, final, c->opts.sidecar && c->result.verity, err);
    if (rc < 0 && partial && c->rc == 0)
        remove_layer_file(partial);
    if (rc == 0) {
        l->result = tool_layer_json(&c->result, final);
        if (p->cache) {
            pthread_mutex_lock(&p->lock);
            image_cache_put(p->cache, l->diff_id, &o->layer, l->result);
            pthread_mutex_unlock(&p->lock);
        }
    }
    atomic_store(&j->finished, now());
    atomic_store(&j->state, rc == 0 ? JOB_DONE : JOB_FAILED);
    free(c);
    free(partial);
    free(final);
    return rc;
}

static void *worker_main(void *arg)
{
    struct pool *p = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->job_count || atomic_load(&p->stop))
            break;
        struct vs_error e = {0};
        if (run_layer(p, &p->jobs[i], &e) < 0)
            pool_fail(p, &e);
    }
    return NULL;
}

static void human(double v, char *out, size_t cap)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int k = 0;
    while (v >= 1024 && k < 4) {
        v /= 1024;
        k++;
    }
    snprintf(out, cap, k ? "%.1f %s" : "%.0f %s", v, u[k]);
}

static void progress_draw(struct pool *p)
{
    char buf[16384];
    size_t n = 0;
    if (p->progress_lines)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\033[%dA", p->progress_lines);
    double t = now();
    int lines = 0;
    for (size_t i = 0; i < p->job_count && n + 256 < sizeof(buf); i++, lines++) {
        struct job *j = &p->jobs[i];
        const struct image_layer *l = j->layer;
        int st = atomic_load(&j->state);
        uint64_t b = atomic_load(&j->bytes);
        double total = l->desc.size > 0 ? (double)l->desc.size : 0;
        const char *id = l->desc.digest[0] ? l->desc.digest + 7 : l->diff_id + 7;
        char done[32], tot[32], rate[32];
        human((double)b, done, sizeof(done));
        human(total, tot, sizeof(tot));
        double fin = atomic_load(&j->finished);
        double el = st == JOB_WAITING || st == JOB_CACHED ? 0 : (fin > 0 ? fin : t) - j->started;
        double r = el > 0 ? (double)b / el : 0;
        human(r, rate, sizeof(rate));
        char bar[31];
        int fill = total > 0 ? (int)(30.0 * (double)b / total) : (st == JOB_DONE ? 30 : 0);
        if (st == JOB_DONE || st == JOB_CACHED)
            fill = 30;
        for (int k = 0; k < 30; k++)
            bar[k] = k < fill ? '#' : '-';
        bar[30] = '\0';
        const char *what = st == JOB_WAITING  ? "waiting"
                           : st == JOB_CACHED ? "cached"
                           : st == JOB_DONE   ? "done"
                           : st == JOB_FAILED ? "failed"
                                              : "";
        char left[32] = "";
        if (st == JOB_RUNNING && r > 0 && total > (double)b)
            snprintf(left, sizeof(left), "%.0fs left", (total - (double)b) / r);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\033[2Klayer %d %.12s [%s] %s/%s %s/s %s %s\n",
                              l->index, id, bar, done, tot, rate, left, what);
    }
    p->progress_lines = lines;
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w;
}

static void *progress_main(void *arg)
{
    struct pool *p = arg;
    while (!atomic_load(&p->progress_done)) {
        progress_draw(p);
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int image_process(struct image_source *s, struct image *images, size_t count,
                  const struct image_process_options *o, struct image_cache *cache, struct vs_error *err)
{
    struct pool p = {.src = s, .o = o, .cache = cache};
    pthread_mutex_init(&p.lock, NULL);
    for (size_t i = 0; i < count; i++)
        p.job_count += images[i].layer_count;
    p.jobs = calloc(p.job_count ? p.job_count : 1, sizeof(*p.jobs));
    size_t k = 0;
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < images[i].layer_count; j++)
            p.jobs[k++].layer = &images[i].layers[j];
    int workers = o->jobs > 0 ? o->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (workers < 1)
        workers = 1;
    if ((size_t)workers > p.job_count)
        workers = (int)p.job_count;
    if (o->progress)
        pthread_create(&p.progress_thread, NULL, progress_main, &p);
    pthread_t *th = calloc((size_t)workers + 1, sizeof(*th));
    int started = 0;
    for (int i = 0; i < workers; i++)
        if (pthread_create(&th[i], NULL, worker_main, &p) == 0)
            started++;
    if (started == 0 && p.job_count)
        worker_main(&p);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    if (o->progress) {
        atomic_store(&p.progress_done, true);
        pthread_join(p.progress_thread, NULL);
        progress_draw(&p);
    }
    int rc = 0;
    if (p.failed) {
        *err = p.err;
        rc = err->code < 0 ? err->code : -EIO;
        vs_error_prefix(err, "image '%s'", s->name);
    }
    free(p.jobs);
    pthread_mutex_destroy(&p.lock);
    return rc;
}
