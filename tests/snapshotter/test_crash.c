/* Crash safety of the snapshot model: a child process runs a deterministic, varied workload (Prepare with and
 * without parents, files of up to a few MiB written into the writable dirs, Commit, View, Remove, Update,
 * Cleanup) and is SIGKILLed after a varied delay, some rounds in the middle of a long Commit. The parent then
 * reopens the root and checks it against oracles that are not the store itself: the child's log of
 * acknowledged operations (shared memory: what returned success is there, nothing else is, an operation cut
 * short either happened or did not), every layer file verified block by block against its root-hash label,
 * the files on disk (no temporary, orphan or missing ones), the kernel's mounts, and the kernel's
 * EROFS/overlay view of each committed layer (the bytes the child wrote). Then one more Prepare + Commit must
 * succeed, and the next round crashes the same root again. After the random kills, a sweep kills the child
 * right after each file-system-changing syscall (followed with ptrace) of a big Commit, a Remove, a Prepare,
 * a View, an Update, a Cleanup and an open in turn: the narrow windows a random kill rarely hits.
 * VERITYSNAP_CRASH_ROUNDS sets the number of random rounds, VERITYSNAP_CRASH_SYSCALL_STRIDE the sweep's step
 * (0: no sweep). Needs root, overlay and erofs; exits 77 without. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/vs_log.h"
#include "snapshotter/snapshotter.h"
#include "tests/lib/vs_test.h"
#include "tests/lib/vs_test_mounts.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEFAULT_ROUNDS 16 /* the sanitizer builds run 3-10x slower */
#define DEFAULT_STRIDE 2
#else
#define DEFAULT_ROUNDS 30
#define DEFAULT_STRIDE 1
#endif

static const struct snapshot_call call = {.namespace_name = "test", .rpc = "test"};
static char base_dir[256], root[300], target[300];

/* ---- the model the child keeps in shared memory ---- */

#define SLOTS 64
#define MAX_COMMITTED 10
#define MAX_ACTIVE 4
#define MAX_VIEW 3

enum slot_state {
    SLOT_FREE = 0,
    SLOT_CREATING, /* Prepare or View called, not returned: the key exists (as made) or not */
    SLOT_ACTIVE,
    SLOT_VIEW,
    SLOT_COMMITTING, /* Commit of a-N as c-N called, not returned: exactly one of them exists */
    SLOT_COMMITTED,
    SLOT_REMOVING, /* Remove called, not returned: the key exists (unchanged) or not */
};

/* A snapshot of the workload. Names: a-<seq> active, c-<seq> committed (from a-<seq>), v-<seq> view. The
 * state is stored last (atomically) so a kill never leaves it pointing at half-written fields. */
struct slot {
    _Atomic int state;
    enum snapshot_kind kind; /* CREATING and REMOVING: the kind it has or is to have */
    uint64_t seq;
    uint64_t parent_seq;    /* 0: no parent; else c-<parent_seq> */
    bool files_complete;    /* the active's upper dir holds every file in full */
    bool content_checked;   /* the parent read c-<seq>'s files through the kernel (its root hash pins them
                               since) */
    _Atomic int label_busy; /* an Update of label "u" was called and has not returned */
    char label[24];         /* the acknowledged value of label "u" ("": none) */
    char label_next[24];    /* the value the Update in flight sets */
};

enum op {
    OP_IDLE = 0,
    OP_OPEN,
    OP_PREPARE,
    OP_WRITE,
    OP_COMMIT,
    OP_COMMIT_BIG,
    OP_VIEW,
    OP_REMOVE,
    OP_UPDATE,
    OP_READ,
    OP_CLEANUP,
    OP_COUNT,
};
static const char *const op_names[OP_COUNT] = {"idle", "open",   "prepare", "write", "commit", "commit(big)",
                                               "view", "remove", "update",  "read",  "cleanup"};

struct shared {
    _Atomic uint64_t next_seq;
    _Atomic uint64_t ops;
    _Atomic int op;                /* enum op: what the child is doing */
    _Atomic uint64_t big_commits;  /* big commits started */
    _Atomic int64_t big_commit_ns; /* how long the last one took */
    _Atomic int failed;
    _Atomic int trace_op;         /* enum op the parent traces (OP_IDLE: none) */
    _Atomic uint64_t trace_after; /* ... from this op count on */
    _Atomic int traced;           /* 1: stopped at its start, 2: at its end */
    char failure[2048];
    struct slot slots[SLOTS];
};

static struct shared *sh;

static const char *slot_name(const struct slot *sl, enum snapshot_kind kind, char *out, size_t cap)
{
    char c = kind == SNAPSHOT_KIND_ACTIVE ? 'a' : kind == SNAPSHOT_KIND_VIEW ? 'v' : 'c';
    snprintf(out, cap, "%c-%llu", c, (unsigned long long)sl->seq);
    return out;
}

static const char *parent_name(uint64_t parent_seq, char *out, size_t cap)
{
    if (parent_seq)
        snprintf(out, cap, "c-%llu", (unsigned long long)parent_seq);
    else
        out[0] = '\0';
    return out;
}

static enum snapshot_kind state_kind(int state)
{
    return state == SLOT_ACTIVE      ? SNAPSHOT_KIND_ACTIVE
           : state == SLOT_VIEW      ? SNAPSHOT_KIND_VIEW
           : state == SLOT_COMMITTED ? SNAPSHOT_KIND_COMMITTED
                                     : SNAPSHOT_KIND_UNKNOWN;
}

static const char *kind_str(enum snapshot_kind k)
{
    return k == SNAPSHOT_KIND_ACTIVE      ? "active"
           : k == SNAPSHOT_KIND_VIEW      ? "view"
           : k == SNAPSHOT_KIND_COMMITTED ? "committed"
                                          : "unknown";
}

/* ---- deterministic content ---- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rnd_state;
static uint64_t rnd(void)
{
    rnd_state = mix(rnd_state);
    return rnd_state;
}

#define MAX_FILES 6
#define CHUNK 65536

struct file_spec {
    char path[64];
    uint64_t size;
};

/* The files of snapshot seq: 1-4 small ones of varied sizes in varied dirs, and every third snapshot a big
 * one (3-6 MiB) so that its Commit takes a while. */
static size_t file_specs(uint64_t seq, struct file_spec *out, uint64_t *total)
{
    static const uint64_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 65539, 300001, 1u << 20, (1u << 20) + 4097};
    size_t n = 1 + seq % 4;
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        out[i].size = sizes[mix(seq * 8 + i) % (sizeof(sizes) / sizeof(sizes[0]))];
        if (i % 2)
            snprintf(out[i].path, sizeof(out[i].path), "d%llu/f%llu-%zu", (unsigned long long)((seq + i) % 3),
                     (unsigned long long)seq, i);
        else
            snprintf(out[i].path, sizeof(out[i].path), "f%llu-%zu", (unsigned long long)seq, i);
        *total += out[i].size;
    }
    if (seq % 3 == 0) {
        out[n].size = (3u << 20) + mix(seq) % (3u << 20);
        snprintf(out[n].path, sizeof(out[n].path), "big-%llu", (unsigned long long)seq);
        *total += out[n].size;
        n++;
    }
    return n;
}

/* Bytes [off, off + len) of file idx of snapshot seq; off is a multiple of 8. */
static void fill(uint64_t seq, size_t idx, uint64_t off, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = mix((seq << 24) ^ ((uint64_t)idx << 58) ^ ((off + i) >> 3));
        memcpy(buf + i, &v, len - i < 8 ? len - i : 8);
    }
}

