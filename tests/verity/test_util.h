/* Small helpers shared by the verity tests: checks that stop the program (REQUIRE, tests/lib/vs_test.h), a
 * temporary directory removed at exit, deterministic data, running veritysetup, and a write callback into a file. */
#ifndef VERITYSNAP_TESTS_VERITY_TEST_UTIL_H
#define VERITYSNAP_TESTS_VERITY_TEST_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/vs_test.h"
#include "verity/verity.h"

#define CHECK_OK(expr, err)                                                                                  \
    do {                                                                                                     \
        int check_ok_r = (expr);                                                                             \
        REQUIRE(check_ok_r == 0, "%s returned %d: %s", #expr, check_ok_r, (err).message);                    \
    } while (0)

static char test_dir[256];

static inline int test_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void test_cleanup(void)
{
    if (test_dir[0] && !getenv("VERITYSNAP_KEEP_TMP"))
        nftw(test_dir, test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Creates the per-test temporary directory (removed at exit unless VERITYSNAP_KEEP_TMP is set). */
static inline void test_setup(const char *name)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(test_dir, sizeof(test_dir), "%s/vs-%s-XXXXXX", base, name);
    REQUIRE(mkdtemp(test_dir) != NULL, "mkdtemp %s: %s", test_dir, strerror(errno));
    atexit(test_cleanup);
}

static inline void test_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", test_dir, name);
}

static uint64_t test_rng_state = 0x9E3779B97F4A7C15ull;

static inline uint64_t test_rand(void)
{
    uint64_t x = test_rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return test_rng_state = x;
}

/* Deterministic data: random blocks, every 7th all zero, every 11th a copy of block 0, and the last block
 * only partly used (a file tail followed by zeros). */
static inline uint8_t *test_data(uint64_t blocks, uint32_t dbs)
{
    uint8_t *d = malloc(blocks * dbs);
    REQUIRE(d, "out of memory");
    uint64_t *w = (uint64_t *)d;
    for (uint64_t i = 0; i < blocks * dbs / 8; i++)
        w[i] = test_rand();
    for (uint64_t b = 1; b < blocks; b++) {
        if (b % 7 == 0)
            memset(d + b * dbs, 0, dbs);
        else if (b % 11 == 0)
            memcpy(d + b * dbs, d, dbs);
    }
    if (blocks > 1)
        memset(d + (blocks - 1) * dbs + dbs / 3, 0, dbs - dbs / 3);
    return d;
}

static inline void test_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0, "open %s: %s", path, strerror(errno));
    REQUIRE(write(fd, data, len) == (ssize_t)len, "write %s", path);
    close(fd);
}

static inline uint8_t *test_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0, "open %s: %s", path, strerror(errno));
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0, "stat %s", path);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    REQUIRE(buf, "out of memory");
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        REQUIRE(n > 0, "read %s", path);
        got += (size_t)n;
    }
    buf[got] = 0;
    close(fd);
    *len = got;
    return buf;
}

/* pwrite into the file descriptor passed as ctx (an int *). */
static inline int test_pwrite_fn(void *ctx, uint64_t offset, const void *data, size_t len,
                                 struct vs_error *err)
{
    int fd = *(int *)ctx;
    if (pwrite(fd, data, len, (off_t)offset) != (ssize_t)len)
        return vs_fail(err, -EIO, "pwrite at %llu failed", (unsigned long long)offset);
    return 0;
}

/* Runs a shell command, output (stdout and stderr) into out; returns its exit status. */
static inline int test_run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static inline int test_run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[16500];
    snprintf(full, sizeof(full), "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    REQUIRE(p, "popen %s", cmd);
    size_t n = 0;
    if (out && cap)
        out[0] = 0;
    char tmp[4096];
    size_t got;
    while ((got = fread(tmp, 1, sizeof(tmp), p)) > 0) {
        if (out && n + 1 < cap) {
            size_t c = got < cap - 1 - n ? got : cap - 1 - n;
            memcpy(out + n, tmp, c);
            n += c;
            out[n] = 0;
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static inline int test_have_veritysetup(void)
{
    return test_run(NULL, 0, "command -v veritysetup >/dev/null || test -x /usr/sbin/veritysetup") == 0;
}

static inline void test_uuid_string(const uint8_t u[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static inline void test_flip_byte(const char *path, uint64_t offset)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0, "open %s", path);
    uint8_t c;
    REQUIRE(pread(fd, &c, 1, (off_t)offset) == 1, "pread %s at %llu", path, (unsigned long long)offset);
    c ^= 0x5a;
    REQUIRE(pwrite(fd, &c, 1, (off_t)offset) == 1, "pwrite %s", path);
    close(fd);
}

#endif
