/* Internal to snapshotter/: the blob path (blob_ingest.c). Layers converted straight from the layer blob in
 * containerd's content store, at Prepare (answering ALREADY_EXISTS) or at Commit (instead of the directory).
 */
#ifndef VERITYSNAP_SNAPSHOTTER_BLOB_INGEST_H
#define VERITYSNAP_SNAPSHOTTER_BLOB_INGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "snapshotter/snapshotter.h"

struct snapshotter;
struct blob_ingest;

/* The blob path's state (in-flight conversions, counters) over content (NULL: the blob path is off). */
int blob_ingest_new(const struct snapshotter_content *content, struct blob_ingest **out,
                    struct vs_error *err);
void blob_ingest_free(struct blob_ingest *b);

/* Prepare with the labels containerd.io/snapshot.ref and cri.layer-digest, the blob in the content store:
 * converts it, checks its chain ID, commits it and returns -EEXIST (containerd then finds it by the ref label
 * and parent). Returns 1 when the blob path does not apply (no labels, no blob yet, no namespace): take the
 * directory path. Concurrent Prepares of one layer convert it once; the others wait and get -EEXIST. */
int blob_ingest_prepare(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                        const char *parent, const struct snapshot_label *labels, size_t label_count,
                        struct vs_error *err);

/* What Commit converts from. */
struct blob_commit_source {
    bool blob;            /* built from the blob, not the directory */
    char blob_digest[80]; /* the blob's digest when blob */
    char diff_id[80];     /* sha256:<hex> of the uncompressed tar when blob */
};

/* Commit of the active snapshot `key` (row snapshot_id, parent row parent_id) as `name`: when it was prepared
 * with the layer digest label and the blob is in the content store now, builds the layer file at out_path
 * from the blob (checking the chain ID when it is known) and returns 0 with src->blob set; returns 1 to
 * convert the directory. With tarfs_path (kata-tardev), the tarfs form is built there too, from the same read
 * (tarfs_res). */
int blob_ingest_commit(struct snapshotter *s, const char *key, const char *name, int64_t snapshot_id,
                       int64_t parent_id, const struct snapshot_label *labels, size_t label_count,
                       const char *out_path, const struct layer_file_options *opts,
                       struct layer_file_result *res, const char *tarfs_path,
                       struct layer_file_result *tarfs_res, struct blob_commit_source *src,
                       struct vs_error *err);

/* kata-tardev: makes sure every committed layer below a container snapshot has its tarfs form, building the
 * missing ones from their blobs when those are still in containerd's content store (layers that came by the
 * blob path: their digest and diff ID are recorded). The chain starts at parent, or at key's own parent when
 * parent is NULL or empty. Layers it cannot build are left alone (the dialect's mounts then fail with
 * FAILED_PRECONDITION); returns <0 only when a conversion failed. No lock held on entry or exit. */
int blob_ingest_tarfs_chain(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                            const char *parent, struct vs_error *err);

/* Counts a finished conversion (format "erofs" or "tarfs") and logs it with the running totals
 * (blob_conversions and directory_conversions: erofs; tarfs_conversions). */
void blob_ingest_count(struct snapshotter *s, bool blob, const char *format, const char *key,
                       const char *root_hash);

#endif
