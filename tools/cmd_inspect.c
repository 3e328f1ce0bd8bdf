#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layer_probe.h"
#include "tool.h"
#include "tool_options.h"

static const char inspect_usage[] =
    "usage: veritysnap inspect [--list] FILE\n"
    "Prints, as JSON, the format, image and verity parameters of the layer file FILE;\n"
    "--list adds every entry of its file tree (from the EROFS metadata or the tarfs index).\n";

static const char *type_name(uint32_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "symlink";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    default: return "unknown";
    }
}

static int list_entry(void *ctx, const struct tarfs_entry *e)
{
    json_t *entry = json_object();
    json_object_set_new(entry, "path", json_string(e->path));
    json_object_set_new(entry, "type", json_string(type_name(e->mode)));
    json_object_set_new(entry, "mode", json_integer(e->mode & 07777));
    json_object_set_new(entry, "uid", json_integer(e->uid));
    json_object_set_new(entry, "gid", json_integer(e->gid));
    json_object_set_new(entry, "size", json_integer((json_int_t)e->size));
    json_object_set_new(entry, "mtime", json_integer(e->mtime));
    if (e->mtime_nsec)
        json_object_set_new(entry, "mtime_nsec", json_integer(e->mtime_nsec));
    if (e->ino)
        json_object_set_new(entry, "ino", json_integer((json_int_t)e->ino));
    if (e->nlink > 1 && !S_ISDIR(e->mode))
        json_object_set_new(entry, "nlink", json_integer(e->nlink));
    if (e->link_target)
        json_object_set_new(entry, "target", json_string(e->link_target));
    if (S_ISCHR(e->mode) || S_ISBLK(e->mode)) {
        json_object_set_new(entry, "major", json_integer(e->rdev_major));
        json_object_set_new(entry, "minor", json_integer(e->rdev_minor));
    }
    if (e->opaque)
        json_object_set_new(entry, "opaque", json_true());
    if (e->xattr_count)
        json_object_set_new(entry, "xattrs", json_integer(e->xattr_count));
    json_array_append_new(ctx, entry);
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    bool list = false;
    static const struct option longopts[] = {
        {"list", no_argument, NULL, OPT_LIST},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(inspect_usage, stdout);
            return EXIT_OK;
        }
        if (opt != OPT_LIST) {
            fputs(inspect_usage, stderr);
            return EXIT_USAGE;
        }
        list = true;
    }
    if (optind + 1 != argc) {
        fputs(inspect_usage, stderr);
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
    json_t *j = json_object();
    json_object_set_new(j, "file", json_string(path));
    json_object_set_new(j, "format", json_string(tarfs_format_name(p.format)));
    json_object_set_new(j, "size", json_integer((json_int_t)p.file_size));
    json_object_set_new(j, "image_size", json_integer((json_int_t)p.data_size));
    if (p.format == TARFS_FORMAT_EROFS) {
        char uuid[33];
        vs_hex_encode(p.info.uuid, 16, uuid);
        json_t *e = json_object();
        json_object_set_new(e, "blocks", json_integer((json_int_t)(p.info.image_size / TARFS_BLOCK_SIZE)));
        json_object_set_new(e, "inodes", json_integer((json_int_t)p.info.inodes));
        json_object_set_new(e, "root_nid", json_integer((json_int_t)p.info.root_nid));
        json_object_set_new(e, "meta_blkaddr", json_integer((json_int_t)p.info.meta_blkaddr));
        json_object_set_new(e, "epoch", json_integer(p.info.epoch));
        json_object_set_new(e, "uuid", json_string(uuid));
        json_object_set_new(e, "feature_compat", json_integer(p.info.feature_compat));
        json_object_set_new(e, "feature_incompat", json_integer(p.info.feature_incompat));
        json_object_set_new(e, "checksum_ok", json_boolean(p.info.checksum_ok));
        json_object_set_new(j, "erofs", e);
    }
    if (p.has_verity) {
        json_t *v = json_object();
        tool_verity_json(v, &p.layout, p.root_known);
        json_object_set_new(v, "source", json_string(p.from_sidecar ? "sidecar"
                                                     : p.format == TARFS_FORMAT_TARFS ? "tardev-trailer"
                                                                                      : "superblock"));
        json_object_set_new(j, "verity", v);
    }
    if (list) {
        json_t *entries = json_array();
        rc = tarfs_list(fd, p.format, p.data_size, list_entry, entries, &err);
        json_object_set_new(j, "entries", entries);
    }
    close(fd);
    if (rc < 0) {
        json_decref(j);
        return tool_fail(&err);
    }
    tool_print_json(j);
    json_decref(j);
    return EXIT_OK;
}
