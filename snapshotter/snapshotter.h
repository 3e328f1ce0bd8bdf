/* veritysnap snapshotter: layer files (image + dm-verity tree, written atomically), and later the snapshot
 * model, the store and the mount dialects. Calls tarfs/ and verity/; knows nothing about the wire. */
#ifndef VERITYSNAP_SNAPSHOTTER_SNAPSHOTTER_H
#define VERITYSNAP_SNAPSHOTTER_SNAPSHOTTER_H

#include <stdbool.h>

#include "tarfs/tarfs.h"
#include "verity/verity.h"

/* How to build one layer file. */
struct layer_file_options {
    struct tarfs_options tarfs;
    bool verity; /* append a dm-verity tree (tarfs format: always, with tardev's parameters) */
    struct verity_params params; /* for erofs; tarfs uses sha256, 4096/4096, zero salt, no superblock */
    bool sidecar;                /* write <file>.dmverity next to the layer file */
    /* Bytes that must stay free on the layer file's file system: a conversion that would leave less stops
     * with -ENOSPC (checked every few MiB), so a huge or hostile layer cannot fill the node's disk. 0: no
     * reserve. */
    uint64_t min_free_bytes;
};

struct layer_file_result {
    struct tarfs_result image;
    bool verity;
    struct verity_layout layout;
    uint64_t file_size; /* bytes of the finished file */
};

/* Fills opts with the defaults: erofs, verity on with the defaults of verity_params_default, sidecar on. */
void layer_file_options_default(struct layer_file_options *opts);

/* Builds a layer file at out_path from a layer read from in_fd (tar, tar+gzip, tar+zstd): written under a
 * temporary name in the same directory, fsynced, renamed, directory fsynced. On failure nothing is left
 * behind. With out_path NULL nothing is written and only the result (root hash, sizes, diff ID) is computed.
 */
int layer_file_build_fd(int in_fd, const char *out_path, const struct layer_file_options *opts,
                        struct layer_file_result *result, struct vs_error *err);

/* Builds the EROFS layer file at erofs_path and the tarfs one at tarfs_path (tardev's verity parameters and
 * trailer, no sidecar) from one read of the layer: each byte-identical to what two single-format builds give.
 * On failure neither is left behind. */
int layer_file_build_fd_both(int in_fd, const char *erofs_path, const char *tarfs_path,
                             const struct layer_file_options *opts, struct layer_file_result *erofs_result,
                             struct layer_file_result *tarfs_result, struct vs_error *err);

/* Same from a directory tree (an active snapshot's upper dir); erofs only. */
int layer_file_build_dir(const char *dir, const char *out_path, const struct layer_file_options *opts,
                         struct layer_file_result *result, struct vs_error *err);

/* ---- The snapshot model (containerd's snapshotter contract) ---- */

enum snapshot_kind {
    SNAPSHOT_KIND_UNKNOWN = 0,
    SNAPSHOT_KIND_VIEW = 1,
    SNAPSHOT_KIND_ACTIVE = 2,
    SNAPSHOT_KIND_COMMITTED = 3,
};

/* Host mounts through dm-verity: require refuses unverified layers, auto falls back with a warning, off
 * skips. */
enum snapshotter_verity_mode {
    SNAPSHOTTER_VERITY_REQUIRE = 0,
    SNAPSHOTTER_VERITY_AUTO,
    SNAPSHOTTER_VERITY_OFF,
};

/* Where the blob path reads layer blobs: containerd's content store, reached by the wire (grpc/). ns is the
 * containerd namespace (through containerd 1.6 only the backend key's prefix carries it, see blob_ingest.c).
 */
struct snapshotter_content {
    void *ctx;
    /* 0 and the blob's size when it is in ns's content store, -ENOENT when it is not, other codes on failure.
     */
    int (*info)(void *ctx, const char *ns, const char *digest, int64_t *size, struct vs_error *err);
    /* Starts reading the whole blob: *fd yields its bytes until EOF; end it with close (which closes the fd).
     */
    int (*open)(void *ctx, const char *ns, const char *digest, int64_t size, int *fd, void **stream,
                struct vs_error *err);
    /* Ends a read (drain: the consumer succeeded, read and check the rest); returns the read's outcome. */
    int (*close)(void *ctx, void *stream, bool drain, struct vs_error *err);
};

