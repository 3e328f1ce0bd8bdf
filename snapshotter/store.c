/* The SQLite store: <root>/state.db in WAL mode with foreign keys, a schema_version table and migrations run on
 * open. Every access happens under the snapshotter's lock (one connection, serialized). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "snapshotter/snapshot_internal.h"

/* Migration n brings the schema from version n to n + 1. Append, never edit a released one. */
static const char *const migrations[] = {
    /* 0 -> 1: snapshots, labels, layers. Ids are AUTOINCREMENT so a removed snapshot's dir or a layer's mount
     * name is never handed out again (a leftover of a crash can not be mistaken for a new snapshot's). */
    "CREATE TABLE snapshots ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  key TEXT NOT NULL UNIQUE,"
    "  kind INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),"
    "  parent_id INTEGER REFERENCES snapshots(id),"
    "  created_ns INTEGER NOT NULL,"
    "  updated_ns INTEGER NOT NULL"
    ");"
    "CREATE INDEX snapshots_parent ON snapshots(parent_id);"
    "CREATE TABLE labels ("
    "  snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,"
    "  key TEXT NOT NULL,"
    "  value TEXT NOT NULL,"
    "  PRIMARY KEY (snapshot_id, key)"
    ");"
    "CREATE TABLE layers ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  snapshot_id INTEGER NOT NULL UNIQUE REFERENCES snapshots(id) ON DELETE CASCADE,"
    "  path TEXT NOT NULL UNIQUE,"
    "  format TEXT NOT NULL,"
    "  source TEXT NOT NULL,"
    "  source_digest TEXT NOT NULL,"
    "  verity INTEGER NOT NULL,"
    "  hash_algorithm TEXT,"
    "  data_block_size INTEGER,"
    "  hash_block_size INTEGER,"
    "  salt TEXT,"
    "  verity_format INTEGER,"
    "  superblock INTEGER,"
    "  data_blocks INTEGER,"
    "  hash_offset INTEGER,"
    "  root_hash TEXT,"
    "  image_size INTEGER NOT NULL,"
    "  file_size INTEGER NOT NULL,"
    "  inodes INTEGER NOT NULL"
    ");",
    /* 1 -> 2: a layer may exist in several formats (erofs from Commit, tarfs for the kata-tardev dialect from the
     * blob path): one row per (snapshot, format) instead of one per snapshot. The verity parameters are fixed per
     * format (tarfs: tardev's; erofs: the daemon's), so (snapshot, format) is the conversion's identity. */
    "CREATE TABLE layers_v2 ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,"
    "  path TEXT NOT NULL UNIQUE,"
    "  format TEXT NOT NULL,"
    "  source TEXT NOT NULL,"
    "  source_digest TEXT NOT NULL,"
    "  verity INTEGER NOT NULL,"
    "  hash_algorithm TEXT,"
    "  data_block_size INTEGER,"
    "  hash_block_size INTEGER,"
    "  salt TEXT,"
    "  verity_format INTEGER,"
    "  superblock INTEGER,"
    "  data_blocks INTEGER,"
    "  hash_offset INTEGER,"
    "  root_hash TEXT,"
    "  image_size INTEGER NOT NULL,"
    "  file_size INTEGER NOT NULL,"
    "  inodes INTEGER NOT NULL,"
    "  UNIQUE (snapshot_id, format)"
    ");"
    "INSERT INTO layers_v2 SELECT * FROM layers;"
    "DROP TABLE layers;"
    "ALTER TABLE layers_v2 RENAME TO layers;",
    /* 2 -> 3: where a layer came from. source is 'directory' (the active snapshot's upper dir at Commit) or 'blob'
     * (the layer blob read from containerd's content store: reproducible, equal to `veritysnap convert`);
     * blob_digest names that blob; diff_id is the sha256 of the uncompressed tar (blob source only). */
    "ALTER TABLE layers ADD COLUMN blob_digest TEXT;"
    "ALTER TABLE layers ADD COLUMN diff_id TEXT;",
};

#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

int store_fail(struct snapshotter *s, struct vs_error *err, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    int ext = sqlite3_extended_errcode(s->db);
    int code = ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY ? -EEXIST
               : (ext & 0xff) == SQLITE_BUSY                                          ? -EAGAIN
                                                                                       : -EIO;
    return vs_fail(err, code, "%s: store: %s", what, sqlite3_errmsg(s->db));
}

int store_exec(struct snapshotter *s, const char *sql, const char *what, struct vs_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = vs_fail(err, -EIO, "%s: store: %s", what, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return rc;
    }
    return 0;
}

