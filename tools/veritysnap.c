/* veritysnap: converts OCI layers into verity-protected layer files and computes their root hashes. */
#include <stdio.h>
#include <string.h>

#include "image.h"
#include "tool.h"

static const char usage[] =
    "usage: veritysnap <command> [options]\n"
    "\n"
    "commands:\n"
    "  convert   convert one layer (tar, tar+gzip, tar+zstd) into a layer file with a dm-verity tree\n"
    "  roothash  print the root hashes that convert would record, without writing files\n"
    "  verify    check every block of a layer file against its tree and root hash\n"
    "  inspect   describe a layer file (format, verity parameters, file tree)\n"
    "  image     'image roothash': per-layer root hashes of a whole image (layout, archive, registry)\n"
    "  pull      pre-pull an image into containerd, layers converted from their blobs by veritysnapd\n"
    "\n"
    "Run 'veritysnap <command> --help' for a command's options.\n"
    "Exit codes: 0 success, 1 bad input (or verification failure), 2 usage or I/O error.\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("veritysnap %s\n", VS_VERSION);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {
        {"convert", cmd_convert},
        {"roothash", cmd_roothash},
        {"verify", cmd_verify},
        {"inspect", cmd_inspect},
        {"image", cmd_image},
        {"pull", cmd_pull},
    };
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "veritysnap: unknown command '%s'\n%s", cmd, usage);
    return EXIT_USAGE;
}
