/* The client side of gRPC C core, towards containerd's own socket. Each call gets its own pluck completion
 * queue and runs its batches one at a time (the C core wants batches on one call serialized, except one send and
 * one receive at once). Content.Read runs on a thread of its own that feeds a socketpair, so the converter reads
 * the blob as a plain fd and the bytes are never staged in a file. */
#include "containerd_client.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "common/vs_digest.h"
#include "containerd/services/content/v1/content.pb-c.h"
#include "containerd/services/diff/v1/diff.pb-c.h"
#include "containerd/services/images/v1/images.pb-c.h"
#include "containerd/services/leases/v1/leases.pb-c.h"
#include "containerd/services/snapshots/v1/snapshots.pb-c.h"
#include "vs_grpc.h"

#define UNARY_TIMEOUT_S 120
#define WRITE_CHUNK (1024 * 1024) /* what containerd's own client sends per WRITE */

struct cd_client {
    grpc_channel *channel;
    char *address;
};

int cd_client_new(const char *address, struct cd_client **out, struct vs_error *err)
{
    *out = NULL;
    if (!address || !address[0])
        return vs_fail(err, -EINVAL, "containerd address is empty");
    struct cd_client *c = calloc(1, sizeof(*c));
    if (!c)
        return vs_fail(err, -ENOMEM, "out of memory");
    const char *path = strncmp(address, "unix:", 5) == 0 ? address + 5 : address;
    if (asprintf(&c->address, "unix:%s", path) < 0) {
        free(c);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    grpc_arg args[2];
    memset(args, 0, sizeof(args));
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = VS_GRPC_MAX_MESSAGE;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = VS_GRPC_MAX_MESSAGE;
    grpc_channel_args ch_args = {2, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = grpc_channel_create(c->address, creds, &ch_args);
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        free(c->address);
        free(c);
        return vs_fail(err, -EIO, "containerd at %s: cannot create a gRPC channel", address);
    }
    *out = c;
    return 0;
}

void cd_client_free(struct cd_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->channel);
    free(c->address);
    free(c);
}

/* ---- calls ---- */

static int code_from_status(grpc_status_code status)
{
    switch (status) {
    case GRPC_STATUS_OK: return 0;
    case GRPC_STATUS_NOT_FOUND: return -ENOENT;
    case GRPC_STATUS_ALREADY_EXISTS: return -EEXIST;
    case GRPC_STATUS_INVALID_ARGUMENT: return -EINVAL;
    case GRPC_STATUS_FAILED_PRECONDITION: return -EBUSY;
    case GRPC_STATUS_UNAVAILABLE: return -EAGAIN;
    case GRPC_STATUS_UNIMPLEMENTED: return -ENOTSUP;
    case GRPC_STATUS_CANCELLED: return -ECANCELED;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return -ETIMEDOUT;
    default: return -EIO;
    }
}

struct call {
    struct cd_client *c;
    const char *method;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata md[2];
    size_t md_count;
    grpc_metadata_array initial, trailing;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;
    bool status_received;
    char tag;
};

static void call_begin(struct call *k, struct cd_client *c, const struct cd_ctx *ctx, const char *method,
                       bool stream)
{
    memset(k, 0, sizeof(*k));
    k->c = c;
    k->method = method;
    k->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_static_string(method);
    gpr_timespec deadline =
        stream ? gpr_inf_future(GPR_CLOCK_REALTIME)
               : gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(UNARY_TIMEOUT_S, GPR_TIMESPAN));
    k->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, k->cq, m, NULL, deadline, NULL);
    if (ctx && ctx->ns && ctx->ns[0]) {
        k->md[k->md_count].key = grpc_slice_from_static_string("containerd-namespace");
        k->md[k->md_count++].value = grpc_slice_from_copied_string(ctx->ns);
    }
    if (ctx && ctx->lease && ctx->lease[0]) {
        k->md[k->md_count].key = grpc_slice_from_static_string("containerd-lease");
        k->md[k->md_count++].value = grpc_slice_from_copied_string(ctx->lease);
    }
    grpc_metadata_array_init(&k->initial);
    grpc_metadata_array_init(&k->trailing);
    k->details = grpc_empty_slice();
}