/* Writes the files of seq and "who" (the active key) into dir; 0 or -errno. */
static int write_files(const char *dir, uint64_t seq, char *what, size_t what_cap)
{
    struct file_spec fs[MAX_FILES];
    uint64_t total;
    size_t n = file_specs(seq, fs, &total);
    static uint8_t buf[CHUNK];
    char path[4200];
    for (unsigned d = 0; d < 3; d++) {
        snprintf(path, sizeof(path), "%s/d%u", dir, d);
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return snprintf(what, what_cap, "mkdir %.300s: %s", path, strerror(errno)), -errno;
    }
    for (size_t i = 0; i <= n; i++) {
        bool who = i == n;
        snprintf(path, sizeof(path), "%s/%s", dir, who ? "who" : fs[i].path);
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0)
            return snprintf(what, what_cap, "creating %.300s: %s", path, strerror(errno)), -errno;
        uint64_t size = who ? 0 : fs[i].size;
        int rc = 0;
        if (who) {
            char text[40];
            int l = snprintf(text, sizeof(text), "a-%llu\n", (unsigned long long)seq);
            if (write(fd, text, (size_t)l) != l)
                rc = -EIO;
        }
        for (uint64_t off = 0; rc == 0 && off < size; off += CHUNK) {
            size_t len = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
            fill(seq, i, off, buf, len);
            if (write(fd, buf, len) != (ssize_t)len)
                rc = -EIO;
        }
        close(fd);
        if (rc < 0)
            return snprintf(what, what_cap, "writing %.300s", path), rc;
    }
    return 0;
}

/* Checks the files of c-<seq> as mounted at dir (its layer on top); returns false with what set. */
static bool check_files(const char *dir, uint64_t seq, char *what, size_t what_cap)
{
    struct file_spec fs[MAX_FILES];
    uint64_t total;
    size_t n = file_specs(seq, fs, &total);
    static uint8_t got[CHUNK], want[CHUNK];
    char path[4200];
    snprintf(path, sizeof(path), "%s/who", dir);
    FILE *f = fopen(path, "r");
    char who[64] = "", expect[64];
    if (f) {
        if (!fgets(who, sizeof(who), f))
            who[0] = '\0';
        fclose(f);
    }
    snprintf(expect, sizeof(expect), "a-%llu\n", (unsigned long long)seq);
    if (strcmp(who, expect) != 0) {
        snprintf(what, what_cap, "'who' holds '%.40s', expected '%.40s'%s", who, expect,
                 f ? "" : " (missing)");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, fs[i].path);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            snprintf(what, what_cap, "%s: %s", fs[i].path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return false;
        }
        if ((uint64_t)st.st_size != fs[i].size) {
            snprintf(what, what_cap, "%s: %lld bytes, expected %llu", fs[i].path, (long long)st.st_size,
                     (unsigned long long)fs[i].size);
            close(fd);
            return false;
        }
        for (uint64_t off = 0; off < fs[i].size; off += CHUNK) {
            size_t len = fs[i].size - off < CHUNK ? (size_t)(fs[i].size - off) : CHUNK;
            fill(seq, i, off, want, len);
            if (pread(fd, got, len, (off_t)off) != (ssize_t)len || memcmp(got, want, len) != 0) {
                snprintf(what, what_cap, "%s: bytes at %llu differ from what was written", fs[i].path,
                         (unsigned long long)off);
                close(fd);
                return false;
            }
        }
        close(fd);
    }
    return true;
}

/* ---- helpers ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The writable dir of an active snapshot's mounts: the bind source, or the overlay's upperdir. */
static bool writable_dir(const struct snapshot_mounts *ms, char *out, size_t cap)
{
    if (ms->count != 1)
        return false;
    const struct snapshot_mount *m = &ms->items[0];
    const char *dir = strcmp(m->type, "bind") == 0 ? m->source : vs_test_option_value(m, "upperdir=");
    if (!dir)
        return false;
    snprintf(out, cap, "%s", dir);
    return true;
}

/* Mount points under prefix, from /proc/self/mountinfo (fstype in types[i] when types is not NULL). */
static int mounts_under(const char *prefix, char (*points)[300], char (*types)[32], int cap)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return -1;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        char mp[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 || strncmp(mp, prefix, strlen(prefix)) != 0)
            continue;
        if (n < cap) {
            snprintf(points[n], sizeof(points[n]), "%.299s", mp);
            char *dash = strstr(line, " - ");
            if (types && (!dash || sscanf(dash + 3, "%31s", types[n]) != 1))
                types[n][0] = '\0';
        }
        n++;
    }
    fclose(f);
    return n;
}

static struct snapshotter_config config(void)
{
    bool dm = access("/dev/mapper/control", F_OK) == 0;
    struct snapshotter_config cfg = {.root = root,
                                     .verity = dm ? SNAPSHOTTER_VERITY_REQUIRE : SNAPSHOTTER_VERITY_OFF};
    layer_file_options_default(&cfg.layer); /* the layer files carry a tree either way */
    return cfg;
}

/* ---- the child: the workload, until killed ---- */

static void child_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void child_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->failure, sizeof(sh->failure), fmt, ap);
    va_end(ap);
    atomic_store(&sh->failed, 1);
    _exit(3);
}

static void set_op(enum op op)
{
    atomic_store(&sh->op, op);
}

/* Marks the start of an API call. When the parent traces this operation, the child stops (SIGSTOP) so the
 * parent can follow its syscalls from here on. */
static void op_begin(enum op op, bool eligible)
{
    atomic_store(&sh->op, op);
    if (eligible && atomic_load(&sh->trace_op) == (int)op && atomic_load(&sh->traced) == 0 &&
        (op == OP_OPEN || atomic_load(&sh->ops) >= atomic_load(&sh->trace_after))) {
        atomic_store(&sh->traced, 1);
        raise(SIGSTOP);
    }
}

/* Marks its end: a traced operation that ended before the kill stops again, and the parent kills it there. */
static void op_end(enum op op)
{
    if (atomic_load(&sh->traced) == 1 && atomic_load(&sh->trace_op) == (int)op) {
        atomic_store(&sh->traced, 2);
        raise(SIGSTOP);
    }
    atomic_store(&sh->op, OP_IDLE);
}

static int count_state(int state)
{
    int n = 0;
    for (int i = 0; i < SLOTS; i++)
        n += atomic_load(&sh->slots[i].state) == state;
    return n;
}

static struct slot *pick_state(int state)
{
    int n = count_state(state);
    if (!n)
        return NULL;
    int k = (int)(rnd() % (uint64_t)n);
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&sh->slots[i].state) == state && k-- == 0)
            return &sh->slots[i];
    return NULL;
}

static struct slot *free_slot(void)
{
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&sh->slots[i].state) == SLOT_FREE)
            return &sh->slots[i];
    return NULL;
}

static bool is_leaf(const struct slot *sl)
{
    int st = atomic_load(&sl->state);
    if (st != SLOT_COMMITTED)
        return st == SLOT_ACTIVE || st == SLOT_VIEW;
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&sh->slots[i].state) != SLOT_FREE && sh->slots[i].parent_seq == sl->seq)
            return false;
    return true;
}

static void child_write(struct snapshotter *s, struct slot *sl, const struct snapshot_mounts *given)
{
    char key[32], dir[4096], what[512];
    slot_name(sl, SNAPSHOT_KIND_ACTIVE, key, sizeof(key));
    struct snapshot_mounts ms = {0};
    struct vs_error err = {0};
    if (!given) {
        if (snapshotter_mounts(s, &call, key, &ms, &err) < 0)
            child_fail("mounts of '%s': %s", key, err.message);
        given = &ms;
    }
    if (!writable_dir(given, dir, sizeof(dir)))
        child_fail("mounts of '%s': no writable dir (%zu mounts, %s)", key, given->count,
                   given->count ? given->items[0].type : "-");
    snapshot_mounts_free(&ms);
    set_op(OP_WRITE);
    if (write_files(dir, sl->seq, what, sizeof(what)) < 0)
        child_fail("writing into '%s': %s", key, what);
    sl->files_complete = true;
}

