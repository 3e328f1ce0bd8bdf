/* containerd's filter syntax for Walk/List, as its filters package reads it:
 *   selectors := selector ("," selector)*      (all must match)
 *   selector  := fieldpath [operator value]    (no operator: the field is present)
 *   fieldpath := field ("." field)*            field := quoted | [A-Za-z0-9_]+
 *   operator  := "==" | "!=" | "~="            value := quoted | [^\s,]+
 *   quoted    := Go string syntax in "..."; for ~= also /.../ and |...|
 * Several filter strings are ORed. Fields of a snapshot: name, parent, kind (active|view|committed),
 * labels.<key> (the rest of the path joined with "."). Regular expressions are Go's (RE2 syntax, unanchored),
 * translated to POSIX extended for regcomp: the escapes \d \w \s (and negations), \t \n \r \f \v, \xHH,
 * escaped punctuation, backslashes inside brackets, (?:...), a leading (?i) and lazy quantifiers (which
 * cannot change whether a string matches) translate; what POSIX cannot express (\b, \pL, \Q, (?m), ...) is
 * refused with INVALID_ARGUMENT rather than matched differently. */
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
        case 'a':
            buf[n++] = '\a';
            break;
        case 'b':
            buf[n++] = '\b';
            break;
        case 'f':
            buf[n++] = '\f';
            break;
        case 'n':
            buf[n++] = '\n';
            break;
        case 'r':
            buf[n++] = '\r';
            break;
        case 't':
            buf[n++] = '\t';
            break;
        case 'v':
            buf[n++] = '\v';
            break;
        case '\\':
            buf[n++] = '\\';
            break;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
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

/* ---- Go (RE2) regular expressions to POSIX extended ---- */

struct ere_buf {
    char *s;
    size_t len, cap;
    bool oom;
};

