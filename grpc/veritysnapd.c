/* veritysnapd: the containerd proxy snapshotter daemon. Reads the configuration, opens the snapshot store,
 * serves containerd's Snapshots API on each configured socket until SIGTERM or SIGINT, then stops cleanly and
 * exits 0. */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "common/vs_error.h"
#include "common/vs_log.h"
#include "grpc/containerd_client.h"
#include "grpc/vs_grpc.h"
#include "snapshotter/snapshotter.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: veritysnapd [OPTIONS]\n"
            "containerd proxy snapshotter: serves containerd.services.snapshots.v1.Snapshots on unix sockets "
            "and\n"
            "turns layers into read-only images with dm-verity trees.\n"
            "\n"
            "  --config FILE          configuration file (default " VS_DEFAULT_CONFIG_PATH
            "; a missing default\n"
            "                         file means the defaults, a missing FILE given here is an error)\n"
            "  --root DIR             state root (default " VS_DEFAULT_ROOT ")\n"
            "  --address SOCK         serve one socket at SOCK instead of the configured [[listen]] tables\n"
            "  --verity MODE          require, auto or off: dm-verity on host mounts (default require)\n"
            "  --containerd-address SOCK  containerd's socket, to read layer blobs from its content store "
            "(default\n"
            "                         " VS_DEFAULT_CONTAINERD_ADDRESS "; \"\" turns the blob path off)\n"
            "  --log-level LEVEL      debug, info, warn or error (default info)\n"
            "  --print-default-config print the commented default configuration and exit\n"
            "  --version              print the version and exit\n"
            "  --help                 print this help and exit\n"
            "\n"
            "Flags override the configuration file. Logs go to stderr in logfmt. SIGTERM or SIGINT stops the "
            "daemon.\n"
            "Exit codes: 0 clean stop, 1 configuration or start-up error, 2 usage error.\n");
}

struct flags {
    const char *config, *root, *address, *verity, *log_level, *containerd_address;
};

/* Returns -1 to exit 0 (help, version, default config), 0 to run, 2 on a usage error. */
static int parse_flags(int argc, char **argv, struct flags *f)
{
    enum {
        OPT_CONFIG = 256,
        OPT_ROOT,
        OPT_ADDRESS,
        OPT_VERITY,
        OPT_LOG_LEVEL,
        OPT_CONTAINERD,
        OPT_PRINT,
        OPT_VERSION,
        OPT_HELP
    };
    static const struct option options[] = {
        {"config", required_argument, NULL, OPT_CONFIG},
        {"root", required_argument, NULL, OPT_ROOT},
        {"address", required_argument, NULL, OPT_ADDRESS},
        {"verity", required_argument, NULL, OPT_VERITY},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"containerd-address", required_argument, NULL, OPT_CONTAINERD},
        {"print-default-config", no_argument, NULL, OPT_PRINT},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            f->config = optarg;
            break;
        case OPT_ROOT:
            f->root = optarg;
            break;
        case OPT_ADDRESS:
            f->address = optarg;
            break;
        case OPT_VERITY:
            f->verity = optarg;
            break;
        case OPT_LOG_LEVEL:
            f->log_level = optarg;
            break;
        case OPT_CONTAINERD:
            f->containerd_address = optarg;
            break;
        case OPT_PRINT:
            fputs(vs_daemon_config_default_text(), stdout);
            return -1;
        case OPT_VERSION:
            printf("veritysnapd %s\n", VS_VERSION);
            return -1;
        case OPT_HELP:
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "veritysnapd: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return 0;
}

/* Flags over the file. --address replaces the [[listen]] tables by one socket (keeping the first table's
 * group). */
static int apply_flags(struct vs_daemon_config *config, const struct flags *f, struct vs_error *err)
{
    if (f->root) {
        if (f->root[0] != '/')
            return vs_fail(err, -EINVAL, "--root %s: must be an absolute path", f->root);
        char *copy = strdup(f->root);
        if (!copy)
            return vs_fail(err, -ENOMEM, "out of memory");
        free(config->root);
        config->root = copy;
    }
    if (f->verity && vs_daemon_verity_mode_parse(f->verity, &config->verity) < 0)
        return vs_fail(err, -EINVAL, "--verity %s: must be require, auto or off", f->verity);
    if (f->log_level) {
        if (strcmp(f->log_level, "debug") && strcmp(f->log_level, "info") && strcmp(f->log_level, "warn") &&
            strcmp(f->log_level, "error"))
            return vs_fail(err, -EINVAL, "--log-level %s: must be debug, info, warn or error", f->log_level);
        char *copy = strdup(f->log_level);
        if (!copy)
            return vs_fail(err, -ENOMEM, "out of memory");
        free(config->log_level);
        config->log_level = copy;
    }
    if (f->containerd_address) {
        char *copy = strdup(f->containerd_address);
        if (!copy)
            return vs_fail(err, -ENOMEM, "out of memory");
        free(config->containerd_address);
        config->containerd_address = copy;
    }
    if (f->address) {
        char *copy = strdup(f->address);
        if (!copy)
            return vs_fail(err, -ENOMEM, "out of memory");
        for (size_t i = 1; i < config->listen_count; i++) {
            free(config->listen[i].address);
            free(config->listen[i].group);
            free(config->listen[i].dialect);
        }
        config->listen_count = 1;
        free(config->listen[0].address);
        config->listen[0].address = copy;
    }
    return 0;
}

