/* The veritysnap command-line tool: subcommands and their shared helpers. */
#ifndef VERITYSNAP_TOOLS_TOOL_H
#define VERITYSNAP_TOOLS_TOOL_H

#include <jansson.h>
#include <stdio.h>

#include "snapshotter/snapshotter.h"

/* Exit codes of every subcommand. */
enum {
    EXIT_OK = 0,
    EXIT_BAD_INPUT = 1, /* the layer or file is bad (or does not verify) */
    EXIT_USAGE = 2,     /* usage or I/O error */
};

int cmd_convert(int argc, char **argv);
int cmd_roothash(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_pull(int argc, char **argv); /* cmd_pull.c: pre-pull into containerd through the blob path */

/* Prints "veritysnap: <message>" for err and returns the exit code its code means. */
int tool_fail(const struct vs_error *err);

/* Prints a usage error and returns EXIT_USAGE. */
int tool_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Verity flags shared by convert and roothash: parses one option (returns 1 when consumed, 0 when not ours,
 * -1 on a bad value). */
int tool_parse_layer_option(int opt, const char *arg, struct layer_file_options *opts);

/* The JSON object describing a built layer file (path may be NULL for roothash). */
json_t *tool_layer_json(const struct layer_file_result *r, const char *path);

/* Adds the verity keys of a layout (root_hash only when with_root) to the JSON object j. */
void tool_verity_json(json_t *j, const struct verity_layout *l, bool with_root);

/* Prints JSON to stdout with a newline. */
void tool_print_json(json_t *j);

/* Warning callback that prints entry-by-entry warnings to stderr. */
void tool_print_warning(void *ctx, const char *entry, const char *message);

#endif
