/* containerd.services.snapshots.v1.Snapshots: decode a request with protobuf-c, check it, call the snapshot
 * model, encode the answer. The transport (server.c) knows nothing of the messages; this file knows nothing
 * of calls. */
#include "wire_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/slice.h>

#include "common/vs_log.h"
#include "containerd/services/snapshots/v1/snapshots.pb-c.h"
#include "google/protobuf/empty.pb-c.h"

typedef Containerd__Types__Mount MountPb;
typedef Containerd__Services__Snapshots__V1__Info InfoPb;
typedef Containerd__Services__Snapshots__V1__Info__LabelsEntry InfoLabelPb;
typedef Google__Protobuf__Timestamp TimestampPb;

const char *const wire_method_names[WIRE_METHOD_COUNT] = {
    "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup",
};

/* List answers in messages of at most this many bytes too: 100 Infos with 4 KiB labels stay far below 16 MiB.
 */
#define LIST_BATCH_BYTES (4u * 1024 * 1024)

void wire_reply_free(struct wire_reply *reply)
{
    for (size_t i = 0; i < reply->count; i++)
        grpc_byte_buffer_destroy(reply->messages[i]);
    free(reply->messages);
    reply->messages = NULL;
    reply->count = reply->cap = 0;
}

void wire_reply_fail(struct wire_reply *reply, grpc_status_code status, const char *fmt, ...)
{
    wire_reply_free(reply);
    reply->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reply->message, sizeof(reply->message), fmt, ap);
    va_end(ap);
}

static void reply_from_error(struct wire_reply *reply, int code, const struct vs_error *err)
{
    grpc_status_code status = vs_grpc_status_from_code(code);
    if (err->message[0])
        wire_reply_fail(reply, status, "%s", err->message);
    else
        wire_reply_fail(reply, status, "%s", strerror(code < 0 ? -code : EIO));
}

/* Appends bytes already encoded as one message. */
static int reply_add_bytes(struct wire_reply *reply, const uint8_t *data, size_t len)
{
    if (len > VS_GRPC_MAX_MESSAGE) {
        wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "response of %zu bytes exceeds the %d byte limit", len, VS_GRPC_MAX_MESSAGE);
        return -1;
    }
    if (reply->count == reply->cap) {
        size_t cap = reply->cap ? 2 * reply->cap : 4;
        grpc_byte_buffer **m = realloc(reply->messages, cap * sizeof(*m));
        if (!m) {
            wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return -1;
        }
        reply->messages = m;
        reply->cap = cap;
    }
    grpc_slice slice = grpc_slice_from_copied_buffer((const char *)data, len);
    reply->messages[reply->count++] = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return 0;
}

static int reply_add_message(struct wire_reply *reply, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return -1;
    }
    protobuf_c_message_pack(msg, buf);
    int r = reply_add_bytes(reply, buf, len);
    free(buf);
    return r;
}

/* ---- Requests in ---- */

/* Checks containerd's size limit and drops earlier duplicates; returns the label count or -1 with reply
 * failed. */
static long labels_check(struct snapshot_label *labels, size_t n, struct wire_reply *reply)
{
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = labels[i].key ? labels[i].key : "", *v = labels[i].value ? labels[i].value : "";
        if (strlen(k) + strlen(v) > VS_GRPC_LABEL_MAX) {
            wire_reply_fail(reply, GRPC_STATUS_INVALID_ARGUMENT,
                            "label key and value greater than maximum size (%d bytes), key: %.64s",
                            VS_GRPC_LABEL_MAX, k);
            return -1;
        }
        bool later = false;
        for (size_t j = i + 1; j < n && !later; j++)
            later = labels[j].key && strcmp(labels[j].key, k) == 0;
        if (!later)
            labels[kept++] = (struct snapshot_label){(char *)k, (char *)v};
    }
    return (long)kept;
}

static struct snapshot_label *labels_alloc(size_t n, struct wire_reply *reply)
{
    struct snapshot_label *l = calloc(n ? n : 1, sizeof(*l));
    if (!l)
        wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return l;
}

static bool require(const char *value, const char *rpc, const char *field, struct wire_reply *reply)
{
    if (value && value[0])
        return true;
    wire_reply_fail(reply, GRPC_STATUS_INVALID_ARGUMENT, "%s: %s must not be empty", rpc, field);
    return false;
}