/* The signals are blocked in every thread (the mask is inherited by gRPC's and the workers' threads) and read
 * from a signalfd by the main thread alone. */
/* Tells the service manager (systemd's Type=notify, or anything speaking its datagram protocol) how the
 * daemon stands: READY=1 once every socket serves, STOPPING=1 at shutdown. Without NOTIFY_SOCKET it does
 * nothing. */
static void notify_service_manager(const char *state)
{
    const char *addr = getenv("NOTIFY_SOCKET");
    if (!addr || (addr[0] != '/' && addr[0] != '@'))
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(addr);
    if (len >= sizeof(sa.sun_path)) {
        vs_log(VS_LOG_WARN, "NOTIFY_SOCKET is too long; not notifying", "notify_socket", addr, NULL);
        return;
    }
    memcpy(sa.sun_path, addr, len);
    if (addr[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
                         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        vs_log(VS_LOG_WARN, "cannot notify the service manager", "notify_socket", addr, "error",
               strerror(errno), NULL);
    if (fd >= 0)
        close(fd);
}

static int wait_for_signal(int sfd)
{
    for (;;) {
        struct signalfd_siginfo si;
        ssize_t n = read(sfd, &si, sizeof(si));
        if (n == (ssize_t)sizeof(si))
            return (int)si.ssi_signo;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int main(int argc, char **argv)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0) {
        fprintf(stderr, "veritysnapd: cannot block signals\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    struct flags f = {0};
    int r = parse_flags(argc, argv, &f);
    if (r)
        return r < 0 ? 0 : r;

    struct vs_error err;
    vs_error_clear(&err);
    struct vs_daemon_config config;
    if (vs_daemon_config_default(&config, &err) < 0 ||
        vs_daemon_config_load(&config, f.config ? f.config : VS_DEFAULT_CONFIG_PATH, f.config != NULL, &err) <
            0 ||
        apply_flags(&config, &f, &err) < 0) {
        vs_log(VS_LOG_ERROR, "configuration", "error", err.message, NULL);
        vs_daemon_config_free(&config);
        return 1;
    }
    vs_log_set_level(config.log_level);

    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        vs_log(VS_LOG_ERROR, "signalfd", "error", strerror(errno), NULL);
        vs_daemon_config_free(&config);
        return 1;
    }

    struct snapshotter_config sc = {.root = config.root, .verity = config.verity};
    /* The blob path reads layer blobs from containerd's content store (the channel connects lazily). */
    struct cd_client *containerd = NULL;
    struct snapshotter_content content;
    layer_file_options_default(&sc.layer);
    sc.layer.tarfs.max_image_size = config.max_layer_size;
    sc.tardev_layer_prefix = config.tardev_layer_src_prefix;
    sc.layer.min_free_bytes = config.min_free_space;
    struct snapshotter *snap = NULL;
    struct vs_grpc_server **servers = calloc(config.listen_count, sizeof(*servers));
    int status = 1;
    grpc_init();
    if (!servers) {
        vs_log(VS_LOG_ERROR, "out of memory", NULL);
        goto out;
    }
    /* Every socket is claimed before the store is opened: a second daemon is refused before it touches the
     * root. */
    for (size_t i = 0; i < config.listen_count; i++) {
        struct vs_grpc_listen l = {
            .address = config.listen[i].address,
            .group = config.listen[i].group,
            .dialect = config.listen[i].dialect,
        };
        if (vs_grpc_server_new(&l, &servers[i], &err) < 0) {
            vs_log(VS_LOG_ERROR, "cannot listen", "address", l.address, "error", err.message, NULL);
            goto out;
        }
    }
    if (config.containerd_address && config.containerd_address[0]) {
        if (cd_client_new(config.containerd_address, &containerd, &err) < 0) {
            vs_log(VS_LOG_ERROR, "containerd client", "address", config.containerd_address, "error",
                   err.message, NULL);
            goto out;
        }
        cd_client_content_source(containerd, &content);
        sc.content = &content;
    }
    if (snapshotter_open(&sc, &snap, &err) < 0) {
        vs_log(VS_LOG_ERROR, "cannot open the state root", "root", config.root, "error", err.message, NULL);
        goto out;
    }
    for (size_t i = 0; i < config.listen_count; i++) {
        if (vs_grpc_server_start(servers[i], snap, &err) < 0) {
            vs_log(VS_LOG_ERROR, "cannot serve", "address", config.listen[i].address, "error", err.message,
                   NULL);
            goto out;
        }
    }
    vs_log(VS_LOG_INFO, "veritysnapd started", "version", VS_VERSION, "root", config.root, "verity",
           vs_daemon_verity_mode_name(config.verity), "containerd_address",
           config.containerd_address ? config.containerd_address : "", NULL);
    notify_service_manager("READY=1\nSTATUS=serving");
    int sig = wait_for_signal(sfd);
    vs_log(VS_LOG_INFO, "stopping", "signal", sig > 0 ? strsignal(sig) : "error", NULL);
    notify_service_manager("STOPPING=1");
    status = 0;
out:
    for (size_t i = 0; servers && i < config.listen_count; i++)
        vs_grpc_server_stop(servers[i]);
    free(servers);
    if (snap)
        snapshotter_close(snap);
    cd_client_free(containerd);
    grpc_shutdown();
    close(sfd);
    if (status == 0)
        vs_log(VS_LOG_INFO, "veritysnapd stopped", NULL);
    vs_daemon_config_free(&config);
    return status;
}
