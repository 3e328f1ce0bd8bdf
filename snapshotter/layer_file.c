#include "snapshotter.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* The sink between the image writer and the file: writes the bytes and hashes whole data blocks as they pass,
 * so the tree is ready when the image is (blocks may come in any order; a sequential stream may split
 * blocks). */
/* Writeback is started every this many bytes so that the final fsync finds little left to do: the disk works
 * while the converter computes (measured: the fsync of a 200 MB layer otherwise adds ~40% to the wall time).
 */
#define WRITEBACK_CHUNK (8u << 20)
/* The free-space reserve is checked every this many bytes written (one fstatvfs). */
#define FREE_CHECK_CHUNK (8u << 20)

struct layer_sink {
    int fd; /* -1: hash only */
    uint64_t written_since_flush;
    uint64_t min_free_bytes, written_since_free_check;
    struct verity_builder *builder;
    uint32_t dbs;
    uint8_t *carry; /* a partial data block of a sequential stream */
    size_t carry_len;
    uint64_t carry_offset;
};

static int write_all(int fd, const void *data, size_t len, uint64_t offset, struct vs_error *err)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vs_fail(err, -errno, "writing the layer file at offset %llu: %s",
                           (unsigned long long)offset, strerror(errno));
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

static int check_free_space(const struct layer_sink *s, struct vs_error *err)
{
    struct statvfs st;
    if (fstatvfs(s->fd, &st) < 0)
        return 0; /* no answer: the write itself will tell */
    uint64_t free_bytes = (uint64_t)st.f_bavail * st.f_frsize;
    if (free_bytes < s->min_free_bytes)
        return vs_fail(
            err, -ENOSPC,
            "converting stopped: the file system would keep only %llu bytes free, below the %llu reserved "
            "(min_free_space)",
            (unsigned long long)free_bytes, (unsigned long long)s->min_free_bytes);
    return 0;
}

static int sink_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    struct layer_sink *s = ctx;
    if (s->fd >= 0) {
        int rc = write_all(s->fd, data, len, offset, err);
        if (rc < 0)
            return rc;
        s->written_since_flush += len;
        s->written_since_free_check += len;
        if (s->min_free_bytes && s->written_since_free_check >= FREE_CHECK_CHUNK) {
            s->written_since_free_check = 0;
            int frc = check_free_space(s, err);
            if (frc < 0)
                return frc;
        }
        if (s->written_since_flush >= WRITEBACK_CHUNK) {
            /* Start writeback of everything dirty so far without waiting for it (a hint: errors surface at
             * fsync). */
            sync_file_range(s->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
            s->written_since_flush = 0;
        }
    }
    if (!s->builder)
        return 0;
    const uint8_t *p = data;
    if (s->carry_len > 0 || offset % s->dbs != 0) {
        if (offset != s->carry_offset + s->carry_len)
            return vs_fail(err, -EINVAL, "internal: unaligned write at %llu is not sequential",
                           (unsigned long long)offset);
        size_t n = s->dbs - s->carry_len;
        if (n > len)
            n = len;
        memcpy(s->carry + s->carry_len, p, n);
        s->carry_len += n;
        p += n;
        len -= n;
        offset += n;
        if (s->carry_len < s->dbs)
            return 0;
        int rc = verity_builder_add_block(s->builder, s->carry_offset / s->dbs, s->carry, err);
        if (rc < 0)
            return rc;
        s->carry_len = 0;
    }
    size_t whole = len / s->dbs * s->dbs;
    if (whole) {
        int rc = verity_builder_add_blocks(s->builder, offset / s->dbs, p, whole, err);
        if (rc < 0)
            return rc;
    }
    if (len > whole) {
        s->carry_offset = offset + whole;
        s->carry_len = len - whole;
        memcpy(s->carry, p + whole, s->carry_len);
    }
    return 0;
}

void layer_file_options_default(struct layer_file_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->tarfs.format = TARFS_FORMAT_EROFS;
    opts->verity = true;
    verity_params_default(&opts->params);
    opts->sidecar = true;
}

/* tardev's fixed parameters: what AKS guests read from the trailer and policies hash. */
static void tardev_params(struct verity_params *p)
{
    verity_params_default(p);
    p->superblock = false;
}

