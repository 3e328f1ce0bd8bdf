/* Reads EROFS images back (superblock, inodes, directories) with every offset bounds-checked: the reader of
 * `inspect` and the round-trip tests, and it must survive hostile files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "erofs_format.h"
#include "erofs_super.h"
#include "tardev_index.h"
#include "tarfs.h"

/* Deeper than any path the kernel can open (PATH_MAX 4096 allows at most 2048 components). */
#define MAX_DEPTH 2048

struct reader {
    int fd;
    uint64_t file_size;
    struct tarfs_image_info info;
    int (*fn)(void *ctx, const struct tarfs_entry *e);
    void *ctx;
    uint64_t visited;
    uint64_t ancestors[MAX_DEPTH + 1]; /* nids of the directories being walked, to refuse loops */
};

struct inode_view {
    uint64_t nid, pos;
    uint32_t isize, xattr_isize, layout;
    uint32_t mode, uid, gid, nlink, raw_blkaddr, xattr_count;
    uint64_t size;
    int64_t mtime;
    uint32_t mtime_nsec;
    bool opaque;
};

static int pread_exact(struct reader *r, void *buf, size_t len, uint64_t off, struct vs_error *err)
{
    if (off > r->file_size || len > r->file_size - off)
        return vs_fail(err, -EBADMSG, "read of %zu bytes at offset %llu is outside the image", len,
                       (unsigned long long)off);
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(r->fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vs_fail(err, n < 0 ? -errno : -EBADMSG, "reading the image at offset %llu failed",
                           (unsigned long long)(off + done));
        done += (size_t)n;
    }
    return 0;
}

int tarfs_erofs_probe(int fd, struct tarfs_image_info *info, struct vs_error *err)
{
    uint8_t block0[EROFS_BLKSZ];
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vs_fail(err, -errno, "stat: %s", strerror(errno));
    struct reader r = {.fd = fd, .file_size = (uint64_t)st.st_size};
    if (r.file_size < EROFS_BLKSZ)
        return vs_fail(err, -EBADMSG, "not an EROFS image: %llu bytes", (unsigned long long)r.file_size);
    int rc = pread_exact(&r, block0, sizeof(block0), 0, err);
    if (rc < 0)
        return rc;
    struct erofs_super_block sb;
    memcpy(&sb, block0 + EROFS_SUPER_OFFSET, sizeof(sb));
    if (sb.magic != EROFS_SUPER_MAGIC)
        return vs_fail(err, -EBADMSG, "not an EROFS image: no magic at byte 1024");
    if (sb.blkszbits != EROFS_BLKSZBITS)
        return vs_fail(err, -ENOTSUP, "EROFS block size 2^%u is not supported by this reader", sb.blkszbits);
    memset(info, 0, sizeof(*info));
    info->format = TARFS_FORMAT_EROFS;
    info->image_size = (uint64_t)sb.blocks * EROFS_BLKSZ;
    info->inodes = sb.inos;
    info->root_nid = sb.root_nid;
    info->meta_blkaddr = sb.meta_blkaddr;
    info->epoch = (int64_t)sb.build_time;
    memcpy(info->uuid, sb.uuid, 16);
    info->feature_compat = sb.feature_compat;
    info->feature_incompat = sb.feature_incompat;
    uint32_t stored = sb.checksum;
    memset(block0 + EROFS_SUPER_OFFSET + 4, 0, 4);
    info->checksum_ok = !(sb.feature_compat & EROFS_FEATURE_COMPAT_SB_CHKSUM) ||
                        erofs_crc32c(~0u, block0 + EROFS_SUPER_OFFSET, EROFS_BLKSZ - EROFS_SUPER_OFFSET) == stored;
    if (info->image_size > r.file_size)
        return vs_fail(err, -EBADMSG, "EROFS image claims %llu bytes, the file has %llu",
                       (unsigned long long)info->image_size, (unsigned long long)r.file_size);
    return 0;
}

