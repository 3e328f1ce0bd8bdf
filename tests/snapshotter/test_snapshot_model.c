/* The snapshot model against the kernel: a sequence like containerd's snapshotter suite, really mounting what
 * the API returns (bind, overlay with the EROFS layers below it), writing through it, committing, viewing,
 * and then checking the contract's error codes, Walk filters, Update, Usage, Remove order, Cleanup and a
 * reopen. The oracle is the kernel's view of the mounted trees and /proc/self/mountinfo. Needs root, overlay
 * and erofs; exits 77 without. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshotter/snapshotter.h"

/* A failed REQUIRE ends the test function it is in; the others still run. */
#define VS_TEST_REQUIRE_FAILED() return
#include "tests/lib/vs_test.h"
#include "tests/lib/vs_test_mounts.h"

static const struct snapshot_call call = {.namespace_name = "test", .rpc = "test"};
static char base_dir[256];

static char *read_file(const char *dir, const char *name)
{
    static char buf[4096];
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static bool exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

static int count_mounts_under(const char *prefix)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return -1;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        char mp[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strncmp(mp, prefix, strlen(prefix)) == 0)
            n++;
    }
    fclose(f);
    return n;
}

/* The source of the mount at mountpoint, from mountinfo. */
static bool mount_source(const char *mountpoint, char *out, size_t cap)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return false;
    char line[8192];
    bool found = false;
    while (fgets(line, sizeof(line), f)) {
        char mp[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 || strcmp(mp, mountpoint) != 0)
            continue;
        char *dash = strstr(line, " - ");
        char fstype[64], src[1024];
        if (dash && sscanf(dash + 3, "%63s %1023s", fstype, src) == 2) {
            snprintf(out, cap, "%s", src);
            found = true;
        }
    }
    fclose(f);
    return found;
}

static const char *label(const struct snapshot_info *info, const char *key)
{
    for (size_t i = 0; i < info->label_count; i++)
        if (strcmp(info->labels[i].key, key) == 0)
            return info->labels[i].value;
    return NULL;
}

struct walk_ctx {
    struct snapshotter *s;
    char names[64][64];
    int count;
    bool stat_inside;
};

static int walk_fn(void *ctx, const struct snapshot_info *info)
{
    struct walk_ctx *w = ctx;
    if (w->count < 64)
        snprintf(w->names[w->count], sizeof(w->names[0]), "%s", info->name);
    w->count++;
    if (w->stat_inside) {
        struct snapshot_info si;
        struct vs_error err = {0};
        int rc = snapshotter_stat(w->s, &call, info->name, &si, &err);
        CHECK(rc == 0, "stat '%s' inside walk: %s", info->name, err.message);
        if (rc == 0)
            snapshot_info_free(&si);
    }
    return 0;
}

static bool walked(const struct walk_ctx *w, const char *name)
{
    for (int i = 0; i < w->count && i < 64; i++)
        if (strcmp(w->names[i], name) == 0)
            return true;
    return false;
}

/* Walks with filters and checks the names matched, given as a space-separated sorted-free list. */
static void check_walk(struct snapshotter *s, const char *const *filters, size_t n, const char *expect)
{
    struct walk_ctx w = {.s = s, .stat_inside = true};
    struct vs_error err = {0};
    int rc = snapshotter_walk(s, &call, filters, n, walk_fn, &w, &err);
    CHECK(rc == 0, "walk %s: %s", n ? filters[0] : "(none)", err.message);
    int want = 0;
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", expect);
    for (char *save = NULL, *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        want++;
        CHECK(walked(&w, t), "walk '%s' should match '%s'", n ? filters[0] : "", t);
    }
    CHECK(w.count == want, "walk '%s' matched %d, expected %d (%s)", n ? filters[0] : "", w.count, want,
          expect);
}

static void make_target(const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", base_dir, name);
    mkdir(out, 0755);
}

