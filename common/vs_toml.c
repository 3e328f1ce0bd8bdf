/* The config file reader: one pass that checks the encoding first, then a line-oriented recursive descent
 * (header, key/value or blank per line) building tables with a hash index so big files stay linear. */
#include "vs_toml.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum toml_kind { KIND_STRING, KIND_INT, KIND_BOOL, KIND_STRING_ARRAY, KIND_TABLE, KIND_TABLE_ARRAY };

struct toml_entry {
    char *key;
    int line;
    enum toml_kind kind;
    union {
        char *string;
        int64_t integer;
        bool boolean;
        struct {
            char **items; /* NULL-terminated */
            size_t count;
        } strings;
        struct vs_toml_table *table;
        struct {
            struct vs_toml_table **items;
            size_t count, cap;
        } tables;
    } v;
};

struct vs_toml_table {
    const struct vs_toml *doc;
    char *name;
    int line;
    int depth;
    bool defined; /* by its own header, or as an array element (vs implicitly, as the parent in [a.b]) */
    bool array_element;
    struct toml_entry *entries; /* in file order */
    size_t count, cap;
    uint32_t *index;  /* open addressing: entry position + 1, 0 for an empty slot */
    size_t index_cap; /* a power of two, at least twice count */
};

struct vs_toml {
    char *source;
    struct vs_toml_table *root;
};

static const char *kind_name(enum toml_kind kind)
{
    switch (kind) {
    case KIND_STRING:
        return "a string";
    case KIND_INT:
        return "an integer";
    case KIND_BOOL:
        return "a boolean";
    case KIND_STRING_ARRAY:
        return "an array of strings";
    case KIND_TABLE:
        return "a table";
    case KIND_TABLE_ARRAY:
        return "an array of tables";
    }
    return "a value";
}

static bool is_bare(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* ---- Growable byte buffer ---- */

struct strbuf {
    char *data;
    size_t len, cap;
};

static int sb_put(struct strbuf *sb, const void *bytes, size_t n)
{
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 32;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *data = realloc(sb->data, cap);
        if (!data)
            return -ENOMEM;
        sb->data = data;
        sb->cap = cap;
    }
    memcpy(sb->data + sb->len, bytes, n);
    sb->len += n;
    sb->data[sb->len] = '\0';
    return 0;
}

/* A key as a header spells it: bare when it can be, else a basic string with escapes. */
static int sb_put_key(struct strbuf *sb, const char *key)
{
    bool bare = *key != '\0';
    for (const char *k = key; *k; k++)
        bare = bare && is_bare((unsigned char)*k);
    if (bare)
        return sb_put(sb, key, strlen(key));
    int rc = sb_put(sb, "\"", 1);
    for (const unsigned char *k = (const unsigned char *)key; *k && !rc; k++) {
        if (*k == '"' || *k == '\\') {
            char esc[2] = {'\\', (char)*k};
            rc = sb_put(sb, esc, 2);
        } else if (*k < 0x20 || *k == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", *k);
            rc = sb_put(sb, esc, 6);
        } else {
            rc = sb_put(sb, k, 1);
        }
    }
    return rc ? rc : sb_put(sb, "\"", 1);
}

/* A key for a message: quoted and escaped as in a header, cut at about 80 bytes. */
static const char *quoted_key(const char *key, char *buf, size_t cap)
{
    struct strbuf sb = {0};
    char shortened[84];
    size_t len = strlen(key);
    if (len > 80) {
        len = 77;
        while (len > 0 && ((unsigned char)key[len] & 0xc0) == 0x80)
            len--;
        memcpy(shortened, key, len);
        memcpy(shortened + len, "...", 4);
        key = shortened;
    }
    int rc = sb_put(&sb, "\"", 1);
    struct strbuf inner = {0};
    if (!rc)
        rc = sb_put_key(&inner, key);
    if (!rc) {
        /* sb_put_key quotes only keys that need it; a message always quotes. */
        const char *s = inner.data;
        size_t n = inner.len;
        if (n >= 2 && s[0] == '"') {
            s++;
            n -= 2;
        }
        rc = sb_put(&sb, s, n);
    }
    if (!rc)
        rc = sb_put(&sb, "\"", 1);
    snprintf(buf, cap, "%s", rc ? "\"?\"" : sb.data);
    free(inner.data);
    free(sb.data);
    return buf;
}

/* " in [name]", " in [[name]]" or "" for the root, for messages. */
static const char *where(const struct vs_toml_table *t, char *buf, size_t cap)
{
    if (t->depth == 0)
        snprintf(buf, cap, "%s", "");
    else if (t->array_element)
        snprintf(buf, cap, " in [[%s]]", t->name);
    else
        snprintf(buf, cap, " in [%s]", t->name);
    return buf;
}

