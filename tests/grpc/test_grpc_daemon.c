/* The daemon over the wire: a gRPC C-core client drives veritysnapd (built from this tree, started with a
 * temp root, a temp socket and verity "off") through every Snapshots RPC and checks answers and status codes,
 * then the socket's life: modes, group, a stale socket replaced, a live one refused, a non-socket left alone,
 * and clean exits on SIGTERM and SIGINT. The oracle is containerd's contract as reference/containerd.md
 * states it, not our code. Usage: test_grpc_daemon PATH/TO/veritysnapd. Exit 0 pass, 77 skip (not root), 1
 * fail. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "containerd/services/snapshots/v1/snapshots.pb-c.h"
#include "google/protobuf/empty.pb-c.h"

/* A failed REQUIRE stops the daemons, shows their logs and exits: what follows cannot run. */
static void finish(void);
#define VS_TEST_REQUIRE_FAILED() finish()
#include "tests/lib/vs_test.h"

#define SNAP(x) Containerd__Services__Snapshots__V1__##x
#define METHOD(rpc) "/containerd.services.snapshots.v1.Snapshots/" rpc
#define NAMESPACE "testns"

static const char *daemon_path;
static char tmp[256];

static pid_t live_daemons[16];

/* snprintf into an array, stopping the test on truncation (paths here are short). */
#define FMT(buf, ...)                                                                                        \
    do {                                                                                                     \
        if (snprintf((buf), sizeof(buf), __VA_ARGS__) >= (int)sizeof(buf))                                   \
            abort();                                                                                         \
    } while (0)

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void dump_logs(void)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "for f in %s/*.log; do echo \"== $f\"; tail -n 40 \"$f\"; done >&2", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "(no logs)\n");
}

static void finish(void)
{
    for (size_t i = 0; i < sizeof(live_daemons) / sizeof(live_daemons[0]); i++)
        if (live_daemons[i] > 0) {
            kill(live_daemons[i], SIGKILL);
            waitpid(live_daemons[i], NULL, 0);
        }
    if (failures)
        dump_logs();
    if (!getenv("VS_KEEP_TMP"))
        nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    fprintf(stderr, "%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    exit(failures ? 1 : 0);
}

static void track(pid_t pid, bool live)
{
    for (size_t i = 0; i < sizeof(live_daemons) / sizeof(live_daemons[0]); i++) {
        if (live && live_daemons[i] == 0) {
            live_daemons[i] = pid;
            return;
        }
        if (!live && live_daemons[i] == pid) {
            live_daemons[i] = 0;
            return;
        }
    }
}

/* ---- The daemon ---- */

static void path_in_tmp(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp, name);
}

/* Starts veritysnapd with extra arguments (NULL-terminated), stderr into tmp/<log>.log. */
static pid_t start_daemon(const char *log, ...)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = daemon_path;
    va_list ap;
    va_start(ap, log);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 30)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    char log_path[512];
    snprintf(log_path, sizeof(log_path), "%s/%s.log", tmp, log);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(daemon_path, (char **)argv);
        _exit(127);
    }
    track(pid, true);
    return pid;
}

static bool socket_live(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Waits until the daemon serves path (true) or exits (false). */
static bool wait_serving(pid_t pid, const char *path)
{
    for (int i = 0; i < 300; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            track(pid, false);
            return false;
        }
        if (socket_live(path))
            return true;
        usleep(20000);
    }
    return false;
}

/* Waits up to 10 s for the daemon to exit; returns its exit status, or -signal, or -1000 on timeout. */
static int wait_exit(pid_t pid)
{
    for (int i = 0; i < 500; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            track(pid, false);
            return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        }
        usleep(20000);
    }
    return -1000;
}

static bool log_contains(const char *log, const char *needle)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.log", tmp, log);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* ---- A small client ---- */

static grpc_channel *channel;
static grpc_completion_queue *cq;

static void client_open(const char *sock)
{
    char target[512];
    snprintf(target, sizeof(target), "unix:%s", sock);
    grpc_arg args[1] = {
        {.type = GRPC_ARG_INTEGER,
         .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = 16 << 20},
    };
    grpc_channel_args ca = {.num_args = 1, .args = args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    channel = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
    cq = grpc_completion_queue_create_for_pluck(NULL);
}

static void client_close(void)
{
    grpc_channel_destroy(channel);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    channel = NULL;
    cq = NULL;
}

static gpr_timespec deadline_in(int seconds)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(seconds, GPR_TIMESPAN));
}

static bool pluck(void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(cq, tag, deadline_in(60), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static grpc_byte_buffer *pack(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
    if (!bb)
        return NULL;
    grpc_byte_buffer_reader r;
    grpc_byte_buffer_reader_init(&r, bb);
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return m;
}

static char last_details[1024];

/* One unary call with raw request bytes; returns the status, the response message in *resp (caller destroys).
 */
static grpc_status_code call_raw(const char *method, grpc_byte_buffer *req, grpc_byte_buffer **resp)
{
    grpc_slice m = grpc_slice_from_copied_string(method);
    grpc_call *call =
        grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL, deadline_in(60), NULL);
    grpc_slice_unref(m);
    grpc_metadata md = {.key = grpc_slice_from_static_string("containerd-namespace"),
                        .value = grpc_slice_from_static_string(NAMESPACE)};
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    *resp = NULL;
    static char tag;
    if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK || !pluck(&tag))
        status = GRPC_STATUS_INTERNAL;
    size_t n = GRPC_SLICE_LENGTH(details) < sizeof(last_details) - 1 ? GRPC_SLICE_LENGTH(details)
                                                                     : sizeof(last_details) - 1;
    memcpy(last_details, GRPC_SLICE_START_PTR(details), n);
    last_details[n] = '\0';
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_call_unref(call);
    return status;
}

