/* Checks shared by the C tests. CHECK counts a failure in `failures` and goes on; REQUIRE counts it and ends
 * the test (exit(1), or what the file defines as VS_TEST_REQUIRE_FAILED() before including this: `return`
 * ends one test function, a cleanup function ends the program). Each failure prints file:line, the condition
 * and the message to VS_TEST_OUT (stderr, unless the file captures stderr itself). */
#ifndef VERITYSNAP_TESTS_LIB_VS_TEST_H
#define VERITYSNAP_TESTS_LIB_VS_TEST_H

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SKIP 77

#ifndef VS_TEST_OUT
#define VS_TEST_OUT stderr
#endif
#ifndef VS_TEST_REQUIRE_FAILED
#define VS_TEST_REQUIRE_FAILED() exit(1)
#endif

static int failures __attribute__((unused));

#define VS_TEST_FAILED(macro, cond_text, ...)                                                                \
    do {                                                                                                     \
        fprintf(VS_TEST_OUT, "%s:%d: %s(%s) failed: ", __FILE__, __LINE__, macro, cond_text);                \
        fprintf(VS_TEST_OUT, __VA_ARGS__);                                                                   \
        fputc('\n', VS_TEST_OUT);                                                                            \
        failures++;                                                                                          \
    } while (0)

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond))                                                                                         \
            VS_TEST_FAILED("CHECK", #cond, __VA_ARGS__);                                                     \
    } while (0)

#define REQUIRE(cond, ...)                                                                                   \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            VS_TEST_FAILED("REQUIRE", #cond, __VA_ARGS__);                                                   \
            VS_TEST_REQUIRE_FAILED();                                                                        \
        }                                                                                                    \
    } while (0)

/* NULL equals nothing, not even NULL: a missing value never passes for an expected one. */
static inline bool vs_test_str_eq(const char *got, const char *want)
{
    return got && want && strcmp(got, want) == 0;
}

static inline const char *vs_test_show(const char *s)
{
    return s ? s : "(null)";
}

#define STREQ(got, want)                                                                                     \
    CHECK(vs_test_str_eq((got), (want)), "got \"%s\", want \"%s\"", vs_test_show(got), vs_test_show(want))

/* Whether the running kernel knows the file system (a line of /proc/filesystems). */
static inline bool vs_test_has_fs(const char *name)
{
    FILE *f = fopen("/proc/filesystems", "r");
    char line[256];
    bool found = false;
    while (f && fgets(line, sizeof(line), f)) {
        char *t = strrchr(line, '\t');
        t = t ? t + 1 : line;
        t[strcspn(t, "\n")] = '\0';
        found = found || strcmp(t, name) == 0;
    }
    if (f)
        fclose(f);
    return found;
}

/* Writes text to dir/name; a failure to create it is a CHECK failure. */
static inline void vs_test_write_file(const char *dir, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "creating %s: %s", path, strerror(errno));
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Entries of dir other than "." and ".."; -1 when it cannot be opened. */
static inline int vs_test_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

#endif