static void sequence(void)
{
    char root[512];
    snprintf(root, sizeof(root), "%s/root", base_dir);
    struct snapshotter_config cfg = {.root = root, .verity = SNAPSHOTTER_VERITY_OFF};
    layer_file_options_default(&cfg.layer);
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    int rc = snapshotter_open(&cfg, &s, &err);
    REQUIRE(rc == 0, "open: %s", err.message);
    struct snapshot_label gc[] = {{"containerd.io/gc.root", "now"}};

    /* Base: a bind mount of the empty upper dir. */
    struct snapshot_mounts ms;
    rc = snapshotter_prepare(s, &call, "base", "", gc, 1, &ms, &err);
    REQUIRE(rc == 0, "prepare base: %s", err.message);
    REQUIRE(ms.count == 1 && !strcmp(ms.items[0].type, "bind"), "base: one bind mount, got %s",
            ms.count ? ms.items[0].type : "none");
    CHECK(vs_test_has_option(&ms.items[0], "rw") && vs_test_has_option(&ms.items[0], "rbind"),
          "base: rw rbind");
    char t1[512];
    make_target("t1", t1, sizeof(t1));
    REQUIRE(vs_test_mount_all(&ms, t1) == 0, "mounting base: %s", strerror(errno));
    struct stat st;
    CHECK(stat(t1, &st) == 0 && (st.st_mode & 07777) == 0755, "base root mode 0%o", st.st_mode & 07777);
    vs_test_write_file(t1, "foo", "foo\n");
    vs_test_write_file(t1, "gone", "x\n");
    CHECK(mkdir(strcat(strcpy((char[600]){0}, t1), "/a"), 0755) == 0, "mkdir a");
    CHECK(mkdir(strcat(strcpy((char[600]){0}, t1), "/a/b"), 0755) == 0, "mkdir a/b");
    vs_test_write_file(t1, "a/b/inner", "inner\n");
    umount2(t1, MNT_DETACH);
    snapshot_mounts_free(&ms);

    struct snapshot_label l1[] = {{"containerd.io/gc.root", "now"}, {"l", "1"}};
    rc = snapshotter_commit(s, &call, "base-c", "base", l1, 2, &err);
    REQUIRE(rc == 0, "commit base: %s", err.message);
    struct snapshot_info si;
    rc = snapshotter_stat(s, &call, "base-c", &si, &err);
    REQUIRE(rc == 0, "stat base-c: %s", err.message);
    CHECK(si.kind == SNAPSHOT_KIND_COMMITTED && !strcmp(si.parent, ""), "base-c committed, no parent");
    CHECK(si.created_ns == si.updated_ns, "created == updated at commit");
    const char *rh = label(&si, SNAPSHOT_LABEL_ROOT_HASH);
    CHECK(rh && strlen(rh) == 64, "root-hash label: %s", rh ? rh : "(none)");
    CHECK(label(&si, "l") && !strcmp(label(&si, "l"), "1"), "commit labels kept");
    CHECK(si.label_count == 3, "labels: %zu", si.label_count);
    snapshot_info_free(&si);
    CHECK(snapshotter_stat(s, &call, "base", &si, &err) == -ENOENT, "the active key is gone after commit");
    char layers[600];
    snprintf(layers, sizeof(layers), "%s/layers", root);
    CHECK(vs_test_count_entries(layers) == 2, "layers/ holds the layer file and its sidecar: %d",
          vs_test_count_entries(layers));

    /* Child: an overlay on the base layer; a deletion becomes a whiteout, a recreated dir an opaque one. */
    rc = snapshotter_prepare(s, &call, "child", "base-c", gc, 1, &ms, &err);
    REQUIRE(rc == 0, "prepare child: %s", err.message);
    REQUIRE(ms.count == 1 && !strcmp(ms.items[0].type, "overlay"), "child: one overlay mount");
    const char *lower = vs_test_option_value(&ms.items[0], "lowerdir=");
    CHECK(lower && !strchr(lower, ':') && strstr(lower, "/mnt/"), "child: one lowerdir under mnt/: %s",
          lower ? lower : "(none)");
    CHECK(vs_test_option_value(&ms.items[0], "upperdir=") && vs_test_option_value(&ms.items[0], "workdir="),
          "child: upper+work");
    char t2[512];
    make_target("t2", t2, sizeof(t2));
    REQUIRE(vs_test_mount_all(&ms, t2) == 0, "mounting child: %s", strerror(errno));
    char *c = read_file(t2, "foo");
    CHECK(c && !strcmp(c, "foo\n"), "child sees base's foo: %s", c ? c : "(missing)");
    CHECK(stat(t2, &st) == 0 && (st.st_mode & 07777) == 0755, "child root mode 0%o", st.st_mode & 07777);
    char p[700];
    snprintf(p, sizeof(p), "%s/gone", t2);
    CHECK(unlink(p) == 0, "deleting a lower file: %s", strerror(errno));
    snprintf(p, sizeof(p), "%s/a/b/inner", t2);
    CHECK(unlink(p) == 0, "deleting a/b/inner");
    snprintf(p, sizeof(p), "%s/a/b", t2);
    CHECK(rmdir(p) == 0 && mkdir(p, 0755) == 0, "recreating a/b");
    vs_test_write_file(t2, "a/b/new", "new\n");
    vs_test_write_file(t2, "bar", "bar\n");
    vs_test_write_file(t2, "foo", "bar\n");
    umount2(t2, MNT_DETACH);
    snapshot_mounts_free(&ms);

    /* Usage of an active snapshot: what its upper dir holds. */
    int64_t size = 0, inodes = 0;
    rc = snapshotter_usage(s, &call, "child", &size, &inodes, &err);
    CHECK(rc == 0 && inodes >= 6 && size > 0, "usage child: rc %d size %lld inodes %lld: %s", rc,
          (long long)size, (long long)inodes, err.message);

    rc = snapshotter_commit(s, &call, "child-c", "child", gc, 1, &err);
    REQUIRE(rc == 0, "commit child: %s", err.message);
    rc = snapshotter_usage(s, &call, "child-c", &size, &inodes, &err);
    CHECK(rc == 0 && size > 0 && size % 4096 == 0 && inodes > 0, "usage child-c: %lld bytes %lld inodes",
          (long long)size, (long long)inodes);

    /* View of two layers: an overlay without upper, read-only. */
    rc = snapshotter_view(s, &call, "top", "child-c", NULL, 0, &ms, &err);
    REQUIRE(rc == 0, "view top: %s", err.message);
    REQUIRE(ms.count == 1 && !strcmp(ms.items[0].type, "overlay"), "top: overlay");
    CHECK(!vs_test_option_value(&ms.items[0], "upperdir="), "top: no upperdir");
    lower = vs_test_option_value(&ms.items[0], "lowerdir=");
    CHECK(lower && strchr(lower, ':'), "top: two lowerdirs: %s", lower ? lower : "(none)");
    char t3[512];
    make_target("t3", t3, sizeof(t3));
    REQUIRE(vs_test_mount_all(&ms, t3) == 0, "mounting top: %s", strerror(errno));
    c = read_file(t3, "foo");
    CHECK(c && !strcmp(c, "bar\n"), "top: foo rewritten: %s", c ? c : "(missing)");
    c = read_file(t3, "bar");
    CHECK(c && !strcmp(c, "bar\n"), "top: bar added");
    CHECK(!exists(t3, "gone"), "top: the whiteout hides gone");
    CHECK(!exists(t3, "a/b/inner") && exists(t3, "a/b/new"), "top: a/b is opaque");
    snprintf(p, sizeof(p), "%s/new", t3);
    int fd = open(p, O_CREAT | O_WRONLY, 0644);
    CHECK(fd < 0 && errno == EROFS, "writing into a view fails with EROFS: fd %d errno %d", fd, errno);
    if (fd >= 0)
        close(fd);
    umount2(t3, MNT_DETACH);
    snapshot_mounts_free(&ms);

    /* View of one layer: a read-only bind of its host mount. */
    rc = snapshotter_view(s, &call, "v1", "base-c", NULL, 0, &ms, &err);
    REQUIRE(rc == 0, "view v1: %s", err.message);
    CHECK(ms.count == 1 && !strcmp(ms.items[0].type, "bind") && vs_test_has_option(&ms.items[0], "ro"),
          "v1: ro bind");
    char t4[512];
    make_target("t4", t4, sizeof(t4));
    CHECK(vs_test_mount_all(&ms, t4) == 0, "mounting v1: %s", strerror(errno));
    c = read_file(t4, "gone");
    CHECK(c && !strcmp(c, "x\n"), "v1 sees base's gone");
    snprintf(p, sizeof(p), "%s/new", t4);
    fd = open(p, O_CREAT | O_WRONLY, 0644);
    CHECK(fd < 0 && errno == EROFS, "writing into a single-layer view fails with EROFS");
    if (fd >= 0)
        close(fd);
    umount2(t4, MNT_DETACH);
    snapshot_mounts_free(&ms);

    /* A view with no parent, an active with no parent (for Walk). */
    rc = snapshotter_view(s, &call, "v-np", "", NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 1 && !strcmp(ms.items[0].type, "bind") &&
              vs_test_has_option(&ms.items[0], "ro"),
          "view without parent: ro bind: %s", err.message);
    snapshot_mounts_free(&ms);
    struct snapshot_label l2[] = {{"l", "2"}};
    rc = snapshotter_prepare(s, &call, "a-np", NULL, l2, 1, &ms, &err);
    CHECK(rc == 0, "prepare a-np: %s", err.message);
    snapshot_mounts_free(&ms);

    /* The contract's error codes. */
    CHECK(snapshotter_prepare(s, &call, "top", "base-c", NULL, 0, &ms, &err) == -EEXIST,
          "prepare existing key");
    CHECK(snapshotter_view(s, &call, "child-c", "base-c", NULL, 0, &ms, &err) == -EEXIST,
          "view existing key");
    CHECK(snapshotter_prepare(s, &call, "x", "nope", NULL, 0, &ms, &err) == -ENOENT, "missing parent");
    CHECK(strstr(err.message, "'x'") && strstr(err.message, "'nope'"), "message names key and parent: %s",
          err.message);
    CHECK(snapshotter_prepare(s, &call, "x", "a-np", NULL, 0, &ms, &err) == -EINVAL, "active parent");
    CHECK(strstr(err.message, "not committed"), "message: %s", err.message);
    CHECK(snapshotter_commit(s, &call, "x", "top", NULL, 0, &err) == -EBUSY, "commit of a view");
    CHECK(snapshotter_commit(s, &call, "x", "base-c", NULL, 0, &err) == -EBUSY, "commit of a committed");
    CHECK(snapshotter_commit(s, &call, "x", "nope", NULL, 0, &err) == -ENOENT, "commit of a missing key");
    CHECK(snapshotter_commit(s, &call, "base-c", "a-np", NULL, 0, &err) == -EEXIST,
          "commit onto an existing name");
    CHECK(snapshotter_remove(s, &call, "base-c", &err) == -EBUSY, "remove with children");
    CHECK(strstr(err.message, "cannot remove snapshot with child"), "message: %s", err.message);
    CHECK(snapshotter_remove(s, &call, "nope", &err) == -ENOENT, "remove missing");
    CHECK(snapshotter_mounts(s, &call, "base-c", &ms, &err) == -EBUSY, "mounts of a committed");
    CHECK(snapshotter_stat(s, &call, "nope", &si, &err) == -ENOENT, "stat missing");
    rc = snapshotter_mounts(s, &call, "top", &ms, &err);
    CHECK(rc == 0 && ms.count == 1, "mounts of a view: %s", err.message);
    snapshot_mounts_free(&ms);

    /* Walk: containerd's filter syntax. */
    const char *f_all[] = {""};
    check_walk(s, NULL, 0, "base-c child-c top v1 v-np a-np");
    check_walk(s, f_all, 1, "base-c child-c top v1 v-np a-np");
    const char *f1[] = {"kind==committed"};
    check_walk(s, f1, 1, "base-c child-c");
    const char *f2[] = {"kind==view,parent==\"base-c\""};
    check_walk(s, f2, 1, "v1");
    const char *f3[] = {"name==top", "name==a-np"};
    check_walk(s, f3, 2, "top a-np");
    const char *f4[] = {"labels.l"};
    check_walk(s, f4, 1, "base-c a-np");
    const char *f5[] = {"labels.l==2"};
    check_walk(s, f5, 1, "a-np");
    const char *f6[] = {"labels.\"containerd.io/gc.root\"==now"};
    check_walk(s, f6, 1, "base-c child-c");
    const char *f7[] = {"labels.\"containerd.io/snapshot/veritysnap.root-hash\""};
    check_walk(s, f7, 1, "base-c child-c");
    const char *f8[] = {"name~=^(ba|ch)"};
    check_walk(s, f8, 1, "base-c child-c");
    const char *f9[] = {"name~=/^v/"};
    check_walk(s, f9, 1, "v1 v-np");
    const char *f10[] = {"parent!=\"\", kind != committed"};
    check_walk(s, f10, 1, "top v1");
    const char *f12[] = {"labels.l!=1"};
    check_walk(s, f12, 1, "child-c top v1 v-np a-np");
    const char *bad[] = {"name=top", "name==", "kind==active,", "labels.\"x", "name~=(", "=="};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct walk_ctx w = {.s = s};
        CHECK(snapshotter_walk(s, &call, &bad[i], 1, walk_fn, &w, &err) == -EINVAL,
              "bad filter '%s' -> -EINVAL", bad[i]);
    }

    /* Update: labels only, empty value deletes, updated_ns moves. */
    rc = snapshotter_stat(s, &call, "top", &si, &err);
    REQUIRE(rc == 0, "stat top");
    CHECK(si.created_ns == si.updated_ns, "top: created == updated");
    int64_t created = si.created_ns;
    snapshot_info_free(&si);
    struct snapshot_label nl[] = {{"a", "1"}, {"b", "2"}};
    struct snapshot_info in = {.name = "top", .parent = "doesnotexist", .labels = nl, .label_count = 2};
    struct snapshot_info outi;
    rc = snapshotter_update(s, &call, &in, NULL, 0, &outi, &err);
    CHECK(rc == 0 && outi.label_count == 2 && outi.created_ns == created && outi.updated_ns > created &&
              !strcmp(outi.parent, "child-c"),
          "update all labels: %s", err.message);
    snapshot_info_free(&outi);
    struct snapshot_label nl2[] = {{"a", ""}, {"c", "3"}};
    in.labels = nl2;
    const char *paths[] = {"labels.a", "labels.c", "labels.b"};
    rc = snapshotter_update(s, &call, &in, paths, 3, &outi, &err);
    CHECK(rc == 0 && outi.label_count == 1 && label(&outi, "c"), "update labels.<k>: %zu labels",
          outi.label_count);
    snapshot_info_free(&outi);
    const char *bad_path[] = {"parent"};
    CHECK(snapshotter_update(s, &call, &in, bad_path, 1, &outi, &err) == -EINVAL, "update parent -> -EINVAL");
    in.name = "nope";
    CHECK(snapshotter_update(s, &call, &in, NULL, 0, &outi, &err) == -ENOENT, "update missing -> -ENOENT");

    /* A failed conversion leaves the active snapshot and no files. */
    rc = snapshotter_prepare(s, &call, "broken", "base-c", NULL, 0, &ms, &err);
    REQUIRE(rc == 0, "prepare broken: %s", err.message);
    const char *upper = vs_test_option_value(&ms.items[0], "upperdir=");
    char upper_copy[600];
    snprintf(upper_copy, sizeof(upper_copy), "%s", upper ? upper : "");
    snapshot_mounts_free(&ms);
    CHECK(rmdir(upper_copy) == 0, "removing the upper dir behind the snapshotter's back");
    CHECK(snapshotter_commit(s, &call, "broken-c", "broken", NULL, 0, &err) < 0,
          "commit of a missing upper fails");
    CHECK(strstr(err.message, "broken"), "message names the key: %s", err.message);
    rc = snapshotter_stat(s, &call, "broken", &si, &err);
    CHECK(rc == 0 && si.kind == SNAPSHOT_KIND_ACTIVE, "still active after a failed commit");
    snapshot_info_free(&si);
    CHECK(vs_test_count_entries(layers) == 4, "no layer file left by the failed commit: %d",
          vs_test_count_entries(layers));
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s/tmp", root);
    CHECK(vs_test_count_entries(tmp) == 0, "tmp/ empty");
    CHECK(snapshotter_remove(s, &call, "broken", &err) == 0, "remove broken: %s", err.message);

    /* Reopen: same snapshots, mounts adopted. */
    snapshotter_close(s);
    rc = snapshotter_open(&cfg, &s, &err);
    REQUIRE(rc == 0, "reopen: %s", err.message);
    check_walk(s, NULL, 0, "base-c child-c top v1 v-np a-np");
    rc = snapshotter_stat(s, &call, "child-c", &si, &err);
    CHECK(rc == 0 && si.kind == SNAPSHOT_KIND_COMMITTED && !strcmp(si.parent, "base-c"),
          "child-c after reopen");
    snapshot_info_free(&si);
    rc = snapshotter_mounts(s, &call, "top", &ms, &err);
    CHECK(rc == 0, "mounts top after reopen: %s", err.message);
    if (rc == 0) {
        CHECK(vs_test_mount_all(&ms, t3) == 0, "mounting top after reopen");
        c = read_file(t3, "a/b/new");
        CHECK(c && !strcmp(c, "new\n"), "top after reopen");
        umount2(t3, MNT_DETACH);
        snapshot_mounts_free(&ms);
    }

    /* Reopen reconciles: files without rows go; a missing layer file is reported and its mounts fail clearly.
     */
    snapshotter_close(s);
    char junk[700];
    vs_test_write_file(layers, "999-0123456789abcdef.erofs", "junk");
    snprintf(junk, sizeof(junk), "%s/snapshots/999", root);
    mkdir(junk, 0700);
    vs_test_write_file(tmp, "commit-999-x", "junk");
    rc = snapshotter_open(&cfg, &s, &err);
    REQUIRE(rc == 0, "reopen with orphans: %s", err.message);
    CHECK(vs_test_count_entries(layers) == 4, "orphan layer file removed: %d", vs_test_count_entries(layers));
    CHECK(vs_test_count_entries(tmp) == 0, "tmp/ emptied on open");
    snprintf(junk, sizeof(junk), "%s/snapshots/999", root);
    CHECK(access(junk, F_OK) != 0, "orphan snapshot dir removed");
    rc = snapshotter_stat(s, &call, "base-c", &si, &err);
    CHECK(rc == 0, "stat base-c");
    char layer_file[700];
    snprintf(layer_file, sizeof(layer_file), "%s/layers", root);
    DIR *ld = opendir(layer_file);
    struct dirent *de;
    char base_layer[1100] = "";
    while (ld && (de = readdir(ld)))
        if (!strncmp(de->d_name, "1-", 2) && !strstr(de->d_name, ".dmverity"))
            snprintf(base_layer, sizeof(base_layer), "%s/%s", layer_file, de->d_name);
    if (ld)
        closedir(ld);
    snapshot_info_free(&si);
    rc = snapshotter_view(s, &call, "v-missing", "base-c", NULL, 0, &ms, &err);
    CHECK(rc == 0, "view of base-c: %s", err.message);
    snapshot_mounts_free(&ms);
    CHECK(snapshotter_remove(s, &call, "v-missing", &err) == 0, "remove v-missing");
    /* Nothing mounts the base layer once the views over it are gone. */
    CHECK(snapshotter_remove(s, &call, "top", &err) == 0, "remove top: %s", err.message);
    CHECK(snapshotter_remove(s, &call, "v1", &err) == 0, "remove v1: %s", err.message);
    char moved[1200];
    snprintf(moved, sizeof(moved), "%s.moved", base_layer);
    CHECK(base_layer[0] && rename(base_layer, moved) == 0, "hiding the base layer file %s", base_layer);
    rc = snapshotter_view(s, &call, "v-missing", "base-c", NULL, 0, &ms, &err);
    CHECK(rc < 0 && strstr(err.message, "base-c") && strstr(err.message, "missing"),
          "view over a missing layer file fails naming it: %d %s", rc, err.message);
    CHECK(snapshotter_stat(s, &call, "v-missing", &si, &err) == -ENOENT,
          "no snapshot left by the failed view");
    CHECK(rename(moved, base_layer) == 0, "restoring the base layer file");

    /* Remove in order (children first), then nothing is left. */
    const char *order[] = {"v-np", "a-np", "child-c", "base-c"};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        CHECK(snapshotter_remove(s, &call, order[i], &err) == 0, "remove %s: %s", order[i], err.message);
    CHECK(snapshotter_cleanup(s, &call, &err) == 0, "cleanup: %s", err.message);
    char sub[600];
    static const char *const dirs[] = {"snapshots", "layers", "mnt", "tmp"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(sub, sizeof(sub), "%s/%s", root, dirs[i]);
        CHECK(vs_test_count_entries(sub) == 0, "%s/ is empty: %d", dirs[i], vs_test_count_entries(sub));
    }
    char prefix[600];
    snprintf(prefix, sizeof(prefix), "%s/", root);
    CHECK(count_mounts_under(prefix) == 0, "no mounts under the root: %d", count_mounts_under(prefix));
    snapshotter_close(s);
}

