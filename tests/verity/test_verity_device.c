/* Device activation. Without device-mapper (this build machine, most containers) every call must fail with
 * -ENODEV and say so. With device-mapper and root (the child VM of tests/guest runs this program), layer
 * files the product builds (EROFS + appended tree, with and without the superblock) are activated and read
 * through the kernel, which verifies every block: the device equals the file's data part and the EROFS
 * mounted from it holds the files; a flipped data byte reads EIO in that block only; a wrong root hash serves
 * nothing; a superblock that is not the layout is refused; list and remove by prefix find exactly the verity
 * devices whose name starts with the prefix. */
#include <libdevmapper.h>
#include <sys/mount.h>

#include "snapshotter/snapshotter.h"
#include "test_util.h"

#define BLOCK 4096

static bool dm_present(void)
{
    char out[4096];
    return access("/dev/mapper/control", F_OK) == 0 &&
           test_run(out, sizeof(out), "grep -q device-mapper /proc/misc") == 0;
}

static bool has_fs(const char *name)
{
    char out[256];
    return test_run(out, sizeof(out), "grep -qw %s /proc/filesystems", name) == 0;
}

/* Names the callback saw, joined with ' ' in the order given. */
struct names {
    char text[1024];
    int count;
};

static void add_name(void *ctx, const char *name)
{
    struct names *n = ctx;
    size_t len = strlen(n->text);
    snprintf(n->text + len, sizeof(n->text) - len, "%s%s", len ? " " : "", name);
    n->count++;
}

