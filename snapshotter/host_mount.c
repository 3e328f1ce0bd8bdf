/* Host mounts of layer files: each layer an active or view snapshot needs is mounted read-only once, at
 * <root>/mnt/<layer id>, shared by every snapshot whose parent chain holds it, and unmounted when none does.
 * The kernel's EROFS mounts a regular file directly from 6.12 on; elsewhere a read-only autoclear loop device
 * carries it. With dm-verity (where device-mapper exists) the EROFS mount is of the verity device. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshotter/snapshot_internal.h"

static void mnt_path(const struct snapshotter *s, int64_t id, char *out, size_t cap)
{
    snprintf(out, cap, "%s/mnt/%lld", s->root, (long long)id);
}

static void dm_name(const struct snapshotter *s, int64_t id, char *out, size_t cap)
{
    snprintf(out, cap, "%s%lld", s->dm_prefix, (long long)id);
}

bool host_is_mountpoint(const char *path)
{
    struct stat a, b;
    char parent[4096];
    if (snprintf(parent, sizeof(parent), "%s/..", path) >= (int)sizeof(parent))
        return false;
    if (lstat(path, &a) < 0 || lstat(parent, &b) < 0)
        return false;
    return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int r = flag == FTW_DP ? rmdir(path) : unlink(path);
    if (r < 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int snap_remove_tree(const char *path, struct vs_error *err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : vs_fail(err, -errno, "removing '%s': %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0 && errno != ENOENT)
            return vs_fail(err, -errno, "removing '%s': %s", path, strerror(errno));
        return 0;
    }
    int r = nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    if (r != 0) {
        int code = r < 0 ? -errno : r;
        return vs_fail(err, code, "removing '%s': %s", path, strerror(-code));
    }
    return 0;
}

/* Calls fn for each line of /proc/self/mountinfo with the decoded mount point and source. */
static int mountinfo_each(void (*fn)(void *ctx, const char *mountpoint, const char *fstype, const char *source),
                          void *ctx, struct vs_error *err)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return vs_fail(err, -errno, "reading /proc/self/mountinfo: %s", strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mountpoint options [optional...] - fstype source superoptions */
        char *fields[6] = {0};
        char *save = NULL, *tok = strtok_r(line, " \n", &save);
        for (int i = 0; tok && i < 5; i++, tok = strtok_r(NULL, " \n", &save))
            fields[i] = tok;
        while (tok && strcmp(tok, "-") != 0)
            tok = strtok_r(NULL, " \n", &save);
        char *fstype = tok ? strtok_r(NULL, " \n", &save) : NULL;
        char *source = fstype ? strtok_r(NULL, " \n", &save) : NULL;
        if (!fields[4])
            continue;
        /* Undo the kernel's octal escapes (\040 for a space, ...). */
        for (char *mp = fields[4]; mp && *mp; mp++) {
            if (mp[0] == '\\' && mp[1] >= '0' && mp[1] <= '7' && mp[2] && mp[3]) {
                *mp = (char)((mp[1] - '0') * 64 + (mp[2] - '0') * 8 + (mp[3] - '0'));
                memmove(mp + 1, mp + 4, strlen(mp + 4) + 1);
            }
        }
        fn(ctx, fields[4], fstype ? fstype : "", source ? source : "");
    }
    free(line);
    fclose(f);
    return 0;
}

static int loop_attach(const char *file, char *dev, size_t cap, int *loop_fd, struct vs_error *err)
{
    int ffd = open(file, O_RDONLY | O_CLOEXEC);
    if (ffd < 0)
        return vs_fail(err, -errno, "opening '%s': %s", file, strerror(errno));
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        int rc = vs_fail(err, -errno, "opening /dev/loop-control to mount '%s': %s", file, strerror(errno));
        close(ffd);
        return rc;
    }
    int rc = -EBUSY;
    /* Another process may take the free device between GET_FREE and CONFIGURE: try again a few times. */
    for (int attempt = 0; attempt < 16 && rc == -EBUSY; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            rc = vs_fail(err, -errno, "finding a free loop device for '%s': %s", file, strerror(errno));
            break;
        }
        snprintf(dev, cap, "/dev/loop%d", n);
        int lfd = open(dev, O_RDONLY | O_CLOEXEC);
        if (lfd < 0) {
            rc = vs_fail(err, -errno, "opening %s for '%s': %s", dev, file, strerror(errno));
            break;
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.fd = (uint32_t)ffd;
        cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
        snprintf((char *)cfg.info.lo_file_name, sizeof(cfg.info.lo_file_name), "%s", file);
        if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0) {
            *loop_fd = lfd;
            rc = 0;
            break;
        }
        int e = errno;
        if (e == EINVAL || e == ENOTTY) {
            /* Kernels before 5.8: set the file and then the flags. */
            struct loop_info64 info;
            memset(&info, 0, sizeof(info));
            info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
            if (ioctl(lfd, LOOP_SET_FD, ffd) == 0) {
                if (ioctl(lfd, LOOP_SET_STATUS64, &info) == 0) {
                    *loop_fd = lfd;
                    rc = 0;
                    break;
                }
                e = errno;
                ioctl(lfd, LOOP_CLR_FD, 0);
            } else {
                e = errno;
            }
        }
        close(lfd);
        rc = e == EBUSY ? -EBUSY : vs_fail(err, -e, "attaching '%s' to %s: %s", file, dev, strerror(e));
    }
    if (rc == -EBUSY && (!err || err->code != -EBUSY))
        rc = vs_fail(err, -EBUSY, "attaching '%s' to a loop device: every free device was taken meanwhile", file);
    close(ctl);
    close(ffd);
    return rc;
}

