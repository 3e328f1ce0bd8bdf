/* containerd's filter syntax for Walk/List, as its filters package reads it:
 *   selectors := selector ("," selector)*      (all must match)
 *   selector  := fieldpath [operator value]    (no operator: the field is present)
 *   fieldpath := field ("." field)*            field := quoted | [A-Za-z0-9_]+
 *   operator  := "==" | "!=" | "~="            value := quoted | [^\s,]+
 *   quoted    := Go string syntax in "..."; for ~= also /.../ and |...|
 * Several filter strings are ORed. Fields of a snapshot: name, parent, kind (active|view|committed), labels.<key>
 * (the rest of the path joined with "."). Regular expressions are POSIX extended (regcomp), unanchored. */
#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "snapshotter/snapshot_internal.h"

enum filter_op { OP_PRESENT, OP_EQ, OP_NE, OP_MATCH };

struct selector {
    char **path;
    size_t path_len;
    enum filter_op op;
    char *value;
    regex_t re;
    bool has_re;
};

struct conjunction {
    struct selector *sel;
    size_t count;
};

struct snap_filter {
    struct conjunction *any;
    size_t count;
};

struct parser {
    const char *in;
    size_t pos;
    struct vs_error *err;
};

static int perr(struct parser *p, const char *what)
{
    return vs_fail(p->err, -EINVAL, "filter '%s': %s at offset %zu", p->in, what, p->pos);
}

static void skip_space(struct parser *p)
{
    while (p->in[p->pos] && isspace((unsigned char)p->in[p->pos]))
        p->pos++;
}

static bool is_field_char(char c)
{
    return c == '_' || isalnum((unsigned char)c);
}

static bool is_quote(char c)
{
    return c == '"' || c == '/' || c == '|';
}

