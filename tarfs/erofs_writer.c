#include "erofs_writer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "erofs_format.h"
#include "erofs_super.h"

#define STAGE_BLOCKS 256 /* 1 MiB of file data per sink write */
#define DEFAULT_TAIL_BUDGET (24u << 20)
/* Room every inode needs in front of an inline tail: an extended inode is the larger core. */
#define TAIL_RESERVE 64u

struct erofs_writer {
    struct tarfs_sink sink;
    struct tree *tree;
    size_t tail_budget;
    uint64_t max_image_size; /* 0: no limit */
    uint64_t next_block; /* next free data block; block 0 is the superblock's */
    /* Staging of the file being streamed: blocks from stage_block, stage_len bytes. */
    uint8_t *stage;
    size_t stage_len;
    uint64_t stage_block;
    struct tree_inode *current;
    uint64_t current_written; /* file bytes received so far (including zero fill) */
    /* Layout. */
    struct tree_inode **order; /* inodes in placement order (root first) */
    size_t order_count, order_cap;
    int64_t epoch;
    uint64_t meta_blkaddr;
    uint64_t meta_end; /* bytes used in the metadata area */
    /* Sequential metadata output. */
    uint8_t block[EROFS_BLKSZ];
    uint64_t block_index; /* image block number of block[] */
};