/* One unary call; *out gets the decoded response (NULL unless OK). */
static grpc_status_code call_unary(const char *method, const ProtobufCMessage *req,
                                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **out)
{
    grpc_byte_buffer *bb = pack(req), *resp = NULL;
    grpc_status_code st = call_raw(method, bb, &resp);
    grpc_byte_buffer_destroy(bb);
    ProtobufCMessage *m = NULL;
    if (st == GRPC_STATUS_OK) {
        m = unpack(resp_desc, resp);
        if (!m)
            st = GRPC_STATUS_DATA_LOSS; /* the test's own marker: an OK without a decodable answer */
    }
    if (resp)
        grpc_byte_buffer_destroy(resp);
    if (out)
        *out = m;
    else if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return st;
}

static const char *code_name(grpc_status_code c)
{
    static const char *const names[] = {
        "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED",
    };
    return (unsigned)c < sizeof(names) / sizeof(names[0]) ? names[c] : "?";
}

#define EXPECT_STATUS(expr, want)                                                                            \
    do {                                                                                                     \
        grpc_status_code got_ = (expr);                                                                      \
        CHECK(got_ == (want), "%s: got %s (%s), want %s", #expr, code_name(got_), last_details,              \
              code_name(want));                                                                              \
    } while (0)

/* ---- RPC helpers ---- */

typedef SNAP(PrepareSnapshotRequest__LabelsEntry) PrepLabel;

