/* Helpers for tests that call the snapshot model directly (snapshotter/snapshotter.h): options of the mounts
 * it returns, and mounting them the way containerd's mount.All does. */
#ifndef VERITYSNAP_TESTS_LIB_VS_TEST_MOUNTS_H
#define VERITYSNAP_TESTS_LIB_VS_TEST_MOUNTS_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>

#include "snapshotter/snapshotter.h"

static inline bool vs_test_has_option(const struct snapshot_mount *m, const char *opt)
{
    for (size_t i = 0; i < m->option_count; i++)
        if (strcmp(m->options[i], opt) == 0)
            return true;
    return false;
}

/* The value of the first option starting with prefix ("upperdir=", ...), or NULL. */
static inline const char *vs_test_option_value(const struct snapshot_mount *m, const char *prefix)
{
    for (size_t i = 0; i < m->option_count; i++)
        if (strncmp(m->options[i], prefix, strlen(prefix)) == 0)
            return m->options[i] + strlen(prefix);
    return NULL;
}

/* Mounts what the API returned the way containerd's mount.All does (bind, then a read-only remount; other
 * types with their options, "ro"/"rw" as flags); -errno on failure. */
static inline int vs_test_mount_all(const struct snapshot_mounts *ms, const char *target)
{
    for (size_t i = 0; i < ms->count; i++) {
        const struct snapshot_mount *m = &ms->items[i];
        bool ro = vs_test_has_option(m, "ro");
        if (strcmp(m->type, "bind") == 0) {
            if (mount(m->source, target, NULL, MS_BIND | MS_REC, NULL) < 0)
                return -errno;
            if (ro && mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
                return -errno;
            continue;
        }
        char data[8192] = "";
        size_t n = 0;
        for (size_t j = 0; j < m->option_count; j++) {
            if (!strcmp(m->options[j], "ro") || !strcmp(m->options[j], "rw"))
                continue;
            n += (size_t)snprintf(data + n, sizeof(data) - n, "%s%s", n ? "," : "", m->options[j]);
        }
        if (mount(m->source, target, m->type, ro ? MS_RDONLY : 0, data) < 0)
            return -errno;
    }
    return 0;
}

#endif
