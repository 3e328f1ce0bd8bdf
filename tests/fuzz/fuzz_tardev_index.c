/* libFuzzer target for the tardev tarfs index: the input is a tar fed in uneven chunks to the streaming index
 * writer; when the writer accepts it, the index it wrote after the tar must read back with the index reader (a
 * round trip on every accepted input), and the reader must never fail on what the writer produced. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tarfs/tardev_index.h"

#define MAX_INPUT (1u << 20)

static int fd_write(void *ctx, uint64_t offset, const void *data, size_t len, struct vs_error *err)
{
    int fd = *(int *)ctx;
    if (pwrite(fd, data, len, (off_t)offset) != (ssize_t)len)
        return vs_fail(err, -5, "pwrite failed");
    return 0;
}

static int count_entry(void *ctx, const struct tardev_entry *e)
{
    if (!e->path)
        abort(); /* every listed entry has a path */
    (*(uint64_t *)ctx)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > MAX_INPUT)
        return 0;
    int fd = memfd_create("tardev", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (pwrite(fd, data, size, 0) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    struct vs_error err = {0};
    struct tardev_index *idx = tardev_index_new(NULL, NULL, false, &err);
    if (!idx)
        abort();
    /* Chunk sizes from the input's first byte, so header splits across feeds are explored too. */
    size_t step = (size_t)data[0] % 600 + 1, off = 0;
    int rc = 0;
    while (rc == 0 && off < size) {
        size_t n = size - off < step ? size - off : step;
        rc = tardev_index_feed(idx, data + off, n, &err);
        off += n;
        step = step * 7 % 4099 + 1;
    }
    uint64_t index_size = 0, entries = 0;
    if (rc == 0)
        rc = tardev_index_finish(idx, fd_write, &fd, &index_size, &entries, &err);
    tardev_index_free(idx);
    if (rc == 0) {
        if ((size + index_size) % TARDEV_BLOCK_SIZE != 0)
            abort(); /* tar + index must end on a block boundary */
        uint64_t listed = 0;
        struct vs_error lerr = {0};
        if (tardev_index_list(fd, size + index_size, count_entry, &listed, &lerr) != 0) {
            fprintf(stderr, "reader refused the writer's index: %s\n", lerr.message);
            abort();
        }
    } else if (err.message[0] == '\0') {
        abort(); /* every failure says why */
    }
    close(fd);
    return 0;
}
