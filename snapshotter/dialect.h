/* Internal to snapshotter/: the Kata mount dialects (dialect.c), called by the snapshot model where it builds
 * the mounts of an active or view snapshot. The formats are documented in docs/formats.md ("Kata dialects")
 * and the configuration in docs/kata.md. */
#ifndef VERITYSNAP_SNAPSHOTTER_DIALECT_H
#define VERITYSNAP_SNAPSHOTTER_DIALECT_H

#include <stdbool.h>
#include <stdint.h>

#include "snapshotter/snapshot_internal.h"

/* kata-tardev option names (anchors.md section 1). */
#define DIALECT_TARDEV_TYPE "fuse3.kata-overlay"
#define DIALECT_TARDEV_PREFIX_OPT "io.katacontainers.fs-opt.layer-src-prefix="
#define DIALECT_TARDEV_LAYER_OPT "io.katacontainers.fs-opt.layer="
#define DIALECT_TARDEV_OVERLAY_RW "io.katacontainers.fs-opt.overlay-rw"

/* True when key is one containerd prepares to unpack a layer: one of its '/'-separated components starts with
 * "extract-" (containerd's unpacker and 1.6's rootfs.ApplyLayer both use "extract-<unique> <chainID>"). */
bool dialect_is_extract_key(const char *key);

/* True when key names a view containerd's walking differ makes to compare two snapshots on the host
 * (rootfs.CreateDiff: "<parent>-parent-view-<unique>" and "<snapshot>-view-<unique>"): the last component
 * contains "-view-". */
bool dialect_is_differ_view_key(const char *key);

/* True when dialect d, not the host dialect, shapes the mounts of snapshot key of the given kind (UNKNOWN
 * when the caller does not know it yet): not for extract keys, nor for the differ's views, which containerd
 * mounts on the host. */
bool dialect_shapes(enum snapshot_dialect d, enum snapshot_kind kind, const char *key);

/* The mounts of dialect d (kata-erofs or kata-tardev) for the active or view snapshot #id named key, whose
 * parent is parent_id (0: none). Mounts nothing on the host. Caller holds the lock. */
int dialect_build_mounts(struct snapshotter *s, enum snapshot_dialect d, int64_t id, int kind,
                         int64_t parent_id, const char *key, struct snapshot_mounts *out,
                         struct vs_error *err);

/* Standard base64 with padding of len bytes; returns a malloc'd string or NULL. */
char *dialect_base64(const void *data, size_t len);

#endif