/* Mounts an EROFS image read-only: from the file where the kernel can, else through a loop device. */
static int mount_erofs(const char *source, bool is_block, bool force_loop, const char *dir, struct vs_error *err)
{
    if (is_block || !force_loop) {
        if (mount(source, dir, "erofs", MS_RDONLY, NULL) == 0)
            return 0;
        int e = errno;
        /* ENOTBLK: this kernel's EROFS needs a block device (before 6.12 or built without file-backed mounts). */
        if (is_block || e != ENOTBLK)
            return vs_fail(err, -e, "mounting '%s' (erofs) on '%s': %s", source, dir, strerror(e));
    }
    char dev[64];
    int lfd = -1;
    int rc = loop_attach(source, dev, sizeof(dev), &lfd, err);
    if (rc < 0)
        return rc;
    if (mount(dev, dir, "erofs", MS_RDONLY, NULL) < 0)
        rc = vs_fail(err, -errno, "mounting '%s' (erofs, through %s) on '%s': %s", source, dev, dir, strerror(errno));
    close(lfd); /* autoclear: the device goes when the mount does */
    return rc;
}

static struct host_layer *find_mounted(struct snapshotter *s, int64_t id)
{
    for (size_t i = 0; i < s->mounted_count; i++)
        if (s->mounted[i].layer_id == id)
            return &s->mounted[i];
    return NULL;
}

static int add_mounted(struct snapshotter *s, int64_t id, bool dm, struct vs_error *err)
{
    if (s->mounted_count == s->mounted_cap) {
        size_t cap = s->mounted_cap ? s->mounted_cap * 2 : 16;
        struct host_layer *grown = realloc(s->mounted, cap * sizeof(*grown));
        if (!grown)
            return vs_fail(err, -ENOMEM, "out of memory");
        s->mounted = grown;
        s->mounted_cap = cap;
    }
    s->mounted[s->mounted_count++] = (struct host_layer){id, dm};
    return 0;
}