/* ---- Answers out ---- */

static char *nonnull(char *s)
{
    return s ? s : (char *)"";
}

/* Mounts: the message structs point into m, which must outlive the packing; one allocation holds them all. */
struct mounts_pb {
    MountPb *store;
    MountPb **ptrs;
    char **options; /* every mount's options, NULLs replaced by "" */
};

static int mounts_to_pb(const struct snapshot_mounts *m, struct mounts_pb *out, struct wire_reply *reply)
{
    size_t total = 0;
    for (size_t i = 0; i < m->count; i++)
        total += m->items[i].option_count;
    out->store = calloc(m->count + 1, sizeof(*out->store));
    out->ptrs = calloc(m->count + 1, sizeof(*out->ptrs));
    out->options = calloc(total + 1, sizeof(*out->options));
    if (!out->store || !out->ptrs || !out->options) {
        free(out->store);
        free(out->ptrs);
        free(out->options);
        wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return -1;
    }
    char **opt = out->options;
    for (size_t i = 0; i < m->count; i++) {
        const struct snapshot_mount *src = &m->items[i];
        MountPb *dst = &out->store[i];
        containerd__types__mount__init(dst);
        dst->type = nonnull(src->type);
        dst->source = nonnull(src->source);
        dst->target = nonnull(src->target);
        dst->n_options = src->option_count;
        dst->options = opt;
        for (size_t j = 0; j < src->option_count; j++)
            *opt++ = nonnull(src->options[j]);
        out->ptrs[i] = dst;
    }
    return 0;
}

static void mounts_pb_free(struct mounts_pb *p)
{
    free(p->store);
    free(p->ptrs);
    free(p->options);
}

static int reply_mounts(struct wire_reply *reply, enum wire_method m, const struct snapshot_mounts *mounts)
{
    struct mounts_pb pb;
    if (mounts_to_pb(mounts, &pb, reply) < 0)
        return -1;
    MountPb **ptrs = pb.ptrs;
    int r;
    if (m == WIRE_PREPARE) {
        Containerd__Services__Snapshots__V1__PrepareSnapshotResponse resp =
            CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_RESPONSE__INIT;
        resp.n_mounts = mounts->count;
        resp.mounts = ptrs;
        r = reply_add_message(reply, &resp.base);
    } else if (m == WIRE_VIEW) {
        Containerd__Services__Snapshots__V1__ViewSnapshotResponse resp =
            CONTAINERD__SERVICES__SNAPSHOTS__V1__VIEW_SNAPSHOT_RESPONSE__INIT;
        resp.n_mounts = mounts->count;
        resp.mounts = ptrs;
        r = reply_add_message(reply, &resp.base);
    } else {
        Containerd__Services__Snapshots__V1__MountsResponse resp =
            CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_RESPONSE__INIT;
        resp.n_mounts = mounts->count;
        resp.mounts = ptrs;
        r = reply_add_message(reply, &resp.base);
    }
    mounts_pb_free(&pb);
    return r;
}

/* An Info message pointing into a snapshot_info. */
struct info_pb {
    InfoPb info;
    TimestampPb created, updated;
    InfoLabelPb *entries;
    InfoLabelPb **ptrs;
};

static void timestamp_from_ns(TimestampPb *ts, int64_t ns)
{
    google__protobuf__timestamp__init(ts);
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) {
        rem += 1000000000;
        sec--;
    }
    ts->seconds = sec;
    ts->nanos = (int32_t)rem;
}

static int64_t timestamp_to_ns(const TimestampPb *ts)
{
    return ts ? ts->seconds * 1000000000 + ts->nanos : 0;
}

static Containerd__Services__Snapshots__V1__Kind kind_to_pb(enum snapshot_kind k)
{
    switch (k) {
    case SNAPSHOT_KIND_VIEW:
        return CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__VIEW;
    case SNAPSHOT_KIND_ACTIVE:
        return CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE;
    case SNAPSHOT_KIND_COMMITTED:
        return CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED;
    default:
        return CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__UNKNOWN;
    }
}

static enum snapshot_kind kind_from_pb(Containerd__Services__Snapshots__V1__Kind k)
{
    switch (k) {
    case CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__VIEW:
        return SNAPSHOT_KIND_VIEW;
    case CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE:
        return SNAPSHOT_KIND_ACTIVE;
    case CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED:
        return SNAPSHOT_KIND_COMMITTED;
    default:
        return SNAPSHOT_KIND_UNKNOWN;
    }
}