static grpc_status_code prepare(const char *method, const char *key, const char *parent, const char *lk,
                                const char *lv, SNAP(PrepareSnapshotResponse) * *out)
{
    SNAP(PrepareSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__INIT;
    PrepLabel label = CONTAINERD__SERVICES__SNAPSHOTS__V1__PREPARE_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT;
    PrepLabel *labels[1] = {&label};
    req.snapshotter = (char *)"veritysnap";
    req.key = (char *)key;
    req.parent = (char *)(parent ? parent : "");
    if (lk) {
        label.key = (char *)lk;
        label.value = (char *)lv;
        req.n_labels = 1;
        req.labels = labels;
    }
    /* View's request and response have the same fields and numbers: one encoder serves both. */
    ProtobufCMessage *resp = NULL;
    grpc_status_code st =
        call_unary(method, &req.base,
                   &containerd__services__snapshots__v1__prepare_snapshot_response__descriptor, &resp);
    if (out)
        *out = (SNAP(PrepareSnapshotResponse) *)resp;
    else if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

static grpc_status_code stat_key(const char *key, SNAP(StatSnapshotResponse) * *out)
{
    SNAP(StatSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__STAT_SNAPSHOT_REQUEST__INIT;
    req.key = (char *)key;
    ProtobufCMessage *resp = NULL;
    grpc_status_code st =
        call_unary(METHOD("Stat"), &req.base,
                   &containerd__services__snapshots__v1__stat_snapshot_response__descriptor, &resp);
    if (out)
        *out = (SNAP(StatSnapshotResponse) *)resp;
    else if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return st;
}

static grpc_status_code key_only(const char *method, const char *key)
{
    /* Remove, Mounts, Usage, Stat: {snapshotter = 1, key = 2} */
    SNAP(RemoveSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__REMOVE_SNAPSHOT_REQUEST__INIT;
    req.key = (char *)key;
    grpc_byte_buffer *bb = pack(&req.base), *resp = NULL;
    grpc_status_code st = call_raw(method, bb, &resp);
    grpc_byte_buffer_destroy(bb);
    if (resp)
        grpc_byte_buffer_destroy(resp);
    return st;
}

static grpc_status_code commit(const char *name, const char *key, const char *lk, const char *lv)
{
    SNAP(CommitSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__INIT;
    SNAP(CommitSnapshotRequest__LabelsEntry)
    label = CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__LABELS_ENTRY__INIT;
    SNAP(CommitSnapshotRequest__LabelsEntry) * labels[1] = {&label};
    req.name = (char *)name;
    req.key = (char *)key;
    if (lk) {
        label.key = (char *)lk;
        label.value = (char *)lv;
        req.n_labels = 1;
        req.labels = labels;
    }
    return call_unary(METHOD("Commit"), &req.base, &google__protobuf__empty__descriptor, NULL);
}

static const char *label_of(SNAP(Info) * info, const char *key)
{
    for (size_t i = 0; info && i < info->n_labels; i++)
        if (strcmp(info->labels[i]->key, key) == 0)
            return info->labels[i]->value;
    return NULL;
}

/* A List stream: starts it and returns the call; list_next gives each message's Infos. */
struct list_stream {
    grpc_call *call;
    grpc_metadata_array initial, trailing;
    grpc_status_code status;
    grpc_slice details;
    char tag_start, tag_msg, tag_status;
};

static void list_open(struct list_stream *ls, const char *const *filters, size_t n)
{
    memset(ls, 0, sizeof(*ls));
    grpc_slice m = grpc_slice_from_static_string(METHOD("List"));
    ls->call =
        grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL, deadline_in(60), NULL);
    grpc_metadata_array_init(&ls->initial);
    grpc_metadata_array_init(&ls->trailing);
    SNAP(ListSnapshotsRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__LIST_SNAPSHOTS_REQUEST__INIT;
    req.filters = (char **)filters;
    req.n_filters = n;
    grpc_byte_buffer *bb = pack(&req.base);
    grpc_metadata md = {.key = grpc_slice_from_static_string("containerd-namespace"),
                        .value = grpc_slice_from_static_string(NAMESPACE)};
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &ls->initial;
    CHECK(grpc_call_start_batch(ls->call, ops, 4, &ls->tag_start, NULL) == GRPC_CALL_OK, "List start");
    pluck(&ls->tag_start);
    grpc_byte_buffer_destroy(bb);
}

/* The next message, or NULL at the end of the stream. */
static SNAP(ListSnapshotsResponse) * list_next(struct list_stream *ls)
{
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    if (grpc_call_start_batch(ls->call, &op, 1, &ls->tag_msg, NULL) != GRPC_CALL_OK || !pluck(&ls->tag_msg) ||
        !bb)
        return NULL;
    SNAP(ListSnapshotsResponse) *r = (SNAP(ListSnapshotsResponse) *)unpack(
        &containerd__services__snapshots__v1__list_snapshots_response__descriptor, bb);
    grpc_byte_buffer_destroy(bb);
    CHECK(r, "List: undecodable message");
    return r;
}

static grpc_status_code list_close(struct list_stream *ls)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.status = &ls->status;
    op.data.recv_status_on_client.status_details = &ls->details;
    op.data.recv_status_on_client.trailing_metadata = &ls->trailing;
    if (grpc_call_start_batch(ls->call, &op, 1, &ls->tag_status, NULL) != GRPC_CALL_OK ||
        !pluck(&ls->tag_status))
        ls->status = GRPC_STATUS_INTERNAL;
    snprintf(last_details, sizeof(last_details), "%.*s", (int)GRPC_SLICE_LENGTH(ls->details),
             (const char *)GRPC_SLICE_START_PTR(ls->details));
    grpc_slice_unref(ls->details);
    grpc_metadata_array_destroy(&ls->initial);
    grpc_metadata_array_destroy(&ls->trailing);
    grpc_call_unref(ls->call);
    return ls->status;
}

/* Lists with filters; returns the status, the number of Infos in *count and of messages in *messages. When
 * stat_inside is set, a Stat of it runs on another call after the first message, with the stream still open.
 */
static grpc_status_code list(const char *const *filters, size_t n, size_t *count, size_t *messages,
                             const char *stat_inside)
{
    struct list_stream ls;
    list_open(&ls, filters, n);
    *count = *messages = 0;
    SNAP(ListSnapshotsResponse) * r;
    while ((r = list_next(&ls))) {
        *count += r->n_info;
        (*messages)++;
        if (stat_inside && *messages == 1)
            EXPECT_STATUS(stat_key(stat_inside, NULL), GRPC_STATUS_OK);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    return list_close(&ls);
}

/* ---- The cases ---- */

static void test_rpcs(void)
{
    grpc_byte_buffer *resp = NULL;
    /* Unknown methods answer at once, not at the deadline. */
    time_t t0 = time(NULL);
    grpc_byte_buffer *empty = pack(&(Google__Protobuf__Empty)GOOGLE__PROTOBUF__EMPTY__INIT.base);
    EXPECT_STATUS(call_raw(METHOD("Rebase"), empty, &resp), GRPC_STATUS_UNIMPLEMENTED);
    EXPECT_STATUS(call_raw("/containerd.services.content.v1.Content/Info", empty, &resp),
                  GRPC_STATUS_UNIMPLEMENTED);
    CHECK(time(NULL) - t0 < 5, "UNIMPLEMENTED took %ld s", (long)(time(NULL) - t0));
    grpc_byte_buffer_destroy(empty);

    /* Prepare, duplicate key, bad input. */
    SNAP(PrepareSnapshotResponse) *pr = NULL;
    EXPECT_STATUS(prepare(METHOD("Prepare"), "a", NULL, "l1", "v1", &pr), GRPC_STATUS_OK);
    CHECK(pr && pr->n_mounts >= 1, "Prepare returned no mounts");
    if (pr && pr->n_mounts)
        fprintf(stderr, "Prepare a: mount type=%s source=%s options=%zu\n", pr->mounts[0]->type,
                pr->mounts[0]->source, pr->mounts[0]->n_options);
    if (pr)
        protobuf_c_message_free_unpacked(&pr->base, NULL);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "a", NULL, NULL, NULL, NULL), GRPC_STATUS_ALREADY_EXISTS);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "", NULL, NULL, NULL, NULL), GRPC_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "x", "no-such-parent", NULL, NULL, NULL), GRPC_STATUS_NOT_FOUND);
    static char big[5000];
    memset(big, 'v', sizeof(big) - 1);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "y", NULL, "big", big, NULL), GRPC_STATUS_INVALID_ARGUMENT);
    /* A request that is not a protobuf message. */
    grpc_slice junk = grpc_slice_from_static_string("\xff\xff\xff\xff");
    grpc_byte_buffer *jb = grpc_raw_byte_buffer_create(&junk, 1);
    EXPECT_STATUS(call_raw(METHOD("Stat"), jb, &resp), GRPC_STATUS_INVALID_ARGUMENT);
    grpc_byte_buffer_destroy(jb);

    /* Stat */
    SNAP(StatSnapshotResponse) *sr = NULL;
    EXPECT_STATUS(stat_key("missing", NULL), GRPC_STATUS_NOT_FOUND);
    EXPECT_STATUS(stat_key("a", &sr), GRPC_STATUS_OK);
    if (sr) {
        CHECK(sr->info && strcmp(sr->info->name, "a") == 0, "Stat a: name");
        CHECK(sr->info && sr->info->kind == CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE,
              "Stat a: kind");
        CHECK(sr->info && sr->info->parent[0] == '\0', "Stat a: parent");
        const char *l1 = label_of(sr->info, "l1");
        CHECK(l1 && strcmp(l1, "v1") == 0, "Stat a: label l1");
        CHECK(sr->info && sr->info->created_at && sr->info->updated_at &&
                  sr->info->created_at->seconds > 1600000000 &&
                  sr->info->created_at->seconds == sr->info->updated_at->seconds &&
                  sr->info->created_at->nanos == sr->info->updated_at->nanos,
              "Stat a: created_at == updated_at at creation");
        protobuf_c_message_free_unpacked(&sr->base, NULL);
    }

    /* Update: labels.<key> is allowed, parent is not. */
    SNAP(UpdateSnapshotRequest) ur = CONTAINERD__SERVICES__SNAPSHOTS__V1__UPDATE_SNAPSHOT_REQUEST__INIT;
    SNAP(Info) info = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__INIT;
    SNAP(Info__LabelsEntry) ul = CONTAINERD__SERVICES__SNAPSHOTS__V1__INFO__LABELS_ENTRY__INIT;
    SNAP(Info__LabelsEntry) * uls[1] = {&ul};
    Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
    char *path_l2 = (char *)"labels.l2", *path_parent = (char *)"parent";
    info.name = (char *)"a";
    ul.key = (char *)"l2";
    ul.value = (char *)"v2";
    info.n_labels = 1;
    info.labels = uls;
    mask.n_paths = 1;
    mask.paths = &path_l2;
    ur.info = &info;
    ur.update_mask = &mask;
    SNAP(UpdateSnapshotResponse) *upr = NULL;
    EXPECT_STATUS(call_unary(METHOD("Update"), &ur.base,
                             &containerd__services__snapshots__v1__update_snapshot_response__descriptor,
                             (ProtobufCMessage **)&upr),
                  GRPC_STATUS_OK);
    if (upr) {
        const char *l1 = label_of(upr->info, "l1"), *l2 = label_of(upr->info, "l2");
        CHECK(l1 && strcmp(l1, "v1") == 0 && l2 && strcmp(l2, "v2") == 0,
              "Update: labels l1 and l2 expected");
        protobuf_c_message_free_unpacked(&upr->base, NULL);
    }
    mask.paths = &path_parent;
    EXPECT_STATUS(call_unary(METHOD("Update"), &ur.base,
                             &containerd__services__snapshots__v1__update_snapshot_response__descriptor,
                             NULL),
                  GRPC_STATUS_INVALID_ARGUMENT);
    ur.info = NULL;
    EXPECT_STATUS(call_unary(METHOD("Update"), &ur.base,
                             &containerd__services__snapshots__v1__update_snapshot_response__descriptor,
                             NULL),
                  GRPC_STATUS_INVALID_ARGUMENT);

    /* Usage and Mounts */
    SNAP(UsageRequest) usr = CONTAINERD__SERVICES__SNAPSHOTS__V1__USAGE_REQUEST__INIT;
    usr.key = (char *)"a";
    SNAP(UsageResponse) *usage = NULL;
    EXPECT_STATUS(call_unary(METHOD("Usage"), &usr.base,
                             &containerd__services__snapshots__v1__usage_response__descriptor,
                             (ProtobufCMessage **)&usage),
                  GRPC_STATUS_OK);
    if (usage) {
        CHECK(usage->size >= 0 && usage->inodes >= 0, "Usage: size %lld inodes %lld", (long long)usage->size,
              (long long)usage->inodes);
        protobuf_c_message_free_unpacked(&usage->base, NULL);
    }
    EXPECT_STATUS(key_only(METHOD("Usage"), "missing"), GRPC_STATUS_NOT_FOUND);
    SNAP(MountsRequest) mr = CONTAINERD__SERVICES__SNAPSHOTS__V1__MOUNTS_REQUEST__INIT;
    mr.key = (char *)"a";
    SNAP(MountsResponse) *mounts = NULL;
    EXPECT_STATUS(call_unary(METHOD("Mounts"), &mr.base,
                             &containerd__services__snapshots__v1__mounts_response__descriptor,
                             (ProtobufCMessage **)&mounts),
                  GRPC_STATUS_OK);
    if (mounts) {
        CHECK(mounts->n_mounts >= 1, "Mounts a: none");
        protobuf_c_message_free_unpacked(&mounts->base, NULL);
    }
    EXPECT_STATUS(key_only(METHOD("Mounts"), "missing"), GRPC_STATUS_NOT_FOUND);

    /* Commit: the active key goes, the committed name comes with the Commit's labels. */
    EXPECT_STATUS(commit("c1", "a", "lc", "x"), GRPC_STATUS_OK);
    EXPECT_STATUS(commit("c2", "missing", NULL, NULL), GRPC_STATUS_NOT_FOUND);
    EXPECT_STATUS(stat_key("a", NULL), GRPC_STATUS_NOT_FOUND);
    sr = NULL;
    EXPECT_STATUS(stat_key("c1", &sr), GRPC_STATUS_OK);
    if (sr) {
        CHECK(sr->info && sr->info->kind == CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED,
              "Stat c1: kind");
        const char *lc = label_of(sr->info, "lc");
        CHECK(lc && strcmp(lc, "x") == 0, "Stat c1: label lc");
        protobuf_c_message_free_unpacked(&sr->base, NULL);
    }
    EXPECT_STATUS(prepare(METHOD("Prepare"), "c1", NULL, NULL, NULL, NULL), GRPC_STATUS_ALREADY_EXISTS);

    /* View of the committed layer: read-only mounts. */
    SNAP(PrepareSnapshotResponse) *vr = NULL;
    EXPECT_STATUS(prepare(METHOD("View"), "v1", "c1", NULL, NULL, &vr), GRPC_STATUS_OK);
    if (vr) {
        bool ro = false;
        for (size_t i = 0; i < vr->n_mounts; i++)
            for (size_t j = 0; j < vr->mounts[i]->n_options; j++)
                ro |= strcmp(vr->mounts[i]->options[j], "ro") == 0;
        bool upper = false;
        for (size_t i = 0; i < vr->n_mounts; i++)
            for (size_t j = 0; j < vr->mounts[i]->n_options; j++)
                upper |= strncmp(vr->mounts[i]->options[j], "upperdir=", 9) == 0;
        CHECK(vr->n_mounts >= 1 && (ro || !upper), "View v1: mounts are not read-only");
        protobuf_c_message_free_unpacked(&vr->base, NULL);
    }
    EXPECT_STATUS(commit("c3", "v1", NULL, NULL), GRPC_STATUS_FAILED_PRECONDITION);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "b", "c1", NULL, NULL, NULL), GRPC_STATUS_OK);
    EXPECT_STATUS(prepare(METHOD("Prepare"), "b2", "b", NULL, NULL, NULL), GRPC_STATUS_INVALID_ARGUMENT);
    EXPECT_STATUS(key_only(METHOD("Remove"), "c1"), GRPC_STATUS_FAILED_PRECONDITION);

    /* List: everything, a filter, a bad filter. */
    size_t count, messages;
    EXPECT_STATUS(list(NULL, 0, &count, &messages, NULL), GRPC_STATUS_OK);
    CHECK(count == 3, "List: %zu snapshots, want 3 (c1, v1, b)", count);
    const char *committed[] = {"kind==committed"};
    EXPECT_STATUS(list(committed, 1, &count, &messages, NULL), GRPC_STATUS_OK);
    CHECK(count == 1, "List kind==committed: %zu, want 1", count);
    const char *two[] = {"name==v1", "name==b"};
    EXPECT_STATUS(list(two, 2, &count, &messages, NULL), GRPC_STATUS_OK);
    CHECK(count == 2, "List name==v1 OR name==b: %zu, want 2", count);
    const char *bad[] = {"name==\"unterminated"};
    EXPECT_STATUS(list(bad, 1, &count, &messages, NULL), GRPC_STATUS_INVALID_ARGUMENT);
    const char *badre[] = {"name~=(("};
    EXPECT_STATUS(list(badre, 1, &count, &messages, NULL), GRPC_STATUS_INVALID_ARGUMENT);

    /* Many snapshots: the stream comes in several messages, and Stat runs while it is open. */
    char key[64];
    for (int i = 0; i < 250; i++) {
        snprintf(key, sizeof(key), "many-%03d", i);
        EXPECT_STATUS(prepare(METHOD("Prepare"), key, "c1", NULL, NULL, NULL), GRPC_STATUS_OK);
    }
    EXPECT_STATUS(list(NULL, 0, &count, &messages, "c1"), GRPC_STATUS_OK);
    CHECK(count == 253 && messages == 3, "List: %zu snapshots in %zu messages, want 253 in 3", count,
          messages);
    for (int i = 0; i < 250; i++) {
        snprintf(key, sizeof(key), "many-%03d", i);
        EXPECT_STATUS(key_only(METHOD("Remove"), key), GRPC_STATUS_OK);
    }

    /* Remove and Cleanup */
    EXPECT_STATUS(key_only(METHOD("Remove"), "b"), GRPC_STATUS_OK);
    EXPECT_STATUS(key_only(METHOD("Remove"), "v1"), GRPC_STATUS_OK);
    EXPECT_STATUS(key_only(METHOD("Remove"), "v1"), GRPC_STATUS_NOT_FOUND);
    SNAP(CleanupRequest) cr = CONTAINERD__SERVICES__SNAPSHOTS__V1__CLEANUP_REQUEST__INIT;
    EXPECT_STATUS(call_unary(METHOD("Cleanup"), &cr.base, &google__protobuf__empty__descriptor, NULL),
                  GRPC_STATUS_OK);
    EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK); /* kept for the restart check */
}

