/* The transport: one gRPC C-core server per listening socket, two lanes of workers, one call per worker at a
 * time.
 *
 * Every requested call gets its own pluck completion queue; new-call notifications arrive on its lane's
 * "next" queue that the lane's workers wait on. A worker that takes a call posts a fresh request for that
 * method at once, then runs the call to its end alone, plucking each batch from the call's own queue, so a
 * long Commit holds one worker and never the others (containerd's suite Stats inside an open List stream).
 * Calls that may convert a layer or wait for one (Prepare, View, Commit, Mounts, Remove, Usage, Cleanup, and
 * Stat on kata-tardev sockets) take the slow lane; Stat, Update and List, which only read or write the store,
 * take the fast lane, so that any number of long conversions (parallel pulls) never delays them. */
#include "vs_grpc.h"
#include "wire_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "common/vs_log.h"

/* Requests kept outstanding per method: calls beyond them wait in the server's pending queue. */
#define REQUESTS_PER_METHOD 2
#define METHOD_GENERIC WIRE_METHOD_COUNT /* any other method: answered UNIMPLEMENTED */

enum lane { LANE_SLOW, LANE_FAST, LANE_COUNT };

static enum lane method_lane(enum snapshot_dialect dialect, int method)
{
    switch (method) {
    case WIRE_STAT:
        /* On kata-tardev, Stat of a layer builds its missing tarfs form (snapshot_model.c). */
        return dialect == SNAPSHOT_DIALECT_KATA_TARDEV ? LANE_SLOW : LANE_FAST;
    case WIRE_UPDATE:
    case WIRE_LIST:
    case METHOD_GENERIC:
        return LANE_FAST;
    default:
        return LANE_SLOW;
    }
}

struct vs_grpc_server;
struct lane_worker {
    struct vs_grpc_server *srv;
    enum lane lane;
    pthread_t thread;
};

struct request_slot {
    struct vs_grpc_server *srv;
    int method;
    grpc_completion_queue *cq; /* pluck queue bound to the call */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array metadata;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* generic requests only */
};

struct vs_grpc_server {
    struct snapshotter *snap;
    grpc_server *server;
    grpc_completion_queue
        *lane_cq[LANE_COUNT]; /* notifications: new calls; the slow lane's also the shutdown tag */
    void *methods[WIRE_METHOD_COUNT];
    pthread_mutex_t post_lock; /* orders request posting against shutdown_and_notify */
    bool stopping;
    char shutdown_tag;
    struct lane_worker workers[VS_GRPC_WORKERS + VS_GRPC_FAST_WORKERS];
    size_t worker_count;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    /* Where the socket is bound until the server accepts calls; then renamed to path, so that a socket at
     * path always answers (containerd and anything waiting for the path never dial a server that is not
     * serving). */
    char bind_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    bool serving; /* renamed to path */
    char dialect[32];
    enum snapshot_dialect dialect_id; /* travels with every call (struct snapshot_call) */
    char group[64];
    int lock_fd;
    dev_t sock_dev;
    ino_t sock_ino;
};

/* A slot travels to the worker that serves it through gRPC's completion queue, whose locks ThreadSanitizer
 * cannot see (libgrpc is not instrumented): tell it about that handoff, so that it checks our code and not
 * theirs. */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define SLOT_PUBLISHED(slot) __tsan_release(slot)
#define SLOT_RECEIVED(slot) __tsan_acquire(slot)
#else
#define SLOT_PUBLISHED(slot) ((void)(slot))
#define SLOT_RECEIVED(slot) ((void)(slot))
#endif

/* Tags of the two kinds of batch a call has at once (each call has its own queue, so constants will do). */
static char tag_close, tag_send;