/* Verity modes without device-mapper, and the loop-device fallback. */
static void modes(void)
{
    char root[512];
    snprintf(root, sizeof(root), "%s/root-modes", base_dir);
    struct snapshotter_config cfg = {.root = root, .verity = SNAPSHOTTER_VERITY_REQUIRE};
    layer_file_options_default(&cfg.layer);
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    REQUIRE(snapshotter_open(&cfg, &s, &err) == 0, "open: %s", err.message);
    struct snapshot_mounts ms;
    REQUIRE(snapshotter_prepare(s, &call, "b", "", NULL, 0, &ms, &err) == 0, "prepare: %s", err.message);
    snapshot_mounts_free(&ms);
    REQUIRE(snapshotter_commit(s, &call, "bc", "b", NULL, 0, &err) == 0, "commit: %s", err.message);
    bool dm = access("/dev/mapper/control", F_OK) == 0;
    int rc = snapshotter_prepare(s, &call, "c", "bc", NULL, 0, &ms, &err);
    if (!dm) {
        CHECK(rc == -ENODEV, "require without device-mapper: -ENODEV, got %d: %s", rc, err.message);
        CHECK(strstr(err.message, "device-mapper") && strstr(err.message, "auto"), "message: %s",
              err.message);
        struct snapshot_info si;
        CHECK(snapshotter_stat(s, &call, "c", &si, &err) == -ENOENT, "a failed prepare leaves no snapshot");
    } else {
        CHECK(rc == 0, "require with device-mapper: %s", err.message);
        snapshot_mounts_free(&ms);
        snapshotter_remove(s, &call, "c", &err);
    }
    snapshotter_close(s);

    cfg.verity = SNAPSHOTTER_VERITY_AUTO;
    cfg.host_mount_loop = true;
    REQUIRE(snapshotter_open(&cfg, &s, &err) == 0, "open auto: %s", err.message);
    rc = snapshotter_view(s, &call, "v", "bc", NULL, 0, &ms, &err);
    REQUIRE(rc == 0, "view with auto: %s", err.message);
    char src[1024] = "";
    REQUIRE(ms.count == 1, "one mount");
    bool found = mount_source(ms.items[0].source, src, sizeof(src));
    CHECK(found && (strncmp(src, "/dev/loop", 9) == 0 || strncmp(src, "/dev/mapper/", 12) == 0),
          "layer mounted through a loop device: %s", src);
    snapshot_mounts_free(&ms);
    CHECK(snapshotter_remove(s, &call, "v", &err) == 0, "remove v");
    if (!strncmp(src, "/dev/loop", 9)) {
        char sys[1100];
        snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file", src + 5);
        CHECK(access(sys, F_OK) != 0, "the loop device %s was released", src);
    }
    CHECK(snapshotter_remove(s, &call, "bc", &err) == 0, "remove bc");
    char prefix[600];
    snprintf(prefix, sizeof(prefix), "%s/", root);
    CHECK(count_mounts_under(prefix) == 0, "no mounts left");
    snapshotter_close(s);
}

int main(void)
{
    if (geteuid() != 0 || !vs_test_has_fs("overlay") || !vs_test_has_fs("erofs")) {
        fprintf(stderr, "SKIP: needs root, overlay and erofs\n");
        return 77;
    }
    snprintf(base_dir, sizeof(base_dir), "/tmp/vs-snap-test-XXXXXX");
    if (!mkdtemp(base_dir)) {
        perror("mkdtemp");
        return 1;
    }
    sequence();
    modes();
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s/", base_dir);
    if (count_mounts_under(prefix) == 0) {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", base_dir);
    } else {
        fprintf(stderr, "leaving %s: mounts remain under it\n", base_dir);
        failures++;
    }
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