struct temp_file {
    char *path;
    int fd;
};

static int temp_open(const char *out_path, struct temp_file *t, struct vs_error *err)
{
    char *copy = strdup(out_path);
    if (!copy)
        return vs_fail(err, -ENOMEM, "out of memory");
    const char *base = basename(copy);
    char *dir_copy = strdup(out_path);
    const char *dir = dir_copy ? dirname(dir_copy) : ".";
    size_t len = strlen(dir) + strlen(base) + 16;
    t->path = malloc(len);
    int rc = 0;
    if (!t->path || !dir_copy) {
        rc = vs_fail(err, -ENOMEM, "out of memory");
    } else {
        snprintf(t->path, len, "%s/.%s.XXXXXX", dir, base);
        t->fd = mkostemp(t->path, O_CLOEXEC);
        if (t->fd < 0)
            rc =
                vs_fail(err, -errno, "creating a temporary file next to '%s': %s", out_path, strerror(errno));
    }
    if (rc < 0) {
        free(t->path);
        t->path = NULL;
    }
    free(copy);
    free(dir_copy);
    return rc;
}

static int fsync_parent(const char *path, struct vs_error *err)
{
    char *copy = strdup(path);
    if (!copy)
        return vs_fail(err, -ENOMEM, "out of memory");
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) < 0)
        rc = vs_fail(err, -errno, "syncing the directory of '%s': %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

/* The tree goes straight to the file (or nowhere): it is not data to hash. */
static int tree_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    struct layer_sink *s = ctx;
    return s->fd >= 0 ? write_all(s->fd, data, len, offset, err) : 0;
}

/* One layer file being made: its temporary file, the sink hashing its data blocks, its verity parameters. */
struct layer_out {
    const char *out_path; /* NULL: hash only */
    struct temp_file tmp;
    struct layer_sink sink;
    struct verity_params params;
    bool verity, tarfs, sidecar;
    bool renamed;
};

static int out_open(struct layer_out *o, const char *out_path, const struct layer_file_options *opts,
                    enum tarfs_format format, struct vs_error *err)
{
    memset(o, 0, sizeof(*o));
    o->out_path = out_path;
    o->tmp.fd = -1;
    o->sink.fd = -1;
    o->params = opts->params;
    o->tarfs = format == TARFS_FORMAT_TARFS;
    o->verity = opts->verity || o->tarfs;
    o->sidecar = opts->sidecar;
    if (o->tarfs)
        tardev_params(&o->params);
    o->sink.dbs = o->params.data_block_size;
    o->sink.min_free_bytes = opts->min_free_bytes;
    int rc = 0;
    if (o->verity)
        rc = verity_params_check(&o->params, err);
    if (rc == 0 && out_path)
        rc = temp_open(out_path, &o->tmp, err);
    o->sink.fd = o->tmp.fd;
    if (rc == 0 && o->verity) {
        o->sink.builder = verity_builder_new(&o->params, err);
        o->sink.carry = malloc(o->sink.dbs);
        if (!o->sink.builder || !o->sink.carry)
            rc = err && err->code ? err->code : vs_fail(err, -ENOMEM, "out of memory");
    }
    return rc;
}

