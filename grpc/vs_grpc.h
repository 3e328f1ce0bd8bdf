/* veritysnap wire: containerd's Snapshots service (containerd.services.snapshots.v1) served over gRPC C core
 * on unix sockets, on top of the snapshot model in snapshotter/; the error-to-status table; the daemon's
 * configuration. (Named vs_grpc.h: a grpc/grpc.h here would shadow the system's <grpc/grpc.h>.) */
#ifndef VERITYSNAP_GRPC_VS_GRPC_H
#define VERITYSNAP_GRPC_VS_GRPC_H

#include <stdbool.h>
#include <stddef.h>

#include <grpc/status.h>

#include "common/vs_error.h"
#include "snapshotter/snapshotter.h"

#define VS_GRPC_MAX_MESSAGE (16 * 1024 * 1024) /* containerd's limit for proxy plugins, both directions */
#define VS_GRPC_WORKERS 8                      /* slow calls (Prepare, Commit...) served at once per socket */
#define VS_GRPC_FAST_WORKERS 2                 /* Stat, Update and List, served beside them */
#define VS_GRPC_LIST_BATCH 100                 /* Info items per List stream message */
#define VS_GRPC_LABEL_MAX 4096                 /* containerd's limit on a label's key + value */

/* The gRPC status for an error code (the one table): -ENOENT NOT_FOUND, -EEXIST ALREADY_EXISTS, -EINVAL,
 * -EBADMSG and the other bad-input codes INVALID_ARGUMENT, -EBUSY and -ENODEV FAILED_PRECONDITION, -ENOTSUP
 * UNIMPLEMENTED, -ECANCELED CANCELLED, other negative errno values INTERNAL, anything else UNKNOWN. 0 is OK.
 */
grpc_status_code vs_grpc_status_from_code(int code);

/* The canonical upper-case name of a status ("NOT_FOUND"), for logs and tests. */
const char *vs_grpc_status_name(grpc_status_code status);

/* One listening socket: a containerd proxy plugin. */
struct vs_grpc_listen {
    const char *address; /* socket path, absolute, optionally prefixed "unix:" */
    const char *group;   /* group owning the socket (name or numeric id); NULL or "" keeps root's group */
    const char
        *dialect; /* mount dialect served on this socket; NULL or "host" (the Kata issue adds others) */
};

struct vs_grpc_server;

/* Claims the socket (refusing a live one, replacing a stale one, creating its parent 0711) and binds it with
 * mode 0660 owned by root and the group; nothing is served yet (connections wait). Done before the store is
 * opened, so a second daemon is refused before it touches the state root. grpc_init must have been called. */
int vs_grpc_server_new(const struct vs_grpc_listen *listen, struct vs_grpc_server **out,
                       struct vs_error *err);

/* Starts serving s on srv with VS_GRPC_WORKERS threads. The signals the daemon handles must be blocked
 * already (the threads inherit the mask). */
int vs_grpc_server_start(struct vs_grpc_server *srv, struct snapshotter *s, struct vs_error *err);

/* Stops accepting, cancels the calls in flight, waits for the workers (a call inside the snapshotter finishes
 * first), removes the socket and frees srv; also for a server never started. NULL is ignored. */
void vs_grpc_server_stop(struct vs_grpc_server *srv);

/* ---- The daemon's configuration (config.toml) ---- */

#define VS_DEFAULT_CONFIG_PATH "/etc/veritysnap/config.toml"
#define VS_DEFAULT_ROOT "/var/lib/veritysnap"
#define VS_DEFAULT_MIN_FREE_SPACE (UINT64_C(1) << 30) /* bytes conversions leave free on the state root */
#define VS_DEFAULT_SOCKET "/run/veritysnap/veritysnap.sock"
#define VS_DEFAULT_CONTAINERD_ADDRESS "/run/containerd/containerd.sock"

struct vs_daemon_listen {
    char *address;
    char *group;   /* "" for none */
    char *dialect; /* "host" */
};

struct vs_daemon_config {
    char *root;
    enum snapshotter_verity_mode verity;
    char *containerd_address;
    char *log_level;               /* error, warn, info, debug */
    uint64_t max_layer_size;       /* bytes a layer file's image may grow to; 0: no limit */
    char *tardev_layer_src_prefix; /* kata-tardev layer-src-prefix; "": <root>/layers (docs/kata.md) */
    uint64_t min_free_space;       /* bytes conversions leave free on the state root's file system; 0: none */
    struct vs_daemon_listen *listen; /* at least one */
    size_t listen_count;
};

/* Fills config with the defaults (one listener on VS_DEFAULT_SOCKET). Free with vs_daemon_config_free. */
int vs_daemon_config_default(struct vs_daemon_config *config, struct vs_error *err);

/* Reads the TOML file at path over the defaults already in config. With must_exist false a missing file
 * leaves the defaults. Unknown keys, wrong types and bad values are errors naming the file and line. */
int vs_daemon_config_load(struct vs_daemon_config *config, const char *path, bool must_exist,
                          struct vs_error *err);

/* The commented default configuration (what --print-default-config prints); it parses to the defaults. */
const char *vs_daemon_config_default_text(void);

/* Parses "require", "auto" or "off". */
int vs_daemon_verity_mode_parse(const char *text, enum snapshotter_verity_mode *out);
const char *vs_daemon_verity_mode_name(enum snapshotter_verity_mode mode);

void vs_daemon_config_free(struct vs_daemon_config *config);

#endif
