/* Tampering: one byte flipped in data blocks (first, middle, the partly used last one), in tree blocks (top,
 * level 0, a spare byte), in the superblock, and a truncated file. verity_verify_fd must fail with -EBADMSG
 * and name the right block and kind, and `veritysetup verify` (the oracle) must fail too. A large image
 * exercises the two-thread path. */
#include "test_util.h"

struct image {
    char path[512];
    struct verity_layout l;
    uint64_t level0_start; /* file hash block of the first level-0 block */
    size_t size;
};

static bool have_veritysetup;

static void make_image(struct image *im, const char *name, uint64_t blocks, bool superblock)
{
    snprintf(im->path, sizeof(im->path), "%s/%s", test_dir, name);
    struct verity_params p;
    verity_params_default(&p);
    p.superblock = superblock;
    for (uint32_t i = 0; i < p.salt_size; i++)
        p.salt[i] = (uint8_t)i;
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(&p, &err);
    uint8_t *data = test_data(blocks, p.data_block_size);
    CHECK_OK(verity_builder_add_blocks(b, 0, data, blocks * p.data_block_size, &err), err);
    test_write_file(im->path, data, blocks * p.data_block_size);
    int fd = open(im->path, O_RDWR | O_CLOEXEC);
    CHECK_OK(verity_builder_finish(b, blocks, blocks * p.data_block_size, test_pwrite_fn, &fd, &im->l, &err),
             err);
    close(fd);
    verity_builder_free(b);
    free(data);
    /* Level 0 is stored last: the tree minus level 0 is ceil(level0 / 128) + ... blocks; recompute it. */
    uint64_t level0 = (blocks + 127) / 128, upper = 0;
    for (uint64_t n = level0; n > 1; n = (n + 127) / 128)
        upper += (n + 127) / 128;
    im->level0_start = im->l.hash_start_block + upper;
    im->size = (size_t)im->l.file_size;
}

static void copy_file(const char *from, const char *to)
{
    size_t len;
    uint8_t *buf = test_read_file(from, &len);
    test_write_file(to, buf, len);
    free(buf);
}

