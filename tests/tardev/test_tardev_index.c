/* Tests of tarfs/tardev_index.c against the AKS node's own output (shared vectors) and hand-made corruptions.
 *
 * vectors DIR: every NAME.tar in DIR ($VERITYSNAP_TARDEV_VECTORS wins), fed in 1/7/511/4096/whole chunks,
 *   must give tar + index equal to the first data_blocks*4096 bytes of NAME.tarfs.
 * index TAR OUT [--strict]: writes tar + index to OUT; warnings on stdout as "WARN entry<TAB>message".
 * list FILE: lists a tar + index file (the whole file is the data part).
 * corrupt: truncated / bad-checksum tars fail with -EBADMSG naming the offset.
 * Exit 77 means skipped (ctest SKIP_RETURN_CODE). */
#include "tarfs/tardev_index.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mem {
    uint8_t *data;
    size_t len, cap;
};

static int mem_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    struct mem *m = ctx;
    if (offset != m->len)
        return vs_fail(err, -EIO, "non-sequential write at %" PRIu64 " (have %zu)", offset, m->len);
    if (m->cap - m->len < len) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap - m->len < len)
            cap *= 2;
        uint8_t *p = realloc(m->data, cap);
        if (!p)
            return vs_fail(err, -ENOMEM, "out of memory");
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, len);
    m->len += len;
    return 0;
}

static int read_file(const char *path, struct mem *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    out->len = 0;
    uint8_t buf[65536];
    size_t n;
    struct vs_error err;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        if (mem_write(out, out->len, buf, n, &err)) {
            fclose(f);
            return -ENOMEM;
        }
    fclose(f);
    return 0;
}

static void print_warning(void *ctx, const char *entry, const char *message)
{
    (void)ctx;
    printf("WARN %s\t%s\n", entry, message);
}

static void count_warning(void *ctx, const char *entry, const char *message)
{
    (void)entry;
    (void)message;
    (*(int *)ctx)++;
}

/* Builds tar + index for data fed in chunks of `chunk` bytes (0 = all at once) into out (which starts as the
 * tar). */
static int build(const struct mem *tar, size_t chunk, bool strict,
                 void (*warning)(void *, const char *, const char *), void *wctx, struct mem *out,
                 uint64_t *index_size, struct vs_error *err)
{
    struct tardev_index *idx = tardev_index_new(warning, wctx, strict, err);
    if (!idx)
        return err->code;
    out->len = 0;
    int r = mem_write(out, 0, tar->data, tar->len, err);
    size_t step = chunk ? chunk : (tar->len ? tar->len : 1);
    for (size_t off = 0; !r && off < tar->len; off += step)
        r = tardev_index_feed(idx, tar->data + off, tar->len - off < step ? tar->len - off : step, err);
    uint64_t entries = 0;
    if (!r)
        r = tardev_index_finish(idx, mem_write, out, index_size, &entries, err);
    tardev_index_free(idx);
    return r;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int cmd_vectors(const char *dir)
{
    const char *env = getenv("VERITYSNAP_TARDEV_VECTORS");
    if (env && *env)
        dir = env;
    DIR *d = opendir(dir);
    if (!d) {
        printf("SKIP: tardev vectors not found at %s (set VERITYSNAP_TARDEV_VECTORS)\n", dir);
        return 77;
    }
    static const size_t chunks[] = {1, 7, 511, 4096, 0};
    int failures = 0, vectors = 0, failed_vectors = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!ends_with(de->d_name, ".tar"))
            continue;
        char name[512], path[1024];
        snprintf(name, sizeof(name), "%.*s", (int)(strlen(de->d_name) - 4), de->d_name);
        struct mem tar = {0}, expect = {0}, out = {0};
        snprintf(path, sizeof(path), "%s/%s.tar", dir, name);
        if (read_file(path, &tar)) {
            printf("FAIL %s: cannot read %s\n", name, path);
            failures++;
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s.tarfs", dir, name);
        if (read_file(path, &expect) || expect.len < 4096 || expect.len % 4096) {
            printf("FAIL %s: missing or bad %s\n", name, path);
            failures++;
            free(tar.data);
            continue;
        }
        vectors++;
        int before = failures;
        /* Trailer: the last 4096-byte block holds {u32 dbs, u32 hbs, u64 data_blocks} at [3584, 3600). */
        const uint8_t *tr = expect.data + expect.len - 4096 + 3584;
        uint64_t blocks = 0;
        for (int i = 7; i >= 0; i--)
            blocks = (blocks << 8) | tr[8 + i];
        uint64_t want = blocks * 4096;
        for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
            struct vs_error err = {0};
            uint64_t index_size = 0;
            int r = build(&tar, chunks[c], false, NULL, NULL, &out, &index_size, &err);
            if (r) {
                printf("FAIL %s (chunk %zu): %d %s\n", name, chunks[c], r, err.message);
                failures++;
                continue;
            }
            if (out.len != want || index_size != want - tar.len || want > expect.len ||
                memcmp(out.data, expect.data, want) != 0) {
                size_t diff = 0;
                while (diff < out.len && diff < want && diff < expect.len &&
                       out.data[diff] == expect.data[diff])
                    diff++;
                printf("FAIL %s (chunk %zu): %zu bytes (index %" PRIu64 "), expected %" PRIu64
                       ", first difference at byte %zu\n",
                       name, chunks[c], out.len, index_size, want, diff);
                failures++;
                continue;
            }
        }
        if (failures != before)
            failed_vectors++;
        else
            printf("ok %s: tar %zu + index %" PRIu64 " bytes byte-identical in every chunking\n", name,
                   tar.len, want - tar.len);
        free(tar.data);
        free(expect.data);
        free(out.data);
    }
    closedir(d);
    if (!vectors) {
        printf("SKIP: no NAME.tar vectors in %s\n", dir);
        return 77;
    }
    printf("%d passed, %d failed\n", vectors - failed_vectors, failed_vectors);
    return failed_vectors ? 1 : 0;
}

