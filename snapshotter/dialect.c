/* The Kata mount dialects: what the snapshot model returns for container root filesystems on a socket whose
 * [[listen]] table says dialect = "kata-erofs" or "kata-tardev" (the host dialect lives in snapshot_model.c
 * and host_mount.c). Neither mounts anything on the host: the layers reach the VM as block devices and the
 * guest sets up dm-verity itself. Formats and their sources: docs/formats.md, "Kata dialects".
 *
 * Also here: the tarfs variant of a committed layer (snapshotter_layer_add_tarfs), which the kata-tardev
 * dialect needs and only the blob path can produce (tarfs keeps the original tar). */
#include "snapshotter/dialect.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vs_digest.h"

int snapshot_dialect_parse(const char *text, enum snapshot_dialect *out)
{
    if (!text || !text[0] || strcmp(text, "host") == 0)
        *out = SNAPSHOT_DIALECT_HOST;
    else if (strcmp(text, "kata-erofs") == 0)
        *out = SNAPSHOT_DIALECT_KATA_EROFS;
    else if (strcmp(text, "kata-tardev") == 0)
        *out = SNAPSHOT_DIALECT_KATA_TARDEV;
    else
        return -EINVAL;
    return 0;
}

const char *snapshot_dialect_name(enum snapshot_dialect dialect)
{
    switch (dialect) {
    case SNAPSHOT_DIALECT_HOST:
        return "host";
    case SNAPSHOT_DIALECT_KATA_EROFS:
        return "kata-erofs";
    case SNAPSHOT_DIALECT_KATA_TARDEV:
        return "kata-tardev";
    }
    return "unknown";
}

bool dialect_is_extract_key(const char *key)
{
    if (!key)
        return false;
    for (const char *p = key;;) {
        if (strncmp(p, "extract-", 8) == 0)
            return true;
        p = strchr(p, '/');
        if (!p)
            return false;
        p++;
    }
}

bool dialect_is_differ_view_key(const char *key)
{
    if (!key)
        return false;
    const char *last = strrchr(key, '/');
    return strstr(last ? last + 1 : key, "-view-") != NULL;
}

bool dialect_shapes(enum snapshot_dialect d, enum snapshot_kind kind, const char *key)
{
    if (d == SNAPSHOT_DIALECT_HOST || dialect_is_extract_key(key))
        return false;
    /* Only views: a container's own (active) snapshot always gets the Kata mounts, whatever its name. */
    return kind == SNAPSHOT_KIND_ACTIVE || !dialect_is_differ_view_key(key);
}

void snapshot_tardev_layer_name(const char *key, char out[65])
{
    const char *last = key ? strrchr(key, '/') : NULL;
    const char *name = last ? last + 1 : (key ? key : "");
    uint8_t h[VS_SHA256_LEN];
    vs_sha256(name, strlen(name), h);
    vs_hex_encode(h, VS_SHA256_LEN, out);
}

