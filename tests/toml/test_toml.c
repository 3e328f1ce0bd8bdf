/* vs_toml unit tests: a containerd-style config read back value by value; every rejected input with its exact
 * message (source, line, column); the getters' and unknown-key messages; the size and depth bounds; files.
 * The expected values are written out by hand from the TOML 1.0 specification (tests/toml/test_toml_oracle.py
 * checks the same parser against Python's tomllib). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vs_toml.h"
#include "tests/lib/vs_test.h"

static struct vs_toml *parse(const char *text, struct vs_error *err)
{
    vs_error_clear(err);
    return vs_toml_parse(text, strlen(text), "config.toml", err);
}

static const char config[] = "# veritysnap config\n"                                          /* 1 */
                             "version = 2\n"                                                  /* 2 */
                             "root = \"/var/lib/veritysnap\"\n"                               /* 3 */
                             "debug = false\n"                                                /* 4 */
                             "\n"                                                             /* 5 */
                             "[grpc]\n"                                                       /* 6 */
                             "address = \"/run/veritysnap/veritysnap.sock\"   # the socket\n" /* 7 */
                             "uid = 0\n"                                                      /* 8 */
                             "gid = -1\n"                                                     /* 9 */
                             "\n"                                                             /* 10 */
                             "[verity]\n"                                                     /* 11 */
                             "mode = 'require'\n"                                             /* 12 */
                             "salt = \"00\\u00e9\\t\\\"q\\\"\\\\ \\U0001F600\\b\\f\\r\\n\"\n" /* 13 */
                             "literal = 'C:\\path\\\"#x'\n"                                   /* 14 */
                             "max = 9_223_372_036_854_775_807\n"                              /* 15 */
                             "min = -9223372036854775808\n"                                   /* 16 */
                             "plus = +17\n"                                                   /* 17 */
                             "zero = -0\n"                                                    /* 18 */
                             "on = true\n"                                                    /* 19 */
                             "hash = \"#not a comment\" # a comment\n"                        /* 20 */
                             "\n"                                                             /* 21 */
                             "[[listen]]\n"                                                   /* 22 */
                             "address = \"/run/a.sock\"\n"                                    /* 23 */
                             "dialect = \"host\"\n"                                           /* 24 */
                             "options = [\n"                                                  /* 25 */
                             "  \"ro\",   # read-only\n"                                      /* 26 */
                             "  'loop',\n"                                                    /* 27 */
                             "  \"X-containerd.dmverity=on\",\n"                              /* 28 */
                             "]\n"                                                            /* 29 */
                             "\n"                                                             /* 30 */
                             "[listen.tuning]\n"                                              /* 31 */
                             "depth = 3\n"                                                    /* 32 */
                             "\n"                                                             /* 33 */
                             "[[listen]]\n"                                                   /* 34 */
                             "address = \"/run/b.sock\"\n"                                    /* 35 */
                             "dialect = \"kata-erofs\"\n"                                     /* 36 */
                             "options = []\n"                                                 /* 37 */
                             "\n"                                                             /* 38 */
                             "[ plugins . \"io.containerd.snapshotter.v1.veritysnap\" ]\n"    /* 39 */
                             "\"quoted key\" = true\n"                                        /* 40 */
                             "'lit key' = \"x\"\n"                                            /* 41 */
                             "1234 = \"numeric bare key\"\n"                                  /* 42 */
                             "\t  indented\t=\t\"tabs\"\t\n";                                 /* 43 */