/* ---- Tables ---- */

static uint32_t key_hash(const char *key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *k = (const unsigned char *)key; *k; k++)
        h = (h ^ *k) * 16777619u;
    return h;
}

static struct toml_entry *table_find(const struct vs_toml_table *t, const char *key)
{
    if (!t->index_cap)
        return NULL;
    size_t mask = t->index_cap - 1;
    for (size_t i = key_hash(key) & mask;; i = (i + 1) & mask) {
        uint32_t slot = t->index[i];
        if (!slot)
            return NULL;
        if (!strcmp(t->entries[slot - 1].key, key))
            return &t->entries[slot - 1];
    }
}

static void index_insert(uint32_t *index, size_t cap, const char *key, size_t position)
{
    size_t i = key_hash(key) & (cap - 1);
    while (index[i])
        i = (i + 1) & (cap - 1);
    index[i] = (uint32_t)(position + 1);
}

/* Appends *entry to t, taking ownership of what it points to; the caller checked that the key is new. */
static int table_add(struct vs_toml_table *t, const struct toml_entry *entry)
{
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct toml_entry *entries = realloc(t->entries, cap * sizeof(*entries));
        if (!entries)
            return -ENOMEM;
        t->entries = entries;
        t->cap = cap;
    }
    if ((t->count + 1) * 2 > t->index_cap) {
        size_t cap = t->index_cap ? t->index_cap * 2 : 16;
        uint32_t *index = calloc(cap, sizeof(*index));
        if (!index)
            return -ENOMEM;
        for (size_t n = 0; n < t->count; n++)
            index_insert(index, cap, t->entries[n].key, n);
        free(t->index);
        t->index = index;
        t->index_cap = cap;
    }
    t->entries[t->count] = *entry;
    index_insert(t->index, t->index_cap, entry->key, t->count);
    t->count++;
    return 0;
}

static struct vs_toml_table *table_new(const struct vs_toml *doc, const struct vs_toml_table *parent,
                                       const char *key, int line, bool array_element)
{
    struct vs_toml_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->doc = doc;
    t->line = line;
    t->array_element = array_element;
    t->defined = array_element;
    struct strbuf name = {0};
    int rc = sb_put(&name, "", 0);
    if (parent) {
        t->depth = parent->depth + 1;
        if (!rc && parent->depth > 0)
            rc = sb_put(&name, parent->name, strlen(parent->name));
        if (!rc && parent->depth > 0)
            rc = sb_put(&name, ".", 1);
        if (!rc)
            rc = sb_put_key(&name, key);
    }
    if (rc) {
        free(name.data);
        free(t);
        return NULL;
    }
    t->name = name.data;
    return t;
}

static void table_free(struct vs_toml_table *t);

static void entry_free(struct toml_entry *e)
{
    free(e->key);
    switch (e->kind) {
    case KIND_STRING:
        free(e->v.string);
        break;
    case KIND_STRING_ARRAY:
        for (size_t i = 0; i < e->v.strings.count; i++)
            free(e->v.strings.items[i]);
        free(e->v.strings.items);
        break;
    case KIND_TABLE:
        table_free(e->v.table);
        break;
    case KIND_TABLE_ARRAY:
        for (size_t i = 0; i < e->v.tables.count; i++)
            table_free(e->v.tables.items[i]);
        free(e->v.tables.items);
        break;
    case KIND_INT:
    case KIND_BOOL:
        break;
    }
}

static void table_free(struct vs_toml_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->count; i++)
        entry_free(&t->entries[i]);
    free(t->entries);
    free(t->index);
    free(t->name);
    free(t);
}