/* ---- A long Commit does not hold up Stat and List ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* More long Commits at once than the daemon has workers for slow calls (8): Stat, Update and List have their
 * own lane, so they must stay fast however many conversions run. */
#define LONG_COMMITS 10
#define LONG_COMMIT_MIB 32

struct commit_job {
    char key[32], name[48];
    grpc_status_code status;
    double start, end;
    atomic_bool done; /* polled by the main thread while the Commits run */
};

/* Commit on its own call and queue, from another thread (the C-core client API is thread-safe). */
static void *commit_thread(void *arg)
{
    struct commit_job *job = arg;
    grpc_completion_queue *own = grpc_completion_queue_create_for_pluck(NULL);
    SNAP(CommitSnapshotRequest) req = CONTAINERD__SERVICES__SNAPSHOTS__V1__COMMIT_SNAPSHOT_REQUEST__INIT;
    req.name = job->name;
    req.key = job->key;
    grpc_byte_buffer *bb = pack(&req.base), *resp = NULL;
    grpc_call *call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, own,
                                               grpc_slice_from_static_string(METHOD("Commit")), NULL,
                                               deadline_in(300), NULL);
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_slice details;
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.status = &job->status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    char tag;
    job->start = now_s();
    grpc_call_start_batch(call, ops, 6, &tag, NULL);
    grpc_completion_queue_pluck(own, &tag, deadline_in(300), NULL);
    job->end = now_s();
    atomic_store(&job->done, true);
    grpc_slice_unref(details);
    if (resp)
        grpc_byte_buffer_destroy(resp);
    grpc_byte_buffer_destroy(bb);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(own);
    grpc_completion_queue_destroy(own);
    return NULL;
}