struct erofs_writer *erofs_writer_new(const struct tarfs_sink *sink, size_t tail_budget, uint64_t max_image_size,
                                      struct vs_error *err)
{
    struct erofs_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        vs_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    w->sink = *sink;
    w->tail_budget = tail_budget ? tail_budget : DEFAULT_TAIL_BUDGET;
    w->max_image_size = max_image_size;
    w->next_block = 1;
    w->stage = aligned_alloc(EROFS_BLKSZ, (size_t)STAGE_BLOCKS * EROFS_BLKSZ);
    w->tree = tree_new(err);
    if (!w->stage || !w->tree) {
        erofs_writer_free(w);
        if (err && !err->code)
            vs_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    return w;
}

void erofs_writer_free(struct erofs_writer *w)
{
    if (!w)
        return;
    tree_free(w->tree);
    free(w->stage);
    free(w->order);
    free(w);
}

struct tree *erofs_writer_tree(struct erofs_writer *w)
{
    return w->tree;
}

static int sink_write(struct erofs_writer *w, uint64_t block, const void *data, size_t len, struct vs_error *err)
{
    return w->sink.write(w->sink.ctx, block * EROFS_BLKSZ, data, len, err);
}

/* ---- file data ---- */

static int stage_flush_full(struct erofs_writer *w, struct vs_error *err)
{
    size_t full = w->stage_len / EROFS_BLKSZ;
    if (full == 0)
        return 0;
    int rc = sink_write(w, w->stage_block, w->stage, full * EROFS_BLKSZ, err);
    if (rc < 0)
        return rc;
    size_t rest = w->stage_len - full * EROFS_BLKSZ;
    memmove(w->stage, w->stage + full * EROFS_BLKSZ, rest);
    w->stage_block += full;
    w->stage_len = rest;
    return 0;
}

static int check_size(const struct erofs_writer *w, uint64_t bytes, struct vs_error *err)
{
    if (w->max_image_size && bytes > w->max_image_size)
        return vs_fail(err, -EFBIG, "the layer expands beyond the limit of %llu bytes",
                       (unsigned long long)w->max_image_size);
    return 0;
}

static int stage_append(struct erofs_writer *w, const void *data, size_t len, struct vs_error *err)
{
    int rc = check_size(w, w->stage_block * EROFS_BLKSZ + w->stage_len + len, err);
    if (rc < 0)
        return rc;
    const uint8_t *p = data;
    size_t cap = (size_t)STAGE_BLOCKS * EROFS_BLKSZ;
    while (len > 0) {
        size_t n = cap - w->stage_len;
        if (n > len)
            n = len;
        if (p)
            memcpy(w->stage + w->stage_len, p, n);
        else
            memset(w->stage + w->stage_len, 0, n);
        w->stage_len += n;
        len -= n;
        if (p)
            p += n;
        if (w->stage_len == cap) {
            int rc = stage_flush_full(w, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int erofs_writer_data_begin(struct erofs_writer *w, struct tree_inode *inode, struct vs_error *err)
{
    if (w->current)
        return vs_fail(err, -EINVAL, "internal: file data started twice");
    w->current = inode;
    w->current_written = 0;
    w->stage_len = 0;
    w->stage_block = w->next_block;
    return 0;
}

int erofs_writer_data_write(struct erofs_writer *w, uint64_t offset, const void *data, size_t len,
                            struct vs_error *err)
{
    if (offset < w->current_written)
        return vs_fail(err, -EBADMSG, "file data goes backwards (offset %llu after %llu)",
                       (unsigned long long)offset, (unsigned long long)w->current_written);
    int rc = 0;
    if (offset > w->current_written)
        rc = stage_append(w, NULL, offset - w->current_written, err); /* a hole of a sparse file */
    if (rc == 0)
        rc = stage_append(w, data, len, err);
    w->current_written = offset + len;
    return rc;
}

int erofs_writer_data_end(struct erofs_writer *w, uint64_t size, struct vs_error *err)
{
    struct tree_inode *inode = w->current;
    if (!inode)
        return vs_fail(err, -EINVAL, "internal: file data ended without a start");
    int rc = 0;
    if (size < w->current_written)
        return vs_fail(err, -EBADMSG, "file data longer (%llu bytes) than its size (%llu)",
                       (unsigned long long)w->current_written, (unsigned long long)size);
    if (size > w->current_written)
        rc = stage_append(w, NULL, size - w->current_written, err);
    if (rc < 0)
        return rc;
    w->current = NULL;
    inode->size = size;
    uint64_t full = size / EROFS_BLKSZ;
    uint32_t tail = (uint32_t)(size % EROFS_BLKSZ);
    if (w->next_block + full + 1 > UINT32_MAX)
        return vs_fail(err, -EFBIG, "image would exceed 2^32 blocks");
    inode->data_blocks = full;
    inode->data_blkaddr = full ? (uint32_t)w->next_block : EROFS_NULL_ADDR;
    if (tail && TAIL_RESERVE + inode->xattr_isize + tail <= EROFS_BLKSZ &&
        tree_tail_bytes(w->tree) + tail <= w->tail_budget) {
        /* Keep the tail for the metadata area: it will sit right after its inode. */
        size_t at = w->stage_len - tail;
        inode->tail = malloc(tail);
        if (!inode->tail)
            return vs_fail(err, -ENOMEM, "out of memory");
        memcpy(inode->tail, w->stage + at, tail);
        inode->tail_len = tail;
        tree_account_tail(w->tree, tail);
        w->stage_len = at;
    } else if (tail) {
        rc = stage_append(w, NULL, EROFS_BLKSZ - tail, err);
        if (rc < 0)
            return rc;
        inode->tail_in_block = true;
        inode->data_blocks++;
        if (!full)
            inode->data_blkaddr = (uint32_t)w->next_block;
    }
    rc = stage_flush_full(w, err);
    if (rc < 0)
        return rc;
    w->next_block += inode->data_blocks;
    return 0;
}

/* ---- layout ---- */

static uint32_t inode_core_size(const struct tree_inode *inode)
{
    return inode->extended ? sizeof(struct erofs_inode_extended) : sizeof(struct erofs_inode_compact);
}

static uint8_t file_type_of(uint32_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return EROFS_FT_REG_FILE;
    case S_IFDIR: return EROFS_FT_DIR;
    case S_IFCHR: return EROFS_FT_CHRDEV;
    case S_IFBLK: return EROFS_FT_BLKDEV;
    case S_IFIFO: return EROFS_FT_FIFO;
    case S_IFSOCK: return EROFS_FT_SOCK;
    case S_IFLNK: return EROFS_FT_SYMLINK;
    default: return EROFS_FT_UNKNOWN;
    }
}

/* A directory's entries, "." and ".." included, in the byte order the kernel's binary search needs. */
struct dirent_ref {
    const char *name;
    uint16_t len;
    struct tree_inode *inode;
};

static int dirent_cmp(const void *pa, const void *pb)
{
    const struct dirent_ref *a = pa, *b = pb;
    return tree_name_cmp(a->name, a->len, b->name, b->len);
}

static struct dirent_ref *dir_entries(struct tree_node *dir, uint32_t *count)
{
    uint32_t n = dir->child_count + 2;
    struct dirent_ref *e = malloc(n * sizeof(*e));
    if (!e)
        return NULL;
    e[0] = (struct dirent_ref){".", 1, dir->inode};
    e[1] = (struct dirent_ref){"..", 2, dir->parent ? dir->parent->inode : dir->inode};
    for (uint32_t i = 0; i < dir->child_count; i++)
        e[i + 2] = (struct dirent_ref){dir->children[i]->name, dir->children[i]->name_len,
                                       dir->children[i]->inode};
    /* Children are sorted already; only the dot entries need merging, but names below '.' exist. */
    qsort(e, n, sizeof(*e), dirent_cmp);
    *count = n;
    return e;
}

static uint64_t dir_size(const struct dirent_ref *e, uint32_t count)
{
    uint64_t d = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t len = sizeof(struct erofs_dirent) + e[i].len;
        if ((d % EROFS_BLKSZ) + len > EROFS_BLKSZ)
            d = (d + EROFS_BLKSZ - 1) / EROFS_BLKSZ * EROFS_BLKSZ;
        d += len;
    }
    return d;
}

/* Renders directory blocks into buf (zeroed, a whole number of blocks). */
static void dir_render(const struct dirent_ref *e, uint32_t count, uint8_t *buf)
{
    uint32_t i = 0;
    uint64_t block_start = 0;
    while (i < count) {
        uint32_t n = 0, used = 0;
        while (i + n < count && used + sizeof(struct erofs_dirent) + e[i + n].len <= EROFS_BLKSZ) {
            used += sizeof(struct erofs_dirent) + e[i + n].len;
            n++;
        }
        uint8_t *blk = buf + block_start;
        uint32_t nameoff = n * sizeof(struct erofs_dirent);
        for (uint32_t k = 0; k < n; k++) {
            const struct dirent_ref *r = &e[i + k];
            struct erofs_dirent d = {.nid = r->inode->nid, .nameoff = (uint16_t)nameoff,
                                     .file_type = file_type_of(r->inode->mode)};
            memcpy(blk + k * sizeof(d), &d, sizeof(d));
            memcpy(blk + nameoff, r->name, r->len);
            nameoff += r->len;
        }
        i += n;
        block_start += EROFS_BLKSZ;
    }
}

static int order_push(struct erofs_writer *w, struct tree_inode *inode, struct vs_error *err)
{
    if (inode->placed)
        return 0;
    if (w->order_count == w->order_cap) {
        size_t cap = w->order_cap ? w->order_cap * 2 : 1024;
        struct tree_inode **o = realloc(w->order, cap * sizeof(*o));
        if (!o)
            return vs_fail(err, -ENOMEM, "out of memory");
        w->order = o;
        w->order_cap = cap;
    }
    inode->placed = true; /* "queued"; positions come later */
    inode->serial = (uint32_t)(w->order_count + 1);
    w->order[w->order_count++] = inode;
    return 0;
}

static int collect_dir(void *ctx, struct tree_node *dir)
{
    struct erofs_writer *w = ctx;
    uint32_t subdirs = 0;
    if (!dir->parent && order_push(w, dir->inode, NULL) < 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < dir->child_count; i++) {
        struct tree_inode *c = dir->children[i]->inode;
        if (S_ISDIR(c->mode))
            subdirs++;
        if (order_push(w, c, NULL) < 0)
            return -ENOMEM;
    }
    dir->inode->nlink = 2 + subdirs;
    return 0;
}

static int cmp_i64(const void *pa, const void *pb)
{
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    return a < b ? -1 : a > b;
}

/* The superblock time that compact inodes show: the most common whole-second mtime, so that most inodes can be
 * compact while every inode keeps its own mtime (extended inodes carry theirs). */
static int choose_epoch(struct erofs_writer *w, struct vs_error *err)
{
    int64_t *t = malloc((w->order_count ? w->order_count : 1) * sizeof(*t));
    if (!t)
        return vs_fail(err, -ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < w->order_count; i++)
        if (w->order[i]->mtime_nsec == 0)
            t[n++] = w->order[i]->mtime;
    qsort(t, n, sizeof(*t), cmp_i64);
    int64_t best = 0;
    size_t best_run = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && t[j] == t[i])
            j++;
        if (j - i > best_run) {
            best_run = j - i;
            best = t[i];
        }
        i = j;
    }
    free(t);
    w->epoch = best;
    return 0;
}

static bool needs_extended(const struct erofs_writer *w, const struct tree_inode *inode)
{
    return inode->size > UINT32_MAX || inode->uid > UINT16_MAX || inode->gid > UINT16_MAX ||
           inode->nlink > UINT16_MAX || inode->mtime != w->epoch || inode->mtime_nsec != 0;
}

static int layout(struct erofs_writer *w, struct vs_error *err)
{
    tree_sort(w->tree);
    int rc = tree_walk_bfs(w->tree, collect_dir, w, err);
    if (rc < 0)
        return vs_fail(err, rc, "out of memory laying out the image");
    rc = choose_epoch(w, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < w->order_count; i++)
        w->order[i]->extended = needs_extended(w, w->order[i]);
    return 0;
}

/* Directory sizes and blocks; directories' full blocks follow the file data. */
static int layout_dir(void *ctx, struct tree_node *dir)
{
    struct erofs_writer *w = ctx;
    struct tree_inode *inode = dir->inode;
    uint32_t count;
    struct dirent_ref *e = dir_entries(dir, &count);
    if (!e)
        return -ENOMEM;
    inode->size = dir_size(e, count);
    free(e);
    uint32_t tail = (uint32_t)(inode->size % EROFS_BLKSZ);
    inode->data_blocks = inode->size / EROFS_BLKSZ;
    if (tail && inode_core_size(inode) + inode->xattr_isize + tail <= EROFS_BLKSZ) {
        inode->dir_tail_len = tail;
        inode->inline_tail = true;
    } else if (tail) {
        inode->data_blocks++;
    }
    inode->data_blkaddr = inode->data_blocks ? (uint32_t)w->next_block : EROFS_NULL_ADDR;
    w->next_block += inode->data_blocks;
    return 0;
}

/* Metadata packing: every inode unit (core + inline xattrs + inline tail) is known before anything is written, so
 * units are packed first-fit decreasing into blocks (a unit with an inline tail must not cross a block); a segment
 * tree over the blocks' free bytes finds the first block that fits in O(log n). The root goes first so that its
 * nid fits the superblock's 16 bits. Units too large for one block (huge xattr sets) go after all blocks. */
struct packer {
    uint32_t *tree; /* max free bytes per subtree; leaves are blocks */
    uint32_t *used; /* bytes used per block */
    size_t leaves, blocks;
};

static void packer_update(struct packer *p, size_t block)
{
    size_t i = p->leaves + block;
    p->tree[i] = EROFS_BLKSZ - p->used[block];
    for (i /= 2; i >= 1; i /= 2)
        p->tree[i] = p->tree[2 * i] > p->tree[2 * i + 1] ? p->tree[2 * i] : p->tree[2 * i + 1];
}

/* First block (lowest index) with at least len free bytes; opens a new block when none has. */
static size_t packer_find(struct packer *p, uint32_t len)
{
    if (p->tree[1] < len)
        return p->blocks;
    size_t i = 1;
    while (i < p->leaves)
        i = p->tree[2 * i] >= len ? 2 * i : 2 * i + 1;
    return i - p->leaves;
}

struct unit {
    struct tree_inode *inode;
    uint32_t len;
    uint32_t order;
};

static int unit_cmp(const void *pa, const void *pb)
{
    const struct unit *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static uint32_t unit_len(const struct tree_inode *inode)
{
    uint32_t tail = S_ISDIR(inode->mode) ? inode->dir_tail_len : inode->tail_len;
    uint32_t len = inode_core_size(inode) + inode->xattr_isize + (inode->inline_tail ? tail : 0);
    return (len + EROFS_SLOT - 1) & ~(EROFS_SLOT - 1u);
}

static int place_inodes(struct erofs_writer *w, struct vs_error *err)
{
    w->meta_blkaddr = w->next_block;
    size_t n = w->order_count;
    struct unit *units = calloc(n ? n : 1, sizeof(*units));
    struct packer p = {0};
    p.leaves = 1;
    while (p.leaves < n + 1)
        p.leaves *= 2;
    p.tree = calloc(2 * p.leaves, sizeof(*p.tree));
    p.used = calloc(p.leaves, sizeof(*p.used));
    if (!units || !p.tree || !p.used) {
        free(units);
        free(p.tree);
        free(p.used);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    size_t count = 0;
    uint64_t oversized = 0;
    for (size_t i = 0; i < n; i++) {
        struct tree_inode *inode = w->order[i];
        if (S_ISREG(inode->mode) || S_ISLNK(inode->mode))
            inode->inline_tail = inode->tail != NULL;
        uint32_t len = unit_len(inode);
        if (i == 0) {
            /* nid 0 would be inode number 0, which some tools skip: the root starts at slot 1. */
            p.used[0] = EROFS_SLOT + len;
            p.blocks = 1;
            inode->pos = EROFS_SLOT;
            packer_update(&p, 0);
        } else if (len > EROFS_BLKSZ) {
            oversized++;
            inode->pos = UINT64_MAX;
        } else {
            units[count++] = (struct unit){inode, len, (uint32_t)i};
        }
    }
    qsort(units, count, sizeof(*units), unit_cmp);
    for (size_t i = 0; i < count; i++) {
        size_t b = packer_find(&p, units[i].len);
        if (b == p.blocks)
            p.blocks++;
        units[i].inode->pos = (uint64_t)b * EROFS_BLKSZ + p.used[b];
        p.used[b] += units[i].len;
        packer_update(&p, b);
    }
    w->meta_end = (uint64_t)p.blocks * EROFS_BLKSZ;
    for (size_t i = 0; oversized && i < n; i++) {
        struct tree_inode *inode = w->order[i];
        if (inode->pos != UINT64_MAX)
            continue;
        inode->pos = w->meta_end; /* may cross blocks: only the core and xattrs, no inline tail */
        w->meta_end += unit_len(inode);
    }
    free(units);
    free(p.tree);
    free(p.used);
    for (size_t i = 0; i < n; i++) {
        struct tree_inode *inode = w->order[i];
        inode->nid = inode->pos / EROFS_SLOT;
        inode->pos += w->meta_blkaddr * EROFS_BLKSZ;
    }
    uint64_t meta_blocks = (w->meta_end + EROFS_BLKSZ - 1) / EROFS_BLKSZ;
    if (w->meta_blkaddr + meta_blocks > UINT32_MAX)
        return vs_fail(err, -EFBIG, "image would exceed 2^32 blocks");
    w->next_block = w->meta_blkaddr + meta_blocks;
    return check_size(w, w->next_block * EROFS_BLKSZ, err);
}

/* ---- emission ---- */

static int write_dir_blocks(void *ctx, struct tree_node *dir)
{
    struct erofs_writer *w = ctx;
    struct tree_inode *inode = dir->inode;
    if (!inode->data_blocks)
        return 0;
    uint32_t count;
    struct dirent_ref *e = dir_entries(dir, &count);
    size_t bytes = (inode->size + EROFS_BLKSZ - 1) / EROFS_BLKSZ * EROFS_BLKSZ;
    uint8_t *buf = e ? calloc(1, bytes) : NULL;
    if (!buf) {
        free(e);
        return -ENOMEM;
    }
    dir_render(e, count, buf);
    free(e);
    struct vs_error err;
    int rc = sink_write(w, inode->data_blkaddr, buf, inode->data_blocks * EROFS_BLKSZ, &err);
    free(buf);
    return rc;
}

static int meta_flush(struct erofs_writer *w, struct vs_error *err)
{
    int rc = sink_write(w, w->block_index, w->block, EROFS_BLKSZ, err);
    memset(w->block, 0, EROFS_BLKSZ);
    w->block_index++;
    return rc;
}

/* Puts bytes at an absolute image offset, at or after everything put before. */
static int meta_put(struct erofs_writer *w, uint64_t pos, const void *data, size_t len, struct vs_error *err)
{
    const uint8_t *p = data;
    while (len > 0) {
        while (pos >= (w->block_index + 1) * EROFS_BLKSZ) {
            int rc = meta_flush(w, err);
            if (rc < 0)
                return rc;
        }
        size_t off = pos % EROFS_BLKSZ, n = EROFS_BLKSZ - off;
        if (n > len)
            n = len;
        memcpy(w->block + off, p, n);
        pos += n;
        p += n;
        len -= n;
    }
    return 0;
}

static uint32_t inode_i_u(const struct tree_inode *inode)
{
    switch (inode->mode & S_IFMT) {
    case S_IFCHR:
    case S_IFBLK:
        return erofs_encode_dev(inode->rdev_major, inode->rdev_minor);
    case S_IFIFO:
    case S_IFSOCK:
        return 0;
    default:
        if (inode->data_blocks)
            return inode->data_blkaddr;
        return inode->inline_tail ? EROFS_NULL_ADDR : 0;
    }
}

static int emit_inode(struct erofs_writer *w, struct tree_node *dir_node, struct tree_inode *inode,
                      struct vs_error *err)
{
    uint8_t core[sizeof(struct erofs_inode_extended)];
    uint16_t layout_kind = inode->inline_tail ? EROFS_INODE_FLAT_INLINE : EROFS_INODE_FLAT_PLAIN;
    uint16_t icount = inode->xattr_isize ? (uint16_t)((inode->xattr_isize - 12) / 4 + 1) : 0;
    if (inode->xattr_isize > 12 + 4 * 65534u)
        return vs_fail(err, -EBADMSG, "xattrs of one inode exceed what EROFS can hold");
    if (inode->extended) {
        struct erofs_inode_extended x = {
            .i_format = (uint16_t)(EROFS_INODE_LAYOUT_EXTENDED | (layout_kind << 1)),
            .i_xattr_icount = icount,
            .i_mode = (uint16_t)inode->mode,
            .i_size = inode->size,
            .i_u = inode_i_u(inode),
            .i_ino = inode->serial,
            .i_uid = inode->uid,
            .i_gid = inode->gid,
            .i_mtime = (uint64_t)inode->mtime,
            .i_mtime_nsec = inode->mtime_nsec,
            .i_nlink = inode->nlink,
        };
        memcpy(core, &x, sizeof(x));
    } else {
        struct erofs_inode_compact c = {
            .i_format = (uint16_t)(EROFS_INODE_LAYOUT_COMPACT | (layout_kind << 1)),
            .i_xattr_icount = icount,
            .i_mode = (uint16_t)inode->mode,
            .i_nlink = (uint16_t)inode->nlink,
            .i_size = (uint32_t)inode->size,
            .i_u = inode_i_u(inode),
            .i_ino = inode->serial,
            .i_uid = (uint16_t)inode->uid,
            .i_gid = (uint16_t)inode->gid,
        };
        memcpy(core, &c, sizeof(c));
    }
    uint64_t pos = inode->pos;
    int rc = meta_put(w, pos, core, inode_core_size(inode), err);
    pos += inode_core_size(inode);
    if (rc == 0 && inode->xattr_isize) {
        struct erofs_xattr_ibody_header h = {0};
        rc = meta_put(w, pos, &h, sizeof(h), err);
        pos += sizeof(h);
        for (uint32_t i = 0; rc == 0 && i < inode->xattr_count; i++) {
            const struct tree_xattr *x = &inode->xattrs[i];
            struct erofs_xattr_entry e = {x->name_len, x->index, x->value_len};
            rc = meta_put(w, pos, &e, sizeof(e), err);
            if (rc == 0)
                rc = meta_put(w, pos + 4, x->name, x->name_len, err);
            if (rc == 0)
                rc = meta_put(w, pos + 4 + x->name_len, x->value, x->value_len, err);
            pos += (4u + x->name_len + x->value_len + 3u) & ~3u;
        }
    }
    if (rc < 0 || !inode->inline_tail)
        return rc;
    if (S_ISDIR(inode->mode)) {
        uint32_t count;
        struct dirent_ref *e = dir_entries(dir_node, &count);
        size_t bytes = (inode->size + EROFS_BLKSZ - 1) / EROFS_BLKSZ * EROFS_BLKSZ;
        uint8_t *buf = e ? calloc(1, bytes) : NULL;
        if (!buf) {
            free(e);
            return vs_fail(err, -ENOMEM, "out of memory");
        }
        dir_render(e, count, buf);
        free(e);
        rc = meta_put(w, pos, buf + (inode->size - inode->dir_tail_len), inode->dir_tail_len, err);
        free(buf);
        return rc;
    }
    rc = meta_put(w, pos, inode->tail, inode->tail_len, err);
    tree_account_tail(w->tree, -(long)inode->tail_len);
    free(inode->tail);
    inode->tail = NULL;
    return rc;
}

struct emit_item {
    struct tree_inode *inode;
    struct tree_node *dir; /* for directories */
};

static int emit_item_cmp(const void *pa, const void *pb)
{
    const struct emit_item *a = pa, *b = pb;
    return a->inode->pos < b->inode->pos ? -1 : a->inode->pos > b->inode->pos;
}

struct dir_collect {
    struct emit_item *items;
    size_t count;
};

static int collect_dir_nodes(void *ctx, struct tree_node *dir)
{
    struct dir_collect *c = ctx;
    c->items[c->count++] = (struct emit_item){dir->inode, dir};
    return 0;
}

static int emit_metadata(struct erofs_writer *w, struct vs_error *err)
{
    struct emit_item *items = calloc(w->order_count ? w->order_count : 1, sizeof(*items));
    if (!items)
        return vs_fail(err, -ENOMEM, "out of memory");
    /* Directories need their node to render entries; every other inode is emitted from its own data. */
    struct dir_collect dc = {items, 0};
    int rc = tree_walk_bfs(w->tree, collect_dir_nodes, &dc, err);
    size_t n = dc.count;
    for (size_t i = 0; rc == 0 && i < w->order_count; i++)
        if (!S_ISDIR(w->order[i]->mode))
            items[n++] = (struct emit_item){w->order[i], NULL};
    if (rc == 0)
        qsort(items, n, sizeof(*items), emit_item_cmp);
    memset(w->block, 0, EROFS_BLKSZ);
    w->block_index = w->meta_blkaddr;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = emit_inode(w, items[i].dir, items[i].inode, err);
    while (rc == 0 && w->block_index < w->next_block)
        rc = meta_flush(w, err);
    free(items);
    return rc;
}

int erofs_writer_finish(struct erofs_writer *w, const uint8_t uuid[16], struct tarfs_result *result,
                        struct vs_error *err)
{
    if (w->current)
        return vs_fail(err, -EINVAL, "internal: file data not ended");
    int rc = layout(w, err);
    if (rc == 0)
        rc = tree_walk_bfs(w->tree, layout_dir, w, err);
    if (rc == -ENOMEM)
        return vs_fail(err, rc, "out of memory laying out directories");
    if (rc == 0)
        rc = place_inodes(w, err);
    if (rc == 0)
        rc = tree_walk_bfs(w->tree, write_dir_blocks, w, err);
    if (rc < 0)
        return err && err->code ? rc : vs_fail(err, rc, "writing directory blocks failed");
    rc = emit_metadata(w, err);
    if (rc < 0)
        return rc;
    struct erofs_super_params sp = {
        .root_nid = tree_root(w->tree)->inode->nid,
        .inodes = w->order_count,
        .epoch = w->epoch,
        .blocks = w->next_block,
        .meta_blkaddr = w->meta_blkaddr,
    };
    memcpy(sp.uuid, uuid, 16);
    uint8_t block0[EROFS_BLKSZ];
    erofs_super_build(&sp, block0);
    rc = sink_write(w, 0, block0, EROFS_BLKSZ, err);
    if (rc < 0)
        return rc;
    result->blocks = w->next_block;
    result->image_size = w->next_block * EROFS_BLKSZ;
    return 0;
}