static int cmd_index(const char *tar_path, const char *out_path, bool strict)
{
    struct mem tar = {0}, out = {0};
    if (read_file(tar_path, &tar)) {
        fprintf(stderr, "cannot read %s\n", tar_path);
        free(tar.data);
        return 1;
    }
    struct vs_error err = {0};
    uint64_t index_size;
    int r = build(&tar, 4093, strict, print_warning, NULL, &out, &index_size, &err);
    if (r) {
        printf("ERROR %d %s\n", r, err.message);
        free(tar.data);
        free(out.data);
        return 2;
    }
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(out.data, 1, out.len, f) != out.len || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", out_path);
        return 1;
    }
    free(tar.data);
    free(out.data);
    return 0;
}

static int print_entry(void *ctx, const struct tardev_entry *e)
{
    (void)ctx;
    printf("%s\t%o\t%u\t%u\t%" PRIu64 "\t%" PRIu64 "\t%" PRIu64 "\t%d\t%s\t%u\t%u\n", e->path, e->mode,
           e->uid, e->gid, e->mtime, e->size, e->offset, e->opaque ? 1 : 0,
           e->link_target ? e->link_target : "-", e->rdev_major, e->rdev_minor);
    return 0;
}

static int cmd_list(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    struct vs_error err = {0};
    int r = tardev_index_list(fd, (uint64_t)st.st_size, print_entry, NULL, &err);
    close(fd);
    if (r) {
        printf("ERROR %d %s\n", r, err.message);
        return 2;
    }
    return 0;
}

/* A ustar header with a valid checksum. */
static void make_header(uint8_t *h, const char *name, char type, uint64_t size)
{
    memset(h, 0, 512);
    snprintf((char *)h, 100, "%s", name);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011" PRIo64, size);
    memcpy(h + 136, "14524543400", 12);
    h[156] = (uint8_t)type;
    memcpy(h + 257,
           "ustar\0"
           "00",
           8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
}

static int expect_error(const char *what, const uint8_t *data, size_t len, const char *offset_text)
{
    struct mem tar = {(uint8_t *)data, len, len}, out = {0};
    struct vs_error err = {0};
    uint64_t index_size;
    int r = build(&tar, 100, false, NULL, NULL, &out, &index_size, &err);
    free(out.data);
    if (r != -EBADMSG || !strstr(err.message, offset_text)) {
        printf("FAIL corrupt %s: got %d \"%s\", want -EBADMSG naming \"%s\"\n", what, r, err.message,
               offset_text);
        return 1;
    }
    printf("ok corrupt %s: %s\n", what, err.message);
    return 0;
}

static int cmd_corrupt(void)
{
    uint8_t t[512 * 6];
    int failures = 0, tests = 0;

    /* Well formed: a file of 600 bytes then the end-of-archive blocks. */
    memset(t, 0, sizeof(t));
    make_header(t, "a", '0', 600);
    make_header(t + 1536, "b", '5', 0);
    struct mem tar = {t, sizeof(t), sizeof(t)}, out = {0};
    struct vs_error err = {0};
    uint64_t index_size = 0;
    int warnings = 0;
    tests++;
    int r = build(&tar, 3, false, count_warning, &warnings, &out, &index_size, &err);
    if (r || (sizeof(t) + index_size) % 4096 || warnings) {
        printf("FAIL well-formed tar: %d %s (%d warnings)\n", r, err.message, warnings);
        failures++;
    }
    free(out.data);

    tests++; /* cut inside the second header */
    failures += expect_error("truncated header", t, 1536 + 300, "byte 1536");
    tests++; /* cut inside the first file's data */
    failures += expect_error("truncated data", t, 1000, "byte 1000");
    tests++; /* checksum broken on the second header */
    uint8_t bad[sizeof(t)];
    memcpy(bad, t, sizeof(t));
    bad[1536 + 10] ^= 1;
    failures += expect_error("bad checksum", bad, sizeof(bad), "byte 1536");
    tests++; /* size field not a number */
    memcpy(bad, t, sizeof(t));
    memcpy(bad + 124, "zzzzzzzzzzz", 11);
    memset(bad + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += bad[i];
    snprintf((char *)bad + 148, 8, "%06o", sum);
    failures += expect_error("bad size field", bad, sizeof(bad), "byte 0");
    tests++; /* a pax header with nothing after it */
    uint8_t px[512 * 2];
    memset(px, 0, sizeof(px));
    make_header(px, "pax", 'x', 0);
    failures += expect_error("dangling pax header", px, sizeof(px), "byte 512");

    printf("%d passed, %d failed\n", tests - failures, failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "vectors") == 0)
        return cmd_vectors(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "index") == 0)
        return cmd_index(argv[2], argv[3], argc >= 5 && strcmp(argv[4], "--strict") == 0);
    if (argc >= 3 && strcmp(argv[1], "list") == 0)
        return cmd_list(argv[2]);
    if (argc >= 2 && strcmp(argv[1], "corrupt") == 0)
        return cmd_corrupt();
    fprintf(stderr, "usage: %s vectors DIR | index TAR OUT [--strict] | list FILE | corrupt\n", argv[0]);
    return 1;
}