int store_prepare(struct snapshotter *s, sqlite3_stmt **st, const char *sql, struct vs_error *err)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
        return vs_fail(err, -EIO, "store: preparing '%.60s...': %s", sql, sqlite3_errmsg(s->db));
    return 0;
}

static int schema_version(struct snapshotter *s, int *version, struct vs_error *err)
{
    int rc = store_exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                        "creating the schema_version table", err);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st;
    rc = store_prepare(s, &st, "SELECT version FROM schema_version", err);
    if (rc < 0)
        return rc;
    *version = 0;
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *version = sqlite3_column_int(st, 0);
    else if (step != SQLITE_DONE)
        rc = store_fail(s, err, "reading the schema version");
    sqlite3_finalize(st);
    return rc;
}

static int migrate(struct snapshotter *s, struct vs_error *err)
{
    int rc = store_exec(s, "BEGIN IMMEDIATE", "starting the migration", err);
    if (rc < 0)
        return rc;
    int version = 0;
    rc = schema_version(s, &version, err);
    if (rc == 0 && version > SCHEMA_VERSION)
        rc = vs_fail(err, -EPROTO,
                     "state.db has schema version %d, newer than this veritysnap's %d: refusing to touch it",
                     version, SCHEMA_VERSION);
    for (int v = version; rc == 0 && v < SCHEMA_VERSION; v++) {
        char what[64];
        snprintf(what, sizeof(what), "migrating the schema from version %d", v);
        rc = store_exec(s, migrations[v], what, err);
    }
    if (rc == 0 && version != SCHEMA_VERSION) {
        char sql[128];
        snprintf(sql, sizeof(sql), "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%d)",
                 SCHEMA_VERSION);
        rc = store_exec(s, sql, "recording the schema version", err);
    }
    if (rc == 0)
        return store_exec(s, "COMMIT", "committing the migration", err);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int store_open(struct snapshotter *s, struct vs_error *err)
{
    size_t len = strlen(s->root) + 16;
    char *path = malloc(len);
    if (!path)
        return vs_fail(err, -ENOMEM, "out of memory");
    snprintf(path, len, "%s/state.db", s->root);
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = vs_fail(err, -EIO, "opening the store %s: %s", path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        sqlite3_close(s->db);
        s->db = NULL;
        free(path);
        return rc;
    }
    free(path);
    sqlite3_busy_timeout(s->db, 5000);
    rc = store_exec(s, "PRAGMA journal_mode=WAL", "setting WAL mode", err);
    if (rc == 0)
        rc = store_exec(s, "PRAGMA foreign_keys=ON", "enabling foreign keys", err);
    if (rc == 0)
        rc = store_exec(s, "PRAGMA synchronous=FULL", "setting synchronous mode", err);
    if (rc == 0)
        rc = migrate(s, err);
    if (rc < 0) {
        sqlite3_close(s->db);
        s->db = NULL;
    }
    return rc;
}

void store_close(struct snapshotter *s)
{
    if (s->db)
        sqlite3_close(s->db);
    s->db = NULL;
}

void layer_row_free(struct layer_row *row)
{
    free(row->path);
    free(row->key);
    memset(row, 0, sizeof(*row));
}

static char *dup_text(sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    return strdup(t ? (const char *)t : "");
}

int store_layer_by_snapshot(struct snapshotter *s, int64_t snapshot_id, struct layer_row *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "SELECT l.id, l.path, s.key, l.verity, l.hash_algorithm, l.data_block_size, "
                           "l.hash_block_size, l.salt, l.verity_format, l.superblock, l.data_blocks, l.hash_offset, "
                           "l.root_hash FROM layers l JOIN snapshots s ON s.id = l.snapshot_id "
                           "WHERE l.snapshot_id = ? AND l.format = 'erofs'",
                           err);
    if (rc < 0)
        return rc;
    sqlite3_bind_int64(st, 1, snapshot_id);
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = vs_fail(err, -ENOENT, "no layer recorded for snapshot #%lld", (long long)snapshot_id);
    } else if (step != SQLITE_ROW) {
        rc = store_fail(s, err, "reading the layer of snapshot #%lld", (long long)snapshot_id);
    } else {
        out->id = sqlite3_column_int64(st, 0);
        out->snapshot_id = snapshot_id;
        out->path = dup_text(st, 1);
        out->key = dup_text(st, 2);
        out->verity = sqlite3_column_int(st, 3) != 0;
        if (out->verity) {
            struct verity_layout *l = &out->layout;
            const unsigned char *alg = sqlite3_column_text(st, 4);
            snprintf(l->params.hash_algorithm, sizeof(l->params.hash_algorithm), "%s", alg ? (const char *)alg : "");
            l->params.data_block_size = (uint32_t)sqlite3_column_int(st, 5);
            l->params.hash_block_size = (uint32_t)sqlite3_column_int(st, 6);
            const unsigned char *salt = sqlite3_column_text(st, 7);
            int n = salt && *salt ? vs_hex_decode((const char *)salt, l->params.salt, sizeof(l->params.salt)) : 0;
            l->params.salt_size = n > 0 ? (uint32_t)n : 0;
            l->params.format = (uint32_t)sqlite3_column_int(st, 8);
            l->params.superblock = sqlite3_column_int(st, 9) != 0;
            l->data_blocks = (uint64_t)sqlite3_column_int64(st, 10);
            l->hash_offset = (uint64_t)sqlite3_column_int64(st, 11);
            const unsigned char *root = sqlite3_column_text(st, 12);
            n = root ? vs_hex_decode((const char *)root, l->root_hash, sizeof(l->root_hash)) : -1;
            l->digest_size = n > 0 ? (uint32_t)n : 0;
            if (n <= 0)
                rc = vs_fail(err, -EBADMSG, "layer %s of snapshot '%s': the store holds no valid root hash",
                             out->path, out->key);
        }
        if (rc == 0 && (!out->path || !out->key))
            rc = vs_fail(err, -ENOMEM, "out of memory");
    }
    sqlite3_finalize(st);
    if (rc < 0)
        layer_row_free(out);
    return rc;
}