/* After the image: the tree (and tardev's trailer), then fsync, rename into place, the sidecar. */
static int out_finish(struct layer_out *o, struct layer_file_result *result, struct vs_error *err)
{
    struct layer_sink *s = &o->sink;
    result->file_size = result->image.image_size;
    int rc = 0;
    if (s->carry_len)
        rc = vs_fail(err, -EINVAL, "internal: the image does not end on a data block boundary");
    if (rc == 0 && o->verity) {
        uint64_t data_blocks = result->image.image_size / o->params.data_block_size;
        rc = verity_builder_finish(s->builder, data_blocks, result->image.image_size, tree_write, s,
                                   &result->layout, err);
        result->verity = rc == 0;
        result->file_size = result->layout.file_size;
    }
    if (rc == 0 && o->tarfs) {
        uint8_t trailer[VERITY_TARDEV_TRAILER_SIZE];
        verity_tardev_trailer(&result->layout, trailer);
        if (s->fd >= 0)
            rc = write_all(s->fd, trailer, sizeof(trailer), result->file_size, err);
        result->file_size += sizeof(trailer);
    }
    if (rc == 0 && s->fd >= 0 && s->min_free_bytes)
        rc = check_free_space(s, err); /* the tree and the last bytes were written since the last check */
    if (rc == 0 && s->fd >= 0) {
        if (ftruncate(s->fd, (off_t)result->file_size) < 0 || fchmod(s->fd, 0644) < 0 || fsync(s->fd) < 0)
            rc = vs_fail(err, -errno, "finishing '%s': %s", o->tmp.path, strerror(errno));
        if (rc == 0 && rename(o->tmp.path, o->out_path) < 0)
            rc = vs_fail(err, -errno, "renaming the layer file to '%s': %s", o->out_path, strerror(errno));
        else if (rc == 0) {
            o->renamed = true;
            rc = fsync_parent(o->out_path, err);
            if (rc == 0 && o->verity && o->sidecar)
                rc = verity_sidecar_write(o->out_path, &result->layout, err);
        }
    }
    return rc;
}

/* Frees what out_open made; on failure removes the file, also when it was renamed into place already. */
static void out_close(struct layer_out *o, int rc)
{
    if (o->sink.fd >= 0) {
        close(o->sink.fd);
        if (rc < 0)
            unlink(o->renamed ? o->out_path : o->tmp.path);
        if (rc < 0 && o->renamed && o->verity && o->sidecar) {
            char side[PATH_MAX];
            snprintf(side, sizeof(side), "%s.dmverity", o->out_path);
            unlink(side);
        }
    }
    free(o->tmp.path);
    free(o->sink.carry);
    verity_builder_free(o->sink.builder);
}

static int build(int in_fd, const char *dir, const char *out_path, const struct layer_file_options *opts,
                 struct layer_file_result *result, struct vs_error *err)
{
    memset(result, 0, sizeof(*result));
    struct layer_out o;
    int rc = out_open(&o, out_path, opts, opts->tarfs.format, err);
    struct tarfs_sink sink = {sink_write, &o.sink};
    if (rc == 0)
        rc = dir ? tarfs_convert_dir(dir, &opts->tarfs, &sink, &result->image, err)
                 : tarfs_convert_fd(in_fd, &opts->tarfs, &sink, &result->image, err);
    if (rc == 0)
        rc = out_finish(&o, result, err);
    out_close(&o, rc);
    return rc;
}

int layer_file_build_fd_both(int in_fd, const char *erofs_path, const char *tarfs_path,
                             const struct layer_file_options *opts, struct layer_file_result *erofs_result,
                             struct layer_file_result *tarfs_result, struct vs_error *err)
{
    memset(erofs_result, 0, sizeof(*erofs_result));
    memset(tarfs_result, 0, sizeof(*tarfs_result));
    struct layer_file_options tarfs_opts = *opts;
    tarfs_opts.sidecar = false; /* the tarfs form carries tardev's trailer instead */
    struct layer_out e, t;
    int rc = out_open(&e, erofs_path, opts, TARFS_FORMAT_EROFS, err);
    int trc = out_open(&t, tarfs_path, &tarfs_opts, TARFS_FORMAT_TARFS, err);
    if (rc == 0)
        rc = trc;
    struct tarfs_sink esink = {sink_write, &e.sink}, tsink = {sink_write, &t.sink};
    if (rc == 0)
        rc = tarfs_convert_fd_both(in_fd, &opts->tarfs, &esink, &tsink, &erofs_result->image,
                                   &tarfs_result->image, err);
    if (rc == 0)
        rc = out_finish(&e, erofs_result, err);
    if (rc == 0)
        rc = out_finish(&t, tarfs_result, err);
    out_close(&e, rc);
    out_close(&t, rc);
    return rc;
}

int layer_file_build_fd(int in_fd, const char *out_path, const struct layer_file_options *opts,
                        struct layer_file_result *result, struct vs_error *err)
{
    return build(in_fd, NULL, out_path, opts, result, err);
}

int layer_file_build_dir(const char *dir, const char *out_path, const struct layer_file_options *opts,
                         struct layer_file_result *result, struct vs_error *err)
{
    return build(-1, dir, out_path, opts, result, err);
}