/* Prepares key and fills its writable directory with mib MiB that do not compress to nothing. */
static bool prepare_with_data(const char *key, int mib, uint64_t seed)
{
    SNAP(PrepareSnapshotResponse) *pr = NULL;
    EXPECT_STATUS(prepare(METHOD("Prepare"), key, NULL, NULL, NULL, &pr), GRPC_STATUS_OK);
    if (!pr || pr->n_mounts != 1)
        return false;
    /* The writable directory: the overlay's upperdir, or the bind mount's source. */
    char dir[1024];
    FMT(dir, "%s", pr->mounts[0]->source);
    for (size_t j = 0; j < pr->mounts[0]->n_options; j++)
        if (strncmp(pr->mounts[0]->options[j], "upperdir=", 9) == 0)
            FMT(dir, "%s", pr->mounts[0]->options[j] + 9);
    protobuf_c_message_free_unpacked(&pr->base, NULL);
    char file[1100];
    FMT(file, "%s/data", dir);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "%s: %s", file, strerror(errno));
    static uint64_t block[1 << 17];
    uint64_t x = 88172645463325252ull ^ seed;
    for (int i = 0; i < mib && fd >= 0; i++) {
        for (size_t k = 0; k < sizeof(block) / sizeof(block[0]); k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block[k] = x;
        }
        CHECK(write(fd, block, sizeof(block)) == (ssize_t)sizeof(block), "write: %s", strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    return fd >= 0;
}

static bool any_running(struct commit_job *jobs, int n)
{
    for (int i = 0; i < n; i++)
        if (!atomic_load(&jobs[i].done))
            return true;
    return false;
}

static void test_long_commits(void)
{
    static struct commit_job jobs[LONG_COMMITS];
    pthread_t threads[LONG_COMMITS];
    for (int i = 0; i < LONG_COMMITS; i++) {
        FMT(jobs[i].key, "big-%d", i);
        FMT(jobs[i].name, "big-committed-%d", i);
        jobs[i].status = GRPC_STATUS_UNKNOWN;
        if (!prepare_with_data(jobs[i].key, LONG_COMMIT_MIB, (uint64_t)i))
            return;
    }
    for (int i = 0; i < LONG_COMMITS; i++)
        pthread_create(&threads[i], NULL, commit_thread, &jobs[i]);
    usleep(100000); /* let the Commits reach the daemon first */
    int during = 0;
    double worst = 0;
    while (any_running(jobs, LONG_COMMITS)) {
        double a = now_s();
        EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK);
        size_t count, messages;
        EXPECT_STATUS(list(NULL, 0, &count, &messages, NULL), GRPC_STATUS_OK);
        double b = now_s();
        if (b - a > worst)
            worst = b - a;
        if (any_running(jobs, LONG_COMMITS))
            during++;
    }
    double first = 0, last = 0;
    for (int i = 0; i < LONG_COMMITS; i++) {
        pthread_join(threads[i], NULL);
        EXPECT_STATUS(jobs[i].status, GRPC_STATUS_OK);
        if (i == 0 || jobs[i].start < first)
            first = jobs[i].start;
        if (jobs[i].end > last)
            last = jobs[i].end;
    }
    double span = last - first;
    fprintf(
        stderr,
        "%d Commits of %d MiB at once took %.3f s; %d Stat+List pairs ran meanwhile, the slowest %.1f ms\n",
        LONG_COMMITS, LONG_COMMIT_MIB, span, during, worst * 1000);
    CHECK(during > 0, "no Stat+List completed while the Commits ran (%.3f s)", span);
    CHECK(worst < 0.25 * span || worst < 0.1, "a Stat+List took %.3f s while %d Commits ran for %.3f s",
          worst, LONG_COMMITS, span);
    for (int i = 0; i < LONG_COMMITS; i++)
        EXPECT_STATUS(key_only(METHOD("Remove"), jobs[i].name), GRPC_STATUS_OK);
}

