/* The daemon's configuration: /etc/veritysnap/config.toml over built-in defaults, strictly checked (an
 * unknown key is an error with its line, so a typo never silently keeps a default). */
#include "vs_grpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/vs_log.h"
#include "common/vs_toml.h"

static const char default_text[] =
    "# veritysnapd configuration (" VS_DEFAULT_CONFIG_PATH ").\n"
    "# Every key is optional: the values below are the defaults. Command-line flags (--root, --address, "
    "--verity,\n"
    "# --log-level) override what is written here. Unknown keys are errors.\n"
    "\n"
    "# State root: the store (state.db), layer files, active snapshots' directories and host mounts.\n"
    "root = \"" VS_DEFAULT_ROOT "\"\n"
    "\n"
    "# dm-verity on host mounts: \"require\" refuses to mount a layer without a verity device, \"auto\" "
    "mounts\n"
    "# without one (and warns) where the kernel has no dm-verity, \"off\" never sets one up.\n"
    "verity = \"require\"\n"
    "\n"
    "# containerd's socket, to read layer blobs from its content store.\n"
    "containerd_address = \"" VS_DEFAULT_CONTAINERD_ADDRESS "\"\n"
    "\n"
    "# debug, info, warn or error. Logs go to stderr, one logfmt line per event.\n"
    "log_level = \"info\"\n"
    "\n"
    "# Bytes one layer's image may grow to while it is converted; a layer that expands beyond it (a sparse "
    "file,\n"
    "# a decompression bomb) is refused before it fills the disk. 0 means no limit.\n"
    "max_layer_size = 0\n"
    "\n"
    "# Bytes that conversions must leave free on the state root's file system: a layer that would eat into "
    "them is\n"
    "# refused (RESOURCE_EXHAUSTED) and leaves nothing, so pulls never fill the node's disk. 0 means no "
    "reserve.\n"
    "min_free_space = 1073741824\n"
    "\n"
    "# The layer-src-prefix kata-tardev mounts name (the directory the guest finds layer files under); \"\" "
    "means\n"
    "# <root>/layers. AKS policies made by genpolicy expect\n"
    "# /var/lib/containerd/io.containerd.snapshotter.v1.tardev/layers: see docs/kata.md.\n"
    "tardev_layer_src_prefix = \"\"\n"
    "\n"
    "# One [[listen]] table per socket; each is one containerd proxy plugin, e.g. in containerd's "
    "config.toml:\n"
    "#   [proxy_plugins.veritysnap]\n"
    "#     type = \"snapshot\"\n"
    "#     address = \"" VS_DEFAULT_SOCKET "\"\n"
    "# The socket is created with mode 0660, owned by root and by group (a name or a numeric id; \"\" keeps "
    "root's\n"
    "# group); its directory is created with mode 0711.\n"
    "# dialect: the mounts returned for container root filesystems: \"host\" (runc; plugin key veritysnap),\n"
    "# \"kata-erofs\" (Kata runtime-rs with containerd 2.2+; veritysnap-kata, "
    "/run/veritysnap/kata-erofs.sock) or\n"
    "# \"kata-tardev\" (AKS's Kata; veritysnap-tardev, /run/veritysnap/kata-tardev.sock). All sockets share "
    "one\n"
    "# store; layer unpacking always gets host mounts. See docs/kata.md.\n"
    "[[listen]]\n"
    "address = \"" VS_DEFAULT_SOCKET "\"\n"
    "group = \"\"\n"
    "dialect = \"host\"\n";

const char *vs_daemon_config_default_text(void)
{
    return default_text;
}

int vs_daemon_verity_mode_parse(const char *text, enum snapshotter_verity_mode *out)
{
    if (strcmp(text, "require") == 0)
        *out = SNAPSHOTTER_VERITY_REQUIRE;
    else if (strcmp(text, "auto") == 0)
        *out = SNAPSHOTTER_VERITY_AUTO;
    else if (strcmp(text, "off") == 0)
        *out = SNAPSHOTTER_VERITY_OFF;
    else
        return -EINVAL;
    return 0;
}

const char *vs_daemon_verity_mode_name(enum snapshotter_verity_mode mode)
{
    switch (mode) {
    case SNAPSHOTTER_VERITY_REQUIRE:
        return "require";
    case SNAPSHOTTER_VERITY_AUTO:
        return "auto";
    case SNAPSHOTTER_VERITY_OFF:
        return "off";
    }
    return "unknown";
}

