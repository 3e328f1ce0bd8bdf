/* The builder against veritysetup 2.x: for each case the same data goes through our builder (blocks in a
 * shuffled order, the hashing thread on and off in turn) and through `veritysetup format` with the same salt,
 * offset and UUID; the root hashes and the whole files (data, superblock, tree) must be equal byte for byte.
 * Then `veritysetup verify` (the command we generate) and `veritysetup dump` must accept our file, and
 * verity_verify_fd must too. */
#include "test_util.h"

struct tcase {
    const char *name;
    const char *alg;
    uint32_t dbs, hbs, format, salt_size;
    bool superblock;
    uint64_t blocks;
    uint64_t gap; /* bytes between the data and the requested hash offset (may be unaligned) */
    int add_mode; /* 0 single blocks shuffled, 1 runs of blocks (add_blocks) shuffled, 2 block 0 last */
};

static const struct tcase cases[] = {
    {"1 block, superblock", "sha256", 4096, 4096, 1, 32, true, 1, 0, 0},
    {"1 block, no superblock", "sha256", 4096, 4096, 1, 32, false, 1, 0, 0},
    {"128 blocks (one level)", "sha256", 4096, 4096, 1, 32, true, 128, 0, 1},
    {"128 blocks, no superblock", "sha256", 4096, 4096, 1, 32, false, 128, 0, 2},
    {"129 blocks (two levels)", "sha256", 4096, 4096, 1, 32, true, 129, 0, 0},
    {"16384 blocks (two levels, full)", "sha256", 4096, 4096, 1, 32, true, 16384, 0, 1},
    {"16385 blocks (three levels)", "sha256", 4096, 4096, 1, 32, false, 16385, 0, 2},
    {"512/512, 1000 blocks", "sha256", 512, 512, 1, 32, true, 1000, 0, 0},
    {"512/512, 257 blocks", "sha256", 512, 512, 1, 32, false, 257, 0, 1},
    {"512/4096, 129 blocks", "sha256", 512, 4096, 1, 32, true, 129, 0, 0},
    {"4096/512, 300 blocks", "sha256", 4096, 512, 1, 32, false, 300, 0, 0},
    {"sha512, 70 blocks", "sha512", 4096, 4096, 1, 32, true, 70, 0, 0},
    {"sha512 512/512, 300 blocks", "sha512", 512, 512, 1, 32, false, 300, 0, 1},
    {"format 0, 300 blocks", "sha256", 4096, 4096, 0, 32, true, 300, 0, 0},
    {"format 0, empty salt", "sha256", 4096, 4096, 0, 0, false, 300, 0, 0},
    {"format 1, empty salt", "sha256", 4096, 4096, 1, 0, true, 300, 0, 0},
    {"256-byte salt", "sha256", 4096, 4096, 1, 256, true, 50, 0, 0},
    {"7-byte salt, format 0", "sha256", 1024, 2048, 0, 7, true, 333, 0, 1},
    {"gap, unaligned hash offset", "sha256", 4096, 4096, 1, 32, true, 10, 5000, 0},
    {"gap, no superblock", "sha256", 4096, 4096, 1, 32, false, 10, 3 * 4096 + 512, 0},
};

