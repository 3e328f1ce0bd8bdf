/* veritysnap common: error values, digests and hex helpers shared by every folder. */
#ifndef VERITYSNAP_COMMON_VS_ERROR_H
#define VERITYSNAP_COMMON_VS_ERROR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define VS_VERSION "0.1.0"

/* An error value: a negative errno-style code and a message that names the layer, the key and the cause.
 * Codes: -EBADMSG bad layer content (corrupt archive, lying header, traversal), -EINVAL bad argument,
 * -ENOENT missing, -ENOTSUP unsupported, -ENODEV missing kernel feature, -EFBIG a layer beyond the size limit,
 * anything else an I/O error. */
struct vs_error {
    int code;
    char message[1024];
};

/* Fills err (may be NULL) with code and a printf-style message; returns code (negative) for `return vs_fail(...)`. */
int vs_fail(struct vs_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "context: " to the message already in err (for callers that add the layer or key); returns err->code. */
int vs_error_prefix(struct vs_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears err. */
void vs_error_clear(struct vs_error *err);

/* True when code means the input itself is bad (exit code 1 in the tools, INVALID_ARGUMENT on the wire). */
int vs_error_is_bad_input(int code);

/* Decodes the UTF-8 sequence at s (at most n bytes) into *cp; returns its length, or 0 when invalid (overlong,
 * surrogate, above U+10FFFF, truncated). */
size_t vs_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* The value of one hex digit (any case), or -1. */
int vs_hex_digit(char c);

/* Lower-case hex of len bytes into out (2*len+1 bytes). */
void vs_hex_encode(const uint8_t *in, size_t len, char *out);

/* Parses hex (even length, any case) into out (cap bytes); returns the byte count or -1. */
int vs_hex_decode(const char *hex, uint8_t *out, size_t cap);

#endif
