/* Golden tests of the Kata mount dialects (docs/formats.md, "Kata dialects"): every mount the kata-erofs and
 * kata-tardev dialects return is compared field by field with the documented format (types, sources, exact
 * option strings and their order, base64 decoding, tardev's layer file names), plus the rules around them:
 * extract keys get host mounts whatever the dialect, kata-tardev refuses a chain without tarfs layers with
 * FAILED_PRECONDITION
 * (-EBUSY) naming the blob path, snapshotter_layer_add_tarfs is idempotent, and removal leaves no tarfs file
 * behind. With a fake content store (blobs in a directory): a blob-path Prepare on the kata-tardev socket
 * builds the erofs and the tarfs form, a layer converted for the host socket gets its tarfs form from its
 * blob when a kata-tardev container snapshot needs it, and a layer whose blob is gone is refused. Mounts
 * nothing itself; the host-mount checks (extract keys) run only as root with overlay and erofs. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vs_digest.h"
#include "common/vs_error.h"
#include "snapshotter/snapshotter.h"
#include "tests/lib/vs_test.h"
#include "tests/lib/vs_test_mounts.h"

static const struct snapshot_call host = {
    .namespace_name = "t", .rpc = "t", .dialect = SNAPSHOT_DIALECT_HOST};
static const struct snapshot_call kerofs = {
    .namespace_name = "t", .rpc = "t", .dialect = SNAPSHOT_DIALECT_KATA_EROFS};
static const struct snapshot_call ktardev = {
    .namespace_name = "t", .rpc = "t", .dialect = SNAPSHOT_DIALECT_KATA_TARDEV};

/* Committed names as containerd's metadata layer hands them to a backend: <ns>/<seq>/sha256:<chainID>. */
#define CHAIN1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define CHAIN2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define KEY1 "t/2/" CHAIN1
#define KEY2 "t/4/" CHAIN2
/* hex sha256 of "sha256:111...1" and "sha256:222...2" (computed with Python's hashlib, independently of the
 * code) */
#define H1 "5d4cc820b37f3d1fd0c6e04ed50a56ead8d497ecfd3c25c749855ed9d852837d"
#define H2 "8298e88dce61b333d6c06d20df1b566301d66df06501e26e74683cb580503242"

static char root[200], work[160];

static void dump(const char *what, const struct snapshot_mounts *ms)
{
    fprintf(stderr, "  %s: %zu mount(s)\n", what, ms->count);
    for (size_t i = 0; i < ms->count; i++) {
        fprintf(stderr, "    [%zu] type=%s source=%s\n", i, ms->items[i].type, ms->items[i].source);
        for (size_t j = 0; j < ms->items[i].option_count; j++)
            fprintf(stderr, "        %s\n", ms->items[i].options[j]);
    }
}

/* Prepares with dialect call, writes files into the upper dir it returned (a bind source or upperdir=),
 * commits. */
static void make_layer(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       const char *parent, const char *name, const char *file, const char *text)
{
    struct snapshot_mounts ms;
    struct vs_error err = {0};
    int rc = snapshotter_prepare(s, call, key, parent, NULL, 0, &ms, &err);
    CHECK(rc == 0, "prepare %s: %s", key, err.message);
    if (rc < 0)
        return;
    const char *upper = NULL;
    for (size_t i = 0; i < ms.count; i++) {
        if (strcmp(ms.items[i].type, "bind") == 0)
            upper = ms.items[i].source;
        else if (vs_test_option_value(&ms.items[i], "upperdir="))
            upper = vs_test_option_value(&ms.items[i], "upperdir=");
    }
    CHECK(upper != NULL, "no upper dir in the mounts of %s", key);
    if (upper)
        vs_test_write_file(upper, file, text);
    rc = snapshotter_commit(s, call, name, key, NULL, 0, &err);
    CHECK(rc == 0, "commit %s: %s", name, err.message);
    snapshot_mounts_free(&ms);
}

static char *root_hash_label(struct snapshotter *s, const char *key)
{
    struct snapshot_info info;
    struct vs_error err = {0};
    char *out = NULL;
    if (snapshotter_stat(s, &host, key, &info, &err) == 0) {
        for (size_t i = 0; i < info.label_count; i++)
            if (strcmp(info.labels[i].key, SNAPSHOT_LABEL_ROOT_HASH) == 0)
                out = strdup(info.labels[i].value);
        snapshot_info_free(&info);
    }
    CHECK(out != NULL, "no root hash label on %s: %s", key, err.message);
    return out;
}