/* Flips the bytes at offsets in a copy of the image and checks both verifiers refuse it. */
static void expect_bad(const struct image *im, const char *what, const uint64_t *offsets, int count,
                       bool in_tree, uint64_t block)
{
    char path[600], cmd[16384], out[8192];
    snprintf(path, sizeof(path), "%s.tampered", im->path);
    copy_file(im->path, path);
    for (int i = 0; i < count; i++)
        test_flip_byte(path, offsets[i]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct verity_verify_report rep;
    struct vs_error err = {0};
    int r = verity_verify_fd(fd, &im->l, &rep, &err);
    close(fd);
    REQUIRE(r == -EBADMSG, "%s: verity_verify_fd returned %d (%s)", what, r, err.message);
    REQUIRE(rep.bad && rep.bad_in_tree == in_tree && rep.bad_block == block,
            "%s: report bad=%d in_tree=%d block=%llu, want in_tree=%d block=%llu (%s)", what, rep.bad,
            rep.bad_in_tree, (unsigned long long)rep.bad_block, in_tree, (unsigned long long)block,
            err.message);
    if (have_veritysetup) {
        REQUIRE(verity_veritysetup_command(&im->l, path, cmd, sizeof(cmd)) == 0, "command");
        int rc = test_run(out, sizeof(out), "%s", cmd);
        REQUIRE(rc != 0, "%s: veritysetup verify accepted the tampered file", what);
        char *nl = strchr(out, '\n');
        if (nl)
            *nl = 0;
        printf("ok   %-40s -> %s\n     veritysetup: %s\n", what, err.message, out);
    } else {
        printf("ok   %-40s -> %s\n", what, err.message);
    }
    unlink(path);
}

int main(void)
{
    have_veritysetup = test_have_veritysetup();
    if (!have_veritysetup)
        printf("note: veritysetup is not installed, checking verity_verify_fd only\n");
    test_setup("verity-tamper");
    const uint64_t D = 4096;

    /* 300 blocks: two levels, level 0 of 3 blocks (the last holding 44 digests), a superblock before the
     * tree. */
    struct image im;
    make_image(&im, "sb.img", 300, true);
    uint64_t hbs = 4096, top = im.l.hash_start_block, l0 = im.level0_start;
    REQUIRE(top * hbs == im.l.hash_offset + hbs && l0 == top + 1, "geometry: top %llu level0 %llu",
            (unsigned long long)top, (unsigned long long)l0);
    {
        struct vs_error err = {0};
        struct verity_verify_report rep;
        int fd = open(im.path, O_RDONLY | O_CLOEXEC);
        CHECK_OK(verity_verify_fd(fd, &im.l, &rep, &err), err);
        close(fd);
    }
    uint64_t o[4];
    o[0] = 0 * D + 100;
    expect_bad(&im, "data block 0", o, 1, false, 0);
    o[0] = 150 * D + 4095;
    expect_bad(&im, "data block 150 (last byte)", o, 1, false, 150);
    o[0] = 299 * D + 4000; /* in the zero tail of the partly used last block */
    expect_bad(&im, "data block 299 (unused tail)", o, 1, false, 299);
    o[0] = 200 * D + 1;
    o[1] = 130 * D + 2;
    expect_bad(&im, "data blocks 200 and 130: first reported", o, 2, false, 130);
    o[0] = top * hbs + 33;
    expect_bad(&im, "top hash block (digest of level 0 block 1)", o, 1, true, top);
    o[0] = (l0 + 1) * hbs + 5 * 32 + 3;
    expect_bad(&im, "level 0 hash block 1 (digest of block 133)", o, 1, true, l0 + 1);
    o[0] = (l0 + 2) * hbs + 44 * 32 + 5;
    expect_bad(&im, "level 0 block 2, spare byte", o, 1, true, l0 + 2);
    o[0] = (top)*hbs + 3 * 32 + 1;
    expect_bad(&im, "top hash block, spare byte", o, 1, true, top);
    o[0] = im.l.hash_offset + 88 + 3;
    expect_bad(&im, "superblock salt", o, 1, true, im.l.hash_offset / hbs);
    o[0] = im.l.hash_offset + 72;
    expect_bad(&im, "superblock data block count", o, 1, true, im.l.hash_offset / hbs);
    o[0] = im.l.hash_offset + 1;
    expect_bad(&im, "superblock signature", o, 1, true, im.l.hash_offset / hbs);

    /* Truncation in the tree. */
    {
        char path[600];
        snprintf(path, sizeof(path), "%s.short", im.path);
        copy_file(im.path, path);
        REQUIRE(truncate(path, (off_t)(im.size - 100)) == 0, "truncate");
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct verity_verify_report rep;
        struct vs_error err = {0};
        int r = verity_verify_fd(fd, &im.l, &rep, &err);
        close(fd);
        REQUIRE(r == -EBADMSG && rep.bad && rep.bad_in_tree && rep.bad_block == l0 + 2, "truncated: %d %s", r,
                err.message);
        printf("ok   %-40s -> %s\n", "truncated file", err.message);
    }

    /* 1 block, no tree: the data block is checked against the root directly. */
    struct image one;
    make_image(&one, "one.img", 1, false);
    o[0] = 10;
    expect_bad(&one, "1-block image, data block 0", o, 1, false, 0);

    /* 10000 blocks (40 MiB, verified by two threads): a flip in each half reports the first; one in the
     * second half alone is found by the second thread. */
    struct image big;
    make_image(&big, "big.img", 10000, false);
    o[0] = 9000 * D + 9;
    expect_bad(&big, "big: data block 9000", o, 1, false, 9000);
    o[0] = 9000 * D + 9;
    o[1] = 1234 * D + 9;
    expect_bad(&big, "big: data blocks 9000 and 1234", o, 2, false, 1234);
    o[0] = 9000 * D + 9;
    o[1] = (big.level0_start + 60) * hbs + 7;
    expect_bad(&big, "big: data 9000, level 0 block 60", o, 2, true, big.level0_start + 60);
    return 0;
}