static void shuffle(uint64_t *v, uint64_t n)
{
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = test_rand() % i, t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

static void build(const struct tcase *t, const struct verity_params *p, const uint8_t *data, const char *path,
                  bool hash_thread, struct verity_layout *l)
{
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(p, &err);
    REQUIRE(b, "builder_new: %s", err.message);
    verity_builder_set_hash_thread(b, hash_thread);
    uint64_t n = t->blocks;
    uint64_t *order = malloc(n * sizeof(*order));
    for (uint64_t i = 0; i < n; i++)
        order[i] = i;
    if (t->add_mode == 0) {
        shuffle(order, n);
        for (uint64_t i = 0; i < n; i++)
            CHECK_OK(verity_builder_add_block(b, order[i], data + order[i] * t->dbs, &err), err);
    } else if (t->add_mode == 1) {
        /* Runs of 1..40 blocks, the runs in shuffled order. */
        uint64_t runs = 0, *start = malloc((n + 1) * sizeof(*start));
        for (uint64_t i = 0; i < n; i += 1 + test_rand() % 40)
            start[runs++] = i;
        start[runs] = n;
        uint64_t *ro = malloc(runs * sizeof(*ro));
        for (uint64_t i = 0; i < runs; i++)
            ro[i] = i;
        shuffle(ro, runs);
        for (uint64_t i = 0; i < runs; i++) {
            uint64_t s = start[ro[i]], e = start[ro[i] + 1];
            CHECK_OK(verity_builder_add_blocks(b, s, data + s * t->dbs, (e - s) * t->dbs, &err), err);
        }
        free(ro);
        free(start);
    } else {
        /* What the EROFS writer does: everything in order, the superblock's block 0 last. */
        for (uint64_t i = 1; i < n; i++)
            CHECK_OK(verity_builder_add_block(b, i, data + i * t->dbs, &err), err);
        CHECK_OK(verity_builder_add_block(b, 0, data, &err), err);
    }
    free(order);
    test_write_file(path, data, n * t->dbs);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0, "open %s", path);
    CHECK_OK(verity_builder_finish(b, n, n * t->dbs + t->gap, test_pwrite_fn, &fd, l, &err), err);
    close(fd);
    verity_builder_free(b);
}