static int table_array_push(struct toml_entry *e, struct vs_toml_table *element)
{
    if (e->v.tables.count == e->v.tables.cap) {
        size_t cap = e->v.tables.cap ? e->v.tables.cap * 2 : 4;
        struct vs_toml_table **items = realloc(e->v.tables.items, cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        e->v.tables.items = items;
        e->v.tables.cap = cap;
    }
    e->v.tables.items[e->v.tables.count++] = element;
    return 0;
}

/* ---- Parser ---- */

struct parser {
    const char *p, *end;
    const char *line_start;
    int line;
    const struct vs_toml *doc;
    struct vs_toml_table *current;
    struct vs_error *err;
};

static int column_of(const struct parser *ps, const char *at)
{
    int column = 1;
    for (const char *q = ps->line_start; q < at; q++)
        if (((unsigned char)*q & 0xc0) != 0x80)
            column++;
    return column;
}

static int fail_at(const struct parser *ps, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(const struct parser *ps, const char *at, const char *fmt, ...)
{
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return vs_fail(ps->err, -EINVAL, "%s:%d:%d: %s", ps->doc->source, ps->line, column_of(ps, at), msg);
}

static int fail_line(const struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_line(const struct parser *ps, const char *fmt, ...)
{
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return vs_fail(ps->err, -EINVAL, "%s:%d: %s", ps->doc->source, ps->line, msg);
}

static int fail_nomem(const struct parser *ps)
{
    return vs_fail(ps->err, -ENOMEM, "%s:%d: out of memory", ps->doc->source, ps->line);
}

/* What the character at `at` is, for messages ("'x'", "U+00E9", "end of line", "end of file"). */
static const char *describe(const struct parser *ps, const char *at, char *buf, size_t cap)
{
    if (at >= ps->end)
        return "end of file";
    unsigned char c = (unsigned char)*at;
    if (c == '\n' || c == '\r')
        return "end of line";
    if (c == '\t')
        return "a tab";
    if (c < 0x80) {
        snprintf(buf, cap, "'%c'", c);
        return buf;
    }
    uint32_t cp = 0;
    vs_utf8_decode((const unsigned char *)at, (size_t)(ps->end - at), &cp);
    snprintf(buf, cap, "U+%04X", (unsigned)cp);
    return buf;
}

/* TOML text is UTF-8 without control characters other than tab and line ends; checking that once up front
 * lets the grammar below treat every byte it meets as legal text. */
static int check_encoding(struct parser *ps)
{
    const char *start = ps->p;
    while (ps->p < ps->end) {
        const unsigned char *s = (const unsigned char *)ps->p;
        uint32_t cp;
        if (*s == '\n') {
            ps->p++;
            ps->line++;
            ps->line_start = ps->p;
        } else if (*s == '\r') {
            if (ps->p + 1 >= ps->end || s[1] != '\n')
                return fail_at(ps, ps->p, "carriage return not followed by a line feed");
            ps->p++;
        } else if (*s == '\t' || (*s >= 0x20 && *s < 0x7f)) {
            ps->p++;
        } else if (*s < 0x80) {
            return fail_at(ps, ps->p, "control character U+%04X is not allowed", *s);
        } else {
            size_t n = vs_utf8_decode(s, (size_t)(ps->end - ps->p), &cp);
            if (!n)
                return fail_at(ps, ps->p, "invalid UTF-8");
            ps->p += n;
        }
    }
    ps->p = ps->line_start = start;
    ps->line = 1;
    return 0;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t'))
        ps->p++;
}

static bool at_newline(const struct parser *ps)
{
    return ps->p < ps->end && (*ps->p == '\n' || *ps->p == '\r');
}

/* Consumes one line end (LF or CRLF, already checked). */
static void take_newline(struct parser *ps)
{
    if (*ps->p == '\r')
        ps->p++;
    ps->p++;
    ps->line++;
    ps->line_start = ps->p;
}

static void skip_comment(struct parser *ps)
{
    if (ps->p < ps->end && *ps->p == '#')
        while (ps->p < ps->end && !at_newline(ps))
            ps->p++;
}

/* Whitespace, comments and line ends, as allowed between the elements of an array. */
static void skip_blank(struct parser *ps)
{
    for (;;) {
        skip_ws(ps);
        skip_comment(ps);
        if (!at_newline(ps))
            return;
        take_newline(ps);
    }
}

/* After a header or a key/value: optional whitespace and comment, then the end of the line or of the file. */
static int end_line(struct parser *ps, const char *after)
{
    char buf[16];
    skip_ws(ps);
    skip_comment(ps);
    if (ps->p == ps->end)
        return 0;
    if (!at_newline(ps))
        return fail_at(ps, ps->p, "unexpected %s after %s", describe(ps, ps->p, buf, sizeof(buf)), after);
    take_newline(ps);
    return 0;
}

static int put_utf8(struct strbuf *sb, uint32_t cp)
{
    unsigned char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (unsigned char)cp, n = 1;
    } else if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | cp >> 6), out[1] = (unsigned char)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | cp >> 12), out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f)), n = 3;
    } else {
        out[0] = (unsigned char)(0xf0 | cp >> 18), out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f)), out[3] = (unsigned char)(0x80 | (cp & 0x3f)),
        n = 4;
    }
    return sb_put(sb, out, n);
}

