/* The daemon's host dialect with verity = "require", run in the child VM (test_guest_programs.py) because
 * this machine's kernel has no device-mapper: a committed layer is mounted through a dm-verity device named
 * <dm prefix><layer id>; a restart (close, open) adopts that mount and removes a leftover device of its
 * prefix but no other; removing the last user removes mount and device; a byte flipped in the layer file
 * after commit makes the file read EIO through the next mount while the rest reads. The oracle is the kernel:
 * mountinfo, the device-mapper device list (libdevmapper directly), and what reads return. Needs root and
 * device-mapper (77 without). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libdevmapper.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshotter/snapshotter.h"
#include "tests/lib/vs_test.h"

static const struct snapshot_call call = {.namespace_name = "test", .rpc = "test"};
static uint8_t big[3 * 4096 + 17];
static const char hello[] = "hello through dm-verity\n";

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0 && write(fd, data, len) == (ssize_t)len, "writing %s: %s", path, strerror(errno));
    close(fd);
}

/* 0 and the whole file in buf (cap bytes at most), or -errno of the failing read. */
static int read_file(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t n = 0;
    for (;;) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    *len = n;
    return 0;
}

/* The source of the erofs mount on mountpoint, from /proc/self/mountinfo; "" when not mounted. */
static void mount_source(const char *mountpoint, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/self/mountinfo", "re");
    REQUIRE(f, "mountinfo");
    char line[4096];
    while (fgets(line, sizeof(line), f)) {
        char mp[2048], fstype[64], source[1024];
        const char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %*s %2047s", mp) != 1 ||
            sscanf(dash + 3, "%63s %1023s", fstype, source) != 2)
            continue;
        if (!strcmp(mp, mountpoint) && !strcmp(fstype, "erofs"))
            snprintf(out, cap, "%s", source);
    }
    fclose(f);
}

/* Every device-mapper device whose name starts with prefix, space-separated (libdevmapper, not the product).
 */
static int dm_names(const char *prefix, char *out, size_t cap)
{
    out[0] = '\0';
    struct dm_task *dmt = dm_task_create(DM_DEVICE_LIST);
    REQUIRE(dmt && dm_task_run(dmt), "listing dm devices");
    struct dm_names *n = dm_task_get_names(dmt);
    int count = 0;
    if (n && n->dev) {
        for (;;) {
            if (!strncmp(n->name, prefix, strlen(prefix))) {
                size_t len = strlen(out);
                snprintf(out + len, cap - len, "%s%s", len ? " " : "", n->name);
                count++;
            }
            if (!n->next)
                break;
            n = (struct dm_names *)((char *)n + n->next);
        }
    }
    dm_task_destroy(dmt);
    return count;
}

/* The one committed layer file under root/layers. */
static void layer_file(const char *root, char *out, size_t cap)
{
    char dir[700];
    snprintf(dir, sizeof(dir), "%s/layers", root);
    DIR *d = opendir(dir);
    REQUIRE(d, "opendir %s", dir);
    struct dirent *de;
    int found = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && !strstr(de->d_name, ".dmverity") && strstr(de->d_name, ".erofs")) {
            snprintf(out, cap, "%s/%s", dir, de->d_name);
            found++;
        }
    closedir(d);
    REQUIRE(found == 1, "%d layer files in %s", found, dir);
}