static void run_case(int idx, const struct tcase *t)
{
    char ours[512], theirs[512], rootfile[512], out[8192], cmd[16384];
    snprintf(ours, sizeof(ours), "%s/ours-%d", test_dir, idx);
    snprintf(theirs, sizeof(theirs), "%s/theirs-%d", test_dir, idx);
    snprintf(rootfile, sizeof(rootfile), "%s/root-%d", test_dir, idx);
    struct verity_params p;
    verity_params_default(&p);
    snprintf(p.hash_algorithm, sizeof(p.hash_algorithm), "%s", t->alg);
    p.data_block_size = t->dbs;
    p.hash_block_size = t->hbs;
    p.format = t->format;
    p.salt_size = t->salt_size;
    for (uint32_t i = 0; i < t->salt_size; i++)
        p.salt[i] = (uint8_t)(i * 37 + 11);
    p.superblock = t->superblock;
    struct vs_error err = {0};
    CHECK_OK(verity_params_check(&p, &err), err);

    uint8_t *data = test_data(t->blocks, t->dbs);
    struct verity_layout l;
    build(t, &p, data, ours, idx % 2 == 0, &l);
    uint64_t hbs = t->hbs, want_offset = (t->blocks * t->dbs + t->gap + hbs - 1) / hbs * hbs;
    REQUIRE(l.hash_offset == want_offset, "%s: hash offset %llu, want %llu", t->name,
            (unsigned long long)l.hash_offset, (unsigned long long)want_offset);

    /* The oracle: veritysetup format over a copy of the data, same salt, offset and (with a superblock) UUID.
     */
    test_write_file(theirs, data, t->blocks * t->dbs);
    char salt[2 * VERITY_MAX_SALT + 1] = "-", uuid[37];
    if (t->salt_size)
        vs_hex_encode(p.salt, p.salt_size, salt);
    test_uuid_string(l.uuid, uuid);
    int rc =
        test_run(out, sizeof(out),
                 "veritysetup format %s %s --hash-offset=%llu --data-blocks=%llu --hash=%s "
                 "--data-block-size=%u --hash-block-size=%u --format=%u --salt=%s %s --uuid=%s "
                 "--root-hash-file=%s",
                 theirs, theirs, (unsigned long long)l.hash_offset, (unsigned long long)t->blocks, t->alg,
                 t->dbs, t->hbs, t->format, salt, t->superblock ? "" : "--no-superblock", uuid, rootfile);
    REQUIRE(rc == 0, "%s: veritysetup format failed (%d): %s", t->name, rc, out);
    size_t rootlen, olen, tlen;
    char *root_hex = (char *)test_read_file(rootfile, &rootlen);
    char ours_hex[2 * VERITY_MAX_DIGEST + 1];
    vs_hex_encode(l.root_hash, l.digest_size, ours_hex);
    REQUIRE(strcmp(root_hex, ours_hex) == 0, "%s: root hash %s, veritysetup %s", t->name, ours_hex, root_hex);
    uint8_t *a = test_read_file(ours, &olen), *bb = test_read_file(theirs, &tlen);
    REQUIRE(olen == tlen, "%s: our file is %zu bytes, veritysetup's %zu", t->name, olen, tlen);
    REQUIRE(olen == l.file_size, "%s: file is %zu bytes, layout says %llu", t->name, olen,
            (unsigned long long)l.file_size);
    for (size_t i = 0; i < olen; i++)
        REQUIRE(a[i] == bb[i], "%s: files differ first at byte %zu (hash area starts at %llu, tree at %llu)",
                t->name, i, (unsigned long long)l.hash_offset,
                (unsigned long long)(l.hash_start_block * hbs));

    /* veritysetup verify with the command line we generate. */
    REQUIRE(verity_veritysetup_command(&l, ours, cmd, sizeof(cmd)) == 0, "command");
    rc = test_run(out, sizeof(out), "%s", cmd);
    REQUIRE(rc == 0, "%s: `%s` failed (%d): %s", t->name, cmd, rc, out);

    /* Our verifier, and (with a superblock) veritysetup dump and our reader against the layout. */
    int fd = open(ours, O_RDONLY | O_CLOEXEC);
    struct verity_verify_report rep;
    CHECK_OK(verity_verify_fd(fd, &l, &rep, &err), err);
    REQUIRE(!rep.bad && rep.data_blocks_checked == t->blocks && rep.hash_blocks_checked == l.tree_blocks,
            "%s: report %llu data %llu hash", t->name, (unsigned long long)rep.data_blocks_checked,
            (unsigned long long)rep.hash_blocks_checked);
    if (t->superblock) {
        struct verity_layout r;
        CHECK_OK(verity_layout_read_superblock(fd, l.hash_offset, &r, &err), err);
        REQUIRE(r.data_blocks == l.data_blocks && r.hash_start_block == l.hash_start_block &&
                    r.tree_blocks == l.tree_blocks && r.file_size == l.file_size &&
                    memcmp(r.uuid, l.uuid, 16) == 0 && memcmp(&r.params, &l.params, sizeof(r.params)) == 0,
                "%s: superblock read back differs", t->name);
        rc = test_run(out, sizeof(out), "veritysetup dump %s --hash-offset=%llu", ours,
                      (unsigned long long)l.hash_offset);
        REQUIRE(rc == 0, "%s: veritysetup dump failed: %s", t->name, out);
        char want[512];
        snprintf(want, sizeof(want), "UUID:            \t%s", uuid);
        REQUIRE(strstr(out, want), "%s: dump lacks %s:\n%s", t->name, want, out);
        snprintf(want, sizeof(want), "Hash blocks:     \t%llu", (unsigned long long)l.tree_blocks);
        REQUIRE(strstr(out, want), "%s: dump lacks %s:\n%s", t->name, want, out);
    }
    close(fd);
    printf("ok   %-34s root %.16s... tree %llu blocks at hash block %llu (hash thread %s)\n", t->name,
           ours_hex, (unsigned long long)l.tree_blocks, (unsigned long long)l.hash_start_block,
           idx % 2 == 0 ? "on" : "off");
    free(a);
    free(bb);
    free(root_hex);
    free(data);
    unlink(ours);
    unlink(theirs);
}

int main(void)
{
    if (!test_have_veritysetup()) {
        printf("SKIP: veritysetup is not installed (apt-get install cryptsetup-bin)\n");
        return TEST_SKIP;
    }
    test_setup("verity-builder");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_case((int)i, &cases[i]);

    /* A file name that needs quoting in the generated command. */
    static const struct tcase q = {"quoted name", "sha256", 4096, 4096, 1, 32, false, 3, 0, 0};
    char path[512], cmd[16384], out[4096];
    snprintf(path, sizeof(path), "%s/it's a layer", test_dir);
    struct verity_params p;
    verity_params_default(&p);
    p.superblock = false;
    uint8_t *data = test_data(q.blocks, q.dbs);
    struct verity_layout l;
    build(&q, &p, data, path, true, &l);
    REQUIRE(verity_veritysetup_command(&l, path, cmd, sizeof(cmd)) == 0, "command");
    int rc = test_run(out, sizeof(out), "%s", cmd);
    REQUIRE(rc == 0, "`%s` failed (%d): %s", cmd, rc, out);
    free(data);
    printf("ok   quoted file name in the veritysetup command\n");
    return 0;
}
