/* The blob path: a layer converted in one pass from its blob in containerd's content store, so its root hash
 * is the one `veritysnap convert` gives offline for the same blob.
 *
 * At Prepare, containerd's unpacker passes the labels containerd.io/snapshot.ref=<chain ID> and (CRI with
 * snapshot annotations, `veritysnap pull`) containerd.io/snapshot/cri.layer-digest=<blob digest>. When the
 * blob is already in the content store, the layer is converted from Content.Read, its diff ID checked against
 * the chain ID (sha256(<parent chain ID> + " " + <diff ID>), the diff ID itself for a first layer), committed
 * with the ref label and the backend parent containerd asked for, and Prepare answers ALREADY_EXISTS:
 * containerd's metadata layer then walks us with labels."containerd.io/snapshot.ref"==<chain
 * ID>,parent=="<backend parent>" and records the first committed match under the chain ID, skipping fetch and
 * apply.
 *
 * Namespaces: through containerd 1.6 the proxy backend receives NO containerd-namespace metadata on Prepare
 * (the metadata layer calls it without one); the namespace is only in the backend key, which the metadata
 * layer builds as "<ns>/<sequence>/<key>". So the content store's namespace is parsed from the key, and the
 * call's metadata is only a fallback for keys of another shape. */
#include "snapshotter/blob_ingest.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/vs_digest.h"
#include "common/vs_log.h"
#include "snapshotter/snapshot_internal.h"

/* A conversion in flight, identified by (chain ID, backend parent): what concurrent Prepares wait for. */
struct blob_job {
    char *id;
    struct blob_job *next;
};

struct blob_ingest {
    struct snapshotter_content content;
    struct blob_job *jobs; /* under the snapshotter's lock */
    pthread_cond_t done;   /* signalled (with the snapshotter's lock) when a job ends */
    pthread_mutex_t count_lock;
    uint64_t blob_reads; /* blobs read from containerd's content store (one per conversion pass) */
    uint64_t blob_conversions, directory_conversions, tarfs_conversions; /* erofs from blobs, erofs from
                                                                          * directories, tarfs (from blobs) */
};

int blob_ingest_new(const struct snapshotter_content *content, struct blob_ingest **out, struct vs_error *err)
{
    *out = NULL;
    struct blob_ingest *b = calloc(1, sizeof(*b));
    if (!b)
        return vs_fail(err, -ENOMEM, "out of memory");
    if (content)
        b->content = *content;
    pthread_cond_init(&b->done, NULL);
    pthread_mutex_init(&b->count_lock, NULL);
    *out = b;
    return 0;
}

void blob_ingest_free(struct blob_ingest *b)
{
    if (!b)
        return;
    pthread_cond_destroy(&b->done);
    pthread_mutex_destroy(&b->count_lock);
    free(b);
}

void blob_ingest_count(struct snapshotter *s, bool blob, const char *format, const char *key,
                       const char *root_hash)
{
    struct blob_ingest *b = s->blob;
    if (!b)
        return;
    bool tarfs = format && strcmp(format, "tarfs") == 0;
    pthread_mutex_lock(&b->count_lock);
    if (tarfs)
        b->tarfs_conversions++;
    else if (blob)
        b->blob_conversions++;
    else
        b->directory_conversions++;
    char nb[32], nd[32], nt[32], nr[32];
    snprintf(nr, sizeof(nr), "%llu", (unsigned long long)b->blob_reads);
    snprintf(nb, sizeof(nb), "%llu", (unsigned long long)b->blob_conversions);
    snprintf(nd, sizeof(nd), "%llu", (unsigned long long)b->directory_conversions);
    snprintf(nt, sizeof(nt), "%llu", (unsigned long long)b->tarfs_conversions);
    pthread_mutex_unlock(&b->count_lock);
    vs_log(VS_LOG_INFO, "layer converted", "source", blob ? "blob" : "directory", "format",
           format ? format : "erofs", "key", key, "root_hash", root_hash ? root_hash : "", "blob_conversions",
           nb, "directory_conversions", nd, "tarfs_conversions", nt, "blob_reads", nr, NULL);
}

static void count_blob_read(struct blob_ingest *b)
{
    pthread_mutex_lock(&b->count_lock);
    b->blob_reads++;
    pthread_mutex_unlock(&b->count_lock);
}

/* ---- helpers ---- */

