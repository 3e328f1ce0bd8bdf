/* Read-only dm-verity devices over layer files: libcryptsetup activates (attaching the file to a loop device
 * that goes away with the mapping), libdevmapper lists. Both are refused early with -ENODEV where the kernel
 * has no device-mapper, because libcryptsetup's own message there ("Cannot initialize device-mapper") names
 * no cause. */
#include <errno.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "verity/verity_internal.h"

static int dm_available(struct vs_error *err)
{
    bool in_misc = false;
    FILE *f = fopen("/proc/misc", "re");
    if (f) {
        char line[256];
        while (fgets(line, sizeof(line), f))
            if (strstr(line, "device-mapper"))
                in_misc = true;
        fclose(f);
    }
    if (!in_misc)
        return vs_fail(err, -ENODEV,
                       "device-mapper is not available in this kernel: /proc/misc lists no device-mapper "
                       "(load dm_mod and dm_verity, or use a kernel with CONFIG_DM_VERITY)");
    if (access("/dev/mapper/control", F_OK) < 0)
        return vs_fail(err, -ENODEV,
                       "device-mapper is not available in this kernel: /dev/mapper/control is missing "
                       "(no device node in this container or namespace)");
    return 0;
}

/* Keeps libcryptsetup's last error line for our message. */
struct crypt_log {
    char last[512];
};

static void crypt_log_cb(int level, const char *msg, void *usrptr)
{
    struct crypt_log *log = usrptr;
    if (level != CRYPT_LOG_ERROR || !msg)
        return;
    snprintf(log->last, sizeof(log->last), "%s", msg);
    size_t n = strlen(log->last);
    while (n && (log->last[n - 1] == '\n' || log->last[n - 1] == ' '))
        log->last[--n] = '\0';
}

static int crypt_error(struct vs_error *err, int r, const struct crypt_log *log, const char *what,
                       const char *name)
{
    return vs_fail(err, r < 0 ? r : -EIO, "verity device %s: %s failed: %s", name, what,
                   log->last[0] ? log->last : strerror(r < 0 ? -r : EIO));
}

int verity_activate(const char *name, const char *file, const struct verity_layout *layout, char *device_path,
                    size_t device_path_cap, struct vs_error *err)
{
    int r = dm_available(err);
    if (r < 0)
        return verity_error_wrap(err, r, "verity device %s", name);
    struct verity_layout l = *layout;
    r = verity_layout_complete(&l, err);
    if (r < 0)
        return verity_error_wrap(err, r, "verity device %s", name);
    if (device_path) {
        int n = snprintf(device_path, device_path_cap, "/dev/mapper/%s", name);
        if (n < 0 || (size_t)n >= device_path_cap)
            return vs_fail(err, -ENAMETOOLONG, "verity device %s: device path does not fit", name);
    }
    /* Only per-device log callbacks: the global one is process-wide and activations may run in parallel. */
    struct crypt_log log = {{0}};
    struct crypt_device *cd = NULL;
    r = crypt_init_data_device(&cd, file, file);
    if (r < 0)
        return crypt_error(err, r, &log, "opening the layer file", name);
    crypt_set_log_callback(cd, crypt_log_cb, &log);
    struct crypt_params_verity p = {
        .hash_name = l.params.hash_algorithm,
        .data_device = file,
        .salt = (const char *)l.params.salt,
        .salt_size = l.params.salt_size,
        .hash_type = l.params.format,
        .data_block_size = l.params.data_block_size,
        .hash_block_size = l.params.hash_block_size,
        .data_size = l.data_blocks,
        .hash_area_offset =
            l.params.superblock ? l.hash_offset : l.hash_start_block * l.params.hash_block_size,
        .flags = l.params.superblock ? 0 : CRYPT_VERITY_NO_HEADER,
    };
    const char *what;
    if (l.params.superblock) {
        what = "loading the superblock";
        r = crypt_load(cd, CRYPT_VERITY, &p);
        /* The kernel would only fail on reads later: refuse a superblock that is not the layout now. */
        struct crypt_params_verity got;
        if (r == 0 && crypt_get_verity_info(cd, &got) == 0 &&
            (got.data_size != l.data_blocks || got.data_block_size != l.params.data_block_size ||
             got.hash_block_size != l.params.hash_block_size || got.hash_type != l.params.format ||
             !got.hash_name || strcmp(got.hash_name, l.params.hash_algorithm) != 0 ||
             got.salt_size != l.params.salt_size ||
             (got.salt_size && memcmp(got.salt, l.params.salt, got.salt_size)))) {
            char got_salt[2 * VERITY_MAX_SALT + 1] = "", want_salt[2 * VERITY_MAX_SALT + 1] = "";
            if (got.salt_size <= VERITY_MAX_SALT)
                vs_hex_encode((const uint8_t *)got.salt, got.salt_size, got_salt);
            vs_hex_encode(l.params.salt, l.params.salt_size, want_salt);
            r = vs_fail(
                err, -EBADMSG,
                "verity device %s: the superblock of %s at offset %llu (%llu blocks of %u/%u, %s, format "
                "%u, salt '%s') is not the layout's (%llu blocks of %u/%u, %s, format %u, salt '%s')",
                name, file, (unsigned long long)l.hash_offset, (unsigned long long)got.data_size,
                got.data_block_size, got.hash_block_size, got.hash_name ? got.hash_name : "?", got.hash_type,
                got_salt, (unsigned long long)l.data_blocks, l.params.data_block_size,
                l.params.hash_block_size, l.params.hash_algorithm, l.params.format, want_salt);
            crypt_free(cd);
            return r;
        }
    } else {
        what = "setting the parameters";
        r = crypt_format(cd, CRYPT_VERITY, NULL, NULL, NULL, NULL, 0, &p);
    }
    if (r == 0) {
        what = "activation";
        r = crypt_activate_by_volume_key(cd, name, (const char *)l.root_hash, l.digest_size,
                                         CRYPT_ACTIVATE_READONLY);
    }
    if (r < 0)
        r = crypt_error(err, r, &log, what, name);
    crypt_free(cd);
    return r;
}

