/* Unit checks of the parts without an external oracle run: parameter checks, tree sizes (F.1 numbers),
 * builder misuse, the UUID rule (recomputed here with OpenSSL from the documented rule), superblock reader
 * errors, the sidecar round trip and containerd's two-key form, the table line, and the tardev trailer bytes
 * (anchors.md 1). */
#include <dirent.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "test_util.h"

static int null_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    (void)ctx, (void)offset, (void)data, (void)len, (void)err;
    return 0;
}

static struct verity_layout build_zero(const struct verity_params *p, uint64_t blocks, uint64_t hash_offset)
{
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(p, &err);
    REQUIRE(b, "%s", err.message);
    uint8_t *block = calloc(1, p->data_block_size);
    for (uint64_t i = 0; i < blocks; i++)
        CHECK_OK(verity_builder_add_block(b, i, block, &err), err);
    struct verity_layout l;
    CHECK_OK(verity_builder_finish(b, blocks, hash_offset, null_write, NULL, &l, &err), err);
    verity_builder_free(b);
    free(block);
    return l;
}

static void expect_bad_params(int which, const char *word)
{
    struct verity_params p;
    verity_params_default(&p);
    switch (which) {
    case 0:
        strcpy(p.hash_algorithm, "md5");
        break;
    case 1:
        p.data_block_size = 8192;
        break;
    case 2:
        p.data_block_size = 1000;
        break;
    case 3:
        p.hash_block_size = 256;
        break;
    case 4:
        p.salt_size = 257;
        break;
    case 5:
        p.format = 2;
        break;
    case 6:
        memset(p.hash_algorithm, 'a', sizeof(p.hash_algorithm));
        break;
    }
    struct vs_error err = {0};
    REQUIRE(verity_params_check(&p, &err) == -EINVAL, "bad params %d accepted", which);
    REQUIRE(strstr(err.message, word), "message for %d does not name %s: %s", which, word, err.message);
    REQUIRE(verity_builder_new(&p, &err) == NULL, "builder_new accepted bad params %d", which);
}

static void test_params(void)
{
    struct verity_params p;
    struct vs_error err = {0};
    verity_params_default(&p);
    static const uint8_t zero[32];
    REQUIRE(strcmp(p.hash_algorithm, "sha256") == 0 && p.data_block_size == 4096 &&
                p.hash_block_size == 4096 && p.salt_size == 32 && memcmp(p.salt, zero, 32) == 0 &&
                p.format == 1 && p.superblock,
            "defaults");
    CHECK_OK(verity_params_check(&p, &err), err);
    REQUIRE(verity_digest_size(&p) == 32, "sha256 size");
    strcpy(p.hash_algorithm, "sha512");
    p.data_block_size = 512;
    p.salt_size = 0;
    p.format = 0;
    CHECK_OK(verity_params_check(&p, &err), err);
    REQUIRE(verity_digest_size(&p) == 64, "sha512 size");
    const char *words[] = {"algorithm", "data block size", "data block size", "hash block size",
                           "salt",      "format",          "algorithm"};
    for (int i = 0; i < 7; i++)
        expect_bad_params(i, words[i]);
    printf("ok   parameter defaults and checks\n");
}

static void test_geometry(void)
{
    /* F.1: sha256/4096 holds 128 digests a block; sha256/512 16; sha512/4096 64. */
    struct {
        const char *alg;
        uint32_t bs;
        bool superblock;
        uint64_t blocks, tree_blocks;
    } g[] = {
        {"sha256", 4096, false, 1, 0},           {"sha256", 4096, false, 2, 1},
        {"sha256", 4096, false, 128, 1},         {"sha256", 4096, false, 129, 3},
        {"sha256", 4096, false, 16384, 129},     {"sha256", 4096, true, 16385, 132},
        {"sha256", 512, false, 16, 1},           {"sha256", 512, false, 17, 3},
        {"sha256", 512, true, 1000, 63 + 4 + 1}, {"sha512", 4096, false, 64, 1},
        {"sha512", 4096, false, 65, 3},
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        struct verity_params p;
        verity_params_default(&p);
        strcpy(p.hash_algorithm, g[i].alg);
        p.data_block_size = p.hash_block_size = g[i].bs;
        p.superblock = g[i].superblock;
        struct verity_layout l = build_zero(&p, g[i].blocks, g[i].blocks * g[i].bs);
        REQUIRE(l.tree_blocks == g[i].tree_blocks, "%s/%u %llu blocks: tree %llu, want %llu", g[i].alg,
                g[i].bs, (unsigned long long)g[i].blocks, (unsigned long long)l.tree_blocks,
                (unsigned long long)g[i].tree_blocks);
        uint64_t start = g[i].blocks + (g[i].superblock ? 1 : 0);
        REQUIRE(l.hash_start_block == start && l.file_size == (start + l.tree_blocks) * g[i].bs,
                "hash start %llu size %llu", (unsigned long long)l.hash_start_block,
                (unsigned long long)l.file_size);
    }
    /* One data block: no tree, the root is the salted hash of the block (recomputed here). */
    struct verity_params p;
    verity_params_default(&p);
    p.superblock = false;
    struct verity_layout l = build_zero(&p, 1, 4096);
    uint8_t buf[32 + 4096] = {0}, want[32];
    unsigned int n;
    EVP_Digest(buf, sizeof(buf), want, &n, EVP_sha256(), NULL);
    REQUIRE(memcmp(l.root_hash, want, 32) == 0 && l.tree_blocks == 0 && l.file_size == 4096, "1-block root");
    printf("ok   tree sizes and the 1-block root\n");
}