static const char *label_value(const struct snapshot_label *labels, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i].key && strcmp(labels[i].key, key) == 0)
            return labels[i].value;
    return NULL;
}

static bool is_sha256_digest(const char *d)
{
    if (!d || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 71)
        return false;
    for (const char *p = d + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* "<ns>/<digits>/<rest>": the namespace and where <rest> starts; false for keys of another shape. */
static bool split_backend_key(const char *key, char *ns, size_t ns_cap, const char **rest)
{
    const char *slash = strchr(key, '/');
    if (!slash || slash == key || (size_t)(slash - key) >= ns_cap)
        return false;
    const char *p = slash + 1;
    if (*p < '0' || *p > '9')
        return false;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p != '/')
        return false;
    memcpy(ns, key, (size_t)(slash - key));
    ns[slash - key] = '\0';
    if (rest)
        *rest = p + 1;
    return true;
}

static void namespace_of(const struct snapshot_call *call, const char *key, char *ns, size_t cap)
{
    if (split_backend_key(key, ns, cap, NULL))
        return;
    snprintf(ns, cap, "%s", call && call->namespace_name ? call->namespace_name : "");
}

/* sha256(parent + " " + diff) as "sha256:<hex>"; the diff ID itself without a parent (OCI image spec). */
static void chain_id_of(const char *parent_chain, const char *diff_id, char out[80])
{
    if (!parent_chain || !parent_chain[0]) {
        snprintf(out, 80, "%s", diff_id);
        return;
    }
    char buf[200];
    int n = snprintf(buf, sizeof(buf), "%s %s", parent_chain, diff_id);
    uint8_t h[VS_SHA256_LEN];
    vs_sha256(buf, (size_t)n, h);
    char hex[2 * VS_SHA256_LEN + 1];
    vs_hex_encode(h, VS_SHA256_LEN, hex);
    snprintf(out, 80, "sha256:%s", hex);
}

/* The chain ID of committed snapshot id: its ref label, else a "sha256:..." last component of its name (what
 * containerd's Commit(name=<chain ID>) becomes in the backend: "<ns>/<seq>/<chain ID>"). Caller holds the
 * lock. */
static int chain_id_of_snapshot(struct snapshotter *s, int64_t id, char out[80], struct vs_error *err)
{
    out[0] = '\0';
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "SELECT s.key, (SELECT value FROM labels WHERE snapshot_id = s.id AND key = ?) "
                           "FROM snapshots s WHERE s.id = ?",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, SNAPSHOT_LABEL_REF, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *ref = (const char *)sqlite3_column_text(st, 1);
        const char *last = name ? strrchr(name, '/') : NULL;
        last = last ? last + 1 : name;
        if (ref && is_sha256_digest(ref))
            snprintf(out, 80, "%s", ref);
        else if (last && is_sha256_digest(last))
            snprintf(out, 80, "%s", last);
    }
    sqlite3_finalize(st);
    return 0;
}

/* A committed snapshot with ref label chain and parent `parent` ("" for none): its name into found (may be
 * NULL). Caller holds the lock. */
static int find_committed(struct snapshotter *s, const char *chain, const char *parent, bool *exists,
                          char *found, size_t found_cap, struct vs_error *err)
{
    *exists = false;
    if (found && found_cap)
        found[0] = '\0';
    sqlite3_stmt *st;
    int rc =
        store_prepare(s, &st,
                      "SELECT s.key FROM snapshots s JOIN labels l ON l.snapshot_id = s.id AND l.key = ? "
                      "LEFT JOIN snapshots p ON p.id = s.parent_id "
                      "WHERE s.kind = 3 AND l.value = ? AND COALESCE(p.key, '') = ? ORDER BY s.id LIMIT 1",
                      err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, SNAPSHOT_LABEL_REF, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, chain, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, parent ? parent : "", -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    *exists = step == SQLITE_ROW;
    if (step == SQLITE_ROW && found && found_cap)
        snprintf(found, found_cap, "%s", (const char *)sqlite3_column_text(st, 0));
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = store_fail(s, err, "looking for a committed snapshot of %s", chain);
    sqlite3_finalize(st);
    return rc;
}

/* id and kind of snapshot key; -ENOENT when absent. Caller holds the lock. */
static int row_of(struct snapshotter *s, const char *key, int64_t *id, int *kind, struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, "SELECT id, kind FROM snapshots WHERE key = ?", err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        *kind = sqlite3_column_int(st, 1);
    } else {
        rc = step == SQLITE_DONE ? -ENOENT : store_fail(s, err, "looking up snapshot '%s'", key);
    }
    sqlite3_finalize(st);
    return rc;
}