static int read_inode(struct reader *r, uint64_t nid, struct inode_view *v, struct vs_error *err)
{
    memset(v, 0, sizeof(*v));
    v->nid = nid;
    v->pos = r->info.meta_blkaddr * EROFS_BLKSZ + nid * EROFS_SLOT;
    uint8_t raw[sizeof(struct erofs_inode_extended)];
    int rc = pread_exact(r, raw, sizeof(struct erofs_inode_compact), v->pos, err);
    if (rc < 0)
        return rc;
    uint16_t format;
    memcpy(&format, raw, 2);
    if (format & ~0xfu)
        return vs_fail(err, -EBADMSG, "inode %llu: unsupported i_format 0x%x", (unsigned long long)nid, format);
    v->layout = (format >> 1) & 7;
    if (v->layout != EROFS_INODE_FLAT_PLAIN && v->layout != EROFS_INODE_FLAT_INLINE)
        return vs_fail(err, -ENOTSUP, "inode %llu: data layout %u is not supported by this reader",
                       (unsigned long long)nid, v->layout);
    uint16_t icount;
    if (format & 1) {
        rc = pread_exact(r, raw, sizeof(struct erofs_inode_extended), v->pos, err);
        if (rc < 0)
            return rc;
        struct erofs_inode_extended x;
        memcpy(&x, raw, sizeof(x));
        v->isize = sizeof(x);
        icount = x.i_xattr_icount;
        v->mode = x.i_mode;
        v->nlink = x.i_nlink;
        v->size = x.i_size;
        v->raw_blkaddr = x.i_u;
        v->uid = x.i_uid;
        v->gid = x.i_gid;
        v->mtime = (int64_t)x.i_mtime;
        v->mtime_nsec = x.i_mtime_nsec;
    } else {
        struct erofs_inode_compact c;
        memcpy(&c, raw, sizeof(c));
        v->isize = sizeof(c);
        icount = c.i_xattr_icount;
        v->mode = c.i_mode;
        v->nlink = c.i_nlink;
        v->size = c.i_size;
        v->raw_blkaddr = c.i_u;
        v->uid = c.i_uid;
        v->gid = c.i_gid;
        v->mtime = r->info.epoch;
    }
    v->xattr_isize = icount ? 12u + 4u * (icount - 1u) : 0;
    /* Count xattrs and spot the opaque marker. */
    uint64_t p = v->pos + v->isize + 12, end = v->pos + v->isize + v->xattr_isize;
    while (v->xattr_isize && p < end) {
        struct erofs_xattr_entry e;
        rc = pread_exact(r, &e, sizeof(e), p, err);
        if (rc < 0)
            return rc;
        char name[256];
        rc = pread_exact(r, name, e.e_name_len, p + 4, err);
        if (rc < 0)
            return rc;
        if (e.e_name_index == EROFS_XATTR_INDEX_TRUSTED && e.e_name_len == 14 &&
            memcmp(name, "overlay.opaque", 14) == 0)
            v->opaque = true;
        v->xattr_count++;
        p += (4u + e.e_name_len + e.e_value_size + 3u) & ~3u;
    }
    if (v->xattr_isize && p != end)
        return vs_fail(err, -EBADMSG, "inode %llu: xattr entries do not fill the xattr area",
                       (unsigned long long)nid);
    return 0;
}

/* Reads len bytes of an inode's data starting at off. */
static int read_data(struct reader *r, const struct inode_view *v, uint64_t off, void *buf, size_t len,
                     struct vs_error *err)
{
    if (off > v->size || len > v->size - off)
        return vs_fail(err, -EBADMSG, "inode %llu: read past its size", (unsigned long long)v->nid);
    uint64_t full = v->layout == EROFS_INODE_FLAT_INLINE ? v->size / EROFS_BLKSZ * EROFS_BLKSZ : v->size;
    uint8_t *out = buf;
    while (len > 0) {
        size_t n;
        uint64_t at;
        if (off < full) {
            n = full - off < len ? (size_t)(full - off) : len;
            at = (uint64_t)v->raw_blkaddr * EROFS_BLKSZ + off;
        } else {
            n = len;
            at = v->pos + v->isize + v->xattr_isize + (off - full);
            if ((at % EROFS_BLKSZ) + (v->size - full) > EROFS_BLKSZ)
                return vs_fail(err, -EBADMSG, "inode %llu: inline data crosses a block", (unsigned long long)v->nid);
        }
        int rc = pread_exact(r, out, n, at, err);
        if (rc < 0)
            return rc;
        out += n;
        off += n;
        len -= n;
    }
    return 0;
}

static int emit(struct reader *r, const char *path, const struct inode_view *v, struct vs_error *err)
{
    char target[4096];
    struct tarfs_entry e = {
        .path = path, .mode = v->mode, .uid = v->uid, .gid = v->gid, .mtime = v->mtime,
        .mtime_nsec = v->mtime_nsec, .size = v->size, .nlink = v->nlink, .ino = v->nid,
        .opaque = v->opaque, .xattr_count = v->xattr_count,
    };
    if (S_ISLNK(v->mode)) {
        if (v->size == 0 || v->size >= sizeof(target))
            return vs_fail(err, -EBADMSG, "symlink '%s' has a target of %llu bytes", path,
                           (unsigned long long)v->size);
        int rc = read_data(r, v, 0, target, v->size, err);
        if (rc < 0)
            return rc;
        target[v->size] = '\0';
        e.link_target = target;
    }
    if (S_ISCHR(v->mode) || S_ISBLK(v->mode)) {
        e.rdev_major = (v->raw_blkaddr >> 8) & 0xfff;
        e.rdev_minor = (v->raw_blkaddr & 0xff) | ((v->raw_blkaddr >> 12) & 0xfff00);
    }
    int stop = r->fn(r->ctx, &e);
    return stop ? 1 : 0;
}

static int walk_dir_blocks(struct reader *r, const char *path, const struct inode_view *dir, int depth,
                           uint8_t *block, struct vs_error *err);