char *dialect_base64(const void *data, size_t len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *in = data;
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = tbl[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}

/* ---- building mount lists ---- */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *out = NULL;
    if (vasprintf(&out, f, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

/* Appends one mount taking ownership of the n option strings (NULL ones mean out of memory). */
static int push_mount(struct snapshot_mounts *out, const char *type, char *source, char **opts, size_t n,
                      struct vs_error *err)
{
    bool ok = source != NULL;
    for (size_t i = 0; i < n; i++)
        ok = ok && opts[i];
    struct snapshot_mount *grown = ok ? realloc(out->items, (out->count + 1) * sizeof(*grown)) : NULL;
    if (!grown) {
        free(source);
        for (size_t i = 0; i < n; i++)
            free(opts[i]);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    out->items = grown;
    struct snapshot_mount *m = &out->items[out->count];
    memset(m, 0, sizeof(*m));
    m->type = strdup(type);
    m->source = source;
    m->target = strdup("");
    m->options = calloc(n ? n : 1, sizeof(char *));
    if (!m->type || !m->target || !m->options) {
        free(m->type);
        free(m->target);
        free(m->options);
        free(source);
        for (size_t i = 0; i < n; i++)
            free(opts[i]);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    memcpy(m->options, opts, n * sizeof(char *));
    m->option_count = n;
    out->count++;
    return 0;
}

static void snap_path(const struct snapshotter *s, int64_t id, const char *sub, char *out, size_t cap)
{
    snprintf(out, cap, "%s/snapshots/%lld/%s", s->root, (long long)id, sub);
}

/* A snapshot without parents: a bind of its own directory, as containerd's overlay and EROFS snapshotters
 * (and tardev-snapshotter) return it. */
static int bind_own_dir(struct snapshotter *s, int64_t id, int kind, struct snapshot_mounts *out,
                        struct vs_error *err)
{
    char path[PATH_MAX];
    snap_path(s, id, "fs", path, sizeof(path));
    char *opts[2] = {strdup(kind == SNAPSHOT_KIND_VIEW ? "ro" : "rw"), strdup("rbind")};
    return push_mount(out, "bind", strdup(path), opts, 2, err);
}

/* The ids of the parent chain, topmost first. */
static int chain_ids(struct snapshotter *s, int64_t parent_id, int64_t **ids, size_t *n, struct vs_error *err)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    sqlite3_stmt *st = NULL;
    int rc = store_prepare(s, &st, "SELECT parent_id FROM snapshots WHERE id = ?", err);
    for (int64_t id = parent_id; rc == 0 && id;) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            int64_t *grown = realloc(*ids, cap * sizeof(*grown));
            if (!grown) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
            *ids = grown;
        }
        (*ids)[(*n)++] = id;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        int step = sqlite3_step(st);
        if (step != SQLITE_ROW)
            rc = store_fail(s, err, "reading the parent chain");
        else
            id = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 0);
        if (*n > 10000)
            rc = vs_fail(err, -ELOOP, "the parent chain has a cycle");
    }
    sqlite3_finalize(st);
    if (rc < 0) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}

/* ---- kata-erofs: containerd's EROFS snapshotter (2.2+, non-block mode) ---- */

/* {type: erofs, source: <layer file>, options: [ro, loop, X-containerd.dmverity=<layer file>.dmverity]}; the
 * dm-verity option only when the sidecar exists (containerd's dmverity_mode "auto"; runtime-rs reads the
 * path). */
static int erofs_layer_mount(struct snapshotter *s, const struct layer_row *l, struct snapshot_mounts *out,
                             struct vs_error *err)
{
    char path[PATH_MAX], side[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/%s", s->root, l->path);
    snprintf(side, sizeof(side), "%s.dmverity", path);
    struct stat st;
    if (stat(path, &st) < 0)
        return vs_fail(err, -errno, "layer file '%s' of snapshot '%s': %s", path, l->key, strerror(errno));
    char *opts[3] = {strdup("ro"), strdup("loop"), NULL};
    size_t n = 2;
    if (l->verity) {
        if (stat(side, &st) < 0)
            return vs_fail(
                err, -errno,
                "layer '%s' of snapshot '%s': its dm-verity sidecar '%s' is missing (%s): kata-erofs "
                "mounts pass it to the Kata runtime",
                path, l->key, side, strerror(errno));
        opts[n++] = fmt("X-containerd.dmverity=%s", side);
    }
    return push_mount(out, "erofs", strdup(path), opts, n, err);
}

static int kata_erofs_mounts(struct snapshotter *s, int64_t id, int kind, const int64_t *ids, size_t n,
                             struct snapshot_mounts *out, struct vs_error *err)
{
    bool active = kind == SNAPSHOT_KIND_ACTIVE;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct layer_row l;
        rc = store_layer_by_snapshot(s, ids[i], &l, err);
        if (rc == 0) {
            rc = erofs_layer_mount(s, &l, out, err);
            layer_row_free(&l);
        }
        if (!active && n == 1)
            return rc; /* a view of one layer: that layer's erofs mount alone */
    }
    if (rc < 0)
        return rc;
    char *opts[3] = {0};
    size_t k = 0;
    if (active) {
        char path[PATH_MAX];
        snap_path(s, id, "work", path, sizeof(path));
        opts[k++] = fmt("workdir=%s", path);
        snap_path(s, id, "fs", path, sizeof(path));
        opts[k++] = fmt("upperdir=%s", path);
    }
    opts[k++] = n == 1 ? strdup("lowerdir={{ mount 0 }}") : fmt("lowerdir={{ overlay 0 %zu }}", n - 1);
    return push_mount(out, "format/mkdir/overlay", strdup("overlay"), opts, k, err);
}

/* ---- kata-tardev: tardev-snapshotter's fuse3.kata-overlay ---- */

static int tardev_layer_option(struct snapshotter *s, int64_t id, char **opt, char **name,
                               struct vs_error *err)
{
    *opt = *name = NULL;
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "SELECT l.path, l.root_hash, s.key FROM snapshots s LEFT JOIN layers l "
                           "ON l.snapshot_id = s.id AND l.format = 'tarfs' WHERE s.id = ?",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    int step = sqlite3_step(st);
    if (step != SQLITE_ROW) {
        rc = store_fail(s, err, "reading the tarfs layer of snapshot #%lld", (long long)id);
    } else if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
        const unsigned char *key = sqlite3_column_text(st, 2);
        rc = vs_fail(
            err, -EBUSY,
            "layer '%s' has no tarfs file: the kata-tardev dialect needs every layer in tarfs format, which "
            "only the blob path builds (tarfs keeps the original tar, a layer unpacked into a directory "
            "cannot be turned back into it); pull with containerd's CRI and "
            "disable_snapshot_annotations = false so that Prepare carries "
            "containerd.io/snapshot/cri.layer-digest (see docs/kata.md)",
            key ? (const char *)key : "?");
    } else {
        const char *path = (const char *)sqlite3_column_text(st, 0);
        const unsigned char *root = sqlite3_column_text(st, 1);
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        *name = strdup(base);
        char *plain =
            fmt("%s,tar,ro,io.katacontainers.fs-opt.block_device=file,io.katacontainers.fs-opt.is-layer,"
                "io.katacontainers.fs-opt.root-hash=%s",
                base, root ? (const char *)root : "");
        char *b64 = plain ? dialect_base64(plain, strlen(plain)) : NULL;
        *opt = b64 ? fmt(DIALECT_TARDEV_LAYER_OPT "%s", b64) : NULL;
        free(plain);
        free(b64);
        if (!*opt || !*name)
            rc = vs_fail(err, -ENOMEM, "out of memory");
    }
    sqlite3_finalize(st);
    if (rc < 0) {
        free(*opt);
        free(*name);
        *opt = *name = NULL;
    }
    return rc;
}

