/* Reads "<pattern>\t<name>" lines and prints, per line, whether the snapshot filter name~=<pattern>
 * (containerd's syntax, Go regular expressions) matches a snapshot of that name: 1, 0, or E when the filter
 * is refused. tests/snapshotter/test_filter_regex.py compares the answers with Go's regexp package. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshotter/snapshot_internal.h"

/* The pattern as containerd's filter syntax writes it: between slashes when it has no slash or backslash, else
 * as a Go quoted string (backslashes and quotes escaped, as containerd's unquote wants). */
static void filter_for(const char *re, char *out, size_t cap)
{
    if (!strchr(re, '/') && !strchr(re, '\\')) {
        snprintf(out, cap, "name~=/%s/", re);
        return;
    }
    size_t n = (size_t)snprintf(out, cap, "name~=\"");
    for (const char *p = re; *p && n + 3 < cap; p++) {
        if (*p == '"' || *p == '\\')
            out[n++] = '\\';
        out[n++] = *p;
    }
    snprintf(out + n, cap - n, "\"");
}

int main(void)
{
    char line[4096];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *tab = strchr(line, '\t');
        if (!tab) {
            fprintf(stderr, "bad input line: %s\n", line);
            return 2;
        }
        *tab = '\0';
        char filter[8192];
        filter_for(line, filter, sizeof(filter));
        const char *filters[] = {filter};
        struct snap_filter *f = NULL;
        struct vs_error err = {0};
        if (snap_filter_parse(filters, 1, &f, &err) < 0) {
            printf("E %s\n", err.message);
            continue;
        }
        struct snapshot_info info = {0};
        info.name = tab + 1;
        info.parent = (char *)"";
        info.kind = SNAPSHOT_KIND_COMMITTED;
        printf("%d\n", snap_filter_match(f, &info) ? 1 : 0);
        snap_filter_free(f);
    }
    return 0;
}