static bool call_batch(struct call *k, const grpc_op *ops, size_t n)
{
    if (grpc_call_start_batch(k->call, ops, n, &k->tag, NULL) != GRPC_CALL_OK)
        return false;
    grpc_event ev = grpc_completion_queue_pluck(k->cq, &k->tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Waits for the call's status; returns its code and fills err with "<method>: <message>" when not OK. */
static int call_status(struct call *k, struct vs_error *err)
{
    if (!k->status_received) {
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        op.data.recv_status_on_client.trailing_metadata = &k->trailing;
        op.data.recv_status_on_client.status = &k->status;
        op.data.recv_status_on_client.status_details = &k->details;
        op.data.recv_status_on_client.error_string = &k->error_string;
        if (!call_batch(k, &op, 1))
            return vs_fail(err, -EIO, "containerd %s: %s: the call failed", k->c->address, k->method);
        k->status_received = true;
    }
    if (k->status == GRPC_STATUS_OK)
        return 0;
    int len = (int)GRPC_SLICE_LENGTH(k->details);
    return vs_fail(err, code_from_status(k->status), "containerd %s: %.*s (%s)", k->method, len,
                   (const char *)GRPC_SLICE_START_PTR(k->details), vs_grpc_status_name(k->status));
}

static void call_end(struct call *k)
{
    if (k->call) {
        if (!k->status_received)
            grpc_call_cancel(k->call, NULL);
        if (!k->status_received) {
            struct vs_error ignored;
            call_status(k, &ignored);
        }
        grpc_call_unref(k->call);
    }
    for (size_t i = 0; i < k->md_count; i++)
        grpc_slice_unref(k->md[i].value);
    grpc_metadata_array_destroy(&k->initial);
    grpc_metadata_array_destroy(&k->trailing);
    grpc_slice_unref(k->details);
    if (k->error_string)
        gpr_free((void *)k->error_string);
    grpc_completion_queue_shutdown(k->cq);
    grpc_completion_queue_destroy(k->cq);
}

static grpc_byte_buffer *pack(const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return m;
}

/* One request, one response (resp NULL: the response is ignored, e.g. Empty). */
static int unary(struct cd_client *c, const struct cd_ctx *ctx, const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, struct vs_error *err)
{
    if (resp)
        *resp = NULL;
    struct call k;
    call_begin(&k, c, ctx, method, false);
    grpc_byte_buffer *send = pack(req), *recv = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = k.md_count;
    ops[0].data.send_initial_metadata.metadata = k.md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k.initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &k.trailing;
    ops[5].data.recv_status_on_client.status = &k.status;
    ops[5].data.recv_status_on_client.status_details = &k.details;
    ops[5].data.recv_status_on_client.error_string = &k.error_string;
    int rc;
    if (!call_batch(&k, ops, 6)) {
        rc = vs_fail(err, -EIO, "containerd %s: %s: the call failed", c->address, method);
    } else {
        k.status_received = true;
        rc = call_status(&k, err);
    }
    if (rc == 0 && resp) {
        *resp = recv ? unpack(resp_desc, recv) : NULL;
        if (!*resp)
            rc = vs_fail(err, -EPROTO, "containerd %s: no or malformed %s in the answer", method, resp_desc->name);
    }
    grpc_byte_buffer_destroy(send);
    if (recv)
        grpc_byte_buffer_destroy(recv);
    call_end(&k);
    return rc;
}

/* ---- labels as protobuf-c map entries ---- */

struct pb_labels {
    Containerd__Services__Content__V1__Info__LabelsEntry *content;
    Containerd__Services__Content__V1__WriteContentRequest__LabelsEntry *write;
    Containerd__Services__Leases__V1__CreateRequest__LabelsEntry *lease;
    Containerd__Services__Images__V1__Image__LabelsEntry *image;
    Containerd__Services__Snapshots__V1__PrepareSnapshotRequest__LabelsEntry *prepare;
    Containerd__Services__Snapshots__V1__CommitSnapshotRequest__LabelsEntry *commit;
    void **ptrs;
};

#define LABELS_BUILD(type, init, arr, ptrs, labels, n)                                                              \
    do {                                                                                                          \
        arr = calloc((n) ? (n) : 1, sizeof(type));                                                                \
        ptrs = calloc((n) ? (n) : 1, sizeof(void *));                                                             \
        for (size_t i_ = 0; arr && ptrs && i_ < (n); i_++) {                                                      \
            type e_ = init;                                                                                       \
            e_.key = (char *)(labels)[i_].key;                                                                    \
            e_.value = (char *)((labels)[i_].value ? (labels)[i_].value : "");                                    \
            arr[i_] = e_;                                                                                         \
            ptrs[i_] = &arr[i_];                                                                                  \
        }                                                                                                         \
    } while (0)

static void pb_labels_free(struct pb_labels *l)
{
    free(l->content);
    free(l->write);
    free(l->lease);
    free(l->image);
    free(l->prepare);
    free(l->commit);
    free(l->ptrs);
    memset(l, 0, sizeof(*l));
}

/* ---- Content ---- */

#define CONTENT(x) Containerd__Services__Content__V1__##x

int cd_content_info(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, int64_t *size,
                    struct vs_error *err)
{
    CONTENT(InfoRequest) req = CONTAINERD__SERVICES__CONTENT__V1__INFO_REQUEST__INIT;
    req.digest = (char *)digest;
    ProtobufCMessage *resp = NULL;
    int rc = unary(c, ctx, "/containerd.services.content.v1.Content/Info", &req.base,
                   &containerd__services__content__v1__info_response__descriptor, &resp, err);
    if (rc == 0) {
        CONTENT(InfoResponse) *r = (CONTENT(InfoResponse) *)resp;
        *size = r->info ? r->info->size : 0;
        if (!r->info)
            rc = vs_fail(err, -EPROTO, "containerd Content.Info of %s: no info in the answer", digest);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

/* sha256:<64 hex> into 32 bytes. */
static int parse_digest(const char *digest, uint8_t out[VS_SHA256_LEN])
{
    if (!digest || strncmp(digest, "sha256:", 7) != 0 || strlen(digest) != 7 + 64)
        return -1;
    return vs_hex_decode(digest + 7, out, VS_SHA256_LEN) == VS_SHA256_LEN ? 0 : -1;
}

struct cd_read {
    struct call k;
    char digest[80];
    int64_t size;
    uint8_t want[VS_SHA256_LEN];
    int fd_out;    /* the thread's end */
    int fd_in;     /* the consumer's end */
    pthread_t thread;
    bool thread_started;
    struct vs_error err; /* the stream's outcome */
};

static int send_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *read_thread(void *arg)
{
    struct cd_read *r = arg;
    struct vs_sha256 *h = vs_sha256_new();
    int64_t got = 0;
    int rc = h ? 0 : vs_fail(&r->err, -ENOMEM, "out of memory");
    bool reader_gone = false;
    while (rc == 0) {
        grpc_byte_buffer *bb = NULL;
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &bb;
        if (!call_batch(&r->k, &op, 1)) {
            rc = vs_fail(&r->err, -EIO, "containerd Content.Read of %s: the stream broke", r->digest);
            break;
        }
        if (!bb)
            break; /* end of stream: the status says how it ended */
        CONTENT(ReadContentResponse) *m =
            (CONTENT(ReadContentResponse) *)unpack(&containerd__services__content__v1__read_content_response__descriptor, bb);
        grpc_byte_buffer_destroy(bb);
        if (!m) {
            rc = vs_fail(&r->err, -EPROTO, "containerd Content.Read of %s: malformed message", r->digest);
            break;
        }
        if (m->offset != got)
            rc = vs_fail(&r->err, -EPROTO, "containerd Content.Read of %s: data at offset %lld, expected %lld",
                         r->digest, (long long)m->offset, (long long)got);
        if (rc == 0 && got + (int64_t)m->data.len > r->size)
            rc = vs_fail(&r->err, -EBADMSG, "blob %s: containerd's content store holds more than its %lld bytes",
                         r->digest, (long long)r->size);
        if (rc == 0) {
            vs_sha256_update(h, m->data.data, m->data.len);
            got += (int64_t)m->data.len;
            int s = send_all(r->fd_out, m->data.data, m->data.len);
            if (s < 0) {
                /* The consumer stopped (it failed, or finish abandoned the read): its error is the cause. */
                reader_gone = true;
                rc = s;
            }
        }
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
    if (rc < 0) {
        grpc_call_cancel(r->k.call, NULL);
        struct vs_error ignored;
        call_status(&r->k, &ignored);
    } else {
        rc = call_status(&r->k, &r->err);
        if (rc < 0)
            vs_error_prefix(&r->err, "reading blob %s", r->digest);
    }
    if (rc == 0 && got != r->size)
        rc = vs_fail(&r->err, -EBADMSG, "blob %s: containerd's content store held %lld bytes, not %lld", r->digest,
                     (long long)got, (long long)r->size);
    if (rc == 0) {
        uint8_t sum[VS_SHA256_LEN];
        vs_sha256_final(h, sum);
        if (memcmp(sum, r->want, sizeof(sum)) != 0) {
            char hex[2 * VS_SHA256_LEN + 1];
            vs_hex_encode(sum, sizeof(sum), hex);
            rc = vs_fail(&r->err, -EBADMSG,
                         "blob %s: the bytes in containerd's content store do not match its digest (they hash to "
                         "sha256:%s)",
                         r->digest, hex);
        }
    }
    vs_sha256_free(h);
    shutdown(r->fd_out, SHUT_WR); /* EOF for the consumer, now that the digest is known */
    if (rc == 0 || reader_gone)
        vs_error_clear(&r->err);
    return NULL;
}

int cd_content_read_start(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, int64_t size,
                          int *fd, struct cd_read **out, struct vs_error *err)
{
    *out = NULL;
    *fd = -1;
    struct cd_read *r = calloc(1, sizeof(*r));
    if (!r)
        return vs_fail(err, -ENOMEM, "out of memory");
    snprintf(r->digest, sizeof(r->digest), "%s", digest);
    r->size = size;
    if (parse_digest(digest, r->want) < 0) {
        free(r);
        return vs_fail(err, -EINVAL, "blob digest '%s': only sha256:<64 hex> digests are supported", digest);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        free(r);
        return vs_fail(err, -errno, "socketpair: %s", strerror(errno));
    }
    r->fd_in = sv[0];
    r->fd_out = sv[1];
    call_begin(&r->k, c, ctx, "/containerd.services.content.v1.Content/Read", true);
    CONTENT(ReadContentRequest) req = CONTAINERD__SERVICES__CONTENT__V1__READ_CONTENT_REQUEST__INIT;
    req.digest = r->digest;
    grpc_byte_buffer *send = pack(&req.base);
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = r->k.md_count;
    ops[0].data.send_initial_metadata.metadata = r->k.md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &r->k.initial;
    int rc = 0;
    if (!call_batch(&r->k, ops, 4)) {
        /* The server may have ended the stream at once (NOT_FOUND): the status tells. */
        rc = call_status(&r->k, err);
        if (rc == 0)
            rc = vs_fail(err, -EIO, "containerd Content.Read of %s: the call failed", digest);
    }
    grpc_byte_buffer_destroy(send);
    if (rc == 0) {
        int e = pthread_create(&r->thread, NULL, read_thread, r);
        if (e)
            rc = vs_fail(err, -e, "starting the blob reader thread: %s", strerror(e));
        r->thread_started = e == 0;
    }
    if (rc < 0) {
        call_end(&r->k);
        close(r->fd_in);
        close(r->fd_out);
        free(r);
        return rc;
    }
    *fd = r->fd_in;
    *out = r;
    return 0;
}

int cd_content_read_finish(struct cd_read *r, bool drain, struct vs_error *err)
{
    if (!r)
        return 0;
    if (drain) {
        char buf[65536];
        ssize_t n;
        while ((n = read(r->fd_in, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
            ;
    }
    /* Abandoning: the thread's next send fails and it cancels the call. */
    shutdown(r->fd_in, SHUT_RDWR);
    close(r->fd_in);
    if (r->thread_started)
        pthread_join(r->thread, NULL);
    close(r->fd_out);
    call_end(&r->k);
    int rc = 0;
    if (r->err.code) {
        rc = r->err.code;
        if (err)
            *err = r->err;
    }
    free(r);
    return rc;
}

int cd_content_read_all(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, size_t max,
                        uint8_t **data, size_t *len, struct vs_error *err)
{
    *data = NULL;
    *len = 0;
    int64_t size = 0;
    int rc = cd_content_info(c, ctx, digest, &size, err);
    if (rc < 0)
        return rc;
    if (size < 0 || (uint64_t)size > max)
        return vs_fail(err, -EFBIG, "blob %s is %lld bytes, more than the %zu expected", digest, (long long)size,
                       max);
    uint8_t *buf = malloc(size ? (size_t)size : 1);
    if (!buf)
        return vs_fail(err, -ENOMEM, "out of memory");
    int fd;
    struct cd_read *r;
    rc = cd_content_read_start(c, ctx, digest, size, &fd, &r, err);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    size_t got = 0;
    while (got < (size_t)size) {
        ssize_t n = read(fd, buf + got, (size_t)size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    rc = cd_content_read_finish(r, true, err);
    if (rc == 0 && got != (size_t)size)
        rc = vs_fail(err, -EIO, "blob %s: short read (%zu of %lld bytes)", digest, got, (long long)size);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *data = buf;
    *len = got;
    return 0;
}

/* One round of the Write stream: sends req, waits for one answer (NULL when the server ended the stream). */
static int write_round(struct call *k, bool first, const CONTENT(WriteContentRequest) *req,
                       CONTENT(WriteContentResponse) **resp, struct vs_error *err)
{
    *resp = NULL;
    grpc_byte_buffer *send = pack(&req->base), *recv = NULL;
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    if (first) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n].data.send_initial_metadata.count = k->md_count;
        ops[n++].data.send_initial_metadata.metadata = k->md;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = send;
    if (first) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &k->initial;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &recv;
    bool ok = call_batch(k, ops, n);
    grpc_byte_buffer_destroy(send);
    if (!ok || !recv) {
        /* The server ended the stream: ALREADY_EXISTS for a blob it has, or an error. */
        if (recv)
            grpc_byte_buffer_destroy(recv);
        int rc = call_status(k, err);
        return rc < 0 ? rc : vs_fail(err, -EPROTO, "containerd Content.Write: the stream ended early");
    }
    *resp = (CONTENT(WriteContentResponse) *)unpack(&containerd__services__content__v1__write_content_response__descriptor,
                                                     recv);
    grpc_byte_buffer_destroy(recv);
    return *resp ? 0 : vs_fail(err, -EPROTO, "containerd Content.Write: malformed answer");
}

struct cd_writer {
    struct call k;
    char *ref, *digest;
    int64_t size;
    int64_t skip;   /* bytes an earlier ingest holds: the first skip bytes pushed are dropped */
    int64_t pushed; /* bytes pushed so far */
    int64_t sent;   /* bytes containerd holds */
    uint8_t *buf;
    size_t len;
};

void cd_writer_free(struct cd_writer *w)
{
    if (!w)
        return;
    call_end(&w->k);
    free(w->ref);
    free(w->digest);
    free(w->buf);
    free(w);
}

int cd_writer_open(struct cd_client *c, const struct cd_ctx *ctx, const char *ref, const char *digest, int64_t size,
                   struct cd_writer **out, struct vs_error *err)
{
    *out = NULL;
    struct cd_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return vs_fail(err, -ENOMEM, "out of memory");
    call_begin(&w->k, c, ctx, "/containerd.services.content.v1.Content/Write", true);
    w->ref = strdup(ref);
    w->digest = strdup(digest);
    w->buf = malloc(WRITE_CHUNK);
    w->size = size;
    if (!w->ref || !w->digest || !w->buf) {
        cd_writer_free(w);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    CONTENT(WriteContentRequest) req = CONTAINERD__SERVICES__CONTENT__V1__WRITE_CONTENT_REQUEST__INIT;
    req.action = CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__STAT;
    req.ref = w->ref;
    req.total = size;
    req.expected = w->digest;
    CONTENT(WriteContentResponse) *resp = NULL;
    int rc = write_round(&w->k, true, &req, &resp, err);
    if (rc == 0) {
        w->skip = w->sent = resp->offset;
        if (resp->offset < 0 || resp->offset > size)
            rc = vs_fail(err, -EPROTO, "containerd Content.Write %s: ingest at offset %lld of %lld", ref,
                         (long long)resp->offset, (long long)size);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    if (rc < 0) {
        cd_writer_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int writer_flush(struct cd_writer *w, struct vs_error *err)
{
    if (!w->len)
        return 0;
    CONTENT(WriteContentRequest) req = CONTAINERD__SERVICES__CONTENT__V1__WRITE_CONTENT_REQUEST__INIT;
    req.action = CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__WRITE;
    req.ref = w->ref;
    req.offset = w->sent;
    req.data.data = w->buf;
    req.data.len = w->len;
    CONTENT(WriteContentResponse) *resp = NULL;
    int rc = write_round(&w->k, false, &req, &resp, err);
    if (rc == 0 && resp->offset != w->sent + (int64_t)w->len)
        rc = vs_fail(err, -EPROTO, "containerd Content.Write %s: at offset %lld after writing up to %lld", w->ref,
                     (long long)resp->offset, (long long)(w->sent + (int64_t)w->len));
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    w->sent += (int64_t)w->len;
    w->len = 0;
    return rc;
}

int cd_writer_write(struct cd_writer *w, const void *data, size_t len, struct vs_error *err)
{
    const uint8_t *p = data;
    if (w->pushed + (int64_t)len > w->size)
        return vs_fail(err, -EBADMSG, "blob %s: more than its %lld bytes", w->digest, (long long)w->size);
    while (len > 0) {
        if (w->pushed < w->skip) {
            size_t n = (size_t)(w->skip - w->pushed) < len ? (size_t)(w->skip - w->pushed) : len;
            w->pushed += (int64_t)n;
            p += n;
            len -= n;
            continue;
        }
        size_t n = WRITE_CHUNK - w->len < len ? WRITE_CHUNK - w->len : len;
        memcpy(w->buf + w->len, p, n);
        w->len += n;
        w->pushed += (int64_t)n;
        p += n;
        len -= n;
        if (w->len == WRITE_CHUNK) {
            int rc = writer_flush(w, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int cd_writer_commit(struct cd_writer *w, const struct cd_label *labels, size_t label_count, struct vs_error *err)
{
    int rc = writer_flush(w, err);
    if (rc == 0 && w->pushed != w->size)
        rc = vs_fail(err, -EBADMSG, "blob %s: %lld bytes, not %lld", w->digest, (long long)w->pushed,
                     (long long)w->size);
    struct pb_labels pl = {0};
    LABELS_BUILD(CONTENT(WriteContentRequest__LabelsEntry),
                 CONTAINERD__SERVICES__CONTENT__V1__WRITE_CONTENT_REQUEST__LABELS_ENTRY__INIT, pl.write, pl.ptrs,
                 labels, label_count);
    if (rc == 0 && (!pl.write || !pl.ptrs))
        rc = vs_fail(err, -ENOMEM, "out of memory");
    if (rc == 0) {
        CONTENT(WriteContentRequest) cm = CONTAINERD__SERVICES__CONTENT__V1__WRITE_CONTENT_REQUEST__INIT;
        cm.action = CONTAINERD__SERVICES__CONTENT__V1__WRITE_ACTION__COMMIT;
        cm.ref = w->ref;
        cm.total = w->size;
        cm.offset = w->size;
        cm.expected = w->digest;
        cm.n_labels = label_count;
        cm.labels = (CONTENT(WriteContentRequest__LabelsEntry) **)pl.ptrs;
        CONTENT(WriteContentResponse) *resp = NULL;
        rc = write_round(&w->k, false, &cm, &resp, err);
        if (resp)
            protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    pb_labels_free(&pl);
    if (rc == 0) {
        /* Half-close, take any last answer, then the status. */
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        call_batch(&w->k, &op, 1);
        for (;;) {
            grpc_byte_buffer *bb = NULL;
            memset(&op, 0, sizeof(op));
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &bb;
            if (!call_batch(&w->k, &op, 1) || !bb)
                break;
            grpc_byte_buffer_destroy(bb);
        }
        rc = call_status(&w->k, err);
    }
    return rc;
}

int cd_content_write(struct cd_client *c, const struct cd_ctx *ctx, const char *ref, const char *digest,
                     int64_t size, const struct cd_label *labels, size_t label_count, const void *data,
                     struct vs_error *err)
{
    struct cd_writer *w = NULL;
    int rc = cd_writer_open(c, ctx, ref, digest, size, &w, err);
    if (rc == 0)
        rc = cd_writer_write(w, data, (size_t)size, err);
    if (rc == 0)
        rc = cd_writer_commit(w, labels, label_count, err);
    cd_writer_free(w);
    return rc;
}

int cd_content_set_labels(struct cd_client *c, const struct cd_ctx *ctx, const char *digest,
                          const struct cd_label *labels, size_t label_count, struct vs_error *err)
{
    struct pb_labels pl = {0};
    LABELS_BUILD(CONTENT(Info__LabelsEntry), CONTAINERD__SERVICES__CONTENT__V1__INFO__LABELS_ENTRY__INIT, pl.content,
                 pl.ptrs, labels, label_count);
    char **paths = calloc(label_count ? label_count : 1, sizeof(char *));
    int rc = pl.content && pl.ptrs && paths ? 0 : vs_fail(err, -ENOMEM, "out of memory");
    size_t kept = 0; /* an empty value deletes: it is in the mask but not in the map */
    for (size_t i = 0; rc == 0 && i < label_count; i++) {
        if (asprintf(&paths[i], "labels.%s", labels[i].key) < 0) {
            paths[i] = NULL;
            rc = vs_fail(err, -ENOMEM, "out of memory");
        }
        if (labels[i].value && labels[i].value[0])
            pl.ptrs[kept++] = &pl.content[i];
    }
    if (rc == 0) {
        CONTENT(Info) info = CONTAINERD__SERVICES__CONTENT__V1__INFO__INIT;
        info.digest = (char *)digest;
        info.n_labels = kept;
        info.labels = (CONTENT(Info__LabelsEntry) **)pl.ptrs;
        Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
        mask.n_paths = label_count;
        mask.paths = paths;
        CONTENT(UpdateRequest) req = CONTAINERD__SERVICES__CONTENT__V1__UPDATE_REQUEST__INIT;
        req.info = &info;
        req.update_mask = &mask;
        rc = unary(c, ctx, "/containerd.services.content.v1.Content/Update", &req.base, NULL, NULL, err);
    }
    for (size_t i = 0; paths && i < label_count; i++)
        free(paths[i]);
    free(paths);
    pb_labels_free(&pl);
    return rc;
}

/* ---- Leases ---- */

int cd_lease_create(struct cd_client *c, const char *ns, const char *id, long expire_seconds,
                    struct vs_error *err)
{
    time_t t = time(NULL) + expire_seconds;
    struct tm tm;
    char expire[64];
    gmtime_r(&t, &tm);
    strftime(expire, sizeof(expire), "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct cd_label label = {"containerd.io/gc.expire", expire};
    struct pb_labels pl = {0};
    LABELS_BUILD(Containerd__Services__Leases__V1__CreateRequest__LabelsEntry,
                 CONTAINERD__SERVICES__LEASES__V1__CREATE_REQUEST__LABELS_ENTRY__INIT, pl.lease, pl.ptrs, &label, 1);
    if (!pl.lease || !pl.ptrs) {
        pb_labels_free(&pl);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    Containerd__Services__Leases__V1__CreateRequest req = CONTAINERD__SERVICES__LEASES__V1__CREATE_REQUEST__INIT;
    req.id = (char *)id;
    req.n_labels = 1;
    req.labels = (Containerd__Services__Leases__V1__CreateRequest__LabelsEntry **)pl.ptrs;
    struct cd_ctx ctx = {ns, NULL};
    int rc = unary(c, &ctx, "/containerd.services.leases.v1.Leases/Create", &req.base, NULL, NULL, err);
    pb_labels_free(&pl);
    return rc;
}

int cd_lease_delete(struct cd_client *c, const char *ns, const char *id, struct vs_error *err)
{
    Containerd__Services__Leases__V1__DeleteRequest req = CONTAINERD__SERVICES__LEASES__V1__DELETE_REQUEST__INIT;
    req.id = (char *)id;
    struct cd_ctx ctx = {ns, NULL};
    return unary(c, &ctx, "/containerd.services.leases.v1.Leases/Delete", &req.base, NULL, NULL, err);
}

/* ---- Images ---- */

#define IMAGES(x) Containerd__Services__Images__V1__##x

int cd_image_get(struct cd_client *c, const struct cd_ctx *ctx, const char *name, char *digest, size_t digest_cap,
                 char *media_type, size_t media_type_cap, struct vs_error *err)
{
    IMAGES(GetImageRequest) req = CONTAINERD__SERVICES__IMAGES__V1__GET_IMAGE_REQUEST__INIT;
    req.name = (char *)name;
    ProtobufCMessage *resp = NULL;
    int rc = unary(c, ctx, "/containerd.services.images.v1.Images/Get", &req.base,
                   &containerd__services__images__v1__get_image_response__descriptor, &resp, err);
    if (rc < 0)
        return rc;
    IMAGES(GetImageResponse) *r = (IMAGES(GetImageResponse) *)resp;
    if (!r->image || !r->image->target)
        rc = vs_fail(err, -ENOENT, "image %s has no target", name);
    else {
        snprintf(digest, digest_cap, "%s", r->image->target->digest ? r->image->target->digest : "");
        snprintf(media_type, media_type_cap, "%s", r->image->target->media_type ? r->image->target->media_type : "");
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

int cd_image_put(struct cd_client *c, const struct cd_ctx *ctx, const char *name, const struct cd_descriptor *target,
                 const struct cd_label *labels, size_t label_count, struct vs_error *err)
{
    struct pb_labels pl = {0};
    LABELS_BUILD(IMAGES(Image__LabelsEntry), CONTAINERD__SERVICES__IMAGES__V1__IMAGE__LABELS_ENTRY__INIT, pl.image,
                 pl.ptrs, labels, label_count);
    if (!pl.image || !pl.ptrs) {
        pb_labels_free(&pl);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    Containerd__Types__Descriptor desc = CONTAINERD__TYPES__DESCRIPTOR__INIT;
    desc.media_type = (char *)target->media_type;
    desc.digest = (char *)target->digest;
    desc.size = target->size;
    IMAGES(Image) image = CONTAINERD__SERVICES__IMAGES__V1__IMAGE__INIT;
    image.name = (char *)name;
    image.target = &desc;
    image.n_labels = label_count;
    image.labels = (IMAGES(Image__LabelsEntry) **)pl.ptrs;
    IMAGES(CreateImageRequest) req = CONTAINERD__SERVICES__IMAGES__V1__CREATE_IMAGE_REQUEST__INIT;
    req.image = &image;
    struct vs_error e;
    vs_error_clear(&e);
    int rc = unary(c, ctx, "/containerd.services.images.v1.Images/Create", &req.base, NULL, NULL, &e);
    if (rc == -EEXIST) {
        IMAGES(UpdateImageRequest) up = CONTAINERD__SERVICES__IMAGES__V1__UPDATE_IMAGE_REQUEST__INIT;
        up.image = &image;
        rc = unary(c, ctx, "/containerd.services.images.v1.Images/Update", &up.base, NULL, NULL, err);
    } else if (rc < 0 && err) {
        *err = e;
    }
    pb_labels_free(&pl);
    return rc;
}

/* ---- Snapshots and Diff ---- */

#define SNAPS(x) Containerd__Services__Snapshots__V1__##x

int cd_snapshot_stat(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                     struct vs_error *err)
{
    SNAPS(StatSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
    req.snapshotter = (char *)snapshotter;
    req.key = (char *)key;
    return unary(c, ctx, "/containerd.services.snapshots.v1.Snapshots/Stat", &req.base, NULL, NULL, err);
}

static int mounts_from_pb(Containerd__Types__Mount **pb, size_t n, struct snapshot_mounts *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    out->items = calloc(n ? n : 1, sizeof(*out->items));
    if (!out->items)
        return vs_fail(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct snapshot_mount *m = &out->items[out->count++];
        m->type = strdup(pb[i]->type ? pb[i]->type : "");
        m->source = strdup(pb[i]->source ? pb[i]->source : "");
        m->target = strdup(pb[i]->target ? pb[i]->target : "");
        m->options = calloc(pb[i]->n_options ? pb[i]->n_options : 1, sizeof(char *));
        if (!m->type || !m->source || !m->target || !m->options)
            return vs_fail(err, -ENOMEM, "out of memory");
        for (size_t j = 0; j < pb[i]->n_options; j++)
            if (!(m->options[m->option_count++] = strdup(pb[i]->options[j])))
                return vs_fail(err, -ENOMEM, "out of memory");
    }
    return 0;
}

int cd_snapshot_prepare(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                        const char *parent, const struct cd_label *labels, size_t label_count,
                        struct snapshot_mounts *mounts, struct vs_error *err)
{
    memset(mounts, 0, sizeof(*mounts));
    struct pb_labels pl = {0};
    LABELS_BUILD(SNAPS(PrepareSnapshotRequest__LabelsEntry),
                 CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT, pl.prepare,
                 pl.ptrs, labels, label_count);
    if (!pl.prepare || !pl.ptrs) {
        pb_labels_free(&pl);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    SNAPS(PrepareSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
    req.snapshotter = (char *)snapshotter;
    req.key = (char *)key;
    req.parent = (char *)(parent ? parent : "");
    req.n_labels = label_count;
    req.labels = (SNAPS(PrepareSnapshotRequest__LabelsEntry) **)pl.ptrs;
    ProtobufCMessage *resp = NULL;
    int rc = unary(c, ctx, "/containerd.services.snapshots.v1.Snapshots/Prepare", &req.base,
                   &containerd__services__snapshots__v1__prepare_snapshot_response__descriptor, &resp, err);
    if (rc == 0) {
        SNAPS(PrepareSnapshotResponse) *r = (SNAPS(PrepareSnapshotResponse) *)resp;
        rc = mounts_from_pb(r->mounts, r->n_mounts, mounts, err);
        if (rc < 0)
            snapshot_mounts_free(mounts);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    pb_labels_free(&pl);
    return rc;
}

int cd_snapshot_commit(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *name,
                       const char *key, const struct cd_label *labels, size_t label_count, struct vs_error *err)
{
    struct pb_labels pl = {0};
    LABELS_BUILD(SNAPS(CommitSnapshotRequest__LabelsEntry),
                 CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT, pl.commit,
                 pl.ptrs, labels, label_count);
    if (!pl.commit || !pl.ptrs) {
        pb_labels_free(&pl);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    SNAPS(CommitSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__INIT;
    req.snapshotter = (char *)snapshotter;
    req.name = (char *)name;
    req.key = (char *)key;
    req.n_labels = label_count;
    req.labels = (SNAPS(CommitSnapshotRequest__LabelsEntry) **)pl.ptrs;
    int rc = unary(c, ctx, "/containerd.services.snapshots.v1.Snapshots/Commit", &req.base, NULL, NULL, err);
    pb_labels_free(&pl);
    return rc;
}

int cd_snapshot_remove(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                       struct vs_error *err)
{
    SNAPS(RemoveSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__REMOVE_SNAPSHOT_REQUEST__INIT;
    req.snapshotter = (char *)snapshotter;
    req.key = (char *)key;
    return unary(c, ctx, "/containerd.services.snapshots.v1.Snapshots/Remove", &req.base, NULL, NULL, err);
}

int cd_diff_apply(struct cd_client *c, const struct cd_ctx *ctx, const struct cd_descriptor *layer,
                  const struct snapshot_mounts *mounts, struct vs_error *err)
{
    Containerd__Types__Descriptor desc = CONTAINERD__TYPES__DESCRIPTOR__INIT;
    desc.media_type = (char *)layer->media_type;
    desc.digest = (char *)layer->digest;
    desc.size = layer->size;
    Containerd__Types__Mount *pm = calloc(mounts->count ? mounts->count : 1, sizeof(*pm));
    Containerd__Types__Mount **pp = calloc(mounts->count ? mounts->count : 1, sizeof(*pp));
    if (!pm || !pp) {
        free(pm);
        free(pp);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < mounts->count; i++) {
        Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
        m.type = mounts->items[i].type;
        m.source = mounts->items[i].source;
        m.target = mounts->items[i].target;
        m.n_options = mounts->items[i].option_count;
        m.options = mounts->items[i].options;
        pm[i] = m;
        pp[i] = &pm[i];
    }
    Containerd__Services__Diff__V1__ApplyRequest req = CONTAINERD__SERVICES__DIFF__V1__APPLY_REQUEST__INIT;
    req.diff = &desc;
    req.n_mounts = mounts->count;
    req.mounts = pp;
    int rc = unary(c, ctx, "/containerd.services.diff.v1.Diff/Apply", &req.base, NULL, NULL, err);
    free(pm);
    free(pp);
    return rc;
}

/* ---- The blob path's source ---- */

static int source_info(void *ctx, const char *ns, const char *digest, int64_t *size, struct vs_error *err)
{
    struct cd_ctx cx = {ns, NULL};
    return cd_content_info(ctx, &cx, digest, size, err);
}

static int source_open(void *ctx, const char *ns, const char *digest, int64_t size, int *fd, void **stream,
                       struct vs_error *err)
{
    struct cd_ctx cx = {ns, NULL};
    struct cd_read *r = NULL;
    int rc = cd_content_read_start(ctx, &cx, digest, size, fd, &r, err);
    *stream = r;
    return rc;
}

static int source_close(void *ctx, void *stream, bool drain, struct vs_error *err)
{
    (void)ctx;
    return cd_content_read_finish(stream, drain, err);
}

void cd_client_content_source(struct cd_client *c, struct snapshotter_content *out)
{
    out->ctx = c;
    out->info = source_info;
    out->open = source_open;
    out->close = source_close;
}