int64_t snap_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int store_snapshot_insert(struct snapshotter *s, const char *key, int kind, int64_t parent_id, int64_t *id,
                          struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(
        s, &st, "INSERT INTO snapshots (key, kind, parent_id, created_ns, updated_ns) VALUES (?, ?, ?, ?, ?)", err);
    if (rc < 0)
        return rc;
    int64_t now = snap_now_ns();
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, kind);
    if (parent_id)
        sqlite3_bind_int64(st, 3, parent_id);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int64(st, 5, now);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = store_fail(s, err, "snapshot '%s': recording it", key);
    sqlite3_finalize(st);
    if (rc == 0)
        *id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

int store_layer_insert(struct snapshotter *s, const struct layer_record *rec, struct vs_error *err)
{
    sqlite3_stmt *st;
    int rc = store_prepare(s, &st,
                           "INSERT INTO layers (snapshot_id, path, format, source, source_digest, verity, "
                           "hash_algorithm, data_block_size, hash_block_size, salt, verity_format, superblock, "
                           "data_blocks, hash_offset, root_hash, image_size, file_size, inodes, blob_digest, diff_id) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           err);
    if (rc < 0)
        return rc;
    const struct layer_file_result *res = rec->result;
    const struct verity_layout *l = &res->layout;
    char salt[2 * VERITY_MAX_SALT + 1] = "";
    sqlite3_bind_int64(st, 1, rec->snapshot_id);
    sqlite3_bind_text(st, 2, rec->path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, rec->format, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, rec->source, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, rec->source_digest, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, res->verity);
    if (res->verity) {
        vs_hex_encode(l->params.salt, l->params.salt_size, salt);
        sqlite3_bind_text(st, 7, l->params.hash_algorithm, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 8, l->params.data_block_size);
        sqlite3_bind_int64(st, 9, l->params.hash_block_size);
        sqlite3_bind_text(st, 10, salt, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 11, l->params.format);
        sqlite3_bind_int(st, 12, l->params.superblock);
        sqlite3_bind_int64(st, 13, (sqlite3_int64)l->data_blocks);
        sqlite3_bind_int64(st, 14, (sqlite3_int64)l->hash_offset);
        sqlite3_bind_text(st, 15, rec->root_hex, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 16, (sqlite3_int64)res->image.image_size);
    sqlite3_bind_int64(st, 17, (sqlite3_int64)res->file_size);
    sqlite3_bind_int64(st, 18, (sqlite3_int64)res->image.entries);
    if (rec->blob_digest)
        sqlite3_bind_text(st, 19, rec->blob_digest, -1, SQLITE_STATIC);
    if (rec->diff_id)
        sqlite3_bind_text(st, 20, rec->diff_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = store_fail(s, err, "recording layer %s", rec->path);
    sqlite3_finalize(st);
    return rc;
}
