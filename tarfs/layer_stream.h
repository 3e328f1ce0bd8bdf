/* Layer byte stream: detects and undoes gzip (ISA-L) or zstd, and hashes the uncompressed bytes (the diff ID). */
#ifndef VERITYSNAP_TARFS_LAYER_STREAM_H
#define VERITYSNAP_TARFS_LAYER_STREAM_H

#include "tarfs.h"

struct layer_stream;

/* Opens a stream over read_fn; compression AUTO looks at the magic bytes, anything else must match them. */
struct layer_stream *layer_stream_new(tarfs_read_fn read_fn, void *read_ctx, enum tarfs_compression compression,
                                      struct vs_error *err);
void layer_stream_free(struct layer_stream *s);

/* Returns the next chunk of uncompressed bytes (valid until the next call): its length, 0 at the end, or a
 * negative code. Decompression runs ahead on a thread of its own. */
long layer_stream_next(struct layer_stream *s, const void **data, struct vs_error *err);

/* Reads up to cap uncompressed bytes; 0 at the end. Corrupt or truncated input: -EBADMSG naming the offset. */
long layer_stream_read(struct layer_stream *s, void *buf, size_t cap, struct vs_error *err);

/* Reads to the end, so the diff ID covers every byte (tar readers stop at the end-of-archive marker). */
int layer_stream_drain(struct layer_stream *s, struct vs_error *err);

/* Also hands every chunk the reader takes, in order, to tap (on the reader's thread): a second consumer of the same
 * bytes (the tarfs form built beside the EROFS image). A tap error ends the stream with that error. */
typedef int (*layer_stream_tap_fn)(void *ctx, const void *data, size_t len, struct vs_error *err);
void layer_stream_set_tap(struct layer_stream *s, layer_stream_tap_fn tap, void *ctx);

/* Uncompressed bytes produced so far. */
uint64_t layer_stream_offset(const struct layer_stream *s);

/* After the end: the diff ID, and what the compression was. */
void layer_stream_finish(struct layer_stream *s, uint8_t diff_id[32], enum tarfs_compression *compression);

#endif