static int info_to_pb(const struct snapshot_info *in, struct info_pb *out)
{
    memset(out, 0, sizeof(*out));
    containerd__services__snapshots__v1__info__init(&out->info);
    out->entries = calloc(in->label_count ? in->label_count : 1, sizeof(*out->entries));
    out->ptrs = calloc(in->label_count ? in->label_count : 1, sizeof(*out->ptrs));
    if (!out->entries || !out->ptrs) {
        free(out->entries);
        free(out->ptrs);
        return -ENOMEM;
    }
    for (size_t i = 0; i < in->label_count; i++) {
        containerd__services__snapshots__v1__info__labels_entry__init(&out->entries[i]);
        out->entries[i].key = nonnull(in->labels[i].key);
        out->entries[i].value = nonnull(in->labels[i].value);
        out->ptrs[i] = &out->entries[i];
    }
    out->info.name = nonnull(in->name);
    out->info.parent = nonnull(in->parent);
    out->info.kind = kind_to_pb(in->kind);
    timestamp_from_ns(&out->created, in->created_ns);
    timestamp_from_ns(&out->updated, in->updated_ns);
    out->info.created_at = &out->created;
    out->info.updated_at = &out->updated;
    out->info.n_labels = in->label_count;
    out->info.labels = out->ptrs;
    return 0;
}

static void info_pb_free(struct info_pb *p)
{
    free(p->entries);
    free(p->ptrs);
}

/* Stat and Update answer {Info info = 1}: same layout, one encoder. */
static int reply_info(struct wire_reply *reply, enum wire_method m, const struct snapshot_info *info)
{
    struct info_pb ipb;
    if (info_to_pb(info, &ipb) < 0) {
        wire_reply_fail(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return -1;
    }
    int r;
    if (m == WIRE_STAT) {
        Containerd__Services__Snapshots__V1__StatSnapshotResponse resp =
            CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_RESPONSE__INIT;
        resp.info = &ipb.info;
        r = reply_add_message(reply, &resp.base);
    } else {
        Containerd__Services__Snapshots__V1__UpdateSnapshotResponse resp =
            CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_RESPONSE__INIT;
        resp.info = &ipb.info;
        r = reply_add_message(reply, &resp.base);
    }
    info_pb_free(&ipb);
    return r;
}

static int reply_empty(struct wire_reply *reply)
{
    Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
    return reply_add_message(reply, &empty.base);
}

/* ---- List: Infos framed straight into ListSnapshotsResponse messages ---- */

struct list_batch {
    struct wire_reply *reply;
    uint8_t *buf;
    size_t len, cap, items;
    int failed; /* 0, or a negative code */
};

static int batch_flush(struct list_batch *b)
{
    if (!b->items)
        return 0;
    int r = reply_add_bytes(b->reply, b->buf, b->len);
    b->len = b->items = 0;
    return r;
}

static int list_one(void *ctx, const struct snapshot_info *info)
{
    struct list_batch *b = ctx;
    struct info_pb ipb;
    if (info_to_pb(info, &ipb) < 0) {
        b->failed = -ENOMEM;
        return 1;
    }
    size_t n = protobuf_c_message_get_packed_size(&ipb.info.base);
    /* field 1, wire type 2 (0x0a), the length as a varint, the Info: repeated Info info = 1 on the wire */
    size_t need = b->len + 1 + 10 + n;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 64 * 1024;
        while (cap < need)
            cap *= 2;
        uint8_t *nb = realloc(b->buf, cap);
        if (!nb) {
            info_pb_free(&ipb);
            b->failed = -ENOMEM;
            return 1;
        }
        b->buf = nb;
        b->cap = cap;
    }
    b->buf[b->len++] = 0x0a;
    for (uint64_t v = n;; v >>= 7) {
        b->buf[b->len++] = (uint8_t)(v & 0x7f) | (v >= 0x80 ? 0x80 : 0);
        if (v < 0x80)
            break;
    }
    b->len += protobuf_c_message_pack(&ipb.info.base, b->buf + b->len);
    info_pb_free(&ipb);
    if (++b->items >= VS_GRPC_LIST_BATCH || b->len >= LIST_BATCH_BYTES) {
        if (batch_flush(b) < 0) {
            b->failed = -E2BIG;
            return 1;
        }
    }
    return 0;
}