static int kata_tardev_mounts(struct snapshotter *s, int kind, const int64_t *ids, size_t n,
                              struct snapshot_mounts *out, struct vs_error *err)
{
    bool active = kind == SNAPSHOT_KIND_ACTIVE;
    size_t cap = n + 3, k = 0;
    char **opts = calloc(cap, sizeof(char *));
    char **names = calloc(n, sizeof(char *));
    int rc = opts && names ? 0 : vs_fail(err, -ENOMEM, "out of memory");
    if (rc == 0) {
        char prefix[PATH_MAX];
        if (s->tardev_prefix && s->tardev_prefix[0])
            snprintf(prefix, sizeof(prefix), "%s", s->tardev_prefix);
        else
            snprintf(prefix, sizeof(prefix), "%s/layers", s->root);
        opts[k++] = fmt(DIALECT_TARDEV_PREFIX_OPT "%s", prefix);
    }
    size_t lower_len = strlen("lowerdir=") + 1;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = tardev_layer_option(s, ids[i], &opts[k], &names[i], err);
        if (rc == 0) {
            k++;
            lower_len += strlen(names[i]) + 1;
        }
    }
    if (rc == 0 && active)
        opts[k++] = strdup(DIALECT_TARDEV_OVERLAY_RW);
    char *lower = rc == 0 ? malloc(lower_len) : NULL;
    if (rc == 0 && lower) {
        size_t off = (size_t)sprintf(lower, "lowerdir=");
        for (size_t i = 0; i < n; i++)
            off += (size_t)sprintf(lower + off, "%s%s", i ? ":" : "", names[i]);
    }
    if (rc == 0)
        opts[k++] = lower;
    if (rc == 0)
        rc = push_mount(out, DIALECT_TARDEV_TYPE, strdup("/"), opts, k, err);
    else
        for (size_t i = 0; i < k; i++)
            free(opts[i]);
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    free(opts);
    return rc;
}

