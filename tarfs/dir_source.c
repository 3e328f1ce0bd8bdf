#include "sources.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/vs_digest.h"

#define DATA_CHUNK (1u << 20)

struct hardlink_seen {
    dev_t dev;
    ino_t ino;
    char *path; /* relative path of the first name */
};

struct dir_walk {
    struct erofs_writer *w;
    const struct tarfs_options *opts;
    struct vs_sha256 *sha;
    uint8_t *buf;
    uint64_t entries;
    struct hardlink_seen *links;
    size_t link_count, link_cap;
    const char *root;
};

static int name_cmp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    return tree_name_cmp(x, strlen(x), y, strlen(y));
}

/* Canonical record of one entry for the directory digest: path, attributes, then (for files) the content. */
static void digest_entry(struct dir_walk *d, const char *rel, const struct stat *st)
{
    char rec[128];
    vs_sha256_update(d->sha, rel, strlen(rel) + 1);
    int n = snprintf(rec, sizeof(rec), "%o %u %u %lld.%09ld %u:%u %lld", st->st_mode, st->st_uid, st->st_gid,
                     (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, major(st->st_rdev), minor(st->st_rdev),
                     (long long)st->st_size);
    vs_sha256_update(d->sha, rec, (size_t)n + 1);
}

static int copy_xattrs(struct dir_walk *d, const char *full, const char *rel, struct tree_inode *inode,
                       struct vs_error *err)
{
    ssize_t len = llistxattr(full, NULL, 0);
    if (len < 0)
        return errno == ENOTSUP ? 0 : vs_fail(err, -errno, "listing xattrs of '%s': %s", rel, strerror(errno));
    if (len == 0)
        return 0;
    char *names = malloc((size_t)len);
    if (!names)
        return vs_fail(err, -ENOMEM, "out of memory");
    len = llistxattr(full, names, (size_t)len);
    int rc = len < 0 ? vs_fail(err, -errno, "listing xattrs of '%s': %s", rel, strerror(errno)) : 0;
    /* Sorted names keep the digest independent of the filesystem's listing order. */
    size_t count = 0;
    for (ssize_t i = 0; rc == 0 && i < len; i += (ssize_t)strlen(names + i) + 1)
        count++;
    char **list = calloc(count ? count : 1, sizeof(*list));
    if (!list)
        rc = vs_fail(err, -ENOMEM, "out of memory");
    count = 0;
    for (ssize_t i = 0; rc == 0 && i < len; i += (ssize_t)strlen(names + i) + 1)
        list[count++] = names + i;
    if (rc == 0)
        qsort(list, count, sizeof(*list), name_cmp);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        const char *name = list[i];
        if (strncmp(name, "trusted.overlay.", 16) == 0 && strcmp(name, "trusted.overlay.opaque") != 0)
            continue; /* overlayfs bookkeeping of the upper dir (origin, impure, ...) */
        ssize_t vlen = lgetxattr(full, name, d->buf, DATA_CHUNK);
        if (vlen < 0) {
            rc = vs_fail(err, -errno, "reading xattr '%s' of '%s': %s", name, rel, strerror(errno));
            break;
        }
        vs_sha256_update(d->sha, name, strlen(name) + 1);
        vs_sha256_update(d->sha, d->buf, (size_t)vlen);
        rc = tree_inode_add_xattr(inode, name, d->buf, (size_t)vlen, err);
        if (rc == -ENOTSUP) {
            char message[512];
            snprintf(message, sizeof(message), "xattr '%s' dropped: namespace not representable in EROFS", name);
            rc = source_warn(d->opts, rel, message, err);
        }
    }
    free(list);
    free(names);
    return rc;
}

