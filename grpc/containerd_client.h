/* A gRPC C-core client to containerd's own socket: what the blob path reads (Content.Info, Content.Read) and
 * what the pre-pull drives (Leases, Content.Write/Update, Images, Snapshots, Diff.Apply). Every call carries the
 * metadata `containerd-namespace` and, when given, `containerd-lease`. Errors come back as negative codes
 * (NOT_FOUND -ENOENT, ALREADY_EXISTS -EEXIST, INVALID_ARGUMENT -EINVAL, FAILED_PRECONDITION -EBUSY, UNAVAILABLE
 * -EAGAIN, the rest -EIO) with containerd's message. A client is safe to use from several threads at once. */
#ifndef VERITYSNAP_GRPC_CONTAINERD_CLIENT_H
#define VERITYSNAP_GRPC_CONTAINERD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/vs_error.h"
#include "snapshotter/snapshotter.h"

struct cd_client;

/* Who a call is for: containerd's namespace (required) and a lease (NULL for none). */
struct cd_ctx {
    const char *ns;
    const char *lease;
};

struct cd_label {
    const char *key;
    const char *value;
};

/* Opens a channel to containerd at address (a socket path, or "unix:PATH"); it connects lazily, so containerd
 * may start later. grpc_init must have been called. */
int cd_client_new(const char *address, struct cd_client **out, struct vs_error *err);
void cd_client_free(struct cd_client *c);

/* ---- Content ---- */

/* The size of blob digest in ctx->ns's content store; -ENOENT when it is not there. */
int cd_content_info(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, int64_t *size,
                    struct vs_error *err);

/* Streams blob digest (size bytes, from Info) out of Content.Read on a thread of its own: *fd yields exactly its
 * bytes, then EOF. The thread checks the size and the sha256 digest of what it passed on. */
struct cd_read;
int cd_content_read_start(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, int64_t size,
                          int *fd, struct cd_read **out, struct vs_error *err);

/* Ends a read: with drain, reads what the consumer left (a tar reader may stop before the compressed stream's
 * trailer) so the digest is checked over the whole blob; without, abandons the stream. Closes the fd, joins the
 * thread and returns the stream's outcome (0, or why it failed: gRPC status, size or digest mismatch). */
int cd_content_read_finish(struct cd_read *r, bool drain, struct vs_error *err);

/* Reads a whole (small) blob into memory, checking its digest; *data is malloc'ed. */
int cd_content_read_all(struct cd_client *c, const struct cd_ctx *ctx, const char *digest, size_t max,
                        uint8_t **data, size_t *len, struct vs_error *err);

/* Writes a blob through Content.Write under ref: open sends STAT (-EEXIST: the blob is there already; -EAGAIN: the
 * ref is busy with another writer), write pushes its bytes in order (sent in 1 MiB WRITEs; a prefix an interrupted
 * ingest already holds is skipped), commit sends COMMIT with labels and checks size and digest. */
struct cd_writer;
int cd_writer_open(struct cd_client *c, const struct cd_ctx *ctx, const char *ref, const char *digest, int64_t size,
                   struct cd_writer **out, struct vs_error *err);
int cd_writer_write(struct cd_writer *w, const void *data, size_t len, struct vs_error *err);
int cd_writer_commit(struct cd_writer *w, const struct cd_label *labels, size_t label_count, struct vs_error *err);
void cd_writer_free(struct cd_writer *w);

/* The same for a blob in memory. */
int cd_content_write(struct cd_client *c, const struct cd_ctx *ctx, const char *ref, const char *digest,
                     int64_t size, const struct cd_label *labels, size_t label_count, const void *data,
                     struct vs_error *err);

/* Sets labels on a blob (Content.Update with the paths labels.<key>; an empty value removes the label). */
int cd_content_set_labels(struct cd_client *c, const struct cd_ctx *ctx, const char *digest,
                          const struct cd_label *labels, size_t label_count, struct vs_error *err);

/* ---- Leases ---- */

/* Creates lease id (not empty) expiring in expire_seconds (label containerd.io/gc.expire). */
int cd_lease_create(struct cd_client *c, const char *ns, const char *id, long expire_seconds,
                    struct vs_error *err);
int cd_lease_delete(struct cd_client *c, const char *ns, const char *id, struct vs_error *err);

/* ---- Images ---- */

struct cd_descriptor {
    const char *media_type;
    const char *digest;
    int64_t size;
};

/* The target of image name: digest (72 bytes) and media type (128 bytes); -ENOENT when there is no such image. */
int cd_image_get(struct cd_client *c, const struct cd_ctx *ctx, const char *name, char *digest, size_t digest_cap,
                 char *media_type, size_t media_type_cap, struct vs_error *err);

/* Creates image name pointing at target with labels, or on ALREADY_EXISTS updates it (as containerd's pull does). */
int cd_image_put(struct cd_client *c, const struct cd_ctx *ctx, const char *name, const struct cd_descriptor *target,
                 const struct cd_label *labels, size_t label_count, struct vs_error *err);

/* ---- Snapshots (containerd's service, for the snapshotter named snapshotter) and Diff ---- */

/* Stat: 0 when key exists, -ENOENT when not. */
int cd_snapshot_stat(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                     struct vs_error *err);
int cd_snapshot_prepare(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                        const char *parent, const struct cd_label *labels, size_t label_count,
                        struct snapshot_mounts *mounts, struct vs_error *err);
int cd_snapshot_commit(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *name,
                       const char *key, const struct cd_label *labels, size_t label_count, struct vs_error *err);
int cd_snapshot_remove(struct cd_client *c, const struct cd_ctx *ctx, const char *snapshotter, const char *key,
                       struct vs_error *err);

/* Diff.Apply: extracts layer (a blob in the content store) into mounts with containerd's differ. */
int cd_diff_apply(struct cd_client *c, const struct cd_ctx *ctx, const struct cd_descriptor *layer,
                  const struct snapshot_mounts *mounts, struct vs_error *err);

/* ---- The blob path's source ---- */

/* Fills out with callbacks reading layer blobs from containerd's content store through c, for
 * snapshotter_config.content. */
void cd_client_content_source(struct cd_client *c, struct snapshotter_content *out);

#endif
