/* The one table from error codes to gRPC statuses; containerd turns the status back into its errdefs errors.
 */
#include "vs_grpc.h"

#include <errno.h>
#include <stddef.h>

static const struct {
    int code;
    grpc_status_code status;
} status_table[] = {
    {-ENOENT, GRPC_STATUS_NOT_FOUND},
    {-EEXIST, GRPC_STATUS_ALREADY_EXISTS},
    {-EINVAL, GRPC_STATUS_INVALID_ARGUMENT},
    {-EBADMSG, GRPC_STATUS_INVALID_ARGUMENT},      /* bad layer content */
    {-ENAMETOOLONG, GRPC_STATUS_INVALID_ARGUMENT}, /* bad input as vs_error_is_bad_input counts it */
    {-EILSEQ, GRPC_STATUS_INVALID_ARGUMENT},
    {-EFBIG, GRPC_STATUS_INVALID_ARGUMENT},     /* a layer that expands beyond max_layer_size */
    {-EBUSY, GRPC_STATUS_FAILED_PRECONDITION},  /* e.g. "cannot remove snapshot with child" */
    {-ENODEV, GRPC_STATUS_FAILED_PRECONDITION}, /* a kernel feature the node lacks (verity = "require") */
    {-ENOTSUP, GRPC_STATUS_UNIMPLEMENTED},
    {-ECANCELED, GRPC_STATUS_CANCELLED},
    {-ENOSPC, GRPC_STATUS_RESOURCE_EXHAUSTED}, /* the state root's disk is full */
    {-EDQUOT, GRPC_STATUS_RESOURCE_EXHAUSTED},
};

grpc_status_code vs_grpc_status_from_code(int code)
{
    if (code == 0)
        return GRPC_STATUS_OK;
    for (size_t i = 0; i < sizeof(status_table) / sizeof(status_table[0]); i++)
        if (status_table[i].code == code)
            return status_table[i].status;
    /* A negative errno is a failure of ours (I/O, memory); anything else is a code nobody should return. */
    return code < 0 && code > -4096 ? GRPC_STATUS_INTERNAL : GRPC_STATUS_UNKNOWN;
}

const char *vs_grpc_status_name(grpc_status_code status)
{
    static const char *const names[] = {
        "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED",
    };
    if ((int)status >= 0 && (size_t)status < sizeof(names) / sizeof(names[0]))
        return names[status];
    return "UNKNOWN";
}