static void listen_free(struct vs_daemon_listen *l)
{
    free(l->address);
    free(l->group);
    free(l->dialect);
}

void vs_daemon_config_free(struct vs_daemon_config *config)
{
    free(config->root);
    free(config->containerd_address);
    free(config->log_level);
    free(config->tardev_layer_src_prefix);
    for (size_t i = 0; i < config->listen_count; i++)
        listen_free(&config->listen[i]);
    free(config->listen);
    memset(config, 0, sizeof(*config));
}

/* Replaces *slot with a copy of value. */
static int set_string(char **slot, const char *value, struct vs_error *err)
{
    char *copy = strdup(value);
    if (!copy)
        return vs_fail(err, -ENOMEM, "out of memory");
    free(*slot);
    *slot = copy;
    return 0;
}

int vs_daemon_config_default(struct vs_daemon_config *config, struct vs_error *err)
{
    memset(config, 0, sizeof(*config));
    config->verity = SNAPSHOTTER_VERITY_REQUIRE;
    config->min_free_space = VS_DEFAULT_MIN_FREE_SPACE;
    config->listen = calloc(1, sizeof(*config->listen));
    if (!config->listen)
        return vs_fail(err, -ENOMEM, "out of memory");
    config->listen_count = 1;
    int r;
    if ((r = set_string(&config->root, VS_DEFAULT_ROOT, err)) < 0 ||
        (r = set_string(&config->containerd_address, VS_DEFAULT_CONTAINERD_ADDRESS, err)) < 0 ||
        (r = set_string(&config->log_level, "info", err)) < 0 ||
        (r = set_string(&config->tardev_layer_src_prefix, "", err)) < 0 ||
        (r = set_string(&config->listen[0].address, VS_DEFAULT_SOCKET, err)) < 0 ||
        (r = set_string(&config->listen[0].group, "", err)) < 0 ||
        (r = set_string(&config->listen[0].dialect, "host", err)) < 0) {
        vs_daemon_config_free(config);
        return r;
    }
    return 0;
}

/* Reads an optional string key into *slot; absent keeps the default. */
static int get_string(const struct vs_toml_table *t, const char *key, char **slot, struct vs_error *err)
{
    const char *value;
    int r = vs_toml_get_string(t, key, &value, err);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    return set_string(slot, value, err);
}

/* A byte count: a non-negative integer (0 means zero_means); a missing key leaves *out as it is. */
static int get_byte_count(const struct vs_toml_table *t, const char *key, const char *zero_means,
                          uint64_t *out, struct vs_error *err)
{
    int64_t v;
    int r = vs_toml_get_int(t, key, &v, err);
    if (r == -ENOENT)
        return 0;
    if (r == 0 && v < 0)
        r = vs_toml_fail(t, key, err, -EINVAL, "%s must be 0 (%s) or a positive number of bytes", key,
                         zero_means);
    if (r == 0)
        *out = (uint64_t)v;
    return r;
}

static int check_absolute(const struct vs_toml_table *t, const char *key, const char *value,
                          struct vs_error *err)
{
    if (value[0] != '/')
        return vs_toml_fail(t, key, err, -EINVAL, "%s must be an absolute path, not \"%s\"", key, value);
    return 0;
}

static int load_listen(const struct vs_toml_table *t, struct vs_daemon_listen *l, struct vs_error *err)
{
    static const char *const allowed[] = {"address", "group", "dialect", NULL};
    int r = vs_toml_unknown_keys(t, allowed, err);
    if (r < 0)
        return r;
    if ((r = get_string(t, "address", &l->address, err)) < 0)
        return r;
    /* dialect: the mounts this socket returns for container root filesystems (docs/kata.md) */
    enum snapshot_dialect dialect;
    if ((r = get_string(t, "dialect", &l->dialect, err)) < 0)
        return r;
    if (snapshot_dialect_parse(l->dialect, &dialect) < 0)
        return vs_toml_fail(t, "dialect", err, -EINVAL,
                            "dialect must be \"host\", \"kata-erofs\" or \"kata-tardev\", not \"%s\"",
                            l->dialect);
    const char *path = l->address;
    if (strncmp(path, "unix://", 7) == 0)
        path += 7;
    else if (strncmp(path, "unix:", 5) == 0)
        path += 5;
    if ((r = check_absolute(t, "address", path, err)) < 0)
        return r;
    /* group: a name or a numeric id */
    int64_t gid;
    r = vs_toml_get_int(t, "group", &gid, NULL);
    if (r == 0) {
        if (gid < 0 || gid > 0x7fffffff)
            return vs_toml_fail(t, "group", err, -EINVAL, "group %lld is not a valid group id",
                                (long long)gid);
        char buf[24];
        snprintf(buf, sizeof(buf), "%lld", (long long)gid);
        return set_string(&l->group, buf, err);
    }
    return get_string(t, "group", &l->group, err);
}

