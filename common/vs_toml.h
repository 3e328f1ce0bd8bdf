/* veritysnap common: the config file reader, a strict subset of TOML 1.0 (containerd's style) parsed into a
 * read-only tree of tables.
 *
 * Accepted, with TOML 1.0 meaning: comments (#); bare keys [A-Za-z0-9_-]+ and quoted keys ("basic" or
 * 'literal'); table headers [a] and [a.b] (a parent created implicitly by [a.b] may be defined later, once);
 * arrays of tables [[a]], where a later [a.b] or [[a.b]] goes into the last element of a; values: basic
 * strings (escapes \b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX), literal strings, decimal integers (optional
 * sign, '_' between digits, 64-bit), true and false, and arrays of strings (may span lines, hold comments,
 * end with a comma). LF or CRLF line ends; a leading UTF-8 byte order mark is skipped.
 * Not supported (an error that says so): dotted keys in key/value lines, inline tables, multi-line strings,
 * floats, dates and times, hexadecimal/octal/binary integers, arrays of anything but strings, empty keys and
 * strings holding U+0000. Also errors: duplicate keys, redefined tables, invalid UTF-8, control characters,
 * input over VS_TOML_MAX_BYTES and tables nested deeper than VS_TOML_MAX_DEPTH.
 * Every message starts with the source name and the line, and the column (in characters, from 1) where it
 * helps: "config.toml:12: ..." or "config.toml:12:7: ...". Codes: -EINVAL for anything wrong in the text,
 * -EFBIG for oversized input, -ENOMEM, or the errno of a failed open or read (-EISDIR for a directory). */
#ifndef VERITYSNAP_COMMON_VS_TOML_H
#define VERITYSNAP_COMMON_VS_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/vs_error.h"

/* A config file is a few KiB; the bound keeps a wrong path (a disk image, /dev/zero) from eating memory. */
#define VS_TOML_MAX_BYTES (1024 * 1024)
/* Components in a table header: [a.b] has depth 2. */
#define VS_TOML_MAX_DEPTH 16

/* A parsed document; owns every table, string and array reached from it. */
struct vs_toml;
/* A table of a document (the root, a [header] table or an element of an array of tables), borrowed. */
struct vs_toml_table;

/* Parses len bytes of text (need not be NUL-terminated); source_name ("config.toml") starts every message.
 * Returns the document, to free with vs_toml_free, or NULL with err filled. */
struct vs_toml *vs_toml_parse(const char *text, size_t len, const char *source_name, struct vs_error *err);

/* Reads the file at path and parses it, with path as the source name in messages.
 * Returns the document, to free with vs_toml_free, or NULL with err filled. */
struct vs_toml *vs_toml_parse_file(const char *path, struct vs_error *err);

/* Frees doc and everything borrowed from it (tables, strings, arrays); NULL is ignored.
 * Pointers obtained through the getters are invalid afterwards. */
void vs_toml_free(struct vs_toml *doc);

/* The root table: the keys before the first header, and the top-level tables and arrays of tables.
 * Valid until vs_toml_free. */
const struct vs_toml_table *vs_toml_root(const struct vs_toml *doc);

/* Looks up the table named key in t: [grpc] is key "grpc" of the root, [a.b] is key "b" of table a.
 * Returns 0 with *out set, -ENOENT when absent, -EINVAL (naming key and line) when key is not a table. */
int vs_toml_get_table(const struct vs_toml_table *t, const char *key, const struct vs_toml_table **out,
                      struct vs_error *err);

/* Counts the elements of the array of tables named key in t (its [[key]] sections).
 * Returns 0 with *count set (at least 1), -ENOENT when absent, -EINVAL when key is not an array of tables. */
int vs_toml_get_table_array(const struct vs_toml_table *t, const char *key, size_t *count,
                            struct vs_error *err);

/* The index-th element (from 0, in file order) of the array of tables named key in t.
 * Returns NULL when key is absent, is not an array of tables, or index is out of range. */
const struct vs_toml_table *vs_toml_table_array_at(const struct vs_toml_table *t, const char *key,
                                                   size_t index);

/* Gets the string value of key in t into *out (NUL-terminated UTF-8, borrowed until vs_toml_free).
 * Returns 0, -ENOENT when absent, -EINVAL (naming key, table and line) when the value is not a string. */
int vs_toml_get_string(const struct vs_toml_table *t, const char *key, const char **out,
                       struct vs_error *err);

/* Gets the integer value of key in t into *out.
 * Returns 0, -ENOENT when absent, -EINVAL (naming key, table and line) when the value is not an integer. */
int vs_toml_get_int(const struct vs_toml_table *t, const char *key, int64_t *out, struct vs_error *err);

/* Gets the boolean value of key in t into *out.
 * Returns 0, -ENOENT when absent, -EINVAL (naming key, table and line) when the value is not a boolean. */
int vs_toml_get_bool(const struct vs_toml_table *t, const char *key, bool *out, struct vs_error *err);

/* Gets the array of strings of key in t: *items (NULL-terminated, borrowed until vs_toml_free) and *count.
 * Returns 0, -ENOENT when absent, -EINVAL (naming key, table and line) when it is not an array of strings. */
int vs_toml_get_string_array(const struct vs_toml_table *t, const char *key, const char *const **items,
                             size_t *count, struct vs_error *err);

/* Checks that every key of t, values and sub-tables alike, is in allowed (a NULL-terminated list).
 * Returns 0, or -EINVAL naming the first unknown key in file order and its line. */
int vs_toml_unknown_keys(const struct vs_toml_table *t, const char *const allowed[], struct vs_error *err);

/* The number of keys of t (values and sub-tables), for tables used as maps.
 * Keys are counted once each, whatever their type. */
size_t vs_toml_key_count(const struct vs_toml_table *t);

/* The index-th key of t in file order (borrowed until vs_toml_free).
 * Returns NULL when index is out of range. */
const char *vs_toml_key_at(const struct vs_toml_table *t, size_t index);

/* The dotted name of t as a header would spell it ("" for the root; keys that are not bare are quoted).
 * Borrowed until vs_toml_free; the elements of an array of tables share its name. */
const char *vs_toml_table_name(const struct vs_toml_table *t);

/* The line where key was first written in t, or of t's own header when key is NULL.
 * Returns 0 when key is absent and for the root's header. */
int vs_toml_line(const struct vs_toml_table *t, const char *key);

/* Fills err with code and "source:line: " + the printf-style message, the line being key's in t (t's header's
 * when key is NULL or absent), for the daemon's own checks on values. Returns code, made negative. */
int vs_toml_fail(const struct vs_toml_table *t, const char *key, struct vs_error *err, int code,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#endif