/* ---- Dispatch ---- */

struct rpc_ctx {
    struct snapshotter *s;
    const struct snapshot_call *call;
    struct wire_reply *reply;
    struct vs_error err;
    char key[256], name[256],
        parent[256]; /* copies for the log line, which is written after the request is freed */
};

static void note(char *dst, size_t cap, const char *value)
{
    snprintf(dst, cap, "%s", value ? value : "");
}

#define SNAP(x) Containerd__Services__Snapshots__V1__##x

/* Prepare and View: key, parent, labels in, mounts out. */
static void rpc_create(struct rpc_ctx *c, enum wire_method m, const char *key, const char *parent, size_t n,
                       struct snapshot_label *labels)
{
    note(c->key, sizeof(c->key), key);
    note(c->parent, sizeof(c->parent), parent);
    if (!require(key, wire_method_names[m], "key", c->reply))
        return;
    long kept = labels_check(labels, n, c->reply);
    if (kept < 0)
        return;
    struct snapshot_mounts mounts = {0};
    int r = m == WIRE_PREPARE
                ? snapshotter_prepare(c->s, c->call, key, parent, labels, (size_t)kept, &mounts, &c->err)
                : snapshotter_view(c->s, c->call, key, parent, labels, (size_t)kept, &mounts, &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else
        reply_mounts(c->reply, m, &mounts);
    snapshot_mounts_free(&mounts);
}

/* The label maps of the request types share a layout but not a C type, hence a macro. */
#define LABELS_INTO(dst, src, n)                                                                             \
    do {                                                                                                     \
        for (size_t i_ = 0; i_ < (n); i_++)                                                                  \
            (dst)[i_] = (struct snapshot_label){(src)[i_]->key, (src)[i_]->value};                           \
    } while (0)

static void rpc_prepare(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(PrepareSnapshotRequest) *req = (const SNAP(PrepareSnapshotRequest) *)msg;
    struct snapshot_label *labels = labels_alloc(req->n_labels, c->reply);
    if (!labels)
        return;
    LABELS_INTO(labels, req->labels, req->n_labels);
    rpc_create(c, WIRE_PREPARE, req->key, req->parent, req->n_labels, labels);
    free(labels);
}

static void rpc_view(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(ViewSnapshotRequest) *req = (const SNAP(ViewSnapshotRequest) *)msg;
    struct snapshot_label *labels = labels_alloc(req->n_labels, c->reply);
    if (!labels)
        return;
    LABELS_INTO(labels, req->labels, req->n_labels);
    rpc_create(c, WIRE_VIEW, req->key, req->parent, req->n_labels, labels);
    free(labels);
}

static void rpc_mounts(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(MountsRequest) *req = (const SNAP(MountsRequest) *)msg;
    note(c->key, sizeof(c->key), req->key);
    if (!require(req->key, "Mounts", "key", c->reply))
        return;
    struct snapshot_mounts mounts = {0};
    int r = snapshotter_mounts(c->s, c->call, req->key, &mounts, &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else
        reply_mounts(c->reply, WIRE_MOUNTS, &mounts);
    snapshot_mounts_free(&mounts);
}

static void rpc_commit(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(CommitSnapshotRequest) *req = (const SNAP(CommitSnapshotRequest) *)msg;
    note(c->key, sizeof(c->key), req->key);
    note(c->name, sizeof(c->name), req->name);
    /* containerd 2.2 also sends the parent it expects; the model knows the real one, so it is only logged. */
    note(c->parent, sizeof(c->parent), req->parent);
    if (!require(req->name, "Commit", "name", c->reply) || !require(req->key, "Commit", "key", c->reply))
        return;
    struct snapshot_label *labels = labels_alloc(req->n_labels, c->reply);
    if (!labels)
        return;
    LABELS_INTO(labels, req->labels, req->n_labels);
    long kept = labels_check(labels, req->n_labels, c->reply);
    if (kept >= 0) {
        int r = snapshotter_commit(c->s, c->call, req->name, req->key, labels, (size_t)kept, &c->err);
        if (r < 0)
            reply_from_error(c->reply, r, &c->err);
        else
            reply_empty(c->reply);
    }
    free(labels);
}

static void rpc_remove(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(RemoveSnapshotRequest) *req = (const SNAP(RemoveSnapshotRequest) *)msg;
    note(c->key, sizeof(c->key), req->key);
    if (!require(req->key, "Remove", "key", c->reply))
        return;
    int r = snapshotter_remove(c->s, c->call, req->key, &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else
        reply_empty(c->reply);
}

static void rpc_stat(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(StatSnapshotRequest) *req = (const SNAP(StatSnapshotRequest) *)msg;
    note(c->key, sizeof(c->key), req->key);
    if (!require(req->key, "Stat", "key", c->reply))
        return;
    struct snapshot_info info = {0};
    int r = snapshotter_stat(c->s, c->call, req->key, &info, &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else
        reply_info(c->reply, WIRE_STAT, &info);
    snapshot_info_free(&info);
}

static void rpc_update(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(UpdateSnapshotRequest) *req = (const SNAP(UpdateSnapshotRequest) *)msg;
    if (!req->info) {
        wire_reply_fail(c->reply, GRPC_STATUS_INVALID_ARGUMENT, "Update: info must be set");
        return;
    }
    note(c->key, sizeof(c->key), req->info->name);
    if (!require(req->info->name, "Update", "info.name", c->reply))
        return;
    struct snapshot_label *labels = labels_alloc(req->info->n_labels, c->reply);
    if (!labels)
        return;
    LABELS_INTO(labels, req->info->labels, req->info->n_labels);
    long kept = labels_check(labels, req->info->n_labels, c->reply);
    if (kept >= 0) {
        struct snapshot_info in = {
            .name = req->info->name,
            .parent = req->info->parent,
            .kind = kind_from_pb(req->info->kind),
            .created_ns = timestamp_to_ns(req->info->created_at),
            .updated_ns = timestamp_to_ns(req->info->updated_at),
            .labels = labels,
            .label_count = (size_t)kept,
        };
        const char *const *paths = NULL;
        size_t path_count = 0;
        if (req->update_mask) {
            paths = (const char *const *)req->update_mask->paths;
            path_count = req->update_mask->n_paths;
        }
        struct snapshot_info out = {0};
        int r = snapshotter_update(c->s, c->call, &in, paths, path_count, &out, &c->err);
        if (r < 0)
            reply_from_error(c->reply, r, &c->err);
        else
            reply_info(c->reply, WIRE_UPDATE, &out);
        snapshot_info_free(&out);
    }
    free(labels);
}

static void rpc_list(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(ListSnapshotsRequest) *req = (const SNAP(ListSnapshotsRequest) *)msg;
    if (req->n_filters)
        note(c->key, sizeof(c->key), req->filters[0]); /* logged as the key: the first filter */
    /* The whole answer is encoded before the first message goes out, so no store lock is held while a slow
     * client reads (containerd's suite Stats inside the walk). */
    struct list_batch b = {.reply = c->reply};
    int r = snapshotter_walk(c->s, c->call, (const char *const *)req->filters, req->n_filters, list_one, &b,
                             &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else if (b.failed == -ENOMEM)
        wire_reply_fail(c->reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "List: out of memory");
    else if (!b.failed)
        batch_flush(&b);
    free(b.buf);
}

static void rpc_usage(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    const SNAP(UsageRequest) *req = (const SNAP(UsageRequest) *)msg;
    note(c->key, sizeof(c->key), req->key);
    if (!require(req->key, "Usage", "key", c->reply))
        return;
    int64_t size = 0, inodes = 0;
    int r = snapshotter_usage(c->s, c->call, req->key, &size, &inodes, &c->err);
    if (r < 0) {
        reply_from_error(c->reply, r, &c->err);
        return;
    }
    SNAP(UsageResponse) resp = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_RESPONSE__INIT;
    resp.size = size;
    resp.inodes = inodes;
    reply_add_message(c->reply, &resp.base);
}

static void rpc_cleanup(struct rpc_ctx *c, const ProtobufCMessage *msg)
{
    (void)msg;
    int r = snapshotter_cleanup(c->s, c->call, &c->err);
    if (r < 0)
        reply_from_error(c->reply, r, &c->err);
    else
        reply_empty(c->reply);
}

static const struct {
    const ProtobufCMessageDescriptor *request;
    void (*handle)(struct rpc_ctx *c, const ProtobufCMessage *request);
} rpcs[WIRE_METHOD_COUNT] = {
    [WIRE_PREPARE] = {&containerd__services__snapshots__v1__prepare_snapshot_request__descriptor,
                      rpc_prepare},
    [WIRE_VIEW] = {&containerd__services__snapshots__v1__view_snapshot_request__descriptor, rpc_view},
    [WIRE_MOUNTS] = {&containerd__services__snapshots__v1__mounts_request__descriptor, rpc_mounts},
    [WIRE_COMMIT] = {&containerd__services__snapshots__v1__commit_snapshot_request__descriptor, rpc_commit},
    [WIRE_REMOVE] = {&containerd__services__snapshots__v1__remove_snapshot_request__descriptor, rpc_remove},
    [WIRE_STAT] = {&containerd__services__snapshots__v1__stat_snapshot_request__descriptor, rpc_stat},
    [WIRE_UPDATE] = {&containerd__services__snapshots__v1__update_snapshot_request__descriptor, rpc_update},
    [WIRE_LIST] = {&containerd__services__snapshots__v1__list_snapshots_request__descriptor, rpc_list},
    [WIRE_USAGE] = {&containerd__services__snapshots__v1__usage_request__descriptor, rpc_usage},
    [WIRE_CLEANUP] = {&containerd__services__snapshots__v1__cleanup_request__descriptor, rpc_cleanup},
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Changes are logged at info, reads at debug. Expected refusals (NOT_FOUND, ALREADY_EXISTS) are routine:
 * containerd's unpacker Stats before it Prepares. */
static enum vs_log_level outcome_level(enum wire_method m, grpc_status_code status)
{
    switch (status) {
    case GRPC_STATUS_OK:
        return m == WIRE_PREPARE || m == WIRE_VIEW || m == WIRE_COMMIT || m == WIRE_REMOVE ||
                       m == WIRE_CLEANUP || m == WIRE_UPDATE
                   ? VS_LOG_INFO
                   : VS_LOG_DEBUG;
    case GRPC_STATUS_NOT_FOUND:
    case GRPC_STATUS_ALREADY_EXISTS:
        return VS_LOG_DEBUG;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_UNIMPLEMENTED:
    case GRPC_STATUS_CANCELLED:
        return VS_LOG_WARN;
    default:
        return VS_LOG_ERROR;
    }
}

void wire_dispatch(enum wire_method m, struct snapshotter *s, const struct snapshot_call *call,
                   const uint8_t *data, size_t len, struct wire_reply *reply)
{
    struct rpc_ctx c = {.s = s, .call = call, .reply = reply};
    vs_error_clear(&c.err);
    reply->status = GRPC_STATUS_OK;
    reply->message[0] = '\0';
    int64_t start = now_us();

    ProtobufCMessage *req = protobuf_c_message_unpack(rpcs[m].request, NULL, len, data);
    if (!req) {
        wire_reply_fail(reply, GRPC_STATUS_INVALID_ARGUMENT, "%s: malformed %s message", wire_method_names[m],
                        rpcs[m].request->name);
    } else {
        rpcs[m].handle(&c, req);
        protobuf_c_message_free_unpacked(req, NULL);
    }

    enum vs_log_level level = outcome_level(m, reply->status);
    if (!vs_log_enabled(level))
        return;
    char duration[32], messages[32];
    snprintf(duration, sizeof(duration), "%.3fms", (double)(now_us() - start) / 1000.0);
    snprintf(messages, sizeof(messages), "%zu", reply->count);
    bool failed = reply->status != GRPC_STATUS_OK;
    struct vs_log_field fields[] = {
        {"rpc", wire_method_names[m]},
        {"namespace", call->namespace_name ? call->namespace_name : ""},
        {m == WIRE_LIST ? "filter" : "key", c.key},
        {c.name[0] ? "name" : NULL, c.name},
        {c.parent[0] ? "parent" : NULL, c.parent},
        {"status", vs_grpc_status_name(reply->status)},
        {"duration", duration},
        {m == WIRE_LIST && !failed ? "messages" : NULL, messages},
        {failed ? "error" : NULL, reply->message},
    };
    vs_log_fields(level, failed ? "call failed" : "call", fields, sizeof(fields) / sizeof(fields[0]));
}