static void unmount_dir(const char *dir)
{
    /* Detach: an overlay a client still has mounted keeps its own reference to the layer; stacked mounts left by
     * a crash come off one by one. */
    for (int i = 0; i < 8; i++)
        if (umount2(dir, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
            break;
    if (rmdir(dir) < 0 && errno != ENOENT)
        vs_log(VS_LOG_WARN, "removing a layer mount point", "path", dir, "error", strerror(errno), NULL);
}

static void unmount_layer(struct snapshotter *s, int64_t id, bool dm)
{
    char dir[4096], name[128];
    mnt_path(s, id, dir, sizeof(dir));
    unmount_dir(dir);
    if (dm) {
        dm_name(s, id, name, sizeof(name));
        struct vs_error e = {0};
        if (verity_deactivate(name, &e) < 0)
            vs_log(VS_LOG_WARN, "removing a verity device (cleanup retries)", "device", name, "error", e.message, NULL);
    }
}

int host_layer_ensure(struct snapshotter *s, const struct layer_row *layer, struct vs_error *err)
{
    char dir[4096], file[4096];
    mnt_path(s, layer->id, dir, sizeof(dir));
    struct host_layer *m = find_mounted(s, layer->id);
    if (m) {
        if (host_is_mountpoint(dir))
            return 0;
        /* Someone unmounted it behind our back: mount it again. */
        vs_log(VS_LOG_WARN, "layer mount vanished, mounting again", "key", layer->key, "path", dir, NULL);
        bool dm = m->dm;
        *m = s->mounted[--s->mounted_count];
        if (dm) {
            char name[128];
            dm_name(s, layer->id, name, sizeof(name));
            verity_deactivate(name, NULL);
        }
    }
    snprintf(file, sizeof(file), "%s/%s", s->root, layer->path);
    if (access(file, R_OK) < 0)
        return vs_fail(err, -EIO, "layer file '%s' of snapshot '%s' is missing or unreadable: %s", file, layer->key,
                       strerror(errno));
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return vs_fail(err, -errno, "creating the layer mount point '%s': %s", dir, strerror(errno));
    bool dm = false;
    int rc = 0;
    if (s->verity != SNAPSHOTTER_VERITY_OFF) {
        if (!layer->verity) {
            if (s->verity == SNAPSHOTTER_VERITY_REQUIRE)
                rc = vs_fail(err, -EPERM,
                             "layer '%s' of snapshot '%s' has no dm-verity tree and verity = \"require\" refuses "
                             "to mount unverified layers",
                             layer->path, layer->key);
            else
                vs_log(VS_LOG_WARN, "layer has no dm-verity tree, mounting it unverified", "key", layer->key, "layer",
                       layer->path, NULL);
        } else {
            char name[128], device[256];
            dm_name(s, layer->id, name, sizeof(name));
            struct vs_error verr = {0};
            int r = verity_activate(name, file, &layer->layout, device, sizeof(device), &verr);
            if (r == 0) {
                rc = mount_erofs(device, true, false, dir, err);
                if (rc < 0)
                    verity_deactivate(name, NULL);
                else
                    dm = true;
                goto mounted;
            }
            if (r == -ENODEV && s->verity == SNAPSHOTTER_VERITY_AUTO) {
                vs_log(VS_LOG_WARN, "device-mapper is not available: mounting the layer without dm-verity (verity = auto)",
                       "key", layer->key, "layer", layer->path, "cause", verr.message, NULL);
            } else if (r == -ENODEV) {
                rc = vs_fail(err, -ENODEV,
                             "snapshot '%s': mounting layer '%s': device-mapper is not available on this host "
                             "(%s), and verity = \"require\" refuses to mount the layer without dm-verity; set "
                             "verity = \"auto\" or \"off\" to mount unverified",
                             layer->key, layer->path, verr.message);
            } else {
                rc = vs_fail(err, r, "snapshot '%s': activating dm-verity for layer '%s': %s", layer->key,
                             layer->path, verr.message);
            }
        }
    }
    if (rc == 0)
        rc = mount_erofs(file, false, s->force_loop, dir, err);
mounted:
    if (rc == 0)
        rc = add_mounted(s, layer->id, dm, err);
    if (rc < 0) {
        if (host_is_mountpoint(dir))
            unmount_layer(s, layer->id, dm);
        else
            rmdir(dir);
        return err && err->code ? vs_error_prefix(err, "snapshot '%s'", layer->key) : rc;
    }
    return 0;
}

/* The layers that active and view snapshots need: every layer of their parent chains. */
static int needed_layers(struct snapshotter *s, int64_t **ids, size_t *count, struct vs_error *err)
{
    *ids = NULL;
    *count = 0;
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "WITH RECURSIVE chain(id) AS ("
                           "  SELECT parent_id FROM snapshots WHERE kind IN (1, 2) AND parent_id IS NOT NULL"
                           "  UNION"
                           "  SELECT p.parent_id FROM snapshots p JOIN chain c ON p.id = c.id"
                           "  WHERE p.parent_id IS NOT NULL"
                           ") SELECT l.id FROM layers l JOIN chain c ON l.snapshot_id = c.id",
                           err);
    if (rc < 0)
        return rc;
    size_t cap = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (*count == cap) {
            cap = cap ? cap * 2 : 32;
            int64_t *grown = realloc(*ids, cap * sizeof(*grown));
            if (!grown) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
            *ids = grown;
        }
        (*ids)[(*count)++] = sqlite3_column_int64(st, 0);
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = store_fail(s, err, "listing the layers mounted snapshots need");
    sqlite3_finalize(st);
    if (rc < 0) {
        free(*ids);
        *ids = NULL;
        *count = 0;
    }
    return rc;
}

static bool contains(const int64_t *ids, size_t count, int64_t id)
{
    for (size_t i = 0; i < count; i++)
        if (ids[i] == id)
            return true;
    return false;
}

int host_layers_sync(struct snapshotter *s, struct vs_error *err)
{
    int64_t *ids;
    size_t count;
    int rc = needed_layers(s, &ids, &count, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < s->mounted_count;) {
        if (contains(ids, count, s->mounted[i].layer_id)) {
            i++;
            continue;
        }
        unmount_layer(s, s->mounted[i].layer_id, s->mounted[i].dm);
        s->mounted[i] = s->mounted[--s->mounted_count];
    }
    free(ids);
    return 0;
}

struct reconcile_ctx {
    struct snapshotter *s;
    char prefix[4200];
    size_t prefix_len;
    int64_t *needed;
    size_t needed_count;
    int64_t *layers; /* every layer id with a row */
    size_t layer_count;
    char **strays;
    size_t stray_count;
    int rc;
    struct vs_error *err;
};

static void reconcile_mount(void *ctx, const char *mountpoint, const char *fstype, const char *source)
{
    struct reconcile_ctx *r = ctx;
    if (r->rc < 0 || strncmp(mountpoint, r->prefix, r->prefix_len) != 0)
        return;
    const char *name = mountpoint + r->prefix_len;
    char *end = NULL;
    long long id = strtoll(name, &end, 10);
    bool ours = end && end != name && *end == '\0' && strcmp(fstype, "erofs") == 0;
    if (ours && contains(r->needed, r->needed_count, id) && !find_mounted(r->s, id)) {
        bool dm = strncmp(source, "/dev/mapper/", 12) == 0 || strncmp(source, "/dev/dm-", 8) == 0;
        r->rc = add_mounted(r->s, id, dm, r->err);
        return;
    }
    if (ours && find_mounted(r->s, id))
        return; /* stacked twice: the first is adopted, keep it */
    char **grown = realloc(r->strays, (r->stray_count + 1) * sizeof(*grown));
    char *copy = strdup(mountpoint);
    if (!grown || !copy) {
        free(copy);
        if (grown)
            r->strays = grown;
        r->rc = vs_fail(r->err, -ENOMEM, "out of memory");
        return;
    }
    r->strays = grown;
    r->strays[r->stray_count++] = copy;
}

static void reconcile_dm(void *ctx, const char *name)
{
    struct reconcile_ctx *r = ctx;
    long long id = strtoll(name + strlen(r->s->dm_prefix), NULL, 10);
    struct host_layer *m = find_mounted(r->s, id);
    if (m && m->dm)
        return;
    struct vs_error e = {0};
    if (verity_deactivate(name, &e) < 0)
        vs_log(VS_LOG_WARN, "removing a stray verity device", "device", name, "error", e.message, NULL);
}

int host_layers_reconcile(struct snapshotter *s, struct vs_error *err)
{
    struct reconcile_ctx r = {.s = s, .err = err};
    r.prefix_len = (size_t)snprintf(r.prefix, sizeof(r.prefix), "%s/mnt/", s->root);
    int rc = needed_layers(s, &r.needed, &r.needed_count, err);
    if (rc < 0)
        return rc;
    rc = mountinfo_each(reconcile_mount, &r, err);
    if (rc == 0)
        rc = r.rc;
    for (size_t i = 0; i < r.stray_count; i++) {
        if (rc == 0) {
            vs_log(VS_LOG_INFO, "unmounting a layer mount nothing needs", "path", r.strays[i], NULL);
            unmount_dir(r.strays[i]);
        }
        free(r.strays[i]);
    }
    free(r.strays);
    free(r.needed);
    if (rc < 0)
        return rc;
    /* dm-verity devices of this root that no adopted mount uses. */
    struct vs_error dmerr = {0};
    int d = verity_list_devices(s->dm_prefix, reconcile_dm, &r, &dmerr);
    if (d < 0 && d != -ENODEV)
        vs_log(VS_LOG_WARN, "listing verity devices", "error", dmerr.message, NULL);
    /* Mount points without a mount. */
    char mdir[4200];
    snprintf(mdir, sizeof(mdir), "%s/mnt", s->root);
    DIR *dir = opendir(mdir);
    if (!dir)
        return 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        char *end = NULL;
        long long id = strtoll(de->d_name, &end, 10);
        if (end && *end == '\0' && find_mounted(s, id))
            continue;
        char path[4200 + 300];
        snprintf(path, sizeof(path), "%s/%s", mdir, de->d_name);
        if (!host_is_mountpoint(path) && rmdir(path) < 0 && errno != ENOENT)
            vs_log(VS_LOG_WARN, "removing a stray mount point", "path", path, "error", strerror(errno), NULL);
    }
    closedir(dir);
    return 0;
}

void host_layers_forget(struct snapshotter *s)
{
    for (size_t i = 0; i < s->mounted_count; i++)
        unmount_layer(s, s->mounted[i].layer_id, s->mounted[i].dm);
    s->mounted_count = 0;
}
