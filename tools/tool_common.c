#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"
#include "tool_options.h"
#include "common/vs_digest.h"

int tool_fail(const struct vs_error *err)
{
    fprintf(stderr, "veritysnap: %s\n", err->message[0] ? err->message : "failed");
    return vs_error_is_bad_input(err->code) ? EXIT_BAD_INPUT : EXIT_USAGE;
}

int tool_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("veritysnap: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

void tool_print_warning(void *ctx, const char *entry, const char *message)
{
    (void)ctx;
    fprintf(stderr, "veritysnap: warning: entry '%s': %s\n", entry, message);
}

static int parse_block_size(const char *arg, uint32_t *out)
{
    char *end;
    unsigned long v = strtoul(arg, &end, 10);
    if (*end || v < 512 || v > 4096 || (v & (v - 1)))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int tool_parse_layer_option(int opt, const char *arg, struct layer_file_options *opts)
{
    switch (opt) {
    case OPT_FORMAT:
        return tarfs_format_parse(arg, &opts->tarfs.format) < 0 ? -1 : 1;
    case OPT_COMPRESSION:
        return tarfs_compression_from_media_type(arg, &opts->tarfs.compression) < 0 ? -1 : 1;
    case OPT_STRICT:
        opts->tarfs.strict = true;
        return 1;
    case OPT_NO_VERITY:
        opts->verity = false;
        return 1;
    case OPT_NO_SUPERBLOCK:
        opts->params.superblock = false;
        return 1;
    case OPT_SALT: {
        if (strcmp(arg, "-") == 0 || arg[0] == '\0') {
            opts->params.salt_size = 0;
            return 1;
        }
        int n = vs_hex_decode(arg, opts->params.salt, sizeof(opts->params.salt));
        if (n < 0)
            return -1;
        opts->params.salt_size = (uint32_t)n;
        return 1;
    }
    case OPT_HASH_ALGORITHM:
        if (strcmp(arg, "sha256") != 0 && strcmp(arg, "sha512") != 0)
            return -1;
        snprintf(opts->params.hash_algorithm, sizeof(opts->params.hash_algorithm), "%s", arg);
        return 1;
    case OPT_DATA_BLOCK_SIZE:
        return parse_block_size(arg, &opts->params.data_block_size) < 0 ? -1 : 1;
    case OPT_HASH_BLOCK_SIZE:
        return parse_block_size(arg, &opts->params.hash_block_size) < 0 ? -1 : 1;
    case OPT_MAX_SIZE: {
        char *end;
        unsigned long long v = strtoull(arg, &end, 10);
        int shift = 0;
        switch (*end) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        case 'T': shift = 40; break;
        case '\0': break;
        default: return -1;
        }
        if (end == arg || (*end && end[1]) || v > (UINT64_MAX >> shift))
            return -1;
        opts->tarfs.max_image_size = (uint64_t)v << shift;
        return 1;
    }
    case OPT_VERITY_FORMAT:
        if (strcmp(arg, "0") != 0 && strcmp(arg, "1") != 0)
            return -1;
        opts->params.format = (uint32_t)(arg[0] - '0');
        return 1;
    default:
        return 0;
    }
}

json_t *tool_layer_json(const struct layer_file_result *r, const char *path)
{
    char digest[72];
    vs_digest_format(r->image.diff_id, digest);
    json_t *j = json_object();
    if (path)
        json_object_set_new(j, "file", json_string(path));
    json_object_set_new(j, "format", json_string(tarfs_format_name(r->image.format)));
    json_object_set_new(j, "size", json_integer((json_int_t)r->file_size));
    json_object_set_new(j, "image_size", json_integer((json_int_t)r->image.image_size));
    json_object_set_new(j, "blocks", json_integer((json_int_t)r->image.blocks));
    json_object_set_new(j, "entries", json_integer((json_int_t)r->image.entries));
    json_object_set_new(j, "compression", json_string(tarfs_compression_name(r->image.compression)));
    json_object_set_new(j, "uncompressed_size", json_integer((json_int_t)r->image.uncompressed_size));
    json_object_set_new(j, "diff_id", json_string(digest));
    if (!r->verity)
        return j;
    const struct verity_layout *l = &r->layout;
    char line[2048];
    tool_verity_json(j, l, true);
    json_object_set_new(j, "hash_start_block", json_integer((json_int_t)l->hash_start_block));
    if (verity_veritysetup_command(l, path ? path : "LAYER", line, sizeof(line)) == 0)
        json_object_set_new(j, "veritysetup_verify", json_string(line));
    if (verity_table_line(l, "/dev/DEVICE", line, sizeof(line)) == 0)
        json_object_set_new(j, "table", json_string(line));
    return j;
}

void tool_verity_json(json_t *j, const struct verity_layout *l, bool with_root)
{
    char hex[2 * VERITY_MAX_SALT + 1];
    if (with_root) {
        vs_hex_encode(l->root_hash, l->digest_size, hex);
        json_object_set_new(j, "root_hash", json_string(hex));
    }
    vs_hex_encode(l->params.salt, l->params.salt_size, hex);
    json_object_set_new(j, "salt", json_string(hex));
    json_object_set_new(j, "hash_algorithm", json_string(l->params.hash_algorithm));
    json_object_set_new(j, "data_block_size", json_integer(l->params.data_block_size));
    json_object_set_new(j, "hash_block_size", json_integer(l->params.hash_block_size));
    json_object_set_new(j, "data_blocks", json_integer((json_int_t)l->data_blocks));
    json_object_set_new(j, "hash_offset", json_integer((json_int_t)l->hash_offset));
    json_object_set_new(j, "superblock", json_boolean(l->params.superblock));
    json_object_set_new(j, "verity_format", json_integer(l->params.format));
}

void tool_print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) {
        puts(s);
        free(s);
    }
    fflush(stdout);
}
