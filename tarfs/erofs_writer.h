/* The EROFS image writer: file data streamed into data blocks as entries arrive; at finish, directory blocks,
 * then the metadata area (inodes, inline xattrs, inline tails), then the superblock in block 0. */
#ifndef VERITYSNAP_TARFS_EROFS_WRITER_H
#define VERITYSNAP_TARFS_EROFS_WRITER_H

#include "tarfs.h"
#include "tree.h"

struct erofs_writer;

/* Creates a writer over sink; tail_budget bounds the bytes of small-file tails held until the metadata is
 * written (0: the default); max_image_size refuses images that would grow beyond it (0: no limit). */
struct erofs_writer *erofs_writer_new(const struct tarfs_sink *sink, size_t tail_budget, uint64_t max_image_size,
                                      struct vs_error *err);
void erofs_writer_free(struct erofs_writer *w);

/* The tree that sources fill. */
struct tree *erofs_writer_tree(struct erofs_writer *w);

/* Streams the data of a regular file or symlink: begin, then writes at increasing file offsets (a gap reads as
 * zeros: sparse files), then end with the final size (bytes past the last write are zeros too). */
int erofs_writer_data_begin(struct erofs_writer *w, struct tree_inode *inode, struct vs_error *err);
int erofs_writer_data_write(struct erofs_writer *w, uint64_t offset, const void *data, size_t len,
                            struct vs_error *err);
int erofs_writer_data_end(struct erofs_writer *w, uint64_t size, struct vs_error *err);

/* Lays out and writes the directories, the metadata and the superblock; uuid is written into the superblock.
 * Fills image_size and blocks of result. */
int erofs_writer_finish(struct erofs_writer *w, const uint8_t uuid[16], struct tarfs_result *result,
                        struct vs_error *err);

#endif