int main(void)
{
    if (geteuid() != 0 || access("/dev/mapper/control", F_OK) != 0) {
        printf("SKIP: needs root and device-mapper\n");
        return 77;
    }
    char base[] = "/tmp/vs-host-verity-XXXXXX";
    REQUIRE(mkdtemp(base), "mkdtemp");
    char root[600], path[1200], src[1200], name[300], names[1024];
    snprintf(root, sizeof(root), "%s/root", base);
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 2654435761u >> 13);
    struct snapshotter_config cfg = {.root = root, .verity = SNAPSHOTTER_VERITY_REQUIRE};
    layer_file_options_default(&cfg.layer);
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    REQUIRE(snapshotter_open(&cfg, &s, &err) == 0, "open: %s", err.message);

    /* A layer committed from an active snapshot's directory. */
    struct snapshot_mounts ms;
    REQUIRE(snapshotter_prepare(s, &call, "a", "", NULL, 0, &ms, &err) == 0, "prepare: %s", err.message);
    REQUIRE(ms.count == 1 && !strcmp(ms.items[0].type, "bind"), "prepare without parent: one bind mount");
    snprintf(path, sizeof(path), "%s/hello.txt", ms.items[0].source);
    write_file(path, hello, strlen(hello));
    snprintf(path, sizeof(path), "%s/big.bin", ms.items[0].source);
    write_file(path, big, sizeof(big));
    snapshot_mounts_free(&ms);
    REQUIRE(snapshotter_commit(s, &call, "c1", "a", NULL, 0, &err) == 0, "commit: %s", err.message);

    /* A view mounts the layer through dm-verity. */
    REQUIRE(snapshotter_view(s, &call, "v1", "c1", NULL, 0, &ms, &err) == 0, "view: %s", err.message);
    REQUIRE(ms.count == 1 && !strcmp(ms.items[0].type, "bind"), "view of one layer: one bind mount");
    char mnt[1024];
    snprintf(mnt, sizeof(mnt), "%s", ms.items[0].source);
    snapshot_mounts_free(&ms);
    char source[1024];
    mount_source(mnt, source, sizeof(source));
    REQUIRE(!strncmp(source, "/dev/mapper/veritysnap-", 23),
            "the layer mount %s comes from a verity device: '%s'", mnt, source);
    const char *dmname = source + strlen("/dev/mapper/");
    const char *id = strrchr(mnt, '/') + 1;
    REQUIRE(strlen(dmname) > strlen(id) && !strcmp(dmname + strlen(dmname) - strlen(id), id) &&
                dmname[strlen(dmname) - strlen(id) - 1] == '-',
            "device %s is named after layer %s", dmname, id);
    char prefix[128];
    snprintf(prefix, sizeof(prefix), "%.*s", (int)(strlen(dmname) - strlen(id)), dmname);
    uint8_t buf[sizeof(big) + 16];
    size_t len;
    snprintf(path, sizeof(path), "%s/big.bin", mnt);
    int r = read_file(path, buf, sizeof(buf), &len);
    REQUIRE(r == 0 && len == sizeof(big) && !memcmp(buf, big, len), "big.bin through the view: %d", r);
    REQUIRE(dm_names(prefix, names, sizeof(names)) == 1 && !strcmp(names, dmname), "devices of %s: [%s]",
            prefix, names);
    printf("ok   verity = require: layer %s mounted from %s, big.bin reads back\n", id, source);

    /* A leftover device of this root (a crash between activation and mount), and one of another root. */
    layer_file(root, src, sizeof(src));
    struct layer_file_result res;
    struct layer_file_options lo;
    layer_file_options_default(&lo);
    lo.sidecar = false;
    snprintf(path, sizeof(path), "%s/src", base);
    REQUIRE(mkdir(path, 0755) == 0, "mkdir");
    char stray_file[1200];
    snprintf(stray_file, sizeof(stray_file), "%s/stray.erofs", base);
    REQUIRE(layer_file_build_dir(path, stray_file, &lo, &res, &err) == 0, "stray layer: %s", err.message);
    char dev[256];
    snprintf(name, sizeof(name), "%s999", prefix);
    REQUIRE(verity_activate(name, stray_file, &res.layout, dev, sizeof(dev), &err) == 0, "stray: %s",
            err.message);
    REQUIRE(verity_activate("vs-guest-other-root-1", stray_file, &res.layout, dev, sizeof(dev), &err) == 0,
            "other: %s", err.message);
    REQUIRE(dm_names(prefix, names, sizeof(names)) == 2, "before the restart: [%s]", names);

    /* Restart: the mount v1 needs is adopted with its device, the leftover of this prefix goes, the other
     * stays. */
    snapshotter_close(s);
    REQUIRE(snapshotter_open(&cfg, &s, &err) == 0, "reopen: %s", err.message);
    REQUIRE(dm_names(prefix, names, sizeof(names)) == 1 && !strcmp(names, dmname),
            "after the restart only the adopted device is left: [%s]", names);
    REQUIRE(dm_names("vs-guest-other-root-", names, sizeof(names)) == 1, "another root's device stays: [%s]",
            names);
    mount_source(mnt, source, sizeof(source));
    REQUIRE(!strcmp(source + strlen("/dev/mapper/"), dmname), "the adopted mount is still %s: '%s'", dmname,
            source);
    printf("ok   restart: mount %s adopted with %s, leftover %s removed, another root's device kept\n", mnt,
           dmname, name);
    struct vs_error e2 = {0};
    REQUIRE(verity_deactivate("vs-guest-other-root-1", &e2) == 0, "removing the other root's device: %s",
            e2.message);

    /* The last user gone: mount and device go. */
    REQUIRE(snapshotter_remove(s, &call, "v1", &err) == 0, "remove v1: %s", err.message);
    mount_source(mnt, source, sizeof(source));
    REQUIRE(source[0] == '\0', "layer still mounted from '%s'", source);
    REQUIRE(dm_names(prefix, names, sizeof(names)) == 0, "devices left after removing the view: [%s]", names);
    printf("ok   removing the last view unmounts the layer and removes its device\n");

    /* A byte of big.bin flipped in the layer file after commit: the next mount serves EIO for it. */
    int fd = open(src, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0, "open %s", src);
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0, "stat");
    uint8_t *img = malloc((size_t)st.st_size);
    REQUIRE(img && pread(fd, img, (size_t)st.st_size, 0) == st.st_size, "read %s", src);
    uint8_t *at = memmem(img, (size_t)st.st_size, big, 4096);
    REQUIRE(at && (at - img) % 4096 == 0, "big.bin block-aligned in %s", src);
    uint8_t c = at[4096 + 99] ^ 0x10;
    REQUIRE(pwrite(fd, &c, 1, (at - img) + 4096 + 99) == 1, "flip");
    close(fd);
    free(img);
    REQUIRE(snapshotter_view(s, &call, "v2", "c1", NULL, 0, &ms, &err) == 0, "view after the flip: %s",
            err.message);
    snapshot_mounts_free(&ms);
    mount_source(mnt, source, sizeof(source));
    REQUIRE(!strncmp(source, "/dev/mapper/", 12), "mounted through dm-verity again: '%s'", source);
    snprintf(path, sizeof(path), "%s/big.bin", mnt);
    r = read_file(path, buf, sizeof(buf), &len);
    REQUIRE(r == -EIO, "big.bin with a flipped byte must read EIO: %d", r);
    snprintf(path, sizeof(path), "%s/hello.txt", mnt);
    r = read_file(path, buf, sizeof(buf), &len);
    REQUIRE(r == 0 && len == strlen(hello) && !memcmp(buf, hello, len), "hello.txt still reads: %d", r);
    printf(
        "ok   a byte flipped in the layer file after commit: big.bin reads EIO through %s, hello.txt reads\n",
        source);
    REQUIRE(snapshotter_remove(s, &call, "v2", &err) == 0, "remove v2: %s", err.message);
    REQUIRE(snapshotter_remove(s, &call, "c1", &err) == 0, "remove c1: %s", err.message);
    REQUIRE(dm_names(prefix, names, sizeof(names)) == 0, "devices left at the end: [%s]", names);
    snapshotter_close(s);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
    REQUIRE(system(cmd) == 0, "rm -rf %s", base);
    printf("ok   all host dialect checks passed\n");
    return 0;
}