int dialect_build_mounts(struct snapshotter *s, enum snapshot_dialect d, int64_t id, int kind,
                         int64_t parent_id, const char *key, struct snapshot_mounts *out,
                         struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = chain_ids(s, parent_id, &ids, &n, err);
    if (rc == 0 && n == 0)
        rc = bind_own_dir(s, id, kind, out, err);
    else if (rc == 0 && d == SNAPSHOT_DIALECT_KATA_EROFS)
        rc = kata_erofs_mounts(s, id, kind, ids, n, out, err);
    else if (rc == 0 && d == SNAPSHOT_DIALECT_KATA_TARDEV)
        rc = kata_tardev_mounts(s, kind, ids, n, out, err);
    else if (rc == 0)
        rc = vs_fail(err, -EINVAL, "internal: dialect %d has no mount builder", (int)d);
    free(ids);
    if (rc < 0) {
        snapshot_mounts_free(out);
        vs_error_prefix(err, "snapshot '%s' (%s dialect)", key, snapshot_dialect_name(d));
    }
    return rc;
}

/* ---- the tarfs variant of a committed layer ---- */

static int tarfs_row_state(struct snapshotter *s, const char *key, const char *rel, int64_t *id, bool *have,
                           struct vs_error *err)
{
    *have = false;
    sqlite3_stmt *st;
    int rc = store_prepare(
        s, &st,
        "SELECT s.id, s.kind, (SELECT 1 FROM layers WHERE snapshot_id = s.id AND format = 'tarfs'), "
        "(SELECT k.key FROM layers l JOIN snapshots k ON k.id = l.snapshot_id WHERE l.path = ?) "
        "FROM snapshots s WHERE s.key = ?",
        err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, rel, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = vs_fail(err, -ENOENT, "snapshot '%s' does not exist", key);
    } else if (step != SQLITE_ROW) {
        rc = store_fail(s, err, "snapshot '%s': reading it", key);
    } else {
        *id = sqlite3_column_int64(st, 0);
        *have = sqlite3_column_type(st, 2) != SQLITE_NULL;
        const unsigned char *owner = sqlite3_column_text(st, 3);
        if (sqlite3_column_int(st, 1) != SNAPSHOT_KIND_COMMITTED)
            rc = vs_fail(err, -EINVAL,
                         "snapshot '%s' is not committed: only a committed layer gets a tarfs file", key);
        else if (!*have && owner)
            rc = vs_fail(err, -EEXIST,
                         "snapshot '%s': %s already belongs to snapshot '%s' (the same chain ID)", key, rel,
                         (const char *)owner);
    }
    sqlite3_finalize(st);
    return rc;
}

/* layers/<h>: tardev's file name for the chain ID the key ends with. */
static void tarfs_rel_path(const char *key, char rel[80])
{
    char h[65];
    snapshot_tardev_layer_name(key, h);
    snprintf(rel, 80, "layers/%s", h);
}