static void slot_free(struct request_slot *slot)
{
    if (slot->call)
        grpc_call_unref(slot->call);
    if (slot->payload)
        grpc_byte_buffer_destroy(slot->payload);
    grpc_metadata_array_destroy(&slot->metadata);
    if (slot->method == METHOD_GENERIC)
        grpc_call_details_destroy(&slot->details);
    /* Every batch of the call was plucked, so the queue is empty and may go. */
    grpc_completion_queue_shutdown(slot->cq);
    grpc_completion_queue_destroy(slot->cq);
    free(slot);
}

static int post_request(struct vs_grpc_server *srv, int method)
{
    struct request_slot *slot = calloc(1, sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    slot->srv = srv;
    slot->method = method;
    slot->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_metadata_array_init(&slot->metadata);
    if (method == METHOD_GENERIC)
        grpc_call_details_init(&slot->details);

    grpc_call_error e = GRPC_CALL_ERROR;
    grpc_completion_queue *call_cq = slot->cq; /* the slot is not ours to read once published */
    grpc_completion_queue *notify_cq = srv->lane_cq[method_lane(srv->dialect_id, method)];
    SLOT_PUBLISHED(slot);
    pthread_mutex_lock(&srv->post_lock);
    if (!srv->stopping) {
        if (method == METHOD_GENERIC)
            e = grpc_server_request_call(srv->server, &slot->call, &slot->details, &slot->metadata, call_cq,
                                         notify_cq, slot);
        else
            e = grpc_server_request_registered_call(srv->server, srv->methods[method], &slot->call,
                                                    &slot->deadline, &slot->metadata, &slot->payload, call_cq,
                                                    notify_cq, slot);
    }
    pthread_mutex_unlock(&srv->post_lock);
    if (e != GRPC_CALL_OK) {
        slot_free(slot);
        return -EIO;
    }
    return 0;
}

static bool pluck(grpc_completion_queue *cq, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Runs one batch and waits for it; false when the call is gone (cancelled, client away). */
static bool run_batch(grpc_call *call, grpc_completion_queue *cq, const grpc_op *ops, size_t n)
{
    if (grpc_call_start_batch(call, ops, n, &tag_send, NULL) != GRPC_CALL_OK)
        return false;
    return pluck(cq, &tag_send);
}

/* Sends the answer: for a unary call one batch (metadata, message, status); for a stream the messages one
 * batch at a time, each waited for, then the status. */
static void send_reply(struct request_slot *slot, struct wire_reply *reply)
{
    grpc_op ops[3];
    size_t n = 0, next = 0;
    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    bool ok = true;
    if (reply->status == GRPC_STATUS_OK && reply->count > 0) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = reply->messages[next++];
    }
    if (reply->count > 1) {
        ok = run_batch(slot->call, slot->cq, ops, n);
        for (; ok && next < reply->count; next++) {
            memset(ops, 0, sizeof(ops));
            ops[0].op = GRPC_OP_SEND_MESSAGE;
            ops[0].data.send_message.send_message = reply->messages[next];
            ok = run_batch(slot->call, slot->cq, ops, 1);
        }
        memset(ops, 0, sizeof(ops));
        n = 0;
    }
    if (!ok)
        return; /* the client went away: nobody reads a status */
    grpc_slice details = grpc_slice_from_copied_string(reply->status == GRPC_STATUS_OK ? "" : reply->message);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = reply->status;
    ops[n].data.send_status_from_server.status_details = &details;
    ops[n++].data.send_status_from_server.trailing_metadata_count = 0;
    run_batch(slot->call, slot->cq, ops, n);
    grpc_slice_unref(details);
}

/* containerd's namespace travels as the metadata containerd-namespace; the garbage collector sends none. */
static int read_namespace(const grpc_metadata_array *md, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "containerd-namespace") != 0)
            continue;
        size_t len = GRPC_SLICE_LENGTH(md->metadata[i].value);
        if (len >= cap || memchr(GRPC_SLICE_START_PTR(md->metadata[i].value), 0, len))
            return -EINVAL;
        memcpy(out, GRPC_SLICE_START_PTR(md->metadata[i].value), len);
        out[len] = '\0';
    }
    return 0;
}