struct snapshotter_config {
    const char *root; /* state root, default /var/lib/veritysnap */
    enum snapshotter_verity_mode verity;
    struct layer_file_options layer; /* how Commit converts */
    bool host_mount_loop; /* mount layers through loop devices even where EROFS mounts files (tests) */
    const char
        *tardev_layer_prefix; /* kata-tardev layer-src-prefix; NULL or "": <root>/layers (docs/kata.md) */
    const struct snapshotter_content *content; /* the blob path's source; NULL: directory path only */
};

/* Label Commit sets on a committed snapshot: the hex root hash of its layer's dm-verity tree. */
#define SNAPSHOT_LABEL_ROOT_HASH "containerd.io/snapshot/veritysnap.root-hash"
/* Labels that select the blob path: the layer's chain ID (containerd's unpacker) and its blob digest (CRI,
 * pull). */
#define SNAPSHOT_LABEL_REF "containerd.io/snapshot.ref"
#define SNAPSHOT_LABEL_LAYER_DIGEST "containerd.io/snapshot/cri.layer-digest"

struct snapshot_label {
    char *key;
    char *value;
};

struct snapshot_info {
    char *name;
    char *parent; /* "" when none */
    enum snapshot_kind kind;
    int64_t created_ns, updated_ns; /* Unix time in nanoseconds */
    struct snapshot_label *labels;
    size_t label_count;
};

struct snapshot_mount {
    char *type;
    char *source;
    char *target;
    char **options;
    size_t option_count;
};

struct snapshot_mounts {
    struct snapshot_mount *items;
    size_t count;
};

/* Mount dialects (docs/kata.md, docs/formats.md "Kata dialects"): chosen per listening socket, all over one
 * store. Snapshots that containerd prepares to unpack a layer (a key component starting with "extract-")
 * always get host mounts; the dialect shapes the mounts of container root filesystems (Prepare/View/Mounts of
 * other keys). */
enum snapshot_dialect {
    SNAPSHOT_DIALECT_HOST = 0,    /* loop (+dm-verity) + overlay on the host: runc, containerd's test suite */
    SNAPSHOT_DIALECT_KATA_EROFS,  /* containerd 2.2+ EROFS snapshotter's mounts, for Kata runtime-rs */
    SNAPSHOT_DIALECT_KATA_TARDEV, /* fuse3.kata-overlay with tarfs layers, for AKS's Kata
                                     (tardev-snapshotter's) */
};

/* "host", "kata-erofs", "kata-tardev" <-> the enum; parse returns -EINVAL for anything else. */
int snapshot_dialect_parse(const char *text, enum snapshot_dialect *out);
const char *snapshot_dialect_name(enum snapshot_dialect dialect);

/* The caller of one request: containerd's namespace (may be empty: the garbage collector sends none), and the
 * dialect of the socket it came in on (zero: host). */
struct snapshot_call {
    const char *namespace_name;
    const char *rpc;
    enum snapshot_dialect dialect;
};

struct snapshotter;

/* Opens (creating) the state root and its store, migrates the schema, reconciles files, rows and mounts.
 * Thread-safe once open: calls may come from several threads at once. */
int snapshotter_open(const struct snapshotter_config *config, struct snapshotter **out, struct vs_error *err);
void snapshotter_close(struct snapshotter *s);

/* containerd's Snapshots API, one function per RPC. Codes: -ENOENT not found, -EEXIST already exists, -EINVAL
 * invalid argument, -EBUSY failed precondition, -EBADMSG bad input (invalid argument), others internal. */
int snapshotter_prepare(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                        const char *parent, const struct snapshot_label *labels, size_t label_count,
                        struct snapshot_mounts *out, struct vs_error *err);