/* Appends the UTF-8 encoding of code point cp. */
static size_t put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A quoted string at p->pos (Go escapes; the quote character escapes itself) into a new string. */
static int parse_quoted(struct parser *p, bool allow_alt, char **out)
{
    char quote = p->in[p->pos];
    if (!allow_alt && quote != '"')
        return perr(p, "only \"...\" quotes are allowed here (/.../ and |...| only after ~=)");
    size_t start = p->pos++;
    char *buf = malloc(strlen(p->in + start) * 4 + 1);
    if (!buf)
        return vs_fail(p->err, -ENOMEM, "out of memory");
    size_t n = 0;
    for (;;) {
        char c = p->in[p->pos];
        if (c == '\0' || c == '\n') {
            free(buf);
            return perr(p, "unterminated quoted string");
        }
        p->pos++;
        if (c == quote)
            break;
        if (c != '\\') {
            buf[n++] = c;
            continue;
        }
        char e = p->in[p->pos++];
        int digits = 0, base = 16;
        switch (e) {
        case 'a': buf[n++] = '\a'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'v': buf[n++] = '\v'; break;
        case '\\': buf[n++] = '\\'; break;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default:
            if (e == quote) {
                buf[n++] = e;
            } else if (e >= '0' && e <= '7') {
                base = 8;
                digits = 3;
                p->pos--;
            } else {
                free(buf);
                p->pos--;
                return perr(p, "unknown escape sequence in quoted string");
            }
        }
        if (digits) {
            unsigned long v = 0;
            for (int i = 0; i < digits; i++) {
                int d = vs_hex_digit(p->in[p->pos]);
                if (d < 0 || d >= base) {
                    free(buf);
                    return perr(p, "bad escape digits in quoted string");
                }
                v = v * (unsigned long)base + (unsigned long)d;
                p->pos++;
            }
            if (e == 'x' || base == 8) {
                if (v > 255) {
                    free(buf);
                    return perr(p, "octal escape value > 255 in quoted string");
                }
                buf[n++] = (char)v;
            } else {
                if (v > 0x10ffff || (v >= 0xd800 && v < 0xe000)) {
                    free(buf);
                    return perr(p, "invalid Unicode escape in quoted string");
                }
                n += put_utf8(buf + n, v);
            }
        }
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

static int parse_field(struct parser *p, char **out)
{
    skip_space(p);
    char c = p->in[p->pos];
    if (is_quote(c))
        return parse_quoted(p, false, out);
    size_t start = p->pos;
    while (is_field_char(p->in[p->pos]))
        p->pos++;
    if (p->pos == start)
        return perr(p, "expected a field name or a quoted string");
    *out = strndup(p->in + start, p->pos - start);
    return *out ? 0 : vs_fail(p->err, -ENOMEM, "out of memory");
}

static int parse_value(struct parser *p, bool allow_alt, char **out)
{
    skip_space(p);
    char c = p->in[p->pos];
    if (c == '\0')
        return perr(p, "expected a value after the operator");
    if (is_quote(c))
        return parse_quoted(p, allow_alt, out);
    if (c == ',' || c == '.' || c == '=' || c == '!' || c == '~')
        return perr(p, "expected a value or a quoted string");
    size_t start = p->pos;
    while (p->in[p->pos] && p->in[p->pos] != ',' && !isspace((unsigned char)p->in[p->pos]))
        p->pos++;
    *out = strndup(p->in + start, p->pos - start);
    return *out ? 0 : vs_fail(p->err, -ENOMEM, "out of memory");
}

static void selector_free(struct selector *s)
{
    for (size_t i = 0; i < s->path_len; i++)
        free(s->path[i]);
    free(s->path);
    free(s->value);
    if (s->has_re)
        regfree(&s->re);
}

static int parse_selector(struct parser *p, struct selector *sel)
{
    memset(sel, 0, sizeof(*sel));
    for (;;) {
        char *f = NULL;
        int rc = parse_field(p, &f);
        if (rc < 0)
            return rc;
        char **grown = realloc(sel->path, (sel->path_len + 1) * sizeof(*grown));
        if (!grown) {
            free(f);
            return vs_fail(p->err, -ENOMEM, "out of memory");
        }
        sel->path = grown;
        sel->path[sel->path_len++] = f;
        skip_space(p);
        if (p->in[p->pos] != '.')
            break;
        p->pos++;
    }
    skip_space(p);
    char c = p->in[p->pos];
    if (c == ',' || c == '\0') {
        sel->op = OP_PRESENT;
        return 0;
    }
    size_t start = p->pos;
    while (p->in[p->pos] == '=' || p->in[p->pos] == '!' || p->in[p->pos] == '~')
        p->pos++;
    size_t oplen = p->pos - start;
    if (oplen == 2 && strncmp(p->in + start, "==", 2) == 0)
        sel->op = OP_EQ;
    else if (oplen == 2 && strncmp(p->in + start, "!=", 2) == 0)
        sel->op = OP_NE;
    else if (oplen == 2 && strncmp(p->in + start, "~=", 2) == 0)
        sel->op = OP_MATCH;
    else {
        p->pos = start;
        return perr(p, oplen ? "unsupported operator (expected ==, != or ~=)"
                             : "expected an operator (==, != or ~=), a ',' or the end");
    }
    int rc = parse_value(p, sel->op == OP_MATCH, &sel->value);
    if (rc < 0)
        return rc;
    if (sel->op == OP_MATCH) {
        int r = regcomp(&sel->re, sel->value, REG_EXTENDED | REG_NOSUB);
        if (r != 0) {
            char msg[256];
            regerror(r, &sel->re, msg, sizeof(msg));
            return vs_fail(p->err, -EINVAL, "filter '%s': bad regular expression '%s': %s", p->in, sel->value, msg);
        }
        sel->has_re = true;
    }
    return 0;
}

static int parse_one(const char *in, struct conjunction *c, struct vs_error *err)
{
    memset(c, 0, sizeof(*c));
    struct parser p = {in, 0, err};
    skip_space(&p);
    if (in[p.pos] == '\0')
        return 0; /* empty: matches everything */
    for (;;) {
        struct selector *grown = realloc(c->sel, (c->count + 1) * sizeof(*grown));
        if (!grown)
            return vs_fail(err, -ENOMEM, "out of memory");
        c->sel = grown;
        int rc = parse_selector(&p, &c->sel[c->count]);
        c->count++;
        if (rc < 0)
            return rc;
        skip_space(&p);
        if (in[p.pos] == '\0')
            return 0;
        if (in[p.pos] != ',')
            return perr(&p, "unexpected input (expected ',' or the end)");
        p.pos++;
    }
}

void snap_filter_free(struct snap_filter *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->count; i++) {
        for (size_t j = 0; j < f->any[i].count; j++)
            selector_free(&f->any[i].sel[j]);
        free(f->any[i].sel);
    }
    free(f->any);
    free(f);
}

int snap_filter_parse(const char *const *filters, size_t count, struct snap_filter **out, struct vs_error *err)
{
    *out = NULL;
    struct snap_filter *f = calloc(1, sizeof(*f));
    if (!f || (count && !(f->any = calloc(count, sizeof(*f->any))))) {
        free(f);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < count; i++) {
        int rc = parse_one(filters[i] ? filters[i] : "", &f->any[i], err);
        f->count++;
        if (rc < 0) {
            snap_filter_free(f);
            return rc;
        }
    }
    *out = f;
    return 0;
}

/* The value of a field path for a snapshot, as containerd's snapshot adaptor answers it. */
static const char *field_value(const struct snapshot_info *info, const struct selector *s, char *joined,
                               size_t cap)
{
    const char *f = s->path[0];
    if (strcmp(f, "name") == 0)
        return s->path_len == 1 ? info->name : NULL;
    if (strcmp(f, "parent") == 0)
        return s->path_len == 1 ? (info->parent ? info->parent : "") : NULL;
    if (strcmp(f, "kind") == 0) {
        if (s->path_len != 1)
            return NULL;
        switch (info->kind) {
        case SNAPSHOT_KIND_ACTIVE: return "active";
        case SNAPSHOT_KIND_VIEW: return "view";
        case SNAPSHOT_KIND_COMMITTED: return "committed";
        default: return NULL;
        }
    }
    if (strcmp(f, "labels") == 0 && s->path_len > 1) {
        size_t n = 0;
        for (size_t i = 1; i < s->path_len; i++) {
            size_t l = strlen(s->path[i]);
            if (n + l + 2 > cap)
                return NULL;
            if (i > 1)
                joined[n++] = '.';
            memcpy(joined + n, s->path[i], l);
            n += l;
        }
        joined[n] = '\0';
        for (size_t i = 0; i < info->label_count; i++)
            if (strcmp(info->labels[i].key, joined) == 0)
                return info->labels[i].value;
    }
    return NULL;
}

static bool selector_match(const struct selector *s, const struct snapshot_info *info)
{
    char joined[4200];
    const char *v = field_value(info, s, joined, sizeof(joined));
    switch (s->op) {
    case OP_PRESENT: return v != NULL;
    case OP_EQ: return v && strcmp(v, s->value) == 0;
    case OP_NE: return strcmp(v ? v : "", s->value) != 0;
    case OP_MATCH: return regexec(&s->re, v ? v : "", 0, NULL, 0) == 0; /* containerd matches "" when absent */
    }
    return false;
}

bool snap_filter_match(const struct snap_filter *f, const struct snapshot_info *info)
{
    if (!f || f->count == 0)
        return true;
    for (size_t i = 0; i < f->count; i++) {
        bool all = true;
        for (size_t j = 0; j < f->any[i].count && all; j++)
            all = selector_match(&f->any[i].sel[j], info);
        if (all)
            return true;
    }
    return false;
}
