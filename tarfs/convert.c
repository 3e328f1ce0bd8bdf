#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/vs_digest.h"
#include "sources.h"
#include "tardev_index.h"

const char *tarfs_format_name(enum tarfs_format format)
{
    return format == TARFS_FORMAT_TARFS ? "tarfs" : "erofs";
}

int tarfs_format_parse(const char *name, enum tarfs_format *out)
{
    if (strcmp(name, "erofs") == 0)
        *out = TARFS_FORMAT_EROFS;
    else if (strcmp(name, "tarfs") == 0)
        *out = TARFS_FORMAT_TARFS;
    else
        return -EINVAL;
    return 0;
}

const char *tarfs_compression_name(enum tarfs_compression c)
{
    switch (c) {
    case TARFS_COMPRESSION_GZIP:
        return "gzip";
    case TARFS_COMPRESSION_ZSTD:
        return "zstd";
    case TARFS_COMPRESSION_NONE:
        return "none";
    default:
        return "auto";
    }
}

int tarfs_compression_from_media_type(const char *media_type, enum tarfs_compression *out)
{
    static const struct {
        const char *name;
        enum tarfs_compression c;
    } types[] = {
        {"application/vnd.oci.image.layer.v1.tar", TARFS_COMPRESSION_NONE},
        {"application/vnd.oci.image.layer.v1.tar+gzip", TARFS_COMPRESSION_GZIP},
        {"application/vnd.oci.image.layer.v1.tar+zstd", TARFS_COMPRESSION_ZSTD},
        {"application/vnd.docker.image.rootfs.diff.tar", TARFS_COMPRESSION_NONE},
        {"application/vnd.docker.image.rootfs.diff.tar.gzip", TARFS_COMPRESSION_GZIP},
        {"application/vnd.docker.image.rootfs.diff.tar.zstd", TARFS_COMPRESSION_ZSTD},
        {"gzip", TARFS_COMPRESSION_GZIP},
        {"zstd", TARFS_COMPRESSION_ZSTD},
        {"none", TARFS_COMPRESSION_NONE},
        {"auto", TARFS_COMPRESSION_AUTO},
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(media_type, types[i].name) == 0) {
            *out = types[i].c;
            return 0;
        }
    }
    return -ENOTSUP;
}

/* The EROFS volume UUID: derived from the source's digest, so equal sources give equal images. Version 8
 * (RFC 9562 "custom") marks it as not random. */
static void derive_uuid(const uint8_t digest[32], uint8_t uuid[16])
{
    uint8_t buf[22 + 32], out[32];
    memcpy(buf, "veritysnap-erofs-uuid:", 22);
    memcpy(buf + 22, digest, 32);
    vs_sha256(buf, sizeof(buf), out);
    memcpy(uuid, out, 16);
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x80);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

static int convert_erofs(struct layer_stream *s, const struct tarfs_options *opts,
                         const struct tarfs_sink *sink, struct tarfs_result *result, struct vs_error *err)
{
    struct erofs_writer *w = erofs_writer_new(sink, opts->tail_budget, opts->max_image_size, err);
    if (!w)
        return err ? err->code : -ENOMEM;
    int rc = tar_source_read(s, w, opts, &result->entries, err);
    if (rc == 0)
        rc = layer_stream_drain(s, err);
    if (rc == 0) {
        uint8_t uuid[16];
        layer_stream_finish(s, result->diff_id, &result->compression);
        result->uncompressed_size = layer_stream_offset(s);
        derive_uuid(result->diff_id, uuid);
        rc = erofs_writer_finish(w, uuid, result, err);
    }
    erofs_writer_free(w);
    return rc;
}

/* The tarfs form is the tar itself followed by tardev's index: each uncompressed chunk goes to the image as
 * it is and through the index parser. */
struct tarfs_feed {
    struct tardev_index *idx;
    const struct tarfs_sink *sink;
    uint64_t offset;
    uint64_t max_image_size;
};

static int tarfs_feed_chunk(void *ctx, const void *chunk, size_t n, struct vs_error *err)
{
    struct tarfs_feed *f = ctx;
    if (f->max_image_size && f->offset + n > f->max_image_size)
        return vs_fail(err, -EFBIG, "the layer expands beyond the limit of %llu bytes",
                       (unsigned long long)f->max_image_size);
    int rc = tardev_index_feed(f->idx, chunk, n, err);
    if (rc == 0)
        rc = f->sink->write(f->sink->ctx, f->offset, chunk, n, err);
    f->offset += n;
    return rc;
}

static int tarfs_feed_open(struct tarfs_feed *f, const struct tarfs_options *opts,
                           const struct tarfs_sink *sink, struct vs_error *err)
{
    memset(f, 0, sizeof(*f));
    f->sink = sink;
    f->max_image_size = opts->max_image_size;
    f->idx = tardev_index_new(opts->warning, opts->warning_ctx, opts->strict, err);
    return f->idx ? 0 : (err && err->code ? err->code : vs_fail(err, -ENOMEM, "out of memory"));
}

