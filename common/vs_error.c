#include "vs_error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int vs_fail(struct vs_error *err, int code, const char *fmt, ...)
{
    if (code > 0)
        code = -code;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int vs_error_prefix(struct vs_error *err, const char *fmt, ...)
{
    if (!err)
        return -EIO;
    char prefix[512], old[sizeof(err->message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->message, sizeof(old));
    size_t n = strlen(prefix);
    if (n > sizeof(err->message) - 3)
        n = sizeof(err->message) - 3;
    memcpy(err->message, prefix, n);
    memcpy(err->message + n, ": ", 2);
    size_t rest = strnlen(old, sizeof(old) - 1);
    if (rest > sizeof(err->message) - n - 3)
        rest = sizeof(err->message) - n - 3;
    memcpy(err->message + n + 2, old, rest);
    err->message[n + 2 + rest] = 0;
    return err->code;
}

void vs_error_clear(struct vs_error *err)
{
    if (err) {
        err->code = 0;
        err->message[0] = '\0';
    }
}

int vs_error_is_bad_input(int code)
{
    return code == -EBADMSG || code == -ENAMETOOLONG || code == -ENOTSUP || code == -EILSEQ || code == -EFBIG;
}

void vs_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

/* Decodes the UTF-8 sequence at s (at most n bytes); returns its length, or 0 when invalid (overlong,
 * surrogate, above U+10FFFF, truncated). */
size_t vs_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t c, min;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    } else if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2, c = s[0] & 0x1f, min = 0x80;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3, c = s[0] & 0x0f, min = 0x800;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4, c = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

int vs_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int vs_hex_decode(const char *hex, uint8_t *out, size_t cap)
{
    size_t len = strlen(hex);
    if (len % 2 || len / 2 > cap)
        return -1;
    for (size_t i = 0; i < len / 2; i++) {
        int hi = vs_hex_digit(hex[2 * i]), lo = vs_hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return (int)(len / 2);
}