int snapshotter_view(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                     const char *parent, const struct snapshot_label *labels, size_t label_count,
                     struct snapshot_mounts *out, struct vs_error *err);
int snapshotter_mounts(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       struct snapshot_mounts *out, struct vs_error *err);
int snapshotter_commit(struct snapshotter *s, const struct snapshot_call *call, const char *name,
                       const char *key, const struct snapshot_label *labels, size_t label_count,
                       struct vs_error *err);
int snapshotter_remove(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       struct vs_error *err);
int snapshotter_stat(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                     struct snapshot_info *out, struct vs_error *err);
/* paths: "labels" or "labels.<key>"; none means all mutable fields (the labels). */
int snapshotter_update(struct snapshotter *s, const struct snapshot_call *call,
                       const struct snapshot_info *info, const char *const *paths, size_t path_count,
                       struct snapshot_info *out, struct vs_error *err);
/* filters: containerd's filter syntax; several are ORed. fn may return nonzero to stop. */
int snapshotter_walk(struct snapshotter *s, const struct snapshot_call *call, const char *const *filters,
                     size_t filter_count, int (*fn)(void *ctx, const struct snapshot_info *info), void *ctx,
                     struct vs_error *err);
int snapshotter_usage(struct snapshotter *s, const struct snapshot_call *call, const char *key, int64_t *size,
                      int64_t *inodes, struct vs_error *err);
int snapshotter_cleanup(struct snapshotter *s, const struct snapshot_call *call, struct vs_error *err);

/* ---- Layers in other formats (the kata-tardev dialect) ----
 * A layer is converted once per (format, verity parameters): the layers table holds at most one row per
 * (snapshot, format). The erofs row is what Commit writes (and what host and kata-erofs mounts use); a tarfs
 * row exists only when someone asked for it with the function below, because tarfs needs the original tar (it
 * cannot be built from a directory).
 *
 * snapshotter_layer_add_tarfs: builds the tarfs form (original tar + tarfs index + dm-verity tree + tardev
 * trailer, tardev's fixed verity parameters) of the committed snapshot `key` from its layer blob read from
 * blob_fd (tar, tar+gzip or tar+zstd; read to the end), into <root>/layers/<h> with <h> =
 * snapshot_tardev_layer_name(key), and records it (format 'tarfs', source 'blob', source_digest as given or
 * the diff ID). For the blob path: call it after the Commit of the layer, with the same blob. The conversion
 * runs without the store lock. Idempotent: 0 when the tarfs row of that snapshot already exists. -ENOENT no
 * such snapshot, -EINVAL not committed, -EEXIST another snapshot already owns layers/<h> (the same chain ID
 * in two namespaces: that file serves both), -EBADMSG bad input (the diff ID is checked against
 * expected_diff_id when that is non-NULL: "sha256:<hex>"). */
int snapshotter_layer_add_tarfs(struct snapshotter *s, const char *key, int blob_fd,
                                const char *source_digest, const char *expected_diff_id,
                                struct vs_error *err);

/* The second half of snapshotter_layer_add_tarfs, for a tarfs file built already (layer_file_build_fd_both,
 * beside the EROFS form, in one read of the blob): moves built_path into <root>/layers/<h> and records it.
 * Same checks and codes; 0 without touching built_path when the row exists already. */
int snapshotter_layer_install_tarfs(struct snapshotter *s, const char *key, const char *built_path,
                                    const struct layer_file_result *res, const char *source_digest,
                                    const char *expected_diff_id, struct vs_error *err);

/* tardev's layer file name for a snapshot key: hex sha256 of the key's last '/'-separated component (for a
 * committed layer that is "sha256:<chainID hex>"). out holds 65 bytes. */
void snapshot_tardev_layer_name(const char *key, char out[65]);

void snapshot_info_free(struct snapshot_info *info);
void snapshot_mounts_free(struct snapshot_mounts *mounts);

#endif