/* A kata-erofs layer mount: {erofs, <root>/layers/<file>, [ro, loop, X-containerd.dmverity=<file>.dmverity]}
 * and the sidecar holding containerd's keys (roothash, hashoffset) for the committed snapshot's root hash. */
static void check_erofs_layer(const struct snapshot_mount *m, const char *want_root)
{
    STREQ(m->type, "erofs");
    char prefix[320];
    snprintf(prefix, sizeof(prefix), "%s/layers/", root);
    CHECK(strncmp(m->source, prefix, strlen(prefix)) == 0, "source %s not under %s", m->source, prefix);
    CHECK(m->option_count == 3, "%zu options", m->option_count);
    if (m->option_count != 3)
        return;
    STREQ(m->options[0], "ro");
    STREQ(m->options[1], "loop");
    char want[600];
    snprintf(want, sizeof(want), "X-containerd.dmverity=%s.dmverity", m->source);
    STREQ(m->options[2], want);
    json_error_t je;
    json_t *j = json_load_file(want + strlen("X-containerd.dmverity="), 0, &je);
    CHECK(j != NULL, "sidecar: %s", je.text);
    if (!j)
        return;
    const char *rh = json_string_value(json_object_get(j, "roothash"));
    json_t *ho = json_object_get(j, "hashoffset");
    STREQ(rh, want_root ? want_root : "");
    CHECK(json_is_integer(ho) && json_integer_value(ho) > 0 && json_integer_value(ho) % 4096 == 0,
          "hashoffset not a positive multiple of 4096");
    struct stat st;
    CHECK(stat(m->source, &st) == 0 && json_is_integer(ho) && (json_int_t)st.st_size > json_integer_value(ho),
          "the layer file ends before its hash offset");
    json_decref(j);
}

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 with padding, strictly: returns NULL on anything else. */
static char *b64decode(const char *in)
{
    size_t n = strlen(in);
    if (n % 4)
        return NULL;
    char *out = malloc(n / 4 * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = in[i + k] == '=' && i + 4 == n && k >= 2 ? 0 : b64val(in[i + k]);
            if (v[k] < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (char)(x >> 16);
        if (in[i + 2] != '=')
            out[o++] = (char)(x >> 8 & 0xff);
        if (in[i + 3] != '=')
            out[o++] = (char)(x & 0xff);
    }
    out[o] = '\0';
    return out;
}

static void check_tardev_layer_opt(const char *opt, const char *h, const char *want_root)
{
    const char *p = "io.katacontainers.fs-opt.layer=";
    CHECK(strncmp(opt, p, strlen(p)) == 0, "option %s", opt);
    char *plain = b64decode(opt + strlen(p));
    CHECK(plain != NULL, "not standard padded base64: %s", opt);
    char want[600];
    snprintf(want, sizeof(want),
             "%s,tar,ro,io.katacontainers.fs-opt.block_device=file,io.katacontainers.fs-opt.is-layer,"
             "io.katacontainers.fs-opt.root-hash=%s",
             h, want_root);
    if (plain)
        STREQ(plain, want);
    free(plain);
}

/* The tarfs root hash of a tar, computed by the converter alone (no store), to compare with the mounts. */
static void tar_root(const char *tar, char out[65])
{
    struct layer_file_options o;
    layer_file_options_default(&o);
    o.tarfs.format = TARFS_FORMAT_TARFS;
    struct layer_file_result r;
    struct vs_error err = {0};
    int fd = open(tar, O_RDONLY);
    int rc = layer_file_build_fd(fd, NULL, &o, &r, &err);
    CHECK(rc == 0, "computing the tarfs root of %s: %s", tar, err.message);
    close(fd);
    out[0] = '\0';
    if (rc == 0)
        vs_hex_encode(r.layout.root_hash, r.layout.digest_size, out);
}

static void make_tar(const char *name, const char *file, const char *text)
{
    char dir[400], cmd[1200];
    snprintf(dir, sizeof(dir), "%s/%s.d", work, name);
    mkdir(dir, 0755);
    vs_test_write_file(dir, file, text);
    snprintf(cmd, sizeof(cmd), "tar --format=ustar --owner=0 --group=0 --mtime=@0 -cf '%s/%s' -C '%s' .",
             work, name, dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

static void test_all(bool host_mounts)
{
    struct snapshotter_config cfg = {.root = root, .verity = SNAPSHOTTER_VERITY_AUTO};
    layer_file_options_default(&cfg.layer);
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    int rc = snapshotter_open(&cfg, &s, &err);
    CHECK(rc == 0, "open: %s", err.message);
    if (rc < 0)
        return;
    struct snapshot_mounts ms;

    /* Layer 1 by an extract key through the kata-erofs socket: host mounts (a bind without parents). */
    make_layer(s, &kerofs, "t/1/extract-1 " CHAIN1, NULL, KEY1, "one.txt", "one\n");
    /* Layer 2 through a non-extract key (no host mounts needed for the golden checks). */
    make_layer(s, &kerofs, "t/3/layer2", KEY1, KEY2, "two.txt", "two\n");
    char *r1 = root_hash_label(s, KEY1), *r2 = root_hash_label(s, KEY2);

    /* kata-erofs, active container snapshot over two layers. */
    rc = snapshotter_prepare(s, &kerofs, "t/5/ctr", KEY2, NULL, 0, &ms, &err);
    CHECK(rc == 0, "prepare ctr: %s", err.message);
    if (rc == 0) {
        CHECK(ms.count == 3, "%zu mounts", ms.count);
        if (ms.count == 3) {
            check_erofs_layer(&ms.items[0], r2); /* topmost first, as containerd's ParentIDs */
            check_erofs_layer(&ms.items[1], r1);
            const struct snapshot_mount *o = &ms.items[2];
            STREQ(o->type, "format/mkdir/overlay");
            STREQ(o->source, "overlay");
            CHECK(o->option_count == 3, "%zu overlay options", o->option_count);
            if (o->option_count == 3) {
                CHECK(strncmp(o->options[0], "workdir=", 8) == 0 && strstr(o->options[0], "/snapshots/") &&
                          strcmp(o->options[0] + strlen(o->options[0]) - 5, "/work") == 0,
                      "%s", o->options[0]);
                CHECK(strncmp(o->options[1], "upperdir=", 9) == 0 &&
                          strcmp(o->options[1] + strlen(o->options[1]) - 3, "/fs") == 0,
                      "%s", o->options[1]);
                STREQ(o->options[2], "lowerdir={{ overlay 0 1 }}");
            }
        }
        struct snapshot_mounts again;
        rc = snapshotter_mounts(s, &kerofs, "t/5/ctr", &again, &err);
        CHECK(rc == 0 && again.count == ms.count, "Mounts on the kata socket: %s", err.message);
        for (size_t i = 0; rc == 0 && i < again.count && i < ms.count; i++) {
            STREQ(again.items[i].type, ms.items[i].type);
            STREQ(again.items[i].source, ms.items[i].source);
            CHECK(again.items[i].option_count == ms.items[i].option_count, "option count of mount %zu", i);
            for (size_t j = 0; j < again.items[i].option_count && j < ms.items[i].option_count; j++)
                STREQ(again.items[i].options[j], ms.items[i].options[j]);
        }
        snapshot_mounts_free(&again);
        if (failures)
            dump("kata-erofs ctr", &ms);
        snapshot_mounts_free(&ms);
    }
    /* Active over one layer: lowerdir={{ mount 0 }}. */
    rc = snapshotter_prepare(s, &kerofs, "t/6/ctr1", KEY1, NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 2, "prepare ctr1: %s (%zu mounts)", err.message, ms.count);
    if (rc == 0 && ms.count == 2) {
        check_erofs_layer(&ms.items[0], r1);
        STREQ(ms.items[1].type, "format/mkdir/overlay");
        CHECK(ms.items[1].option_count == 3, "%zu", ms.items[1].option_count);
        if (ms.items[1].option_count == 3)
            STREQ(ms.items[1].options[2], "lowerdir={{ mount 0 }}");
    }
    snapshot_mounts_free(&ms);
    /* Views: one layer is its erofs mount alone; two layers add an overlay without upper and work dirs. */
    rc = snapshotter_view(s, &kerofs, "t/7/view1", KEY1, NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 1, "view1: %s (%zu mounts)", err.message, ms.count);
    if (rc == 0 && ms.count == 1)
        check_erofs_layer(&ms.items[0], r1);
    snapshot_mounts_free(&ms);
    rc = snapshotter_view(s, &kerofs, "t/8/view2", KEY2, NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 3, "view2: %s (%zu mounts)", err.message, ms.count);
    if (rc == 0 && ms.count == 3) {
        STREQ(ms.items[2].type, "format/mkdir/overlay");
        CHECK(ms.items[2].option_count == 1, "%zu", ms.items[2].option_count);
        if (ms.items[2].option_count == 1)
            STREQ(ms.items[2].options[0], "lowerdir={{ overlay 0 1 }}");
    }
    snapshot_mounts_free(&ms);
    /* No parent: a bind of the snapshot's own dir, in every dialect. */
    rc = snapshotter_prepare(s, &kerofs, "t/9/scratch", "", NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 1 && strcmp(ms.items[0].type, "bind") == 0 &&
              ms.items[0].option_count == 2 && strcmp(ms.items[0].options[0], "rw") == 0 &&
              strcmp(ms.items[0].options[1], "rbind") == 0,
          "scratch: %s", err.message);
    snapshot_mounts_free(&ms);

    /* kata-tardev without tarfs layers: FAILED_PRECONDITION naming the blob path, nothing created. */
    rc = snapshotter_prepare(s, &ktardev, "t/10/ctr-t", KEY2, NULL, 0, &ms, &err);
    CHECK(rc == -EBUSY, "rc %d: %s", rc, err.message);
    CHECK(strstr(err.message, "cri.layer-digest") && strstr(err.message, "tarfs"), "message: %s",
          err.message);
    struct snapshot_info info;
    CHECK(snapshotter_stat(s, &host, "t/10/ctr-t", &info, &err) == -ENOENT, "the refused snapshot exists");

    /* The blob path's request: tarfs from the layer tars (idempotent), then the golden tardev mounts. */
    make_tar("l1.tar", "one.txt", "one\n");
    make_tar("l2.tar", "two.txt", "two\n");
    char t1[400], t2[400], tr1[65], tr2[65];
    snprintf(t1, sizeof(t1), "%s/l1.tar", work);
    snprintf(t2, sizeof(t2), "%s/l2.tar", work);
    tar_root(t1, tr1);
    tar_root(t2, tr2);
    for (int pass = 0; pass < 2; pass++) {
        int fd1 = open(t1, O_RDONLY), fd2 = open(t2, O_RDONLY);
        rc = snapshotter_layer_add_tarfs(s, KEY1, fd1, "sha256:blob1", NULL, &err);
        CHECK(rc == 0, "add tarfs 1 (pass %d): %s", pass, err.message);
        rc = snapshotter_layer_add_tarfs(s, KEY2, fd2, NULL, NULL, &err);
        CHECK(rc == 0, "add tarfs 2 (pass %d): %s", pass, err.message);
        close(fd1);
        close(fd2);
    }
    int fd = open(t1, O_RDONLY);
    CHECK(snapshotter_layer_add_tarfs(s, "t/5/ctr", fd, NULL, NULL, &err) == -EINVAL,
          "tarfs of an active snapshot");
    close(fd);
    char p1[400], p2[400];
    snprintf(p1, sizeof(p1), "%s/layers/" H1, root);
    snprintf(p2, sizeof(p2), "%s/layers/" H2, root);
    CHECK(access(p1, R_OK) == 0 && access(p2, R_OK) == 0, "tardev-named layer files are missing");

    rc = snapshotter_prepare(s, &ktardev, "t/10/ctr-t", KEY2, NULL, 0, &ms, &err);
    CHECK(rc == 0, "prepare ctr-t: %s", err.message);
    if (rc == 0) {
        CHECK(ms.count == 1, "%zu mounts", ms.count);
        const struct snapshot_mount *m = &ms.items[0];
        STREQ(m->type, "fuse3.kata-overlay");
        STREQ(m->source, "/");
        CHECK(m->option_count == 5, "%zu options", m->option_count);
        if (m->option_count == 5) {
            char want[400];
            snprintf(want, sizeof(want), "io.katacontainers.fs-opt.layer-src-prefix=%s/layers", root);
            STREQ(m->options[0], want);
            check_tardev_layer_opt(m->options[1], H2, tr2); /* topmost first */
            check_tardev_layer_opt(m->options[2], H1, tr1);
            STREQ(m->options[3], "io.katacontainers.fs-opt.overlay-rw");
            STREQ(m->options[4], "lowerdir=" H2 ":" H1);
        }
        if (failures)
            dump("kata-tardev ctr-t", &ms);
        snapshot_mounts_free(&ms);
    }
    rc = snapshotter_view(s, &ktardev, "t/11/view-t", KEY1, NULL, 0, &ms, &err);
    CHECK(rc == 0 && ms.count == 1 && ms.items[0].option_count == 3, "view-t: %s", err.message);
    if (rc == 0 && ms.count == 1 && ms.items[0].option_count == 3) {
        check_tardev_layer_opt(ms.items[0].options[1], H1, tr1);
        STREQ(ms.items[0].options[2], "lowerdir=" H1); /* a view: no overlay-rw */
    }
    snapshot_mounts_free(&ms);

    /* Extract keys get host mounts on every socket (and so does any key on the host socket). */
    if (host_mounts) {
        const struct snapshot_call *calls[] = {&kerofs, &ktardev};
        for (int i = 0; i < 2; i++) {
            char key[64];
            snprintf(key, sizeof(key), "t/%d/extract-%d sha256:33", 20 + i, i);
            rc = snapshotter_prepare(s, calls[i], key, KEY2, NULL, 0, &ms, &err);
            CHECK(rc == 0 && ms.count == 1 && strcmp(ms.items[0].type, "overlay") == 0 &&
                      vs_test_option_value(&ms.items[0], "upperdir=") &&
                      vs_test_option_value(&ms.items[0], "lowerdir="),
                  "extract key on %s: %s", snapshot_dialect_name(calls[i]->dialect), err.message);
            snapshot_mounts_free(&ms);
            CHECK(snapshotter_remove(s, calls[i], key, &err) == 0, "remove %s: %s", key, err.message);
        }
        /* The walking differ's views (rootfs.CreateDiff: "<parent>-parent-view-<unique>") are mounted on the
         * host too: one read-only overlay over the host's layer mounts, as on the host socket. A container's
         * active snapshot keeps its Kata mounts even when its name looks like one. */
        for (int i = 0; i < 2; i++) {
            char key[160];
            snprintf(key, sizeof(key), "t/%d/%s-parent-view-1700000000-AbC", 22 + i, CHAIN2);
            for (int call_mounts = 0; call_mounts < 2; call_mounts++) {
                rc = call_mounts ? snapshotter_mounts(s, calls[i], key, &ms, &err)
                                 : snapshotter_view(s, calls[i], key, KEY2, NULL, 0, &ms, &err);
                const char *lower =
                    rc == 0 && ms.count == 1 ? vs_test_option_value(&ms.items[0], "lowerdir=") : NULL;
                CHECK(rc == 0 && ms.count == 1 && strcmp(ms.items[0].type, "overlay") == 0 && lower &&
                          !strstr(lower, "{{") && strchr(lower, ':'),
                      "differ view on %s (%s): %s", snapshot_dialect_name(calls[i]->dialect),
                      call_mounts ? "Mounts" : "View", err.message);
                if (rc == 0 && failures)
                    dump("differ view", &ms);
                snapshot_mounts_free(&ms);
            }
            CHECK(snapshotter_remove(s, calls[i], key, &err) == 0, "remove %s: %s", key, err.message);
        }
        rc = snapshotter_prepare(s, &kerofs, "t/24/app-view-1", KEY2, NULL, 0, &ms, &err);
        CHECK(rc == 0 && ms.count == 3 && strcmp(ms.items[2].type, "format/mkdir/overlay") == 0,
              "an active snapshot named like a differ view lost its kata-erofs mounts: %s", err.message);
        snapshot_mounts_free(&ms);
        CHECK(snapshotter_remove(s, &kerofs, "t/24/app-view-1", &err) == 0, "remove app-view-1: %s",
              err.message);
        rc = snapshotter_mounts(s, &host, "t/5/ctr", &ms, &err);
        CHECK(rc == 0 && ms.count == 1 && strcmp(ms.items[0].type, "overlay") == 0, "host Mounts of ctr: %s",
              err.message);
        snapshot_mounts_free(&ms);
    }

    /* Removal: the rows go with the snapshot, cleanup removes the tarfs files (no row references them). */
    const char *order[] = {"t/5/ctr",    "t/6/ctr1",    "t/7/view1", "t/8/view2", "t/9/scratch",
                           "t/10/ctr-t", "t/11/view-t", KEY2,        KEY1};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        CHECK(snapshotter_remove(s, &host, order[i], &err) == 0, "remove %s: %s", order[i], err.message);
    CHECK(snapshotter_cleanup(s, &host, &err) == 0, "cleanup: %s", err.message);
    CHECK(access(p1, F_OK) < 0 && access(p2, F_OK) < 0, "tarfs files left after remove + cleanup");
    snapshotter_close(s);
    /* Reopen (migrations are idempotent). */
    rc = snapshotter_open(&cfg, &s, &err);
    CHECK(rc == 0, "reopen: %s", err.message);
    if (rc == 0)
        snapshotter_close(s);
    free(r1);
    free(r2);
}

/* ---- the blob path on the kata-tardev socket, over a fake content store: <work>/content/<ns>/<hex> ---- */

static char content_dir[300];
static int content_opens[8];
static const char *content_digests[8];

static int fake_info(void *ctx, const char *ns, const char *digest, int64_t *size, struct vs_error *err)
{
    (void)ctx;
    char p[700];
    snprintf(p, sizeof(p), "%s/%s/%s", content_dir, ns, digest + 7);
    struct stat st;
    if (stat(p, &st) < 0)
        return vs_fail(err, -ENOENT, "blob %s not found", digest);
    *size = st.st_size;
    return 0;
}

static int fake_open(void *ctx, const char *ns, const char *digest, int64_t size, int *fd, void **stream,
                     struct vs_error *err)
{
    (void)ctx;
    (void)size;
    for (int i = 0; i < 8; i++)
        if (content_digests[i] && strcmp(content_digests[i], digest) == 0)
            __atomic_fetch_add(&content_opens[i], 1, __ATOMIC_SEQ_CST);
    char p[700];
    snprintf(p, sizeof(p), "%s/%s/%s", content_dir, ns, digest + 7);
    *fd = open(p, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return vs_fail(err, -ENOENT, "blob %s not found", digest);
    *stream = (void *)(intptr_t)*fd;
    return 0;
}

static int fake_close(void *ctx, void *stream, bool drain, struct vs_error *err)
{
    (void)ctx;
    (void)drain;
    (void)err;
    close((int)(intptr_t)stream);
    return 0;
}

/* sha256:<hex> of a file, or of "a b" when b is given (a chain ID step). */
static void digest_of_file(const char *path, char out[80])
{
    FILE *f = fopen(path, "rb");
    static char buf[1 << 20];
    size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
    if (f)
        fclose(f);
    uint8_t h[VS_SHA256_LEN];
    vs_sha256(buf, n, h);
    memcpy(out, "sha256:", 7);
    vs_hex_encode(h, VS_SHA256_LEN, out + 7);
}

static void chain_step(const char *parent, const char *diff, char out[80])
{
    char buf[200];
    int n = snprintf(buf, sizeof(buf), "%s %s", parent, diff);
    uint8_t h[VS_SHA256_LEN];
    vs_sha256(buf, (size_t)n, h);
    memcpy(out, "sha256:", 7);
    vs_hex_encode(h, VS_SHA256_LEN, out + 7);
}

/* The tardev file of chain ID chain equals the converter's tarfs output of tar. */
static void check_tarfs_file(const char *broot, const char *chain, const char *tar)
{
    char h[65], path[600], want[600];
    snapshot_tardev_layer_name(chain, h);
    snprintf(path, sizeof(path), "%s/layers/%s", broot, h);
    snprintf(want, sizeof(want), "%s.tarfs", tar);
    struct layer_file_options o;
    layer_file_options_default(&o);
    o.tarfs.format = TARFS_FORMAT_TARFS;
    o.sidecar = false;
    struct layer_file_result r;
    struct vs_error err = {0};
    int fd = open(tar, O_RDONLY);
    CHECK(layer_file_build_fd(fd, want, &o, &r, &err) == 0, "converting %s: %s", tar, err.message);
    close(fd);
    char cmd[1300];
    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", path, want);
    CHECK(system(cmd) == 0, "the tarfs file %s differs from the converter's output of %s", path, tar);
}

static void test_blob_tardev(void)
{
    char broot[300];
    snprintf(broot, sizeof(broot), "%s/root-blob", work);
    snprintf(content_dir, sizeof(content_dir), "%s/content", work);
    char nsdir[400];
    snprintf(nsdir, sizeof(nsdir), "%s/t", content_dir);
    mkdir(content_dir, 0755);
    mkdir(nsdir, 0755);
    const char *names[3] = {"b1.tar", "b2.tar", "b3.tar"};
    char tars[3][400], d[3][80], chain[3][80], keys[3][256], roots[3][65];
    make_tar(names[0], "b1.txt", "blob one\n");
    make_tar(names[1], "b2.txt", "blob two\n");
    make_tar(names[2], "b3.txt", "blob three\n");
    for (int i = 0; i < 3; i++) {
        snprintf(tars[i], sizeof(tars[i]), "%s/%s", work, names[i]);
        digest_of_file(tars[i], d[i]); /* plain tar: the blob digest is the diff ID */
        if (i == 0)
            snprintf(chain[0], sizeof(chain[0]), "%s", d[0]);
        else
            chain_step(chain[i - 1], d[i], chain[i]);
        snprintf(keys[i], sizeof(keys[i]), "t/%d/%s", 2 * i + 1, chain[i]);
        tar_root(tars[i], roots[i]);
        char cmd[2000];
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s/%s'", tars[i], nsdir, d[i] + 7);
        CHECK(system(cmd) == 0, "%s", cmd);
        content_digests[i] = d[i];
    }
    struct snapshotter_content content = {.info = fake_info, .open = fake_open, .close = fake_close};
    struct snapshotter_config cfg = {.root = broot, .verity = SNAPSHOTTER_VERITY_AUTO, .content = &content};
    layer_file_options_default(&cfg.layer);
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    int rc = snapshotter_open(&cfg, &s, &err);
    CHECK(rc == 0, "open: %s", err.message);
    if (rc < 0)
        return;
    struct snapshot_mounts ms = {0};
    char pkey[3][260];
    for (int i = 0; i < 3; i++)
        snprintf(pkey[i], sizeof(pkey[i]), "t/%d/extract-%d %s", 2 * i + 1, i, chain[i]);

    /* 1. Layer 1 by the blob path on the kata-tardev socket: erofs and tarfs from one read of the blob,
     * ALREADY_EXISTS. */
    struct snapshot_label l1[2] = {{SNAPSHOT_LABEL_REF, chain[0]}, {SNAPSHOT_LABEL_LAYER_DIGEST, d[0]}};
    rc = snapshotter_prepare(s, &ktardev, pkey[0], "", l1, 2, &ms, &err);
    CHECK(rc == -EEXIST, "blob-path prepare of layer 1 on kata-tardev: %d %s", rc, err.message);
    check_tarfs_file(broot, chain[0], tars[0]);
    CHECK(content_opens[0] == 1, "layer 1's blob read %d times, want 1 (erofs and tarfs at once)",
          content_opens[0]);

    /* 2. Layers 2 and 3 by the blob path on the host socket: erofs only. */
    for (int i = 1; i < 3; i++) {
        struct snapshot_label l[2] = {{SNAPSHOT_LABEL_REF, chain[i]}, {SNAPSHOT_LABEL_LAYER_DIGEST, d[i]}};
        rc = snapshotter_prepare(s, &host, pkey[i], keys[i - 1], l, 2, &ms, &err);
        CHECK(rc == -EEXIST, "blob-path prepare of layer %d on host: %d %s", i + 1, rc, err.message);
        char h[65], path[600];
        snapshot_tardev_layer_name(chain[i], h);
        snprintf(path, sizeof(path), "%s/layers/%s", broot, h);
        CHECK(access(path, F_OK) < 0, "layer %d has a tarfs file after a host-socket prepare", i + 1);
    }

    /* 3. A kata-tardev container snapshot over layer 2: its tarfs form is built from the blob, then the
     * mounts. */
    rc = snapshotter_prepare(s, &ktardev, "t/10/ctr", keys[1], NULL, 0, &ms, &err);
    CHECK(rc == 0, "kata-tardev container snapshot over layer 2: %s", err.message);
    if (rc == 0) {
        char h1[65], h2[65], lower[200];
        snapshot_tardev_layer_name(chain[0], h1);
        snapshot_tardev_layer_name(chain[1], h2);
        snprintf(lower, sizeof(lower), "lowerdir=%s:%s", h2, h1);
        CHECK(ms.count == 1 && ms.items[0].option_count == 5, "mounts %zu", ms.count);
        if (ms.count == 1 && ms.items[0].option_count == 5) {
            STREQ(ms.items[0].type, "fuse3.kata-overlay");
            check_tardev_layer_opt(ms.items[0].options[1], h2, roots[1]);
            check_tardev_layer_opt(ms.items[0].options[2], h1, roots[0]);
            STREQ(ms.items[0].options[4], lower);
        }
        check_tarfs_file(broot, chain[1], tars[1]);
    }
    snapshot_mounts_free(&ms);
    /* Layer 2 came by the host socket (erofs only): its tarfs form took a second read. */
    CHECK(content_opens[1] == 2, "layer 2's blob read %d times, want 2", content_opens[1]);
    /* Mounts of it again: nothing rebuilt. */
    rc = snapshotter_mounts(s, &ktardev, "t/10/ctr", &ms, &err);
    CHECK(rc == 0 && content_opens[0] == 1 && content_opens[1] == 2, "Mounts again: %d %s", rc, err.message);
    snapshot_mounts_free(&ms);

    /* 4. Layer 3's blob is gone: a kata-tardev container snapshot over it is refused (FAILED_PRECONDITION).
     */
    char gone[500];
    snprintf(gone, sizeof(gone), "%s/%s", nsdir, d[2] + 7);
    unlink(gone);
    rc = snapshotter_prepare(s, &ktardev, "t/11/ctr3", keys[2], NULL, 0, &ms, &err);
    CHECK(rc == -EBUSY && strstr(err.message, "cri.layer-digest"), "blob gone: %d %s", rc, err.message);
    snapshot_mounts_free(&ms);

    /* 5. CRI order on the kata-tardev socket: Prepare with the labels before the blob is fetched (the
     * directory path), then the blob arrives and Commit converts it: both forms from one read. */
    char tar4[400], d4[80], key4[300], name4[300];
    make_tar("b4.tar", "b4.txt", "blob four\n");
    snprintf(tar4, sizeof(tar4), "%s/b4.tar", work);
    digest_of_file(tar4, d4);
    snprintf(key4, sizeof(key4), "t/30/extract-4 %s", d4);
    snprintf(name4, sizeof(name4), "t/31/%s", d4);
    content_digests[3] = d4;
    struct snapshot_label l4[2] = {{SNAPSHOT_LABEL_REF, d4}, {SNAPSHOT_LABEL_LAYER_DIGEST, d4}};
    rc = snapshotter_prepare(s, &ktardev, key4, "", l4, 2, &ms, &err);
    CHECK(rc == 0, "prepare before the blob is fetched: %d %s", rc, err.message);
    snapshot_mounts_free(&ms);
    char cmd4[1200];
    snprintf(cmd4, sizeof(cmd4), "cp '%s' '%s/%s'", tar4, nsdir, d4 + 7);
    CHECK(system(cmd4) == 0, "%s", cmd4);
    rc = snapshotter_commit(s, &ktardev, name4, key4, l4, 1, &err);
    CHECK(rc == 0, "commit from the blob on kata-tardev: %s", err.message);
    if (rc == 0)
        check_tarfs_file(broot, d4, tar4);
    CHECK(content_opens[3] == 1, "layer 4's blob read %d times at Commit, want 1 (erofs and tarfs at once)",
          content_opens[3]);

    const char *order[] = {"t/10/ctr", name4, keys[2], keys[1], keys[0]};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        CHECK(snapshotter_remove(s, &host, order[i], &err) == 0, "remove %s: %s", order[i], err.message);
    CHECK(snapshotter_cleanup(s, &host, &err) == 0, "cleanup: %s", err.message);
    snapshotter_close(s);
}

static void test_names(void)
{
    char h[65];
    snapshot_tardev_layer_name(KEY1, h);
    STREQ(h, H1);
    snapshot_tardev_layer_name(CHAIN2, h);
    STREQ(h, H2);
    enum snapshot_dialect d;
    CHECK(snapshot_dialect_parse("kata-erofs", &d) == 0 && d == SNAPSHOT_DIALECT_KATA_EROFS, "kata-erofs");
    CHECK(snapshot_dialect_parse("kata-tardev", &d) == 0 && d == SNAPSHOT_DIALECT_KATA_TARDEV, "kata-tardev");
    CHECK(snapshot_dialect_parse("host", &d) == 0 && d == SNAPSHOT_DIALECT_HOST, "host");
    CHECK(snapshot_dialect_parse("kata", &d) == -EINVAL, "kata");
}

int main(void)
{
    snprintf(work, sizeof(work), "/tmp/vs-dialect-test-XXXXXX");
    if (!mkdtemp(work)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(root, sizeof(root), "%s/root", work);
    bool host_mounts = geteuid() == 0 && vs_test_has_fs("overlay") && vs_test_has_fs("erofs");
    if (!host_mounts)
        fprintf(stderr,
                "note: not root or no overlay/erofs: the extract-key host mount checks are skipped\n");
    test_names();
    test_all(host_mounts);
    test_blob_tardev();
    if (failures) {
        fprintf(stderr, "%d failure(s); state left in %s\n", failures, work);
        return 1;
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", work);
    printf("ok\n");
    return 0;
}
