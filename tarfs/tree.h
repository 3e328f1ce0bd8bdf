/* The filesystem tree model shared by the layer sources (tar, directory) and the EROFS writer: names, inodes,
 * OCI rules inside one layer (replacement, whiteouts, opaque dirs, implicit parents, hardlinks). */
#ifndef VERITYSNAP_TARFS_TREE_H
#define VERITYSNAP_TARFS_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/vs_error.h"

struct tree_xattr {
    uint8_t index;       /* erofs_xattr_index */
    uint8_t name_len;    /* suffix after the prefix */
    uint16_t value_len;
    char *name;          /* suffix, not NUL-terminated in the image */
    uint8_t *value;
};

/* One inode; hardlinked names share it. */
struct tree_inode {
    uint32_t mode; /* S_IFMT | permissions */
    uint32_t uid, gid;
    int64_t mtime;
    uint32_t mtime_nsec;
    uint32_t rdev_major, rdev_minor;
    uint64_t size;         /* file bytes, symlink target length; directories: computed at layout */
    uint32_t nlink;        /* names pointing here (directories: 2 + subdirectories, set at layout) */
    /* Data: full blocks at data_blkaddr (data_blocks of them); the last partial block either is in the data run too
     * (tail_in_block) or waits in memory to be inlined after the inode (tail, tail_len bytes). */
    uint32_t data_blkaddr;
    uint64_t data_blocks;
    uint8_t *tail;
    uint32_t tail_len;
    bool tail_in_block;
    struct tree_xattr *xattrs;
    uint32_t xattr_count;
    uint32_t xattr_isize;  /* bytes of the inline xattr area (0 or 12 + entries) */
    /* Layout results. */
    uint64_t nid;
    uint64_t pos;          /* byte offset of the inode in the image */
    uint32_t serial;       /* i_ino */
    bool placed;
    bool extended;
    bool inline_tail;
    uint32_t dir_tail_len;
};

struct tree_node {
    char *name;
    uint16_t name_len;
    struct tree_node *parent;
    struct tree_inode *inode;
    struct tree_node **children; /* directories only; sorted by name at layout */
    uint32_t child_count, child_cap;
    struct tree_node *hash_next;
    bool explicit_entry; /* listed by the source (not an implicit parent) */
};

struct tree;

/* Creates an empty tree whose root is an implicit directory (0755, 0:0, mtime 0). */
struct tree *tree_new(struct vs_error *err);
void tree_free(struct tree *t);

struct tree_node *tree_root(struct tree *t);
uint64_t tree_inode_count(const struct tree *t);

/* Splits and normalises a layer path into the tree: empty and "." components dropped, ".." pops (an error when it
 * would leave the root), absolute paths and components over 255 bytes refused. Returns the node count (0 = root). */
int tree_path_split(const char *path, char ***components, uint32_t *count, struct vs_error *err);
void tree_path_free(char **components, uint32_t count);

/* Looks up a normalised path (NULL when absent). */
struct tree_node *tree_lookup(struct tree *t, char **components, uint32_t count);

/* Adds (or replaces, per OCI: a directory over a directory keeps the children) the entry at path with a fresh
 * inode of attributes *attrs; creates missing parents with the fixed implicit attributes. The returned node's
 * inode may be filled further (data, xattrs). A path of zero components updates the root's attributes. */
int tree_put(struct tree *t, char **components, uint32_t count, const struct tree_inode *attrs,
             struct tree_node **out, struct vs_error *err);

/* Adds a hardlink at path to the inode of target (a non-directory that must exist). */
int tree_link(struct tree *t, char **components, uint32_t count, char **target, uint32_t target_count,
              struct vs_error *err);

/* Marks the directory at path opaque (trusted.overlay.opaque=y), creating it implicitly when absent. */
int tree_set_opaque(struct tree *t, char **components, uint32_t count, struct vs_error *err);

/* Adds an xattr to an inode (name is the full name, e.g. "user.foo"); -ENOTSUP for namespaces EROFS cannot
 * carry. Keeps the list sorted so the image does not depend on the source's order. */
int tree_inode_add_xattr(struct tree_inode *inode, const char *name, const void *value, size_t value_len,
                         struct vs_error *err);

/* Bytes of memory held by tails (for the writer's budget). */
size_t tree_tail_bytes(const struct tree *t);
void tree_account_tail(struct tree *t, long delta);

/* Calls fn for every directory node in breadth-first order, children sorted by name. */
int tree_walk_bfs(struct tree *t, int (*fn)(void *ctx, struct tree_node *dir), void *ctx, struct vs_error *err);

/* Sorts every directory's children by name (bytewise, shorter first). */
void tree_sort(struct tree *t);

/* Byte-wise name order used for directories. */
int tree_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

#endif