static void test_config(void)
{
    struct vs_error err;
    struct vs_toml *doc = parse(config, &err);
    CHECK(doc != NULL, "parse: %s", err.message);
    if (!doc)
        return;
    const struct vs_toml_table *root = vs_toml_root(doc), *grpc = NULL, *verity = NULL, *plugins = NULL,
                               *vs = NULL;
    const char *s = NULL;
    int64_t i = 0;
    bool b = true;

    CHECK(vs_toml_get_int(root, "version", &i, &err) == 0 && i == 2, "version %lld", (long long)i);
    CHECK(vs_toml_get_string(root, "root", &s, &err) == 0, "%s", err.message);
    STREQ(s, "/var/lib/veritysnap");
    CHECK(vs_toml_get_bool(root, "debug", &b, &err) == 0 && !b, "debug");
    CHECK(vs_toml_key_count(root) == 7, "root keys %zu", vs_toml_key_count(root));
    const char *root_keys[] = {"version", "root", "debug", "grpc", "verity", "listen", "plugins"};
    for (size_t k = 0; k < 7; k++)
        STREQ(vs_toml_key_at(root, k), root_keys[k]);
    CHECK(vs_toml_key_at(root, 7) == NULL, "key past the end");
    STREQ(vs_toml_table_name(root), "");
    CHECK(vs_toml_line(root, NULL) == 0 && vs_toml_line(root, "root") == 3 && vs_toml_line(root, "nope") == 0,
          "root lines");

    CHECK(vs_toml_get_table(root, "grpc", &grpc, &err) == 0, "%s", err.message);
    CHECK(vs_toml_get_string(grpc, "address", &s, &err) == 0, "%s", err.message);
    STREQ(s, "/run/veritysnap/veritysnap.sock");
    CHECK(vs_toml_get_int(grpc, "uid", &i, &err) == 0 && i == 0, "uid");
    CHECK(vs_toml_get_int(grpc, "gid", &i, &err) == 0 && i == -1, "gid");
    CHECK(vs_toml_line(grpc, NULL) == 6 && vs_toml_line(grpc, "gid") == 9, "grpc lines");
    STREQ(vs_toml_table_name(grpc), "grpc");

    CHECK(vs_toml_get_table(root, "verity", &verity, &err) == 0, "%s", err.message);
    CHECK(vs_toml_get_string(verity, "mode", &s, &err) == 0, "%s", err.message);
    STREQ(s, "require");
    CHECK(vs_toml_get_string(verity, "salt", &s, &err) == 0, "%s", err.message);
    STREQ(s, "00\xc3\xa9\t\"q\"\\ \xf0\x9f\x98\x80\b\f\r\n");
    CHECK(vs_toml_get_string(verity, "literal", &s, &err) == 0, "%s", err.message);
    STREQ(s, "C:\\path\\\"#x");
    CHECK(vs_toml_get_int(verity, "max", &i, &err) == 0 && i == INT64_MAX, "max %lld", (long long)i);
    CHECK(vs_toml_get_int(verity, "min", &i, &err) == 0 && i == INT64_MIN, "min %lld", (long long)i);
    CHECK(vs_toml_get_int(verity, "plus", &i, &err) == 0 && i == 17, "plus");
    CHECK(vs_toml_get_int(verity, "zero", &i, &err) == 0 && i == 0, "zero");
    CHECK(vs_toml_get_bool(verity, "on", &b, &err) == 0 && b, "on");
    CHECK(vs_toml_get_string(verity, "hash", &s, &err) == 0, "%s", err.message);
    STREQ(s, "#not a comment");

    size_t n = 0;
    const char *const *items = NULL;
    CHECK(vs_toml_get_table_array(root, "listen", &n, &err) == 0 && n == 2, "listen count %zu", n);
    const struct vs_toml_table *l0 = vs_toml_table_array_at(root, "listen", 0);
    const struct vs_toml_table *l1 = vs_toml_table_array_at(root, "listen", 1), *tuning = NULL;
    CHECK(l0 && l1 && !vs_toml_table_array_at(root, "listen", 2) && !vs_toml_table_array_at(root, "grpc", 0),
          "listen elements");
    if (l0 && l1) {
        CHECK(vs_toml_get_string(l0, "address", &s, &err) == 0, "%s", err.message);
        STREQ(s, "/run/a.sock");
        CHECK(vs_toml_get_string_array(l0, "options", &items, &n, &err) == 0 && n == 3, "options %zu", n);
        if (n == 3) {
            STREQ(items[0], "ro");
            STREQ(items[1], "loop");
            STREQ(items[2], "X-containerd.dmverity=on");
            CHECK(items[3] == NULL, "NULL-terminated");
        }
        CHECK(vs_toml_get_table(l0, "tuning", &tuning, &err) == 0, "%s", err.message);
        CHECK(vs_toml_get_int(tuning, "depth", &i, &err) == 0 && i == 3, "depth");
        STREQ(vs_toml_table_name(tuning), "listen.tuning");
        CHECK(vs_toml_line(l0, NULL) == 22 && vs_toml_line(l1, NULL) == 34, "element lines");
        CHECK(vs_toml_get_string(l1, "dialect", &s, &err) == 0, "%s", err.message);
        STREQ(s, "kata-erofs");
        CHECK(vs_toml_get_string_array(l1, "options", &items, &n, &err) == 0 && n == 0 && items[0] == NULL,
              "empty options");
        CHECK(vs_toml_get_table(l1, "tuning", &tuning, &err) == -ENOENT, "no tuning in the second element");
        STREQ(err.message, "config.toml:34: missing key \"tuning\" in [[listen]]");
    }

    CHECK(vs_toml_get_table(root, "plugins", &plugins, &err) == 0, "%s", err.message);
    CHECK(vs_toml_get_table(plugins, "io.containerd.snapshotter.v1.veritysnap", &vs, &err) == 0, "%s",
          err.message);
    STREQ(vs_toml_table_name(vs), "plugins.\"io.containerd.snapshotter.v1.veritysnap\"");
    CHECK(vs_toml_line(plugins, NULL) == 39, "implicit parent line %d", vs_toml_line(plugins, NULL));
    CHECK(vs_toml_get_bool(vs, "quoted key", &b, &err) == 0 && b, "quoted key");
    CHECK(vs_toml_get_string(vs, "lit key", &s, &err) == 0, "%s", err.message);
    STREQ(s, "x");
    CHECK(vs_toml_get_string(vs, "1234", &s, &err) == 0, "%s", err.message);
    STREQ(s, "numeric bare key");
    CHECK(vs_toml_get_string(vs, "indented", &s, &err) == 0, "%s", err.message);
    STREQ(s, "tabs");

    /* Wrong types and missing keys: -EINVAL / -ENOENT with the key, the table and the line. */
    CHECK(vs_toml_get_string(grpc, "uid", &s, &err) == -EINVAL, "string from int");
    STREQ(err.message, "config.toml:8: key \"uid\" in [grpc] is an integer, expected a string");
    CHECK(vs_toml_get_int(root, "root", &i, &err) == -EINVAL, "int from string");
    STREQ(err.message, "config.toml:3: key \"root\" is a string, expected an integer");
    CHECK(vs_toml_get_bool(l0, "options", &b, &err) == -EINVAL, "bool from array");
    STREQ(err.message,
          "config.toml:25: key \"options\" in [[listen]] is an array of strings, expected a boolean");
    CHECK(vs_toml_get_string_array(root, "grpc", &items, &n, &err) == -EINVAL, "array from table");
    STREQ(err.message, "config.toml:6: key \"grpc\" is a table, expected an array of strings");
    CHECK(vs_toml_get_table(root, "listen", &tuning, &err) == -EINVAL, "table from array of tables");
    STREQ(err.message, "config.toml:22: key \"listen\" is an array of tables, expected a table");
    CHECK(vs_toml_get_table_array(root, "grpc", &n, &err) == -EINVAL, "array of tables from table");
    CHECK(vs_toml_get_string(root, "nope", &s, &err) == -ENOENT, "missing");
    STREQ(err.message, "config.toml: missing key \"nope\"");
    CHECK(vs_toml_get_int(vs, "nope", &i, &err) == -ENOENT, "missing");
    STREQ(err.message,
          "config.toml:39: missing key \"nope\" in [plugins.\"io.containerd.snapshotter.v1.veritysnap\"]");
    CHECK(vs_toml_get_string(root, "nope", NULL, NULL) == -ENOENT, "NULL err is allowed");

    /* Unknown keys, in file order, with their line. */
    const char *const root_allowed[] = {"version", "root",   "debug",   "grpc",
                                        "verity",  "listen", "plugins", NULL};
    CHECK(vs_toml_unknown_keys(root, root_allowed, &err) == 0, "%s", err.message);
    const char *const no_debug[] = {"version", "root", "grpc", "verity", "listen", "plugins", NULL};
    CHECK(vs_toml_unknown_keys(root, no_debug, &err) == -EINVAL, "debug unknown");
    STREQ(err.message, "config.toml:4: unknown key \"debug\"");
    const char *const no_grpc[] = {"version", "root", "debug", "verity", "listen", "plugins", NULL};
    CHECK(vs_toml_unknown_keys(root, no_grpc, &err) == -EINVAL, "grpc unknown");
    STREQ(err.message, "config.toml:6: unknown table [grpc]");
    const char *const no_listen[] = {"version", "root", "debug", "grpc", "verity", "plugins", NULL};
    CHECK(vs_toml_unknown_keys(root, no_listen, &err) == -EINVAL, "listen unknown");
    STREQ(err.message, "config.toml:22: unknown array of tables [[listen]]");
    const char *const grpc_allowed[] = {"address", "uid", NULL};
    CHECK(vs_toml_unknown_keys(grpc, grpc_allowed, &err) == -EINVAL, "gid unknown");
    STREQ(err.message, "config.toml:9: unknown key \"gid\" in [grpc]");
    const char *const l1_allowed[] = {"address", "dialect", NULL};
    CHECK(vs_toml_unknown_keys(l1, l1_allowed, &err) == -EINVAL, "options unknown");
    STREQ(err.message, "config.toml:37: unknown key \"options\" in [[listen]]");
    const char *const vs_allowed[] = {"quoted key", "1234", "indented", NULL};
    CHECK(vs_toml_unknown_keys(vs, vs_allowed, &err) == -EINVAL, "lit key unknown");
    STREQ(err.message,
          "config.toml:41: unknown key \"lit key\" in [plugins.\"io.containerd.snapshotter.v1.veritysnap\"]");
    const char *const nothing[] = {NULL};
    CHECK(vs_toml_unknown_keys(tuning ? tuning : grpc, nothing, &err) == -EINVAL, "empty allow list");

    /* The daemon's own checks on values, located by key. */
    CHECK(vs_toml_fail(grpc, "address", &err, -EINVAL, "socket %s is taken", "x") == -EINVAL, "fail");
    STREQ(err.message, "config.toml:7: socket x is taken");
    CHECK(vs_toml_fail(grpc, "absent", &err, EINVAL, "bad") == -EINVAL, "fail positive code");
    STREQ(err.message, "config.toml:6: bad");
    CHECK(vs_toml_fail(root, NULL, &err, -EINVAL, "bad") == -EINVAL, "fail on root");
    STREQ(err.message, "config.toml: bad");
    vs_toml_free(doc);
}