/* The escape after the backslash at ps->p into sb. */
static int parse_escape(struct parser *ps, struct strbuf *sb)
{
    const char *backslash = ps->p++;
    char buf[16];
    if (ps->p == ps->end || at_newline(ps))
        return fail_at(ps, backslash, "unterminated string");
    char c = *ps->p++;
    const char *simple = NULL;
    switch (c) {
    case 'b':
        simple = "\b";
        break;
    case 't':
        simple = "\t";
        break;
    case 'n':
        simple = "\n";
        break;
    case 'f':
        simple = "\f";
        break;
    case 'r':
        simple = "\r";
        break;
    case '"':
        simple = "\"";
        break;
    case '\\':
        simple = "\\";
        break;
    case 'u':
    case 'U': {
        int digits = c == 'u' ? 4 : 8;
        uint32_t cp = 0;
        for (int i = 0; i < digits; i++) {
            int d = ps->p < ps->end ? vs_hex_digit(*ps->p) : -1;
            if (d < 0)
                return fail_at(ps, backslash, "\\%c escape needs %d hexadecimal digits", c, digits);
            cp = cp << 4 | (uint32_t)d;
            ps->p++;
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return fail_at(ps, backslash, "\\%c%0*X is not a Unicode scalar value", c, digits, (unsigned)cp);
        if (cp == 0)
            return fail_at(ps, backslash, "strings holding U+0000 are not supported");
        return put_utf8(sb, cp) ? fail_nomem(ps) : 0;
    }
    default:
        return fail_at(ps, backslash, "invalid escape \\%s in a string",
                       describe(ps, ps->p - 1, buf, sizeof(buf)));
    }
    return sb_put(sb, simple, 1) ? fail_nomem(ps) : 0;
}

/* A basic ("...") or literal ('...') string at ps->p into a new *out. */
static int parse_string(struct parser *ps, char **out)
{
    const char *open = ps->p;
    char quote = *ps->p;
    if (ps->end - ps->p >= 3 && ps->p[1] == quote && ps->p[2] == quote)
        return fail_at(ps, open, "multi-line strings are not supported");
    ps->p++;
    struct strbuf sb = {0};
    int rc = sb_put(&sb, "", 0) ? fail_nomem(ps) : 0;
    while (!rc) {
        if (ps->p == ps->end || at_newline(ps)) {
            rc = fail_at(ps, open, "unterminated string");
        } else if (*ps->p == quote) {
            ps->p++;
            break;
        } else if (*ps->p == '\\' && quote == '"') {
            rc = parse_escape(ps, &sb);
        } else {
            const char *run = ps->p;
            while (ps->p < ps->end && *ps->p != quote && !at_newline(ps) && !(*ps->p == '\\' && quote == '"'))
                ps->p++;
            rc = sb_put(&sb, run, (size_t)(ps->p - run)) ? fail_nomem(ps) : 0;
        }
    }
    if (rc) {
        free(sb.data);
        return rc;
    }
    *out = sb.data;
    return 0;
}

static int parse_key(struct parser *ps, char **out)
{
    const char *start = ps->p;
    char buf[16];
    int rc;
    if (ps->p < ps->end && (*ps->p == '"' || *ps->p == '\'')) {
        rc = parse_string(ps, out);
        if (rc)
            return rc;
    } else if (ps->p < ps->end && is_bare((unsigned char)*ps->p)) {
        while (ps->p < ps->end && is_bare((unsigned char)*ps->p))
            ps->p++;
        *out = strndup(start, (size_t)(ps->p - start));
        if (!*out)
            return fail_nomem(ps);
    } else {
        return fail_at(ps, start, "expected a key, found %s", describe(ps, start, buf, sizeof(buf)));
    }
    if (!**out) {
        free(*out);
        *out = NULL;
        return fail_at(ps, start, "empty keys are not supported");
    }
    return 0;
}

/* Classifies and converts a number-like word: decimal integers only, everything else TOML calls a number is
 * named in the error so the user knows it is the subset, not the syntax, that refuses it. */
static int parse_integer(struct parser *ps, const char *word, size_t n, int64_t *out)
{
    const char *s = word, *e = word + n;
    bool negative = false;
    if (*s == '+' || *s == '-')
        negative = *s++ == '-';
    size_t rest = (size_t)(e - s);
    bool date = memchr(word, ':', n) != NULL;
    if (n >= 5 && is_digit(word[0]) && is_digit(word[1]) && is_digit(word[2]) && is_digit(word[3]) &&
        word[4] == '-')
        date = true;
    if (date)
        return fail_at(ps, word, "dates and times are not supported");
    if ((rest == 3 && (!memcmp(s, "inf", 3) || !memcmp(s, "nan", 3))) || memchr(s, '.', rest) ||
        memchr(s, 'e', rest) || memchr(s, 'E', rest))
        return fail_at(ps, word, "floats are not supported");
    if (rest >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o' || s[1] == 'b'))
        return fail_at(ps, word, "hexadecimal, octal and binary integers are not supported");
    if (rest == 0)
        return fail_at(ps, word, "invalid integer \"%.*s\"", (int)n, word);
    if (s[0] == '0' && rest > 1)
        return fail_at(ps, word, "leading zeros are not allowed in \"%.*s\"", (int)(n > 64 ? 64 : n), word);
    uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, value = 0;
    for (const char *q = s; q < e; q++) {
        if (is_digit((unsigned char)*q)) {
            unsigned d = (unsigned)(*q - '0');
            if (value > (limit - d) / 10)
                return fail_at(ps, word, "integer %.*s does not fit in 64 bits", (int)(n > 64 ? 64 : n),
                               word);
            value = value * 10 + d;
        } else if (*q == '_') {
            if (q == s || !is_digit((unsigned char)q[-1]) || q + 1 == e || !is_digit((unsigned char)q[1]))
                return fail_at(ps, word, "'_' in an integer must sit between digits");
        } else {
            return fail_at(ps, word, "invalid integer \"%.*s\"", (int)(n > 64 ? 64 : n), word);
        }
    }
    if (negative)
        *out = value == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)value;
    else
        *out = (int64_t)value;
    return 0;
}

static int parse_array(struct parser *ps, struct toml_entry *e)
{
    int open_line = ps->line, open_column = column_of(ps, ps->p);
    ps->p++;
    char **items = NULL;
    size_t count = 0, cap = 0;
    char buf[16];
    int rc = 0;
    for (;;) {
        skip_blank(ps);
        if (ps->p == ps->end) {
            rc = vs_fail(ps->err, -EINVAL, "%s:%d:%d: unterminated array", ps->doc->source, open_line,
                         open_column);
            break;
        }
        if (*ps->p == ']') {
            ps->p++;
            break;
        }
        if (*ps->p == '[') {
            rc = fail_at(ps, ps->p, "nested arrays are not supported");
            break;
        }
        if (*ps->p == '{') {
            rc = fail_at(ps, ps->p, "inline tables are not supported");
            break;
        }
        if (*ps->p != '"' && *ps->p != '\'') {
            if (*ps->p == ',')
                rc = fail_at(ps, ps->p, "expected a string or ']', found ','");
            else
                rc = fail_at(ps, ps->p, "arrays of anything but strings are not supported");
            break;
        }
        if (count + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char **nitems = realloc(items, ncap * sizeof(*nitems));
            if (!nitems) {
                rc = fail_nomem(ps);
                break;
            }
            items = nitems;
            cap = ncap;
        }
        rc = parse_string(ps, &items[count]);
        if (rc)
            break;
        count++;
        skip_blank(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
        } else if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            break;
        } else if (ps->p < ps->end) {
            rc = fail_at(ps, ps->p, "expected ',' or ']' in an array, found %s",
                         describe(ps, ps->p, buf, sizeof(buf)));
            break;
        }
    }
    if (!rc && !items) {
        items = malloc(sizeof(*items));
        if (!items)
            rc = fail_nomem(ps);
    }
    if (rc) {
        for (size_t i = 0; i < count; i++)
            free(items[i]);
        free(items);
        return rc;
    }
    items[count] = NULL;
    e->kind = KIND_STRING_ARRAY;
    e->v.strings.items = items;
    e->v.strings.count = count;
    return 0;
}

