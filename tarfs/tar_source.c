#include "sources.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WHITEOUT_PREFIX ".wh."
#define WHITEOUT_OPAQUE ".wh..wh..opq"
#define WHITEOUT_META_PREFIX ".wh..wh."

struct tar_reader {
    struct layer_stream *stream;
    struct vs_error read_err; /* a decompression error, kept so libarchive's generic one does not hide it */
};

static la_ssize_t archive_read_cb(struct archive *a, void *ctx, const void **out)
{
    struct tar_reader *r = ctx;
    long n = layer_stream_next(r->stream, out, &r->read_err);
    if (n < 0) {
        archive_set_error(a, EIO, "%s", r->read_err.message);
        return -1;
    }
    return n;
}

int source_warn(const struct tarfs_options *opts, const char *entry, const char *message, struct vs_error *err)
{
    if (opts->strict)
        return vs_fail(err, -EBADMSG, "entry '%s': %s (refused by --strict)", entry, message);
    if (opts->warning)
        opts->warning(opts->warning_ctx, entry, message);
    return 0;
}

static int add_xattrs(struct archive_entry *e, struct tree_inode *inode, const struct tarfs_options *opts,
                      const char *path, struct vs_error *err)
{
    const char *name;
    const void *value;
    size_t size;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
        char message[512];
        if (strncmp(name, "trusted.overlay.", 16) == 0) {
            /* overlayfs reads these as instructions (redirect, metacopy, opaque): a layer must not smuggle them. */
            snprintf(message, sizeof(message), "xattr '%s' dropped: overlayfs-private", name);
            int rc = source_warn(opts, path, message, err);
            if (rc < 0)
                return rc;
            continue;
        }
        int rc = tree_inode_add_xattr(inode, name, value, size, err);
        if (rc == -ENOTSUP) {
            snprintf(message, sizeof(message), "xattr '%s' dropped: namespace not representable in EROFS", name);
            rc = source_warn(opts, path, message, err);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int read_file_data(struct archive *a, struct erofs_writer *w, struct tree_inode *inode, uint64_t size,
                          struct vs_error *err)
{
    int rc = erofs_writer_data_begin(w, inode, err);
    if (rc < 0)
        return rc;
    for (;;) {
        const void *buf;
        size_t len;
        la_int64_t offset;
        int r = archive_read_data_block(a, &buf, &len, &offset);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK)
            return vs_fail(err, -EBADMSG, "file data: %s", archive_error_string(a));
        if (offset < 0 || (uint64_t)offset + len > size)
            return vs_fail(err, -EBADMSG, "file data past its declared size %llu", (unsigned long long)size);
        rc = erofs_writer_data_write(w, (uint64_t)offset, buf, len, err);
        if (rc < 0)
            return rc;
    }
    return erofs_writer_data_end(w, size, err);
}

static int entry_attrs(struct archive_entry *e, struct tree_inode *attrs, struct vs_error *err)
{
    la_int64_t uid = archive_entry_uid(e), gid = archive_entry_gid(e);
    if (uid < 0 || uid > UINT32_MAX || gid < 0 || gid > UINT32_MAX)
        return vs_fail(err, -EBADMSG, "uid %lld / gid %lld out of the 32-bit range", (long long)uid, (long long)gid);
    memset(attrs, 0, sizeof(*attrs));
    attrs->mode = archive_entry_filetype(e) | (archive_entry_perm(e) & 07777);
    attrs->uid = (uint32_t)uid;
    attrs->gid = (uint32_t)gid;
    if (archive_entry_mtime_is_set(e)) {
        attrs->mtime = archive_entry_mtime(e);
        long ns = archive_entry_mtime_nsec(e);
        attrs->mtime_nsec = ns > 0 && ns < 1000000000 ? (uint32_t)ns : 0;
    }
    if (S_ISCHR(attrs->mode) || S_ISBLK(attrs->mode)) {
        unsigned long major = archive_entry_rdevmajor(e), minor = archive_entry_rdevminor(e);
        if (major > 0xfff || minor > 0xfffff)
            return vs_fail(err, -EBADMSG, "device number %lu:%lu does not fit 12:20 bits", major, minor);
        attrs->rdev_major = (uint32_t)major;
        attrs->rdev_minor = (uint32_t)minor;
    }
    return 0;
}

static int add_entry(struct archive *a, struct archive_entry *e, struct erofs_writer *w,
                     const struct tarfs_options *opts, const char *path, struct vs_error *err)
{
    struct tree *t = erofs_writer_tree(w);
    char **parts = NULL, **target = NULL;
    uint32_t count = 0, target_count = 0;
    int rc = tree_path_split(path, &parts, &count, err);
    if (rc < 0)
        return rc;
    const char *base = count ? parts[count - 1] : "";
    const char *hardlink = archive_entry_hardlink(e);
    struct tree_inode attrs;
    struct tree_node *node;

    if (strcmp(base, WHITEOUT_OPAQUE) == 0) {
        rc = tree_set_opaque(t, parts, count - 1, err);
    } else if (strncmp(base, WHITEOUT_META_PREFIX, strlen(WHITEOUT_META_PREFIX)) == 0) {
        rc = source_warn(opts, path, "aufs metadata entry skipped", err);
    } else if (strncmp(base, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)) == 0) {
        /* An OCI whiteout becomes what overlayfs understands: a 0/0 character device with the hidden name. */
        memmove(parts[count - 1], base + strlen(WHITEOUT_PREFIX), strlen(base) - strlen(WHITEOUT_PREFIX) + 1);
        const char *hidden = parts[count - 1];
        if (hidden[0] == '\0' || strcmp(hidden, ".") == 0 || strcmp(hidden, "..") == 0) {
            rc = vs_fail(err, -EBADMSG, "whiteout of '%s' is not a name", hidden);
        } else if ((rc = entry_attrs(e, &attrs, err)) == 0) {
            attrs.mode = S_IFCHR;
            attrs.rdev_major = attrs.rdev_minor = 0;
            rc = tree_put(t, parts, count, &attrs, &node, err);
        }
    } else if (hardlink) {
        rc = tree_path_split(hardlink, &target, &target_count, err);
        if (rc == 0)
            rc = tree_link(t, parts, count, target, target_count, err);
        if (rc < 0 && err)
            vs_error_prefix(err, "hardlink to '%s'", hardlink);
    } else if ((rc = entry_attrs(e, &attrs, err)) == 0) {
        switch (attrs.mode & S_IFMT) {
        case S_IFREG:
        case S_IFDIR:
        case S_IFLNK:
        case S_IFCHR:
        case S_IFBLK:
        case S_IFIFO:
        case S_IFSOCK:
            break;
        default:
            rc = vs_fail(err, -EBADMSG, "unsupported entry type 0%o", attrs.mode & S_IFMT);
        }
        if (rc == 0)
            rc = tree_put(t, parts, count, &attrs, &node, err);
        if (rc == 0)
            rc = add_xattrs(e, node->inode, opts, path, err);
        if (rc == 0 && S_ISREG(attrs.mode)) {
            la_int64_t size = archive_entry_size(e);
            rc = size < 0 ? vs_fail(err, -EBADMSG, "negative size")
                          : read_file_data(a, w, node->inode, (uint64_t)size, err);
        } else if (rc == 0 && S_ISLNK(attrs.mode)) {
            const char *link = archive_entry_symlink(e);
            size_t len = link ? strlen(link) : 0;
            if (len == 0 || len >= 4096)
                rc = vs_fail(err, -EBADMSG, "symlink target of %zu bytes (1 to 4095 allowed)", len);
            if (rc == 0)
                rc = erofs_writer_data_begin(w, node->inode, err);
            if (rc == 0)
                rc = erofs_writer_data_write(w, 0, link, len, err);
            if (rc == 0)
                rc = erofs_writer_data_end(w, len, err);
        }
    }
    tree_path_free(parts, count);
    tree_path_free(target, target_count);
    return rc;
}

