#include "tree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "erofs_format.h"

/* Parents the source does not list get these fixed attributes: never the clock, never the caller's umask. */
#define IMPLICIT_DIR_MODE (S_IFDIR | 0755)

struct tree {
    struct tree_node *root;
    struct tree_node **buckets;
    size_t bucket_count, node_count;
    struct tree_inode **inodes; /* every inode ever made, freed with the tree */
    size_t inode_count, inode_cap;
    size_t tail_bytes;
};

static uint64_t name_hash(const struct tree_node *parent, const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)parent;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)name[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static struct tree_inode *inode_new(struct tree *t, const struct tree_inode *attrs)
{
    if (t->inode_count == t->inode_cap) {
        size_t cap = t->inode_cap ? t->inode_cap * 2 : 1024;
        struct tree_inode **n = realloc(t->inodes, cap * sizeof(*n));
        if (!n)
            return NULL;
        t->inodes = n;
        t->inode_cap = cap;
    }
    struct tree_inode *inode = calloc(1, sizeof(*inode));
    if (!inode)
        return NULL;
    if (attrs) {
        inode->mode = attrs->mode;
        inode->uid = attrs->uid;
        inode->gid = attrs->gid;
        inode->mtime = attrs->mtime;
        inode->mtime_nsec = attrs->mtime_nsec;
        inode->rdev_major = attrs->rdev_major;
        inode->rdev_minor = attrs->rdev_minor;
        inode->size = attrs->size;
    } else {
        inode->mode = IMPLICIT_DIR_MODE;
    }
    t->inodes[t->inode_count++] = inode;
    return inode;
}

static void inode_drop_xattrs(struct tree_inode *inode)
{
    for (uint32_t i = 0; i < inode->xattr_count; i++) {
        free(inode->xattrs[i].name);
        free(inode->xattrs[i].value);
    }
    free(inode->xattrs);
    inode->xattrs = NULL;
    inode->xattr_count = 0;
    inode->xattr_isize = 0;
}

static void inode_unref(struct tree *t, struct tree_inode *inode)
{
    if (--inode->nlink > 0)
        return;
    /* Unreachable now: release what it holds early; the struct itself goes with the tree. */
    if (inode->tail) {
        t->tail_bytes -= inode->tail_len;
        free(inode->tail);
        inode->tail = NULL;
    }
    inode_drop_xattrs(inode);
}

static int grow_buckets(struct tree *t)
{
    size_t count = t->bucket_count ? t->bucket_count * 2 : 4096;
    struct tree_node **b = calloc(count, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < t->bucket_count; i++) {
        struct tree_node *n = t->buckets[i];
        while (n) {
            struct tree_node *next = n->hash_next;
            size_t slot = name_hash(n->parent, n->name, n->name_len) & (count - 1);
            n->hash_next = b[slot];
            b[slot] = n;
            n = next;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->bucket_count = count;
    return 0;
}

static struct tree_node *child_lookup(struct tree *t, struct tree_node *parent, const char *name)
{
    size_t len = strlen(name);
    size_t slot = name_hash(parent, name, len) & (t->bucket_count - 1);
    for (struct tree_node *n = t->buckets[slot]; n; n = n->hash_next)
        if (n->parent == parent && n->name_len == len && memcmp(n->name, name, len) == 0)
            return n;
    return NULL;
}

static struct tree_node *child_add(struct tree *t, struct tree_node *parent, const char *name,
                                   struct tree_inode *inode)
{
    if (t->node_count >= t->bucket_count && grow_buckets(t) < 0)
        return NULL;
    if (parent->child_count == parent->child_cap) {
        uint32_t cap = parent->child_cap ? parent->child_cap * 2 : 8;
        struct tree_node **c = realloc(parent->children, cap * sizeof(*c));
        if (!c)
            return NULL;
        parent->children = c;
        parent->child_cap = cap;
    }
    struct tree_node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->name = strdup(name);
    if (!n->name) {
        free(n);
        return NULL;
    }
    n->name_len = (uint16_t)strlen(name);
    n->parent = parent;
    n->inode = inode;
    inode->nlink++;
    size_t slot = name_hash(parent, n->name, n->name_len) & (t->bucket_count - 1);
    n->hash_next = t->buckets[slot];
    t->buckets[slot] = n;
    t->node_count++;
    parent->children[parent->child_count++] = n;
    return n;
}

static void node_free_subtree(struct tree *t, struct tree_node *n)
{
    for (uint32_t i = 0; i < n->child_count; i++)
        node_free_subtree(t, n->children[i]);
    free(n->children);
    if (n->parent) {
        size_t slot = name_hash(n->parent, n->name, n->name_len) & (t->bucket_count - 1);
        struct tree_node **pp = &t->buckets[slot];
        while (*pp && *pp != n)
            pp = &(*pp)->hash_next;
        if (*pp)
            *pp = n->hash_next;
        t->node_count--;
    }
    inode_unref(t, n->inode);
    free(n->name);
    free(n);
}

static void node_remove(struct tree *t, struct tree_node *n)
{
    struct tree_node *parent = n->parent;
    for (uint32_t i = 0; i < parent->child_count; i++) {
        if (parent->children[i] == n) {
            memmove(&parent->children[i], &parent->children[i + 1],
                    (parent->child_count - i - 1) * sizeof(*parent->children));
            parent->child_count--;
            break;
        }
    }
    node_free_subtree(t, n);
}

struct tree *tree_new(struct vs_error *err)
{
    struct tree *t = calloc(1, sizeof(*t));
    if (!t || grow_buckets(t) < 0)
        goto oom;
    t->root = calloc(1, sizeof(*t->root));
    if (!t->root)
        goto oom;
    t->root->name = strdup("");
    t->root->inode = inode_new(t, NULL);
    if (!t->root->name || !t->root->inode)
        goto oom;
    t->root->inode->nlink = 1;
    return t;
oom:
    tree_free(t);
    vs_fail(err, -ENOMEM, "out of memory creating the tree");
    return NULL;
}

void tree_free(struct tree *t)
{
    if (!t)
        return;
    if (t->root) {
        for (uint32_t i = 0; i < t->root->child_count; i++)
            node_free_subtree(t, t->root->children[i]);
        free(t->root->children);
        free(t->root->name);
        free(t->root);
    }
    for (size_t i = 0; i < t->inode_count; i++) {
        free(t->inodes[i]->tail);
        inode_drop_xattrs(t->inodes[i]);
        free(t->inodes[i]);
    }
    free(t->inodes);
    free(t->buckets);
    free(t);
}

struct tree_node *tree_root(struct tree *t)
{
    return t->root;
}

uint64_t tree_inode_count(const struct tree *t)
{
    return t->inode_count;
}

size_t tree_tail_bytes(const struct tree *t)
{
    return t->tail_bytes;
}

void tree_account_tail(struct tree *t, long delta)
{
    t->tail_bytes += delta;
}

void tree_path_free(char **components, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        free(components[i]);
    free(components);
}

int tree_path_split(const char *path, char ***components, uint32_t *count, struct vs_error *err)
{
    *components = NULL;
    *count = 0;
    if (path[0] == '/')
        return vs_fail(err, -EBADMSG, "absolute path '%s' is not allowed in a layer", path);
    size_t cap = 8;
    char **parts = malloc(cap * sizeof(*parts));
    if (!parts)
        return vs_fail(err, -ENOMEM, "out of memory");
    uint32_t n = 0;
    const char *p = path;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            /* empty or "." component */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (n == 0) {
                tree_path_free(parts, n);
                return vs_fail(err, -EBADMSG, "path '%s' leaves the layer root with '..'", path);
            }
            free(parts[--n]);
        } else {
            if (len > EROFS_NAME_LEN) {
                tree_path_free(parts, n);
                return vs_fail(err, -EBADMSG, "path '%s' has a component of %zu bytes (at most %d)", path, len,
                               EROFS_NAME_LEN);
            }
            if (n == cap) {
                cap *= 2;
                char **np = realloc(parts, cap * sizeof(*np));
                if (!np) {
                    tree_path_free(parts, n);
                    return vs_fail(err, -ENOMEM, "out of memory");
                }
                parts = np;
            }
            parts[n] = strndup(p, len);
            if (!parts[n]) {
                tree_path_free(parts, n);
                return vs_fail(err, -ENOMEM, "out of memory");
            }
            n++;
        }
        if (!slash)
            break;
        p = slash + 1;
    }
    *components = parts;
    *count = n;
    return 0;
}

struct tree_node *tree_lookup(struct tree *t, char **components, uint32_t count)
{
    struct tree_node *n = t->root;
    for (uint32_t i = 0; i < count && n; i++)
        n = child_lookup(t, n, components[i]);
    return n;
}

/* Walks to the parent of the last component, creating implicit directories. */
static int parent_of(struct tree *t, char **components, uint32_t count, struct tree_node **out,
                     struct vs_error *err)
{
    struct tree_node *n = t->root;
    for (uint32_t i = 0; i + 1 < count; i++) {
        struct tree_node *c = child_lookup(t, n, components[i]);
        if (!c) {
            struct tree_inode *dir = inode_new(t, NULL);
            if (!dir || !(c = child_add(t, n, components[i], dir)))
                return vs_fail(err, -ENOMEM, "out of memory");
        } else if (!S_ISDIR(c->inode->mode)) {
            /* Writing below a symlink or file would follow it out of the layer, as extraction could. */
            return vs_fail(err, -EBADMSG, "parent '%s' of this entry is not a directory", components[i]);
        }
        n = c;
    }
    *out = n;
    return 0;
}

static void set_attrs(struct tree_inode *inode, const struct tree_inode *attrs)
{
    inode->mode = attrs->mode;
    inode->uid = attrs->uid;
    inode->gid = attrs->gid;
    inode->mtime = attrs->mtime;
    inode->mtime_nsec = attrs->mtime_nsec;
}

int tree_put(struct tree *t, char **components, uint32_t count, const struct tree_inode *attrs,
             struct tree_node **out, struct vs_error *err)
{
    if (count == 0) {
        if (!S_ISDIR(attrs->mode))
            return vs_fail(err, -EBADMSG, "the layer root entry is not a directory");
        set_attrs(t->root->inode, attrs);
        t->root->explicit_entry = true;
        *out = t->root;
        return 0;
    }
    struct tree_node *parent;
    int rc = parent_of(t, components, count, &parent, err);
    if (rc < 0)
        return rc;
    const char *name = components[count - 1];
    struct tree_node *existing = child_lookup(t, parent, name);
    if (existing) {
        if (S_ISDIR(existing->inode->mode) && S_ISDIR(attrs->mode)) {
            /* A directory over a directory keeps its children and takes the new attributes and xattrs; an
             * opaque marker seen earlier in this layer still applies. */
            bool opaque = false;
            for (uint32_t i = 0; i < existing->inode->xattr_count; i++) {
                struct tree_xattr *x = &existing->inode->xattrs[i];
                if (x->index == EROFS_XATTR_INDEX_TRUSTED && x->name_len == 14 &&
                    memcmp(x->name, "overlay.opaque", 14) == 0)
                    opaque = true;
            }
            set_attrs(existing->inode, attrs);
            inode_drop_xattrs(existing->inode);
            existing->explicit_entry = true;
            if (opaque && tree_inode_add_xattr(existing->inode, "trusted.overlay.opaque", "y", 1, err) < 0)
                return err ? err->code : -ENOMEM;
            *out = existing;
            return 0;
        }
        node_remove(t, existing);
    }
    struct tree_inode *inode = inode_new(t, attrs);
    struct tree_node *n = inode ? child_add(t, parent, name, inode) : NULL;
    if (!n)
        return vs_fail(err, -ENOMEM, "out of memory");
    n->explicit_entry = true;
    *out = n;
    return 0;
}

int tree_link(struct tree *t, char **components, uint32_t count, char **target, uint32_t target_count,
              struct vs_error *err)
{
    struct tree_node *to = tree_lookup(t, target, target_count);
    if (!to)
        return vs_fail(err, -EBADMSG, "hardlink target does not exist in this layer");
    if (S_ISDIR(to->inode->mode))
        return vs_fail(err, -EBADMSG, "hardlink target is a directory");
    if (count == 0)
        return vs_fail(err, -EBADMSG, "hardlink at the layer root");
    struct tree_node *parent;
    int rc = parent_of(t, components, count, &parent, err);
    if (rc < 0)
        return rc;
    struct tree_node *existing = child_lookup(t, parent, components[count - 1]);
    if (existing == to)
        return 0;
    struct tree_inode *inode = to->inode;
    inode->nlink++; /* keep it alive while an old name at this path goes */
    if (existing)
        node_remove(t, existing);
    struct tree_node *n = child_add(t, parent, components[count - 1], inode);
    inode->nlink--;
    if (!n)
        return vs_fail(err, -ENOMEM, "out of memory");
    n->explicit_entry = true;
    return 0;
}

int tree_set_opaque(struct tree *t, char **components, uint32_t count, struct vs_error *err)
{
    struct tree_node *dir = tree_lookup(t, components, count);
    if (!dir) {
        struct tree_inode attrs = {.mode = IMPLICIT_DIR_MODE};
        int rc = tree_put(t, components, count, &attrs, &dir, err);
        if (rc < 0)
            return rc;
        dir->explicit_entry = false;
    }
    if (!S_ISDIR(dir->inode->mode))
        return vs_fail(err, -EBADMSG, "opaque marker in a path that is not a directory");
    return tree_inode_add_xattr(dir->inode, "trusted.overlay.opaque", "y", 1, err);
}

static const struct {
    const char *prefix;
    uint8_t index;
    bool whole_name;
} xattr_prefixes[] = {
    {"user.", EROFS_XATTR_INDEX_USER, false},
    {"trusted.", EROFS_XATTR_INDEX_TRUSTED, false},
    {"security.", EROFS_XATTR_INDEX_SECURITY, false},
    {"system.posix_acl_access", EROFS_XATTR_INDEX_POSIX_ACL_ACCESS, true},
    {"system.posix_acl_default", EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT, true},
};

static uint32_t xattr_entry_size(const struct tree_xattr *x)
{
    return (4u + x->name_len + x->value_len + 3u) & ~3u;
}

int tree_inode_add_xattr(struct tree_inode *inode, const char *name, const void *value, size_t value_len,
                         struct vs_error *err)
{
    uint8_t index = 0;
    const char *suffix = NULL;
    for (size_t i = 0; i < sizeof(xattr_prefixes) / sizeof(xattr_prefixes[0]); i++) {
        size_t plen = strlen(xattr_prefixes[i].prefix);
        if (xattr_prefixes[i].whole_name ? strcmp(name, xattr_prefixes[i].prefix) == 0
                                         : strncmp(name, xattr_prefixes[i].prefix, plen) == 0) {
            index = xattr_prefixes[i].index;
            suffix = name + plen;
            break;
        }
    }
    if (!index)
        return vs_fail(err, -ENOTSUP, "xattr '%s' is in a namespace EROFS cannot carry", name);
    size_t name_len = strlen(suffix);
    if (name_len > 255 || value_len > 65535)
        return vs_fail(err, -EBADMSG, "xattr '%s' is too long (name %zu, value %zu bytes)", name, name_len,
                       value_len);
    bool whole = index == EROFS_XATTR_INDEX_POSIX_ACL_ACCESS || index == EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT;
    if (!whole && name_len == 0)
        return vs_fail(err, -EBADMSG, "xattr '%s' has an empty name", name);
    struct tree_xattr x = {.index = index, .name_len = (uint8_t)name_len, .value_len = (uint16_t)value_len};
    /* Sorted by (index, name); a repeated name replaces the earlier value. */
    uint32_t at = 0;
    for (; at < inode->xattr_count; at++) {
        struct tree_xattr *o = &inode->xattrs[at];
        int c = o->index != index ? (o->index < index ? -1 : 1) : tree_name_cmp(o->name, o->name_len, suffix, name_len);
        if (c == 0) {
            uint8_t *v = malloc(value_len ? value_len : 1);
            if (!v)
                return vs_fail(err, -ENOMEM, "out of memory");
            memcpy(v, value, value_len);
            inode->xattr_isize -= xattr_entry_size(o);
            free(o->value);
            o->value = v;
            o->value_len = (uint16_t)value_len;
            inode->xattr_isize += xattr_entry_size(o);
            return 0;
        }
        if (c > 0)
            break;
    }
    x.name = malloc(name_len ? name_len : 1);
    x.value = malloc(value_len ? value_len : 1);
    struct tree_xattr *list = realloc(inode->xattrs, (inode->xattr_count + 1) * sizeof(*list));
    if (!x.name || !x.value || !list) {
        free(x.name);
        free(x.value);
        if (list)
            inode->xattrs = list;
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    memcpy(x.name, suffix, name_len);
    memcpy(x.value, value, value_len);
    inode->xattrs = list;
    memmove(&list[at + 1], &list[at], (inode->xattr_count - at) * sizeof(*list));
    list[at] = x;
    inode->xattr_count++;
    if (inode->xattr_isize == 0)
        inode->xattr_isize = sizeof(struct erofs_xattr_ibody_header);
    inode->xattr_isize += xattr_entry_size(&x);
    return 0;
}

int tree_name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int node_cmp(const void *pa, const void *pb)
{
    const struct tree_node *a = *(const struct tree_node *const *)pa, *b = *(const struct tree_node *const *)pb;
    return tree_name_cmp(a->name, a->name_len, b->name, b->name_len);
}

static void sort_subtree(struct tree_node *n)
{
    if (n->child_count > 1)
        qsort(n->children, n->child_count, sizeof(*n->children), node_cmp);
    for (uint32_t i = 0; i < n->child_count; i++)
        if (S_ISDIR(n->children[i]->inode->mode))
            sort_subtree(n->children[i]);
}

void tree_sort(struct tree *t)
{
    sort_subtree(t->root);
}

int tree_walk_bfs(struct tree *t, int (*fn)(void *ctx, struct tree_node *dir), void *ctx, struct vs_error *err)
{
    size_t cap = 1024, head = 0, tail = 0;
    struct tree_node **queue = malloc(cap * sizeof(*queue));
    if (!queue)
        return vs_fail(err, -ENOMEM, "out of memory");
    queue[tail++] = t->root;
    int rc = 0;
    while (head < tail) {
        struct tree_node *dir = queue[head++];
        rc = fn(ctx, dir);
        if (rc < 0)
            break;
        for (uint32_t i = 0; i < dir->child_count; i++) {
            if (!S_ISDIR(dir->children[i]->inode->mode))
                continue;
            if (tail == cap) {
                cap *= 2;
                struct tree_node **q = realloc(queue, cap * sizeof(*q));
                if (!q) {
                    rc = vs_fail(err, -ENOMEM, "out of memory");
                    goto out;
                }
                queue = q;
            }
            queue[tail++] = dir->children[i];
        }
    }
out:
    free(queue);
    return rc;
}
