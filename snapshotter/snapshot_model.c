/* The snapshot model: containerd's snapshotter contract over the SQLite store, with host-dialect mounts.
 * Active snapshots keep an upper dir under <root>/snapshots/<id>/; Commit converts it into a layer file under
 * <root>/layers/ (outside the lock), then records the layer and flips the row in one transaction. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vs_digest.h"
#include "snapshotter/blob_ingest.h"
#include "snapshotter/dialect.h"
#include "snapshotter/snapshot_internal.h"

#define LABEL_MAX 4096
#define OPTION_PAGE 4096

struct snap_row {
    int64_t id;
    int kind;
    int64_t parent_id; /* 0: none */
    char *key;
    char *parent_key;
    int64_t created_ns, updated_ns;
};

static void snap_row_free(struct snap_row *r)
{
    free(r->key);
    free(r->parent_key);
    memset(r, 0, sizeof(*r));
}

const char *snap_kind_name(int kind)
{
    switch (kind) {
    case SNAPSHOT_KIND_ACTIVE:
        return "active";
    case SNAPSHOT_KIND_VIEW:
        return "view";
    case SNAPSHOT_KIND_COMMITTED:
        return "committed";
    default:
        return NULL;
    }
}

static char *dup_col(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return t ? strdup((const char *)t) : NULL;
}

/* Reads the row of key; -ENOENT "snapshot 'key' does not exist". */
static int get_row(struct snapshotter *s, const char *key, struct snap_row *row, struct vs_error *err)
{
    memset(row, 0, sizeof(*row));
    sqlite3_stmt *st;
    int rc = store_prepare(
        s, &st,
        "SELECT s.id, s.kind, s.parent_id, p.key, s.created_ns, s.updated_ns, s.key FROM snapshots s "
        "LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.key = ?",
        err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        row->id = sqlite3_column_int64(st, 0);
        row->kind = sqlite3_column_int(st, 1);
        row->parent_id = sqlite3_column_type(st, 2) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 2);
        row->parent_key = dup_col(st, 3);
        row->created_ns = sqlite3_column_int64(st, 4);
        row->updated_ns = sqlite3_column_int64(st, 5);
        row->key = dup_col(st, 6);
        if (!row->key || (row->parent_id && !row->parent_key))
            rc = vs_fail(err, -ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = vs_fail(err, -ENOENT, "snapshot '%s' does not exist", key);
    } else {
        rc = store_fail(s, err, "snapshot '%s': reading it", key);
    }
    sqlite3_finalize(st);
    if (rc < 0)
        snap_row_free(row);
    return rc;
}

static int key_exists(struct snapshotter *s, const char *key, bool *exists, struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, "SELECT 1 FROM snapshots WHERE key = ?", err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    *exists = step == SQLITE_ROW;
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = store_fail(s, err, "snapshot '%s': looking it up", key);
    sqlite3_finalize(st);
    return rc;
}

static int check_labels(const char *key, const struct snapshot_label *labels, size_t count,
                        struct vs_error *err)
{
    for (size_t i = 0; i < count; i++) {
        if (!labels[i].key || !labels[i].key[0])
            return vs_fail(err, -EINVAL, "snapshot '%s': a label has an empty key", key);
        size_t n = strlen(labels[i].key) + (labels[i].value ? strlen(labels[i].value) : 0);
        if (n > LABEL_MAX)
            return vs_fail(err, -EINVAL,
                           "snapshot '%s': label '%.64s' is %zu bytes, more than the %d allowed", key,
                           labels[i].key, n, LABEL_MAX);
    }
    return 0;
}

