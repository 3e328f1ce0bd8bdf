/* Recognises a layer file: its format, its image, and where its verity tree and root hash come from. */
#ifndef VERITYSNAP_TOOLS_LAYER_PROBE_H
#define VERITYSNAP_TOOLS_LAYER_PROBE_H

#include "snapshotter/snapshotter.h"

struct layer_probe {
    enum tarfs_format format;
    struct tarfs_image_info info;
    uint64_t file_size;
    uint64_t data_size;       /* bytes the tree covers (erofs image, or tar + index) */
    bool has_verity;
    bool root_known;          /* root hash read from the sidecar */
    bool from_sidecar;
    struct verity_layout layout;
};

/* Reads the sidecar <path>.dmverity if present, the EROFS superblock and a verity superblock after it, or the
 * tardev trailer at the end. */
int layer_probe(int fd, const char *path, struct layer_probe *p, struct vs_error *err);

/* Opens path read-only and probes it; on failure prints the error and returns the exit code (fd closed). */
int layer_probe_open(const char *path, int *fd, struct layer_probe *p);

#endif