static void test_builder_misuse(void)
{
    struct verity_params p;
    verity_params_default(&p);
    struct vs_error err = {0};
    uint8_t block[4096] = {1};
    struct verity_builder *b = verity_builder_new(&p, &err);
    for (uint64_t i = 0; i < 10; i++)
        if (i != 5 && i != 7)
            CHECK_OK(verity_builder_add_block(b, i, block, &err), err);
    REQUIRE(verity_builder_add_block(b, 3, block, &err) == -EINVAL &&
                strstr(err.message, "block 3 was added twice"),
            "duplicate: %s", err.message);
    REQUIRE(verity_builder_finish(b, 10, 40960, null_write, NULL, NULL, &err) == -EINVAL &&
                strstr(err.message, "data block 5 of 10 was never added"),
            "missing: %s", err.message);
    REQUIRE(verity_builder_finish(b, 8, 40960, null_write, NULL, NULL, &err) == -EINVAL &&
                strstr(err.message, "data block 9 was added"),
            "beyond: %s", err.message);
    CHECK_OK(verity_builder_add_block(b, 5, block, &err), err);
    CHECK_OK(verity_builder_add_block(b, 7, block, &err), err);
    REQUIRE(verity_builder_finish(b, 10, 40959 - 4096, null_write, NULL, NULL, &err) == -EINVAL &&
                strstr(err.message, "overlaps"),
            "overlap: %s", err.message);
    REQUIRE(verity_builder_add_blocks(b, 10, block, 100, &err) == -EINVAL, "add_blocks with a partial block");
    struct verity_layout l;
    CHECK_OK(verity_builder_finish(b, 10, 40960, null_write, NULL, &l, &err), err);
    /* Data blocks beyond 64 and a gap in the bitmap's second word. */
    verity_builder_free(b);
    b = verity_builder_new(&p, &err);
    for (uint64_t i = 0; i < 3000; i++)
        if (i != 2100)
            CHECK_OK(verity_builder_add_block(b, i, block, &err), err);
    REQUIRE(verity_builder_finish(b, 3000, 3000 * 4096, null_write, NULL, NULL, &err) == -EINVAL &&
                strstr(err.message, "data block 2100 "),
            "missing 2100: %s", err.message);
    REQUIRE(verity_builder_finish(b, 3001, 3001 * 4096, null_write, NULL, NULL, &err) == -EINVAL,
            "missing tail");
    verity_builder_free(b);

    /* A failing write is reported as is. */
    b = verity_builder_new(&p, &err);
    CHECK_OK(verity_builder_add_block(b, 0, block, &err), err);
    CHECK_OK(verity_builder_add_block(b, 1, block, &err), err);
    struct vs_error werr = {0};
    int r = verity_builder_finish(b, 2, 8192, test_pwrite_fn, &(int){-1}, NULL, &werr);
    REQUIRE(r == -EIO && strstr(werr.message, "pwrite"), "write failure: %d %s", r, werr.message);
    verity_builder_free(b);
    printf("ok   builder misuse: duplicate, missing, beyond, overlap, partial, write failure\n");
}

static void test_uuid(void)
{
    struct verity_params p;
    verity_params_default(&p);
    struct verity_layout a = build_zero(&p, 5, 5 * 4096), b = build_zero(&p, 5, 5 * 4096);
    REQUIRE(memcmp(a.uuid, b.uuid, 16) == 0, "uuid is not reproducible");
    uint8_t d[32];
    unsigned int n;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, "veritysnap-verity-uuid", 22);
    EVP_DigestUpdate(ctx, a.root_hash, 32);
    EVP_DigestFinal_ex(ctx, d, &n);
    EVP_MD_CTX_free(ctx);
    d[6] = (uint8_t)((d[6] & 0x0f) | 0x80);
    d[8] = (uint8_t)((d[8] & 0x3f) | 0x80);
    REQUIRE(memcmp(a.uuid, d, 16) == 0, "uuid does not follow the documented rule");
    struct verity_layout c = build_zero(&p, 6, 6 * 4096);
    REQUIRE(memcmp(a.uuid, c.uuid, 16) != 0, "different roots, same uuid");
    printf("ok   superblock uuid derived from the root hash\n");
}