/* Sets one label (an empty or missing value deletes it). */
static int put_label(struct snapshotter *s, int64_t id, const char *snap_key, const char *key,
                     const char *value, struct vs_error *err)
{
    sqlite3_stmt *st;
    bool del = !value || !value[0];
    int rc = store_prepare(s, &st,
                           del ? "DELETE FROM labels WHERE snapshot_id = ? AND key = ?"
                               : "INSERT OR REPLACE INTO labels (snapshot_id, key, value) VALUES (?, ?, ?)",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    if (!del)
        sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = store_fail(s, err, "snapshot '%s': writing label '%s'", snap_key, key);
    sqlite3_finalize(st);
    return rc;
}

static int replace_labels(struct snapshotter *s, int64_t id, const char *snap_key,
                          const struct snapshot_label *labels, size_t count, struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, "DELETE FROM labels WHERE snapshot_id = ?", err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = store_fail(s, err, "snapshot '%s': clearing its labels", snap_key);
    sqlite3_finalize(st);
    for (size_t i = 0; rc == 0 && i < count; i++)
        rc = put_label(s, id, snap_key, labels[i].key, labels[i].value, err);
    return rc;
}

static int load_labels(struct snapshotter *s, int64_t id, struct snapshot_info *info, struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, "SELECT key, value FROM labels WHERE snapshot_id = ? ORDER BY key", err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    size_t cap = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (info->label_count == cap) {
            cap = cap ? cap * 2 : 8;
            struct snapshot_label *grown = realloc(info->labels, cap * sizeof(*grown));
            if (!grown) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
            info->labels = grown;
        }
        struct snapshot_label *l = &info->labels[info->label_count++];
        l->key = dup_col(st, 0);
        l->value = dup_col(st, 1);
        if (!l->key || !l->value) {
            rc = vs_fail(err, -ENOMEM, "out of memory");
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = store_fail(s, err, "snapshot '%s': reading its labels", info->name);
    sqlite3_finalize(st);
    return rc;
}

static int row_to_info(struct snapshotter *s, const struct snap_row *row, struct snapshot_info *out,
                       struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    out->name = strdup(row->key);
    out->parent = strdup(row->parent_key ? row->parent_key : "");
    out->kind = (enum snapshot_kind)row->kind;
    out->created_ns = row->created_ns;
    out->updated_ns = row->updated_ns;
    int rc =
        out->name && out->parent ? load_labels(s, row->id, out, err) : vs_fail(err, -ENOMEM, "out of memory");
    if (rc < 0)
        snapshot_info_free(out);
    return rc;
}

void snapshot_info_free(struct snapshot_info *info)
{
    if (!info)
        return;
    free(info->name);
    free(info->parent);
    for (size_t i = 0; i < info->label_count; i++) {
        free(info->labels[i].key);
        free(info->labels[i].value);
    }
    free(info->labels);
    memset(info, 0, sizeof(*info));
}

void snapshot_mounts_free(struct snapshot_mounts *mounts)
{
    if (!mounts)
        return;
    for (size_t i = 0; i < mounts->count; i++) {
        struct snapshot_mount *m = &mounts->items[i];
        free(m->type);
        free(m->source);
        free(m->target);
        for (size_t j = 0; j < m->option_count; j++)
            free(m->options[j]);
        free(m->options);
    }
    free(mounts->items);
    memset(mounts, 0, sizeof(*mounts));
}

/* ---- mounts ---- */

static void snap_dir(const struct snapshotter *s, int64_t id, const char *sub, char *out, size_t cap)
{
    if (sub)
        snprintf(out, cap, "%s/snapshots/%lld/%s", s->root, (long long)id, sub);
    else
        snprintf(out, cap, "%s/snapshots/%lld", s->root, (long long)id);
}

static int add_mount(struct snapshot_mounts *out, const char *type, const char *source, char **options,
                     size_t n, struct vs_error *err)
{
    struct snapshot_mount *grown = realloc(out->items, (out->count + 1) * sizeof(*grown));
    if (!grown) {
        for (size_t i = 0; i < n; i++)
            free(options[i]);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    out->items = grown;
    struct snapshot_mount *m = &out->items[out->count++];
    memset(m, 0, sizeof(*m));
    m->type = strdup(type);
    m->source = strdup(source);
    m->target = strdup("");
    m->options = calloc(n ? n : 1, sizeof(char *));
    bool ok = m->type && m->source && m->target && m->options;
    for (size_t i = 0; i < n; i++) {
        if (m->options)
            m->options[m->option_count++] = options[i];
        else
            free(options[i]);
        ok = ok && options[i];
    }
    return ok ? 0 : vs_fail(err, -ENOMEM, "out of memory");
}

/* The layers of a parent chain, topmost first. */
static int chain_layers(struct snapshotter *s, int64_t parent_id, struct layer_row **out, size_t *count,
                        struct vs_error *err)
{
    *out = NULL;
    *count = 0;
    size_t cap = 0;
    int rc = 0;
    sqlite3_stmt *st = NULL;
    rc = store_prepare(s, &st, "SELECT parent_id FROM snapshots WHERE id = ?", err);
    for (int64_t id = parent_id; rc == 0 && id;) {
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            struct layer_row *grown = realloc(*out, cap * sizeof(*grown));
            if (!grown) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
            *out = grown;
        }
        rc = store_layer_by_snapshot(s, id, &(*out)[*count], err);
        if (rc < 0)
            break;
        (*count)++;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        int step = sqlite3_step(st);
        id =
            step == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL ? sqlite3_column_int64(st, 0) : 0;
        if (step != SQLITE_ROW)
            rc = store_fail(s, err, "reading the parent chain");
        if (*count > 10000)
            rc = vs_fail(err, -ELOOP, "the parent chain has a cycle");
    }
    sqlite3_finalize(st);
    if (rc < 0) {
        for (size_t i = 0; i < *count; i++)
            layer_row_free(&(*out)[i]);
        free(*out);
        *out = NULL;
        *count = 0;
    }
    return rc;
}

static char *fmt_alloc(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_alloc(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    if (vasprintf(&out, fmt, ap) < 0)
        out = NULL;
    va_end(ap);
    return out;
}

/* The host dialect's mounts for an active or view snapshot, mounting its parents' layers as needed:
 * no parent: bind of its own fs dir (rw for active, ro for a view), as containerd's overlay snapshotter does;
 * a view of one layer: ro bind of that layer's host mount (overlay needs two lowers without an upper);
 * otherwise one overlay with the layers as lowerdirs (topmost first) and, for active, upperdir/workdir. */
static int build_mounts(struct snapshotter *s, const struct snap_row *row, struct snapshot_mounts *out,
                        struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    struct layer_row *layers = NULL;
    size_t n = 0;
    int rc = chain_layers(s, row->parent_id, &layers, &n, err);
    if (rc < 0)
        return vs_error_prefix(err, "snapshot '%s'", row->key);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = host_layer_ensure(s, &layers[i], err);
    char path[PATH_MAX];
    bool active = row->kind == SNAPSHOT_KIND_ACTIVE;
    if (rc < 0) {
        vs_error_prefix(err, "snapshot '%s'", row->key);
    } else if (n == 0) {
        snap_dir(s, row->id, "fs", path, sizeof(path));
        char *opts[2] = {strdup(active ? "rw" : "ro"), strdup("rbind")};
        rc = add_mount(out, "bind", path, opts, 2, err);
    } else if (!active && n == 1) {
        snprintf(path, sizeof(path), "%s/mnt/%lld", s->root, (long long)layers[0].id);
        char *opts[2] = {strdup("ro"), strdup("rbind")};
        rc = add_mount(out, "bind", path, opts, 2, err);
    } else {
        /* lowerdir=<root>/mnt/a:<root>/mnt/b...: containerd's mount code shortens it to the common dir's
         * relative names when it nears a page, so the names under mnt/ must stay short. */
        size_t mnt_len = strlen(s->root) + strlen("/mnt/");
        size_t full = strlen("lowerdir="), compact = strlen("lowerdir=");
        char num[32];
        for (size_t i = 0; i < n; i++) {
            int l = snprintf(num, sizeof(num), "%lld", (long long)layers[i].id);
            full += mnt_len + (size_t)l + 1;
            compact += (size_t)l + 1;
        }
        char *lower = malloc(full + 1);
        char *opts[4] = {0};
        size_t k = 0;
        if (!lower) {
            rc = vs_fail(err, -ENOMEM, "out of memory");
        } else {
            size_t off = (size_t)sprintf(lower, "lowerdir=");
            for (size_t i = 0; i < n; i++)
                off += (size_t)sprintf(lower + off, "%s%s/mnt/%lld", i ? ":" : "", s->root,
                                       (long long)layers[i].id);
            if (s->index_off)
                opts[k++] = strdup("index=off");
            if (active) {
                char upper[PATH_MAX], work[PATH_MAX];
                snap_dir(s, row->id, "fs", upper, sizeof(upper));
                snap_dir(s, row->id, "work", work, sizeof(work));
                opts[k++] = fmt_alloc("workdir=%s", work);
                opts[k++] = fmt_alloc("upperdir=%s", upper);
            }
            size_t others = 0;
            for (size_t i = 0; i < k; i++)
                others += opts[i] ? strlen(opts[i]) + 1 : 0;
            if (others + compact > OPTION_PAGE)
                rc = vs_fail(
                    err, -E2BIG,
                    "snapshot '%s': %zu layers do not fit one overlay mount option page (%zu bytes even "
                    "with relative lowerdirs)",
                    row->key, n, others + compact);
            opts[k++] = lower;
        }
        if (rc == 0)
            rc = add_mount(out, "overlay", "overlay", opts, k, err);
        else
            for (size_t i = 0; i < k; i++)
                free(opts[i]);
    }
    for (size_t i = 0; i < n; i++)
        layer_row_free(&layers[i]);
    free(layers);
    if (rc < 0)
        snapshot_mounts_free(out);
    return rc;
}

/* ---- open / close ---- */

static int make_dir(const char *path, mode_t mode, struct vs_error *err)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        return vs_fail(err, -errno, "creating '%s': %s", path, strerror(errno));
    return 0;
}

/* Paths under the root that no row references (cleanup's and open's work list). */
struct orphans {
    char **paths;
    size_t count, cap;
};

static int orphan_add(struct orphans *o, const char *path, struct vs_error *err)
{
    if (o->count == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        char **grown = realloc(o->paths, cap * sizeof(*grown));
        if (!grown)
            return vs_fail(err, -ENOMEM, "out of memory");
        o->paths = grown;
        o->cap = cap;
    }
    o->paths[o->count] = strdup(path);
    if (!o->paths[o->count])
        return vs_fail(err, -ENOMEM, "out of memory");
    o->count++;
    return 0;
}

static void orphans_remove(struct orphans *o)
{
    for (size_t i = 0; i < o->count; i++) {
        struct vs_error e = {0};
        if (snap_remove_tree(o->paths[i], &e) < 0)
            vs_log(VS_LOG_WARN, "removing an orphan", "error", e.message, NULL);
        else
            vs_log(VS_LOG_DEBUG, "removed an orphan", "path", o->paths[i], NULL);
        free(o->paths[i]);
    }
    free(o->paths);
    memset(o, 0, sizeof(*o));
}

static int query_exists(struct snapshotter *s, const char *sql, const char *text, int64_t num, bool *found,
                        struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, sql, err);
    if (rc < 0)
        return rc;
    if (text)
        sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_int64(st, 1, num);
    int step = sqlite3_step(st);
    *found = step == SQLITE_ROW;
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = store_fail(s, err, "looking up '%s'", text ? text : "a snapshot");
    sqlite3_finalize(st);
    return rc;
}

/* Lists files and dirs under the root that no row references; caller holds the lock. */
static int collect_orphans(struct snapshotter *s, bool with_tmp, struct orphans *o, struct vs_error *err)
{
    char dirpath[PATH_MAX], path[PATH_MAX + 300];
    int rc = 0;
    snprintf(dirpath, sizeof(dirpath), "%s/snapshots", s->root);
    DIR *d = opendir(dirpath);
    struct dirent *de;
    while (rc == 0 && d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *end = NULL;
        long long id = strtoll(de->d_name, &end, 10);
        bool keep = false;
        if (end && end != de->d_name && *end == '\0')
            rc = query_exists(s, "SELECT 1 FROM snapshots WHERE id = ? AND kind IN (1, 2)", NULL, id, &keep,
                              err);
        snprintf(path, sizeof(path), "%s/%s", dirpath, de->d_name);
        if (rc == 0 && !keep)
            rc = orphan_add(o, path, err);
    }
    if (d)
        closedir(d);
    snprintf(dirpath, sizeof(dirpath), "%s/layers", s->root);
    d = opendir(dirpath);
    while (rc == 0 && d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char rel[PATH_MAX];
        snprintf(rel, sizeof(rel), "layers/%s", de->d_name);
        size_t l = strlen(rel);
        if (l > 9 && strcmp(rel + l - 9, ".dmverity") == 0)
            rel[l - 9] = '\0';
        bool keep = false;
        rc = query_exists(s, "SELECT 1 FROM layers WHERE path = ?", rel, 0, &keep, err);
        snprintf(path, sizeof(path), "%s/%s", dirpath, de->d_name);
        if (rc == 0 && !keep)
            rc = orphan_add(o, path, err);
    }
    if (d)
        closedir(d);
    if (with_tmp) {
        snprintf(dirpath, sizeof(dirpath), "%s/tmp", s->root);
        d = opendir(dirpath);
        while (rc == 0 && d && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            snprintf(path, sizeof(path), "%s/%s", dirpath, de->d_name);
            rc = orphan_add(o, path, err);
        }
        if (d)
            closedir(d);
    }
    return rc;
}

/* Rows whose layer file is gone: reported, kept (Remove still works; mounting them fails naming the file). */
static void check_layer_files(struct snapshotter *s)
{
    sqlite3_stmt *st;
    struct vs_error e = {0};
    if (store_prepare(s, &st, "SELECT l.path, s.key FROM layers l JOIN snapshots s ON s.id = l.snapshot_id",
                      &e) < 0) {
        vs_log(VS_LOG_ERROR, "checking layer files", "error", e.message, NULL);
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *rel = (const char *)sqlite3_column_text(st, 0);
        const char *key = (const char *)sqlite3_column_text(st, 1);
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", s->root, rel ? rel : "");
        if (access(path, R_OK) < 0)
            vs_log(VS_LOG_ERROR,
                   "the store records a layer file that is missing: mounts of this snapshot and its children "
                   "fail "
                   "until it is restored or the snapshots are removed",
                   "key", key ? key : "", "path", path, "error", strerror(errno), NULL);
    }
    sqlite3_finalize(st);
}

int snapshotter_open(const struct snapshotter_config *config, struct snapshotter **out, struct vs_error *err)
{
    *out = NULL;
    const char *root = config->root && config->root[0] ? config->root : "/var/lib/veritysnap";
    if (make_dir(root, 0700, err) < 0)
        return vs_error_prefix(err, "state root");
    struct snapshotter *s = calloc(1, sizeof(*s));
    if (!s)
        return vs_fail(err, -ENOMEM, "out of memory");
    s->root = realpath(root, NULL);
    if (!s->root) {
        int rc = vs_fail(err, -errno, "state root '%s': %s", root, strerror(errno));
        free(s);
        return rc;
    }
    int rc = 0;
    if (strpbrk(s->root, ",:"))
        rc = vs_fail(err, -EINVAL, "state root '%s': a ',' or ':' in the path breaks overlay mount options",
                     s->root);
    s->verity = config->verity;
    s->layer = config->layer;
    s->force_loop = config->host_mount_loop;
    if (rc == 0 && config->tardev_layer_prefix && config->tardev_layer_prefix[0] &&
        !(s->tardev_prefix = strdup(config->tardev_layer_prefix)))
        rc = vs_fail(err, -ENOMEM, "out of memory");
    s->index_off = access("/sys/module/overlay/parameters/index", F_OK) == 0;
    uint8_t h[VS_SHA256_LEN];
    vs_sha256(s->root, strlen(s->root), h);
    char hex[2 * VS_SHA256_LEN + 1];
    vs_hex_encode(h, VS_SHA256_LEN, hex);
    snprintf(s->dm_prefix, sizeof(s->dm_prefix), "veritysnap-%.8s-", hex);
    pthread_mutex_init(&s->lock, NULL);
    static const char *const subdirs[] = {"snapshots", "layers", "mnt", "tmp"};
    for (size_t i = 0; rc == 0 && i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", s->root, subdirs[i]);
        rc = make_dir(path, 0700, err);
    }
    if (rc == 0)
        rc = blob_ingest_new(config->content, &s->blob, err);
    if (rc == 0)
        rc = store_open(s, err);
    if (rc == 0)
        rc = host_layers_reconcile(s, err);
    struct orphans o = {0};
    if (rc == 0)
        rc = collect_orphans(s, true, &o, err);
    orphans_remove(&o);
    if (rc < 0) {
        vs_error_prefix(err, "opening the state root '%s'", s->root);
        snapshotter_close(s);
        return rc;
    }
    check_layer_files(s);
    *out = s;
    return 0;
}

void snapshotter_close(struct snapshotter *s)
{
    if (!s)
        return;
    store_close(s);
    pthread_mutex_destroy(&s->lock);
    free(s->mounted);
    blob_ingest_free(s->blob);
    free(s->tardev_prefix);
    free(s->root);
    free(s);
}

/* ---- Prepare / View / Mounts ---- */

static int create_snapshot(struct snapshotter *s, enum snapshot_dialect dialect, int kind, const char *key,
                           const char *parent, const struct snapshot_label *labels, size_t label_count,
                           struct snapshot_mounts *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    if (!key || !key[0])
        return vs_fail(err, -EINVAL, "%s: the snapshot key is empty",
                       kind == SNAPSHOT_KIND_VIEW ? "view" : "prepare");
    int rc = check_labels(key, labels, label_count, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&s->lock);
    rc = store_exec(s, "BEGIN IMMEDIATE", "starting a transaction", err);
    if (rc < 0) {
        pthread_mutex_unlock(&s->lock);
        return vs_error_prefix(err, "snapshot '%s'", key);
    }
    bool exists = false;
    struct snap_row prow = {0}, row = {0};
    rc = key_exists(s, key, &exists, err);
    if (rc == 0 && exists)
        rc = vs_fail(err, -EEXIST, "snapshot '%s' already exists", key);
    if (rc == 0 && parent && parent[0]) {
        rc = get_row(s, parent, &prow, err);
        if (rc == -ENOENT)
            rc = vs_fail(err, -ENOENT, "snapshot '%s': parent '%s' does not exist", key, parent);
        else if (rc == 0 && prow.kind != SNAPSHOT_KIND_COMMITTED)
            rc = vs_fail(err, -EINVAL, "snapshot '%s': parent '%s' is not committed (it is %s)", key, parent,
                         snap_kind_name(prow.kind) ? snap_kind_name(prow.kind) : "unknown");
    }
    if (rc == 0)
        rc = store_snapshot_insert(s, key, kind, prow.id, &row.id, err);
    row.kind = kind;
    row.parent_id = prow.id;
    row.key = (char *)key;
    for (size_t i = 0; rc == 0 && i < label_count; i++)
        rc = put_label(s, row.id, key, labels[i].key, labels[i].value, err);
    char dir[PATH_MAX], sub[PATH_MAX];
    bool made = false;
    if (rc == 0) {
        snap_dir(s, row.id, NULL, dir, sizeof(dir));
        rc = make_dir(dir, 0700, err);
        made = rc == 0;
        snap_dir(s, row.id, "fs", sub, sizeof(sub));
        /* Mount roots are 0755 whatever the umask. */
        if (rc == 0 && (rc = make_dir(sub, 0755, err)) == 0 && chmod(sub, 0755) < 0)
            rc = vs_fail(err, -errno, "chmod '%s': %s", sub, strerror(errno));
        if (rc == 0 && kind == SNAPSHOT_KIND_ACTIVE) {
            snap_dir(s, row.id, "work", sub, sizeof(sub));
            rc = make_dir(sub, 0711, err);
        }
        if (rc < 0)
            vs_error_prefix(err, "snapshot '%s'", key);
    }
    if (rc == 0 && dialect_shapes(dialect, kind, key)) /* Kata dialects: container rootfs only (dialect.c) */
        rc = dialect_build_mounts(s, dialect, row.id, row.kind, row.parent_id, key, out, err);
    else if (rc == 0)
        rc = build_mounts(s, &row, out, err);
    if (rc == 0)
        rc = store_exec(s, "COMMIT", "committing", err);
    if (rc < 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        snapshot_mounts_free(out);
        if (made)
            snap_remove_tree(dir, NULL);
        host_layers_sync(s, NULL);
    }
    pthread_mutex_unlock(&s->lock);
    snap_row_free(&prow);
    return rc;
}

/* A kata-tardev container snapshot needs the tarfs form of every layer below it (parent's chain, or key's
 * own): build what is missing from the blobs still in containerd's content store. Other dialects and keys
 * need nothing. */
static int tardev_layers_ready(struct snapshotter *s, const struct snapshot_call *call,
                               enum snapshot_kind kind, const char *key, const char *parent,
                               struct vs_error *err)
{
    if (!call || call->dialect != SNAPSHOT_DIALECT_KATA_TARDEV || !dialect_shapes(call->dialect, kind, key))
        return 0;
    return blob_ingest_tarfs_chain(s, call, key, parent, err);
}

int snap_sync_layers_dir(struct snapshotter *s, struct vs_error *err)
{
    char ldir[PATH_MAX];
    snprintf(ldir, sizeof(ldir), "%s/layers", s->root);
    int fd = open(ldir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) < 0)
        rc = vs_fail(err, -errno, "syncing '%s': %s", ldir, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

int snap_place_layer_file(struct snapshotter *s, const char *tmp, const char *final, bool sidecar,
                          bool *placed, struct vs_error *err)
{
    *placed = false;
    if (rename(tmp, final) < 0)
        return vs_fail(err, -errno, "renaming the layer file to '%s': %s", final, strerror(errno));
    *placed = true;
    if (sidecar) {
        char from[PATH_MAX + 16], to[PATH_MAX + 16];
        snprintf(from, sizeof(from), "%s.dmverity", tmp);
        snprintf(to, sizeof(to), "%s.dmverity", final);
        if (rename(from, to) < 0)
            return vs_fail(err, -errno, "renaming the sidecar to '%s': %s", to, strerror(errno));
    }
    return snap_sync_layers_dir(s, err);
}

void snap_unplace_layer_file(const char *final)
{
    char side[PATH_MAX + 16];
    snprintf(side, sizeof(side), "%s.dmverity", final);
    unlink(final);
    unlink(side);
}

int snapshotter_prepare(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                        const char *parent, const struct snapshot_label *labels, size_t label_count,
                        struct snapshot_mounts *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    /* The blob path converts and commits the layer now and answers -EEXIST; 1: it does not apply. */
    int rc = blob_ingest_prepare(s, call, key, parent, labels, label_count, err);
    if (rc != 1)
        return rc;
    if (parent && parent[0] &&
        (rc = tardev_layers_ready(s, call, SNAPSHOT_KIND_ACTIVE, key, parent, err)) < 0)
        return rc;
    return create_snapshot(s, call ? call->dialect : SNAPSHOT_DIALECT_HOST, SNAPSHOT_KIND_ACTIVE, key, parent,
                           labels, label_count, out, err);
}

int snapshotter_view(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                     const char *parent, const struct snapshot_label *labels, size_t label_count,
                     struct snapshot_mounts *out, struct vs_error *err)
{
    int rc;
    if (parent && parent[0] && (rc = tardev_layers_ready(s, call, SNAPSHOT_KIND_VIEW, key, parent, err)) < 0)
        return rc;
    return create_snapshot(s, call ? call->dialect : SNAPSHOT_DIALECT_HOST, SNAPSHOT_KIND_VIEW, key, parent,
                           labels, label_count, out, err);
}

int snapshotter_mounts(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       struct snapshot_mounts *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    int rc0 = tardev_layers_ready(s, call, SNAPSHOT_KIND_UNKNOWN, key, NULL, err);
    if (rc0 < 0)
        return rc0;
    pthread_mutex_lock(&s->lock);
    struct snap_row row;
    int rc = get_row(s, key ? key : "", &row, err);
    if (rc == 0 && row.kind == SNAPSHOT_KIND_COMMITTED)
        rc = vs_fail(err, -EBUSY, "snapshot '%s' is committed: only active and view snapshots have mounts",
                     key);
    if (rc == 0 && call && dialect_shapes(call->dialect, (enum snapshot_kind)row.kind, row.key))
        rc = dialect_build_mounts(s, call->dialect, row.id, row.kind, row.parent_id, row.key, out, err);
    else if (rc == 0)
        rc = build_mounts(s, &row, out, err);
    pthread_mutex_unlock(&s->lock);
    snap_row_free(&row);
    return rc;
}

/* ---- Commit ---- */

int snapshotter_commit(struct snapshotter *s, const struct snapshot_call *call, const char *name,
                       const char *key, const struct snapshot_label *labels, size_t label_count,
                       struct vs_error *err)
{
    if (!name || !name[0] || !key || !key[0])
        return vs_fail(err, -EINVAL, "commit of '%s' as '%s': the key and the name must not be empty",
                       key ? key : "", name ? name : "");
    int rc = check_labels(name, labels, label_count, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&s->lock);
    struct snap_row row;
    rc = get_row(s, key, &row, err);
    if (rc == 0 && row.kind != SNAPSHOT_KIND_ACTIVE)
        rc = vs_fail(err, -EBUSY, "snapshot '%s' is %s, not active: only an active snapshot can be committed",
                     key, snap_kind_name(row.kind) ? snap_kind_name(row.kind) : "unknown");
    bool exists = false;
    if (rc == 0)
        rc = key_exists(s, name, &exists, err);
    if (rc == 0 && exists)
        rc = vs_fail(err, -EEXIST, "commit of snapshot '%s': snapshot '%s' already exists", key, name);
    if (rc == 0)
        s->commits_in_flight++;
    pthread_mutex_unlock(&s->lock);
    if (rc < 0) {
        snap_row_free(&row);
        return rc;
    }

    /* Convert outside the lock: Stat, List and other commits go on meanwhile. */
    char tmpdir[PATH_MAX], tmpfile[PATH_MAX + 16] = "", tarfs_file[PATH_MAX + 16] = "", upper[PATH_MAX];
    /* On a kata-tardev socket a layer from its blob also gets its tarfs form, from the same read. */
    bool with_tarfs = call && call->dialect == SNAPSHOT_DIALECT_KATA_TARDEV;
    struct layer_file_result tarfs_res;
    memset(&tarfs_res, 0, sizeof(tarfs_res));
    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp/commit-%lld-XXXXXX", s->root, (long long)row.id);
    snap_dir(s, row.id, "fs", upper, sizeof(upper));
    struct layer_file_result res;
    memset(&res, 0, sizeof(res));
    struct layer_file_options opts = s->layer;
    opts.tarfs.format = TARFS_FORMAT_EROFS; /* the directory source builds EROFS only */
    opts.sidecar = true;
    struct blob_commit_source blob_src = {0};
    if (!mkdtemp(tmpdir)) {
        rc = vs_fail(err, -errno, "commit of snapshot '%s': creating '%s': %s", key, tmpdir, strerror(errno));
        tmpdir[0] = '\0';
    } else {
        snprintf(tmpfile, sizeof(tmpfile), "%s/layer", tmpdir);
        if (with_tarfs)
            snprintf(tarfs_file, sizeof(tarfs_file), "%s/layer.tarfs", tmpdir);
        /* Prepared with the layer digest label and the blob fetched since: the reproducible blob source. */
        rc = blob_ingest_commit(s, key, name, row.id, row.parent_id, labels, label_count, tmpfile, &opts,
                                &res, with_tarfs ? tarfs_file : NULL, &tarfs_res, &blob_src, err);
        if (rc == 1) {
            rc = layer_file_build_dir(upper, tmpfile, &opts, &res, err);
            if (rc < 0)
                vs_error_prefix(err, "commit of snapshot '%s' as '%s': converting %s", key, name, upper);
        }
    }
    char digest_hex[2 * VS_SHA256_LEN + 1], root_hex[2 * VERITY_MAX_DIGEST + 1] = "";
    vs_hex_encode(res.image.diff_id, VS_SHA256_LEN, digest_hex);
    if (rc == 0 && res.verity)
        vs_hex_encode(res.layout.root_hash, res.layout.digest_size, root_hex);
    char rel[128], final[PATH_MAX];
    snprintf(rel, sizeof(rel), "layers/%lld-%.16s.erofs", (long long)row.id, digest_hex);
    snprintf(final, sizeof(final), "%s/%s", s->root, rel);

    pthread_mutex_lock(&s->lock);
    s->commits_in_flight--;
    bool renamed = false, in_tx = false;
    struct snap_row again;
    memset(&again, 0, sizeof(again));
    if (rc == 0)
        rc = store_exec(s, "BEGIN IMMEDIATE", "starting a transaction", err);
    in_tx = rc == 0;
    /* The snapshot may have gone (Remove) or been committed by another call while we converted. */
    if (rc == 0) {
        rc = get_row(s, key, &again, err);
        if (rc == 0 && (again.id != row.id || again.kind != SNAPSHOT_KIND_ACTIVE))
            rc = vs_fail(err, -ENOENT,
                         "commit of snapshot '%s': it was removed or committed during the conversion", key);
        else if (rc == -ENOENT)
            rc = vs_fail(err, -ENOENT, "commit of snapshot '%s': it was removed during the conversion", key);
    }
    if (rc == 0 && (rc = key_exists(s, name, &exists, err)) == 0 && exists)
        rc = vs_fail(err, -EEXIST, "commit of snapshot '%s': snapshot '%s' already exists", key, name);
    if (rc == 0 && (rc = snap_place_layer_file(s, tmpfile, final, opts.verity, &renamed, err)) < 0)
        vs_error_prefix(err, "commit of snapshot '%s'", key);
    int64_t now = snap_now_ns();
    sqlite3_stmt *st = NULL;
    if (rc == 0)
        rc = store_prepare(
            s, &st, "UPDATE snapshots SET key = ?, kind = 3, created_ns = ?, updated_ns = ? WHERE id = ?",
            err);
    if (rc == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_int64(st, 4, row.id);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = store_fail(s, err, "commit of snapshot '%s' as '%s'", key, name);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == 0)
        rc = replace_labels(s, row.id, name, labels, label_count, err);
    if (rc == 0 && root_hex[0])
        rc = put_label(s, row.id, name, SNAPSHOT_LABEL_ROOT_HASH, root_hex, err);
    if (rc == 0) {
        char digest[80];
        snprintf(digest, sizeof(digest), "sha256:%s", digest_hex);
        struct layer_record rec = {
            .snapshot_id = row.id,
            .path = rel,
            .format = "erofs",
            .source = blob_src.blob ? "blob" : "directory",
            .source_digest = digest,
            .blob_digest = blob_src.blob ? blob_src.blob_digest : NULL,
            .diff_id = blob_src.blob ? blob_src.diff_id : NULL,
            .result = &res,
            .root_hex = root_hex,
        };
        rc = store_layer_insert(s, &rec, err);
        if (rc < 0)
            vs_error_prefix(err, "commit of snapshot '%s'", key);
    }
    if (rc == 0)
        rc = store_exec(s, "COMMIT", "committing", err);
    if (rc < 0) {
        if (in_tx)
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        if (renamed)
            snap_unplace_layer_file(final);
    } else {
        host_layers_sync(s, NULL); /* the active snapshot's parents may not be needed any more */
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == 0)
        blob_ingest_count(s, blob_src.blob, "erofs", name, root_hex);
    if (rc == 0 && with_tarfs && blob_src.blob) {
        /* The erofs form is committed and right whatever happens here; a failure leaves the tarfs form to the
         * next kata-tardev call, which builds it from the blob. */
        struct vs_error terr = {0};
        if (snapshotter_layer_install_tarfs(s, name, tarfs_file, &tarfs_res, blob_src.blob_digest,
                                            blob_src.diff_id, &terr) == 0)
            blob_ingest_count(s, true, "tarfs", name, NULL);
        else
            vs_log(VS_LOG_WARN, "commit: the tarfs form built beside the erofs form was not recorded", "key",
                   name, "error", terr.message, NULL);
    }
    if (tmpdir[0])
        snap_remove_tree(tmpdir, NULL);
    if (rc == 0) {
        char dir[PATH_MAX];
        snap_dir(s, row.id, NULL, dir, sizeof(dir));
        struct vs_error e = {0};
        if (snap_remove_tree(dir, &e) < 0)
            vs_log(VS_LOG_WARN, "removing the committed upper dir (cleanup retries)", "key", name, "error",
                   e.message, NULL);
    }
    snap_row_free(&row);
    snap_row_free(&again);
    return rc;
}

/* ---- Remove / Stat / Update ---- */

int snapshotter_remove(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       struct vs_error *err)
{
    (void)call;
    pthread_mutex_lock(&s->lock);
    struct snap_row row;
    struct layer_row layer;
    memset(&layer, 0, sizeof(layer));
    int rc = get_row(s, key ? key : "", &row, err);
    if (rc == 0) {
        sqlite3_stmt *st;
        rc = store_prepare(s, &st, "SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1", err);
        if (rc == 0) {
            sqlite3_bind_int64(st, 1, row.id);
            int step = sqlite3_step(st);
            if (step == SQLITE_ROW)
                rc = vs_fail(err, -EBUSY, "snapshot '%s': cannot remove snapshot with child '%s'", key,
                             (const char *)sqlite3_column_text(st, 0));
            else if (step != SQLITE_DONE)
                rc = store_fail(s, err, "snapshot '%s': looking for children", key);
            sqlite3_finalize(st);
        }
    }
    bool has_layer = false;
    if (rc == 0 && row.kind == SNAPSHOT_KIND_COMMITTED) {
        struct vs_error lerr = {0};
        int l = store_layer_by_snapshot(s, row.id, &layer, &lerr);
        has_layer = l == 0;
        if (l < 0 && l != -ENOENT && l != -EBADMSG)
            rc = vs_fail(err, l, "snapshot '%s': %s", key, lerr.message);
    }
    if (rc == 0) {
        sqlite3_stmt *st;
        rc = store_prepare(s, &st, "DELETE FROM snapshots WHERE id = ?", err);
        if (rc == 0) {
            sqlite3_bind_int64(st, 1, row.id);
            if (sqlite3_step(st) != SQLITE_DONE)
                rc = store_fail(s, err, "snapshot '%s': removing it", key);
            sqlite3_finalize(st);
        }
    }
    if (rc == 0)
        host_layers_sync(s, NULL);
    pthread_mutex_unlock(&s->lock);
    /* Files go after the row: a crash in between leaves orphans that open and cleanup remove. */
    if (rc == 0) {
        char path[PATH_MAX + 32];
        snap_dir(s, row.id, NULL, path, sizeof(path));
        struct vs_error e = {0};
        if (snap_remove_tree(path, &e) < 0)
            vs_log(VS_LOG_WARN, "removing a snapshot dir (cleanup retries)", "key", key, "error", e.message,
                   NULL);
        if (has_layer) {
            snprintf(path, sizeof(path), "%s/%s", s->root, layer.path);
            unlink(path);
            snprintf(path, sizeof(path), "%s/%s.dmverity", s->root, layer.path);
            unlink(path);
        }
    }
    layer_row_free(&layer);
    snap_row_free(&row);
    return rc;
}

int snapshotter_stat(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                     struct snapshot_info *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    int rc0 = tardev_layers_ready(s, call, SNAPSHOT_KIND_UNKNOWN, key, NULL, err);
    if (rc0 < 0)
        return rc0;
    pthread_mutex_lock(&s->lock);
    struct snap_row row;
    int rc = get_row(s, key ? key : "", &row, err);
    if (rc == 0)
        rc = row_to_info(s, &row, out, err);
    pthread_mutex_unlock(&s->lock);
    snap_row_free(&row);
    return rc;
}

static const char *info_label(const struct snapshot_info *info, const char *key)
{
    for (size_t i = 0; i < info->label_count; i++)
        if (info->labels[i].key && strcmp(info->labels[i].key, key) == 0)
            return info->labels[i].value;
    return NULL;
}

int snapshotter_update(struct snapshotter *s, const struct snapshot_call *call,
                       const struct snapshot_info *info, const char *const *paths, size_t path_count,
                       struct snapshot_info *out, struct vs_error *err)
{
    (void)call;
    memset(out, 0, sizeof(*out));
    const char *key = info && info->name ? info->name : "";
    for (size_t i = 0; i < path_count; i++) {
        const char *p = paths[i] ? paths[i] : "";
        if (strcmp(p, "labels") != 0 && (strncmp(p, "labels.", 7) != 0 || !p[7]))
            return vs_fail(err, -EINVAL,
                           "snapshot '%s': cannot update field '%s' (only labels and labels.<key>)", key, p);
    }
    int rc = check_labels(key, info ? info->labels : NULL, info ? info->label_count : 0, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&s->lock);
    rc = store_exec(s, "BEGIN IMMEDIATE", "starting a transaction", err);
    bool in_tx = rc == 0;
    struct snap_row row;
    memset(&row, 0, sizeof(row));
    if (rc == 0)
        rc = get_row(s, key, &row, err);
    for (size_t i = 0; rc == 0 && i < (path_count ? path_count : 1); i++) {
        if (path_count == 0 || strcmp(paths[i], "labels") == 0)
            rc = replace_labels(s, row.id, key, info->labels, info->label_count, err);
        else
            rc = put_label(s, row.id, key, paths[i] + 7, info_label(info, paths[i] + 7), err);
    }
    int64_t now = snap_now_ns();
    if (rc == 0) {
        sqlite3_stmt *st;
        rc = store_prepare(s, &st, "UPDATE snapshots SET updated_ns = ? WHERE id = ?", err);
        if (rc == 0) {
            sqlite3_bind_int64(st, 1, now);
            sqlite3_bind_int64(st, 2, row.id);
            if (sqlite3_step(st) != SQLITE_DONE)
                rc = store_fail(s, err, "snapshot '%s': updating it", key);
            sqlite3_finalize(st);
        }
        row.updated_ns = now;
    }
    if (rc == 0)
        rc = store_exec(s, "COMMIT", "committing", err);
    if (rc < 0 && in_tx)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc == 0)
        rc = row_to_info(s, &row, out, err);
    pthread_mutex_unlock(&s->lock);
    snap_row_free(&row);
    return rc;
}

/* ---- Walk ---- */

static int info_cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int snapshotter_walk(struct snapshotter *s, const struct snapshot_call *call, const char *const *filters,
                     size_t filter_count, int (*fn)(void *ctx, const struct snapshot_info *info), void *ctx,
                     struct vs_error *err)
{
    (void)call;
    struct snap_filter *filter = NULL;
    int rc = snap_filter_parse(filters, filter_count, &filter, err);
    if (rc < 0)
        return rc;
    /* Copy the rows out, then call fn without the lock: containerd's suite calls Stat inside an open List. */
    struct snapshot_info *infos = NULL;
    int64_t *ids = NULL;
    size_t count = 0, cap = 0;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st = NULL;
    rc = store_prepare(s, &st,
                       "SELECT s.id, s.key, s.kind, p.key, s.created_ns, s.updated_ns FROM snapshots s "
                       "LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id",
                       err);
    int step = SQLITE_DONE;
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            struct snapshot_info *gi = realloc(infos, cap * sizeof(*gi));
            if (gi)
                infos = gi;
            int64_t *gids = realloc(ids, cap * sizeof(*gids));
            if (gids)
                ids = gids;
            if (!gi || !gids) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
        }
        struct snapshot_info *in = &infos[count];
        memset(in, 0, sizeof(*in));
        ids[count] = sqlite3_column_int64(st, 0);
        in->name = dup_col(st, 1);
        in->kind = (enum snapshot_kind)sqlite3_column_int(st, 2);
        in->parent = dup_col(st, 3);
        if (!in->parent)
            in->parent = strdup("");
        in->created_ns = sqlite3_column_int64(st, 4);
        in->updated_ns = sqlite3_column_int64(st, 5);
        count++;
        if (!in->name || !in->parent)
            rc = vs_fail(err, -ENOMEM, "out of memory");
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = store_fail(s, err, "walking the snapshots");
    sqlite3_finalize(st);
    st = NULL;
    if (rc == 0)
        rc = store_prepare(s, &st, "SELECT snapshot_id, key, value FROM labels ORDER BY snapshot_id, key",
                           err);
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        int64_t *hit = bsearch(&id, ids, count, sizeof(*ids), info_cmp_id);
        if (!hit)
            continue;
        struct snapshot_info *in = &infos[hit - ids];
        struct snapshot_label *grown = realloc(in->labels, (in->label_count + 1) * sizeof(*grown));
        if (!grown) {
            rc = vs_fail(err, -ENOMEM, "out of memory");
            break;
        }
        in->labels = grown;
        struct snapshot_label *l = &in->labels[in->label_count++];
        l->key = dup_col(st, 1);
        l->value = dup_col(st, 2);
        if (!l->key || !l->value)
            rc = vs_fail(err, -ENOMEM, "out of memory");
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = store_fail(s, err, "walking the labels");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; rc == 0 && i < count; i++)
        if (snap_filter_match(filter, &infos[i]) && fn(ctx, &infos[i]) != 0)
            break;
    for (size_t i = 0; i < count; i++)
        snapshot_info_free(&infos[i]);
    free(infos);
    free(ids);
    snap_filter_free(filter);
    return rc;
}

