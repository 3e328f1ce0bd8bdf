#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer_probe.h"
#include "tool.h"
#include "tool_options.h"

static const char verify_usage[] =
    "usage: veritysnap verify [options] FILE\n"
    "Checks every data and hash block of the layer file FILE against its dm-verity tree and root hash.\n"
    "Parameters come from FILE.dmverity, the verity superblock after the image, or the tardev trailer;\n"
    "the root hash from --root-hash or FILE.dmverity.\n"
    "\n"
    "  --root-hash HEX           the expected root hash\n"
    "  --hash-offset N           bytes: where the superblock (or, with --no-superblock, the tree) starts\n"
    "  --no-superblock ...       with --salt, --hash-algorithm, --data-block-size, --hash-block-size,\n"
    "                            --verity-format: parameters of a tree written without a superblock\n"
    "Exit codes: 0 every block verifies, 1 a bad block or root mismatch, 2 usage or unreadable input.\n";

int cmd_verify(int argc, char **argv)
{
    struct layer_file_options opts;
    layer_file_options_default(&opts);
    const char *root_hex = NULL;
    long long hash_offset = -1;
    bool explicit_params = false;
    static const struct option longopts[] = {
        {"root-hash", required_argument, NULL, OPT_ROOT_HASH},
        {"hash-offset", required_argument, NULL, OPT_HASH_OFFSET},
        {"help", no_argument, NULL, 'h'},
        LAYER_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int opt, longindex = 0;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (opt == 'h') {
            fputs(verify_usage, stdout);
            return EXIT_OK;
        } else if (opt == OPT_ROOT_HASH) {
            root_hex = optarg;
        } else if (opt == OPT_HASH_OFFSET) {
            char *end;
            hash_offset = strtoll(optarg, &end, 10);
            if (*end || hash_offset < 0)
                return tool_usage_error("bad --hash-offset '%s'", optarg);
        } else {
            int r = tool_parse_layer_option(opt, optarg, &opts);
            if (r <= 0) {
                if (r < 0)
                    return tool_usage_error("bad value '%s' for --%s", optarg, longopts[longindex].name);
                fputs(verify_usage, stderr);
                return EXIT_USAGE;
            }
            explicit_params = explicit_params || (opt != OPT_MAX_SIZE && opt != OPT_STRICT);
        }
    }
    if (optind + 1 != argc) {
        fputs(verify_usage, stderr);
        return EXIT_USAGE;
    }
    const char *path = argv[optind];
    int fd;
    struct layer_probe p;
    int code = layer_probe_open(path, &fd, &p);
    if (code != EXIT_OK)
        return code;
    struct vs_error err = {0};
    int rc = 0;
    if (rc == 0 && explicit_params) {
        /* A tree written without a superblock: the flags say what the file cannot. */
        struct verity_layout l = {0};
        l.params = opts.params;
        l.hash_offset = hash_offset >= 0 ? (uint64_t)hash_offset : p.data_size;
        l.data_blocks = p.data_size / l.params.data_block_size;
        l.digest_size = verity_digest_size(&l.params);
        if (p.root_known)
            memcpy(l.root_hash, p.layout.root_hash, sizeof(l.root_hash));
        p.layout = l;
        p.has_verity = true;
        rc = verity_params_check(&l.params, &err);
    } else if (rc == 0 && hash_offset >= 0 && !p.from_sidecar) {
        rc = verity_layout_read_superblock(fd, (uint64_t)hash_offset, &p.layout, &err);
        p.has_verity = rc == 0;
    }
    if (rc < 0) {
        close(fd);
        return tool_fail(&err);
    }
    if (!p.has_verity) {
        close(fd);
        return tool_usage_error("'%s' has no dm-verity tree that veritysnap can find (no sidecar, no superblock)",
                                path);
    }
    if (root_hex) {
        int n = vs_hex_decode(root_hex, p.layout.root_hash, sizeof(p.layout.root_hash));
        p.layout.digest_size = verity_digest_size(&p.layout.params);
        if (n != (int)p.layout.digest_size) {
            close(fd);
            return tool_usage_error("--root-hash must be %u hex bytes", p.layout.digest_size);
        }
        p.root_known = true;
    }
    if (!p.root_known) {
        close(fd);
        return tool_usage_error("no root hash: pass --root-hash or keep '%s.dmverity' next to the file", path);
    }
    struct verity_verify_report report = {0};
    rc = verity_verify_fd(fd, &p.layout, &report, &err);
    close(fd);
    char hex[2 * VERITY_MAX_DIGEST + 1];
    vs_hex_encode(p.layout.root_hash, p.layout.digest_size, hex);
    json_t *j = json_object();
    json_object_set_new(j, "file", json_string(path));
    json_object_set_new(j, "format", json_string(tarfs_format_name(p.format)));
    json_object_set_new(j, "verified", json_boolean(rc == 0));
    json_object_set_new(j, "root_hash", json_string(hex));
    json_object_set_new(j, "data_blocks_checked", json_integer((json_int_t)report.data_blocks_checked));
    json_object_set_new(j, "hash_blocks_checked", json_integer((json_int_t)report.hash_blocks_checked));
    if (rc < 0 && report.bad) {
        json_object_set_new(j, "bad_block", json_integer((json_int_t)report.bad_block));
        json_object_set_new(j, "bad_in", json_string(report.bad_in_tree ? "tree" : "data"));
    }
    tool_print_json(j);
    json_decref(j);
    if (rc < 0) {
        vs_error_prefix(&err, "'%s' does not verify", path);
        fprintf(stderr, "veritysnap: %s\n", err.message);
        return rc == -EBADMSG ? EXIT_BAD_INPUT : EXIT_USAGE;
    }
    return EXIT_OK;
}