static void serve_call(struct vs_grpc_server *srv, struct request_slot *slot)
{
    /* RECV_CLOSE_ON_SERVER in a batch of its own, outstanding for the whole call, plucked last. */
    int cancelled = 0;
    grpc_op close_op;
    memset(&close_op, 0, sizeof(close_op));
    close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    close_op.data.recv_close_on_server.cancelled = &cancelled;
    bool close_started = grpc_call_start_batch(slot->call, &close_op, 1, &tag_close, NULL) == GRPC_CALL_OK;

    struct wire_reply reply;
    memset(&reply, 0, sizeof(reply));
    char ns[256];
    if (slot->method == METHOD_GENERIC) {
        char method[256];
        size_t len = GRPC_SLICE_LENGTH(slot->details.method);
        if (len >= sizeof(method))
            len = sizeof(method) - 1;
        memcpy(method, GRPC_SLICE_START_PTR(slot->details.method), len);
        method[len] = '\0';
        wire_reply_fail(&reply, GRPC_STATUS_UNIMPLEMENTED, "unknown method %s", method);
        if (read_namespace(&slot->metadata, ns, sizeof(ns)) < 0)
            ns[0] = '\0';
        vs_log(VS_LOG_WARN, "call failed", "rpc", method, "namespace", ns, "key", "", "status",
               "UNIMPLEMENTED", "error", reply.message, NULL);
    } else if (read_namespace(&slot->metadata, ns, sizeof(ns)) < 0) {
        wire_reply_fail(&reply, GRPC_STATUS_INVALID_ARGUMENT, "%s: invalid containerd-namespace metadata",
                        wire_method_names[slot->method]);
    } else if (!slot->payload) {
        wire_reply_fail(&reply, GRPC_STATUS_INVALID_ARGUMENT, "%s: no request message",
                        wire_method_names[slot->method]);
    } else {
        grpc_byte_buffer_reader reader;
        if (!grpc_byte_buffer_reader_init(&reader, slot->payload)) {
            wire_reply_fail(&reply, GRPC_STATUS_INTERNAL, "%s: cannot read the request message",
                            wire_method_names[slot->method]);
        } else {
            grpc_slice data = grpc_byte_buffer_reader_readall(&reader);
            grpc_byte_buffer_reader_destroy(&reader);
            struct snapshot_call call = {
                .namespace_name = ns,
                .rpc = wire_method_names[slot->method],
                .dialect = srv->dialect_id,
            };
            wire_dispatch((enum wire_method)slot->method, srv->snap, &call, GRPC_SLICE_START_PTR(data),
                          GRPC_SLICE_LENGTH(data), &reply);
            grpc_slice_unref(data);
        }
    }
    send_reply(slot, &reply);
    wire_reply_free(&reply);
    if (close_started)
        pluck(slot->cq, &tag_close);
}

/* The shutdown tag arrives on the slow lane after every outstanding request (of both lanes) was failed and
 * published: no new event can arrive on either queue, so both may shut down (they still deliver what they
 * hold). */
static void shutdown_lanes(struct vs_grpc_server *srv)
{
    for (int l = 0; l < LANE_COUNT; l++)
        grpc_completion_queue_shutdown(srv->lane_cq[l]);
}

static void *worker_main(void *arg)
{
    struct lane_worker *w = arg;
    struct vs_grpc_server *srv = w->srv;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->lane_cq[w->lane], gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &srv->shutdown_tag) {
            shutdown_lanes(srv);
            continue;
        }
        struct request_slot *slot = ev.tag;
        SLOT_RECEIVED(slot);
        if (ev.success) {
            post_request(srv, slot->method); /* fails only once stopping */
            serve_call(srv, slot);
        }
        slot_free(slot);
    }
    return NULL;
}

/* ---- The socket ---- */