int snapshotter_layer_install_tarfs(struct snapshotter *s, const char *key, const char *built_path,
                                    const struct layer_file_result *res, const char *source_digest,
                                    const char *expected_diff_id, struct vs_error *err)
{
    char rel[80], final[PATH_MAX + 96], diff[80], root_hex[2 * VERITY_MAX_DIGEST + 1] = "";
    tarfs_rel_path(key, rel);
    snprintf(final, sizeof(final), "%s/%s", s->root, rel);
    vs_digest_format(res->image.diff_id, diff);
    int rc = 0;
    if (expected_diff_id && strcmp(expected_diff_id, diff) != 0)
        rc =
            vs_fail(err, -EBADMSG, "tarfs conversion of snapshot '%s': the blob's diff ID is %s, expected %s",
                    key, diff, expected_diff_id);
    if (rc == 0)
        vs_hex_encode(res->layout.root_hash, res->layout.digest_size, root_hex);

    pthread_mutex_lock(&s->lock);
    bool in_tx = false, renamed = false, have = false;
    if (rc == 0)
        rc = store_exec(s, "BEGIN IMMEDIATE", "starting a transaction", err);
    in_tx = rc == 0;
    int64_t id = 0;
    if (rc == 0 && (rc = tarfs_row_state(s, key, rel, &id, &have, err)) < 0)
        vs_error_prefix(err, "tarfs conversion");
    if (rc == 0 && have)
        rc = 1; /* built meanwhile by another call: nothing to do */
    if (rc == 0 && (rc = snap_place_layer_file(s, built_path, final, false, &renamed, err)) < 0)
        vs_error_prefix(err, "tarfs conversion of snapshot '%s'", key);
    if (rc == 0) {
        struct layer_record rec = {
            .snapshot_id = id,
            .path = rel,
            .format = "tarfs",
            .source = "blob",
            .source_digest = source_digest && source_digest[0] ? source_digest : diff,
            .result = res,
            .root_hex = root_hex,
        };
        rc = store_layer_insert(s, &rec, err);
        if (rc < 0)
            vs_error_prefix(err, "tarfs conversion of snapshot '%s'", key);
    }
    if (rc == 0)
        rc = store_exec(s, "COMMIT", "committing", err);
    if (rc != 0) {
        if (in_tx)
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        if (renamed)
            snap_unplace_layer_file(final);
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == 0)
        vs_log(VS_LOG_INFO, "tarfs layer built", "key", key, "path", final, "root_hash", root_hex, NULL);
    return rc > 0 ? 0 : rc;
}

int snapshotter_layer_add_tarfs(struct snapshotter *s, const char *key, int blob_fd,
                                const char *source_digest, const char *expected_diff_id, struct vs_error *err)
{
    if (!key || !key[0])
        return vs_fail(err, -EINVAL, "tarfs conversion: the snapshot key is empty");
    char rel[80];
    tarfs_rel_path(key, rel);
    int64_t id = 0;
    bool have = false;
    pthread_mutex_lock(&s->lock);
    int rc = tarfs_row_state(s, key, rel, &id, &have, err);
    if (rc == 0 && !have)
        s->commits_in_flight++;
    pthread_mutex_unlock(&s->lock);
    if (rc < 0 || have)
        return rc < 0 ? vs_error_prefix(err, "tarfs conversion") : 0;

    char tmpdir[PATH_MAX], tmpfile[PATH_MAX + 16] = "";
    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp/tarfs-%lld-XXXXXX", s->root, (long long)id);
    struct layer_file_options opts = s->layer;
    opts.tarfs.format = TARFS_FORMAT_TARFS;
    opts.verity = true;
    opts.sidecar = false;
    struct layer_file_result res;
    memset(&res, 0, sizeof(res));
    if (!mkdtemp(tmpdir)) {
        rc = vs_fail(err, -errno, "tarfs conversion of snapshot '%s': creating '%s': %s", key, tmpdir,
                     strerror(errno));
        tmpdir[0] = '\0';
    } else {
        snprintf(tmpfile, sizeof(tmpfile), "%s/layer", tmpdir);
        rc = layer_file_build_fd(blob_fd, tmpfile, &opts, &res, err);
        if (rc < 0)
            vs_error_prefix(err, "tarfs conversion of snapshot '%s'", key);
    }
    if (rc == 0)
        rc = snapshotter_layer_install_tarfs(s, key, tmpfile, &res, source_digest, expected_diff_id, err);
    pthread_mutex_lock(&s->lock);
    s->commits_in_flight--;
    pthread_mutex_unlock(&s->lock);
    if (tmpdir[0])
        snap_remove_tree(tmpdir, NULL);
    return rc;
}