static int walk_dir(struct reader *r, const char *path, const struct inode_view *dir, int depth,
                    struct vs_error *err)
{
    if (depth > MAX_DEPTH)
        return vs_fail(err, -EBADMSG, "directory nesting deeper than %d at '%s'", MAX_DEPTH, path);
    for (int i = 0; i < depth; i++)
        if (r->ancestors[i] == dir->nid)
            return vs_fail(err, -EBADMSG, "directory '%s' contains its own ancestor (nid %llu): a loop", path,
                           (unsigned long long)dir->nid);
    r->ancestors[depth] = dir->nid;
    /* On the heap: one block per level of a deep (hostile) tree must not exhaust the stack. */
    uint8_t *block = malloc(EROFS_BLKSZ);
    if (!block)
        return vs_fail(err, -ENOMEM, "out of memory");
    int rc = walk_dir_blocks(r, path, dir, depth, block, err);
    free(block);
    return rc;
}

static int walk_dir_blocks(struct reader *r, const char *path, const struct inode_view *dir, int depth,
                           uint8_t *block, struct vs_error *err)
{
    for (uint64_t start = 0; start < dir->size; start += EROFS_BLKSZ) {
        size_t len = dir->size - start < EROFS_BLKSZ ? (size_t)(dir->size - start) : EROFS_BLKSZ;
        int rc = read_data(r, dir, start, block, len, err);
        if (rc < 0)
            return rc;
        struct erofs_dirent first;
        if (len < sizeof(first))
            return vs_fail(err, -EBADMSG, "directory '%s': short block", path);
        memcpy(&first, block, sizeof(first));
        uint32_t count = first.nameoff / sizeof(first);
        if (first.nameoff % sizeof(first) || count == 0 || first.nameoff >= len)
            return vs_fail(err, -EBADMSG, "directory '%s': bad first name offset %u", path, first.nameoff);
        for (uint32_t i = 0; i < count; i++) {
            struct erofs_dirent d, next;
            memcpy(&d, block + i * sizeof(d), sizeof(d));
            size_t name_end = len;
            if (i + 1 < count) {
                memcpy(&next, block + (i + 1) * sizeof(d), sizeof(d));
                name_end = next.nameoff;
            } else {
                void *nul = memchr(block + d.nameoff, 0, len > d.nameoff ? len - d.nameoff : 0);
                if (nul)
                    name_end = (size_t)((uint8_t *)nul - block);
            }
            if (d.nameoff >= len || name_end > len || name_end <= d.nameoff || name_end - d.nameoff > EROFS_NAME_LEN)
                return vs_fail(err, -EBADMSG, "directory '%s': bad dirent %u", path, i);
            size_t name_len = name_end - d.nameoff;
            const char *name = (const char *)block + d.nameoff;
            if ((name_len == 1 && name[0] == '.') || (name_len == 2 && name[0] == '.' && name[1] == '.'))
                continue;
            if (++r->visited > r->info.inodes * 4 + 1024)
                return vs_fail(err, -EBADMSG, "more directory entries than the image can hold (a loop?)");
            size_t plen = strlen(path);
            char *child = malloc(plen + name_len + 2);
            if (!child)
                return vs_fail(err, -ENOMEM, "out of memory");
            snprintf(child, plen + name_len + 2, "%s%s%.*s", path, plen ? "/" : "", (int)name_len, name);
            struct inode_view v;
            rc = read_inode(r, d.nid, &v, err);
            if (rc == 0)
                rc = emit(r, child, &v, err);
            if (rc == 0 && S_ISDIR(v.mode))
                rc = walk_dir(r, child, &v, depth + 1, err);
            free(child);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

struct tardev_adapter {
    int (*fn)(void *ctx, const struct tarfs_entry *e);
    void *ctx;
};

static int tardev_entry_cb(void *ctx, const struct tardev_entry *t)
{
    struct tardev_adapter *a = ctx;
    struct tarfs_entry e = {
        .path = t->path, .mode = t->mode, .uid = t->uid, .gid = t->gid, .mtime = (int64_t)t->mtime,
        .size = t->size, .nlink = 1, .ino = 0, .link_target = t->link_target, .rdev_major = t->rdev_major,
        .rdev_minor = t->rdev_minor, .opaque = t->opaque,
    };
    return a->fn(a->ctx, &e);
}

int tarfs_list(int fd, enum tarfs_format format, uint64_t data_size,
               int (*fn)(void *ctx, const struct tarfs_entry *e), void *ctx, struct vs_error *err)
{
    if (format == TARFS_FORMAT_TARFS) {
        struct tardev_adapter a = {fn, ctx};
        return tardev_index_list(fd, data_size, tardev_entry_cb, &a, err);
    }
    struct reader r = {.fd = fd, .fn = fn, .ctx = ctx};
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vs_fail(err, -errno, "stat: %s", strerror(errno));
    r.file_size = (uint64_t)st.st_size;
    int rc = tarfs_erofs_probe(fd, &r.info, err);
    if (rc < 0)
        return rc;
    struct inode_view root;
    rc = read_inode(&r, r.info.root_nid, &root, err);
    if (rc < 0)
        return rc;
    if (!S_ISDIR(root.mode))
        return vs_fail(err, -EBADMSG, "the root inode is not a directory");
    rc = emit(&r, "", &root, err);
    if (rc == 0)
        rc = walk_dir(&r, "", &root, 0, err);
    return rc < 0 ? rc : 0;
}