static bool is_word(unsigned char c)
{
    return is_bare(c) || c == '+' || c == '.' || c == ':';
}

static int parse_value(struct parser *ps, struct toml_entry *e)
{
    const char *start = ps->p;
    if (ps->p == ps->end || at_newline(ps) || *ps->p == '#')
        return fail_at(ps, start, "expected a value after '='");
    switch (*ps->p) {
    case '"':
    case '\'': {
        char *s = NULL;
        int rc = parse_string(ps, &s);
        if (rc)
            return rc;
        e->kind = KIND_STRING;
        e->v.string = s;
        return 0;
    }
    case '[':
        return parse_array(ps, e);
    case '{':
        return fail_at(ps, start, "inline tables are not supported; use a [table] header");
    }
    const char *q = ps->p;
    while (q < ps->end && is_word((unsigned char)*q))
        q++;
    size_t n = (size_t)(q - start);
    if (n == 4 && !memcmp(start, "true", 4)) {
        e->kind = KIND_BOOL;
        e->v.boolean = true;
    } else if (n == 5 && !memcmp(start, "false", 5)) {
        e->kind = KIND_BOOL;
        e->v.boolean = false;
    } else if (n > 0 && (is_digit((unsigned char)*start) || *start == '+' || *start == '-' ||
                         (n == 3 && (!memcmp(start, "inf", 3) || !memcmp(start, "nan", 3))))) {
        int64_t value = 0;
        int rc = parse_integer(ps, start, n, &value);
        if (rc)
            return rc;
        e->kind = KIND_INT;
        e->v.integer = value;
    } else if (n > 0) {
        return fail_at(ps, start,
                       "expected a value (a string, integer, boolean or array of strings), found \"%.*s\"",
                       (int)(n > 64 ? 64 : n), start);
    } else {
        char buf[16];
        return fail_at(ps, start, "expected a value, found %s", describe(ps, start, buf, sizeof(buf)));
    }
    ps->p = q;
    return 0;
}

