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

#endif