int verity_deactivate(const char *name, struct vs_error *err)
{
    int r = dm_available(err);
    if (r < 0)
        return verity_error_wrap(err, r, "verity device %s", name);
    if (crypt_status(NULL, name) == CRYPT_INACTIVE)
        return vs_fail(err, -ENOENT, "verity device %s is not active", name);
    struct crypt_log log = {{0}};
    struct crypt_device *cd = NULL;
    r = crypt_init_by_name(&cd, name);
    if (r < 0)
        return crypt_error(err, r, &log, "looking it up", name);
    crypt_set_log_callback(cd, crypt_log_cb, &log);
    r = crypt_deactivate(cd, name);
    crypt_free(cd);
    if (r < 0)
        return crypt_error(err, r, &log, "removal", name);
    return 0;
}

static bool is_verity_device(const char *name)
{
    struct dm_task *dmt = dm_task_create(DM_DEVICE_TABLE);
    bool verity = false;
    if (dmt && dm_task_set_name(dmt, name) && dm_task_run(dmt)) {
        uint64_t start, length;
        char *type = NULL, *params = NULL;
        dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
        verity = type && strcmp(type, "verity") == 0;
    }
    if (dmt)
        dm_task_destroy(dmt);
    return verity;
}

int verity_list_devices(const char *prefix, void (*fn)(void *ctx, const char *name), void *ctx,
                        struct vs_error *err)
{
    int r = dm_available(err);
    if (r < 0)
        return r;
    struct dm_task *dmt = dm_task_create(DM_DEVICE_LIST);
    if (!dmt)
        return vs_fail(err, -ENOMEM, "verity devices: cannot create a device-mapper task");
    if (!dm_task_run(dmt)) {
        dm_task_destroy(dmt);
        return vs_fail(err, -EIO, "verity devices: listing device-mapper devices failed");
    }
    struct dm_names *names = dm_task_get_names(dmt);
    size_t plen = strlen(prefix);
    if (names && names->dev) {
        for (;;) {
            if (strncmp(names->name, prefix, plen) == 0 && is_verity_device(names->name))
                fn(ctx, names->name);
            if (!names->next)
                break;
            names = (struct dm_names *)((char *)names + names->next);
        }
    }
    dm_task_destroy(dmt);
    return 0;
}

struct name_list {
    char **names;
    size_t count, cap;
    bool oom;
};

static void collect_name(void *ctx, const char *name)
{
    struct name_list *list = ctx;
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        char **n = realloc(list->names, cap * sizeof(*n));
        if (!n) {
            list->oom = true;
            return;
        }
        list->names = n;
        list->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        list->oom = true;
        return;
    }
    list->names[list->count++] = copy;
}

int verity_remove_devices(const char *prefix, struct vs_error *err)
{
    struct name_list list = {0};
    int r = verity_list_devices(prefix, collect_name, &list, err);
    if (r == 0 && list.oom)
        r = vs_fail(err, -ENOMEM, "verity devices: out of memory listing %s*", prefix);
    /* Try every device; report the first failure. */
    int listed = r;
    for (size_t i = 0; listed == 0 && i < list.count; i++) {
        struct vs_error one;
        int rr = verity_deactivate(list.names[i], &one);
        if (rr < 0 && rr != -ENOENT && r == 0) {
            r = rr;
            if (err)
                *err = one;
        }
    }
    for (size_t i = 0; i < list.count; i++)
        free(list.names[i]);
    free(list.names);
    return r;
}
