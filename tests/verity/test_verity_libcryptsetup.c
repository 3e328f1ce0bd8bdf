/* Files from our builder through libcryptsetup's own userspace check (the code behind `veritysetup verify`):
 * crypt_load of our superblock, or crypt_format with CRYPT_VERITY_NO_HEADER, with CRYPT_VERITY_CHECK_HASH in
 * the *params* flags, then crypt_activate_by_volume_key with no name, which verifies every block without
 * device-mapper. (Passing CRYPT_VERITY_CHECK_HASH as the activation flag instead checks nothing:
 * libcryptsetup 2.6.1 returns 0 even for a wrong root hash.) A wrong root hash and a tampered block must be
 * refused. */
#include <libcryptsetup.h>

#include "test_util.h"

struct lcase {
    const char *name;
    const char *alg;
    uint32_t dbs, hbs, format, salt_size;
    bool superblock;
    uint64_t blocks;
};

static const struct lcase cases[] = {
    {"superblock, 300 blocks", "sha256", 4096, 4096, 1, 32, true, 300},
    {"no superblock, 129 blocks", "sha256", 4096, 4096, 1, 32, false, 129},
    {"sha512 512/512, no superblock", "sha512", 512, 512, 1, 16, false, 500},
    {"format 0, empty salt, superblock", "sha256", 4096, 4096, 0, 0, true, 40},
    {"1 block, superblock", "sha256", 4096, 4096, 1, 32, true, 1},
};

static void quiet_log(int level, const char *msg, void *usrptr)
{
    (void)level, (void)msg, (void)usrptr;
}

/* 0 when libcryptsetup's userspace check accepts file against root; its negative error otherwise. */
static int crypt_check(const char *file, const struct verity_layout *l, const uint8_t *root)
{
    struct crypt_device *cd = NULL;
    int r = crypt_init_data_device(&cd, file, file);
    if (r < 0)
        return r;
    crypt_set_log_callback(cd, quiet_log, NULL);
    struct crypt_params_verity p = {
        .hash_name = l->params.hash_algorithm,
        .data_device = file,
        .salt = (const char *)l->params.salt,
        .salt_size = l->params.salt_size,
        .hash_type = l->params.format,
        .data_block_size = l->params.data_block_size,
        .hash_block_size = l->params.hash_block_size,
        .data_size = l->data_blocks,
        .hash_area_offset = l->hash_offset,
        .flags = CRYPT_VERITY_CHECK_HASH | (l->params.superblock ? 0 : CRYPT_VERITY_NO_HEADER),
    };
    if (l->params.superblock) {
        struct crypt_params_verity only = {.hash_area_offset = l->hash_offset,
                                           .flags = CRYPT_VERITY_CHECK_HASH};
        r = crypt_load(cd, CRYPT_VERITY, &only);
        if (r == 0) {
            /* What libcryptsetup read from our superblock must be the layout. */
            struct crypt_params_verity got;
            REQUIRE(crypt_get_verity_info(cd, &got) == 0, "crypt_get_verity_info");
            REQUIRE(strcmp(got.hash_name, l->params.hash_algorithm) == 0 && got.data_size == l->data_blocks &&
                        got.data_block_size == l->params.data_block_size &&
                        got.hash_block_size == l->params.hash_block_size &&
                        got.hash_type == l->params.format && got.salt_size == l->params.salt_size &&
                        memcmp(got.salt, l->params.salt, l->params.salt_size) == 0,
                    "libcryptsetup read other parameters from our superblock");
            char uuid[37];
            test_uuid_string(l->uuid, uuid);
            REQUIRE(crypt_get_uuid(cd) && strcmp(crypt_get_uuid(cd), uuid) == 0, "uuid %s, want %s",
                    crypt_get_uuid(cd), uuid);
        }
    } else {
        r = crypt_format(cd, CRYPT_VERITY, NULL, NULL, NULL, NULL, 0, &p);
    }
    if (r == 0)
        r = crypt_activate_by_volume_key(cd, NULL, (const char *)root, l->digest_size, 0);
    crypt_free(cd);
    return r;
}

int main(void)
{
    test_setup("verity-libcryptsetup");
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const struct lcase *t = &cases[c];
        char path[512];
        snprintf(path, sizeof(path), "%s/layer-%zu", test_dir, c);
        struct verity_params p;
        verity_params_default(&p);
        snprintf(p.hash_algorithm, sizeof(p.hash_algorithm), "%s", t->alg);
        p.data_block_size = t->dbs;
        p.hash_block_size = t->hbs;
        p.format = t->format;
        p.salt_size = t->salt_size;
        for (uint32_t i = 0; i < t->salt_size; i++)
            p.salt[i] = (uint8_t)(0xa0 + i);
        p.superblock = t->superblock;
        struct vs_error err = {0};
        struct verity_builder *b = verity_builder_new(&p, &err);
        REQUIRE(b, "%s", err.message);
        uint8_t *data = test_data(t->blocks, t->dbs);
        for (uint64_t i = t->blocks; i-- > 0;)
            CHECK_OK(verity_builder_add_block(b, i, data + i * t->dbs, &err), err);
        test_write_file(path, data, t->blocks * t->dbs);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        struct verity_layout l;
        CHECK_OK(verity_builder_finish(b, t->blocks, t->blocks * t->dbs, test_pwrite_fn, &fd, &l, &err), err);
        close(fd);
        verity_builder_free(b);

        int r = crypt_check(path, &l, l.root_hash);
        REQUIRE(r == 0, "%s: libcryptsetup CHECK_HASH refused our file: %d", t->name, r);
        uint8_t wrong[VERITY_MAX_DIGEST];
        memcpy(wrong, l.root_hash, l.digest_size);
        wrong[l.digest_size - 1] ^= 1;
        r = crypt_check(path, &l, wrong);
        REQUIRE(r < 0, "%s: libcryptsetup accepted a wrong root hash", t->name);
        test_flip_byte(path, (t->blocks - 1) * t->dbs + 7);
        r = crypt_check(path, &l, l.root_hash);
        REQUIRE(r < 0, "%s: libcryptsetup accepted a tampered data block", t->name);
        printf("ok   %-34s accepted; wrong root and tampered data refused\n", t->name);
        free(data);
    }
    return 0;
}