static int resolve_group(const char *group, gid_t *gid, struct vs_error *err)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(group, &end, 10);
    if (!*end && end != group && errno == 0 && n < UINT_MAX) {
        *gid = (gid_t)n;
        return 0;
    }
    struct group gr, *res = NULL;
    char buf[16384];
    int r = getgrnam_r(group, &gr, buf, sizeof(buf), &res);
    if (r || !res)
        return vs_fail(err, r ? -r : -EINVAL, "socket group %s: %s", group,
                       r ? strerror(r) : "no such group");
    *gid = res->gr_gid;
    return 0;
}

/* Creates the missing directories of path's parent, each 0711 (containerd and the runtime need to traverse
 * them, nobody needs to list them). */
static int make_parent(const char *path, struct vs_error *err)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0711) == 0) {
            if (chmod(dir, 0711) < 0) /* the umask may have taken bits away */
                return vs_fail(err, -errno, "socket directory %s: chmod: %s", dir, strerror(errno));
        } else if (errno != EEXIST) {
            return vs_fail(err, -errno, "socket directory %s: %s", dir, strerror(errno));
        }
        *p = c;
        if (!c)
            break;
    }
    return 0;
}

/* Takes the socket's path for this process: a lock file beside it (two daemons starting at once), then a
 * socket left at the path is probed: one that accepts a connection is another live server and is refused; one
 * that does not is what a crashed run left and is removed. */
