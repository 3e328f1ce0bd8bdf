/* veritysnap snapshotter: layer files (image + dm-verity tree, written atomically), and later the snapshot model,
 * the store and the mount dialects. Calls tarfs/ and verity/; knows nothing about the wire. */
#ifndef VERITYSNAP_SNAPSHOTTER_SNAPSHOTTER_H
#define VERITYSNAP_SNAPSHOTTER_SNAPSHOTTER_H

#include <stdbool.h>

#include "tarfs/tarfs.h"
#include "verity/verity.h"

/* How to build one layer file. */
struct layer_file_options {
    struct tarfs_options tarfs;
    bool verity;                 /* append a dm-verity tree (tarfs format: always, with tardev's parameters) */
    struct verity_params params; /* for erofs; tarfs uses sha256, 4096/4096, zero salt, no superblock */
    bool sidecar;                /* write <file>.dmverity next to the layer file */
};

struct layer_file_result {
    struct tarfs_result image;
    bool verity;
    struct verity_layout layout;
    uint64_t file_size;          /* bytes of the finished file */
};

/* Fills opts with the defaults: erofs, verity on with the defaults of verity_params_default, sidecar on. */
void layer_file_options_default(struct layer_file_options *opts);

/* Builds a layer file at out_path from a layer read from in_fd (tar, tar+gzip, tar+zstd): written under a temporary
 * name in the same directory, fsynced, renamed, directory fsynced. On failure nothing is left behind. With out_path
 * NULL nothing is written and only the result (root hash, sizes, diff ID) is computed. */
int layer_file_build_fd(int in_fd, const char *out_path, const struct layer_file_options *opts,
                        struct layer_file_result *result, struct vs_error *err);

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

/* Host mounts through dm-verity: require refuses unverified layers, auto falls back with a warning, off skips. */
enum snapshotter_verity_mode {
    SNAPSHOTTER_VERITY_REQUIRE = 0,
    SNAPSHOTTER_VERITY_AUTO,
    SNAPSHOTTER_VERITY_OFF,
};

struct snapshotter_config {
    const char *root;                  /* state root, default /var/lib/veritysnap */
    enum snapshotter_verity_mode verity;
    struct layer_file_options layer;   /* how Commit converts */
    bool host_mount_loop;              /* mount layers through loop devices even where EROFS mounts files (tests) */
};

/* Label Commit sets on a committed snapshot: the hex root hash of its layer's dm-verity tree. */
#define SNAPSHOT_LABEL_ROOT_HASH "containerd.io/snapshot/veritysnap.root-hash"


struct snapshot_label {
    char *key;
    char *value;
};

struct snapshot_info {
    char *name;
    char *parent;                      /* "" when none */
    enum snapshot_kind kind;
    int64_t created_ns, updated_ns;    /* Unix time in nanoseconds */
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

/* The caller of one request: containerd's namespace (may be empty: the garbage collector sends none). */
struct snapshot_call {
    const char *namespace_name;
    const char *rpc;
};

struct snapshotter;

/* Opens (creating) the state root and its store, migrates the schema, reconciles files, rows and mounts.
 * Thread-safe once open: calls may come from several threads at once. */
int snapshotter_open(const struct snapshotter_config *config, struct snapshotter **out, struct vs_error *err);
void snapshotter_close(struct snapshotter *s);

/* containerd's Snapshots API, one function per RPC. Codes: -ENOENT not found, -EEXIST already exists, -EINVAL
 * invalid argument, -EBUSY failed precondition, -EBADMSG bad input (invalid argument), others internal. */
int snapshotter_prepare(struct snapshotter *s, const struct snapshot_call *call, const char *key, const char *parent,
                        const struct snapshot_label *labels, size_t label_count, struct snapshot_mounts *out,
                        struct vs_error *err);
int snapshotter_view(struct snapshotter *s, const struct snapshot_call *call, const char *key, const char *parent,
                     const struct snapshot_label *labels, size_t label_count, struct snapshot_mounts *out,
                     struct vs_error *err);
int snapshotter_mounts(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                       struct snapshot_mounts *out, struct vs_error *err);
int snapshotter_commit(struct snapshotter *s, const struct snapshot_call *call, const char *name, const char *key,
                       const struct snapshot_label *labels, size_t label_count, struct vs_error *err);
int snapshotter_remove(struct snapshotter *s, const struct snapshot_call *call, const char *key, struct vs_error *err);
int snapshotter_stat(struct snapshotter *s, const struct snapshot_call *call, const char *key,
                     struct snapshot_info *out, struct vs_error *err);
/* paths: "labels" or "labels.<key>"; none means all mutable fields (the labels). */
int snapshotter_update(struct snapshotter *s, const struct snapshot_call *call, const struct snapshot_info *info,
                       const char *const *paths, size_t path_count, struct snapshot_info *out, struct vs_error *err);
/* filters: containerd's filter syntax; several are ORed. fn may return nonzero to stop. */
int snapshotter_walk(struct snapshotter *s, const struct snapshot_call *call, const char *const *filters,
                     size_t filter_count, int (*fn)(void *ctx, const struct snapshot_info *info), void *ctx,
                     struct vs_error *err);
int snapshotter_usage(struct snapshotter *s, const struct snapshot_call *call, const char *key, int64_t *size,
                      int64_t *inodes, struct vs_error *err);
int snapshotter_cleanup(struct snapshotter *s, const struct snapshot_call *call, struct vs_error *err);

void snapshot_info_free(struct snapshot_info *info);
void snapshot_mounts_free(struct snapshot_mounts *mounts);

#endif