static void check_mode(const char *path, mode_t want, gid_t gid)
{
    struct stat st;
    CHECK(lstat(path, &st) == 0, "%s: %s", path, strerror(errno));
    CHECK((st.st_mode & 07777) == want, "%s: mode %o, want %o", path, st.st_mode & 07777, want);
    CHECK(st.st_uid == 0, "%s: owner %u, want root", path, st.st_uid);
    if (gid != (gid_t)-1)
        CHECK(st.st_gid == gid, "%s: group %u, want %u", path, st.st_gid, gid);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH/TO/veritysnapd\n", argv[0]);
        return 2;
    }
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: needs root (sockets owned by root, the store's mounts)\n");
        return 77;
    }
    daemon_path = argv[1];
    snprintf(tmp, sizeof(tmp), "/tmp/vs-grpc-test-XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    grpc_init();

    char sock[512], root[512], empty_cfg[512], run_dir[512], lock_path[600];
    path_in_tmp(run_dir, sizeof(run_dir), "run/sub");
    FMT(sock, "%s/vs.sock", run_dir);
    FMT(lock_path, "%s.lock", sock);
    path_in_tmp(root, sizeof(root), "root");
    path_in_tmp(empty_cfg, sizeof(empty_cfg), "empty.toml");
    write_file(empty_cfg, "");

    /* 1. Serve, check the socket, run every RPC. */
    pid_t d1 = start_daemon("daemon1", "--config", empty_cfg, "--root", root, "--address", sock, "--verity",
                            "off", "--log-level", "debug", NULL);
    REQUIRE(wait_serving(d1, sock), "the daemon did not come up on %s", sock);
    check_mode(sock, 0660, 0);
    check_mode(run_dir, 0711, (gid_t)-1);
    client_open(sock);
    test_rpcs();
    test_long_commits();

    /* 2. A second daemon on the same socket is refused and the first keeps serving. */
    char root2[512];
    path_in_tmp(root2, sizeof(root2), "root2");
    pid_t d2 = start_daemon("daemon2", "--config", empty_cfg, "--root", root2, "--address", sock, "--verity",
                            "off", NULL);
    int rc = wait_exit(d2);
    CHECK(rc == 1, "second daemon on a live socket: exit %d, want 1", rc);
    CHECK(log_contains("daemon2", "another"), "second daemon: no clear refusal in its log");
    struct stat st;
    CHECK(access(root2, F_OK) != 0, "second daemon created its state root before claiming the socket");
    EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK);
    /* A live socket that is not ours (no lock held): moved aside while the first daemon serves, so only the
     * connect probe can tell. */
    char moved[600];
    FMT(moved, "%s.moved", lock_path);
    CHECK(rename(lock_path, moved) == 0, "rename lock: %s", strerror(errno));
    pid_t d2b = start_daemon("daemon2b", "--config", empty_cfg, "--root", root2, "--address", sock,
                             "--verity", "off", NULL);
    rc = wait_exit(d2b);
    CHECK(rc == 1, "daemon on a live socket without the lock: exit %d, want 1", rc);
    CHECK(log_contains("daemon2b", "connection succeeded"), "daemon2b: no clear refusal in its log");
    CHECK(rename(moved, lock_path) == 0, "rename lock back: %s", strerror(errno));

    /* 3. SIGTERM: exit 0, socket gone. */
    client_close();
    kill(d1, SIGTERM);
    rc = wait_exit(d1);
    CHECK(rc == 0, "SIGTERM: exit %d, want 0", rc);
    CHECK(lstat(sock, &st) != 0, "the socket is still there after SIGTERM");

    /* 4. A stale socket (bound, never unlinked: a crashed run) is replaced; the store survived the restart.
     */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    FMT(sa.sun_path, "%s", sock);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind stale: %s", strerror(errno));
    close(fd);
    CHECK(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode), "stale socket not in place");
    pid_t d3 = start_daemon("daemon3", "--config", empty_cfg, "--root", root, "--address", sock, "--verity",
                            "off", NULL);
    REQUIRE(wait_serving(d3, sock), "the daemon did not replace the stale socket");
    CHECK(log_contains("daemon3", "stale"), "daemon3: replacing the stale socket was not logged");
    client_open(sock);
    EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK);
    client_close();
    /* SIGINT stops it the same way. */
    kill(d3, SIGINT);
    rc = wait_exit(d3);
    CHECK(rc == 0, "SIGINT: exit %d, want 0", rc);

    /* 4b. Readiness: the socket appears at its address only once the server accepts calls (it is bound as
     * <address>.new and renamed; a leftover .new from a crashed start is removed), and a service manager's
     * NOTIFY_SOCKET gets READY=1 then, STOPPING=1 at shutdown. */
    char notify_path[512], bind_leftover[600];
    path_in_tmp(notify_path, sizeof(notify_path), "notify.sock");
    FMT(bind_leftover, "%s.new", sock);
    int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un na = {.sun_family = AF_UNIX};
    FMT(na.sun_path, "%s", notify_path);
    CHECK(bind(nfd, (struct sockaddr *)&na, sizeof(na)) == 0, "bind notify socket: %s", strerror(errno));
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    FMT(sa.sun_path, "%s", bind_leftover);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind leftover: %s", strerror(errno));
    close(fd);
    setenv("NOTIFY_SOCKET", notify_path, 1);
    pid_t dn = start_daemon("daemon-notify", "--config", empty_cfg, "--root", root, "--address", sock,
                            "--verity", "off", NULL);
    unsetenv("NOTIFY_SOCKET");
    bool ready = false;
    int dead_sightings = 0;
    char msg[256];
    for (int i = 0; i < 2000 && !ready; i++) {
        if (lstat(sock, &st) == 0 && !socket_live(sock))
            dead_sightings++;
        ssize_t n = recv(nfd, msg, sizeof(msg) - 1, 0);
        if (n > 0) {
            msg[n] = 0;
            ready = strstr(msg, "READY=1") != NULL;
        }
        if (!ready)
            usleep(5000);
    }
    REQUIRE(ready, "no READY=1 on NOTIFY_SOCKET within 10 s");
    CHECK(dead_sightings == 0, "the socket path existed %d times while nothing accepted on it",
          dead_sightings);
    CHECK(lstat(sock, &st) == 0 && S_ISSOCK(st.st_mode), "READY=1 sent before the socket was at its address");
    CHECK(lstat(bind_leftover, &st) != 0, "%s is still there after READY=1", bind_leftover);
    check_mode(sock, 0660, 0);
    client_open(sock);
    EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK);
    client_close();
    kill(dn, SIGTERM);
    CHECK(wait_exit(dn) == 0, "daemon-notify: SIGTERM exit not 0");
    ssize_t n = recv(nfd, msg, sizeof(msg) - 1, 0);
    msg[n > 0 ? n : 0] = 0;
    CHECK(strstr(msg, "STOPPING=1") != NULL, "no STOPPING=1 at shutdown (got \"%s\")", msg);
    CHECK(lstat(sock, &st) != 0, "the socket is still there after SIGTERM");
    close(nfd);

    /* 4c. Disk full: a Commit whose layer file does not fit fails with RESOURCE_EXHAUSTED naming the cause,
     * commits nothing and leaves no partial file; once space is freed the same Commit succeeds. The state
     * root is a 40 MiB tmpfs; the snapshot holds 24 MiB that does not compress, so its layer file cannot fit
     * beside it. */
    char small_root[512], small_sock[600];
    path_in_tmp(small_root, sizeof(small_root), "small-root");
    FMT(small_sock, "%s/vs-small.sock", run_dir);
    mkdir(small_root, 0700);
    char mount_cmd[1200];
    FMT(mount_cmd, "mount -t tmpfs -o size=40m vs-test-full '%s'", small_root);
    REQUIRE(system(mount_cmd) == 0, "mounting a small tmpfs at %s", small_root);
    /* No reserve first (min_free_space = 0): the real ENOSPC. */
    char full_cfg[512];
    path_in_tmp(full_cfg, sizeof(full_cfg), "full.toml");
    write_file(full_cfg, "min_free_space = 0\n");
    pid_t df = start_daemon("daemon-full", "--config", full_cfg, "--root", small_root, "--address",
                            small_sock, "--verity", "off", NULL);
    REQUIRE(wait_serving(df, small_sock), "the daemon did not come up on %s", small_sock);
    client_open(small_sock);
    if (prepare_with_data("full", 24, 7)) {
        EXPECT_STATUS(commit("full-committed", "full", NULL, NULL), GRPC_STATUS_RESOURCE_EXHAUSTED);
        CHECK(strstr(last_details, "No space left on device") && strstr(last_details, "full"),
              "the disk-full error does not name the snapshot and the cause: %s", last_details);
        SNAP(StatSnapshotResponse) *sr = NULL;
        EXPECT_STATUS(stat_key("full", &sr), GRPC_STATUS_OK);
        CHECK(sr && sr->info && sr->info->kind == CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE,
              "the snapshot is no longer active after a failed Commit");
        if (sr)
            protobuf_c_message_free_unpacked(&sr->base, NULL);
        EXPECT_STATUS(stat_key("full-committed", NULL), GRPC_STATUS_NOT_FOUND);
        char check_cmd[1300];
        FMT(check_cmd, "test -z \"$(ls -A '%s/layers' '%s/tmp' 2>/dev/null | grep -v ':$' | grep .)\"",
            small_root, small_root);
        CHECK(system(check_cmd) == 0, "a failed Commit left files in %s/layers or %s/tmp", small_root,
              small_root);
        /* Free the space (the data file goes), then the same Commit goes through. */
        FMT(check_cmd, "find '%s/snapshots' -name data -type f -delete", small_root);
        CHECK(system(check_cmd) == 0, "removing the data file");
        EXPECT_STATUS(commit("full-committed", "full", NULL, NULL), GRPC_STATUS_OK);
        EXPECT_STATUS(stat_key("full-committed", NULL), GRPC_STATUS_OK);
    }
    client_close();
    kill(df, SIGTERM);
    CHECK(wait_exit(df) == 0, "daemon-full: SIGTERM exit not 0");
    /* With a 20 MiB reserve: a 12 MiB snapshot fits the disk but its layer file would eat into the reserve,
     * so the Commit is refused (RESOURCE_EXHAUSTED naming min_free_space) while the disk still has room, and
     * leaves nothing. */
    write_file(full_cfg, "min_free_space = 20971520\n");
    df = start_daemon("daemon-reserve", "--config", full_cfg, "--root", small_root, "--address", small_sock,
                      "--verity", "off", NULL);
    REQUIRE(wait_serving(df, small_sock), "the daemon did not come up on %s", small_sock);
    client_open(small_sock);
    if (prepare_with_data("reserve", 12, 8)) {
        EXPECT_STATUS(commit("reserve-committed", "reserve", NULL, NULL), GRPC_STATUS_RESOURCE_EXHAUSTED);
        CHECK(strstr(last_details, "min_free_space") && strstr(last_details, "reserve"),
              "the refusal does not name the reserve and the snapshot: %s", last_details);
        EXPECT_STATUS(stat_key("reserve-committed", NULL), GRPC_STATUS_NOT_FOUND);
        struct statvfs vfs;
        CHECK(statvfs(small_root, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize > (12u << 20),
              "the refused conversion left its bytes on the disk");
        char left_cmd[1300];
        FMT(left_cmd,
            "test -z \"$(ls -A '%s/tmp' 2>/dev/null)\" && test -z \"$(ls -A '%s/layers' | grep -v "
            "'^[0-9]')\"",
            small_root, small_root);
        CHECK(system(left_cmd) == 0, "the refused conversion left files in %s", small_root);
        EXPECT_STATUS(key_only(METHOD("Remove"), "reserve"), GRPC_STATUS_OK);
    }
    client_close();
    kill(df, SIGTERM);
    CHECK(wait_exit(df) == 0, "daemon-reserve: SIGTERM exit not 0");
    FMT(mount_cmd, "umount -R '%s' || umount -l '%s'", small_root, small_root);
    CHECK(system(mount_cmd) == 0, "unmounting %s", small_root);

    /* 5. A path that is not a socket is never replaced. */
    write_file(sock, "not a socket\n");
    pid_t d4 = start_daemon("daemon4", "--config", empty_cfg, "--root", root, "--address", sock, "--verity",
                            "off", NULL);
    rc = wait_exit(d4);
    CHECK(rc == 1, "daemon on a regular file: exit %d, want 1", rc);
    CHECK(lstat(sock, &st) == 0 && S_ISREG(st.st_mode), "the regular file at the socket path was replaced");
    unlink(sock);

    /* 6. Config file: [[listen]] with a group, two sockets; --print-default-config parses. */
    struct group *gr = getgrnam("daemon");
    gid_t gid = gr ? gr->gr_gid : 1;
    char cfg[512], text[2048], sock_a[512], sock_b[512];
    path_in_tmp(cfg, sizeof(cfg), "config.toml");
    path_in_tmp(sock_a, sizeof(sock_a), "run/a.sock");
    path_in_tmp(sock_b, sizeof(sock_b), "run/b.sock");
    snprintf(text, sizeof(text),
             "# test config\nroot = \"%s\"\nverity = \"off\"\nlog_level = \"debug\"\n\n"
             "[[listen]]\naddress = \"%s\"\ngroup = \"%u\"\n\n[[listen]]\naddress = \"unix:%s\"\n",
             root, sock_a, (unsigned)gid, sock_b);
    write_file(cfg, text);
    pid_t d5 = start_daemon("daemon5", "--config", cfg, NULL);
    REQUIRE(wait_serving(d5, sock_a) && wait_serving(d5, sock_b), "config daemon did not serve both sockets");
    check_mode(sock_a, 0660, gid);
    check_mode(sock_b, 0660, 0);
    client_open(sock_b);
    EXPECT_STATUS(stat_key("c1", NULL), GRPC_STATUS_OK);
    client_close();
    /* A second daemon whose second socket is live fails after creating the first: nothing of it stays behind.
     */
    char cfg2[512], sock_c[512];
    path_in_tmp(cfg2, sizeof(cfg2), "config2.toml");
    path_in_tmp(sock_c, sizeof(sock_c), "run/c.sock");
    snprintf(text, sizeof(text), "[[listen]]\naddress = \"%s\"\n[[listen]]\naddress = \"%s\"\n", sock_c,
             sock_a);
    write_file(cfg2, text);
    pid_t d6 = start_daemon("daemon6", "--config", cfg2, "--root", root2, "--verity", "off", NULL);
    rc = wait_exit(d6);
    CHECK(rc == 1, "daemon with one live socket of two: exit %d, want 1", rc);
    CHECK(lstat(sock_c, &st) != 0, "the refused daemon left its first socket behind");
    kill(d5, SIGTERM);
    CHECK(wait_exit(d5) == 0, "config daemon: SIGTERM exit not 0");
    CHECK(lstat(sock_a, &st) != 0 && lstat(sock_b, &st) != 0, "sockets left after SIGTERM");

    /* Config errors: an unknown key names its line; a missing explicit file is an error; a missing default is
     * not tested here (it would read /etc). */
    snprintf(text, sizeof(text), "root = \"%s\"\n\n[[listen]]\naddress = \"%s\"\nadress = \"typo\"\n", root,
             sock_a);
    write_file(cfg, text);
    pid_t d7 = start_daemon("daemon7", "--config", cfg, NULL);
    CHECK(wait_exit(d7) == 1, "unknown key: exit not 1");
    CHECK(log_contains("daemon7", ":5"), "unknown key: no line number in the message");
    CHECK(log_contains("daemon7", "adress"), "unknown key: key not named");
    char missing[512];
    path_in_tmp(missing, sizeof(missing), "missing.toml");
    pid_t d8 = start_daemon("daemon8", "--config", missing, NULL);
    CHECK(wait_exit(d8) == 1, "missing explicit config: exit not 1");
    pid_t d9 = start_daemon("daemon9", "--config", empty_cfg, "--verity", "sometimes", NULL);
    CHECK(wait_exit(d9) == 1, "bad --verity: exit not 1");

    char defcfg[512], cmd[2048];
    path_in_tmp(defcfg, sizeof(defcfg), "default.toml");
    snprintf(cmd, sizeof(cmd), "'%s' --print-default-config > '%s'", daemon_path, defcfg);
    CHECK(system(cmd) == 0, "--print-default-config failed");
    pid_t d10 = start_daemon("daemon10", "--config", defcfg, "--root", root, "--address", sock, "--verity",
                             "off", NULL);
    CHECK(wait_serving(d10, sock), "the printed default config does not load");
    kill(d10, SIGTERM);
    CHECK(wait_exit(d10) == 0, "default-config daemon: SIGTERM exit not 0");

    grpc_shutdown();
    finish();
}