static int claim_socket(struct vs_grpc_server *srv, struct vs_error *err)
{
    int r = make_parent(srv->path, err);
    if (r < 0)
        return r;
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s.lock", srv->path);
    srv->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (srv->lock_fd < 0)
        return vs_fail(err, -errno, "socket lock %s: %s", lock, strerror(errno));
    if (flock(srv->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return vs_fail(err, -EADDRINUSE, "socket %s: another veritysnapd is serving it (%s is locked)",
                           srv->path, lock);
        return vs_fail(err, -errno, "socket lock %s: %s", lock, strerror(errno));
    }
    /* A socket left at the bind path by a run that crashed while starting is ours to remove: we hold the
     * lock. */
    if (unlink(srv->bind_path) < 0 && errno != ENOENT)
        return vs_fail(err, -errno, "socket %s: removing a leftover %s: %s", srv->path, srv->bind_path,
                       strerror(errno));
    struct stat st;
    if (lstat(srv->path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return vs_fail(err, -errno, "socket %s: %s", srv->path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return vs_fail(err, -EEXIST, "socket %s: the path exists and is not a socket; not replacing it",
                       srv->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return vs_fail(err, -errno, "socket %s: %s", srv->path, strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, srv->path, strlen(srv->path) + 1);
    r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (r == 0)
        return vs_fail(err, -EADDRINUSE,
                       "socket %s: another process is serving it (a connection succeeded); stop it or choose "
                       "another address",
                       srv->path);
    if (e != ECONNREFUSED)
        return vs_fail(err, -e, "socket %s: cannot tell whether it is live: %s", srv->path, strerror(e));
    if (unlink(srv->path) < 0 && errno != ENOENT)
        return vs_fail(err, -errno, "socket %s: removing the stale socket: %s", srv->path, strerror(errno));
    vs_log(VS_LOG_WARN, "replaced a stale socket", "address", srv->path, NULL);
    return 0;
}

/* Binds with mode 0600 from the start (umask), then hands the socket to root and the group with 0660, so
 * there is no moment where others can connect. */
static int bind_socket(struct vs_grpc_server *srv, const struct vs_grpc_listen *listen, struct vs_error *err)
{
    gid_t gid = (gid_t)-1;
    if (listen->group && listen->group[0]) {
        int r = resolve_group(listen->group, &gid, err);
        if (r < 0)
            return r;
    }
    char target[sizeof(srv->bind_path) + 8];
    snprintf(target, sizeof(target), "unix:%s", srv->bind_path);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    mode_t old = umask(0177);
    int port = grpc_server_add_http2_port(srv->server, target, creds);
    umask(old);
    grpc_server_credentials_release(creds);
    if (!port)
        return vs_fail(err, -EADDRNOTAVAIL, "socket %s: gRPC could not listen on it (see the log above)",
                       srv->path);
    uid_t uid = geteuid() == 0 ? 0 : (uid_t)-1;
    if ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(srv->bind_path, uid, gid) < 0)
        return vs_fail(err, -errno, "socket %s: chown to group %s: %s", srv->bind_path, listen->group,
                       strerror(errno));
    if (chmod(srv->bind_path, 0660) < 0)
        return vs_fail(err, -errno, "socket %s: chmod: %s", srv->bind_path, strerror(errno));
    struct stat st;
    if (stat(srv->bind_path, &st) < 0)
        return vs_fail(err, -errno, "socket %s: %s", srv->bind_path, strerror(errno));
    srv->sock_dev = st.st_dev;
    srv->sock_ino = st.st_ino;
    return 0;
}

/* ---- Start and stop ---- */

static void server_free(struct vs_grpc_server *srv)
{
    if (srv->server)
        grpc_server_destroy(srv->server);
    for (int l = 0; l < LANE_COUNT; l++)
        if (srv->lane_cq[l])
            grpc_completion_queue_destroy(srv->lane_cq[l]);
    /* Our socket only: another daemon may hold the path by now (after a failed start, for example). */
    const char *bound = srv->serving ? srv->path : srv->bind_path;
    struct stat st;
    if (srv->sock_ino && lstat(bound, &st) == 0 && st.st_dev == srv->sock_dev && st.st_ino == srv->sock_ino)
        unlink(bound);
    /* The lock file stays: removing it would let a third process lock a new file while a second holds the
     * old. */
    if (srv->lock_fd >= 0)
        close(srv->lock_fd);
    pthread_mutex_destroy(&srv->post_lock);
    free(srv);
}

/* Shutdown, cancel and drain on the calling thread, for a server whose workers never ran. */
static void shutdown_without_workers(struct vs_grpc_server *srv)
{
    if (!srv->server)
        return;
    pthread_mutex_lock(&srv->post_lock);
    srv->stopping = true;
    grpc_server_shutdown_and_notify(srv->server, srv->lane_cq[LANE_SLOW], &srv->shutdown_tag);
    pthread_mutex_unlock(&srv->post_lock);
    grpc_server_cancel_all_calls(srv->server);
    for (int l = 0; l < LANE_COUNT; l++) {
        for (;;) {
            grpc_event ev =
                grpc_completion_queue_next(srv->lane_cq[l], gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                break;
            if (ev.type != GRPC_OP_COMPLETE)
                continue;
            if (ev.tag == &srv->shutdown_tag)
                shutdown_lanes(srv);
            else
                slot_free(ev.tag);
        }
    }
}

int vs_grpc_server_new(const struct vs_grpc_listen *listen, struct vs_grpc_server **out, struct vs_error *err)
{
    *out = NULL;
    const char *path = listen->address ? listen->address : "";
    if (strncmp(path, "unix://", 7) == 0)
        path += 7;
    else if (strncmp(path, "unix:", 5) == 0)
        path += 5;
    if (path[0] != '/')
        return vs_fail(err, -EINVAL, "listen address %s: must be an absolute socket path", listen->address);
    struct vs_grpc_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return vs_fail(err, -ENOMEM, "out of memory");
    srv->lock_fd = -1;
    pthread_mutex_init(&srv->post_lock, NULL);
    snprintf(srv->dialect, sizeof(srv->dialect), "%s",
             listen->dialect && listen->dialect[0] ? listen->dialect : "host");
    if (snapshot_dialect_parse(srv->dialect, &srv->dialect_id) < 0) {
        server_free(srv);
        return vs_fail(err, -EINVAL,
                       "listen address %s: unknown dialect \"%s\" (host, kata-erofs or kata-tardev)", path,
                       listen->dialect);
    }
    snprintf(srv->group, sizeof(srv->group), "%s",
             listen->group && listen->group[0] ? listen->group : "root");
    if (strlen(path) + strlen(".new") >= sizeof(srv->path)) {
        server_free(srv);
        return vs_fail(err, -ENAMETOOLONG,
                       "listen address %s: longer than a unix socket path may be here (%zu bytes: the "
                       "socket is bound as <address>.new first)",
                       path, sizeof(srv->path) - 1 - strlen(".new"));
    }
    memcpy(srv->path, path, strlen(path) + 1);
    snprintf(srv->bind_path, sizeof(srv->bind_path), "%s.new", path);
    int r = claim_socket(srv, err);
    if (r < 0) {
        server_free(srv);
        return r;
    }

    grpc_arg args[2] = {
        {.type = GRPC_ARG_INTEGER,
         .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = VS_GRPC_MAX_MESSAGE},
        {.type = GRPC_ARG_INTEGER,
         .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = VS_GRPC_MAX_MESSAGE},
    };
    grpc_channel_args channel_args = {.num_args = 2, .args = args};
    srv->server = grpc_server_create(&channel_args, NULL);
    for (int l = 0; l < LANE_COUNT; l++) {
        srv->lane_cq[l] = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv->server, srv->lane_cq[l], NULL);
    }
    for (int m = 0; m < WIRE_METHOD_COUNT; m++) {
        char method[128];
        snprintf(method, sizeof(method), "/%s/%s", VS_SNAPSHOTS_SERVICE, wire_method_names[m]);
        srv->methods[m] = grpc_server_register_method(srv->server, method, NULL,
                                                      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!srv->methods[m]) {
            vs_grpc_server_stop(srv);
            return vs_fail(err, -EIO, "gRPC refused to register %s", method);
        }
    }
    r = bind_socket(srv, listen, err);
    if (r < 0) {
        vs_grpc_server_stop(srv);
        return r;
    }
    *out = srv;
    return 0;
}

int vs_grpc_server_start(struct vs_grpc_server *srv, struct snapshotter *s, struct vs_error *err)
{
    srv->snap = s;
    grpc_server_start(srv->server);
    for (int m = 0; m <= METHOD_GENERIC; m++)
        for (int i = 0; i < REQUESTS_PER_METHOD; i++)
            post_request(srv, m);
    for (size_t i = 0; i < VS_GRPC_WORKERS + VS_GRPC_FAST_WORKERS; i++) {
        struct lane_worker *w = &srv->workers[srv->worker_count];
        w->srv = srv;
        w->lane = i < VS_GRPC_WORKERS ? LANE_SLOW : LANE_FAST;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            return vs_fail(err, -EAGAIN, "socket %s: cannot start worker threads", srv->path);
        srv->worker_count++;
    }
    /* Serving: only now does the socket appear at its address (rename is atomic; a stale socket there was
     * removed when it was claimed). */
    if (rename(srv->bind_path, srv->path) < 0)
        return vs_fail(err, -errno, "socket %s: renaming %s to it: %s", srv->path, srv->bind_path,
                       strerror(errno));
    srv->serving = true;
    vs_log(VS_LOG_INFO, "listening", "address", srv->path, "dialect", srv->dialect, "group", srv->group,
           NULL);
    return 0;
}

void vs_grpc_server_stop(struct vs_grpc_server *srv)
{
    if (!srv)
        return;
    if (!srv->worker_count) {
        shutdown_without_workers(srv); /* never started, or its workers never ran */
    } else {
        pthread_mutex_lock(&srv->post_lock);
        srv->stopping = true;
        grpc_server_shutdown_and_notify(srv->server, srv->lane_cq[LANE_SLOW], &srv->shutdown_tag);
        pthread_mutex_unlock(&srv->post_lock);
        grpc_server_cancel_all_calls(srv->server);
        for (size_t i = 0; i < srv->worker_count; i++)
            pthread_join(srv->workers[i].thread, NULL);
        vs_log(VS_LOG_INFO, "stopped listening", "address", srv->path, NULL);
    }
    server_free(srv);
}