static void test_small_good(void)
{
    struct vs_error err;
    const struct vs_toml_table *t = NULL, *u = NULL;
    const char *s = NULL;
    int64_t i = 0;

    /* Empty and comment-only documents, CRLF, a byte order mark, no final newline. */
    const char *empties[] = {"", "\n\n", "# only a comment", "  \t\n# x\r\n"};
    for (size_t k = 0; k < sizeof(empties) / sizeof(*empties); k++) {
        struct vs_toml *doc = parse(empties[k], &err);
        CHECK(doc && vs_toml_key_count(vs_toml_root(doc)) == 0, "empty %zu: %s", k, err.message);
        vs_toml_free(doc);
    }
    struct vs_toml *doc = vs_toml_parse(NULL, 0, NULL, &err);
    CHECK(doc != NULL, "NULL text of length 0");
    vs_toml_free(doc);

    doc = parse("\xef\xbb\xbf"
                "a = \"x\"\r\n[t]\r\nb = 5",
                &err);
    CHECK(doc != NULL, "BOM + CRLF: %s", err.message);
    if (doc) {
        CHECK(vs_toml_get_string(vs_toml_root(doc), "a", &s, &err) == 0, "%s", err.message);
        STREQ(s, "x");
        CHECK(vs_toml_get_table(vs_toml_root(doc), "t", &t, &err) == 0, "%s", err.message);
        CHECK(vs_toml_get_int(t, "b", &i, &err) == 0 && i == 5, "b");
        CHECK(vs_toml_line(t, "b") == 3, "CRLF lines count");
    }
    vs_toml_free(doc);

    /* A parent created implicitly by [a.b.c] may be defined once later; [[x]] then [x.y] go to the last
     * element. */
    doc = parse("[a.b.c]\nx = 1\n[a]\ny = 2\n[a.b]\nz = 3\n"
                "[[x]]\n[x.y]\nv = 1\n[[x]]\n[x.y]\nv = 2\n[[x.y.w]]\n[[x.y.w]]\nq = 'q'\n",
                &err);
    CHECK(doc != NULL, "implicit tables: %s", err.message);
    if (doc) {
        const struct vs_toml_table *root = vs_toml_root(doc);
        CHECK(vs_toml_get_table(root, "a", &t, &err) == 0 && vs_toml_get_int(t, "y", &i, &err) == 0 && i == 2,
              "a.y");
        CHECK(vs_toml_line(t, NULL) == 3, "a's line is its header's, %d", vs_toml_line(t, NULL));
        CHECK(vs_toml_get_table(t, "b", &u, &err) == 0 && vs_toml_get_int(u, "z", &i, &err) == 0 && i == 3,
              "a.b.z");
        CHECK(vs_toml_get_table(u, "c", &t, &err) == 0 && vs_toml_get_int(t, "x", &i, &err) == 0 && i == 1,
              "a.b.c.x");
        STREQ(vs_toml_table_name(t), "a.b.c");
        size_t n = 0;
        CHECK(vs_toml_get_table_array(root, "x", &n, &err) == 0 && n == 2, "x count");
        for (size_t e = 0; e < 2; e++) {
            t = vs_toml_table_array_at(root, "x", e);
            CHECK(t && vs_toml_get_table(t, "y", &u, &err) == 0 && vs_toml_get_int(u, "v", &i, &err) == 0 &&
                      i == (int64_t)e + 1,
                  "x[%zu].y.v", e);
        }
        CHECK(vs_toml_get_table_array(u, "w", &n, &err) == 0 && n == 2, "x[1].y.w count");
        t = vs_toml_table_array_at(u, "w", 1);
        CHECK(t && vs_toml_get_string(t, "q", &s, &err) == 0 && !strcmp(s, "q"), "x[1].y.w[1].q");
        CHECK(vs_toml_key_count(vs_toml_table_array_at(u, "w", 0)) == 0, "x[1].y.w[0] is empty");
    }
    vs_toml_free(doc);

    /* Integers at the edges, and keys that look like other things. */
    struct {
        const char *text;
        int64_t value;
    } ints[] = {
        {"k = 0", 0},
        {"k = +0", 0},
        {"k = -0", 0},
        {"k = 1_000", 1000},
        {"k = -1_2_3", -123},
        {"k = 9223372036854775807", INT64_MAX},
        {"k = -9223372036854775808", INT64_MIN},
        {"k=42#c", 42},
    };
    for (size_t k = 0; k < sizeof(ints) / sizeof(*ints); k++) {
        doc = parse(ints[k].text, &err);
        CHECK(doc && vs_toml_get_int(vs_toml_root(doc), "k", &i, &err) == 0 && i == ints[k].value, "%s: %s",
              ints[k].text, err.message);
        vs_toml_free(doc);
    }
    doc = parse("true = false\n\"a.b\" = 'dot'\n-_- = 1\n[\"\\u00e9\"]\n", &err);
    CHECK(doc != NULL, "odd keys: %s", err.message);
    if (doc) {
        bool b = true;
        CHECK(vs_toml_get_bool(vs_toml_root(doc), "true", &b, &err) == 0 && !b, "key true");
        CHECK(vs_toml_get_string(vs_toml_root(doc), "a.b", &s, &err) == 0 && !strcmp(s, "dot"), "key a.b");
        CHECK(vs_toml_get_int(vs_toml_root(doc), "-_-", &i, &err) == 0 && i == 1, "key -_-");
        CHECK(vs_toml_get_table(vs_toml_root(doc), "\xc3\xa9", &t, &err) == 0, "key e-acute");
        STREQ(vs_toml_table_name(t), "\"\xc3\xa9\"");
    }
    vs_toml_free(doc);
}

