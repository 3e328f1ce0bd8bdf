/* Long-option ids shared by the subcommands that build layer files. */
#ifndef VERITYSNAP_TOOLS_TOOL_OPTIONS_H
#define VERITYSNAP_TOOLS_TOOL_OPTIONS_H

enum {
    OPT_FORMAT = 0x100,
    OPT_COMPRESSION,
    OPT_STRICT,
    OPT_NO_VERITY,
    OPT_NO_SUPERBLOCK,
    OPT_SALT,
    OPT_HASH_ALGORITHM,
    OPT_DATA_BLOCK_SIZE,
    OPT_HASH_BLOCK_SIZE,
    OPT_VERITY_FORMAT,
    OPT_ROOT_HASH,
    OPT_HASH_OFFSET,
    OPT_LIST,
    OPT_NO_SIDECAR,
    OPT_MAX_SIZE,
};

#define LAYER_LONG_OPTIONS                                                                                     \
    {"format", required_argument, NULL, OPT_FORMAT}, {"compression", required_argument, NULL, OPT_COMPRESSION}, \
        {"strict", no_argument, NULL, OPT_STRICT}, {"no-verity", no_argument, NULL, OPT_NO_VERITY},             \
        {"no-superblock", no_argument, NULL, OPT_NO_SUPERBLOCK}, {"salt", required_argument, NULL, OPT_SALT},    \
        {"hash-algorithm", required_argument, NULL, OPT_HASH_ALGORITHM},                                        \
        {"data-block-size", required_argument, NULL, OPT_DATA_BLOCK_SIZE},                                      \
        {"hash-block-size", required_argument, NULL, OPT_HASH_BLOCK_SIZE},                                      \
        {"verity-format", required_argument, NULL, OPT_VERITY_FORMAT},                                           \
        {"max-size", required_argument, NULL, OPT_MAX_SIZE}

#define LAYER_OPTIONS_HELP                                                                                     \
    "  --format erofs|tarfs      layer file format (default erofs; tarfs = original tar + tarfs index, AKS)\n"  \
    "  --compression C           auto (default, from magic bytes), gzip, zstd, none, or an OCI media type\n"   \
    "  --strict                  refuse content the format cannot carry instead of warning\n"                  \
    "  --no-verity               image only, no dm-verity tree\n"                                                \
    "  --no-superblock           no cryptsetup superblock before the tree\n"                                    \
    "  --salt HEX                verity salt (default 32 zero bytes; '-' for none)\n"                           \
    "  --hash-algorithm A        sha256 (default) or sha512\n"                                                   \
    "  --data-block-size N       512..4096 (default 4096)\n"                                                     \
    "  --hash-block-size N       512..4096 (default 4096)\n"                                                     \
    "  --verity-format 0|1       dm-verity hash format (default 1)\n"                                            \
    "  --max-size BYTES[K|M|G|T] refuse a layer whose image would grow beyond this (default: no limit)\n"

#endif
