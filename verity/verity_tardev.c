/* The tardev trailer (anchors.md 1): the 4 KiB block after the tree that tells the Kata agent the verity
 * geometry. tardev's tree: sha256, 32 zero bytes of salt prepended, no superblock, right after the data, then
 * the trailer. */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "verity/verity_internal.h"

#define TARDEV_FIELDS_OFFSET 3584

void verity_tardev_trailer(const struct verity_layout *layout, uint8_t out[VERITY_TARDEV_TRAILER_SIZE])
{
    memset(out, 0, VERITY_TARDEV_TRAILER_SIZE);
    uint32_t dbs = htole32(layout->params.data_block_size), hbs = htole32(layout->params.hash_block_size);
    uint64_t blocks = htole64(layout->data_blocks);
    memcpy(out + TARDEV_FIELDS_OFFSET, &dbs, 4);
    memcpy(out + TARDEV_FIELDS_OFFSET + 4, &hbs, 4);
    memcpy(out + TARDEV_FIELDS_OFFSET + 8, &blocks, 8);
}

int verity_layout_read_tardev(int fd, struct verity_layout *out, struct vs_error *err)
{
    memset(out, 0, sizeof(*out));
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0)
        return vs_fail(err, -errno, "tardev layer: cannot find its size: %s", strerror(errno));
    if (size < 2 * VERITY_TARDEV_TRAILER_SIZE)
        return vs_fail(err, -EBADMSG, "tardev layer: %lld bytes is too short for data and a trailer",
                       (long long)size);
    uint8_t trailer[VERITY_TARDEV_TRAILER_SIZE];
    int r = verity_pread_full(fd, trailer, sizeof(trailer), (uint64_t)size - VERITY_TARDEV_TRAILER_SIZE);
    if (r < 0)
        return vs_fail(err, r, "tardev layer: cannot read the trailer: %s", strerror(-r));
    uint32_t dbs, hbs;
    uint64_t blocks;
    memcpy(&dbs, trailer + TARDEV_FIELDS_OFFSET, 4);
    memcpy(&hbs, trailer + TARDEV_FIELDS_OFFSET + 4, 4);
    memcpy(&blocks, trailer + TARDEV_FIELDS_OFFSET + 8, 8);
    verity_params_default(&out->params);
    out->params.superblock = false;
    out->params.data_block_size = le32toh(dbs);
    out->params.hash_block_size = le32toh(hbs);
    out->data_blocks = le64toh(blocks);
    r = verity_params_check(&out->params, err);
    if (r < 0)
        return verity_error_wrap(err, -EBADMSG, "tardev trailer");
    if (out->data_blocks == 0 || out->data_blocks > (uint64_t)size / out->params.data_block_size)
        return vs_fail(err, -EBADMSG, "tardev trailer: %llu data blocks do not fit a %lld-byte file",
                       (unsigned long long)out->data_blocks, (long long)size);
    /* The agent's table puts the tree at ceil(data size / hbs) hash blocks. */
    uint64_t hbs64 = out->params.hash_block_size;
    out->hash_offset = (out->data_blocks * out->params.data_block_size + hbs64 - 1) / hbs64 * hbs64;
    r = verity_layout_complete(out, err);
    if (r < 0)
        return verity_error_wrap(err, -EBADMSG, "tardev trailer");
    if (out->file_size + VERITY_TARDEV_TRAILER_SIZE != (uint64_t)size)
        return vs_fail(
            err, -EBADMSG,
            "tardev trailer: %llu data blocks of %u bytes and a %llu-block tree end at %llu, but the "
            "trailer starts at %lld",
            (unsigned long long)out->data_blocks, out->params.data_block_size,
            (unsigned long long)out->tree_blocks, (unsigned long long)out->file_size,
            (long long)size - VERITY_TARDEV_TRAILER_SIZE);
    return 0;
}