static void child_prepare(struct snapshotter *s)
{
    struct slot *sl = free_slot(), *parent = rnd() % 10 < 7 ? pick_state(SLOT_COMMITTED) : NULL;
    if (!sl)
        return;
    sl->seq = atomic_fetch_add(&sh->next_seq, 1);
    sl->parent_seq = parent ? parent->seq : 0;
    sl->kind = SNAPSHOT_KIND_ACTIVE;
    sl->files_complete = false;
    sl->content_checked = false;
    snprintf(sl->label, sizeof(sl->label), "p");
    atomic_store(&sl->label_busy, 0);
    atomic_store(&sl->state, SLOT_CREATING);
    char key[32], pkey[32];
    slot_name(sl, SNAPSHOT_KIND_ACTIVE, key, sizeof(key));
    parent_name(sl->parent_seq, pkey, sizeof(pkey));
    struct snapshot_label labels[] = {{"u", "p"}};
    struct snapshot_mounts ms;
    struct vs_error err = {0};
    op_begin(OP_PREPARE, sl->parent_seq != 0);
    int rc = snapshotter_prepare(s, &call, key, pkey, labels, 1, &ms, &err);
    op_end(OP_PREPARE);
    if (rc < 0)
        child_fail("prepare '%s' over '%s': %d %s", key, pkey, rc, err.message);
    atomic_store(&sl->state, SLOT_ACTIVE);
    child_write(s, sl, &ms);
    snapshot_mounts_free(&ms);
    set_op(OP_IDLE);
}

static void child_commit(struct snapshotter *s)
{
    struct slot *sl = pick_state(SLOT_ACTIVE);
    if (!sl)
        return;
    if (!sl->files_complete) /* left half-written by an earlier kill */
        child_write(s, sl, NULL);
    char key[32], name[32];
    slot_name(sl, SNAPSHOT_KIND_ACTIVE, key, sizeof(key));
    slot_name(sl, SNAPSHOT_KIND_COMMITTED, name, sizeof(name));
    struct file_spec fs[MAX_FILES];
    uint64_t total;
    file_specs(sl->seq, fs, &total);
    bool big = total > (2u << 20);
    struct snapshot_label labels[] = {{"src", key}};
    struct vs_error err = {0};
    atomic_store(&sl->state, SLOT_COMMITTING);
    int64_t t0 = now_ns();
    if (big)
        atomic_fetch_add(&sh->big_commits, 1);
    op_begin(big ? OP_COMMIT_BIG : OP_COMMIT, true);
    int rc = snapshotter_commit(s, &call, name, key, labels, 1, &err);
    op_end(big ? OP_COMMIT_BIG : OP_COMMIT);
    if (big)
        atomic_store(&sh->big_commit_ns, now_ns() - t0);
    if (rc < 0)
        child_fail("commit '%s' as '%s': %d %s", key, name, rc, err.message);
    sl->label[0] = '\0'; /* Commit replaces the labels */
    atomic_store(&sl->state, SLOT_COMMITTED);
}

static void child_view(struct snapshotter *s)
{
    struct slot *sl = free_slot(), *parent = pick_state(SLOT_COMMITTED);
    if (!sl || !parent)
        return;
    sl->seq = atomic_fetch_add(&sh->next_seq, 1);
    sl->parent_seq = parent->seq;
    sl->kind = SNAPSHOT_KIND_VIEW;
    sl->label[0] = '\0';
    atomic_store(&sl->label_busy, 0);
    atomic_store(&sl->state, SLOT_CREATING);
    char key[32], pkey[32];
    slot_name(sl, SNAPSHOT_KIND_VIEW, key, sizeof(key));
    parent_name(sl->parent_seq, pkey, sizeof(pkey));
    struct snapshot_mounts ms;
    struct vs_error err = {0};
    op_begin(OP_VIEW, true);
    int rc = snapshotter_view(s, &call, key, pkey, NULL, 0, &ms, &err);
    op_end(OP_VIEW);
    if (rc < 0)
        child_fail("view '%s' over '%s': %d %s", key, pkey, rc, err.message);
    snapshot_mounts_free(&ms);
    atomic_store(&sl->state, SLOT_VIEW);
}

static void child_remove(struct snapshotter *s)
{
    int leaves = 0;
    for (int i = 0; i < SLOTS; i++)
        leaves += is_leaf(&sh->slots[i]);
    if (!leaves)
        return;
    int k = (int)(rnd() % (uint64_t)leaves);
    struct slot *sl = NULL;
    for (int i = 0; i < SLOTS && !sl; i++)
        if (is_leaf(&sh->slots[i]) && k-- == 0)
            sl = &sh->slots[i];
    sl->kind = state_kind(atomic_load(&sl->state));
    atomic_store(&sl->state, SLOT_REMOVING);
    char key[32];
    slot_name(sl, sl->kind, key, sizeof(key));
    struct vs_error err = {0};
    op_begin(OP_REMOVE, sl->kind == SNAPSHOT_KIND_COMMITTED);
    int rc = snapshotter_remove(s, &call, key, &err);
    op_end(OP_REMOVE);
    if (rc < 0)
        child_fail("remove '%s': %d %s", key, rc, err.message);
    atomic_store(&sl->state, SLOT_FREE);
}

static struct slot *pick_existing(void)
{
    static const int states[] = {SLOT_ACTIVE, SLOT_VIEW, SLOT_COMMITTED};
    return pick_state(states[rnd() % 3]);
}

static void child_update(struct snapshotter *s)
{
    struct slot *sl = pick_existing();
    if (!sl)
        return;
    char key[32], value[24];
    slot_name(sl, state_kind(atomic_load(&sl->state)), key, sizeof(key));
    if (rnd() % 5 == 0)
        value[0] = '\0'; /* an empty value deletes the label */
    else
        snprintf(value, sizeof(value), "u%llu", (unsigned long long)atomic_load(&sh->ops));
    memcpy(sl->label_next, value, sizeof(value));
    atomic_store(&sl->label_busy, 1);
    struct snapshot_label labels[] = {{"u", value}};
    struct snapshot_info in = {.name = key, .labels = labels, .label_count = 1}, out;
    const char *paths[] = {"labels.u"};
    struct vs_error err = {0};
    op_begin(OP_UPDATE, true);
    int rc = snapshotter_update(s, &call, &in, paths, 1, &out, &err);
    op_end(OP_UPDATE);
    if (rc < 0)
        child_fail("update '%s': %d %s", key, rc, err.message);
    const char *got = NULL;
    for (size_t i = 0; i < out.label_count; i++)
        if (!strcmp(out.labels[i].key, "u"))
            got = out.labels[i].value;
    if (strcmp(got ? got : "", value) != 0)
        child_fail("update '%s': label u is '%s', set '%s'", key, got ? got : "(none)", value);
    snapshot_info_free(&out);
    memcpy(sl->label, value, sizeof(value));
    atomic_store(&sl->label_busy, 0);
}

static int count_committed_fn(void *ctx, const struct snapshot_info *info)
{
    (void)info;
    (*(int *)ctx)++;
    return 0;
}

static void child_read(struct snapshotter *s)
{
    struct slot *sl = pick_existing();
    struct vs_error err = {0};
    set_op(OP_READ);
    if (sl) {
        char key[32];
        enum snapshot_kind kind = state_kind(atomic_load(&sl->state));
        slot_name(sl, kind, key, sizeof(key));
        struct snapshot_info info;
        int rc = snapshotter_stat(s, &call, key, &info, &err);
        if (rc < 0 || info.kind != kind)
            child_fail("stat '%s': %d %s (kind %s)", key, rc, err.message,
                       rc < 0 ? "-" : kind_str(info.kind));
        snapshot_info_free(&info);
    }
    const char *filters[] = {"kind==committed"};
    int n = 0;
    if (snapshotter_walk(s, &call, filters, 1, count_committed_fn, &n, &err) < 0)
        child_fail("walk: %s", err.message);
    if (n != count_state(SLOT_COMMITTED))
        child_fail("walk kind==committed lists %d, the workload holds %d", n, count_state(SLOT_COMMITTED));
    set_op(OP_IDLE);
}

