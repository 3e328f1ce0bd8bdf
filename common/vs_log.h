/* veritysnap common: the logger, logfmt lines on stderr; with the config, the only process-wide state.
 *
 * A line reads: time=2026-11-28T11:00:00.123Z level=info msg="snapshot prepared" key=k1 namespace=default
 * (UTC time with milliseconds, the level, the message, then the fields in the order given). Values follow the
 * go-logfmt rules so containerd's tooling reads them: bare unless empty, "null", or holding a space, '=',
 * '"', a control character (U+0000..U+001F, U+007F) or invalid UTF-8; quoted values escape \" \\ \n \r \t,
 * other control characters as \u00XX and each invalid UTF-8 byte as \ufffd. A NULL value is written bare as
 * null. Keys are written as given, with any space, '=', '"', control or non-ASCII byte replaced by '_' (an
 * empty key becomes "_"). Each line goes out in one write(2) under a lock, so lines from concurrent threads
 * never interleave; errno is preserved. */
#ifndef VERITYSNAP_COMMON_VS_LOG_H
#define VERITYSNAP_COMMON_VS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum vs_log_level {
    VS_LOG_DEBUG = 0,
    VS_LOG_INFO = 1,
    VS_LOG_WARN = 2,
    VS_LOG_ERROR = 3,
};

/* One key/value pair, for vs_log_fields. */
struct vs_log_field {
    const char *key;
    const char *value;
};

/* Sets the threshold from "debug", "info", "warn" (or "warning") or "error", in any case; lines below it are
 * dropped. Returns 0, or -EINVAL for any other name (the threshold is then unchanged). */
int vs_log_set_level(const char *name);

/* The current threshold: VS_LOG_INFO until vs_log_set_level changes it.
 * Safe to call from any thread. */
enum vs_log_level vs_log_get_level(void);

/* True when a line at level would be written, to skip building costly field values.
 * Safe to call from any thread. */
bool vs_log_enabled(enum vs_log_level level);

/* Writes one line at level with msg and key/value string pairs ending with a NULL key, e.g.
 * vs_log(VS_LOG_INFO, "snapshot prepared", "key", key, "namespace", ns, NULL). */
void vs_log(enum vs_log_level level, const char *msg, ...) __attribute__((sentinel));

/* vs_log with the key/value pairs (ending with a NULL key) in a va_list.
 * ap is consumed as by vsnprintf. */
void vs_logv(enum vs_log_level level, const char *msg, va_list ap);

/* vs_log with n fields from an array, for callers that assemble the fields at run time.
 * Fields with a NULL key are skipped. */
void vs_log_fields(enum vs_log_level level, const char *msg, const struct vs_log_field *fields, size_t n);

/* The name written for level: "debug", "info", "warn" or "error" ("unknown" otherwise).
 * A static string. */
const char *vs_log_level_name(enum vs_log_level level);

#endif