/* Reads blob digest from ns's content store into a layer file at out_path. A failure of the stream (gRPC,
 * size, digest) is the cause of whatever the converter then saw, so it is reported in preference. */
/* Builds the layer file at out_path from the blob in containerd's content store; with tarfs_path, also its
 * tarfs form from the same read (kata-tardev sockets need both). */
static int convert_blob(struct snapshotter *s, const char *ns, const char *digest, int64_t size,
                        const char *out_path, const struct layer_file_options *opts,
                        struct layer_file_result *res, const char *tarfs_path,
                        struct layer_file_result *tarfs_res, struct vs_error *err)
{
    const struct snapshotter_content *c = &s->blob->content;
    int fd = -1;
    void *stream = NULL;
    int rc = c->open(c->ctx, ns, digest, size, &fd, &stream, err);
    if (rc < 0)
        return rc;
    count_blob_read(s->blob);
    rc = tarfs_path ? layer_file_build_fd_both(fd, out_path, tarfs_path, opts, res, tarfs_res, err)
                    : layer_file_build_fd(fd, out_path, opts, res, err);
    struct vs_error cerr;
    vs_error_clear(&cerr);
    int crc = c->close(c->ctx, stream, rc == 0, &cerr);
    if (crc < 0) {
        if (rc == 0) {
            char side[PATH_MAX + 16];
            snprintf(side, sizeof(side), "%s.dmverity", out_path);
            unlink(out_path);
            unlink(side);
            if (tarfs_path)
                unlink(tarfs_path);
        }
        if (err)
            *err = cerr;
        rc = crc;
    }
    return rc;
}

static int put_label(struct snapshotter *s, int64_t id, const char *key, const char *value,
                     struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st, "INSERT OR REPLACE INTO labels (snapshot_id, key, value) VALUES (?, ?, ?)",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = store_fail(s, err, "writing label '%s'", key);
    sqlite3_finalize(st);
    return rc;
}

/* ---- jobs: one conversion per id at a time ---- */

static bool job_in_flight(struct blob_ingest *b, const char *id)
{
    for (struct blob_job *q = b->jobs; q; q = q->next)
        if (strcmp(q->id, id) == 0)
            return true;
    return false;
}

/* Caller holds the lock. */
static void job_end(struct snapshotter *s, struct blob_job *job)
{
    struct blob_ingest *b = s->blob;
    for (struct blob_job **p = &b->jobs; *p; p = &(*p)->next) {
        if (*p == job) {
            *p = job->next;
            break;
        }
    }
    pthread_cond_broadcast(&b->done);
}

/* ---- the tarfs form of a committed layer (kata-tardev) ---- */

/* What the tarfs conversion of committed snapshot `key` needs: whether its tarfs row exists, its blob digest
 * (the erofs row's, or the cri.layer-digest label) and its diff ID (the erofs row's, known for blob-path
 * layers). Caller holds the lock. */
static int tarfs_needs(struct snapshotter *s, const char *key, bool *have, char digest[80], char diff_id[80],
                       struct vs_error *err)
{
    *have = false;
    digest[0] = diff_id[0] = '\0';
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "SELECT (SELECT 1 FROM layers WHERE snapshot_id = s.id AND format = 'tarfs'), "
                           "(SELECT blob_digest FROM layers WHERE snapshot_id = s.id AND format = 'erofs'), "
                           "(SELECT diff_id FROM layers WHERE snapshot_id = s.id AND format = 'erofs'), "
                           "(SELECT value FROM labels WHERE snapshot_id = s.id AND key = ?) "
                           "FROM snapshots s WHERE s.key = ? AND s.kind = 3",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_text(st, 1, SNAPSHOT_LABEL_LAYER_DIGEST, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *have = sqlite3_column_type(st, 0) != SQLITE_NULL;
        const char *bd = (const char *)sqlite3_column_text(st, 1),
                   *di = (const char *)sqlite3_column_text(st, 2),
                   *lab = (const char *)sqlite3_column_text(st, 3);
        if (is_sha256_digest(bd))
            snprintf(digest, 80, "%s", bd);
        else if (is_sha256_digest(lab))
            snprintf(digest, 80, "%s", lab);
        if (is_sha256_digest(di))
            snprintf(diff_id, 80, "%s", di);
    } else if (step == SQLITE_DONE) {
        rc = -ENOENT;
    } else {
        rc = store_fail(s, err, "reading the layers of '%s'", key);
    }
    sqlite3_finalize(st);
    return rc;
}

