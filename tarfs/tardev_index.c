/* veritysnap tarfs: tardev-compatible tarfs index (see tardev_index.h).
 *
 * Byte-identical output means reproducing two programs, not just a format. First, the Rust `tar` crate 0.4.38
 * iterator: how headers, pax records, GNU long names, sparse maps, numeric fields and checksums are read, and
 * where each entry's header and data are. Second, tarindex's tree (kata-containers release/3.2.0
 * src/tardev-snapshotter/tarindex/src/lib.rs): names cleaned, missing parents created with mode 0, entries
 * replaced in place, hardlinks sharing one node, whiteouts turned into 0/0 character devices, then several
 * breadth-first walks that number inodes and lay out the index. Comments name the quirk each step reproduces.
 */
#include "tarfs/tardev_index.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TAR_BLOCK 512u
/* Extension records (GNU long names, pax headers) are kept in memory until their entry arrives; the tar crate
 * has no limit, we refuse absurd ones so memory stays bounded by the entries. */
#define EXT_MAX (16u << 20)
/* Breadth-first visits allowed beyond one per edge: hardlinks that share a directory are visited once per
 * path (tarindex does the same); a cycle would never end there, so it is refused here. */
#define VISIT_SLACK (1u << 20)
#define OUT_BUF 65536u

#define TD_S_IFMT 0170000u
#define TD_S_IFSOCK 0140000u
#define TD_S_IFLNK 0120000u
#define TD_S_IFREG 0100000u
#define TD_S_IFBLK 0060000u
#define TD_S_IFDIR 0040000u
#define TD_S_IFCHR 0020000u
#define TD_S_IFIFO 0010000u

/* ---- little-endian helpers ---- */

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | ((uint64_t)get_le32(p + 4) << 32);
}

/* ---- growable byte buffer ---- */

struct bytes {
    uint8_t *data;
    size_t len, cap;
};