static int copy_data(struct dir_walk *d, const char *full, const char *rel, const struct stat *st,
                     struct tree_inode *inode, struct vs_error *err)
{
    int rc = erofs_writer_data_begin(d->w, inode, err);
    if (rc < 0)
        return rc;
    if (S_ISLNK(st->st_mode)) {
        ssize_t n = readlink(full, (char *)d->buf, 4096);
        if (n <= 0 || n >= 4096)
            return vs_fail(err, n < 0 ? -errno : -EBADMSG, "reading symlink '%s'", rel);
        vs_sha256_update(d->sha, d->buf, (size_t)n);
        rc = erofs_writer_data_write(d->w, 0, d->buf, (size_t)n, err);
        return rc < 0 ? rc : erofs_writer_data_end(d->w, (uint64_t)n, err);
    }
    int fd = open(full, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return vs_fail(err, -errno, "opening '%s': %s", rel, strerror(errno));
    uint64_t off = 0;
    for (;;) {
        ssize_t n = read(fd, d->buf, DATA_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = vs_fail(err, -errno, "reading '%s': %s", rel, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        vs_sha256_update(d->sha, d->buf, (size_t)n);
        rc = erofs_writer_data_write(d->w, off, d->buf, (size_t)n, err);
        if (rc < 0)
            break;
        off += (uint64_t)n;
    }
    close(fd);
    if (rc == 0 && off != (uint64_t)st->st_size)
        rc = vs_fail(err, -EIO, "'%s' changed size while being read", rel);
    return rc < 0 ? rc : erofs_writer_data_end(d->w, off, err);
}

static int walk(struct dir_walk *d, const char *full, const char *rel, struct vs_error *err);

static int add_one(struct dir_walk *d, const char *full, const char *rel, struct vs_error *err)
{
    struct stat st;
    if (lstat(full, &st) < 0)
        return vs_fail(err, -errno, "stat '%s': %s", rel, strerror(errno));
    d->entries++;
    digest_entry(d, rel, &st);
    struct tree *t = erofs_writer_tree(d->w);
    char **parts;
    uint32_t count;
    int rc = tree_path_split(rel, &parts, &count, err);
    if (rc < 0)
        return rc;
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
        for (size_t i = 0; i < d->link_count; i++) {
            if (d->links[i].dev == st.st_dev && d->links[i].ino == st.st_ino) {
                char **target;
                uint32_t target_count;
                rc = tree_path_split(d->links[i].path, &target, &target_count, err);
                if (rc == 0)
                    rc = tree_link(t, parts, count, target, target_count, err);
                tree_path_free(target, target_count);
                tree_path_free(parts, count);
                return rc;
            }
        }
        if (d->link_count == d->link_cap) {
            size_t cap = d->link_cap ? d->link_cap * 2 : 64;
            struct hardlink_seen *l = realloc(d->links, cap * sizeof(*l));
            if (!l) {
                tree_path_free(parts, count);
                return vs_fail(err, -ENOMEM, "out of memory");
            }
            d->links = l;
            d->link_cap = cap;
        }
        d->links[d->link_count++] = (struct hardlink_seen){st.st_dev, st.st_ino, strdup(rel)};
    }
    struct tree_inode attrs = {
        .mode = st.st_mode,
        .uid = st.st_uid,
        .gid = st.st_gid,
        .mtime = st.st_mtim.tv_sec,
        .mtime_nsec = (uint32_t)st.st_mtim.tv_nsec,
        .rdev_major = major(st.st_rdev),
        .rdev_minor = minor(st.st_rdev),
    };
    struct tree_node *node;
    rc = tree_put(t, parts, count, &attrs, &node, err);
    tree_path_free(parts, count);
    if (rc == 0)
        rc = copy_xattrs(d, full, rel, node->inode, err);
    if (rc == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
        rc = copy_data(d, full, rel, &st, node->inode, err);
    if (rc == 0 && S_ISDIR(st.st_mode))
        rc = walk(d, full, rel, err);
    return rc;
}

static int walk(struct dir_walk *d, const char *full, const char *rel, struct vs_error *err)
{
    DIR *dir = opendir(full);
    if (!dir)
        return vs_fail(err, -errno, "opening directory '%s': %s", rel[0] ? rel : ".", strerror(errno));
    size_t count = 0, cap = 64;
    char **names = malloc(cap * sizeof(*names));
    int rc = names ? 0 : vs_fail(err, -ENOMEM, "out of memory");
    struct dirent *de;
    while (rc == 0 && (de = readdir(dir))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (count == cap) {
            cap *= 2;
            char **n = realloc(names, cap * sizeof(*n));
            if (!n) {
                rc = vs_fail(err, -ENOMEM, "out of memory");
                break;
            }
            names = n;
        }
        if (!(names[count] = strdup(de->d_name)))
            rc = vs_fail(err, -ENOMEM, "out of memory");
        else
            count++;
    }
    closedir(dir);
    if (rc == 0)
        qsort(names, count, sizeof(*names), name_cmp);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        size_t flen = strlen(full) + strlen(names[i]) + 2, rlen = strlen(rel) + strlen(names[i]) + 2;
        char *f = malloc(flen), *r = malloc(rlen);
        if (!f || !r) {
            rc = vs_fail(err, -ENOMEM, "out of memory");
        } else {
            snprintf(f, flen, "%s/%s", full, names[i]);
            snprintf(r, rlen, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
            rc = add_one(d, f, r, err);
        }
        free(f);
        free(r);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return rc;
}

int dir_source_read(const char *path, struct erofs_writer *w, const struct tarfs_options *opts,
                    uint64_t *entries, uint8_t digest[32], struct vs_error *err)
{
    struct dir_walk d = {.w = w, .opts = opts, .root = path};
    d.sha = vs_sha256_new();
    d.buf = malloc(DATA_CHUNK);
    int rc = d.sha && d.buf ? 0 : vs_fail(err, -ENOMEM, "out of memory");
    struct stat st;
    if (rc == 0 && (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)))
        rc = vs_fail(err, -ENOTDIR, "'%s' is not a directory", path);
    if (rc == 0) {
        struct tree_inode attrs = {.mode = st.st_mode, .uid = st.st_uid, .gid = st.st_gid,
                                   .mtime = st.st_mtim.tv_sec, .mtime_nsec = (uint32_t)st.st_mtim.tv_nsec};
        struct tree_node *root;
        digest_entry(&d, "", &st);
        rc = tree_put(erofs_writer_tree(w), NULL, 0, &attrs, &root, err);
        if (rc == 0)
            rc = copy_xattrs(&d, path, "", root->inode, err);
    }
    if (rc == 0)
        rc = walk(&d, path, "", err);
    if (rc == 0)
        vs_sha256_final(d.sha, digest);
    *entries = d.entries;
    for (size_t i = 0; i < d.link_count; i++)
        free(d.links[i].path);
    free(d.links);
    free(d.buf);
    vs_sha256_free(d.sha);
    return rc;
}