/* Logs a tarfs conversion with its root hash. */
static void count_tarfs(struct snapshotter *s, const char *key)
{
    char root[2 * VERITY_MAX_DIGEST + 1] = "";
    sqlite3_stmt *st;
    pthread_mutex_lock(&s->lock);
    if (store_prepare(s, &st,
                      "SELECT l.root_hash FROM layers l JOIN snapshots s ON s.id = l.snapshot_id "
                      "WHERE s.key = ? AND l.format = 'tarfs'",
                      NULL) == 0) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
            snprintf(root, sizeof(root), "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    blob_ingest_count(s, true, "tarfs", key, root);
}

/* Makes sure committed snapshot `key` has its tarfs row, building it from the layer blob when the blob is in
 * the content store of namespace ns (or of the namespace in key). 0: it has one now; 1: it cannot (no blob
 * digest or diff ID recorded, the blob is gone, or layers/<h> belongs to another snapshot of the same chain
 * ID); <0: the conversion failed. Concurrent calls for one snapshot convert once. No lock held on entry or
 * exit. */
static int ensure_tarfs(struct snapshotter *s, const char *ns, const char *key, struct vs_error *err)
{
    struct blob_ingest *b = s->blob;
    if (!b || !b->content.info)
        return 1;
    char job_id[700], digest[80], diff_id[80];
    snprintf(job_id, sizeof(job_id), "tarfs\n%s", key);
    struct blob_job job = {.id = job_id};
    bool have = false;
    pthread_mutex_lock(&s->lock);
    int rc;
    for (;;) {
        rc = tarfs_needs(s, key, &have, digest, diff_id, err);
        if (rc < 0 || have || !job_in_flight(b, job_id))
            break;
        pthread_cond_wait(&b->done, &s->lock);
    }
    if (rc == 0 && !have && digest[0] && diff_id[0]) {
        job.next = b->jobs;
        b->jobs = &job;
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == -ENOENT)
        return 1;
    if (rc < 0 || have)
        return rc;
    if (!digest[0] || !diff_id[0]) {
        vs_log(VS_LOG_WARN, "kata-tardev: no tarfs form possible for a layer that did not come from its blob",
               "key", key, NULL);
        return 1;
    }

    char key_ns[256] = "";
    split_backend_key(key, key_ns, sizeof(key_ns), NULL);
    const char *try_ns[2] = {ns, key_ns};
    rc = 1;
    for (int i = 0; i < 2 && rc == 1; i++) {
        if (!try_ns[i] || !try_ns[i][0] || (i == 1 && try_ns[0] && strcmp(try_ns[0], try_ns[1]) == 0))
            continue;
        int64_t size = 0;
        struct vs_error ierr;
        vs_error_clear(&ierr);
        if (b->content.info(b->content.ctx, try_ns[i], digest, &size, &ierr) < 0)
            continue;
        int fd = -1;
        void *stream = NULL;
        rc = b->content.open(b->content.ctx, try_ns[i], digest, size, &fd, &stream, err);
        if (rc == 0)
            count_blob_read(b);
        if (rc < 0)
            break;
        rc = snapshotter_layer_add_tarfs(s, key, fd, digest, diff_id, err);
        struct vs_error cerr;
        vs_error_clear(&cerr);
        int crc = b->content.close(b->content.ctx, stream, rc == 0, &cerr);
        /* The tarfs row is recorded only when the bytes gave the recorded diff ID, so a stream error after
         * that (trailing bytes of a compressed blob) does not make the file wrong; a stream error before is
         * the cause. */
        if (rc < 0 && crc < 0 && err)
            *err = cerr;
        if (rc == -EEXIST) {
            vs_log(VS_LOG_WARN, "kata-tardev: the tarfs file of this chain ID belongs to another snapshot",
                   "key", key, "error", err ? err->message : "", NULL);
            rc = 1;
            break;
        }
        if (rc < 0)
            vs_error_prefix(err, "tarfs form of layer '%s' from blob %s (namespace %s)", key, digest,
                            try_ns[i]);
        else
            count_tarfs(s, key);
    }
    if (rc == 1)
        vs_log(VS_LOG_WARN, "kata-tardev: the layer blob is not in containerd's content store, no tarfs form",
               "key", key, "digest", digest, NULL);
    pthread_mutex_lock(&s->lock);
    job_end(s, &job);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int blob_ingest_tarfs_chain(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                            const char *parent, struct vs_error *err)
{
    if (!s->blob || !s->blob->content.info)
        return 0;
    char ns[256];
    namespace_of(call, key ? key : "", ns, sizeof(ns));
    /* The chain's committed keys, topmost first; from key's own parent when no parent is given (Mounts). */
    char **keys = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "WITH RECURSIVE chain(id, key, parent_id, depth) AS ("
                           " SELECT id, key, parent_id, 0 FROM snapshots WHERE key = ?1 AND ?2 = 1"
                           " UNION ALL SELECT id, key, parent_id, 0 FROM snapshots"
                           "  WHERE ?2 = 0 AND id = (SELECT parent_id FROM snapshots WHERE key = ?1)"
                           " UNION ALL SELECT s.id, s.key, s.parent_id, c.depth + 1 FROM snapshots s"
                           "  JOIN chain c ON s.id = c.parent_id WHERE c.depth < 10000)"
                           " SELECT key FROM chain ORDER BY depth",
                           err);
    if (rc == 0) {
        bool from_parent = parent && parent[0];
        sqlite3_bind_text(st, 1, from_parent ? parent : (key ? key : ""), -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, from_parent ? 1 : 0);
        while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **grown = realloc(keys, cap * sizeof(*keys));
                if (!grown) {
                    rc = vs_fail(err, -ENOMEM, "out of memory");
                    break;
                }
                keys = grown;
            }
            keys[n] = strdup((const char *)sqlite3_column_text(st, 0));
            if (!keys[n])
                rc = vs_fail(err, -ENOMEM, "out of memory");
            else
                n++;
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int r = ensure_tarfs(s, ns, keys[i], err);
        if (r < 0)
            rc = vs_error_prefix(err, "snapshot '%s'", key ? key : "");
    }
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    return rc;
}