int vs_daemon_config_load(struct vs_daemon_config *config, const char *path, bool must_exist,
                          struct vs_error *err)
{
    struct stat st;
    if (!must_exist && stat(path, &st) < 0 && errno == ENOENT)
        return 0;
    struct vs_toml *doc = vs_toml_parse_file(path, err);
    if (!doc)
        return err->code;
    const struct vs_toml_table *root = vs_toml_root(doc);
    static const char *const allowed[] = {
        "root",   "verity",         "containerd_address",      "log_level",
        "listen", "max_layer_size", "tardev_layer_src_prefix", "min_free_space",
        NULL};
    int r = vs_toml_unknown_keys(root, allowed, err);
    if (r < 0)
        goto out;
    if ((r = get_string(root, "root", &config->root, err)) < 0 ||
        (r = check_absolute(root, "root", config->root, err)) < 0)
        goto out;
    const char *verity;
    r = vs_toml_get_string(root, "verity", &verity, err);
    if (r == 0 && vs_daemon_verity_mode_parse(verity, &config->verity) < 0)
        r = vs_toml_fail(root, "verity", err, -EINVAL,
                         "verity must be \"require\", \"auto\" or \"off\", not \"%s\"", verity);
    if (r < 0 && r != -ENOENT)
        goto out;
    if ((r = get_string(root, "containerd_address", &config->containerd_address, err)) < 0)
        goto out;
    if ((r = get_byte_count(root, "max_layer_size", "no limit", &config->max_layer_size, err)) < 0 ||
        (r = get_byte_count(root, "min_free_space", "no reserve", &config->min_free_space, err)) < 0)
        goto out;
    if ((r = get_string(root, "tardev_layer_src_prefix", &config->tardev_layer_src_prefix, err)) < 0 ||
        (config->tardev_layer_src_prefix[0] &&
         (r = check_absolute(root, "tardev_layer_src_prefix", config->tardev_layer_src_prefix, err)) < 0))
        goto out;
    if ((r = get_string(root, "log_level", &config->log_level, err)) < 0)
        goto out;
    if (strcmp(config->log_level, "debug") && strcmp(config->log_level, "info") &&
        strcmp(config->log_level, "warn") && strcmp(config->log_level, "error")) {
        r = vs_toml_fail(root, "log_level", err, -EINVAL,
                         "log_level must be \"debug\", \"info\", \"warn\" or \"error\", not \"%s\"",
                         config->log_level);
        goto out;
    }
    size_t count;
    r = vs_toml_get_table_array(root, "listen", &count, err);
    if (r == -ENOENT) {
        r = 0;
        goto out;
    }
    if (r < 0)
        goto out;
    struct vs_daemon_listen *listen = calloc(count, sizeof(*listen));
    if (!listen) {
        r = vs_fail(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < count && r == 0; i++) {
        if ((r = set_string(&listen[i].address, VS_DEFAULT_SOCKET, err)) < 0 ||
            (r = set_string(&listen[i].group, "", err)) < 0 ||
            (r = set_string(&listen[i].dialect, "host", err)) < 0)
            break;
        r = load_listen(vs_toml_table_array_at(root, "listen", i), &listen[i], err);
    }
    /* Two listeners on one socket would fight over it. */
    for (size_t i = 0; i < count && r == 0; i++)
        for (size_t j = 0; j < i && r == 0; j++)
            if (strcmp(listen[i].address, listen[j].address) == 0)
                r = vs_toml_fail(vs_toml_table_array_at(root, "listen", i), "address", err, -EINVAL,
                                 "address %s is already used by another [[listen]] table", listen[i].address);
    if (r < 0) {
        for (size_t i = 0; i < count; i++)
            listen_free(&listen[i]);
        free(listen);
        goto out;
    }
    for (size_t i = 0; i < config->listen_count; i++)
        listen_free(&config->listen[i]);
    free(config->listen);
    config->listen = listen;
    config->listen_count = count;
out:
    vs_toml_free(doc);
    return r < 0 ? r : 0;
}
