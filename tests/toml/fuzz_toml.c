/* libFuzzer target for vs_toml: parses the input, then walks every table reading every key through every
 * getter and checks what the API promises: a failed parse names the source and a line, strings are NUL-free
 * valid UTF-8, a key is readable by exactly one getter, arrays are NULL-terminated, the unknown-key check
 * reports each key. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/vs_toml.h"

#define REQUIRE(cond)                                                                                        \
    do {                                                                                                     \
        if (!(cond))                                                                                         \
            abort();                                                                                         \
    } while (0)

static void check_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t len = *p < 0x80 ? 1 : *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2;
        REQUIRE(*p < 0x80 || *p >= 0xc2);
        for (size_t i = 1; i < len; i++)
            REQUIRE((p[i] & 0xc0) == 0x80);
        p += len;
    }
}

static void walk(const struct vs_toml_table *t, int depth)
{
    REQUIRE(depth <= VS_TOML_MAX_DEPTH);
    REQUIRE(vs_toml_table_name(t) != NULL);
    struct vs_error err;
    size_t count = vs_toml_key_count(t);
    REQUIRE(vs_toml_key_at(t, count) == NULL);
    for (size_t k = 0; k < count; k++) {
        const char *key = vs_toml_key_at(t, k), *s;
        const char *const *items;
        const struct vs_toml_table *sub;
        int64_t i;
        bool b;
        size_t n;
        REQUIRE(key && *key);
        check_utf8(key);
        REQUIRE(vs_toml_line(t, key) > 0);
        int hits = 0;
        if (vs_toml_get_table(t, key, &sub, &err) == 0) {
            hits++;
            walk(sub, depth + 1);
        }
        if (vs_toml_get_table_array(t, key, &n, &err) == 0) {
            hits++;
            REQUIRE(n >= 1);
            for (size_t e = 0; e < n; e++) {
                const struct vs_toml_table *element = vs_toml_table_array_at(t, key, e);
                REQUIRE(element != NULL);
                walk(element, depth + 1);
            }
            REQUIRE(vs_toml_table_array_at(t, key, n) == NULL);
        }
        if (vs_toml_get_string(t, key, &s, &err) == 0) {
            hits++;
            check_utf8(s);
        }
        if (vs_toml_get_int(t, key, &i, &err) == 0)
            hits++;
        if (vs_toml_get_bool(t, key, &b, &err) == 0)
            hits++;
        if (vs_toml_get_string_array(t, key, &items, &n, &err) == 0) {
            hits++;
            for (size_t e = 0; e < n; e++)
                check_utf8(items[e]);
            REQUIRE(items[n] == NULL);
        } else {
            REQUIRE(err.code == -EINVAL && strchr(err.message, ':') != NULL);
        }
        REQUIRE(hits == 1);
    }
    const char *const none[] = {NULL};
    int rc = vs_toml_unknown_keys(t, none, &err);
    REQUIRE(count ? rc == -EINVAL : rc == 0);
    /* Empty keys are refused by the parser, so "" is always absent. */
    REQUIRE(vs_toml_get_string(t, "", &(const char *){NULL}, &err) == -ENOENT);
    REQUIRE(vs_toml_fail(t, count ? vs_toml_key_at(t, 0) : NULL, &err, -EINVAL, "x") == -EINVAL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vs_error err;
    vs_error_clear(&err);
    struct vs_toml *doc = vs_toml_parse((const char *)data, size, "fuzz.toml", &err);
    if (!doc) {
        REQUIRE(err.code == -EINVAL || err.code == -EFBIG);
        REQUIRE(!strncmp(err.message, "fuzz.toml:", 10));
        return 0;
    }
    walk(vs_toml_root(doc), 0);
    vs_toml_free(doc);
    return 0;
}