/* Each input must fail with exactly this message. */
static const struct {
    const char *text;
    const char *message;
} bad[] = {
    {"a = 1\nb = \"x\nc = 2\n", "config.toml:2:5: unterminated string"},
    {"a = 'x", "config.toml:1:5: unterminated string"},
    {"a = 1\na = 2\n", "config.toml:2:1: duplicate key \"a\" (first defined on line 1)"},
    {"[a]\nx = 1\n[a]\n", "config.toml:3: table [a] is already defined on line 1"},
    {"[a]\n[a.b]\n[ a . b ]\n", "config.toml:3: table [ a . b ] is already defined on line 2"},
    {"[[a]]\n[a.b]\n[[a]]\n[a.b]\nx = 1\n[a.b]\n", "config.toml:6: table [a.b] is already defined on line 4"},
    {"[a]\nb = 1\n[a.b]\n", "config.toml:3: cannot define [a.b]: key \"b\" on line 2 is an integer"},
    {"a = 'v'\n[a.b]\n", "config.toml:2: cannot define [a.b]: key \"a\" on line 1 is a string, not a table"},
    {"[[a]]\n[a]\n", "config.toml:2: cannot define [a]: key \"a\" on line 1 is an array of tables"},
    {"[a]\n[[a]]\n", "config.toml:2: cannot define [[a]]: key \"a\" on line 1 is a table"},
    {"x = ['a']\n[[x]]\n", "config.toml:2: cannot define [[x]]: key \"x\" on line 1 is an array of strings"},
    {"[a.b]\nx = 1\n[a]\nb = 2\n", "config.toml:4:1: key \"b\" is already a table defined on line 1"},
    {"a.b = 1\n", "config.toml:1:1: dotted keys are not supported; write a [table] header instead"},
    {"[t]\n\"a\" . b = 1\n",
     "config.toml:2:1: dotted keys are not supported; write a [table] header instead"},
    {"x = {a = 1}\n", "config.toml:1:5: inline tables are not supported; use a [table] header"},
    {"x = \"\"\"multi\"\"\"\n", "config.toml:1:5: multi-line strings are not supported"},
    {"x = '''multi'''\n", "config.toml:1:5: multi-line strings are not supported"},
    {"x = 1.5\n", "config.toml:1:5: floats are not supported"},
    {"x = -1e3\n", "config.toml:1:5: floats are not supported"},
    {"x = inf\n", "config.toml:1:5: floats are not supported"},
    {"x = -nan\n", "config.toml:1:5: floats are not supported"},
    {"x = 1979-05-27\n", "config.toml:1:5: dates and times are not supported"},
    {"x = 1979-05-27T07:32:00Z\n", "config.toml:1:5: dates and times are not supported"},
    {"x = 07:32:00\n", "config.toml:1:5: dates and times are not supported"},
    {"x = 0x10\n", "config.toml:1:5: hexadecimal, octal and binary integers are not supported"},
    {"x = 0b1\n", "config.toml:1:5: hexadecimal, octal and binary integers are not supported"},
    {"x = 9223372036854775808\n", "config.toml:1:5: integer 9223372036854775808 does not fit in 64 bits"},
    {"x = -9223372036854775809\n", "config.toml:1:5: integer -9223372036854775809 does not fit in 64 bits"},
    {"x = 99999999999999999999999\n",
     "config.toml:1:5: integer 99999999999999999999999 does not fit in 64 bits"},
    {"x = 00\n", "config.toml:1:5: leading zeros are not allowed in \"00\""},
    {"x = -01\n", "config.toml:1:5: leading zeros are not allowed in \"-01\""},
    {"x = 1__0\n", "config.toml:1:5: '_' in an integer must sit between digits"},
    {"x = 1_\n", "config.toml:1:5: '_' in an integer must sit between digits"},
    {"x = +_1\n", "config.toml:1:5: '_' in an integer must sit between digits"},
    {"x = +\n", "config.toml:1:5: invalid integer \"+\""},
    {"x = 12ab\n", "config.toml:1:5: invalid integer \"12ab\""},
    {"x = _1\n",
     "config.toml:1:5: expected a value (a string, integer, boolean or array of strings), found \"_1\""},
    {"x = true1\n",
     "config.toml:1:5: expected a value (a string, integer, boolean or array of strings), found \"true1\""},
    {"x = TRUE\n",
     "config.toml:1:5: expected a value (a string, integer, boolean or array of strings), found \"TRUE\""},
    {"x = \n", "config.toml:1:5: expected a value after '='"},
    {"x =", "config.toml:1:4: expected a value after '='"},
    {"x = # c\n", "config.toml:1:5: expected a value after '='"},
    {"x = @\n", "config.toml:1:5: expected a value, found '@'"},
    {"x 1\n", "config.toml:1:3: expected '=' after key \"x\", found '1'"},
    {"\n\n\n  bad\n", "config.toml:4:6: expected '=' after key \"bad\", found end of line"},
    {"\"\" = 1\n", "config.toml:1:1: empty keys are not supported"},
    {"[a.'']\n", "config.toml:1:4: empty keys are not supported"},
    {"= 1\n", "config.toml:1:1: expected a key, found '='"},
    {"\xc3\xa9 = 1\n", "config.toml:1:1: expected a key, found U+00E9"},
    {"x = [1, 2]\n", "config.toml:1:6: arrays of anything but strings are not supported"},
    {"x = [true]\n", "config.toml:1:6: arrays of anything but strings are not supported"},
    {"x = [\n  \"a\",\n  1,\n]\n", "config.toml:3:3: arrays of anything but strings are not supported"},
    {"x = ['a', ['b']]\n", "config.toml:1:11: nested arrays are not supported"},
    {"x = [{}]\n", "config.toml:1:6: inline tables are not supported"},
    {"x = ['a' 'b']\n", "config.toml:1:10: expected ',' or ']' in an array, found '''"},
    {"x = [,]\n", "config.toml:1:6: expected a string or ']', found ','"},
    {"x = ['a',,]\n", "config.toml:1:10: expected a string or ']', found ','"},
    {"x = [\"a\",\n\"b\"\n", "config.toml:1:5: unterminated array"},
    {"y = 1\n  x = [", "config.toml:2:7: unterminated array"},
    {"x = \"\\q\"\n", "config.toml:1:6: invalid escape \\'q' in a string"},
    {"x = \"\\e\"\n", "config.toml:1:6: invalid escape \\'e' in a string"},
    {"x = \"\\\n", "config.toml:1:6: unterminated string"},
    {"x = \"\\u12\"\n", "config.toml:1:6: \\u escape needs 4 hexadecimal digits"},
    {"x = \"\\U0001F60\"\n", "config.toml:1:6: \\U escape needs 8 hexadecimal digits"},
    {"x = \"\\uD800\"\n", "config.toml:1:6: \\uD800 is not a Unicode scalar value"},
    {"x = \"\\U00110000\"\n", "config.toml:1:6: \\U00110000 is not a Unicode scalar value"},
    {"x = \"\\u0000\"\n", "config.toml:1:6: strings holding U+0000 are not supported"},
    {"x = \"a\xff\"\n", "config.toml:1:7: invalid UTF-8"},
    {"x = \"a\xc0\x80\"\n", "config.toml:1:7: invalid UTF-8"},
    {"x = \"a\xed\xa0\x80\"\n", "config.toml:1:7: invalid UTF-8"},
    {"x = \"a\x01\"\n", "config.toml:1:7: control character U+0001 is not allowed"},
    {"# \x7f\n", "config.toml:1:3: control character U+007F is not allowed"},
    {"x = 'a\x1b'\n", "config.toml:1:7: control character U+001B is not allowed"},
    {"a = 1\rb = 2\n", "config.toml:1:6: carriage return not followed by a line feed"},
    {"a = 1\r\nb = \r\n", "config.toml:2:5: expected a value after '='"},
    {"x = 1 y = 2\n", "config.toml:1:7: unexpected 'y' after the value"},
    {"x = \"\xc3\xa9\" y\n", "config.toml:1:9: unexpected 'y' after the value"},
    {"x = 'a'b\n", "config.toml:1:8: unexpected 'b' after the value"},
    {"x = \"a\" # ok\n[t] junk\n", "config.toml:2:5: unexpected 'j' after the table header"},
    {"[[t]] x = 1\n", "config.toml:1:7: unexpected 'x' after the array of tables header"},
    {"[]\n", "config.toml:1:2: expected a key, found ']'"},
    {"[a\n", "config.toml:1:3: expected '.' or ']' in a table header, found end of line"},
    {"[a", "config.toml:1:3: expected '.' or ']' in a table header, found end of file"},
    {"[a.]\n", "config.toml:1:4: expected a key, found ']'"},
    {"[a b]\n", "config.toml:1:4: expected '.' or ']' in a table header, found 'b'"},
    {"[[a]\n", "config.toml:1:5: expected ']]' to close the array of tables header"},
    {"[[a] ]\n", "config.toml:1:5: expected ']]' to close the array of tables header"},
    {"[ [a]]\n", "config.toml:1:3: expected a key, found '['"},
    {"[\"a\nb\"]\n", "config.toml:1:2: unterminated string"},
    {"\xef\xbb\xbfx = 1\ny", "config.toml:2:2: expected '=' after key \"y\", found end of file"},
};