/* ---- Prepare ---- */

struct prepare_job {
    const char *key, *parent, *chain, *digest;
    char ns[256];
    char parent_chain[80];
    int64_t parent_id;
    int64_t size;
};

/* Converts, checks and commits the layer of job j (no lock held on entry or exit); with_tarfs (kata-tardev)
 * also builds its tarfs form from the same read of the blob and records it after the commit. */
static int convert_and_commit(struct snapshotter *s, const struct prepare_job *j,
                              const struct snapshot_label *labels, size_t label_count, bool with_tarfs,
                              char *committed, size_t committed_cap, struct vs_error *err)
{
    char tmpdir[PATH_MAX], tmpfile[PATH_MAX + 16], tarfs_file[PATH_MAX + 16];
    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp/blob-XXXXXX", s->root);
    if (!mkdtemp(tmpdir))
        return vs_fail(err, -errno, "creating '%s': %s", tmpdir, strerror(errno));
    snprintf(tmpfile, sizeof(tmpfile), "%s/layer", tmpdir);
    snprintf(tarfs_file, sizeof(tarfs_file), "%s/layer.tarfs", tmpdir);
    struct layer_file_options opts = s->layer;
    opts.tarfs.format = TARFS_FORMAT_EROFS; /* host mounts need EROFS */
    opts.sidecar = true;
    struct layer_file_result res, tarfs_res;
    memset(&res, 0, sizeof(res));
    memset(&tarfs_res, 0, sizeof(tarfs_res));
    int rc = convert_blob(s, j->ns, j->digest, j->size, tmpfile, &opts, &res, with_tarfs ? tarfs_file : NULL,
                          &tarfs_res, err);
    char diff_id[80] = "", computed[80] = "";
    if (rc == 0) {
        vs_digest_format(res.image.diff_id, diff_id);
        chain_id_of(j->parent_chain, diff_id, computed);
        if (strcmp(computed, j->chain) != 0)
            rc = vs_fail(
                err, -EBADMSG,
                "the blob's content has diff ID %s, which gives chain ID %s (parent chain %s), not the %s "
                "the image names: the blob does not match its image",
                diff_id, computed, j->parent_chain[0] ? j->parent_chain : "none", j->chain);
    }
    char root_hex[2 * VERITY_MAX_DIGEST + 1] = "";
    if (rc == 0 && res.verity)
        vs_hex_encode(res.layout.root_hash, res.layout.digest_size, root_hex);

    /* The committed name carries the chain ID, in containerd's "<ns>/<seq>/<name>" shape when the key has it
     * (the sequence containerd gave this Prepare is never handed out again, so the name is unique). */
    const char *rest = NULL;
    char ns_of_key[256];
    if (split_backend_key(j->key, ns_of_key, sizeof(ns_of_key), &rest))
        snprintf(committed, committed_cap, "%.*s%s", (int)(rest - j->key), j->key, j->chain);
    else
        snprintf(committed, committed_cap, "%s", j->chain);

    pthread_mutex_lock(&s->lock);
    bool in_tx = false, renamed = false;
    char rel[160], final[PATH_MAX];
    rel[0] = final[0] = '\0';
    if (rc == 0)
        rc = store_exec(s, "BEGIN IMMEDIATE", "starting a transaction", err);
    in_tx = rc == 0;
    int64_t id = 0;
    if (rc == 0) {
        /* The parent may have been removed while we converted. */
        int64_t pid = 0;
        int kind = 0;
        if (j->parent[0] && (rc = row_of(s, j->parent, &pid, &kind, err)) == -ENOENT)
            rc = vs_fail(err, -ENOENT, "parent '%s' was removed during the conversion", j->parent);
        if (rc == 0 && j->parent[0] && pid != j->parent_id)
            rc = vs_fail(err, -ENOENT, "parent '%s' was replaced during the conversion", j->parent);
    }
    if (rc == 0)
        rc = store_snapshot_insert(s, committed, SNAPSHOT_KIND_COMMITTED, j->parent_id, &id, err);
    for (size_t i = 0; rc == 0 && i < label_count; i++)
        if (labels[i].value && labels[i].value[0])
            rc = put_label(s, id, labels[i].key, labels[i].value, err);
    if (rc == 0 && root_hex[0])
        rc = put_label(s, id, SNAPSHOT_LABEL_ROOT_HASH, root_hex, err);
    if (rc == 0) {
        snprintf(rel, sizeof(rel), "layers/%lld-%.16s.erofs", (long long)id, diff_id + 7);
        snprintf(final, sizeof(final), "%s/%s", s->root, rel);
        rc = store_layer_insert(s,
                                &(struct layer_record){.snapshot_id = id,
                                                       .path = rel,
                                                       .format = "erofs",
                                                       .source = "blob",
                                                       .source_digest = j->digest,
                                                       .blob_digest = j->digest,
                                                       .diff_id = diff_id,
                                                       .result = &res,
                                                       .root_hex = root_hex},
                                err);
    }
    if (rc == 0)
        rc = snap_place_layer_file(s, tmpfile, final, res.verity, &renamed, err);
    if (rc == 0)
        rc = store_exec(s, "COMMIT", "committing", err);
    if (rc < 0) {
        if (in_tx)
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        if (renamed)
            snap_unplace_layer_file(final);
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == 0)
        blob_ingest_count(s, true, "erofs", committed, root_hex);
    if (rc == 0 && with_tarfs) {
        /* The erofs form is committed and right whatever happens here; a failure only leaves the tarfs form
         * to the next kata-tardev call (ensure_tarfs). */
        struct vs_error terr;
        vs_error_clear(&terr);
        if (snapshotter_layer_install_tarfs(s, committed, tarfs_file, &tarfs_res, j->digest, diff_id,
                                            &terr) == 0)
            count_tarfs(s, committed);
        else
            vs_log(VS_LOG_WARN, "blob path: the tarfs form built beside the erofs form was not recorded",
                   "key", committed, "error", terr.message, NULL);
    }
    snap_remove_tree(tmpdir, NULL);
    return rc;
}