static int parse_key_value(struct parser *ps)
{
    const char *start = ps->p;
    char buf[16], kbuf[100];
    struct toml_entry e = {.line = ps->line};
    int rc = parse_key(ps, &e.key);
    if (rc)
        return rc;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '.') {
        rc = fail_at(ps, start, "dotted keys are not supported; write a [table] header instead");
    } else if (ps->p == ps->end || *ps->p != '=') {
        rc = fail_at(ps, ps->p, "expected '=' after key %s, found %s", quoted_key(e.key, kbuf, sizeof(kbuf)),
                     describe(ps, ps->p, buf, sizeof(buf)));
    } else {
        const struct toml_entry *old = table_find(ps->current, e.key);
        if (old && (old->kind == KIND_TABLE || old->kind == KIND_TABLE_ARRAY))
            rc = fail_at(ps, start, "key %s is already %s defined on line %d",
                         quoted_key(e.key, kbuf, sizeof(kbuf)), kind_name(old->kind), old->line);
        else if (old)
            rc = fail_at(ps, start, "duplicate key %s (first defined on line %d)",
                         quoted_key(e.key, kbuf, sizeof(kbuf)), old->line);
    }
    if (!rc) {
        ps->p++;
        skip_ws(ps);
        rc = parse_value(ps, &e);
    }
    if (!rc && table_add(ps->current, &e))
        rc = fail_nomem(ps);
    if (rc) {
        entry_free(&e);
        return rc;
    }
    return end_line(ps, "the value");
}

/* Adds key to t as a new table, or as a new array of tables holding one element; returns that in *out. */
static int add_table(struct parser *ps, struct vs_toml_table *t, char *key, bool array,
                     struct vs_toml_table **out)
{
    struct vs_toml_table *child = table_new(ps->doc, t, key, ps->line, array);
    if (!child) {
        free(key);
        return fail_nomem(ps);
    }
    struct toml_entry e = {.key = key, .line = ps->line, .kind = array ? KIND_TABLE_ARRAY : KIND_TABLE};
    if (array) {
        if (table_array_push(&e, child)) {
            table_free(child);
            free(key);
            return fail_nomem(ps);
        }
    } else {
        e.v.table = child;
    }
    if (table_add(t, &e)) {
        entry_free(&e);
        return fail_nomem(ps);
    }
    *out = child;
    return 0;
}

static int parse_header(struct parser *ps)
{
    const char *open = ps->p++;
    bool array = ps->p < ps->end && *ps->p == '[';
    if (array)
        ps->p++;
    char *keys[VS_TOML_MAX_DEPTH];
    int depth = 0, rc = 0;
    char buf[16], kbuf[100];
    for (;;) {
        skip_ws(ps);
        if (depth == VS_TOML_MAX_DEPTH) {
            rc = fail_at(ps, ps->p, "tables nested deeper than %d levels are not supported",
                         VS_TOML_MAX_DEPTH);
            break;
        }
        rc = parse_key(ps, &keys[depth]);
        if (rc)
            break;
        depth++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == '.') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            if (array && (ps->p == ps->end || *ps->p != ']'))
                rc = fail_at(ps, ps->p, "expected ']]' to close the array of tables header");
            else if (array)
                ps->p++;
            break;
        }
        rc = fail_at(ps, ps->p, "expected '.' or '%s' in a table header, found %s", array ? "]]" : "]",
                     describe(ps, ps->p, buf, sizeof(buf)));
        break;
    }
    int header_len = (int)(ps->p - open);
    struct vs_toml_table *t = ps->doc->root;
    int i = 0;
    /* Walk the parents: create missing ones implicitly, enter the last element of arrays of tables. */
    for (; !rc && i < depth - 1; i++) {
        struct toml_entry *e = table_find(t, keys[i]);
        if (!e) {
            rc = add_table(ps, t, keys[i], false, &t);
            keys[i] = NULL;
        } else if (e->kind == KIND_TABLE) {
            t = e->v.table;
        } else if (e->kind == KIND_TABLE_ARRAY) {
            t = e->v.tables.items[e->v.tables.count - 1];
        } else {
            rc = fail_line(ps, "cannot define %.*s: key %s on line %d is %s, not a table", header_len, open,
                           quoted_key(keys[i], kbuf, sizeof(kbuf)), e->line, kind_name(e->kind));
        }
    }
    if (!rc) {
        char *key = keys[i];
        struct toml_entry *e = table_find(t, key);
        if (!e) {
            keys[i] = NULL;
            rc = add_table(ps, t, key, array, &t);
            if (!rc)
                t->defined = true;
        } else if (array && e->kind == KIND_TABLE_ARRAY) {
            struct vs_toml_table *element = table_new(ps->doc, t, key, ps->line, true);
            if (!element || table_array_push(e, element)) {
                table_free(element);
                rc = fail_nomem(ps);
            }
            t = element;
        } else if (!array && e->kind == KIND_TABLE && !e->v.table->defined) {
            t = e->v.table;
            t->defined = true;
            t->line = ps->line;
        } else if (!array && e->kind == KIND_TABLE) {
            int first = e->v.table->line;
            rc = fail_line(ps, "table %.*s is already defined on line %d", header_len, open, first);
        } else {
            rc = fail_line(ps, "cannot define %.*s: key %s on line %d is %s", header_len, open,
                           quoted_key(key, kbuf, sizeof(kbuf)), e->line, kind_name(e->kind));
        }
    }
    for (int k = 0; k < depth; k++)
        free(keys[k]);
    if (rc)
        return rc;
    ps->current = t;
    return end_line(ps, array ? "the array of tables header" : "the table header");
}