static void test_bad(void)
{
    for (size_t k = 0; k < sizeof(bad) / sizeof(*bad); k++) {
        struct vs_error err;
        struct vs_toml *doc = parse(bad[k].text, &err);
        CHECK(doc == NULL, "bad input %zu accepted: %s", k, bad[k].text);
        vs_toml_free(doc);
        if (doc)
            continue;
        CHECK(err.code == -EINVAL, "bad input %zu: code %d", k, err.code);
        CHECK(!strcmp(err.message, bad[k].message), "bad input %zu:\n  got  %s\n  want %s", k, err.message,
              bad[k].message);
    }
}

/* A comment of exactly n bytes. */
static char *filler(size_t n)
{
    char *text = malloc(n + 1);
    memset(text, 'x', n);
    text[0] = '#';
    text[n] = '\0';
    return text;
}

static void test_bounds(void)
{
    struct vs_error err;
    char *text = filler(VS_TOML_MAX_BYTES);
    struct vs_toml *doc = vs_toml_parse(text, VS_TOML_MAX_BYTES, "config.toml", &err);
    CHECK(doc != NULL, "exactly 1 MiB: %s", err.message);
    vs_toml_free(doc);
    free(text);
    text = filler(VS_TOML_MAX_BYTES + 1);
    doc = vs_toml_parse(text, VS_TOML_MAX_BYTES + 1, "config.toml", &err);
    CHECK(doc == NULL && err.code == -EFBIG, "1 MiB + 1: %d", err.code);
    STREQ(err.message, "config.toml: 1048577 bytes is over the limit of 1048576 for a config file");
    vs_toml_free(doc);
    free(text);

    /* Many keys in one table: the index keeps this linear (a quadratic scan would take minutes). */
    size_t keys = 100000, cap = keys * 8 + 64;
    text = malloc(cap);
    size_t len = 0;
    for (size_t k = 0; k < keys; k++)
        len += (size_t)snprintf(text + len, cap - len, "%zx=%zu\n", k, k % 10);
    doc = vs_toml_parse(text, len, "config.toml", &err);
    CHECK(doc && vs_toml_key_count(vs_toml_root(doc)) == keys, "%zu keys: %s", keys, err.message);
    int64_t i = 0;
    CHECK(doc && vs_toml_get_int(vs_toml_root(doc), "1869f", &i, &err) == 0 && i == 9, "last key");
    vs_toml_free(doc);
    len += (size_t)snprintf(text + len, cap - len, "4d = 1\n");
    doc = vs_toml_parse(text, len, "config.toml", &err);
    CHECK(!doc, "duplicate among many");
    STREQ(err.message, "config.toml:100001:1: duplicate key \"4d\" (first defined on line 78)");
    free(text);

    /* 16 levels are allowed, 17 are not; the same for arrays of tables. */
    char deep[256] = "[a";
    for (int d = 2; d <= 16; d++)
        strcat(deep, ".a");
    strcat(deep, "]\nx = 1\n");
    doc = parse(deep, &err);
    CHECK(doc != NULL, "depth 16: %s", err.message);
    vs_toml_free(doc);
    strcpy(deep, "x = 1\n[[a");
    for (int d = 2; d <= 17; d++)
        strcat(deep, d == 9 ? ". 'a'" : ".a");
    strcat(deep, "]]\n");
    doc = parse(deep, &err);
    CHECK(doc == NULL, "depth 17 accepted");
    STREQ(err.message, "config.toml:2:38: tables nested deeper than 16 levels are not supported");
}