int tar_source_read(struct layer_stream *stream, struct erofs_writer *w, const struct tarfs_options *opts,
                    uint64_t *entries, struct vs_error *err)
{
    struct tar_reader r = {.stream = stream};
    struct archive *a = archive_read_new();
    if (!a)
        return vs_fail(err, -ENOMEM, "out of memory");
    archive_read_support_format_tar(a);
    int rc = 0;
    if (archive_read_open(a, &r, NULL, archive_read_cb, NULL) != ARCHIVE_OK) {
        rc = vs_fail(err, r.read_err.code ? r.read_err.code : -EBADMSG, "cannot read the layer as tar: %s",
                     r.read_err.code ? r.read_err.message : archive_error_string(a));
        goto out;
    }
    *entries = 0;
    for (;;) {
        struct archive_entry *e;
        int ar = archive_read_next_header(a, &e);
        if (ar == ARCHIVE_EOF)
            break;
        la_int64_t pos = archive_read_header_position(a);
        if (pos < 0) /* no header parsed: say where the reader stopped */
            pos = archive_filter_bytes(a, 0);
        if (ar == ARCHIVE_FATAL || ar == ARCHIVE_FAILED || ar == ARCHIVE_RETRY) {
            rc = vs_fail(err, r.read_err.code ? r.read_err.code : -EBADMSG, "tar header at byte offset %lld: %s",
                         (long long)pos, r.read_err.code ? r.read_err.message : archive_error_string(a));
            goto out;
        }
        (*entries)++;
        const char *path = archive_entry_pathname(e);
        if (!path) {
            rc = vs_fail(err, -EBADMSG, "tar entry at byte offset %lld has no name", (long long)pos);
            goto out;
        }
        rc = add_entry(a, e, w, opts, path, err);
        if (rc < 0) {
            if (r.read_err.code)
                vs_fail(err, r.read_err.code, "%s", r.read_err.message);
            vs_error_prefix(err, "entry '%s' at byte offset %lld", path, (long long)pos);
            goto out;
        }
    }
out:
    archive_read_free(a);
    return rc;
}