/* After the stream's end: writes the index and fills result's sizes (the caller adds the diff ID). */
static int tarfs_feed_finish(struct tarfs_feed *f, struct tarfs_result *result, struct vs_error *err)
{
    uint64_t index_size = 0;
    int rc = tardev_index_finish(f->idx, f->sink->write, f->sink->ctx, &index_size, &result->entries, err);
    if (rc == 0) {
        result->uncompressed_size = f->offset;
        result->image_size = f->offset + index_size;
        result->blocks = result->image_size / TARFS_BLOCK_SIZE;
    }
    return rc;
}

static int convert_tarfs(struct layer_stream *s, const struct tarfs_options *opts,
                         const struct tarfs_sink *sink, struct tarfs_result *result, struct vs_error *err)
{
    struct tarfs_feed f;
    int rc = tarfs_feed_open(&f, opts, sink, err);
    while (rc == 0) {
        const void *chunk;
        long n = layer_stream_next(s, &chunk, err);
        if (n <= 0) {
            rc = (int)n;
            break;
        }
        rc = tarfs_feed_chunk(&f, chunk, (size_t)n, err);
    }
    if (rc == 0)
        rc = tarfs_feed_finish(&f, result, err);
    if (rc == 0)
        layer_stream_finish(s, result->diff_id, &result->compression);
    tardev_index_free(f.idx);
    return rc;
}

int tarfs_convert_stream_both(tarfs_read_fn read_fn, void *read_ctx, const struct tarfs_options *opts,
                              const struct tarfs_sink *erofs_sink, const struct tarfs_sink *tarfs_sink,
                              struct tarfs_result *erofs_result, struct tarfs_result *tarfs_result,
                              struct vs_error *err)
{
    memset(erofs_result, 0, sizeof(*erofs_result));
    memset(tarfs_result, 0, sizeof(*tarfs_result));
    erofs_result->format = TARFS_FORMAT_EROFS;
    tarfs_result->format = TARFS_FORMAT_TARFS;
    struct layer_stream *s = layer_stream_new(read_fn, read_ctx, opts->compression, err);
    if (!s)
        return err ? err->code : -ENOMEM;
    struct tarfs_feed f;
    int rc = tarfs_feed_open(&f, opts, tarfs_sink, err);
    if (rc == 0) {
        /* The EROFS converter reads the stream (to its end: it drains); every chunk it takes feeds the tarfs
         * form on the way. */
        layer_stream_set_tap(s, tarfs_feed_chunk, &f);
        rc = convert_erofs(s, opts, erofs_sink, erofs_result, err);
    }
    if (rc == 0)
        rc = tarfs_feed_finish(&f, tarfs_result, err);
    if (rc == 0) {
        memcpy(tarfs_result->diff_id, erofs_result->diff_id, sizeof(tarfs_result->diff_id));
        tarfs_result->compression = erofs_result->compression;
    }
    tardev_index_free(f.idx);
    layer_stream_free(s);
    return rc;
}

int tarfs_convert_stream(tarfs_read_fn read_fn, void *read_ctx, const struct tarfs_options *opts,
                         const struct tarfs_sink *sink, struct tarfs_result *result, struct vs_error *err)
{
    memset(result, 0, sizeof(*result));
    result->format = opts->format;
    struct layer_stream *s = layer_stream_new(read_fn, read_ctx, opts->compression, err);
    if (!s)
        return err ? err->code : -ENOMEM;
    int rc = opts->format == TARFS_FORMAT_TARFS ? convert_tarfs(s, opts, sink, result, err)
                                                : convert_erofs(s, opts, sink, result, err);
    layer_stream_free(s);
    return rc;
}

static long fd_read(void *ctx, void *buf, size_t len, struct vs_error *err)
{
    int fd = *(int *)ctx;
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return vs_fail(err, -errno, "reading the layer: %s", strerror(errno));
    }
}

int tarfs_convert_fd(int fd, const struct tarfs_options *opts, const struct tarfs_sink *sink,
                     struct tarfs_result *result, struct vs_error *err)
{
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return tarfs_convert_stream(fd_read, &fd, opts, sink, result, err);
}

int tarfs_convert_fd_both(int fd, const struct tarfs_options *opts, const struct tarfs_sink *erofs_sink,
                          const struct tarfs_sink *tarfs_sink, struct tarfs_result *erofs_result,
                          struct tarfs_result *tarfs_result, struct vs_error *err)
{
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return tarfs_convert_stream_both(fd_read, &fd, opts, erofs_sink, tarfs_sink, erofs_result, tarfs_result,
                                     err);
}

int tarfs_convert_dir(const char *path, const struct tarfs_options *opts, const struct tarfs_sink *sink,
                      struct tarfs_result *result, struct vs_error *err)
{
    memset(result, 0, sizeof(*result));
    result->format = TARFS_FORMAT_EROFS;
    result->compression = TARFS_COMPRESSION_NONE;
    if (opts->format != TARFS_FORMAT_EROFS)
        return vs_fail(err, -ENOTSUP, "a directory converts to erofs only (tarfs needs the original tar)");
    struct erofs_writer *w = erofs_writer_new(sink, opts->tail_budget, opts->max_image_size, err);
    if (!w)
        return err ? err->code : -ENOMEM;
    int rc = dir_source_read(path, w, opts, &result->entries, result->diff_id, err);
    if (rc == 0) {
        uint8_t uuid[16];
        derive_uuid(result->diff_id, uuid);
        rc = erofs_writer_finish(w, uuid, result, err);
    }
    erofs_writer_free(w);
    return rc;
}
