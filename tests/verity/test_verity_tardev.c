/* The tardev vectors (made by the AKS node code, microsoft/kata-containers release/3.2.0): for each
 * NAME.tarfs, the trailer must parse to the geometry the file has, verity_verify_fd must accept the file
 * against NAME.roothash, rebuilding the tree from the data part must give the vector's tree bytes and root
 * exactly, our trailer must equal the vector's last 4096 bytes, and `veritysetup verify` must accept the file
 * with our generated command. The vectors are read in place: VERITYSNAP_TARDEV_VECTORS, default
 * ../shared/vectors/tardev beside the source. */
#include <dirent.h>

#include "test_util.h"

struct mem_sink {
    uint8_t *buf;
    uint64_t base, len;
};

static int mem_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    struct mem_sink *m = ctx;
    if (offset < m->base || offset + len > m->base + m->len)
        return vs_fail(err, -EIO, "write at %llu+%zu outside the tree area", (unsigned long long)offset, len);
    memcpy(m->buf + (offset - m->base), data, len);
    return 0;
}

static void check_vector(const char *dir, const char *name, bool have_veritysetup)
{
    char path[1024], rootpath[1024], out[8192], cmd[16384];
    snprintf(path, sizeof(path), "%s/%s.tarfs", dir, name);
    snprintf(rootpath, sizeof(rootpath), "%s/%s.roothash", dir, name);
    size_t size, rootlen;
    uint8_t *file = test_read_file(path, &size);
    char *root_hex = (char *)test_read_file(rootpath, &rootlen);
    while (rootlen && (root_hex[rootlen - 1] == '\n' || root_hex[rootlen - 1] == ' '))
        root_hex[--rootlen] = 0;

    struct vs_error err = {0};
    struct verity_layout l;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0, "open %s", path);
    CHECK_OK(verity_layout_read_tardev(fd, &l, &err), err);
    REQUIRE(l.params.data_block_size == 4096 && l.params.hash_block_size == 4096 && !l.params.superblock &&
                l.params.format == 1 && l.params.salt_size == 32 &&
                strcmp(l.params.hash_algorithm, "sha256") == 0,
            "%s: parameters", name);
    REQUIRE(l.hash_offset == l.data_blocks * 4096 && l.hash_start_block == l.data_blocks &&
                l.file_size + VERITY_TARDEV_TRAILER_SIZE == size,
            "%s: geometry", name);
    REQUIRE(vs_hex_decode(root_hex, l.root_hash, sizeof(l.root_hash)) == 32, "%s: roothash file", name);

    struct verity_verify_report rep;
    CHECK_OK(verity_verify_fd(fd, &l, &rep, &err), err);
    REQUIRE(rep.data_blocks_checked == l.data_blocks && rep.hash_blocks_checked == l.tree_blocks,
            "%s: counts", name);
    close(fd);

    /* Rebuild from the data part. */
    struct verity_params p;
    verity_params_default(&p);
    p.superblock = false;
    struct verity_builder *b = verity_builder_new(&p, &err);
    REQUIRE(b, "%s", err.message);
    for (uint64_t i = l.data_blocks; i-- > 0;)
        CHECK_OK(verity_builder_add_block(b, i, file + i * 4096, &err), err);
    struct mem_sink sink = {.base = l.hash_offset, .len = l.tree_blocks * 4096};
    sink.buf = calloc(1, sink.len);
    struct verity_layout built;
    CHECK_OK(verity_builder_finish(b, l.data_blocks, l.data_blocks * 4096, mem_write, &sink, &built, &err),
             err);
    verity_builder_free(b);
    char built_hex[65];
    vs_hex_encode(built.root_hash, 32, built_hex);
    REQUIRE(strcmp(built_hex, root_hex) == 0, "%s: rebuilt root %s, vector %s", name, built_hex, root_hex);
    REQUIRE(built.tree_blocks == l.tree_blocks && built.file_size == l.file_size, "%s: rebuilt geometry",
            name);
    REQUIRE(memcmp(sink.buf, file + l.hash_offset, sink.len) == 0, "%s: rebuilt tree bytes differ", name);
    uint8_t trailer[VERITY_TARDEV_TRAILER_SIZE];
    verity_tardev_trailer(&built, trailer);
    REQUIRE(memcmp(trailer, file + size - VERITY_TARDEV_TRAILER_SIZE, sizeof(trailer)) == 0,
            "%s: trailer differs", name);

    if (have_veritysetup) {
        REQUIRE(verity_veritysetup_command(&l, path, cmd, sizeof(cmd)) == 0, "command");
        int rc = test_run(out, sizeof(out), "%s", cmd);
        REQUIRE(rc == 0, "%s: `%s` failed: %s", name, cmd, out);
    }
    printf("ok   %-12s %llu data blocks, %llu tree blocks, root %s\n", name,
           (unsigned long long)l.data_blocks, (unsigned long long)l.tree_blocks, root_hex);
    free(sink.buf);
    free(file);
    free(root_hex);
}

int main(void)
{
    char dir[1024];
    const char *env = getenv("VERITYSNAP_TARDEV_VECTORS");
    if (env && *env)
        snprintf(dir, sizeof(dir), "%s", env);
    else
        snprintf(dir, sizeof(dir), "%s/../shared/vectors/tardev", VS_SOURCE_DIR);
    DIR *d = opendir(dir);
    if (!d) {
        printf("SKIP: tardev vectors not found at %s (set VERITYSNAP_TARDEV_VECTORS)\n", dir);
        return TEST_SKIP;
    }
    bool have_veritysetup = test_have_veritysetup();
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".tarfs") == 0) {
            char name[256];
            snprintf(name, sizeof(name), "%.*s", (int)(n - 6), e->d_name);
            check_vector(dir, name, have_veritysetup);
            count++;
        }
    }
    closedir(d);
    REQUIRE(count > 0, "no .tarfs vectors in %s", dir);

    /* A trailer that disagrees with the file size is refused. */
    test_setup("verity-tardev");
    char path[512];
    test_path(path, sizeof(path), "bad.tarfs");
    uint8_t *buf = calloc(1, 4 * 4096);
    struct verity_layout l = {0};
    verity_params_default(&l.params);
    l.data_blocks = 3; /* 3 data + 1 tree + trailer = 5 blocks, the file has 4 */
    verity_tardev_trailer(&l, buf + 3 * 4096);
    test_write_file(path, buf, 4 * 4096);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct vs_error err = {0};
    int r = verity_layout_read_tardev(fd, &l, &err);
    REQUIRE(r == -EBADMSG, "inconsistent trailer accepted: %d", r);
    printf("ok   inconsistent trailer refused: %s\n", err.message);
    close(fd);
    free(buf);
    printf("%d vectors from %s\n", count, dir);
    return 0;
}