static void ere_put(struct ere_buf *b, const char *text, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *g = realloc(b->s, cap);
        if (!g) {
            b->oom = true;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
    memcpy(b->s + b->len, text, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void ere_putc(struct ere_buf *b, char c)
{
    ere_put(b, &c, 1);
}

/* A class escape (\d \w \s and negations): the bracket content without brackets, or NULL. */
static const char *class_escape(char c, bool *negated)
{
    *negated = isupper((unsigned char)c) != 0;
    switch (tolower((unsigned char)c)) {
    case 'd':
        return "0-9";
    case 'w':
        return "0-9A-Za-z_";
    case 's':
        return "\t\n\f\r ";
    default:
        return NULL;
    }
}

/* A single-character escape (\t, \x41, \., ...): the character, or -1 when c does not start one. *used is the
 * number of pattern bytes after the backslash it took. */
static int char_escape(const char *p, size_t *used)
{
    *used = 1;
    switch (p[0]) {
    case 't':
        return '\t';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 'f':
        return '\f';
    case 'v':
        return '\v';
    case 'a':
        return '\a';
    case 'x':
        if (isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])) {
            *used = 3;
            return vs_hex_digit(p[1]) * 16 + vs_hex_digit(p[2]);
        }
        return -1;
    default:
        /* Go accepts any escaped punctuation as itself. */
        return ispunct((unsigned char)p[0]) ? (unsigned char)p[0] : -1;
    }
}

/* One literal character outside brackets, escaped where ERE would read it as an operator. */
static void ere_literal(struct ere_buf *b, int c)
{
    if (c && strchr(".[]()*+?{}|^$\\", c))
        ere_putc(b, '\\');
    ere_putc(b, (char)c);
}

/* A bracket expression starting after '['; *pos ends after its ']'. POSIX reads backslashes in brackets
 * literally and wants ']' first and '-' last, so the members are collected and laid out again. */
static int translate_bracket(const char *re, size_t *pos, struct ere_buf *b, const char **why)
{
    size_t i = *pos;
    bool negate = re[i] == '^';
    if (negate)
        i++;
    struct ere_buf items = {0};
    bool close = false, dash = false, first = true;
    while (re[i] && !(re[i] == ']' && !first)) {
        first = false;
        if (re[i] == '[' && re[i + 1] == ':') { /* [:alpha:]: the same in both */
            const char *end = strstr(re + i, ":]");
            if (!end) {
                *why = "an unterminated [: class";
                free(items.s);
                return -1;
            }
            ere_put(&items, re + i, (size_t)(end + 2 - (re + i)));
            i = (size_t)(end + 2 - re);
            continue;
        }
        int c = (unsigned char)re[i];
        size_t used = 0;
        bool escaped = c == '\\';
        if (escaped) {
            bool neg;
            const char *cls = class_escape(re[i + 1], &neg);
            if (cls && neg) {
                *why = "a negated class escape (\\D, \\W, \\S) inside brackets";
                free(items.s);
                return -1;
            }
            if (cls) {
                ere_put(&items, cls, strlen(cls));
                i += 2;
                continue;
            }
            c = char_escape(re + i + 1, &used);
            if (c < 0) {
                *why = "an escape POSIX brackets cannot express";
                free(items.s);
                return -1;
            }
            i += 1 + used;
        } else {
            i++;
        }
        /* A range a-z stays as it is; a literal ']' or '-' (escaped, first or last) moves to its POSIX place.
         */
        if (c == ']')
            close = true;
        else if (c == '-' && (escaped || items.len == 0 || re[i] == ']'))
            dash = true;
        else
            ere_putc(&items, (char)c);
    }
    if (re[i] != ']') {
        *why = "an unterminated bracket expression";
        free(items.s);
        return -1;
    }
    *pos = i + 1;
    if (!negate && !close && !dash && items.len == 1 && items.s[0] == '^') {
        ere_put(b, "\\^", 2); /* POSIX has no bracket holding only '^' */
        free(items.s);
        return 0;
    }
    ere_putc(b, '[');
    if (negate)
        ere_putc(b, '^');
    if (close)
        ere_putc(b, ']');
    /* A '^' must not come first in the members: put a leading one last. */
    if (items.len && items.s[0] == '^' && !close) {
        ere_put(b, items.s + 1, items.len - 1);
        ere_putc(b, '^');
    } else if (items.len) {
        ere_put(b, items.s, items.len);
    }
    if (dash)
        ere_putc(b, '-');
    ere_putc(b, ']');
    free(items.s);
    if (!close && !dash && !items.len) {
        *why = "an empty bracket expression";
        return -1;
    }
    return 0;
}

/* True when p ("{...") is a repetition Go accepts: {n}, {n,} or {n,m}. */
static bool is_repetition(const char *p)
{
    size_t i = 1;
    if (!isdigit((unsigned char)p[i]))
        return false;
    while (isdigit((unsigned char)p[i]))
        i++;
    if (p[i] == ',') {
        i++;
        while (isdigit((unsigned char)p[i]))
            i++;
    }
    return p[i] == '}';
}

/* Translates Go regular expression re; returns the POSIX ERE (malloc'd) and the regcomp flags, or NULL with
 * *why set. */
static char *re2_to_ere(const char *re, int *cflags, const char **why)
{
    struct ere_buf b = {0};
    ere_put(&b, "", 0);
    size_t i = 0;
    *cflags = REG_EXTENDED | REG_NOSUB;
    if (strncmp(re, "(?i)", 4) == 0) {
        *cflags |= REG_ICASE;
        i = 4;
    }
    bool quantified = false, in_repetition = false; /* Go refuses a repetition of a repetition (a**) */
    while (re[i]) {
        char c = re[i];
        bool repeats =
            !in_repetition && (c == '*' || c == '+' || c == '?' || (c == '{' && is_repetition(re + i)));
        if (repeats && quantified) {
            *why = "a repetition of a repetition (Go refuses it)";
            free(b.s);
            return NULL;
        }
        bool closes = c == '}' && in_repetition;
        quantified = (repeats && c != '{') || closes;
        if (c == '{' && repeats)
            in_repetition = true;
        if (closes)
            in_repetition = false;
        if (c == '\\') {
            bool neg;
            const char *cls = class_escape(re[i + 1], &neg);
            size_t used;
            int lit;
            if (cls) {
                ere_put(&b, neg ? "[^" : "[", neg ? 2 : 1);
                ere_put(&b, cls, strlen(cls));
                ere_putc(&b, ']');
                i += 2;
            } else if ((lit = char_escape(re + i + 1, &used)) >= 0) {
                ere_literal(&b, lit);
                i += 1 + used;
            } else {
                *why =
                    re[i + 1]
                        ? "an escape POSIX cannot express (\\b, \\B, \\A, \\z, \\p, \\Q, a backreference...)"
                        : "a trailing backslash";
                free(b.s);
                return NULL;
            }
        } else if (c == '[') {
            i++;
            if (translate_bracket(re, &i, &b, why) < 0) {
                free(b.s);
                return NULL;
            }
        } else if (c == '(' && re[i + 1] == '?' && (re[i + 2] == 'P' || re[i + 2] == '<') &&
                   strchr(re + i, '>')) {
            ere_putc(&b, '('); /* a named group: names do not matter when nothing is captured */
            i = (size_t)(strchr(re + i, '>') - re) + 1;
        } else if (c == '(' && re[i + 1] == '?') {
            if (re[i + 2] != ':') {
                *why = "a flag group other than a leading (?i)";
                free(b.s);
                return NULL;
            }
            ere_putc(&b, '('); /* (?:...) groups only: nothing is captured with REG_NOSUB */
            i += 3;
        } else if (c == '{' && !is_repetition(re + i)) {
            ere_put(&b, "\\{", 2); /* Go reads a '{' that starts no repetition as itself */
            i++;
        } else if ((c == '*' || c == '+' || c == '?' || c == '}') && re[i + 1] == '?') {
            ere_putc(&b, c); /* lazy or greedy: the same strings match */
            i += 2;
        } else {
            ere_putc(&b, c);
            i++;
        }
    }
    if (b.oom) {
        free(b.s);
        *why = "out of memory";
        return NULL;
    }
    return b.s;
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
        int cflags;
        const char *why = NULL;
        char *ere = re2_to_ere(sel->value, &cflags, &why);
        if (!ere)
            return vs_fail(p->err, -EINVAL, "filter '%s': regular expression '%s' has %s", p->in, sel->value,
                           why);
        int r = regcomp(&sel->re, ere, cflags);
        free(ere);
        if (r != 0) {
            char msg[256];
            regerror(r, &sel->re, msg, sizeof(msg));
            return vs_fail(p->err, -EINVAL, "filter '%s': bad regular expression '%s': %s", p->in, sel->value,
                           msg);
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

int snap_filter_parse(const char *const *filters, size_t count, struct snap_filter **out,
                      struct vs_error *err)
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
        return s->path_len == 1 ? snap_kind_name(info->kind) : NULL;
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
    case OP_PRESENT:
        return v != NULL;
    case OP_EQ:
        return v && strcmp(v, s->value) == 0;
    case OP_NE:
        return strcmp(v ? v : "", s->value) != 0;
    case OP_MATCH:
        return regexec(&s->re, v ? v : "", 0, NULL, 0) == 0; /* containerd matches "" when absent */
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
