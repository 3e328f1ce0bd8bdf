/* Internal to snapshotter/: the handle, the store helpers, the filter matcher and the host layer mounts
 * shared by the files of the snapshot model. Not part of the folder's API (see snapshotter.h). */
#ifndef VERITYSNAP_SNAPSHOTTER_SNAPSHOT_INTERNAL_H
#define VERITYSNAP_SNAPSHOTTER_SNAPSHOT_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/vs_log.h"
#include "snapshotter/snapshotter.h"

/* A layer mounted on the host under <root>/mnt/<id>, through a dm-verity device or not. */
struct host_layer {
    int64_t layer_id;
    bool dm; /* mounted from /dev/mapper/<dm_prefix><id> */
};

struct snapshotter {
    char *root; /* realpath of the state root */
    enum snapshotter_verity_mode verity;
    struct layer_file_options layer;
    bool force_loop;
    bool index_off; /* the kernel's overlay knows index=off (containerd passes it when it does) */
    char dm_prefix[40];
    sqlite3 *db;
    pthread_mutex_t lock; /* the store, the host layer table; never held during a conversion */
    struct host_layer *mounted;
    size_t mounted_count, mounted_cap;
    int commits_in_flight;    /* conversions writing under tmp/: cleanup leaves tmp/ alone meanwhile */
    struct blob_ingest *blob; /* the blob path (blob_ingest.c) */
    char *tardev_prefix;      /* kata-tardev layer-src-prefix override, NULL: <root>/layers (dialect.c) */
};

/* One layer row, enough to mount it. */
struct layer_row {
    int64_t id;
    int64_t snapshot_id;
    char *path; /* relative to the root: layers/<name> */
    char *key;  /* the committed snapshot's name, for messages */
    bool verity;
    struct verity_layout layout;
};

void layer_row_free(struct layer_row *row);

int64_t snap_now_ns(void);

/* ---- store.c ---- */

/* Opens <root>/state.db (WAL, foreign keys, busy timeout) and runs the migrations up to the current version.
 */
int store_open(struct snapshotter *s, struct vs_error *err);
void store_close(struct snapshotter *s);

/* Runs sql (no results) or fails with "<what>: <sqlite message>". */
int store_exec(struct snapshotter *s, const char *sql, const char *what, struct vs_error *err);

/* Prepares a statement or fails naming what. */
int store_prepare(struct snapshotter *s, sqlite3_stmt **st, const char *sql, struct vs_error *err);

/* A code and message from the last sqlite error: -EEXIST for a unique constraint, -EIO otherwise. */
int store_fail(struct snapshotter *s, struct vs_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads a layer row by its id or by its snapshot's id; -ENOENT when none. */
int store_layer_by_snapshot(struct snapshotter *s, int64_t snapshot_id, struct layer_row *out,
                            struct vs_error *err);

/* Fsyncs <root>/layers after a layer file was renamed into it, so the name survives a crash before the row
 * that points at it commits. */
int snap_sync_layers_dir(struct snapshotter *s, struct vs_error *err);

/* Moves a finished layer file (and its <file>.dmverity when sidecar) from tmp to final in <root>/layers and
 * syncs the directory. Called under the lock inside the transaction that records the file, so that a cleanup
 * never sees the file without its row. *placed tells whether final exists now (snap_unplace_layer_file on
 * rollback). */
int snap_place_layer_file(struct snapshotter *s, const char *tmp, const char *final, bool sidecar,
                          bool *placed, struct vs_error *err);

/* Removes a layer file placed by snap_place_layer_file (and its sidecar, if any) after a rolled-back
 * transaction. */
void snap_unplace_layer_file(const char *final);

/* A converted layer file to record: which snapshot, where, what format, from what source. */
struct layer_record {
    int64_t snapshot_id;
    const char *path;          /* relative to the root: layers/<name> */
    const char *format;        /* "erofs" or "tarfs" */
    const char *source;        /* "blob" or "directory" */
    const char *source_digest; /* the blob's digest, or the walked directory's digest */
    const char *blob_digest;   /* blob path only, else NULL */
    const char *diff_id;       /* blob path only, else NULL */
    const struct layer_file_result *result;
    const char *root_hex; /* "" without verity */
};

/* Inserts a snapshots row of the given kind (parent_id 0: none) created and updated now, inside the caller's
 * transaction; *id is its row id. Fails naming the key. */
int store_snapshot_insert(struct snapshotter *s, const char *key, int kind, int64_t parent_id, int64_t *id,
                          struct vs_error *err);

/* Inserts a layers row (inside the caller's transaction); fails naming the path. */
int store_layer_insert(struct snapshotter *s, const struct layer_record *rec, struct vs_error *err);

/* ---- filter.c ---- */

struct snap_filter;

/* Parses containerd filter strings (ORed; commas AND inside one); -EINVAL naming the bad input. */
int snap_filter_parse(const char *const *filters, size_t count, struct snap_filter **out,
                      struct vs_error *err);
bool snap_filter_match(const struct snap_filter *f, const struct snapshot_info *info);

/* "active", "view" or "committed" (containerd's names, also the filters' kind values); NULL for anything
 * else. */
const char *snap_kind_name(int kind);
void snap_filter_free(struct snap_filter *f);

/* ---- host_mount.c ---- */

/* Makes sure the layer is mounted at <root>/mnt/<id> (verity per the configured mode); caller holds the lock.
 */
int host_layer_ensure(struct snapshotter *s, const struct layer_row *layer, struct vs_error *err);

/* Unmounts every layer mount of ours that no active or view snapshot needs any more; caller holds the lock.
 */
int host_layers_sync(struct snapshotter *s, struct vs_error *err);

/* At open: adopts the mounts under <root>/mnt/ that /proc/self/mountinfo lists, unmounts strays, and removes
 * dm-verity devices of this root that nothing mounts. */
int host_layers_reconcile(struct snapshotter *s, struct vs_error *err);

/* Unmounts everything of ours (close does not: mounts outlive the daemon so running containers keep theirs).
 */
void host_layers_forget(struct snapshotter *s);

/* True when path is a mount point (its device differs from its parent's, or mountinfo lists it). */
bool host_is_mountpoint(const char *path);

/* Removes a tree (no following of symlinks, not crossing mounts); ENOENT is success. */
int snap_remove_tree(const char *path, struct vs_error *err);

#endif
