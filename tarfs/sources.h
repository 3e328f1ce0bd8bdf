/* The layer sources that fill the EROFS writer's tree: a tar stream (libarchive) and a directory tree. */
#ifndef VERITYSNAP_TARFS_SOURCES_H
#define VERITYSNAP_TARFS_SOURCES_H

#include "erofs_writer.h"
#include "layer_stream.h"

/* Reads every tar entry from stream into w, applying OCI whiteouts; counts entries. */
int tar_source_read(struct layer_stream *stream, struct erofs_writer *w, const struct tarfs_options *opts,
                    uint64_t *entries, struct vs_error *err);

/* Walks the directory at path into w (sorted, so the image is a function of the tree); digest gets a SHA-256 over
 * the walked names, attributes and contents. */
int dir_source_read(const char *path, struct erofs_writer *w, const struct tarfs_options *opts,
                    uint64_t *entries, uint8_t digest[32], struct vs_error *err);

/* Reports content a format drops; with opts->strict it is an -EBADMSG error instead. */
int source_warn(const struct tarfs_options *opts, const char *entry, const char *message, struct vs_error *err);

#endif