int blob_ingest_prepare(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                        const char *parent, const struct snapshot_label *labels, size_t label_count,
                        struct vs_error *err)
{
    struct blob_ingest *b = s->blob;
    if (!b || !b->content.info || !key || !key[0])
        return 1;
    struct prepare_job j = {.key = key, .parent = parent ? parent : ""};
    j.chain = label_value(labels, label_count, SNAPSHOT_LABEL_REF);
    j.digest = label_value(labels, label_count, SNAPSHOT_LABEL_LAYER_DIGEST);
    if (!is_sha256_digest(j.chain) || !is_sha256_digest(j.digest))
        return 1;
    namespace_of(call, key, j.ns, sizeof(j.ns));
    if (!j.ns[0])
        return 1;

    char job_id[400];
    snprintf(job_id, sizeof(job_id), "%s\n%s", j.chain, j.parent);
    struct blob_job job = {.id = job_id};
    char committed[600] = "";
    bool tardev = call && call->dialect == SNAPSHOT_DIALECT_KATA_TARDEV;
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    for (;;) {
        /* Already converted (by an earlier Prepare, or one we waited for): containerd finds it by label and
         * parent. A match from another namespace is fine: containerd records whatever backend snapshot the
         * walk finds, and its garbage collector counts references across namespaces. */
        bool exists = false;
        rc = find_committed(s, j.chain, j.parent, &exists, committed, sizeof(committed), err);
        if (rc < 0)
            break;
        if (exists) {
            rc = vs_fail(err, -EEXIST, "snapshot '%s': layer %s is committed already (blob path)", key,
                         j.chain);
            break;
        }
        if (!job_in_flight(b, job_id))
            break;
        /* another Prepare converts this layer: wait for it */
        vs_log(VS_LOG_INFO, "blob path: waiting for the conversion of this layer by another Prepare", "key",
               key, "chain_id", j.chain, NULL);
        pthread_cond_wait(&b->done, &s->lock);
    }
    if (rc == 0) {
        /* The directory path reports a missing or uncommitted parent, or an existing key, with the right
         * codes. */
        int kind = 0;
        bool key_taken = row_of(s, key, &j.parent_id, &kind, NULL) == 0;
        j.parent_id = 0;
        if (key_taken)
            rc = 1;
        else if (j.parent[0] &&
                 (row_of(s, j.parent, &j.parent_id, &kind, NULL) < 0 || kind != SNAPSHOT_KIND_COMMITTED))
            rc = 1;
        else if (j.parent[0] &&
                 (chain_id_of_snapshot(s, j.parent_id, j.parent_chain, err) < 0 || !j.parent_chain[0])) {
            vs_log(VS_LOG_WARN, "blob path: the parent's chain ID is unknown, taking the directory path",
                   "key", key, "parent", j.parent, NULL);
            rc = 1;
        }
    }
    if (rc == 0) {
        job.next = b->jobs;
        b->jobs = &job;
        s->commits_in_flight++;
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == -EEXIST && tardev && committed[0]) {
        /* Converted already (for another socket, say): the kata-tardev socket needs its tarfs form too. */
        struct vs_error terr;
        vs_error_clear(&terr);
        int trc = ensure_tarfs(s, j.ns, committed, &terr);
        if (trc < 0 && err)
            *err = terr;
        if (trc < 0)
            return vs_error_prefix(err, "snapshot '%s': layer %s", key, j.chain);
    }
    if (rc != 0)
        return rc;