static void child_main(uint64_t seed)
{
    vs_log_set_level("error");
    rnd_state = seed;
    struct snapshotter_config cfg = config();
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    op_begin(OP_OPEN, true);
    if (snapshotter_open(&cfg, &s, &err) < 0)
        child_fail("open: %s", err.message);
    op_end(OP_OPEN);
    for (;;) {
        int na = count_state(SLOT_ACTIVE), nv = count_state(SLOT_VIEW), nc = count_state(SLOT_COMMITTED);
        bool full = nc > MAX_COMMITTED || nv > MAX_VIEW || na > MAX_ACTIVE || !free_slot();
        unsigned r = (unsigned)(rnd() % 100);
        if (full && r < 50)
            child_remove(s);
        else if (r < 22 || (r < 50 && !na) || (r < 62 && !nc))
            child_prepare(s);
        else if (r < 50)
            child_commit(s);
        else if (r < 62)
            child_view(s);
        else if (r < 74)
            child_remove(s);
        else if (r < 86)
            child_update(s);
        else if (r < 95)
            child_read(s);
        else {
            op_begin(OP_CLEANUP, true);
            if (snapshotter_cleanup(s, &call, &err) < 0)
                child_fail("cleanup: %s", err.message);
            op_end(OP_CLEANUP);
        }
        atomic_fetch_add(&sh->ops, 1);
    }
}

/* ---- the parent: what the reopened root must look like ---- */

#define SEEN_MAX 256

struct seen {
    char name[32];
    char parent[32];
    enum snapshot_kind kind;
    bool has_u;
    char u[64];
    char src[64];
    char root_hash[2 * VERITY_MAX_DIGEST + 1];
};

struct seen_list {
    struct seen items[SEEN_MAX];
    int count;
};

static const char *info_label(const struct snapshot_info *info, const char *key)
{
    for (size_t i = 0; i < info->label_count; i++)
        if (strcmp(info->labels[i].key, key) == 0)
            return info->labels[i].value;
    return NULL;
}

static int collect_fn(void *ctx, const struct snapshot_info *info)
{
    struct seen_list *l = ctx;
    if (l->count >= SEEN_MAX)
        return 1;
    struct seen *e = &l->items[l->count++];
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", info->name);
    snprintf(e->parent, sizeof(e->parent), "%s", info->parent);
    e->kind = info->kind;
    const char *u = info_label(info, "u"), *src = info_label(info, "src"),
               *rh = info_label(info, SNAPSHOT_LABEL_ROOT_HASH);
    e->has_u = u != NULL;
    snprintf(e->u, sizeof(e->u), "%s", u ? u : "");
    snprintf(e->src, sizeof(e->src), "%s", src ? src : "");
    snprintf(e->root_hash, sizeof(e->root_hash), "%s", rh ? rh : "");
    return 0;
}

static struct seen *find_seen(struct seen_list *l, const char *name)
{
    for (int i = 0; i < l->count; i++)
        if (strcmp(l->items[i].name, name) == 0)
            return &l->items[i];
    return NULL;
}

static struct slot *slot_of_seq(uint64_t seq)
{
    for (int i = 0; i < SLOTS; i++)
        if (atomic_load(&sh->slots[i].state) != SLOT_FREE && sh->slots[i].seq == seq)
            return &sh->slots[i];
    return NULL;
}

/* The labels of a listed snapshot: "u" as acknowledged (or as the Update in flight set it), "src" and the
 * root hash on committed ones. */
static void check_labels(const struct slot *sl, const struct seen *e, bool from_commit)
{
    const char *acked = from_commit ? "" : sl->label;
    bool busy = !from_commit && atomic_load(&sl->label_busy);
    bool ok = strcmp(e->u, acked) == 0 || (busy && strcmp(e->u, sl->label_next) == 0);
    CHECK(ok && (e->has_u == (e->u[0] != '\0')), "'%s': label u is '%s'%s, acknowledged '%s'%s%s", e->name,
          e->u, e->has_u ? "" : " (absent)", acked, busy ? ", update in flight to " : "",
          busy ? sl->label_next : "");
    if (e->kind == SNAPSHOT_KIND_COMMITTED) {
        char src[32];
        snprintf(src, sizeof(src), "a-%llu", (unsigned long long)sl->seq);
        CHECK(strcmp(e->src, src) == 0, "'%s': label src is '%s', committed from '%s'", e->name, e->src, src);
        size_t n = strspn(e->root_hash, "0123456789abcdef");
        CHECK(strlen(e->root_hash) == 64 && n == 64, "'%s': root-hash label '%s'", e->name, e->root_hash);
    }
}

/* Listed snapshots against the workload's acknowledged operations. */
static void check_model(struct seen_list *l)
{
    for (int i = 0; i < l->count; i++) {
        struct seen *e = &l->items[i];
        char c = 0;
        unsigned long long seq = 0;
        struct slot *sl = sscanf(e->name, "%c-%llu", &c, &seq) == 2 ? slot_of_seq(seq) : NULL;
        int st = sl ? atomic_load(&sl->state) : SLOT_FREE;
        enum snapshot_kind want = SNAPSHOT_KIND_UNKNOWN;
        if (st == SLOT_ACTIVE || st == SLOT_VIEW || st == SLOT_COMMITTED)
            want = state_kind(st);
        else if (st == SLOT_CREATING || st == SLOT_REMOVING)
            want = sl->kind;
        else if (st == SLOT_COMMITTING)
            want = c == 'c' ? SNAPSHOT_KIND_COMMITTED : SNAPSHOT_KIND_ACTIVE;
        char name[32] = "", pname[32] = "";
        if (want)
            slot_name(sl, want, name, sizeof(name));
        if (!want || strcmp(name, e->name) != 0 || e->kind != want) {
            CHECK(0,
                  "snapshot '%s' (%s) is not one the workload made or kept (slot state %d): resurrected or "
                  "half-made",
                  e->name, kind_str(e->kind), st);
            continue;
        }
        parent_name(sl->parent_seq, pname, sizeof(pname));
        CHECK(strcmp(e->parent, pname) == 0, "'%s': parent '%s', made over '%s'", e->name, e->parent, pname);
        check_labels(sl, e, st == SLOT_COMMITTING && e->kind == SNAPSHOT_KIND_COMMITTED);
    }
    for (int i = 0; i < SLOTS; i++) {
        struct slot *sl = &sh->slots[i];
        int st = atomic_load(&sl->state);
        char a[32], c[32], v[32];
        slot_name(sl, SNAPSHOT_KIND_ACTIVE, a, sizeof(a));
        slot_name(sl, SNAPSHOT_KIND_COMMITTED, c, sizeof(c));
        slot_name(sl, SNAPSHOT_KIND_VIEW, v, sizeof(v));
        if (st == SLOT_ACTIVE)
            CHECK(find_seen(l, a), "acknowledged active '%s' is gone", a);
        else if (st == SLOT_VIEW)
            CHECK(find_seen(l, v), "acknowledged view '%s' is gone", v);
        else if (st == SLOT_COMMITTED)
            CHECK(find_seen(l, c), "acknowledged committed '%s' is gone", c);
        else if (st == SLOT_COMMITTING)
            CHECK(!find_seen(l, a) != !find_seen(l, c),
                  "a commit cut short must leave exactly one of '%s' (%s) and '%s' (%s)", a,
                  find_seen(l, a) ? "present" : "absent", c, find_seen(l, c) ? "present" : "absent");
    }
}