static bool has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = text; (p = strstr(p, word)); p += n)
        if ((p == text || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

/* One block of a device read with O_DIRECT, so neither readahead nor the page cache decides the outcome: 0,
 * or -errno. */
static int read_block(const char *dev, uint64_t block, uint8_t *out)
{
    int fd = open(dev, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    void *buf;
    REQUIRE(posix_memalign(&buf, BLOCK, BLOCK) == 0, "out of memory");
    ssize_t n = pread(fd, buf, BLOCK, (off_t)(block * BLOCK));
    int r = n == BLOCK ? 0 : n < 0 ? -errno : -EIO;
    if (r == 0 && out)
        memcpy(out, buf, BLOCK);
    free(buf);
    close(fd);
    return r;
}

/* Reads a whole file (or device): 0 and the bytes, or -errno of the first failing read. */
static int read_all(const char *path, uint8_t **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    REQUIRE(buf, "out of memory");
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            REQUIRE(buf, "out of memory");
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return -e;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    *data = buf;
    *len = n;
    return 0;
}

static const char *dm_name_for(const char *dev)
{
    return dev + strlen("/dev/mapper/");
}

/* A dm device that is not verity ("linear" over an existing device), to check that listing filters by target.
 */
static void linear_create(const char *name, const char *over, uint64_t sectors)
{
    struct dm_task *dmt = dm_task_create(DM_DEVICE_CREATE);
    REQUIRE(dmt && dm_task_set_name(dmt, name), "dm task for %s", name);
    char params[512];
    snprintf(params, sizeof(params), "%s 0", over);
    REQUIRE(dm_task_add_target(dmt, 0, sectors, "linear", params) && dm_task_run(dmt), "creating %s", name);
    dm_task_destroy(dmt);
    dm_task_update_nodes();
}

static bool dm_exists(const char *name)
{
    struct dm_task *dmt = dm_task_create(DM_DEVICE_INFO);
    struct dm_info info = {0};
    bool ok =
        dmt && dm_task_set_name(dmt, name) && dm_task_run(dmt) && dm_task_get_info(dmt, &info) && info.exists;
    if (dmt)
        dm_task_destroy(dmt);
    return ok;
}

static void dm_remove(const char *name)
{
    struct dm_task *dmt = dm_task_create(DM_DEVICE_REMOVE);
    REQUIRE(dmt && dm_task_set_name(dmt, name) && dm_task_run(dmt), "removing %s", name);
    dm_task_destroy(dmt);
    dm_task_update_nodes();
}

static uint8_t big[5 * BLOCK + 100];
static const char small[] = "small file, inline in the metadata\n";

/* A layer file built by the product from a directory: big.bin (random, block-aligned in the image) and
 * small.txt. */
static void build_layer(const char *src, const char *out, bool superblock, struct verity_layout *layout)
{
    struct layer_file_options opts;
    layer_file_options_default(&opts);
    opts.params.superblock = superblock;
    opts.sidecar = false;
    struct layer_file_result res;
    struct vs_error err = {0};
    CHECK_OK(layer_file_build_dir(src, out, &opts, &res, &err), err);
    REQUIRE(res.verity && res.layout.params.superblock == superblock, "layer file %s has the asked layout",
            out);
    *layout = res.layout;
}

/* Offset in the image of big.bin's first data block. */
static uint64_t find_big(const char *file)
{
    size_t len;
    uint8_t *img = test_read_file(file, &len);
    uint8_t *at = memmem(img, len, big, BLOCK);
    REQUIRE(at && (at - img) % BLOCK == 0, "big.bin not found block-aligned in %s", file);
    uint64_t off = (uint64_t)(at - img);
    free(img);
    return off;
}

static void activate_ok(const char *name, const char *file, const struct verity_layout *l, char *dev,
                        size_t cap)
{
    struct vs_error err = {0};
    int r = verity_activate(name, file, l, dev, cap, &err);
    REQUIRE(r == 0, "activate %s over %s: %d %s", name, file, r, err.message);
    REQUIRE(access(dev, F_OK) == 0, "device node %s exists: %s", dev, strerror(errno));
}

static void deactivate_ok(const char *name)
{
    struct vs_error err = {0};
    CHECK_OK(verity_deactivate(name, &err), err);
    REQUIRE(!dm_exists(name), "%s gone after verity_deactivate", name);
}

/* The device reads back as the layer file's data part (the kernel checked every block against the tree), and
 * the EROFS on it holds the source files. */
static void check_reads(const char *dev, const char *file, const struct verity_layout *l, const char *mnt,
                        bool erofs)
{
    uint8_t *got, *want;
    size_t got_len, want_len;
    int r = read_all(dev, &got, &got_len);
    REQUIRE(r == 0, "reading %s: %s", dev, strerror(-r));
    want = test_read_file(file, &want_len);
    REQUIRE(got_len == l->data_blocks * BLOCK && memcmp(got, want, got_len) == 0,
            "%s (%zu bytes) is the first %llu blocks of %s", dev, got_len, (unsigned long long)l->data_blocks,
            file);
    free(got);
    free(want);
    if (!erofs)
        return;
    REQUIRE(mount(dev, mnt, "erofs", MS_RDONLY, NULL) == 0, "mount %s (erofs): %s", dev, strerror(errno));
    char path[600];
    snprintf(path, sizeof(path), "%s/big.bin", mnt);
    r = read_all(path, &got, &got_len);
    REQUIRE(r == 0 && got_len == sizeof(big) && memcmp(got, big, sizeof(big)) == 0, "big.bin through %s: %s",
            dev, strerror(-r));
    free(got);
    snprintf(path, sizeof(path), "%s/small.txt", mnt);
    r = read_all(path, &got, &got_len);
    REQUIRE(r == 0 && got_len == strlen(small) && memcmp(got, small, got_len) == 0, "small.txt through %s",
            dev);
    free(got);
    REQUIRE(umount(mnt) == 0, "umount %s: %s", mnt, strerror(errno));
}

int main(void)
{
    test_setup("verity-device");
    char src[512], path[512], nosb[512], flipped[512], mnt[512], dev[256], dev2[256];
    test_path(src, sizeof(src), "src");
    test_path(path, sizeof(path), "layer.erofs");
    test_path(nosb, sizeof(nosb), "layer-nosb.erofs");
    test_path(flipped, sizeof(flipped), "layer-flipped.erofs");
    test_path(mnt, sizeof(mnt), "mnt");
    REQUIRE(mkdir(src, 0755) == 0 && mkdir(mnt, 0755) == 0, "mkdir: %s", strerror(errno));
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)test_rand();
    char f[600];
    snprintf(f, sizeof(f), "%s/big.bin", src);
    test_write_file(f, big, sizeof(big));
    snprintf(f, sizeof(f), "%s/small.txt", src);
    test_write_file(f, small, strlen(small));
    struct verity_layout l, lnosb;
    build_layer(src, path, true, &l);
    build_layer(src, nosb, false, &lnosb);
    struct vs_error err = {0};

    const char *name = "vs-test-verity-device";
    if (!dm_present()) {
        int r = verity_activate(name, path, &l, dev, sizeof(dev), &err);
        REQUIRE(r == -ENODEV && strstr(err.message, "device-mapper is not available in this kernel"),
                "activate without dm: %d %s", r, err.message);
        printf("ok   activate: %s\n", err.message);
        r = verity_deactivate(name, &err);
        REQUIRE(r == -ENODEV && strstr(err.message, "device-mapper is not available"), "deactivate: %d %s", r,
                err.message);
        struct names n = {0};
        r = verity_list_devices("vs-", add_name, &n, &err);
        REQUIRE(r == -ENODEV && n.count == 0, "list: %d %s", r, err.message);
        r = verity_remove_devices("vs-", &err);
        REQUIRE(r == -ENODEV, "remove: %d %s", r, err.message);
        printf("ok   deactivate, list and remove refuse with -ENODEV\n");
        printf("note: device-mapper is not available here; activation itself was not exercised\n");
        return 0;
    }
    if (geteuid() != 0) {
        printf("SKIP: device-mapper present but not root\n");
        return TEST_SKIP;
    }
    bool erofs = has_fs("erofs");
    verity_remove_devices("vs-test-verity-", NULL);

    /* A layer file with the superblock, and one without: each reads back through the kernel's verification.
     */
    activate_ok(name, path, &l, dev, sizeof(dev));
    check_reads(dev, path, &l, mnt, erofs);
    printf("ok   activated %s (superblock, %llu data blocks): the device is the file's data part%s\n", dev,
           (unsigned long long)l.data_blocks, erofs ? ", its EROFS holds big.bin and small.txt" : "");
    int r = verity_activate(name, path, &l, dev2, sizeof(dev2), &err);
    REQUIRE(r < 0, "activating an active name again must fail");
    REQUIRE(read_block(dev, 0, NULL) == 0,
            "the first device still reads after the refused second activation");
    printf("ok   a second activation of %s is refused (%d: %s)\n", name, r, err.message);
    deactivate_ok(name);
    r = verity_deactivate(name, &err);
    REQUIRE(r == -ENOENT, "deactivate twice: %d %s", r, err.message);
    printf("ok   removed; removing again: -ENOENT (%s)\n", err.message);

    activate_ok("vs-test-verity-nosb", nosb, &lnosb, dev, sizeof(dev));
    check_reads(dev, nosb, &lnosb, mnt, erofs);
    deactivate_ok("vs-test-verity-nosb");
    printf("ok   without superblock: tree at block %llu, reads back and removed\n",
           (unsigned long long)lnosb.hash_start_block);

    /* A flipped byte in big.bin's second data block: that block reads EIO, the others verify. */
    uint64_t at = find_big(path);
    size_t len;
    uint8_t *img = test_read_file(path, &len);
    test_write_file(flipped, img, len);
    test_flip_byte(flipped, at + BLOCK + 123);
    activate_ok("vs-test-verity-flip", flipped, &l, dev, sizeof(dev));
    uint64_t bad = at / BLOCK + 1;
    uint8_t block[BLOCK];
    r = read_block(dev, bad, NULL);
    REQUIRE(r == -EIO, "block %llu (flipped) must read EIO: %d", (unsigned long long)bad, r);
    for (uint64_t b = 0; b < l.data_blocks; b++) {
        if (b == bad)
            continue;
        r = read_block(dev, b, block);
        REQUIRE(r == 0 && memcmp(block, img + b * BLOCK, BLOCK) == 0, "block %llu of the flipped device: %d",
                (unsigned long long)b, r);
    }
    uint8_t *got;
    r = read_all(dev, &got, &len);
    REQUIRE(r == -EIO, "reading the whole flipped device must fail with EIO: %d", r);
    if (erofs) {
        REQUIRE(mount(dev, mnt, "erofs", MS_RDONLY, NULL) == 0, "mount the flipped device: %s",
                strerror(errno));
        snprintf(f, sizeof(f), "%s/big.bin", mnt);
        r = read_all(f, &got, &len);
        REQUIRE(r == -EIO, "big.bin on the flipped device must read EIO: %d", r);
        snprintf(f, sizeof(f), "%s/small.txt", mnt);
        r = read_all(f, &got, &len);
        REQUIRE(r == 0 && len == strlen(small) && memcmp(got, small, len) == 0, "small.txt stays intact: %d",
                r);
        free(got);
        REQUIRE(umount(mnt) == 0, "umount: %s", strerror(errno));
    }
    deactivate_ok("vs-test-verity-flip");
    printf("ok   flipped byte in data block %llu: that block reads EIO, the other %llu verify%s\n",
           (unsigned long long)bad, (unsigned long long)l.data_blocks - 1,
           erofs ? "; on the EROFS big.bin reads EIO, small.txt reads" : "");
    free(img);

    /* A wrong root hash serves nothing: refused at activation, or (the kernel checks lazily) every read
     * fails. */
    struct verity_layout wrong = l;
    wrong.root_hash[0] ^= 0x80;
    r = verity_activate("vs-test-verity-badroot", path, &wrong, dev, sizeof(dev), &err);
    if (r == 0) {
        int r0 = read_block(dev, 0, NULL), rl = read_block(dev, l.data_blocks - 1, NULL);
        REQUIRE(r0 == -EIO && rl == -EIO, "a wrong root hash must make every read fail: first %d, last %d",
                r0, rl);
        if (erofs)
            REQUIRE(mount(dev, mnt, "erofs", MS_RDONLY, NULL) < 0,
                    "mounting with a wrong root hash must fail");
        deactivate_ok("vs-test-verity-badroot");
        printf("ok   wrong root hash: activated, but the first and last blocks read EIO%s\n",
               erofs ? " and the EROFS mount fails" : "");
    } else {
        REQUIRE(!dm_exists("vs-test-verity-badroot"), "a refused activation leaves no device");
        printf("ok   wrong root hash: activation refused (%d: %s)\n", r, err.message);
    }

    /* A superblock that is not the layout: refused before the kernel sees it. */
    struct verity_layout other = l;
    REQUIRE(other.params.salt_size > 0, "the default layout has a salt");
    other.params.salt[0] ^= 1;
    r = verity_activate("vs-test-verity-layout", path, &other, dev, sizeof(dev), &err);
    REQUIRE(r == -EBADMSG && strstr(err.message, "superblock") && strstr(err.message, "salt '") &&
                !dm_exists("vs-test-verity-layout"),
            "a superblock that is not the layout: %d %s", r, err.message);
    printf("ok   superblock not matching the layout: refused (%s)\n", err.message);

    /* Listing and removing by prefix: exactly the verity devices whose name starts with it. */
    const char *a1 = "vs-test-verity-a1", *a2 = "vs-test-verity-a2", *b1 = "vs-test-verity-b1";
    activate_ok(a1, path, &l, dev, sizeof(dev));
    activate_ok(a2, nosb, &lnosb, dev, sizeof(dev));
    activate_ok(b1, path, &l, dev2, sizeof(dev2));
    const char *linear = "vs-test-verity-a-linear";
    linear_create(linear, dev2, l.data_blocks * (BLOCK / 512));
    REQUIRE(dm_exists(linear), "the linear device exists");
    struct names n = {0};
    CHECK_OK(verity_list_devices("vs-test-verity-a", add_name, &n, &err), err);
    REQUIRE(n.count == 2 && has_word(n.text, a1) && has_word(n.text, a2), "list vs-test-verity-a: [%s]",
            n.text);
    printf("ok   list vs-test-verity-a: [%s] (not %s, not the linear %s)\n", n.text, b1, linear);
    memset(&n, 0, sizeof(n));
    CHECK_OK(verity_list_devices("vs-test-verity-", add_name, &n, &err), err);
    REQUIRE(n.count == 3 && has_word(n.text, b1), "list vs-test-verity-: [%s]", n.text);
    memset(&n, 0, sizeof(n));
    CHECK_OK(verity_list_devices("vs-test-verity-zz", add_name, &n, &err), err);
    REQUIRE(n.count == 0, "list vs-test-verity-zz: [%s]", n.text);
    CHECK_OK(verity_remove_devices("vs-test-verity-a", &err), err);
    REQUIRE(!dm_exists(a1) && !dm_exists(a2), "a1 and a2 removed");
    REQUIRE(dm_exists(b1) && dm_exists(linear), "b1 and the linear device stay");
    REQUIRE(read_block(dev2, 0, NULL) == 0, "b1 still reads");
    memset(&n, 0, sizeof(n));
    CHECK_OK(verity_list_devices("vs-test-verity-", add_name, &n, &err), err);
    REQUIRE(n.count == 1 && !strcmp(n.text, b1), "after removing vs-test-verity-a*: [%s]", n.text);
    printf("ok   remove vs-test-verity-a: removed a1 and a2, left [%s] and the linear device\n", n.text);
    dm_remove(linear);
    CHECK_OK(verity_remove_devices("vs-test-verity-", &err), err);
    REQUIRE(!dm_exists(b1) && !dm_exists(dm_name_for(dev2)), "b1 removed");
    memset(&n, 0, sizeof(n));
    CHECK_OK(verity_list_devices("vs-test-verity-", add_name, &n, &err), err);
    REQUIRE(n.count == 0, "nothing left: [%s]", n.text);
    printf("ok   activated, read back, listed, removed (device-mapper in this kernel)\n");
    return 0;
}
