/* Throughput of the builder (add_block over data in memory, then finish), with the hashing thread on and off,
 * with an idle caller and with one that also computes a running SHA-256 over the data (as the image writer
 * does for the diff ID), and of verity_verify_fd over a file in the page cache. Not a test.
 * Usage: verity_bench [MiB, default 512] [directory, default /tmp]. Compare numbers from one run. */
#include <openssl/evp.h>
#include <sys/resource.h>
#include <time.h>

#include "test_util.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds used by the whole process (all threads). */
static double cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static void build(const uint8_t *data, uint64_t blocks, int fd, bool thread, bool diff_id,
                  struct verity_layout *l)
{
    struct verity_params p;
    verity_params_default(&p);
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(&p, &err);
    verity_builder_set_hash_thread(b, thread);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    double t0 = now(), c0 = cpu();
    for (uint64_t i = 0; i < blocks; i++) {
        if (diff_id)
            EVP_DigestUpdate(ctx, data + i * 4096, 4096);
        CHECK_OK(verity_builder_add_block(b, i, data + i * 4096, &err), err);
    }
    double t1 = now();
    CHECK_OK(verity_builder_finish(b, blocks, blocks * 4096, test_pwrite_fn, &fd, l, &err), err);
    double t2 = now(), c2 = cpu();
    uint8_t d[32];
    EVP_DigestFinal_ex(ctx, d, NULL);
    EVP_MD_CTX_free(ctx);
    verity_builder_free(b);
    double mb = (double)blocks * 4096 / 1e6;
    printf("builder, hash thread %-3s caller %-10s %5.0f MB/s (finish %.1f ms), cpu %.2f s for %.2f s wall\n",
           thread ? "on," : "off,", diff_id ? "+ sha256:" : "idle:", mb / (t2 - t0), (t2 - t1) * 1e3, c2 - c0,
           t2 - t0);
}

int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 512;
    const char *dir = argc > 2 ? argv[2] : "/tmp";
    uint64_t blocks = mib * 256;
    char path[512];
    snprintf(path, sizeof(path), "%s/verity-bench-%d.img", dir, (int)getpid());
    uint8_t *data = malloc(blocks * 4096);
    REQUIRE(data, "out of memory");
    for (uint64_t i = 0; i < blocks * 512; i++)
        ((uint64_t *)data)[i] = test_rand();
    test_write_file(path, data, blocks * 4096);
    double mb = (double)blocks * 4096 / 1e6;

    /* Baseline: plain SHA-256 of each 4 KiB block with a reused context, what `openssl speed -evp sha256`
     * does. */
    EVP_MD *md = EVP_MD_fetch(NULL, "sha256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t d[32];
    double b0 = now();
    for (uint64_t i = 0; i < blocks; i++) {
        EVP_DigestInit_ex(ctx, md, NULL);
        EVP_DigestUpdate(ctx, data + i * 4096, 4096);
        EVP_DigestFinal_ex(ctx, d, NULL);
    }
    double b1 = now();
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    printf("baseline: sha256 of %llu MiB in 4 KiB blocks, one thread: %.0f MB/s\n", (unsigned long long)mib,
           mb / (b1 - b0));

    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct verity_layout l;
    for (int diff_id = 0; diff_id < 2; diff_id++)
        for (int thread = 0; thread < 2; thread++)
            build(data, blocks, fd, thread, diff_id, &l);

    struct verity_verify_report rep;
    struct vs_error err = {0};
    for (int run = 0; run < 2; run++) {
        double v0 = now(), c0 = cpu();
        CHECK_OK(verity_verify_fd(fd, &l, &rep, &err), err);
        double v1 = now(), c1 = cpu();
        printf("verify: %5.0f MB/s, cpu %.2f s for %.2f s wall\n", mb / (v1 - v0), c1 - c0, v1 - v0);
    }
    close(fd);
    unlink(path);
    free(data);
    return 0;
}