/* Stat of every listed key, and every parent listed and committed. */
static void check_stat_parents(struct snapshotter *s, struct seen_list *l)
{
    for (int i = 0; i < l->count; i++) {
        struct seen *e = &l->items[i];
        struct snapshot_info info;
        struct vs_error err = {0};
        int rc = snapshotter_stat(s, &call, e->name, &info, &err);
        CHECK(rc == 0, "stat '%s': %d %s", e->name, rc, err.message);
        if (rc == 0) {
            CHECK(info.kind == e->kind && strcmp(info.parent, e->parent) == 0,
                  "stat '%s': %s over '%s', listed %s over '%s'", e->name, kind_str(info.kind), info.parent,
                  kind_str(e->kind), e->parent);
            snapshot_info_free(&info);
        }
        if (e->parent[0]) {
            struct seen *p = find_seen(l, e->parent);
            CHECK(p && p->kind == SNAPSHOT_KIND_COMMITTED, "'%s': parent '%s' is %s", e->name, e->parent,
                  p ? kind_str(p->kind) : "not listed");
        }
    }
}

static sqlite3 *db_open(void)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/state.db", root);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        CHECK(0, "opening %s: %s", path, db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

/* The layer row of a committed snapshot; false when none. */
static bool db_layer(sqlite3 *db, const char *key, char *path, size_t cap, char *root_hash, size_t rh_cap,
                     int64_t *file_size, int64_t *layer_id)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db,
                           "SELECT l.path, l.root_hash, l.file_size, l.id FROM layers l JOIN snapshots s ON "
                           "s.id = l.snapshot_id WHERE s.key = ? AND l.format = 'erofs'",
                           -1, &st, NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    bool found = sqlite3_step(st) == SQLITE_ROW;
    if (found) {
        const unsigned char *p = sqlite3_column_text(st, 0), *rh = sqlite3_column_text(st, 1);
        snprintf(path, cap, "%s", p ? (const char *)p : "");
        snprintf(root_hash, rh_cap, "%s", rh ? (const char *)rh : "");
        *file_size = sqlite3_column_int64(st, 2);
        *layer_id = sqlite3_column_int64(st, 3);
    }
    sqlite3_finalize(st);
    return found;
}

static int64_t db_count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    return n;
}

/* A committed snapshot's layer file: recorded, present, its size as recorded, and every block verified
 * against the tree and the root hash of its label (the tree's layout from the sidecar). */
static void check_layer(sqlite3 *db, const struct seen *e, int64_t *layer_id)
{
    char rel[512], rh[160];
    int64_t size = 0;
    *layer_id = 0;
    if (!db_layer(db, e->name, rel, sizeof(rel), rh, sizeof(rh), &size, layer_id)) {
        CHECK(0, "committed '%s' has no erofs layer row", e->name);
        return;
    }
    CHECK(strcmp(rh, e->root_hash) == 0, "'%s': the store records root hash %s, the label says %s", e->name,
          rh, e->root_hash);
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        CHECK(0, "'%s': layer file %s: %s", e->name, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    CHECK(st.st_size == size, "'%s': layer file %s is %lld bytes, recorded %lld", e->name, path,
          (long long)st.st_size, (long long)size);
    struct verity_layout layout;
    struct vs_error err = {0};
    int rc = verity_sidecar_read(path, &layout, &err);
    CHECK(rc == 0, "'%s': sidecar of %s: %s", e->name, path, err.message);
    if (rc == 0) {
        char side[2 * VERITY_MAX_DIGEST + 1];
        vs_hex_encode(layout.root_hash, layout.digest_size, side);
        CHECK(strcmp(side, e->root_hash) == 0, "'%s': the sidecar says root hash %s, the label %s", e->name,
              side, e->root_hash);
        int n = vs_hex_decode(e->root_hash, layout.root_hash, sizeof(layout.root_hash));
        CHECK(n == (int)layout.digest_size, "'%s': root-hash label of %d bytes, the tree's digests are %u",
              e->name, n, layout.digest_size);
        struct verity_verify_report report = {0};
        rc = verity_verify_fd(fd, &layout, &report, &err);
        CHECK(rc == 0 && report.data_blocks_checked == layout.data_blocks,
              "'%s': %s does not verify against its root-hash label: %d %s (bad %s block %llu, %llu of %llu "
              "data "
              "blocks checked)",
              e->name, path, rc, err.message, report.bad_in_tree ? "tree" : "data",
              (unsigned long long)report.bad_block, (unsigned long long)report.data_blocks_checked,
              (unsigned long long)layout.data_blocks);
    }
    close(fd);
}

static bool id_in(const int64_t *ids, int n, int64_t id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* The files and mounts under the root: nothing half-made, nothing leaked, nothing missing. needed: the layer
 * ids the listed active and view snapshots mount (their parent chains). */
static void check_files_on_disk(sqlite3 *db, const int64_t *needed, int needed_count, const char *when)
{
    char dir[400], rel[700];
    /* layers/: exactly the recorded layer files and their sidecars; no temporary file. */
    int64_t rows = db_count(db, "SELECT count(*) FROM layers");
    snprintf(dir, sizeof(dir), "%s/layers", root);
    DIR *d = opendir(dir);
    CHECK(d != NULL, "%s: %s: %s", when, dir, strerror(errno));
    struct dirent *de;
    int entries = 0;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        entries++;
        CHECK(de->d_name[0] != '.', "%s: temporary file layers/%s left", when, de->d_name);
        snprintf(rel, sizeof(rel), "layers/%s", de->d_name);
        size_t l = strlen(rel);
        if (l > 9 && strcmp(rel + l - 9, ".dmverity") == 0)
            rel[l - 9] = '\0';
        sqlite3_stmt *st;
        bool known = false;
        if (sqlite3_prepare_v2(db, "SELECT 1 FROM layers WHERE path = ?", -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, rel, -1, SQLITE_STATIC);
            known = sqlite3_step(st) == SQLITE_ROW;
            sqlite3_finalize(st);
        }
        CHECK(known, "%s: layers/%s belongs to no layer row (leaked)", when, de->d_name);
    }
    if (d)
        closedir(d);
    CHECK(entries == 2 * rows, "%s: layers/ holds %d entries for %lld layer rows (file + sidecar each)", when,
          entries, (long long)rows);
    CHECK(
        db_count(
            db, "SELECT count(*) FROM layers l JOIN snapshots s ON s.id = l.snapshot_id WHERE s.kind != 3") ==
            0,
        "%s: layer rows of snapshots that are not committed", when);

    /* snapshots/: one dir per active or view row, none other. */
    snprintf(dir, sizeof(dir), "%s/snapshots", root);
    d = opendir(dir);
    CHECK(d != NULL, "%s: %s: %s", when, dir, strerror(errno));
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM snapshots WHERE id = %lld AND kind IN (1, 2)",
                 strtoll(de->d_name, NULL, 10));
        CHECK(strspn(de->d_name, "0123456789") == strlen(de->d_name) && db_count(db, sql) == 1,
              "%s: snapshots/%s has no active or view row (leaked)", when, de->d_name);
    }
    if (d)
        closedir(d);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT id, kind, key FROM snapshots WHERE kind IN (1, 2)", -1, &st, NULL) ==
        SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            long long id = sqlite3_column_int64(st, 0);
            int kind = sqlite3_column_int(st, 1);
            const char *key = (const char *)sqlite3_column_text(st, 2);
            struct stat sb;
            snprintf(rel, sizeof(rel), "%s/snapshots/%lld/fs", root, id);
            CHECK(stat(rel, &sb) == 0 && S_ISDIR(sb.st_mode), "%s: %s '%s' has no dir %s", when,
                  kind == 2 ? "active" : "view", key ? key : "?", rel);
            snprintf(rel, sizeof(rel), "%s/snapshots/%lld/work", root, id);
            CHECK(kind != 2 || (stat(rel, &sb) == 0 && S_ISDIR(sb.st_mode)), "%s: active '%s' has no dir %s",
                  when, key ? key : "?", rel);
        }
        sqlite3_finalize(st);
    }

    snprintf(dir, sizeof(dir), "%s/tmp", root);
    CHECK(vs_test_count_entries(dir) == 0, "%s: tmp/ holds %d entries", when, vs_test_count_entries(dir));

    /* Mounts under the root: each one layer's, at mnt/<layer id>, once, and needed by a listed snapshot. */
    static char points[256][300];
    static char types[256][32];
    char prefix[400];
    snprintf(prefix, sizeof(prefix), "%s/", root);
    int n = mounts_under(prefix, points, types, 256);
    char mnt_prefix[420];
    int mp_len = snprintf(mnt_prefix, sizeof(mnt_prefix), "%s/mnt/", root);
    for (int i = 0; i < n && i < 256; i++) {
        const char *name = points[i] + mp_len;
        bool in_mnt = strncmp(points[i], mnt_prefix, (size_t)mp_len) == 0 && name[0] &&
                      strspn(name, "0123456789") == strlen(name);
        CHECK(in_mnt && strcmp(types[i], "erofs") == 0, "%s: a %s mount at %s", when, types[i], points[i]);
        if (!in_mnt)
            continue;
        CHECK(id_in(needed, needed_count, strtoll(name, NULL, 10)),
              "%s: layer mount %s is needed by no snapshot", when, points[i]);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(points[i], points[j]) != 0, "%s: %s is mounted more than once", when, points[i]);
    }
    snprintf(dir, sizeof(dir), "%s/mnt", root);
    d = opendir(dir);
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char full[800];
        snprintf(full, sizeof(full), "%s/%s", dir, de->d_name);
        bool mounted = false;
        for (int i = 0; i < n && i < 256; i++)
            mounted = mounted || strcmp(points[i], full) == 0;
        CHECK(mounted, "%s: mnt/%s is a mount point without a mount", when, de->d_name);
    }
    if (d)
        closedir(d);
}