static void test_files(void)
{
    struct vs_error err;
    char dir[] = "/tmp/vs-toml-XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof(path), "%s/config.toml", dir);

    FILE *f = fopen(path, "w");
    fputs("[grpc]\naddress = 7\n", f);
    fclose(f);
    struct vs_toml *doc = vs_toml_parse_file(path, &err);
    CHECK(doc != NULL, "%s", err.message);
    const struct vs_toml_table *grpc = NULL;
    const char *s = NULL;
    char want[160];
    if (doc) {
        CHECK(vs_toml_get_table(vs_toml_root(doc), "grpc", &grpc, &err) == 0, "%s", err.message);
        CHECK(vs_toml_get_string(grpc, "address", &s, &err) == -EINVAL, "type");
        snprintf(want, sizeof(want), "%s:2: key \"address\" in [grpc] is an integer, expected a string",
                 path);
        STREQ(err.message, want);
    }
    vs_toml_free(doc);

    f = fopen(path, "w");
    fputs("a = 1\n\n[b\n", f);
    fclose(f);
    CHECK(vs_toml_parse_file(path, &err) == NULL && err.code == -EINVAL, "syntax error in a file");
    snprintf(want, sizeof(want), "%s:3:3: expected '.' or ']' in a table header, found end of line", path);
    STREQ(err.message, want);

    f = fopen(path, "w");
    for (int k = 0; k <= VS_TOML_MAX_BYTES / 8; k++)
        fputs("#567890\n", f); /* 8 bytes */
    fclose(f);
    CHECK(vs_toml_parse_file(path, &err) == NULL && err.code == -EFBIG, "big file: %d %s", err.code,
          err.message);
    CHECK(truncate(path, VS_TOML_MAX_BYTES) == 0, "truncate");
    doc = vs_toml_parse_file(path, &err);
    CHECK(doc != NULL, "file of exactly 1 MiB: %s", err.message);
    vs_toml_free(doc);

    CHECK(vs_toml_parse_file(dir, &err) == NULL && err.code == -EISDIR, "directory: %d", err.code);
    unlink(path);
    CHECK(vs_toml_parse_file(path, &err) == NULL && err.code == -ENOENT, "missing file: %d", err.code);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    STREQ(err.message, want);
    rmdir(dir);
}

int main(void)
{
    test_config();
    test_small_good();
    test_bad();
    test_bounds();
    test_files();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("vs_toml: all checks passed (%zu bad inputs)\n", sizeof(bad) / sizeof(*bad));
    return 0;
}