/* ---- Usage / Cleanup ---- */

struct du_ctx {
    int64_t size, inodes;
    struct {
        dev_t dev;
        ino_t ino;
    } * seen;
    size_t seen_count, seen_cap;
};

static __thread struct du_ctx *du_current;

static int du_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path;
    (void)flag;
    (void)ftw;
    struct du_ctx *d = du_current;
    /* Hard links count once, as containerd's fs.DiskUsage counts (dev, inode) pairs. */
    if (!S_ISDIR(st->st_mode) && st->st_nlink > 1) {
        for (size_t i = 0; i < d->seen_count; i++)
            if (d->seen[i].dev == st->st_dev && d->seen[i].ino == st->st_ino)
                return 0;
        if (d->seen_count == d->seen_cap) {
            size_t cap = d->seen_cap ? d->seen_cap * 2 : 64;
            void *grown = realloc(d->seen, cap * sizeof(*d->seen));
            if (!grown)
                return -ENOMEM;
            d->seen = grown;
            d->seen_cap = cap;
        }
        d->seen[d->seen_count].dev = st->st_dev;
        d->seen[d->seen_count].ino = st->st_ino;
        d->seen_count++;
    }
    d->inodes++;
    d->size += (int64_t)st->st_blocks * 512;
    return 0;
}