/* The kernel's view of each committed layer not read before: a View over it, mounted, holds the files its
 * active got. (Once read, the layer's bytes are pinned by the root hash that check_layer verifies every
 * round.) */
static void check_content(struct snapshotter *s, struct seen_list *l)
{
    for (int i = 0; i < l->count; i++) {
        struct seen *e = &l->items[i];
        if (e->kind != SNAPSHOT_KIND_COMMITTED)
            continue;
        unsigned long long seq = strtoull(e->name + 2, NULL, 10);
        struct slot *sl = slot_of_seq(seq);
        if (sl && sl->content_checked)
            continue;
        char vkey[48], what[512] = "";
        snprintf(vkey, sizeof(vkey), "chk-%llu", seq);
        struct snapshot_mounts ms;
        struct vs_error err = {0};
        int rc = snapshotter_view(s, &call, vkey, e->name, NULL, 0, &ms, &err);
        CHECK(rc == 0, "view '%s' over '%s': %d %s", vkey, e->name, rc, err.message);
        if (rc < 0)
            continue;
        rc = vs_test_mount_all(&ms, target);
        CHECK(rc == 0, "mounting view '%s' over '%s': %s", vkey, e->name, strerror(-rc));
        if (rc == 0) {
            bool ok = check_files(target, seq, what, sizeof(what));
            CHECK(ok, "'%s' as the kernel reads it: %s", e->name, what);
            if (ok && sl)
                sl->content_checked = true;
            umount2(target, MNT_DETACH);
        }
        snapshot_mounts_free(&ms);
        rc = snapshotter_remove(s, &call, vkey, &err);
        CHECK(rc == 0, "remove '%s': %d %s", vkey, rc, err.message);
    }
}

/* The layer ids the listed active and view snapshots need mounted (their parents' chains). */
static int needed_layers(sqlite3 *db, struct seen_list *l, int64_t *ids, int cap)
{
    int n = 0;
    for (int i = 0; i < l->count; i++) {
        if (l->items[i].kind == SNAPSHOT_KIND_COMMITTED)
            continue;
        for (struct seen *p = find_seen(l, l->items[i].parent); p; p = find_seen(l, p->parent)) {
            char rel[512], rh[160];
            int64_t size, id;
            if (db_layer(db, p->name, rel, sizeof(rel), rh, sizeof(rh), &size, &id) && !id_in(ids, n, id) &&
                n < cap)
                ids[n++] = id;
            if (!p->parent[0])
                break;
        }
    }
    return n;
}

/* Files and mounts, checked against the store and the listed snapshots. */
static void check_disk(struct seen_list *l, const char *when)
{
    sqlite3 *db = db_open();
    if (!db)
        return;
    static int64_t needed[SEEN_MAX];
    int n = needed_layers(db, l, needed, SEEN_MAX);
    check_files_on_disk(db, needed, n, when);
    sqlite3_close(db);
}

static bool walk_all(struct snapshotter *s, struct seen_list *l)
{
    l->count = 0;
    struct vs_error err = {0};
    int rc = snapshotter_walk(s, &call, NULL, 0, collect_fn, l, &err);
    CHECK(rc == 0 && l->count < SEEN_MAX, "walk: %d %s (%d listed)", rc, err.message, l->count);
    return rc == 0;
}

/* After the checks: the model becomes what the store holds (an operation cut short resolved either way). */
static void resolve_model(struct seen_list *l)
{
    for (int i = 0; i < SLOTS; i++) {
        struct slot *sl = &sh->slots[i];
        int st = atomic_load(&sl->state);
        if (st == SLOT_FREE)
            continue;
        char a[32], c[32], v[32];
        struct seen *ea = find_seen(l, slot_name(sl, SNAPSHOT_KIND_ACTIVE, a, sizeof(a)));
        struct seen *ec = find_seen(l, slot_name(sl, SNAPSHOT_KIND_COMMITTED, c, sizeof(c)));
        struct seen *ev = find_seen(l, slot_name(sl, SNAPSHOT_KIND_VIEW, v, sizeof(v)));
        struct seen *e = ea ? ea : ec ? ec : ev;
        if (e)
            snprintf(sl->label, sizeof(sl->label), "%.23s", e->u);
        atomic_store(&sl->label_busy, 0);
        atomic_store(&sl->state, ea ? SLOT_ACTIVE : ec ? SLOT_COMMITTED : ev ? SLOT_VIEW : SLOT_FREE);
    }
}