static int parse_document(struct parser *ps)
{
    if (ps->end - ps->p >= 3 && !memcmp(ps->p, "\xef\xbb\xbf", 3))
        ps->p += 3, ps->line_start = ps->p;
    int rc = check_encoding(ps);
    while (!rc && ps->p < ps->end) {
        skip_ws(ps);
        skip_comment(ps);
        if (ps->p == ps->end)
            break;
        if (at_newline(ps))
            take_newline(ps);
        else if (*ps->p == '[')
            rc = parse_header(ps);
        else
            rc = parse_key_value(ps);
    }
    return rc;
}

struct vs_toml *vs_toml_parse(const char *text, size_t len, const char *source_name, struct vs_error *err)
{
    if (!source_name)
        source_name = "<config>";
    if (!text && len) {
        vs_fail(err, -EINVAL, "%s: no text", source_name);
        return NULL;
    }
    if (len > VS_TOML_MAX_BYTES) {
        vs_fail(err, -EFBIG, "%s: %zu bytes is over the limit of %d for a config file", source_name, len,
                VS_TOML_MAX_BYTES);
        return NULL;
    }
    struct vs_toml *doc = calloc(1, sizeof(*doc));
    if (doc)
        doc->source = strdup(source_name);
    if (doc && doc->source)
        doc->root = table_new(doc, NULL, NULL, 0, false);
    if (!doc || !doc->root) {
        vs_toml_free(doc);
        vs_fail(err, -ENOMEM, "%s: out of memory", source_name);
        return NULL;
    }
    doc->root->defined = true;
    struct parser ps = {
        .p = text ? text : "",
        .end = text ? text + len : "",
        .line = 1,
        .doc = doc,
        .current = doc->root,
        .err = err,
    };
    ps.line_start = ps.p;
    if (parse_document(&ps)) {
        vs_toml_free(doc);
        return NULL;
    }
    return doc;
}

