/* vs_log tests: stderr is captured through a pipe (dup2) and every line is compared byte for byte with the
 * line go-logfmt would write for the same fields (the expected strings are worked out by hand from its
 * quoting rules); the time stamp is checked against the clock; thresholds; one intact line per call from
 * concurrent threads. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/vs_log.h"

/* Failures go to stdout: the tests capture stderr. */
#define VS_TEST_OUT stdout
#include "tests/lib/vs_test.h"

/* ---- Capturing stderr: a pipe on fd 2 drained by a thread, so writers never block on a full pipe ---- */

static struct {
    int saved, read_fd;
    pthread_t reader;
    char *data;
    size_t len, cap;
} cap;

static void *drain(void *arg)
{
    (void)arg;
    for (;;) {
        if (cap.len + 4096 > cap.cap) {
            cap.cap = cap.cap ? cap.cap * 2 : 65536;
            cap.data = realloc(cap.data, cap.cap);
        }
        ssize_t n = read(cap.read_fd, cap.data + cap.len, cap.cap - cap.len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        cap.len += (size_t)n;
    }
    return NULL;
}

static void capture_begin(void)
{
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(1);
    }
    fflush(stderr);
    cap.saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    cap.read_fd = fds[0];
    cap.len = 0;
    pthread_create(&cap.reader, NULL, drain, NULL);
}

/* Restores stderr and returns everything written to it since capture_begin (NUL-terminated, until the next
 * call). */
static const char *capture_end(void)
{
    dup2(cap.saved, STDERR_FILENO); /* closes the last write end of the pipe: the reader sees end of file */
    close(cap.saved);
    pthread_join(cap.reader, NULL);
    close(cap.read_fd);
    if (!cap.data)
        cap.data = calloc(1, 1);
    cap.data[cap.len] = '\0';
    return cap.data;
}

