/* Inside grpc/: what the transport (server.c) and the Snapshots service (snapshots_service.c) share. */
#ifndef VERITYSNAP_GRPC_WIRE_INTERNAL_H
#define VERITYSNAP_GRPC_WIRE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>

#include "vs_grpc.h"

#define VS_SNAPSHOTS_SERVICE "containerd.services.snapshots.v1.Snapshots"

enum wire_method {
    WIRE_PREPARE,
    WIRE_VIEW,
    WIRE_MOUNTS,
    WIRE_COMMIT,
    WIRE_REMOVE,
    WIRE_STAT,
    WIRE_UPDATE,
    WIRE_LIST,
    WIRE_USAGE,
    WIRE_CLEANUP,
    WIRE_METHOD_COUNT,
};

/* "Prepare", ... in enum order. */
extern const char *const wire_method_names[WIRE_METHOD_COUNT];

/* What a call answers: a status and its message, and the response messages (one for a unary call when OK, any
 * number for List). */
struct wire_reply {
    grpc_status_code status;
    char message[1024];
    grpc_byte_buffer **messages;
    size_t count, cap;
};

/* Sets status and a printf-style message (replacing any messages already added). */
void wire_reply_fail(struct wire_reply *reply, grpc_status_code status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void wire_reply_free(struct wire_reply *reply);

/* Decodes one request of method m (len bytes at data), validates it, runs it on s on behalf of call, encodes
 * the answer into reply (zeroed by the caller) and logs the outcome. */
void wire_dispatch(enum wire_method m, struct snapshotter *s, const struct snapshot_call *call,
                   const uint8_t *data, size_t len, struct wire_reply *reply);

#endif
