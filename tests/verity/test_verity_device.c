/* Device activation. Without device-mapper (this build machine, most containers) every call must fail with
 * -ENODEV and say so. With device-mapper and root, a built image is activated, read back through /dev/mapper
 * and compared with the data, listed by prefix and removed. */
#include "test_util.h"

static bool dm_present(void)
{
    char out[4096];
    return access("/dev/mapper/control", F_OK) == 0 &&
           test_run(out, sizeof(out), "grep -q device-mapper /proc/misc") == 0;
}

static void count_name(void *ctx, const char *name)
{
    (void)name;
    (*(int *)ctx)++;
}

int main(void)
{
    test_setup("verity-device");
    char path[512], dev[256];
    test_path(path, sizeof(path), "layer.img");
    struct verity_params p;
    verity_params_default(&p);
    struct vs_error err = {0};
    struct verity_builder *b = verity_builder_new(&p, &err);
    uint8_t *data = test_data(64, 4096);
    CHECK_OK(verity_builder_add_blocks(b, 0, data, 64 * 4096, &err), err);
    test_write_file(path, data, 64 * 4096);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct verity_layout l;
    CHECK_OK(verity_builder_finish(b, 64, 64 * 4096, test_pwrite_fn, &fd, &l, &err), err);
    close(fd);
    verity_builder_free(b);

    const char *name = "vs-test-verity-device";
    if (!dm_present()) {
        int r = verity_activate(name, path, &l, dev, sizeof(dev), &err);
        CHECK(r == -ENODEV && strstr(err.message, "device-mapper is not available in this kernel"),
              "activate without dm: %d %s", r, err.message);
        printf("ok   activate: %s\n", err.message);
        r = verity_deactivate(name, &err);
        CHECK(r == -ENODEV && strstr(err.message, "device-mapper is not available"), "deactivate: %d %s", r,
              err.message);
        int n = 0;
        r = verity_list_devices("vs-", count_name, &n, &err);
        CHECK(r == -ENODEV && n == 0, "list: %d %s", r, err.message);
        r = verity_remove_devices("vs-", &err);
        CHECK(r == -ENODEV, "remove: %d %s", r, err.message);
        printf("ok   deactivate, list and remove refuse with -ENODEV\n");
        printf("note: device-mapper is not available here; activation itself was not exercised\n");
        free(data);
        return 0;
    }
    if (geteuid() != 0) {
        printf("SKIP: device-mapper present but not root\n");
        return TEST_SKIP;
    }
    verity_remove_devices(name, NULL);
    int r = verity_activate(name, path, &l, dev, sizeof(dev), &err);
    CHECK(r == 0, "activate: %d %s", r, err.message);
    size_t len;
    uint8_t *got = test_read_file(dev, &len);
    CHECK(len == 64 * 4096 && memcmp(got, data, len) == 0, "device content differs (%zu bytes)", len);
    free(got);
    int n = 0;
    CHECK_OK(verity_list_devices("vs-test-verity-", count_name, &n, &err), err);
    CHECK(n == 1, "listed %d devices", n);
    CHECK_OK(verity_remove_devices("vs-test-verity-", &err), err);
    n = 0;
    CHECK_OK(verity_list_devices("vs-test-verity-", count_name, &n, &err), err);
    CHECK(n == 0, "still %d devices after removal", n);
    CHECK(verity_deactivate(name, &err) == -ENOENT, "deactivate twice: %s", err.message);
    printf("ok   activated, read back, listed, removed\n");
    free(data);
    return 0;
}