static void test_superblock_reader(void)
{
    char path[512];
    test_path(path, sizeof(path), "sb.img");
    struct verity_params p;
    verity_params_default(&p);
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(&p, &err);
    uint8_t block[4096];
    memset(block, 0x33, sizeof(block));
    for (uint64_t i = 0; i < 4; i++)
        CHECK_OK(verity_builder_add_block(b, i, block, &err), err);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    struct verity_layout l, r;
    CHECK_OK(verity_builder_finish(b, 4, 4 * 4096, test_pwrite_fn, &fd, &l, &err), err);
    verity_builder_free(b);
    CHECK_OK(verity_layout_read_superblock(fd, 4 * 4096, &r, &err), err);
    REQUIRE(r.data_blocks == 4 && r.hash_start_block == 5 && r.tree_blocks == 1 && r.file_size == 6 * 4096 &&
                memcmp(&r.params, &l.params, sizeof(r.params)) == 0,
            "read back");
    REQUIRE(verity_layout_read_superblock(fd, 4 * 4096 + 100, &r, &err) == -EINVAL,
            "unaligned offset accepted");
    REQUIRE(verity_layout_read_superblock(fd, 0, &r, &err) == -EBADMSG && strstr(err.message, "signature"),
            "data read as a superblock: %s", err.message);
    REQUIRE(verity_layout_read_superblock(fd, 6 * 4096, &r, &err) == -EBADMSG &&
                strstr(err.message, "too short"),
            "past the end: %s", err.message);
    uint32_t v2 = 2;
    REQUIRE(pwrite(fd, &v2, 4, 4 * 4096 + 8) == 4, "pwrite");
    REQUIRE(verity_layout_read_superblock(fd, 4 * 4096, &r, &err) == -ENOTSUP &&
                strstr(err.message, "version 2"),
            "version 2: %s", err.message);
    uint32_t v1 = 1, bs = 8192;
    REQUIRE(pwrite(fd, &v1, 4, 4 * 4096 + 8) == 4 && pwrite(fd, &bs, 4, 4 * 4096 + 64) == 4, "pwrite");
    REQUIRE(verity_layout_read_superblock(fd, 4 * 4096, &r, &err) == -EBADMSG && strstr(err.message, "8192"),
            "block size 8192: %s", err.message);
    close(fd);
    printf("ok   superblock reader: round trip and refusals\n");
}