int snapshotter_usage(struct snapshotter *s, const struct snapshot_call *call, const char *key, int64_t *size,
                      int64_t *inodes, struct vs_error *err)
{
    (void)call;
    *size = 0;
    *inodes = 0;
    pthread_mutex_lock(&s->lock);
    struct snap_row row;
    int rc = get_row(s, key ? key : "", &row, err);
    if (rc == 0 && row.kind == SNAPSHOT_KIND_COMMITTED) {
        sqlite3_stmt *st;
        rc = store_prepare(
            s, &st, "SELECT file_size, inodes FROM layers WHERE snapshot_id = ? AND format = 'erofs'", err);
        if (rc == 0) {
            sqlite3_bind_int64(st, 1, row.id);
            int step = sqlite3_step(st);
            if (step == SQLITE_ROW) {
                *size = sqlite3_column_int64(st, 0);
                *inodes = sqlite3_column_int64(st, 1);
            } else if (step != SQLITE_DONE) {
                rc = store_fail(s, err, "snapshot '%s': reading its layer", key);
            }
            sqlite3_finalize(st);
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == 0 && row.kind == SNAPSHOT_KIND_ACTIVE) {
        char upper[PATH_MAX];
        snap_dir(s, row.id, "fs", upper, sizeof(upper));
        struct du_ctx d = {0};
        du_current = &d;
        int r = nftw(upper, du_entry, 32, FTW_PHYS | FTW_MOUNT);
        du_current = NULL;
        if (r != 0)
            rc = vs_fail(err, r < 0 ? -errno : r, "snapshot '%s': measuring '%s': %s", key, upper,
                         strerror(r < 0 ? errno : -r));
        *size = d.size;
        *inodes = d.inodes;
        free(d.seen);
    }
    snap_row_free(&row);
    return rc;
}

int snapshotter_cleanup(struct snapshotter *s, const struct snapshot_call *call, struct vs_error *err)
{
    (void)call;
    struct orphans o = {0};
    pthread_mutex_lock(&s->lock);
    int rc = host_layers_sync(s, err);
    if (rc == 0)
        rc = host_layers_reconcile(s, err);
    if (rc == 0)
        rc = collect_orphans(s, s->commits_in_flight == 0, &o, err);
    pthread_mutex_unlock(&s->lock);
    orphans_remove(&o);
    return rc < 0 ? vs_error_prefix(err, "cleanup of '%s'", s->root) : 0;
}