/* One more snapshot after the crash: Prepare (over the newest committed one), files, Commit, verified. */
static void check_continue(struct snapshotter *s, struct seen_list *l)
{
    struct slot *sl = free_slot();
    if (!sl) {
        CHECK(0, "no free slot in the model");
        return;
    }
    uint64_t parent = 0;
    for (int i = 0; i < l->count; i++)
        if (l->items[i].kind == SNAPSHOT_KIND_COMMITTED) {
            uint64_t seq = strtoull(l->items[i].name + 2, NULL, 10);
            parent = seq > parent ? seq : parent;
        }
    sl->seq = atomic_fetch_add(&sh->next_seq, 1);
    sl->parent_seq = parent;
    sl->content_checked = false;
    sl->label[0] = '\0';
    atomic_store(&sl->label_busy, 0);
    char key[32], name[32], pkey[32], dir[4096], what[512];
    slot_name(sl, SNAPSHOT_KIND_ACTIVE, key, sizeof(key));
    slot_name(sl, SNAPSHOT_KIND_COMMITTED, name, sizeof(name));
    parent_name(parent, pkey, sizeof(pkey));
    struct snapshot_mounts ms;
    struct vs_error err = {0};
    int rc = snapshotter_prepare(s, &call, key, pkey, NULL, 0, &ms, &err);
    CHECK(rc == 0, "prepare '%s' over '%s' after the crash: %d %s", key, pkey, rc, err.message);
    if (rc < 0)
        return;
    bool ok = writable_dir(&ms, dir, sizeof(dir));
    snapshot_mounts_free(&ms);
    CHECK(ok, "'%s': no writable dir in its mounts", key);
    rc = ok ? write_files(dir, sl->seq, what, sizeof(what)) : -EINVAL;
    CHECK(rc == 0, "writing into '%s': %s", key, what);
    struct snapshot_label labels[] = {{"src", key}};
    rc = snapshotter_commit(s, &call, name, key, labels, 1, &err);
    CHECK(rc == 0, "commit '%s' as '%s' after the crash: %d %s", key, name, rc, err.message);
    if (rc < 0) {
        snapshotter_remove(s, &call, key, &err);
        return;
    }
    atomic_store(&sl->state, SLOT_COMMITTED);
    struct seen_list *one = calloc(1, sizeof(*one));
    if (!one)
        return;
    char filter[64];
    snprintf(filter, sizeof(filter), "name==\"%s\"", name);
    const char *filters[] = {filter};
    rc = snapshotter_walk(s, &call, filters, 1, collect_fn, one, &err);
    CHECK(rc == 0 && one->count == 1, "walk %s: %d %s (%d)", filter, rc, err.message, one->count);
    if (rc == 0 && one->count == 1) {
        check_labels(sl, &one->items[0], false);
        sqlite3 *db = db_open();
        if (db) {
            int64_t id;
            check_layer(db, &one->items[0], &id);
            sqlite3_close(db);
        }
        check_content(s, one);
    }
    free(one);
}

/* Reopens the root after a kill and checks it; false when open failed. */
static bool check_round(int round)
{
    struct snapshotter_config cfg = config();
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    int rc = snapshotter_open(&cfg, &s, &err);
    CHECK(rc == 0, "round %d: reopening after the kill: %d %s", round, rc, err.message);
    if (rc < 0)
        return false;
    struct seen_list *l = calloc(1, sizeof(*l));
    if (!l || !walk_all(s, l)) {
        free(l);
        snapshotter_close(s);
        return false;
    }
    check_model(l);
    check_stat_parents(s, l);
    sqlite3 *db = db_open();
    for (int i = 0; db && i < l->count; i++) {
        int64_t id;
        if (l->items[i].kind == SNAPSHOT_KIND_COMMITTED)
            check_layer(db, &l->items[i], &id);
    }
    sqlite3_close(db);
    check_disk(l, "after open");
    check_content(s, l);
    rc = snapshotter_cleanup(s, &call, &err);
    CHECK(rc == 0, "cleanup: %d %s", rc, err.message);
    check_disk(l, "after cleanup");
    resolve_model(l);
    check_continue(s, l);
    snapshotter_close(s);
    free(l);
    return true;
}

/* Removes every snapshot (children first); then nothing may be left under the root. */
static void teardown_snapshots(void)
{
    struct snapshotter_config cfg = config();
    struct snapshotter *s = NULL;
    struct vs_error err = {0};
    int rc = snapshotter_open(&cfg, &s, &err);
    CHECK(rc == 0, "final open: %s", err.message);
    if (rc < 0)
        return;
    struct seen_list *l = calloc(1, sizeof(*l));
    for (int pass = 0; l && pass < 64; pass++) {
        if (!walk_all(s, l) || l->count == 0)
            break;
        for (int i = 0; i < l->count; i++) {
            bool parent_of_some = false;
            for (int j = 0; j < l->count; j++)
                parent_of_some = parent_of_some || strcmp(l->items[j].parent, l->items[i].name) == 0;
            if (!parent_of_some) {
                rc = snapshotter_remove(s, &call, l->items[i].name, &err);
                CHECK(rc == 0, "final remove '%s': %d %s", l->items[i].name, rc, err.message);
            }
        }
    }
    CHECK(l && l->count == 0, "snapshots left after removing all: %d", l ? l->count : -1);
    free(l);
    rc = snapshotter_cleanup(s, &call, &err);
    CHECK(rc == 0, "final cleanup: %s", err.message);
    static const char *const dirs[] = {"snapshots", "layers", "mnt", "tmp"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char sub[400];
        snprintf(sub, sizeof(sub), "%s/%s", root, dirs[i]);
        CHECK(vs_test_count_entries(sub) == 0, "%s/ holds %d entries after removing every snapshot", dirs[i],
              vs_test_count_entries(sub));
    }
    char prefix[400];
    snprintf(prefix, sizeof(prefix), "%s/", root);
    int n = mounts_under(prefix, NULL, NULL, 0);
    CHECK(n == 0, "%d mounts left under the root after removing every snapshot", n);
    snapshotter_close(s);
}

/* Unmounts whatever is left under the base dir (deepest first, lazily), then removes it. */
static void remove_base(void)
{
    static char points[512][300];
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s/", base_dir);
    for (int pass = 0; pass < 8; pass++) {
        int n = mounts_under(prefix, points, NULL, 512);
        if (n <= 0)
            break;
        for (int i = (n < 512 ? n : 512) - 1; i >= 0; i--)
            umount2(points[i], MNT_DETACH);
    }
    if (mounts_under(prefix, NULL, NULL, 0) == 0) {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", base_dir);
    } else {
        fprintf(stderr, "leaving %s: mounts remain under it\n", base_dir);
        failures++;
    }
}

/* ---- the rounds ---- */

enum kill_mode { KILL_EARLY, KILL_BIG_COMMIT, KILL_DELAY, KILL_SYSCALL };

static int killed_in[OP_COUNT];
static int64_t check_ns; /* time spent checking, all rounds */
static bool no_ptrace;

/* The child's file-system-changing syscalls: the moments a kill can leave a different state on disk. */
static bool mutating_syscall(const struct __ptrace_syscall_info *in)
{
    switch (in->entry.nr) {
#ifdef SYS_rename
    case SYS_rename:
#endif
#ifdef SYS_unlink
    case SYS_unlink:
#endif
#ifdef SYS_rmdir
    case SYS_rmdir:
#endif
#ifdef SYS_mkdir
    case SYS_mkdir:
#endif
#ifdef SYS_renameat
    case SYS_renameat:
#endif
    case SYS_renameat2:
    case SYS_unlinkat:
    case SYS_mkdirat:
    case SYS_fsync:
    case SYS_fdatasync:
    case SYS_ftruncate:
    case SYS_mount:
    case SYS_umount2:
        return true;
#ifdef SYS_open
    case SYS_open:
        return (in->entry.args[1] & O_CREAT) != 0;
#endif
    case SYS_openat:
        return (in->entry.args[2] & O_CREAT) != 0;
    default:
        return false;
    }
}

/* Follows the traced child from its marker stop (the traced operation is about to start) through its
 * syscalls and kills it right after the k-th one that changes the file system. Returns 1 when the kill
 * landed inside the operation, 0 when the operation ended first (killed at its end marker), -1 when the child
 * ended by itself, -2 when it could not be traced; *status is its wait status. */
