/* The kernel table line (F.6) and the equivalent `veritysetup verify` command for a layer file. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "verity/verity_internal.h"

static int salt_hex(const struct verity_layout *l, char out[2 * VERITY_MAX_SALT + 1])
{
    if (l->params.salt_size > VERITY_MAX_SALT)
        return -EINVAL;
    if (l->params.salt_size == 0)
        strcpy(out, "-");
    else
        vs_hex_encode(l->params.salt, l->params.salt_size, out);
    return 0;
}

static int finish_print(int n, size_t cap)
{
    if (n < 0)
        return -EINVAL;
    return (size_t)n < cap ? 0 : -ENOSPC;
}

int verity_table_line(const struct verity_layout *layout, const char *device, char *out, size_t cap)
{
    struct verity_layout l = *layout;
    if (verity_layout_complete(&l, NULL) < 0)
        return -EINVAL;
    char salt[2 * VERITY_MAX_SALT + 1], root[2 * VERITY_MAX_DIGEST + 1];
    salt_hex(&l, salt);
    vs_hex_encode(l.root_hash, l.digest_size, root);
    uint64_t sectors = l.data_blocks * l.params.data_block_size / 512;
    int n =
        snprintf(out, cap, "0 %" PRIu64 " verity %u %s %s %u %u %" PRIu64 " %" PRIu64 " %s %s %s", sectors,
                 l.params.format, device, device, l.params.data_block_size, l.params.hash_block_size,
                 l.data_blocks, l.hash_start_block, l.params.hash_algorithm, root, salt);
    return finish_print(n, cap);
}

/* Single-quotes a word for sh when it holds anything but [A-Za-z0-9_./:=@%+,-]. */
static int shell_word(const char *s, char *out, size_t cap)
{
    if (*s &&
        strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=@%+,-") == strlen(s))
        return finish_print(snprintf(out, cap, "%s", s), cap);
    size_t o = 0;
    if (o + 1 >= cap)
        return -ENOSPC;
    out[o++] = '\'';
    for (; *s; s++) {
        const char *piece = *s == '\'' ? "'\\''" : NULL;
        size_t len = piece ? 4 : 1;
        if (o + len + 2 > cap)
            return -ENOSPC;
        if (piece)
            memcpy(out + o, piece, len);
        else
            out[o] = *s;
        o += len;
    }
    out[o++] = '\'';
    out[o] = '\0';
    return 0;
}

int verity_veritysetup_command(const struct verity_layout *layout, const char *file, char *out, size_t cap)
{
    struct verity_layout l = *layout;
    if (verity_layout_complete(&l, NULL) < 0)
        return -EINVAL;
    char salt[2 * VERITY_MAX_SALT + 1], root[2 * VERITY_MAX_DIGEST + 1], quoted[8192];
    salt_hex(&l, salt);
    vs_hex_encode(l.root_hash, l.digest_size, root);
    int r = shell_word(file, quoted, sizeof(quoted));
    if (r < 0)
        return r;
    int n;
    if (l.params.superblock)
        n = snprintf(out, cap, "veritysetup verify --hash-offset=%" PRIu64 " %s %s %s", l.hash_offset, quoted,
                     quoted, root);
    else
        n = snprintf(
            out, cap,
            "veritysetup verify --hash-offset=%" PRIu64 " --no-superblock --salt=%s --data-blocks=%" PRIu64
            " --hash=%s --data-block-size=%u --hash-block-size=%u --format=%u %s %s %s",
            l.hash_start_block * l.params.hash_block_size, salt, l.data_blocks, l.params.hash_algorithm,
            l.params.data_block_size, l.params.hash_block_size, l.params.format, quoted, quoted, root);
    return finish_print(n, cap);
}
