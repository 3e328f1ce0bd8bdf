#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tool.h"
#include "tool_options.h"

static const char convert_usage[] =
    "usage: veritysnap convert [options] -o OUT LAYER\n"
    "       veritysnap convert [options] -o OUT --dir DIRECTORY\n"
    "Converts LAYER (a file, or - for stdin) into the layer file OUT (+ OUT.dmverity) and prints a JSON object.\n"
    "\n"
    "  -o, --output OUT          the layer file to write (atomically: nothing is left on failure)\n"
    "  --dir DIRECTORY           convert a directory tree instead of a tar (erofs only)\n"
    "  --no-sidecar              do not write OUT.dmverity\n" LAYER_OPTIONS_HELP;

static const char roothash_usage[] =
    "usage: veritysnap roothash [options] LAYER...\n"
    "Prints, as a JSON array, what convert would record for each LAYER, without writing anything.\n"
    "\n" LAYER_OPTIONS_HELP;

static int open_layer(const char *path, int *fd)
{
    if (strcmp(path, "-") == 0) {
        *fd = STDIN_FILENO;
        return 0;
    }
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return tool_usage_error("cannot open '%s': %s", path, strerror(errno));
    return 0;
}

enum { OPT_OUTPUT = 'o', OPT_DIR = 0x200, OPT_HELP = 'h' };

int cmd_convert(int argc, char **argv)
{
    struct layer_file_options opts;
    layer_file_options_default(&opts);
    opts.tarfs.warning = tool_print_warning;
    const char *out = NULL, *dir = NULL;
    static const struct option longopts[] = {
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"dir", required_argument, NULL, OPT_DIR},
        {"no-sidecar", no_argument, NULL, OPT_NO_SIDECAR},
        {"help", no_argument, NULL, OPT_HELP},
        LAYER_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int opt, longindex = 0;
    while ((opt = getopt_long(argc, argv, "o:h", longopts, &longindex)) != -1) {
        if (opt == OPT_OUTPUT) {
            out = optarg;
        } else if (opt == OPT_DIR) {
            dir = optarg;
        } else if (opt == OPT_NO_SIDECAR) {
            opts.sidecar = false;
        } else if (opt == OPT_HELP) {
            fputs(convert_usage, stdout);
            return EXIT_OK;
        } else {
            int r = tool_parse_layer_option(opt, optarg, &opts);
            if (r < 0)
                return tool_usage_error("bad value '%s' for --%s", optarg, longopts[longindex].name);
            if (r == 0) {
                fputs(convert_usage, stderr);
                return EXIT_USAGE;
            }
        }
    }
    if (!out || (dir ? optind != argc : optind + 1 != argc)) {
        fputs(convert_usage, stderr);
        return EXIT_USAGE;
    }
    struct layer_file_result result;
    struct vs_error err = {0};
    int rc;
    if (dir) {
        rc = layer_file_build_dir(dir, out, &opts, &result, &err);
    } else {
        int fd;
        if (open_layer(argv[optind], &fd) != 0)
            return EXIT_USAGE;
        rc = layer_file_build_fd(fd, out, &opts, &result, &err);
        if (fd != STDIN_FILENO)
            close(fd);
    }
    if (rc < 0) {
        vs_error_prefix(&err, "layer '%s'", dir ? dir : argv[optind]);
        return tool_fail(&err);
    }
    json_t *j = tool_layer_json(&result, out);
    tool_print_json(j);
    json_decref(j);
    return EXIT_OK;
}

int cmd_roothash(int argc, char **argv)
{
    struct layer_file_options opts;
    layer_file_options_default(&opts);
    opts.tarfs.warning = tool_print_warning;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, OPT_HELP},
        LAYER_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int opt, longindex = 0;
    while ((opt = getopt_long(argc, argv, "h", longopts, &longindex)) != -1) {
        if (opt == OPT_HELP) {
            fputs(roothash_usage, stdout);
            return EXIT_OK;
        }
        int r = tool_parse_layer_option(opt, optarg, &opts);
        if (r < 0)
            return tool_usage_error("bad value '%s' for --%s", optarg, longopts[longindex].name);
        if (r == 0) {
            fputs(roothash_usage, stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(roothash_usage, stderr);
        return EXIT_USAGE;
    }
    if (!opts.verity && opts.tarfs.format != TARFS_FORMAT_TARFS)
        return tool_usage_error("roothash needs verity (drop --no-verity)");
    json_t *list = json_array();
    for (int i = optind; i < argc; i++) {
        int fd;
        if (open_layer(argv[i], &fd) != 0) {
            json_decref(list);
            return EXIT_USAGE;
        }
        struct layer_file_result result;
        struct vs_error err = {0};
        int rc = layer_file_build_fd(fd, NULL, &opts, &result, &err);
        if (fd != STDIN_FILENO)
            close(fd);
        if (rc < 0) {
            json_decref(list);
            vs_error_prefix(&err, "layer '%s'", argv[i]);
            return tool_fail(&err);
        }
        json_t *j = tool_layer_json(&result, NULL);
        json_object_set_new(j, "layer", json_string(argv[i]));
        json_array_append_new(list, j);
    }
    tool_print_json(list);
    json_decref(list);
    return EXIT_OK;
}