static int trace_and_kill(pid_t pid, int k, int *status)
{
    bool stepping = false;
    int seen = 0;
    struct __ptrace_syscall_info entry = {0};
    int64_t t0 = now_ns();
    for (;;) {
        pid_t w = waitpid(pid, status, stepping ? 0 : WNOHANG);
        if (w == 0 && atomic_load(&sh->trace_op) == OP_IDLE) { /* PTRACE_TRACEME failed (a debugger?) */
            sleep_ns(100000000);
            kill(pid, SIGKILL);
            waitpid(pid, status, 0);
            return -2;
        }
        if (w == 0) {
            if (now_ns() - t0 > 5000000000ll) { /* the operation never came: an ordinary kill */
                kill(pid, SIGKILL);
                waitpid(pid, status, 0);
                return 0;
            }
            sleep_ns(100000);
            continue;
        }
        if (w < 0 || !WIFSTOPPED(*status))
            return -1;
        int sig = WSTOPSIG(*status);
        if (sig == SIGSTOP && atomic_load(&sh->traced) == 2) { /* end marker: the operation completed */
            kill(pid, SIGKILL);
            waitpid(pid, status, 0);
            return 0;
        }
        if (sig == SIGSTOP && !stepping) {
            stepping = true;
            ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL);
            ptrace(PTRACE_SYSCALL, pid, 0, 0);
            continue;
        }
        if (sig == (SIGTRAP | 0x80)) {
            struct __ptrace_syscall_info info;
            memset(&info, 0, sizeof(info));
            ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *)sizeof(info), &info);
            if (info.op == PTRACE_SYSCALL_INFO_ENTRY)
                entry = info;
            else if (info.op == PTRACE_SYSCALL_INFO_EXIT && mutating_syscall(&entry) && ++seen == k) {
                kill(pid, SIGKILL);
                waitpid(pid, status, 0);
                return 1;
            }
            ptrace(PTRACE_SYSCALL, pid, 0, 0);
            continue;
        }
        ptrace(stepping ? PTRACE_SYSCALL : PTRACE_CONT, pid, 0, sig); /* pass other signals on */
    }
}

/* One round: a child runs the workload until killed, then the root is checked. Returns false to stop. For
 * KILL_SYSCALL, *inside says whether the kill landed inside the traced operation. */
static bool run_round(int round, enum kill_mode mode, enum op trace_op, int k, bool *inside)
{
    rnd_state = 0x5eed0000u + (uint64_t)round;
    int64_t delay = mode == KILL_EARLY ? (int64_t)(rnd() % 20000000) : (int64_t)(rnd() % 1500000000);
    uint64_t frac = rnd() % 1000;
    uint64_t ops0 = atomic_load(&sh->ops), big0 = atomic_load(&sh->big_commits);
    atomic_store(&sh->op, OP_OPEN); /* until the child says otherwise: starting, opening */
    atomic_store(&sh->trace_op, mode == KILL_SYSCALL ? trace_op : OP_IDLE);
    atomic_store(&sh->trace_after, ops0 + 3 + rnd() % 8);
    atomic_store(&sh->traced, 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        CHECK(0, "fork: %s", strerror(errno));
        return false;
    }
    if (pid == 0) {
        if (mode == KILL_SYSCALL && ptrace(PTRACE_TRACEME, 0, 0, 0) < 0)
            atomic_store(&sh->trace_op, OP_IDLE);
        child_main(0xc0ffee00u + (uint64_t)round);
    }
    int64_t t0 = now_ns();
    int status = 0;
    bool exited = false;
    if (mode == KILL_SYSCALL) {
        int r = trace_and_kill(pid, k, &status);
        exited = r == -1;
        *inside = r == 1;
        if (r == -2) {
            no_ptrace = true;
            printf("ptrace is not available here: no syscall sweep\n");
        }
    }
    if (mode == KILL_BIG_COMMIT) {
        /* Wait for a big Commit to start, then kill somewhere inside its expected duration. */
        while (atomic_load(&sh->big_commits) == big0 && now_ns() - t0 < 8000000000ll)
            if (waitpid(pid, &status, WNOHANG) == pid) {
                exited = true;
                break;
            } else {
                sleep_ns(200000);
            }
        int64_t est = atomic_load(&sh->big_commit_ns);
        delay = (int64_t)((uint64_t)(est > 0 ? est : 50000000) * frac / 1000);
    }
    if (mode != KILL_SYSCALL && !exited) {
        sleep_ns(delay);
        exited = waitpid(pid, &status, WNOHANG) == pid;
        if (!exited) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        }
    }
    int64_t ran_ms = (now_ns() - t0) / 1000000;
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
          "round %d: the workload stopped by itself (%s %d): %s", round,
          WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
          atomic_load(&sh->failed) ? sh->failure : "no message");
    if (failures)
        return false;
    int op = atomic_load(&sh->op); /* what it was doing when the kill landed */
    killed_in[op]++;
    char how[64];
    static const char *const modes[] = {"early", "big commit", "delay", "syscall"};
    if (mode == KILL_SYSCALL)
        snprintf(how, sizeof(how), "after syscall %d of %s%s", k, op_names[trace_op],
                 *inside ? "" : ": it ended");
    else
        snprintf(how, sizeof(how), "%s", modes[mode]);
    printf("round %3d: killed after %4lld ms (%s), %llu ops, in %s; %d committed, %d active, %d view\n",
           round, (long long)ran_ms, how, (unsigned long long)(atomic_load(&sh->ops) - ops0), op_names[op],
           count_state(SLOT_COMMITTED) + count_state(SLOT_COMMITTING), count_state(SLOT_ACTIVE),
           count_state(SLOT_VIEW));
    int64_t c0 = now_ns();
    bool ok = check_round(round);
    check_ns += now_ns() - c0;
    return ok;
}

static int int_from_env(const char *name, int def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    long n = strtol(v, &end, 10);
    return *end || n < 0 || n > 100000 ? def : (int)n;
}

int main(void)
{
    if (geteuid() != 0 || !vs_test_has_fs("overlay") || !vs_test_has_fs("erofs")) {
        fprintf(stderr, "SKIP: needs root, overlay and erofs\n");
        return 77;
    }
    vs_log_set_level("warn");
    snprintf(base_dir, sizeof(base_dir), "/tmp/vs-crash-test-XXXXXX");
    if (!mkdtemp(base_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(root, sizeof(root), "%s/root", base_dir);
    snprintf(target, sizeof(target), "%s/t", base_dir);
    mkdir(target, 0755);
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(sh, 0, sizeof(*sh));
    atomic_store(&sh->next_seq, 1);
    int rounds = int_from_env("VERITYSNAP_CRASH_ROUNDS", DEFAULT_ROUNDS);
    int stride = int_from_env("VERITYSNAP_CRASH_SYSCALL_STRIDE", DEFAULT_STRIDE);
    int64_t start = now_ns();
    int round = 0;
    /* Kills at random moments: early (open, reconcile), inside a big Commit, anywhere in 0..1.5 s. */
    for (; round < rounds && !failures; round++) {
        enum kill_mode mode = round % 10 == 0 ? KILL_EARLY : round % 3 == 1 ? KILL_BIG_COMMIT : KILL_DELAY;
        if (!run_round(round, mode, OP_IDLE, 0, &(bool){false}))
            break;
    }
    /* Kills at every file-system-changing syscall of each operation in turn (every stride-th one): the
     * narrow windows (between a rename and the row that names the file) a random kill rarely hits. */
    static const enum op traced[] = {OP_COMMIT_BIG, OP_REMOVE,  OP_PREPARE, OP_VIEW,
                                     OP_UPDATE,     OP_CLEANUP, OP_OPEN};
    int sys_rounds = 0;
    for (size_t t = 0; stride > 0 && t < sizeof(traced) / sizeof(traced[0]) && !failures && !no_ptrace; t++) {
        int ended = 0;
        for (int k = 1; k <= 200 && ended < 2 && !failures && !no_ptrace;
             k += stride, round++, sys_rounds++) {
            bool inside = false;
            if (!run_round(round, KILL_SYSCALL, traced[t], k, &inside))
                break;
            ended = inside ? 0 : ended + 1;
        }
    }
    printf("killed in:");
    for (int i = 0; i < OP_COUNT; i++)
        if (killed_in[i])
            printf(" %s %d", op_names[i], killed_in[i]);
    printf("\n");
    teardown_snapshots();
    remove_base();
    munmap(sh, sizeof(*sh));
    printf("%d rounds (%d at syscalls) in %.1f s, %.1f s of it checking\n", round, sys_rounds,
           (double)(now_ns() - start) / 1e9, (double)check_ns / 1e9);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