/* Checks "time=YYYY-MM-DDTHH:MM:SS.mmmZ " within a few seconds of now, and returns what follows it. */
static const char *after_time(const char *line)
{
    struct tm tm = {0};
    int ms = -1;
    char z = 0;
    if (strncmp(line, "time=", 5) || strlen(line) < 30 || line[29] != ' ') {
        CHECK(0, "no time stamp in %s", line);
        return line;
    }
    char stamp[25];
    memcpy(stamp, line + 5, 24);
    stamp[24] = '\0';
    const char *rest = strptime(stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    CHECK(rest && sscanf(rest, ".%3d%c", &ms, &z) == 2 && z == 'Z' && ms >= 0 && ms <= 999 &&
              rest[1] >= '0' && rest[3] <= '9',
          "bad time stamp %s", stamp);
    time_t when = timegm(&tm), now = time(NULL);
    CHECK(when <= now && now - when < 5, "time stamp %s is %lld s off", stamp, (long long)(now - when));
    return line + 30;
}

/* Captures one call; compares the line after its time stamp with want (which has no final newline). */
#define EXPECT_LINE(want, call)                                                                              \
    do {                                                                                                     \
        capture_begin();                                                                                     \
        call;                                                                                                \
        const char *got_ = capture_end();                                                                    \
        size_t n_ = strlen(got_);                                                                            \
        CHECK(n_ > 0 && got_[n_ - 1] == '\n' && !memchr(got_, '\n', n_ - 1), "not one line: [%s]", got_);    \
        char *line_ = strndup(got_, n_ ? n_ - 1 : 0);                                                        \
        const char *tail_ = after_time(line_);                                                               \
        CHECK(!strcmp(tail_, want), "\n  got  [%s]\n  want [%s]", tail_, want);                              \
        free(line_);                                                                                         \
    } while (0)

#define EXPECT_NOTHING(call)                                                                                 \
    do {                                                                                                     \
        capture_begin();                                                                                     \
        call;                                                                                                \
        const char *got_ = capture_end();                                                                    \
        CHECK(!*got_, "expected no output, got [%s]", got_);                                                 \
    } while (0)

static void test_format(void)
{
    EXPECT_LINE("level=info msg=\"snapshot prepared\" key=k1 namespace=default rpc=Prepare",
                vs_log(VS_LOG_INFO, "snapshot prepared", "key", "k1", "namespace", "default", "rpc",
                       "Prepare", NULL));
    EXPECT_LINE("level=error msg=started", vs_log(VS_LOG_ERROR, "started", NULL));
    EXPECT_LINE("level=warn msg=null", vs_log(VS_LOG_WARN, NULL, NULL));
    EXPECT_LINE("level=info msg=\"\" a=null b=\"\"",
                vs_log(VS_LOG_INFO, "", "a", (const char *)NULL, "b", "", NULL));

    /* Values: bare unless they need quotes; quoted ones escaped as go-logfmt does. */
    static const struct {
        const char *value, *want;
    } values[] = {
        {"plain", "plain"},
        {"/var/lib/veritysnap/layers/sha256:ab@c+d", "/var/lib/veritysnap/layers/sha256:ab@c+d"},
        {"", "\"\""},
        {"null", "\"null\""},
        {"Null", "Null"},
        {"a b", "\"a b\""},
        {"a=b", "\"a=b\""},
        {"say \"hi\"", "\"say \\\"hi\\\"\""},
        {"\"", "\"\\\"\""},
        {"back\\slash", "back\\slash"},
        {"back\\slash x", "\"back\\\\slash x\""},
        {"line\nbreak", "\"line\\nbreak\""},
        {"cr\rtab\t", "\"cr\\rtab\\t\""},
        {"\x01\x1f\x7f", "\"\\u0001\\u001f\\u007f\""},
        {"\x1b[31mred", "\"\\u001b[31mred\""},
        {"caf\xc3\xa9", "caf\xc3\xa9"},
        {"\xe2\x80\xa8", "\xe2\x80\xa8"},
        {"caf\xc3\xa9 au lait", "\"caf\xc3\xa9 au lait\""},
        {"bad\xff", "\"bad\\ufffd\""},
        {"cut\xc3", "\"cut\\ufffd\""},
        {"\xc0\x80", "\"\\ufffd\\ufffd\""},
        {"\xed\xa0\x80x", "\"\\ufffd\\ufffd\\ufffdx\""},
        {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
    };
    for (size_t i = 0; i < sizeof(values) / sizeof(*values); i++) {
        char want[256];
        snprintf(want, sizeof(want), "level=info msg=m v=%s", values[i].want);
        EXPECT_LINE(want, vs_log(VS_LOG_INFO, "m", "v", values[i].value, NULL));
    }
    EXPECT_LINE("level=info msg=\"a \\\"quoted\\\" message\\n\"",
                vs_log(VS_LOG_INFO, "a \"quoted\" message\n", NULL));

    /* Keys are never quoted: what logfmt cannot carry in a key becomes '_'. */
    EXPECT_LINE("level=info msg=m bad_key=1 a_b=2 _=3 q_=4 __=5 tab_=6",
                vs_log(VS_LOG_INFO, "m", "bad key", "1", "a=b", "2", "", "3", "q\"", "4", "\xc3\xa9", "5",
                       "tab\t", "6", NULL));

    /* The array form; NULL keys are skipped. */
    struct vs_log_field fields[] = {{"layer", "sha256:00ff"}, {NULL, "skipped"}, {"error", "No such file"}};
    EXPECT_LINE("level=error msg=\"convert failed\" layer=sha256:00ff error=\"No such file\"",
                vs_log_fields(VS_LOG_ERROR, "convert failed", fields, 3));
    EXPECT_LINE("level=info msg=m", vs_log_fields(VS_LOG_INFO, "m", NULL, 0));

    /* Lines longer than the stack buffer. */
    char *big = malloc(20001);
    memset(big, 'x', 20000);
    big[20000] = '\0';
    big[10000] = ' ';
    char *want = malloc(20100);
    snprintf(want, 20100, "level=info msg=m big=\"%s\" after=1", big);
    EXPECT_LINE(want, vs_log(VS_LOG_INFO, "m", "big", big, "after", "1", NULL));
    free(want);
    free(big);

    /* Logging does not disturb errno. */
    capture_begin();
    errno = ENOENT;
    vs_log(VS_LOG_ERROR, "m", NULL);
    int saved = errno;
    capture_end();
    CHECK(saved == ENOENT, "errno changed to %d", saved);
}

static void test_levels(void)
{
    CHECK(vs_log_get_level() == VS_LOG_INFO, "default threshold %d", vs_log_get_level());
    EXPECT_NOTHING(vs_log(VS_LOG_DEBUG, "hidden", "k", "v", NULL));
    CHECK(!vs_log_enabled(VS_LOG_DEBUG) && vs_log_enabled(VS_LOG_INFO) && vs_log_enabled(VS_LOG_ERROR),
          "enabled");

    CHECK(vs_log_set_level("debug") == 0, "debug");
    CHECK(vs_log_get_level() == VS_LOG_DEBUG && vs_log_enabled(VS_LOG_DEBUG), "debug threshold");
    EXPECT_LINE("level=debug msg=shown", vs_log(VS_LOG_DEBUG, "shown", NULL));

    CHECK(vs_log_set_level("WARN") == 0 && vs_log_get_level() == VS_LOG_WARN, "WARN");
    EXPECT_NOTHING(vs_log(VS_LOG_INFO, "hidden", NULL));
    EXPECT_NOTHING(vs_log_fields(VS_LOG_DEBUG, "hidden", NULL, 0));
    EXPECT_LINE("level=warn msg=shown", vs_log(VS_LOG_WARN, "shown", NULL));
    CHECK(vs_log_set_level("info") == 0 && vs_log_set_level("Warning") == 0 &&
              vs_log_get_level() == VS_LOG_WARN,
          "warning alias");
    CHECK(vs_log_set_level("error") == 0 && vs_log_get_level() == VS_LOG_ERROR, "error");
    EXPECT_NOTHING(vs_log(VS_LOG_WARN, "hidden", NULL));

    const char *unknown[] = {"verbose", "", "trace", "fatal", "info ", "inf", NULL};
    for (size_t i = 0; unknown[i]; i++)
        CHECK(vs_log_set_level(unknown[i]) == -EINVAL, "\"%s\" accepted", unknown[i]);
    CHECK(vs_log_set_level(NULL) == -EINVAL, "NULL accepted");
    CHECK(vs_log_get_level() == VS_LOG_ERROR, "a rejected name changed the threshold");

    CHECK(!strcmp(vs_log_level_name(VS_LOG_DEBUG), "debug") &&
              !strcmp(vs_log_level_name(VS_LOG_WARN), "warn") &&
              !strcmp(vs_log_level_name((enum vs_log_level)9), "unknown"),
          "level names");
    vs_log_set_level("info");
}

/* Threads logging at once: every line must come out whole (one write per line, under the logger's lock). */
enum { THREADS = 8, LINES = 2000 };

static void *writer(void *arg)
{
    long id = (long)arg;
    char thread[16], seq[16], pad[301];
    memset(pad, 'a' + (int)id, 300);
    pad[300] = '\0';
    snprintf(thread, sizeof(thread), "%ld", id);
    for (int i = 0; i < LINES; i++) {
        snprintf(seq, sizeof(seq), "%d", i);
        vs_log(VS_LOG_INFO, "concurrent line", "thread", thread, "seq", seq, "pad", pad, NULL);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t threads[THREADS];
    capture_begin();
    for (long t = 0; t < THREADS; t++)
        pthread_create(&threads[t], NULL, writer, (void *)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(threads[t], NULL);
    char *out = strdup(capture_end());
    int next[THREADS] = {0}, lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        int id = -1, seq = -1, used = 0;
        const char *tail = after_time(line);
        if (sscanf(tail, "level=info msg=\"concurrent line\" thread=%d seq=%d pad=%n", &id, &seq, &used) !=
                2 ||
            id < 0 || id >= THREADS) {
            CHECK(0, "mangled line: %.80s", line);
            break;
        }
        CHECK(seq == next[id], "thread %d: line %d after %d", id, seq, next[id] - 1);
        next[id] = seq + 1;
        const char *pad = tail + used;
        CHECK(strlen(pad) == 300 && strspn(pad, (char[]){(char)('a' + id), 0}) == 300, "thread %d: torn pad",
              id);
        if (failures)
            break;
    }
    CHECK(lines == THREADS * LINES, "%d lines, want %d", lines, THREADS * LINES);
    free(out);
}

int main(void)
{
    test_levels();
    test_format();
    test_threads();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("vs_log: all checks passed\n");
    return 0;
}
