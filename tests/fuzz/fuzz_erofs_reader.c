/* libFuzzer target for the EROFS reader behind `veritysnap inspect`: an arbitrary (hostile) file is probed and its
 * tree walked; every offset must be bounds-checked, loops refused, and every failure must carry a message. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tarfs/tarfs.h"

#define MAX_INPUT (4u << 20)

static int visit(void *ctx, const struct tarfs_entry *e)
{
    if (!e->path)
        abort();
    return ++*(uint64_t *)ctx > 100000; /* stop very long walks: the property is safety, not completeness */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT)
        return 0;
    int fd = memfd_create("erofs", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (pwrite(fd, data, size, 0) == (ssize_t)size) {
        struct tarfs_image_info info;
        struct vs_error err = {0};
        uint64_t n = 0;
        if (tarfs_erofs_probe(fd, &info, &err) == 0) {
            int rc = tarfs_list(fd, TARFS_FORMAT_EROFS, 0, visit, &n, &err);
            if (rc < 0 && err.message[0] == '\0')
                abort();
        } else if (err.message[0] == '\0') {
            abort();
        }
    }
    close(fd);
    return 0;
}