struct vs_toml *vs_toml_parse_file(const char *path, struct vs_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        vs_fail(err, -errno, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        vs_fail(err, S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    /* Read one byte past the limit to tell "exactly 1 MiB" from "more". */
    size_t cap = VS_TOML_MAX_BYTES + 1, len = 0;
    char *text = malloc(cap);
    if (!text) {
        close(fd);
        vs_fail(err, -ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    while (len < cap) {
        ssize_t n = read(fd, text + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            vs_fail(err, -errno, "%s: read failed: %s", path, strerror(errno));
            free(text);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    struct vs_toml *doc = NULL;
    if (len > VS_TOML_MAX_BYTES)
        vs_fail(err, -EFBIG, "%s: over the limit of %d bytes for a config file", path, VS_TOML_MAX_BYTES);
    else
        doc = vs_toml_parse(text, len, path, err);
    free(text);
    return doc;
}

void vs_toml_free(struct vs_toml *doc)
{
    if (!doc)
        return;
    table_free(doc->root);
    free(doc->source);
    free(doc);
}

const struct vs_toml_table *vs_toml_root(const struct vs_toml *doc)
{
    return doc ? doc->root : NULL;
}

/* ---- Lookups ---- */

static const struct toml_entry *lookup(const struct vs_toml_table *t, const char *key, enum toml_kind want,
                                       struct vs_error *err, int *rc)
{
    char kbuf[100], wbuf[600];
    if (!t || !key) {
        *rc = vs_fail(err, -EINVAL, "vs_toml: no table or key given");
        return NULL;
    }
    const struct toml_entry *e = table_find(t, key);
    if (!e) {
        if (t->line)
            *rc = vs_fail(err, -ENOENT, "%s:%d: missing key %s%s", t->doc->source, t->line,
                          quoted_key(key, kbuf, sizeof(kbuf)), where(t, wbuf, sizeof(wbuf)));
        else
            *rc = vs_fail(err, -ENOENT, "%s: missing key %s%s", t->doc->source,
                          quoted_key(key, kbuf, sizeof(kbuf)), where(t, wbuf, sizeof(wbuf)));
        return NULL;
    }
    if (e->kind != want) {
        *rc = vs_fail(err, -EINVAL, "%s:%d: key %s%s is %s, expected %s", t->doc->source, e->line,
                      quoted_key(key, kbuf, sizeof(kbuf)), where(t, wbuf, sizeof(wbuf)), kind_name(e->kind),
                      kind_name(want));
        return NULL;
    }
    *rc = 0;
    return e;
}

int vs_toml_get_table(const struct vs_toml_table *t, const char *key, const struct vs_toml_table **out,
                      struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_TABLE, err, &rc);
    if (e)
        *out = e->v.table;
    return rc;
}

int vs_toml_get_table_array(const struct vs_toml_table *t, const char *key, size_t *count,
                            struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_TABLE_ARRAY, err, &rc);
    if (e)
        *count = e->v.tables.count;
    return rc;
}

const struct vs_toml_table *vs_toml_table_array_at(const struct vs_toml_table *t, const char *key,
                                                   size_t index)
{
    const struct toml_entry *e = t && key ? table_find(t, key) : NULL;
    if (!e || e->kind != KIND_TABLE_ARRAY || index >= e->v.tables.count)
        return NULL;
    return e->v.tables.items[index];
}

int vs_toml_get_string(const struct vs_toml_table *t, const char *key, const char **out, struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_STRING, err, &rc);
    if (e)
        *out = e->v.string;
    return rc;
}

int vs_toml_get_int(const struct vs_toml_table *t, const char *key, int64_t *out, struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_INT, err, &rc);
    if (e)
        *out = e->v.integer;
    return rc;
}

int vs_toml_get_bool(const struct vs_toml_table *t, const char *key, bool *out, struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_BOOL, err, &rc);
    if (e)
        *out = e->v.boolean;
    return rc;
}

int vs_toml_get_string_array(const struct vs_toml_table *t, const char *key, const char *const **items,
                             size_t *count, struct vs_error *err)
{
    int rc;
    const struct toml_entry *e = lookup(t, key, KIND_STRING_ARRAY, err, &rc);
    if (e) {
        *items = (const char *const *)e->v.strings.items;
        *count = e->v.strings.count;
    }
    return rc;
}

int vs_toml_unknown_keys(const struct vs_toml_table *t, const char *const allowed[], struct vs_error *err)
{
    char kbuf[100], wbuf[600];
    if (!t)
        return vs_fail(err, -EINVAL, "vs_toml: no table given");
    for (size_t i = 0; i < t->count; i++) {
        const struct toml_entry *e = &t->entries[i];
        bool known = false;
        for (size_t a = 0; allowed && allowed[a] && !known; a++)
            known = !strcmp(allowed[a], e->key);
        if (known)
            continue;
        if (e->kind == KIND_TABLE)
            return vs_fail(err, -EINVAL, "%s:%d: unknown table [%s]", t->doc->source, e->line,
                           e->v.table->name);
        if (e->kind == KIND_TABLE_ARRAY)
            return vs_fail(err, -EINVAL, "%s:%d: unknown array of tables [[%s]]", t->doc->source, e->line,
                           e->v.tables.items[0]->name);
        return vs_fail(err, -EINVAL, "%s:%d: unknown key %s%s", t->doc->source, e->line,
                       quoted_key(e->key, kbuf, sizeof(kbuf)), where(t, wbuf, sizeof(wbuf)));
    }
    return 0;
}

size_t vs_toml_key_count(const struct vs_toml_table *t)
{
    return t ? t->count : 0;
}

const char *vs_toml_key_at(const struct vs_toml_table *t, size_t index)
{
    return t && index < t->count ? t->entries[index].key : NULL;
}

const char *vs_toml_table_name(const struct vs_toml_table *t)
{
    return t ? t->name : NULL;
}

int vs_toml_line(const struct vs_toml_table *t, const char *key)
{
    if (!t)
        return 0;
    if (!key)
        return t->line;
    const struct toml_entry *e = table_find(t, key);
    return e ? e->line : 0;
}

int vs_toml_fail(const struct vs_toml_table *t, const char *key, struct vs_error *err, int code,
                 const char *fmt, ...)
{
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (code > 0)
        code = -code;
    if (!t)
        return vs_fail(err, code, "%s", msg);
    int line = key ? vs_toml_line(t, key) : 0;
    if (!line)
        line = t->line;
    if (line)
        return vs_fail(err, code, "%s:%d: %s", t->doc->source, line, msg);
    return vs_fail(err, code, "%s: %s", t->doc->source, msg);
}
