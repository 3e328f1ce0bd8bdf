/* The logger: formats a whole line in memory, then writes it once under a lock. */
#include "vs_log.h"
#include "vs_error.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int threshold = VS_LOG_INFO;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *vs_log_level_name(enum vs_log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : "unknown";
}

int vs_log_set_level(const char *name)
{
    if (!name)
        return -EINVAL;
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(name, level_names[i])) {
            atomic_store_explicit(&threshold, i, memory_order_relaxed);
            return 0;
        }
    }
    if (!strcasecmp(name, "warning")) {
        atomic_store_explicit(&threshold, VS_LOG_WARN, memory_order_relaxed);
        return 0;
    }
    return -EINVAL;
}

enum vs_log_level vs_log_get_level(void)
{
    return (enum vs_log_level)atomic_load_explicit(&threshold, memory_order_relaxed);
}

bool vs_log_enabled(enum vs_log_level level)
{
    return (int)level >= atomic_load_explicit(&threshold, memory_order_relaxed);
}

/* A line being built: a stack buffer, then the heap for long lines; a failed allocation cuts the line. */
struct line {
    char *data;
    size_t len, cap;
    bool heap, cut;
    char stack[1024];
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->cut)
        return;
    if (l->len + n > l->cap) {
        size_t cap = l->cap * 2;
        while (cap < l->len + n)
            cap *= 2;
        char *data = l->heap ? realloc(l->data, cap) : malloc(cap);
        if (!data) {
            n = l->cap - l->len;
            l->cut = true;
        } else {
            if (!l->heap)
                memcpy(data, l->data, l->len);
            l->data = data;
            l->cap = cap;
            l->heap = true;
        }
    }
    memcpy(l->data + l->len, s, n);
    l->len += n;
}

static void put_str(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static bool needs_quotes(const char *value)
{
    if (!*value || !strcmp(value, "null"))
        return true;
    const unsigned char *s = (const unsigned char *)value;
    size_t n = strlen(value);
    for (size_t i = 0; i < n;) {
        if (s[i] <= ' ' || s[i] == '=' || s[i] == '"' || s[i] == 0x7f)
            return true;
        uint32_t cp;
        size_t len = vs_utf8_decode(s + i, n - i, &cp);
        if (!len)
            return true;
        i += len;
    }
    return false;
}

static void put_value(struct line *l, const char *value)
{
    if (!value) {
        put_str(l, "null");
        return;
    }
    if (!needs_quotes(value)) {
        put_str(l, value);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)value;
    size_t n = strlen(value);
    put(l, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] != 0x7f && s[run] != '"' && s[run] != '\\' &&
               s[run] < 0x80)
            run++;
        put(l, value + i, run - i);
        i = run;
        if (i == n)
            break;
        unsigned char c = s[i];
        if (c >= 0x80) {
            uint32_t cp;
            size_t len = vs_utf8_decode(s + i, n - i, &cp);
            if (len)
                put(l, value + i, len);
            else
                put_str(l, "\\ufffd");
            i += len ? len : 1;
            continue;
        }
        char esc[7] = {'\\', 0};
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
        }
        put_str(l, esc);
        i++;
    }
    put(l, "\"", 1);
}

static void put_key(struct line *l, const char *key)
{
    if (!*key) {
        put(l, "_", 1);
        return;
    }
    for (const unsigned char *k = (const unsigned char *)key; *k; k++) {
        char c = *k <= ' ' || *k == '=' || *k == '"' || *k >= 0x7f ? '_' : (char)*k;
        put(l, &c, 1);
    }
}

static void line_start(struct line *l, enum vs_log_level level, const char *msg)
{
    l->data = l->stack;
    l->len = 0;
    l->cap = sizeof(l->stack);
    l->heap = l->cut = false;
    struct timespec now;
    struct tm tm;
    char stamp[64];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(stamp, sizeof(stamp), "time=%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ level=", now.tv_nsec / 1000000);
    put_str(l, stamp);
    put_str(l, vs_log_level_name(level));
    put_str(l, " msg=");
    put_value(l, msg);
}

static void put_field(struct line *l, const char *key, const char *value)
{
    put(l, " ", 1);
    put_key(l, key);
    put(l, "=", 1);
    put_value(l, value);
}

static void line_finish(struct line *l)
{
    if (l->cut) {
        l->len = l->cap - 1; /* cut short by a failed allocation: keep room for the newline */
        l->data[l->len++] = '\n';
    } else {
        put(l, "\n", 1);
    }
    pthread_mutex_lock(&write_lock);
    for (size_t off = 0; off < l->len;) {
        ssize_t n = write(STDERR_FILENO, l->data + off, l->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    pthread_mutex_unlock(&write_lock);
    if (l->heap)
        free(l->data);
}

void vs_logv(enum vs_log_level level, const char *msg, va_list ap)
{
    if (!vs_log_enabled(level))
        return;
    int saved = errno;
    struct line l;
    line_start(&l, level, msg);
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (!key)
            break;
        put_field(&l, key, va_arg(ap, const char *));
    }
    line_finish(&l);
    errno = saved;
}

void vs_log(enum vs_log_level level, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    vs_logv(level, msg, ap);
    va_end(ap);
}

void vs_log_fields(enum vs_log_level level, const char *msg, const struct vs_log_field *fields, size_t n)
{
    if (!vs_log_enabled(level))
        return;
    int saved = errno;
    struct line l;
    line_start(&l, level, msg);
    for (size_t i = 0; i < n; i++)
        if (fields[i].key)
            put_field(&l, fields[i].key, fields[i].value);
    line_finish(&l);
    errno = saved;
}