static int bytes_reserve(struct bytes *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int bytes_append(struct bytes *b, const void *p, size_t n)
{
    if (bytes_reserve(b, n))
        return -ENOMEM;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- tar crate field parsing (header.rs, pax.rs of tar 0.4.38) ---- */

struct span {
    const uint8_t *p;
    size_t n;
};

/* The crate cuts fixed fields at the first NUL. */
static struct span field_truncate(const uint8_t *p, size_t n)
{
    const uint8_t *z = memchr(p, 0, n);
    return (struct span){p, z ? (size_t)(z - p) : n};
}

/* Strict UTF-8 decoding of one character (Rust's str validation): returns its length, 0 if invalid. */
static size_t utf8_char(const uint8_t *p, size_t n, uint32_t *cp)
{
    uint8_t c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

/* Rust's char::is_whitespace (Unicode White_Space), used by str::trim. */
static bool unicode_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* Rust's u64::from_str_radix / str::parse::<u64>: an optional '+', then at least one digit, no overflow. */
static int parse_unsigned(const uint8_t *p, size_t n, unsigned radix, uint64_t *out)
{
    if (n && p[0] == '+') {
        p++, n--;
    }
    if (!n)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (p[i] < '0' || d >= radix)
            return -1;
        if (v > (UINT64_MAX - d) / radix)
            return -1;
        v = v * radix + d;
    }
    *out = v;
    return 0;
}

/* octal_from: truncate at NUL, require UTF-8, trim Unicode whitespace, parse base 8. */
static int octal_field(const uint8_t *p, size_t n, uint64_t *out)
{
    struct span s = field_truncate(p, n);
    size_t begin = 0, end = 0; /* byte range of the trimmed text */
    bool seen = false;
    for (size_t i = 0; i < s.n;) {
        uint32_t cp;
        size_t l = utf8_char(s.p + i, s.n - i, &cp);
        if (!l)
            return -1;
        if (!unicode_space(cp)) {
            if (!seen)
                begin = i;
            seen = true;
            end = i + l;
        }
        i += l;
    }
    if (!seen)
        return -1;
    return parse_unsigned(s.p + begin, end - begin, 8, out);
}

/* num_field_wrapper_from: base-256 when the high bit is set (8-byte fields use all 64 bits after clearing it,
 * longer fields only their last 8 bytes), octal otherwise. */
static int numeric_field(const uint8_t *p, size_t n, uint64_t *out)
{
    if (!(p[0] & 0x80))
        return octal_field(p, n, out);
    uint64_t v = 0;
    size_t skip = 1;
    if (n == 8)
        v = (uint64_t)(p[0] ^ 0x80);
    else
        skip = n - 8;
    for (size_t i = skip; i < n; i++)
        v = (v << 8) | p[i];
    *out = v;
    return 0;
}

/* Header field offsets (ustar / GNU). */
enum {
    H_NAME = 0,
    H_MODE = 100,
    H_UID = 108,
    H_GID = 116,
    H_SIZE = 124,
    H_MTIME = 136,
    H_CKSUM = 148,
    H_TYPE = 156,
    H_LINK = 157,
    H_MAGIC = 257,
    H_VERSION = 263,
    H_DEVMAJOR = 329,
    H_DEVMINOR = 337,
    H_PREFIX = 345,
    H_GNU_SPARSE = 386,
    H_GNU_ISEXT = 482,
    H_GNU_REALSIZE = 483,
};

static bool hdr_is_ustar(const uint8_t *h)
{
    return memcmp(h + H_MAGIC, "ustar\0", 6) == 0 && memcmp(h + H_VERSION, "00", 2) == 0;
}

static bool hdr_is_gnu(const uint8_t *h)
{
    return memcmp(h + H_MAGIC, "ustar ", 6) == 0 && memcmp(h + H_VERSION, " \0", 2) == 0;
}

/* One pax record as tar 0.4.38 reads them: records are split at '\n' (so a value holding '\n' breaks its
 * record), the walk stops at the first empty piece, and a record is well formed when "LEN KEY=VALUE" has LEN
 * equal to the piece length + 1. */
struct pax_iter {
    const uint8_t *p, *end;
    bool done;
};

/* Returns 1 with key/value, -1 for a malformed record, 0 at the end. */
static int pax_next(struct pax_iter *it, struct span *key, struct span *value)
{
    if (it->done)
        return 0;
    const uint8_t *nl = memchr(it->p, '\n', (size_t)(it->end - it->p));
    const uint8_t *line = it->p;
    size_t n = nl ? (size_t)(nl - line) : (size_t)(it->end - line);
    if (nl)
        it->p = nl + 1;
    else
        it->done = true;
    if (!n) {
        it->done = true;
        return 0;
    }
    const uint8_t *sp = memchr(line, ' ', n);
    if (!sp)
        return -1;
    uint64_t reported;
    if (parse_unsigned(line, (size_t)(sp - line), 10, &reported) || reported != (uint64_t)n + 1)
        return -1;
    const uint8_t *kv = sp + 1;
    size_t kvn = n - (size_t)(kv - line);
    const uint8_t *eq = memchr(kv, '=', kvn);
    if (!eq)
        return -1;
    *key = (struct span){kv, (size_t)(eq - kv)};
    *value = (struct span){eq + 1, kvn - (size_t)(eq - kv) - 1};
    return 1;
}

static bool span_is(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* First well-formed record named key (malformed ones are passed over, as Entry::path_bytes does). */
static bool pax_find(const struct bytes *pax, const char *key, struct span *value)
{
    struct pax_iter it = {pax->data, pax->data + pax->len, false};
    struct span k, v;
    int r;
    while ((r = pax_next(&it, &k, &v)) != 0) {
        if (r > 0 && span_is(k, key)) {
            *value = v;
            return true;
        }
    }
    return false;
}

/* pax_extensions_size: the first "size" record, but any malformed record before it means none. */
static bool pax_size_of(const struct bytes *pax, uint64_t *size)
{
    struct pax_iter it = {pax->data, pax->data + pax->len, false};
    struct span k, v;
    int r;
    while ((r = pax_next(&it, &k, &v)) != 0) {
        if (r < 0)
            return false;
        if (span_is(k, "size"))
            return parse_unsigned(v.p, v.n, 10, size) == 0;
    }
    return false;
}

/* ---- the tree (tarindex's Entry graph: nodes shared by hardlinks) ---- */

struct node {
    uint64_t size, offset, mtime, ino;
    uint32_t uid, gid;
    uint16_t mode;
    uint8_t opaque, emitted;
    uint8_t listed; /* set from a tar entry (not a parent created on the way) */
    uint32_t gen;   /* bumped when the children are dropped; stale name-table edges no longer match */
    uint32_t *kids; /* edge ids */
    uint32_t nkids, capkids;
    uint32_t special; /* 1 + index into the long symlink targets, 0 if none */
};

struct edge {
    uint64_t name_off; /* in names */
    uint32_t name_len;
    uint32_t parent, gen, child;
};

struct slot {
    uint32_t edge1; /* edge id + 1, 0 = empty */
    uint32_t hash;
};

struct special {
    uint64_t off, len;           /* the target, in special_bytes */
    uint64_t path_off, path_len; /* the entry's name, in special_paths (for warnings) */
    uint32_t node;
};

enum parse_state {
    ST_SEEK,       /* skipping to the next header position */
    ST_HEADER,     /* collecting a 512-byte header */
    ST_EXT_DATA,   /* collecting the data of an L / K / x member */
    ST_SPARSE_EXT, /* collecting a GNU sparse extension header */
    ST_DONE,       /* end-of-archive block seen: the rest is counted, not parsed */
    ST_FAILED,
};

struct tardev_index {
    void (*warning)(void *ctx, const char *entry, const char *message);
    void *warning_ctx;
    bool strict;
    bool finished;
    int failed;
    struct vs_error fail_err;

    /* stream */
    enum parse_state state;
    uint64_t pos;  /* bytes fed */
    uint64_t next; /* where the next header starts (the crate's `next`) */
    uint8_t hdr[TAR_BLOCK];
    size_t hdr_fill;
    uint64_t entries;
    uint64_t after_end; /* first non-zero byte after the end-of-archive block, or 0 */

    /* current member under construction */
    uint64_t header_pos, file_pos, size;
    unsigned processed; /* raw headers read for this member, extensions included */
    bool have_longname, have_longlink, have_pax, have_pax_size;
    uint64_t pax_size;
    struct bytes longname, longlink, pax;
    struct bytes *ext_target; /* ST_EXT_DATA destination */
    uint64_t ext_want;
    uint8_t ext_type;
    /* GNU sparse bookkeeping (the crate validates sparse maps even though tarindex skips the entry) */
    uint8_t sparse_hdr[TAR_BLOCK];
    uint64_t sparse_cur, sparse_remaining, sparse_size;

    /* tree */
    struct node *nodes;
    uint32_t nnodes, capnodes;
    struct edge *edges;
    uint32_t nedges, capedges;
    struct slot *slots;
    uint32_t nslots; /* power of two */
    struct bytes names;
    uint32_t root;

    /* long symlink targets, in tar order (tarindex's special_link) */
    struct special *specials;
    uint32_t nspecials, capspecials;
    struct bytes special_bytes, special_paths;

    /* scratch */
    struct span *comps;
    size_t ncomps, capcomps;
    struct bytes scratch;
};

static int fail(struct tardev_index *idx, struct vs_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct tardev_index *idx, struct vs_error *err, int code, const char *fmt, ...)
{
    char msg[sizeof(idx->fail_err.message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    idx->failed = code < 0 ? code : -code;
    idx->state = ST_FAILED;
    vs_fail(&idx->fail_err, code, "%s", msg);
    return vs_fail(err, code, "%s", msg);
}

static int bad_tar(struct tardev_index *idx, struct vs_error *err, uint64_t at, const char *what)
{
    return fail(idx, err, -EBADMSG, "tar stream: %s (at byte %llu)", what, (unsigned long long)at);
}

/* Calls the warning callback with a printable copy of the entry name; strict turns it into a failure. */
static int warn(struct tardev_index *idx, struct vs_error *err, const uint8_t *entry, size_t entry_len,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int warn(struct tardev_index *idx, struct vs_error *err, const uint8_t *entry, size_t entry_len,
                const char *fmt, ...)
{
    char name[1024], msg[768];
    size_t n = entry_len < sizeof(name) - 1 ? entry_len : sizeof(name) - 1;
    for (size_t i = 0; i < n; i++)
        name[i] = entry[i] ? (char)entry[i] : '?';
    name[n] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (idx->warning)
        idx->warning(idx->warning_ctx, name, msg);
    if (idx->strict)
        return fail(idx, err, -EBADMSG, "%s: %s (strict mode)", name, msg);
    return 0;
}

static uint32_t hash_name(uint32_t parent, uint32_t gen, const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ ((uint64_t)parent << 32 | gen);
    h *= 1099511628211ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static int new_node(struct tardev_index *idx, uint32_t *id)
{
    if (idx->nnodes == idx->capnodes) {
        if (idx->capnodes >= UINT32_MAX / 2)
            return -ENOMEM;
        uint32_t cap = idx->capnodes ? idx->capnodes * 2 : 1024;
        struct node *p = realloc(idx->nodes, (size_t)cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        idx->nodes = p;
        idx->capnodes = cap;
    }
    memset(&idx->nodes[idx->nnodes], 0, sizeof(struct node));
    *id = idx->nnodes++;
    return 0;
}

static int grow_slots(struct tardev_index *idx)
{
    uint32_t n = idx->nslots ? idx->nslots * 2 : 4096;
    if (n < idx->nslots)
        return -ENOMEM;
    struct slot *s = calloc(n, sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (uint32_t i = 0; i < idx->nslots; i++) {
        if (!idx->slots[i].edge1)
            continue;
        uint32_t j = idx->slots[i].hash & (n - 1);
        while (s[j].edge1)
            j = (j + 1) & (n - 1);
        s[j] = idx->slots[i];
    }
    free(idx->slots);
    idx->slots = s;
    idx->nslots = n;
    return 0;
}

/* The edge named name under parent's current children, or UINT32_MAX. */
static uint32_t find_edge(struct tardev_index *idx, uint32_t parent, const uint8_t *name, size_t len,
                          uint32_t *hash_out)
{
    uint32_t gen = idx->nodes[parent].gen;
    uint32_t h = hash_name(parent, gen, name, len);
    *hash_out = h;
    if (!idx->nslots)
        return UINT32_MAX;
    for (uint32_t j = h & (idx->nslots - 1);; j = (j + 1) & (idx->nslots - 1)) {
        struct slot *s = &idx->slots[j];
        if (!s->edge1)
            return UINT32_MAX;
        if (s->hash != h)
            continue;
        struct edge *e = &idx->edges[s->edge1 - 1];
        if (e->parent == parent && e->gen == gen && e->name_len == len &&
            memcmp(idx->names.data + e->name_off, name, len) == 0)
            return s->edge1 - 1;
    }
}

/* BTreeMap::insert / entry().or_insert: sets parent's child name to child (creating the edge if new). */
static int set_child(struct tardev_index *idx, uint32_t parent, const uint8_t *name, size_t len,
                     uint32_t child)
{
    uint32_t h;
    uint32_t e = find_edge(idx, parent, name, len, &h);
    if (e != UINT32_MAX) {
        idx->edges[e].child = child;
        return 0;
    }
    if (len > UINT32_MAX || idx->nedges == UINT32_MAX - 1)
        return -ENOMEM;
    if ((uint64_t)(idx->nedges + 1) * 10 >= (uint64_t)idx->nslots * 7 && grow_slots(idx))
        return -ENOMEM;
    if (idx->nedges == idx->capedges) {
        uint32_t cap = idx->capedges ? idx->capedges * 2 : 1024;
        struct edge *p = realloc(idx->edges, (size_t)cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        idx->edges = p;
        idx->capedges = cap;
    }
    struct node *pn = &idx->nodes[parent];
    if (pn->nkids == pn->capkids) {
        uint32_t cap = pn->capkids ? pn->capkids * 2 : 4;
        uint32_t *k = realloc(pn->kids, (size_t)cap * sizeof(*k));
        if (!k)
            return -ENOMEM;
        pn->kids = k;
        pn->capkids = cap;
    }
    uint64_t off = idx->names.len;
    if (bytes_append(&idx->names, name, len))
        return -ENOMEM;
    e = idx->nedges++;
    idx->edges[e] = (struct edge){
        .name_off = off, .name_len = (uint32_t)len, .parent = parent, .gen = pn->gen, .child = child};
    pn->kids[pn->nkids++] = e;
    uint32_t j = h & (idx->nslots - 1);
    while (idx->slots[j].edge1)
        j = (j + 1) & (idx->nslots - 1);
    idx->slots[j] = (struct slot){e + 1, h};
    return 0;
}

/* Entry::find_or_create_child: a missing child is a default Entry (mode 0, not a directory). */
static int child_of(struct tardev_index *idx, uint32_t parent, struct span name, uint32_t *out)
{
    uint32_t h;
    uint32_t e = find_edge(idx, parent, name.p, name.n, &h);
    if (e != UINT32_MAX) {
        *out = idx->edges[e].child;
        return 0;
    }
    uint32_t child;
    if (new_node(idx, &child))
        return -ENOMEM;
    if (set_child(idx, parent, name.p, name.n, child))
        return -ENOMEM;
    *out = child;
    return 0;
}

static int traverse(struct tardev_index *idx, const struct span *comps, size_t n, uint32_t *out)
{
    uint32_t cur = idx->root;
    for (size_t i = 0; i < n; i++)
        if (child_of(idx, cur, comps[i], &cur))
            return -ENOMEM;
    *out = cur;
    return 0;
}

/* `*cur = Entry { children: BTreeMap::new(), .. }` and the whiteout's `cur.children = BTreeMap::new()`. */
static void drop_children(struct node *n)
{
    free(n->kids);
    n->kids = NULL;
    n->nkids = n->capkids = 0;
    n->gen++;
}

/* clean_path: components split at '/', "" and "." dropped, ".." pops (and fails above the root). Returns 1
 * when the name is usable, 0 when it escapes the root; *rewritten says whether '..' or a leading '/' changed
 * it. */
static int clean_path(struct tardev_index *idx, struct span path, bool *rewritten)
{
    idx->ncomps = 0;
    *rewritten = path.n && path.p[0] == '/';
    size_t i = 0;
    for (;;) {
        const uint8_t *sl = memchr(path.p + i, '/', path.n - i);
        size_t end = sl ? (size_t)(sl - path.p) : path.n;
        struct span c = {path.p + i, end - i};
        if (c.n == 0 || span_is(c, ".")) {
            /* ignored */
        } else if (span_is(c, "..")) {
            *rewritten = true;
            if (!idx->ncomps)
                return 0;
            idx->ncomps--;
        } else {
            if (idx->ncomps == idx->capcomps) {
                size_t cap = idx->capcomps ? idx->capcomps * 2 : 32;
                struct span *p = realloc(idx->comps, cap * sizeof(*p));
                if (!p)
                    return -ENOMEM;
                idx->comps = p;
                idx->capcomps = cap;
            }
            idx->comps[idx->ncomps++] = c;
        }
        if (!sl)
            break;
        i = end + 1;
    }
    return 1;
}

/* ---- per-entry logic of tarindex's read_all_entries and its callbacks ---- */

struct member {
    const uint8_t *hdr;
    struct span path; /* Entry::path_bytes */
    struct span link; /* Entry::link_name_bytes, when has_link */
    bool has_link;
};

static int oom(struct tardev_index *idx, struct vs_error *err)
{
    return fail(idx, err, -ENOMEM, "tarfs index: out of memory");
}

static int note_rewritten(struct tardev_index *idx, struct vs_error *err, struct span name, bool rewritten,
                          const char *what)
{
    if (!rewritten)
        return 0;
    return warn(
        idx, err, name.p, name.n,
        "%s is absolute or holds '..': tardev normalises it to a path below the root instead of refusing it",
        what);
}

/* The `cb` closure: places a non-hardlink entry in the tree. */
static int place_entry(struct tardev_index *idx, struct vs_error *err, struct span name, const struct node *e,
                       uint32_t *placed)
{
    bool rewritten;
    *placed = UINT32_MAX;
    int r = clean_path(idx, name, &rewritten);
    if (r < 0)
        return oom(idx, err);
    if (r == 0)
        return warn(idx, err, name.p, name.n, "name points above the root: tardev skips the entry");
    if ((r = note_rewritten(idx, err, name, rewritten, "name")))
        return r;

    uint32_t id;
    if (idx->ncomps) {
        struct span last = idx->comps[idx->ncomps - 1];
        if (span_is(last, ".wh..wh..opq")) {
            /* Opaque marker: flag the parent (created with mode 0 if the tar did not list it yet). */
            if (traverse(idx, idx->comps, idx->ncomps - 1, &id))
                return oom(idx, err);
            idx->nodes[id].opaque = 1;
            return 0;
        }
        if (last.n >= 4 && memcmp(last.p, ".wh.", 4) == 0) {
            /* Whiteout: the named entry becomes a character device 0/0, keeping its permission bits,
             * owner and mtime (all 0 when it did not exist). */
            idx->comps[idx->ncomps - 1] = (struct span){last.p + 4, last.n - 4};
            if (traverse(idx, idx->comps, idx->ncomps, &id))
                return oom(idx, err);
            struct node *n = &idx->nodes[id];
            if (n->nkids && (r = warn(idx, err, name.p, name.n,
                                      "whiteout drops %u entries the same layer put below it", n->nkids)))
                return r;
            drop_children(n);
            n->mode = (uint16_t)((n->mode & ~TD_S_IFMT) | TD_S_IFCHR);
            n->size = 0;
            n->offset = 0;
            n->listed = 1;
            return 0;
        }
    }
    if (traverse(idx, idx->comps, idx->ncomps, &id))
        return oom(idx, err);
    struct node *n = &idx->nodes[id];
    /* The whole entry is replaced: children and the opaque flag of an earlier entry of the same name are
     * lost. */
    if (n->nkids &&
        (r = warn(idx, err, name.p, name.n,
                  "entry replaces an earlier one of the same name: tardev drops the %u entries below it",
                  n->nkids)))
        return r;
    if (n->opaque && (r = warn(idx, err, name.p, name.n,
                               "opaque marker came before its directory entry: tardev loses it")))
        return r;
    drop_children(n);
    uint32_t gen = n->gen;
    *n = *e;
    n->gen = gen;
    n->listed = 1;
    *placed = id;
    return 0;
}

/* The `hardlink` closure: the link name gets the target's node itself (one inode, shared). */
static int place_hardlink(struct tardev_index *idx, struct vs_error *err, struct span name,
                          struct span target)
{
    bool rewritten;
    int r = clean_path(idx, target, &rewritten);
    if (r < 0)
        return oom(idx, err);
    if (r == 0)
        return warn(idx, err, name.p, name.n, "hardlink target points above the root: tardev skips the link");
    if ((r = note_rewritten(idx, err, name, rewritten, "hardlink target")))
        return r;
    uint32_t existing;
    /* The target path is looked up with find_or_create: a missing target leaves mode-0 entries behind. */
    if (traverse(idx, idx->comps, idx->ncomps, &existing))
        return oom(idx, err);
    if ((idx->nodes[existing].mode & TD_S_IFMT) != TD_S_IFREG)
        return warn(idx, err, name.p, name.n,
                    "hardlink to something that is not a regular file (or not yet in the tar): tardev skips "
                    "the link");
    r = clean_path(idx, name, &rewritten);
    if (r < 0)
        return oom(idx, err);
    if (r == 0)
        return warn(idx, err, name.p, name.n, "name points above the root: tardev skips the link");
    if ((r = note_rewritten(idx, err, name, rewritten, "name")))
        return r;
    if (!idx->ncomps) {
        idx->root = existing; /* `*root = existing` */
        return 0;
    }
    uint32_t parent;
    if (traverse(idx, idx->comps, idx->ncomps - 1, &parent))
        return oom(idx, err);
    struct span last = idx->comps[idx->ncomps - 1];
    if (set_child(idx, parent, last.p, last.n, existing))
        return oom(idx, err);
    return 0;
}

/* Warnings for what the index cannot carry, from the entry's own pax header. */
static int pax_warnings(struct tardev_index *idx, struct vs_error *err, const struct member *m)
{
    if (!idx->have_pax)
        return 0;
    struct pax_iter it = {idx->pax.data, idx->pax.data + idx->pax.len, false};
    struct span k, v;
    int r;
    struct bytes *list = &idx->scratch;
    list->len = 0;
    while ((r = pax_next(&it, &k, &v)) != 0) {
        if (r < 0)
            continue;
        static const char *const prefixes[] = {"SCHILY.xattr.", "LIBARCHIVE.xattr."};
        for (size_t i = 0; i < 2; i++) {
            size_t pl = strlen(prefixes[i]);
            if (k.n > pl && memcmp(k.p, prefixes[i], pl) == 0) {
                if ((list->len && bytes_append(list, ", ", 2)) || bytes_append(list, k.p + pl, k.n - pl))
                    return oom(idx, err);
            }
        }
        static const struct {
            const char *key;
            size_t off, len;
        } ids[] = {{"uid", H_UID, 8}, {"gid", H_GID, 8}, {"mtime", H_MTIME, 12}};
        for (size_t i = 0; i < 3; i++) {
            if (!span_is(k, ids[i].key))
                continue;
            uint64_t hv = 0, pv = 0;
            size_t digits = 0;
            while (digits < v.n && v.p[digits] >= '0' && v.p[digits] <= '9')
                digits++;
            if (numeric_field(m->hdr + ids[i].off, ids[i].len, &hv))
                hv = 0;
            if (parse_unsigned(v.p, digits, 10, &pv) == 0 && pv != hv &&
                (r = warn(idx, err, m->path.p, m->path.n,
                          "pax %s %llu ignored: tardev uses the header field (%llu)", ids[i].key,
                          (unsigned long long)pv, (unsigned long long)hv)))
                return r;
        }
    }
    if (list->len) {
        if (bytes_append(list, "", 1))
            return oom(idx, err);
        return warn(idx, err, m->path.p, m->path.n, "xattrs dropped (the tarfs index has no xattrs): %s",
                    (const char *)list->data);
    }
    return 0;
}

static int device_number(const uint8_t *h, size_t off, uint32_t *out)
{
    if (!hdr_is_ustar(h) && !hdr_is_gnu(h))
        return -1;
    uint64_t v;
    if (octal_field(h + off, 8, &v))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* One entry as the crate's iterator hands it to tarindex. */
static int deliver(struct tardev_index *idx, struct vs_error *err)
{
    const uint8_t *h = idx->hdr;
    struct member m = {.hdr = h};
    int r;
    idx->entries++;

    /* Entry::path_bytes: GNU long name (one trailing NUL dropped), else pax "path", else the header. */
    struct span hp;
    if (hdr_is_ustar(h)) {
        struct span prefix = field_truncate(h + H_PREFIX, 155), nm = field_truncate(h + H_NAME, 100);
        if (prefix.n) {
            idx->scratch.len = 0;
            if (bytes_append(&idx->scratch, prefix.p, prefix.n) || bytes_append(&idx->scratch, "/", 1) ||
                bytes_append(&idx->scratch, nm.p, nm.n))
                return oom(idx, err);
            hp = (struct span){idx->scratch.data, idx->scratch.len};
        } else {
            hp = nm;
        }
    } else {
        hp = field_truncate(h + H_NAME, 100);
    }
    if (idx->have_longname) {
        size_t n = idx->longname.len;
        if (n && idx->longname.data[n - 1] == 0)
            n--;
        m.path = (struct span){idx->longname.data, n};
    } else if (!(idx->have_pax && pax_find(&idx->pax, "path", &m.path))) {
        m.path = hp;
    }
    /* Entry::link_name_bytes: GNU long link, else pax "linkpath", else the header (none when it is empty). */
    struct span hlink = field_truncate(h + H_LINK, 100);
    if (idx->have_longlink) {
        size_t n = idx->longlink.len;
        if (n && idx->longlink.data[n - 1] == 0)
            n--;
        m.link = (struct span){idx->longlink.data, n};
        m.has_link = true;
    } else if (idx->have_pax && pax_find(&idx->pax, "linkpath", &m.link)) {
        m.has_link = true;
    } else if (h[H_LINK] != 0) {
        m.link = hlink;
        m.has_link = true;
    }
    /* The path may live in scratch; pax_warnings reuses scratch, so keep a private copy. */
    struct bytes path_copy = {0};
    if (m.path.p == idx->scratch.data) {
        if (bytes_append(&path_copy, m.path.p, m.path.n))
            return oom(idx, err);
        m.path.p = path_copy.data;
    }
    r = 0;

    uint64_t mode64;
    if (octal_field(h + H_MODE, 8, &mode64)) {
        r = warn(idx, err, m.path.p, m.path.n, "mode field is not a number: tardev skips the entry");
        goto out;
    }
    /* `m as u16 & 0x1ff`: setuid, setgid and sticky bits are dropped. */
    uint16_t mode = (uint16_t)((uint32_t)mode64 & 0x1ff);
    uint8_t type = h[H_TYPE];
    struct node e = {0};
    switch (type) {
    case 0:
    case '0':
        e.mode = (uint16_t)(mode | TD_S_IFREG);
        e.size = idx->size;
        e.offset = idx->file_pos; /* raw_file_position */
        break;
    case '5':
        e.mode = (uint16_t)(mode | TD_S_IFDIR);
        break;
    case '6':
        e.mode = (uint16_t)(mode | TD_S_IFIFO);
        break;
    case '3':
    case '4': {
        uint32_t major, minor;
        const char *kind = type == '3' ? "character" : "block";
        if (device_number(h, H_DEVMAJOR, &major)) {
            r = warn(idx, err, m.path.p, m.path.n, "%s device without a major number: tardev skips it", kind);
            goto out;
        }
        if (device_number(h, H_DEVMINOR, &minor)) {
            r = warn(idx, err, m.path.p, m.path.n, "%s device without a minor number: tardev skips it", kind);
            goto out;
        }
        e.mode = (uint16_t)(mode | (type == '3' ? TD_S_IFCHR : TD_S_IFBLK));
        e.offset = (uint64_t)minor | ((uint64_t)major << 32);
        break;
    }
    case '2': {
        if (!m.has_link) {
            r = warn(idx, err, m.path.p, m.path.n, "symlink without a target: tardev skips it");
            goto out;
        }
        e.mode = (uint16_t)(mode | TD_S_IFLNK);
        e.size = m.link.n;
        if (m.link.n == hlink.n && memcmp(m.link.p, hlink.p, hlink.n) == 0) {
            e.offset = idx->header_pos + H_LINK; /* the target is read from the header's linkname field */
        } else {
            /* A target longer than the header field is copied into the index; its offset is assigned later.
             */
            if (idx->nspecials == idx->capspecials) {
                uint32_t cap = idx->capspecials ? idx->capspecials * 2 : 16;
                struct special *p = realloc(idx->specials, (size_t)cap * sizeof(*p));
                if (!p) {
                    r = oom(idx, err);
                    goto out;
                }
                idx->specials = p;
                idx->capspecials = cap;
            }
            idx->specials[idx->nspecials] = (struct special){idx->special_bytes.len, m.link.n,
                                                             idx->special_paths.len, m.path.n, UINT32_MAX};
            if (bytes_append(&idx->special_bytes, m.link.p, m.link.n) ||
                bytes_append(&idx->special_paths, m.path.p, m.path.n)) {
                r = oom(idx, err);
                goto out;
            }
            e.special = ++idx->nspecials;
            e.offset = 0;
        }
        break;
    }
    case '1':
        if (!m.has_link) {
            r = warn(idx, err, m.path.p, m.path.n, "hardlink without a target: tardev skips it");
            goto out;
        }
        if ((r = pax_warnings(idx, err, &m)))
            goto out;
        r = place_hardlink(idx, err, m.path, m.link);
        goto out;
    default: {
        char t[8];
        if (type >= 0x20 && type < 0x7f)
            snprintf(t, sizeof(t), "'%c'", type);
        else
            snprintf(t, sizeof(t), "0x%02x", type);
        r = warn(idx, err, m.path.p, m.path.n, "entry type %s is not handled by tardev: skipped", t);
        goto out;
    }
    }
    if ((uint32_t)mode64 & 07000) {
        r = warn(idx, err, m.path.p, m.path.n, "setuid/setgid/sticky bits dropped (tardev keeps only 0777)");
        if (r)
            goto out;
    }
    if ((r = pax_warnings(idx, err, &m)))
        goto out;
    uint64_t v;
    e.mtime = numeric_field(h + H_MTIME, 12, &v) ? 0 : v;
    e.uid = numeric_field(h + H_UID, 8, &v) ? 0 : (uint32_t)v;
    e.gid = numeric_field(h + H_GID, 8, &v) ? 0 : (uint32_t)v;
    uint32_t placed;
    r = place_entry(idx, err, m.path, &e, &placed);
    if (!r && e.special && placed != UINT32_MAX)
        idx->specials[e.special - 1].node = placed; /* to tell later whether tardev mislays this target */
out:
    free(path_copy.data);
    return r;
}

/* ---- streaming header machine (archive.rs next_entry / next_entry_raw of tar 0.4.38) ---- */

static void reset_member(struct tardev_index *idx)
{
    idx->processed = 0;
    idx->have_longname = idx->have_longlink = idx->have_pax = idx->have_pax_size = false;
    idx->longname.len = idx->longlink.len = idx->pax.len = 0;
}

static void finish_pax(struct tardev_index *idx)
{
    idx->have_pax_size = pax_size_of(&idx->pax, &idx->pax_size);
}

/* One GNU sparse map record: the crate checks it even though tarindex then skips the entry. */
static int sparse_block(struct tardev_index *idx, struct vs_error *err, const uint8_t *b)
{
    if (b[0] == 0 || b[12] == 0)
        return 0;
    uint64_t off, len;
    if (octal_field(b, 12, &off) || octal_field(b + 12, 12, &len))
        return bad_tar(idx, err, idx->header_pos, "GNU sparse map holds a bad number");
    if (len != 0 && (idx->sparse_size - idx->sparse_remaining) % 512 != 0)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse block not aligned to 512 bytes");
    if (off < idx->sparse_cur)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse blocks out of order or overlapping");
    if (off + len < off)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse block overflows");
    idx->sparse_cur = off + len;
    if (len > idx->sparse_remaining)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse map lists more data than the entry holds");
    idx->sparse_remaining -= len;
    return 0;
}

static int sparse_done(struct tardev_index *idx, struct vs_error *err)
{
    uint64_t real;
    if (octal_field(idx->hdr + H_GNU_REALSIZE, 12, &real) || idx->sparse_cur != real)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse map does not match the real size");
    if (idx->sparse_remaining > 0)
        return bad_tar(idx, err, idx->header_pos, "GNU sparse map does not match the entry size");
    idx->size = idx->sparse_cur;
    int r = deliver(idx, err);
    reset_member(idx);
    idx->state = ST_SEEK;
    return r;
}

static int process_header(struct tardev_index *idx, struct vs_error *err)
{
    const uint8_t *h = idx->hdr;
    uint64_t at = idx->pos - TAR_BLOCK;
    bool zero = true;
    for (size_t i = 0; i < TAR_BLOCK && zero; i++)
        zero = h[i] == 0;
    idx->processed++;
    if (zero) {
        if (idx->processed > 1)
            return bad_tar(idx, err, at, "extension headers with no member after them");
        idx->state = ST_DONE;
        return 0;
    }
    uint32_t sum = 8 * 32;
    for (size_t i = 0; i < TAR_BLOCK; i++)
        if (i < H_CKSUM || i >= H_CKSUM + 8)
            sum += h[i];
    uint64_t ck;
    if (octal_field(h + H_CKSUM, 8, &ck))
        return bad_tar(idx, err, at, "header checksum field is not a number");
    if ((uint32_t)ck != sum)
        return bad_tar(idx, err, at, "header checksum mismatch");
    uint64_t size;
    if (numeric_field(h + H_SIZE, 12, &size))
        return bad_tar(idx, err, at, "header size field is not a number");
    /* A pax "size" only counts when the header says 0. */
    if (size == 0 && idx->have_pax_size)
        size = idx->pax_size;
    idx->header_pos = at;
    idx->file_pos = idx->pos;
    idx->size = size;
    if (size > UINT64_MAX - 511 || idx->pos > UINT64_MAX - ((size + 511) & ~(uint64_t)511))
        return bad_tar(idx, err, at, "size overflow");
    idx->next = idx->pos + ((size + 511) & ~(uint64_t)511);

    uint8_t type = h[H_TYPE];
    bool recognized = hdr_is_gnu(h) || hdr_is_ustar(h);
    if (recognized && (type == 'L' || type == 'K' || type == 'x')) {
        struct bytes *dst;
        bool *have;
        if (type == 'L')
            dst = &idx->longname, have = &idx->have_longname;
        else if (type == 'K')
            dst = &idx->longlink, have = &idx->have_longlink;
        else
            dst = &idx->pax, have = &idx->have_pax;
        if (*have)
            return bad_tar(idx, err, at,
                           type == 'x' ? "two pax headers for one member"
                                       : "two GNU long name headers for one member");
        if (size > EXT_MAX)
            return fail(idx, err, -EBADMSG,
                        "tar stream: extension header of %llu bytes is too large (at byte %llu)",
                        (unsigned long long)size, (unsigned long long)at);
        *have = true;
        dst->len = 0;
        if (bytes_reserve(dst, (size_t)size + 1))
            return oom(idx, err);
        idx->ext_target = dst;
        idx->ext_want = size;
        idx->ext_type = type;
        if (size == 0) {
            if (type == 'x')
                finish_pax(idx);
            idx->state = ST_SEEK;
        } else {
            idx->state = ST_EXT_DATA;
        }
        return 0;
    }
    if (type == 'S') {
        if (!hdr_is_gnu(h))
            return bad_tar(idx, err, at, "sparse entry type without a GNU header");
        idx->sparse_cur = 0;
        idx->sparse_size = size;
        idx->sparse_remaining = size;
        for (int i = 0; i < 4; i++) {
            int r = sparse_block(idx, err, h + H_GNU_SPARSE + 24 * i);
            if (r)
                return r;
        }
        if (h[H_GNU_ISEXT] == 1) {
            idx->state = ST_SPARSE_EXT;
            idx->hdr_fill = 0;
            memcpy(idx->sparse_hdr, h, TAR_BLOCK);
            return 0;
        }
        return sparse_done(idx, err);
    }
    int r = deliver(idx, err);
    reset_member(idx);
    idx->state = ST_SEEK;
    return r;
}

static int process_sparse_ext(struct tardev_index *idx, struct vs_error *err)
{
    /* The extension header went into hdr; the entry's own header waits in sparse_hdr. */
    uint8_t ext[TAR_BLOCK];
    memcpy(ext, idx->hdr, TAR_BLOCK);
    memcpy(idx->hdr, idx->sparse_hdr, TAR_BLOCK);
    idx->next += TAR_BLOCK;
    for (int i = 0; i < 21; i++) {
        int r = sparse_block(idx, err, ext + 24 * i);
        if (r)
            return r;
    }
    if (ext[504] == 1) {
        memcpy(idx->sparse_hdr, idx->hdr, TAR_BLOCK);
        idx->hdr_fill = 0;
        return 0;
    }
    return sparse_done(idx, err);
}

struct tardev_index *tardev_index_new(void (*warning)(void *ctx, const char *entry, const char *message),
                                      void *warning_ctx, bool strict, struct vs_error *err)
{
    struct tardev_index *idx = calloc(1, sizeof(*idx));
    if (!idx) {
        vs_fail(err, -ENOMEM, "tarfs index: out of memory");
        return NULL;
    }
    idx->warning = warning;
    idx->warning_ctx = warning_ctx;
    idx->strict = strict;
    idx->state = ST_HEADER;
    uint32_t root;
    if (new_node(idx, &root) || grow_slots(idx)) {
        tardev_index_free(idx);
        vs_fail(err, -ENOMEM, "tarfs index: out of memory");
        return NULL;
    }
    idx->nodes[root].mode = (uint16_t)(TD_S_IFDIR | 0555); /* tarindex's root before any "./" entry */
    idx->root = root;
    return idx;
}

void tardev_index_free(struct tardev_index *idx)
{
    if (!idx)
        return;
    for (uint32_t i = 0; i < idx->nnodes; i++)
        free(idx->nodes[i].kids);
    free(idx->nodes);
    free(idx->edges);
    free(idx->slots);
    free(idx->names.data);
    free(idx->specials);
    free(idx->special_bytes.data);
    free(idx->special_paths.data);
    free(idx->longname.data);
    free(idx->longlink.data);
    free(idx->pax.data);
    free(idx->comps);
    free(idx->scratch.data);
    free(idx);
}

static int replay_failure(struct tardev_index *idx, struct vs_error *err)
{
    return vs_fail(err, idx->failed, "%s", idx->fail_err.message);
}

int tardev_index_feed(struct tardev_index *idx, const void *buf, size_t len, struct vs_error *err)
{
    const uint8_t *p = buf;
    if (idx->failed)
        return replay_failure(idx, err);
    if (idx->finished)
        return vs_fail(err, -EINVAL, "tarfs index: feed after finish");
    while (len) {
        size_t n;
        int r = 0;
        switch (idx->state) {
        case ST_DONE:
            /* The crate stops at the first zero block: anything after it (a concatenated tar) is not indexed.
             */
            for (size_t i = 0; !idx->after_end && i < len; i++)
                if (p[i])
                    idx->after_end = idx->pos + i;
            idx->pos += len;
            return 0;
        case ST_FAILED:
            return replay_failure(idx, err);
        case ST_SEEK:
            if (idx->pos < idx->next) {
                uint64_t gap = idx->next - idx->pos;
                n = gap < len ? (size_t)gap : len;
                idx->pos += n, p += n, len -= n;
            }
            if (idx->pos == idx->next) {
                idx->state = ST_HEADER;
                idx->hdr_fill = 0;
            }
            break;
        case ST_HEADER:
        case ST_SPARSE_EXT:
            n = TAR_BLOCK - idx->hdr_fill;
            if (n > len)
                n = len;
            memcpy(idx->hdr + idx->hdr_fill, p, n);
            idx->hdr_fill += n, idx->pos += n, p += n, len -= n;
            if (idx->hdr_fill == TAR_BLOCK) {
                idx->hdr_fill = 0;
                r = idx->state == ST_HEADER ? process_header(idx, err) : process_sparse_ext(idx, err);
            }
            break;
        case ST_EXT_DATA: {
            uint64_t want = idx->ext_want - idx->ext_target->len;
            n = want < len ? (size_t)want : len;
            if (bytes_append(idx->ext_target, p, n))
                return oom(idx, err);
            idx->pos += n, p += n, len -= n;
            if (idx->ext_target->len == idx->ext_want) {
                if (idx->ext_type == 'x')
                    finish_pax(idx);
                idx->state = ST_SEEK;
            }
            break;
        }
        }
        if (r)
            return r;
    }
    /* A header that ends exactly at the end of this chunk still has to move on to ST_HEADER state. */
    if (idx->state == ST_SEEK && idx->pos == idx->next) {
        idx->state = ST_HEADER;
        idx->hdr_fill = 0;
    }
    return 0;
}

/* At the end of the input: whether the crate's iterator would have ended cleanly. */
static int check_end(struct tardev_index *idx, struct vs_error *err)
{
    switch (idx->state) {
    case ST_DONE:
        return 0;
    case ST_HEADER:
        if (idx->hdr_fill)
            return bad_tar(idx, err, idx->pos - idx->hdr_fill, "truncated header");
        if (idx->processed)
            return bad_tar(idx, err, idx->pos, "extension headers with no member after them");
        return 0;
    case ST_SEEK:
    case ST_EXT_DATA:
        return fail(idx, err, -EBADMSG,
                    "tar stream: truncated: it ends at byte %llu, inside the data of the entry whose header "
                    "is at byte %llu",
                    (unsigned long long)idx->pos, (unsigned long long)idx->header_pos);
    case ST_SPARSE_EXT:
        return bad_tar(idx, err, idx->pos, "truncated GNU sparse extension header");
    case ST_FAILED:
        break;
    }
    return replay_failure(idx, err);
}

/* ---- layout and output (append_index) ---- */

struct out {
    int (*write)(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err);
    void *ctx;
    uint64_t offset;
    uint8_t *buf;
    size_t fill;
    struct vs_error *err;
};

static int out_flush(struct out *o)
{
    if (!o->fill)
        return 0;
    int r = o->write(o->ctx, o->offset, o->buf, o->fill, o->err);
    if (r)
        return r < 0 ? r : -EIO;
    o->offset += o->fill;
    o->fill = 0;
    return 0;
}

static int out_put(struct out *o, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        size_t n = OUT_BUF - o->fill;
        if (n > len)
            n = len;
        if (p)
            memcpy(o->buf + o->fill, p, n);
        else
            memset(o->buf + o->fill, 0, n);
        o->fill += n, len -= n;
        if (p)
            p += n;
        if (o->fill == OUT_BUF) {
            int r = out_flush(o);
            if (r)
                return r;
        }
    }
    return 0;
}

static int out_zeros(struct out *o, uint64_t n)
{
    while (n) {
        size_t c = n > OUT_BUF ? OUT_BUF : (size_t)n;
        int r = out_put(o, NULL, c);
        if (r)
            return r;
        n -= c;
    }
    return 0;
}

static uint8_t dirent_type(uint16_t mode)
{
    switch (mode & TD_S_IFMT) {
    case TD_S_IFSOCK:
        return 12;
    case TD_S_IFLNK:
        return 10;
    case TD_S_IFREG:
        return 8;
    case TD_S_IFBLK:
        return 6;
    case TD_S_IFDIR:
        return 4;
    case TD_S_IFCHR:
        return 2;
    case TD_S_IFIFO:
        return 1;
    default:
        return 0;
    }
}

struct sort_item {
    const uint8_t *name;
    uint32_t len, edge;
};

/* BTreeMap<Vec<u8>, _> order: bytewise, a prefix first. */
static int sort_item_cmp(const void *a, const void *b)
{
    const struct sort_item *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->name, y->name, n) : 0;
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int sort_children(struct tardev_index *idx)
{
    struct sort_item *items = NULL;
    size_t cap = 0;
    for (uint32_t i = 0; i < idx->nnodes; i++) {
        struct node *n = &idx->nodes[i];
        if (n->nkids < 2)
            continue;
        if (n->nkids > cap) {
            cap = n->nkids;
            struct sort_item *p = realloc(items, cap * sizeof(*p));
            if (!p) {
                free(items);
                return -ENOMEM;
            }
            items = p;
        }
        for (uint32_t k = 0; k < n->nkids; k++) {
            const struct edge *e = &idx->edges[n->kids[k]];
            items[k] = (struct sort_item){idx->names.data + e->name_off, e->name_len, n->kids[k]};
        }
        qsort(items, n->nkids, sizeof(*items), sort_item_cmp);
        for (uint32_t k = 0; k < n->nkids; k++)
            n->kids[k] = items[k].edge;
    }
    free(items);
    return 0;
}

struct visit {
    uint32_t node;
    uint32_t parent; /* visit index, UINT32_MAX for the root */
    uint32_t edge;
};

/* Builds the path of a visit into scratch ("" for the root). */
static int visit_path(struct tardev_index *idx, const struct visit *v, uint32_t at)
{
    size_t total = 0, depth = 0;
    for (uint32_t i = at; v[i].parent != UINT32_MAX; i = v[i].parent)
        total += idx->edges[v[i].edge].name_len, depth++;
    if (depth)
        total += depth - 1;
    idx->scratch.len = 0;
    if (bytes_reserve(&idx->scratch, total + 1))
        return -ENOMEM;
    size_t end = total;
    for (uint32_t i = at; v[i].parent != UINT32_MAX; i = v[i].parent) {
        const struct edge *e = &idx->edges[v[i].edge];
        end -= e->name_len;
        memcpy(idx->scratch.data + end, idx->names.data + e->name_off, e->name_len);
        if (end)
            idx->scratch.data[--end] = '/';
    }
    idx->scratch.len = total;
    return 0;
}

static bool is_dir(const struct node *n)
{
    return (n->mode & TD_S_IFMT) == TD_S_IFDIR;
}

/* Warnings for entries the guest will not see or that tardev mislays; run before anything is written. */
static int layout_warnings(struct tardev_index *idx, struct vs_error *err, const struct visit *v, uint32_t nv,
                           uint8_t *seen)
{
    int r;
    for (uint32_t i = 1; i < nv; i++) {
        uint32_t id = v[i].node;
        if (seen[id])
            continue;
        seen[id] = 1;
        const struct node *n = &idx->nodes[id];
        const struct node *parent = &idx->nodes[v[v[i].parent].node];
        if (!is_dir(parent)) {
            if (!n->listed)
                continue;
            /* Name the first ancestor that is not a directory: the cause. */
            uint32_t top = v[i].parent;
            while (v[top].parent != UINT32_MAX && !is_dir(&idx->nodes[v[v[top].parent].node]))
                top = v[top].parent;
            if (visit_path(idx, v, top) || bytes_append(&idx->scratch, "", 1))
                return oom(idx, err);
            char cause[512];
            snprintf(cause, sizeof(cause), "%s", (const char *)idx->scratch.data);
            const struct node *tn = &idx->nodes[v[top].node];
            if (visit_path(idx, v, i))
                return oom(idx, err);
            r = warn(idx, err, idx->scratch.data, idx->scratch.len,
                     "unreachable in the guest: '%s' is not a directory in the index (%s)", cause,
                     !tn->listed ? "the tar does not list it, so tardev gives it mode 0"
                                 : "the tar lists it as a non-directory");
            if (r)
                return r;
        } else if (!n->listed) {
            if (visit_path(idx, v, i))
                return oom(idx, err);
            r = warn(idx, err, idx->scratch.data, idx->scratch.len,
                     "parent directory not listed in the tar: tardev indexes it with mode 0, so the guest "
                     "cannot open it");
            if (r)
                return r;
        }
    }
    return 0;
}

static int long_symlink_warnings(struct tardev_index *idx, struct vs_error *err, const struct visit *v,
                                 uint32_t nv, uint8_t *seen)
{
    /* tarindex assigns long targets their offsets in breadth-first order but writes them in tar order, and
     * writes targets of entries that were later replaced or skipped too: reproduced, and reported. */
    uint64_t assigned = 0, emitted_total = 0;
    int r;
    memset(seen, 0, idx->nnodes);
    for (uint32_t i = 0; i < nv; i++) {
        uint32_t id = v[i].node;
        const struct node *n = &idx->nodes[id];
        if (seen[id])
            continue;
        seen[id] = 1;
        if ((n->mode & TD_S_IFMT) != TD_S_IFLNK || n->offset != 0)
            continue;
        emitted_total += n->size;
        bool right = n->special && idx->specials[n->special - 1].off == assigned &&
                     idx->specials[n->special - 1].len == n->size;
        if (!right) {
            if (visit_path(idx, v, i))
                return oom(idx, err);
            r = warn(idx, err, idx->scratch.data, idx->scratch.len,
                     "tardev's index points this long symlink at the wrong bytes (long targets stored out of "
                     "order): the guest reads a different target");
            if (r)
                return r;
        }
        assigned += n->size;
    }
    if (emitted_total != idx->special_bytes.len) {
        for (uint32_t s = 0; s < idx->nspecials; s++) {
            uint32_t id = idx->specials[s].node;
            if (id != UINT32_MAX && seen[id] && idx->nodes[id].special == s + 1 &&
                (idx->nodes[id].mode & TD_S_IFMT) == TD_S_IFLNK && idx->nodes[id].offset == 0)
                continue;
            r = warn(idx, err, idx->special_paths.data + idx->specials[s].path_off, idx->specials[s].path_len,
                     "a long symlink target of an entry that tardev dropped is still written, which shifts "
                     "every name in tardev's index: the guest sees wrong names");
            if (r)
                return r;
            break;
        }
    }
    return 0;
}

int tardev_index_finish(struct tardev_index *idx,
                        int (*write)(void *ctx, uint64_t offset, const void *data, size_t len,
                                     struct vs_error *err),
                        void *write_ctx, uint64_t *index_size, uint64_t *entries, struct vs_error *err)
{
    if (idx->failed)
        return replay_failure(idx, err);
    if (idx->finished)
        return vs_fail(err, -EINVAL, "tarfs index: finish called twice");
    int r = check_end(idx, err);
    if (r)
        return r;
    idx->finished = true;
    if (idx->after_end &&
        (r = warn(idx, err, (const uint8_t *)"", 0,
                  "data after the end-of-archive block (from byte %llu) is not indexed by tardev",
                  (unsigned long long)idx->after_end)))
        return r;

    struct visit *v = NULL;
    uint8_t *seen = NULL;
    struct out o = {.write = write, .ctx = write_ctx, .offset = idx->pos, .err = err};
    uint64_t tar_size = idx->pos;

    /* Children in name order, once per node (shared nodes included). */
    if (sort_children(idx))
        return oom(idx, err);

    /* visit_breadth_first_mut's order: the queue itself. A node reached twice (hardlinks) is visited twice.
     */
    uint64_t cap = (uint64_t)idx->nedges + 1 + VISIT_SLACK;
    uint32_t nv = 0, capv = 1024;
    v = malloc(capv * sizeof(*v));
    seen = calloc(idx->nnodes ? idx->nnodes : 1, 1);
    o.buf = malloc(OUT_BUF);
    if (!v || !seen || !o.buf) {
        r = oom(idx, err);
        goto out;
    }
    v[nv++] = (struct visit){idx->root, UINT32_MAX, UINT32_MAX};
    for (uint32_t i = 0; i < nv; i++) {
        const struct node *n = &idx->nodes[v[i].node];
        for (uint32_t k = 0; k < n->nkids; k++) {
            if (nv >= cap || nv == UINT32_MAX) {
                r = fail(idx, err, -EBADMSG,
                         "tar stream: hardlinks make a cycle (or share directories too often) in tardev's "
                         "tree; its index builder would not finish");
                goto out;
            }
            if (nv == capv) {
                capv *= 2;
                struct visit *p = realloc(v, (size_t)capv * sizeof(*v));
                if (!p) {
                    r = oom(idx, err);
                    goto out;
                }
                v = p;
            }
            v[nv++] = (struct visit){idx->edges[n->kids[k]].child, i, n->kids[k]};
        }
    }

    if ((r = layout_warnings(idx, err, v, nv, seen)))
        goto out;

    /* Inode numbers at first visit. */
    uint64_t count = 0;
    for (uint32_t i = 0; i < nv; i++) {
        struct node *n = &idx->nodes[v[i].node];
        if (n->ino == 0)
            n->ino = ++count;
    }
    /* Directory bodies after the inode table, one per directory visit (the last one wins for the inode). */
    uint64_t off = tar_size + count * TARDEV_INODE_SIZE;
    for (uint32_t i = 0; i < nv; i++) {
        struct node *n = &idx->nodes[v[i].node];
        if (!is_dir(n))
            continue;
        n->offset = off;
        n->size = (uint64_t)TARDEV_DIRENT_SIZE * n->nkids;
        off += n->size;
    }
    uint64_t string_table_offset = off;
    if ((r = long_symlink_warnings(idx, err, v, nv, seen)))
        goto out;

    /* Inode table. */
    uint64_t symlink_offset = string_table_offset;
    for (uint32_t i = 0; i < nv; i++) {
        struct node *n = &idx->nodes[v[i].node];
        if (n->emitted)
            continue;
        n->emitted = 1;
        uint64_t ioff = n->offset;
        if ((n->mode & TD_S_IFMT) == TD_S_IFLNK && n->offset == 0) {
            ioff = symlink_offset;
            symlink_offset += n->size;
        }
        uint8_t ino[TARDEV_INODE_SIZE];
        put_le16(ino, n->mode);
        ino[2] = n->opaque ? TARDEV_INODE_FLAG_OPAQUE : 0;
        ino[3] = (uint8_t)((n->mtime >> 32) & 0xf);
        put_le32(ino + 4, n->uid);
        put_le32(ino + 8, n->gid);
        put_le32(ino + 12, (uint32_t)n->mtime);
        put_le64(ino + 16, n->size);
        put_le64(ino + 24, ioff);
        if ((r = out_put(&o, ino, sizeof(ino))))
            goto out;
    }
    /* Directory entries: names are numbered from after the long targets that got an offset. */
    uint64_t name_off = symlink_offset, names_total = 0;
    for (uint32_t i = 0; i < nv; i++) {
        const struct node *n = &idx->nodes[v[i].node];
        if (!is_dir(n))
            continue;
        for (uint32_t k = 0; k < n->nkids; k++) {
            const struct edge *e = &idx->edges[n->kids[k]];
            const struct node *c = &idx->nodes[e->child];
            uint8_t d[TARDEV_DIRENT_SIZE] = {0};
            put_le64(d, c->ino);
            put_le64(d + 8, name_off);
            put_le64(d + 16, e->name_len);
            d[24] = dirent_type(c->mode);
            if ((r = out_put(&o, d, sizeof(d))))
                goto out;
            name_off += e->name_len;
            names_total += e->name_len;
        }
    }
    /* Long symlink targets, every one the tar held, in tar order; then the names. */
    if ((r = out_put(&o, idx->special_bytes.data, idx->special_bytes.len)))
        goto out;
    for (uint32_t i = 0; i < nv; i++) {
        const struct node *n = &idx->nodes[v[i].node];
        if (!is_dir(n))
            continue;
        for (uint32_t k = 0; k < n->nkids; k++) {
            const struct edge *e = &idx->edges[n->kids[k]];
            if ((r = out_put(&o, idx->names.data + e->name_off, e->name_len)))
                goto out;
        }
    }
    /* tarindex's end offset counts the names twice (once returned by the dirent writer, once more while
     * writing them), which can add a zero block; the super block then sits 512 bytes before the end of one
     * more block. */
    uint64_t end_offset = name_off + idx->special_bytes.len + names_total;
    uint64_t aligned = (end_offset + TARDEV_BLOCK_SIZE - 1) / TARDEV_BLOCK_SIZE * TARDEV_BLOCK_SIZE;
    uint64_t written = o.offset + o.fill;
    if (written > aligned + TARDEV_SUPER_OFFSET) {
        r = fail(idx, err, -EIO, "tarfs index: layout overflow");
        goto out;
    }
    if ((r = out_zeros(&o, aligned + TARDEV_SUPER_OFFSET - written)))
        goto out;
    uint8_t sb[16];
    put_le64(sb, tar_size);
    put_le64(sb + 8, count);
    if ((r = out_put(&o, sb, sizeof(sb))) ||
        (r = out_zeros(&o, TARDEV_BLOCK_SIZE - TARDEV_SUPER_OFFSET - sizeof(sb))) || (r = out_flush(&o)))
        goto out;
    if (index_size)
        *index_size = aligned + TARDEV_BLOCK_SIZE - tar_size;
    if (entries)
        *entries = idx->entries;
out:
    free(v);
    free(seen);
    free(o.buf);
    return r;
}

/* ---- reader ---- */

static int pread_full(int fd, void *buf, size_t len, uint64_t off, struct vs_error *err)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vs_fail(err, -errno, "tarfs index: read at %llu: %s", (unsigned long long)off,
                           strerror(errno));
        }
        if (n == 0)
            return vs_fail(err, -EBADMSG, "tarfs index: file ends before byte %llu", (unsigned long long)off);
        p += n, len -= (size_t)n, off += (uint64_t)n;
    }
    return 0;
}

struct list_dir {
    uint64_t ino;
    uint64_t path_off; /* in paths */
    uint32_t path_len;
};

static int read_inode(int fd, uint64_t ito, uint64_t count, uint64_t ino, uint8_t *raw, struct vs_error *err)
{
    if (ino == 0 || ino > count)
        return vs_fail(err, -EBADMSG, "tarfs index: inode %llu out of range", (unsigned long long)ino);
    return pread_full(fd, raw, TARDEV_INODE_SIZE, ito + (ino - 1) * TARDEV_INODE_SIZE, err);
}

int tardev_index_list(int fd, uint64_t data_size, int (*fn)(void *ctx, const struct tardev_entry *e),
                      void *ctx, struct vs_error *err)
{
    if (data_size < TARDEV_BLOCK_SIZE || data_size % TARDEV_BLOCK_SIZE)
        return vs_fail(err, -EBADMSG, "tarfs index: data size %llu is not a positive multiple of 4096",
                       (unsigned long long)data_size);
    uint8_t sb[16];
    int r = pread_full(fd, sb, sizeof(sb), data_size - TARDEV_BLOCK_SIZE + TARDEV_SUPER_OFFSET, err);
    if (r)
        return r;
    uint64_t ito = get_le64(sb), count = get_le64(sb + 8);
    if (ito >= data_size || count == 0 || count > (data_size - ito) / TARDEV_INODE_SIZE)
        return vs_fail(err, -EBADMSG, "tarfs index: bad super block (inode table at %llu, %llu inodes)",
                       (unsigned long long)ito, (unsigned long long)count);

    struct list_dir *queue = NULL;
    size_t nq = 0, capq = 0;
    struct bytes paths = {0}, name = {0}, target = {0}, full = {0};
    uint8_t *dir_seen = calloc((size_t)count + 1, 1);
    if (!dir_seen)
        return vs_fail(err, -ENOMEM, "tarfs index: out of memory");
    uint8_t raw[TARDEV_INODE_SIZE];
    if ((r = read_inode(fd, ito, count, 1, raw, err)))
        goto out;
    if ((get_le16(raw) & TD_S_IFMT) != TD_S_IFDIR)
        goto out; /* a root that is not a directory lists nothing */
    capq = 64;
    queue = malloc(capq * sizeof(*queue));
    if (!queue) {
        r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
        goto out;
    }
    queue[nq++] = (struct list_dir){1, 0, 0};
    dir_seen[1] = 1;
    for (size_t qi = 0; qi < nq; qi++) {
        struct list_dir d = queue[qi];
        if ((r = read_inode(fd, ito, count, d.ino, raw, err)))
            goto out;
        uint64_t doff = get_le64(raw + 24),
                 dsize = get_le64(raw + 16) / TARDEV_DIRENT_SIZE * TARDEV_DIRENT_SIZE;
        if (doff > data_size || dsize > data_size - doff) {
            r = vs_fail(err, -EBADMSG, "tarfs index: directory inode %llu points outside the data",
                        (unsigned long long)d.ino);
            goto out;
        }
        for (uint64_t pos = 0; pos < dsize; pos += TARDEV_DIRENT_SIZE) {
            uint8_t de[TARDEV_DIRENT_SIZE];
            if ((r = pread_full(fd, de, sizeof(de), doff + pos, err)))
                goto out;
            uint64_t cino = get_le64(de), noff = get_le64(de + 8), nlen = get_le64(de + 16);
            if (noff > data_size || nlen > data_size - noff || nlen > (1u << 20)) {
                r = vs_fail(err, -EBADMSG, "tarfs index: bad name in directory inode %llu",
                            (unsigned long long)d.ino);
                goto out;
            }
            name.len = 0;
            if (bytes_reserve(&name, (size_t)nlen + 1)) {
                r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
                goto out;
            }
            if ((r = pread_full(fd, name.data, (size_t)nlen, noff, err)))
                goto out;
            name.len = (size_t)nlen;
            full.len = 0;
            if ((d.path_len &&
                 (bytes_append(&full, paths.data + d.path_off, d.path_len) || bytes_append(&full, "/", 1))) ||
                bytes_append(&full, name.data, name.len) || bytes_append(&full, "", 1)) {
                r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
                goto out;
            }
            uint8_t ci[TARDEV_INODE_SIZE];
            if ((r = read_inode(fd, ito, count, cino, ci, err)))
                goto out;
            struct tardev_entry e = {
                .path = (const char *)full.data,
                .mode = get_le16(ci),
                .uid = get_le32(ci + 4),
                .gid = get_le32(ci + 8),
                .mtime = ((uint64_t)(ci[3] & 0xf) << 32) | get_le32(ci + 12),
                .size = get_le64(ci + 16),
                .offset = get_le64(ci + 24),
                .opaque = (ci[2] & TARDEV_INODE_FLAG_OPAQUE) != 0,
            };
            uint32_t fmt = e.mode & TD_S_IFMT;
            if (fmt == TD_S_IFLNK) {
                if (e.offset > data_size || e.size > data_size - e.offset || e.size > (1u << 20)) {
                    r = vs_fail(err, -EBADMSG, "tarfs index: symlink %s points outside the data", e.path);
                    goto out;
                }
                target.len = 0;
                if (bytes_reserve(&target, (size_t)e.size + 1)) {
                    r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
                    goto out;
                }
                if ((r = pread_full(fd, target.data, (size_t)e.size, e.offset, err)))
                    goto out;
                target.data[e.size] = '\0';
                e.link_target = (const char *)target.data;
            } else if (fmt == TD_S_IFCHR || fmt == TD_S_IFBLK) {
                e.rdev_major = (uint32_t)(e.offset >> 32);
                e.rdev_minor = (uint32_t)e.offset;
            }
            if ((r = fn(ctx, &e)))
                goto out;
            if (fmt == TD_S_IFDIR && !dir_seen[cino]) {
                dir_seen[cino] = 1;
                if (nq == capq) {
                    capq *= 2;
                    struct list_dir *p = realloc(queue, capq * sizeof(*queue));
                    if (!p) {
                        r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
                        goto out;
                    }
                    queue = p;
                }
                uint64_t po = paths.len;
                if (bytes_append(&paths, full.data, full.len - 1)) {
                    r = vs_fail(err, -ENOMEM, "tarfs index: out of memory");
                    goto out;
                }
                queue[nq++] = (struct list_dir){cino, po, (uint32_t)(full.len - 1)};
            }
        }
    }
out:
    free(queue);
    free(paths.data);
    free(name.data);
    free(target.data);
    free(full.data);
    free(dir_seen);
    return r;
}