    struct vs_error ierr;
    vs_error_clear(&ierr);
    int irc = b->content.info(b->content.ctx, j.ns, j.digest, &j.size, &ierr);
    if (irc == -ENOENT) {
        rc = 1; /* not fetched yet: the directory path, and Commit converts from the blob */
    } else if (irc < 0) {
        vs_log(VS_LOG_WARN,
               "blob path: containerd's content store cannot be asked, taking the directory path", "key", key,
               "namespace", j.ns, "digest", j.digest, "error", ierr.message, NULL);
        rc = 1;
    } else {
        rc = convert_and_commit(s, &j, labels, label_count, tardev, committed, sizeof(committed), err);
        int trc = 0;
        if (rc == 0 && tardev && (trc = ensure_tarfs(s, j.ns, committed, err)) < 0)
            rc = trc; /* the erofs form stays committed: it is right, only the tarfs form failed */
        if (rc < 0)
            vs_error_prefix(
                err, "snapshot '%s': layer %s (chain ID %s) from containerd's content store (namespace %s)",
                key, j.digest, j.chain, j.ns);
        else
            rc =
                vs_fail(err, -EEXIST, "snapshot '%s': layer %s converted from its blob and committed as '%s'",
                        key, j.chain, committed);
    }

    pthread_mutex_lock(&s->lock);
    s->commits_in_flight--;
    job_end(s, &job);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- Commit ---- */

int blob_ingest_commit(struct snapshotter *s, const char *key, const char *name, int64_t snapshot_id,
                       int64_t parent_id, const struct snapshot_label *labels, size_t label_count,
                       const char *out_path, const struct layer_file_options *opts,
                       struct layer_file_result *res, const char *tarfs_path,
                       struct layer_file_result *tarfs_res, struct blob_commit_source *src,
                       struct vs_error *err)
{
    memset(src, 0, sizeof(*src));
    struct blob_ingest *b = s->blob;
    if (!b || !b->content.info)
        return 1;
    char digest[80] = "", chain[80] = "", parent_chain[80] = "", ns[256] = "";
    /* The digest label was given at Prepare; the chain ID comes with Commit's labels, or Prepare's, or the
     * name. */
    pthread_mutex_lock(&s->lock);
    sqlite3_stmt *st;
    int rc =
        store_prepare(s, &st, "SELECT key, value FROM labels WHERE snapshot_id = ? AND key IN (?, ?)", err);
    if (rc == 0) {
        sqlite3_bind_int64(st, 1, snapshot_id);
        sqlite3_bind_text(st, 2, SNAPSHOT_LABEL_LAYER_DIGEST, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, SNAPSHOT_LABEL_REF, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *k = (const char *)sqlite3_column_text(st, 0),
                       *v = (const char *)sqlite3_column_text(st, 1);
            if (k && v && strcmp(k, SNAPSHOT_LABEL_LAYER_DIGEST) == 0)
                snprintf(digest, sizeof(digest), "%s", v);
            else if (k && v)
                snprintf(chain, sizeof(chain), "%s", v);
        }
        sqlite3_finalize(st);
    }
    if (rc == 0 && parent_id)
        rc = chain_id_of_snapshot(s, parent_id, parent_chain, err);
    pthread_mutex_unlock(&s->lock);
    if (rc < 0)
        return rc;
    const char *given = label_value(labels, label_count, SNAPSHOT_LABEL_REF);
    const char *last = strrchr(name, '/');
    last = last ? last + 1 : name;
    if (is_sha256_digest(given))
        snprintf(chain, sizeof(chain), "%s", given);
    else if (!is_sha256_digest(chain) && is_sha256_digest(last))
        snprintf(chain, sizeof(chain), "%s", last);
    if (!is_sha256_digest(digest))
        return 1;
    namespace_of(NULL, key, ns, sizeof(ns));
    if (!ns[0])
        return 1;
    int64_t size = 0;
    struct vs_error ierr;
    vs_error_clear(&ierr);
    int irc = b->content.info(b->content.ctx, ns, digest, &size, &ierr);
    if (irc < 0) {
        vs_log(
            VS_LOG_WARN,
            "commit: the layer blob is not readable in containerd's content store, converting the directory",
            "key", key, "namespace", ns, "digest", digest, "error", ierr.message, NULL);
        return 1;
    }
    rc = convert_blob(s, ns, digest, size, out_path, opts, res, tarfs_path, tarfs_res, err);
    char diff_id[80] = "", computed[80] = "";
    if (rc == 0) {
        vs_digest_format(res->image.diff_id, diff_id);
        /* Without a known parent chain ID only a first layer can be checked. */
        if (is_sha256_digest(chain) && (!parent_id || parent_chain[0])) {
            chain_id_of(parent_chain, diff_id, computed);
            if (strcmp(computed, chain) != 0)
                rc = vs_fail(
                    err, -EBADMSG,
                    "the blob's content has diff ID %s, which gives chain ID %s, not the %s the image names",
                    diff_id, computed, chain);
        }
        if (rc < 0) {
            char side[PATH_MAX + 16];
            snprintf(side, sizeof(side), "%s.dmverity", out_path);
            unlink(out_path);
            unlink(side);
            if (tarfs_path)
                unlink(tarfs_path);
        }
    }
    if (rc < 0)
        return vs_error_prefix(err,
                               "commit of snapshot '%s' as '%s': layer %s from containerd's content store "
                               "(namespace %s)",
                               key, name, digest, ns);
    src->blob = true;
    snprintf(src->blob_digest, sizeof(src->blob_digest), "%s", digest);
    snprintf(src->diff_id, sizeof(src->diff_id), "%s", diff_id);
    return 0;
}