static void test_sidecar(void)
{
    char layer[512], side[600];
    test_path(layer, sizeof(layer), "layer.erofs");
    snprintf(side, sizeof(side), "%s.dmverity", layer);
    struct verity_params p;
    verity_params_default(&p);
    p.salt[3] = 0xab;
    struct verity_layout l = build_zero(&p, 7, 7 * 4096 + 1), r;
    struct vs_error err = {0};
    CHECK_OK(verity_sidecar_write(layer, &l, &err), err);
    CHECK_OK(verity_sidecar_read(layer, &r, &err), err);
    REQUIRE(memcmp(r.root_hash, l.root_hash, 32) == 0 && r.hash_offset == l.hash_offset &&
                r.data_blocks == 7 && r.hash_start_block == l.hash_start_block &&
                r.file_size == l.file_size && memcmp(&r.params, &l.params, sizeof(r.params)) == 0,
            "sidecar round trip");
    /* The keys containerd reads, with its meaning of hashoffset (the superblock's byte offset). */
    json_error_t jerr;
    json_t *j = json_load_file(side, 0, &jerr);
    REQUIRE(j, "sidecar is not JSON: %s", jerr.text);
    char root[65];
    vs_hex_encode(l.root_hash, 32, root);
    REQUIRE(strcmp(json_string_value(json_object_get(j, "roothash")), root) == 0, "roothash key");
    REQUIRE(json_integer_value(json_object_get(j, "hashoffset")) == 8 * 4096, "hashoffset key");
    REQUIRE(json_is_true(json_object_get(j, "superblock")) &&
                json_integer_value(json_object_get(j, "verity_format")) == 1 &&
                json_integer_value(json_object_get(j, "data_blocks")) == 7,
            "other keys");
    json_decref(j);
    /* No temporary file is left beside it. */
    DIR *d = opendir(test_dir);
    struct dirent *e;
    while ((e = readdir(d)))
        REQUIRE(!strstr(e->d_name, ".dmverity."), "temporary file %s left", e->d_name);
    closedir(d);
    /* containerd's two-key sidecar. */
    FILE *f = fopen(side, "w");
    fprintf(f, "{\"roothash\": \"%s\", \"hashoffset\": %d}", root, 8 * 4096);
    fclose(f);
    CHECK_OK(verity_sidecar_read(layer, &r, &err), err);
    REQUIRE(r.params.superblock && r.data_blocks == 8 && r.hash_offset == 8 * 4096 &&
                r.params.salt_size == 32,
            "two-key sidecar");
    f = fopen(side, "w");
    fprintf(f, "{\"roothash\": \"abcd\", \"hashoffset\": 4096}");
    fclose(f);
    REQUIRE(verity_sidecar_read(layer, &r, &err) == -EBADMSG && strstr(err.message, "roothash"),
            "short root: %s", err.message);
    f = fopen(side, "w");
    fprintf(f, "{\"roothash\": \"%s\", \"hashoffset\": -1}", root);
    fclose(f);
    REQUIRE(verity_sidecar_read(layer, &r, &err) == -EBADMSG && strstr(err.message, "hashoffset"),
            "negative: %s", err.message);
    f = fopen(side, "w");
    fprintf(f, "{\"roothash\": ");
    fclose(f);
    REQUIRE(verity_sidecar_read(layer, &r, &err) == -EBADMSG, "truncated JSON accepted");
    unlink(side);
    REQUIRE(verity_sidecar_read(layer, &r, &err) == -ENOENT, "missing sidecar: %s", err.message);
    char missing_dir[600];
    snprintf(missing_dir, sizeof(missing_dir), "%s/no/such/layer", test_dir);
    REQUIRE(verity_sidecar_write(missing_dir, &l, &err) == -ENOENT, "write into a missing dir: %s",
            err.message);
    printf("ok   sidecar: round trip, containerd keys, two-key form, refusals\n");
}

static void test_table_and_trailer(void)
{
    struct verity_params p;
    verity_params_default(&p);
    p.superblock = false;
    p.salt_size = 2;
    p.salt[0] = 0xde;
    p.salt[1] = 0xad;
    struct verity_layout l = build_zero(&p, 10, 10 * 4096);
    char root[65], want[512], line[512];
    vs_hex_encode(l.root_hash, 32, root);
    snprintf(want, sizeof(want), "0 80 verity 1 /dev/vda /dev/vda 4096 4096 10 10 sha256 %s dead", root);
    REQUIRE(verity_table_line(&l, "/dev/vda", line, sizeof(line)) == 0 && strcmp(line, want) == 0,
            "table: %s", line);
    REQUIRE(verity_table_line(&l, "/dev/vda", line, 40) == -ENOSPC, "small buffer");
    l.params.salt_size = 0;
    l.params.superblock = true;
    snprintf(want, sizeof(want), "0 80 verity 1 /dev/vda /dev/vda 4096 4096 10 11 sha256 %s -", root);
    REQUIRE(verity_table_line(&l, "/dev/vda", line, sizeof(line)) == 0 && strcmp(line, want) == 0,
            "table: %s", line);

    /* The tardev agent's table: `1 <dev> <dev> 4096 4096 <blocks> <ceil(size/hbs)> sha256 <root> <64 zeros>`.
     */
    verity_params_default(&p);
    p.superblock = false;
    l = build_zero(&p, 82, 82 * 4096);
    vs_hex_encode(l.root_hash, 32, root);
    snprintf(want, sizeof(want), "0 656 verity 1 /dev/vdb /dev/vdb 4096 4096 82 82 sha256 %s %064d", root, 0);
    REQUIRE(verity_table_line(&l, "/dev/vdb", line, sizeof(line)) == 0 && strcmp(line, want) == 0,
            "tardev: %s", line);
    uint8_t t[VERITY_TARDEV_TRAILER_SIZE];
    verity_tardev_trailer(&l, t);
    static const uint8_t fields[16] = {0, 0x10, 0, 0, 0, 0x10, 0, 0, 82, 0, 0, 0, 0, 0, 0, 0};
    REQUIRE(memcmp(t + 3584, fields, 16) == 0, "trailer fields");
    for (size_t i = 0; i < sizeof(t); i++)
        REQUIRE(i >= 3584 && i < 3600 ? 1 : t[i] == 0, "trailer byte %zu not zero", i);
    printf("ok   table lines and the tardev trailer\n");
}

int main(void)
{
    test_setup("verity-units");
    test_params();
    test_geometry();
    test_builder_misuse();
    test_uuid();
    test_superblock_reader();
    test_sidecar();
    test_table_and_trailer();
    return 0;
}
