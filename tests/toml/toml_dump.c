/* toml_dump FILE... | toml_dump - (paths on stdin): prints one JSON line per file, {"ok": TREE} or
 * {"error": MESSAGE, "code": N}, walking the tree only through the public getters, so test_toml_oracle.py can
 * compare it with what Python's tomllib makes of the same bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vs_toml.h"

static void put_json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static int put_table(const struct vs_toml_table *t)
{
    putchar('{');
    for (size_t k = 0; k < vs_toml_key_count(t); k++) {
        const char *key = vs_toml_key_at(t, k), *s;
        const char *const *items;
        const struct vs_toml_table *sub;
        int64_t i;
        bool b;
        size_t n;
        if (k)
            putchar(',');
        put_json_string(key);
        putchar(':');
        if (vs_toml_get_table(t, key, &sub, NULL) == 0) {
            if (put_table(sub))
                return -1;
        } else if (vs_toml_get_table_array(t, key, &n, NULL) == 0) {
            putchar('[');
            for (size_t e = 0; e < n; e++) {
                if (e)
                    putchar(',');
                if (put_table(vs_toml_table_array_at(t, key, e)))
                    return -1;
            }
            putchar(']');
        } else if (vs_toml_get_string(t, key, &s, NULL) == 0) {
            put_json_string(s);
        } else if (vs_toml_get_int(t, key, &i, NULL) == 0) {
            printf("%lld", (long long)i);
        } else if (vs_toml_get_bool(t, key, &b, NULL) == 0) {
            fputs(b ? "true" : "false", stdout);
        } else if (vs_toml_get_string_array(t, key, &items, &n, NULL) == 0) {
            putchar('[');
            for (size_t e = 0; e < n; e++) {
                if (e)
                    putchar(',');
                put_json_string(items[e]);
            }
            putchar(']');
        } else {
            return -1; /* a key no getter accepts: a bug */
        }
    }
    putchar('}');
    return 0;
}

static int dump(const char *path)
{
    struct vs_error err;
    vs_error_clear(&err);
    struct vs_toml *doc = vs_toml_parse_file(path, &err);
    if (!doc) {
        fputs("{\"error\":", stdout);
        put_json_string(err.message);
        printf(",\"code\":%d}\n", err.code);
        return 0;
    }
    fputs("{\"ok\":", stdout);
    int rc = put_table(vs_toml_root(doc));
    fputs("}\n", stdout);
    vs_toml_free(doc);
    if (rc)
        fprintf(stderr, "%s: a key that no getter reads\n", path);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc == 2 && !strcmp(argv[1], "-")) {
        char line[4096];
        while (fgets(line, sizeof(line), stdin)) {
            line[strcspn(line, "\n")] = '\0';
            rc |= dump(line);
        }
    } else {
        for (int i = 1; i < argc; i++)
            rc |= dump(argv[i]);
    }
    return rc ? 1 : 0;
}
