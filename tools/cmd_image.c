/* veritysnap image roothash: per-layer root hashes of a whole image, from a layout, an archive, a registry or
 * containerd's content store. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "tool.h"
#include "tool_options.h"

static const char image_usage[] =
    "usage: veritysnap image roothash [options] --oci-layout DIR [--ref NAME]\n"
    "       veritysnap image roothash [options] --oci-archive FILE [--ref NAME]\n"
    "       veritysnap image roothash [options] --docker-archive FILE [--ref REPO:TAG]\n"
    "       veritysnap image roothash [options] REGISTRY/REPO[:TAG|@DIGEST]\n"
    "       veritysnap image roothash [options] --containerd-address SOCK [--namespace NS] IMAGE\n"
    "Prints, as one JSON object, the image's manifest and config digests, its platform and, per layer, its "
    "digest,\n"
    "diff ID, chain ID and every key convert prints (root_hash, verity parameters). Each blob's digest and "
    "diff ID\n"
    "are checked while it streams. With --all-platforms, a JSON array of such objects.\n"
    "\n"
    "  --ref NAME                a manifest of the layout by org.opencontainers.image.ref.name, or a "
    "RepoTags entry\n"
    "  --platform OS/ARCH[/VAR]  the image of an index to use (default: the host's)\n"
    "  --all-platforms           every image of an index\n"
    "  --output-dir DIR          also write each layer file there (<diff ID hex>.<format>), as convert "
    "would\n"
    "  --layers-cache FILE       reuse and record root hashes by (diff ID, format, verity parameters)\n"
    "  --genpolicy-cache FILE    merge [{\"diff_id\",\"verity_hash\"}] into genpolicy's layers cache "
    "(--format tarfs)\n"
    "  --jobs N                  layers converted at once (default: online cores)\n"
    "  --quiet                   no progress bars (they are only drawn when stderr is a terminal)\n"
    "registry:\n"
    "  --plain-http              http:// instead of https://\n"
    "  --ca-file FILE            trust this CA bundle for the registry and its token endpoint\n"
    "  --username USER           with --password-stdin (else docker's config.json and its helpers, then\n"
    "                            $REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR/containers/auth.json)\n"
    "  --password-stdin          read the password from the first line of stdin\n"
    "  --authfile FILE           credentials from this auth.json only (podman's format: auths, credHelpers)\n"
    "  --retries N               retries on 5xx and connection errors (default 4, with backoff)\n"
    "containerd (an image already in its content store, read over its gRPC API; nothing is pulled):\n"
    "  --containerd-address SOCK containerd's socket; IMAGE is the name of the image record\n"
    "  --namespace NS            containerd namespace (default k8s.io, CRI's; ctr uses default)\n"
    "layer files:\n" LAYER_OPTIONS_HELP;

enum {
    OPT_OCI_LAYOUT = 0x300,
    OPT_OCI_ARCHIVE,
    OPT_DOCKER_ARCHIVE,
    OPT_REF,
    OPT_PLATFORM,
    OPT_ALL_PLATFORMS,
    OPT_OUTPUT_DIR,
    OPT_LAYERS_CACHE,
    OPT_GENPOLICY_CACHE,
    OPT_JOBS,
    OPT_QUIET,
    OPT_PLAIN_HTTP,
    OPT_CA_FILE,
    OPT_USERNAME,
    OPT_PASSWORD_STDIN,
    OPT_AUTHFILE,
    OPT_RETRIES,
    OPT_CONTAINERD_ADDRESS,
    OPT_NAMESPACE,
    OPT_IMAGE_HELP,
};

static char *read_password(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    return line;
}

static int image_roothash(int argc, char **argv)
{
    struct image_process_options po = {0};
    layer_file_options_default(&po.layer);
    po.layer.tarfs.warning = tool_print_warning;
    struct image_select sel = {0};
    struct registry_options ro = {.retries = 4};
    const char *oci_layout = NULL, *oci_archive = NULL, *docker_archive = NULL, *ref = NULL;
    const char *layers_cache = NULL, *genpolicy_cache = NULL;
    const char *containerd_address = NULL, *ns = NULL;
    bool quiet = false, password_stdin = false;
    static const struct option longopts[] = {
        {"oci-layout", required_argument, NULL, OPT_OCI_LAYOUT},
        {"oci-archive", required_argument, NULL, OPT_OCI_ARCHIVE},
        {"docker-archive", required_argument, NULL, OPT_DOCKER_ARCHIVE},
        {"ref", required_argument, NULL, OPT_REF},
        {"platform", required_argument, NULL, OPT_PLATFORM},
        {"all-platforms", no_argument, NULL, OPT_ALL_PLATFORMS},
        {"output-dir", required_argument, NULL, OPT_OUTPUT_DIR},
        {"layers-cache", required_argument, NULL, OPT_LAYERS_CACHE},
        {"genpolicy-cache", required_argument, NULL, OPT_GENPOLICY_CACHE},
        {"jobs", required_argument, NULL, OPT_JOBS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"plain-http", no_argument, NULL, OPT_PLAIN_HTTP},
        {"ca-file", required_argument, NULL, OPT_CA_FILE},
        {"username", required_argument, NULL, OPT_USERNAME},
        {"password-stdin", no_argument, NULL, OPT_PASSWORD_STDIN},
        {"authfile", required_argument, NULL, OPT_AUTHFILE},
        {"retries", required_argument, NULL, OPT_RETRIES},
        {"containerd-address", required_argument, NULL, OPT_CONTAINERD_ADDRESS},
        {"namespace", required_argument, NULL, OPT_NAMESPACE},
        {"help", no_argument, NULL, OPT_IMAGE_HELP},
        LAYER_LONG_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int opt, longindex = 0;
    while ((opt = getopt_long(argc, argv, "hq", longopts, &longindex)) != -1) {
        char *end;
        switch (opt) {
        case OPT_OCI_LAYOUT:
            oci_layout = optarg;
            break;
        case OPT_OCI_ARCHIVE:
            oci_archive = optarg;
            break;
        case OPT_DOCKER_ARCHIVE:
            docker_archive = optarg;
            break;
        case OPT_REF:
            ref = optarg;
            break;
        case OPT_PLATFORM:
            sel.platform = optarg;
            break;
        case OPT_ALL_PLATFORMS:
            sel.all_platforms = true;
            break;
        case OPT_OUTPUT_DIR:
            po.output_dir = optarg;
            break;
        case OPT_LAYERS_CACHE:
            layers_cache = optarg;
            break;
        case OPT_GENPOLICY_CACHE:
            genpolicy_cache = optarg;
            break;
        case 'q':
        case OPT_QUIET:
            quiet = true;
            break;
        case OPT_PLAIN_HTTP:
            ro.plain_http = true;
            break;
        case OPT_CA_FILE:
            ro.ca_file = optarg;
            break;
        case OPT_USERNAME:
            ro.username = optarg;
            break;
        case OPT_PASSWORD_STDIN:
            password_stdin = true;
            break;
        case OPT_AUTHFILE:
            ro.authfile = optarg;
            break;
        case OPT_CONTAINERD_ADDRESS:
            containerd_address = optarg;
            break;
        case OPT_NAMESPACE:
            ns = optarg;
            break;
        case OPT_JOBS:
            po.jobs = (int)strtol(optarg, &end, 10);
            if (*end || po.jobs < 1 || po.jobs > 1024)
                return tool_usage_error("bad value '%s' for --jobs", optarg);
            break;
        case OPT_RETRIES:
            ro.retries = (int)strtol(optarg, &end, 10);
            if (*end || ro.retries < 0 || ro.retries > 100)
                return tool_usage_error("bad value '%s' for --retries", optarg);
            break;
        case 'h':
        case OPT_IMAGE_HELP:
            fputs(image_usage, stdout);
            return EXIT_OK;
        default: {
            int r = tool_parse_layer_option(opt, optarg, &po.layer);
            if (r < 0)
                return tool_usage_error("bad value '%s' for --%s", optarg, longopts[longindex].name);
            if (r == 0) {
                fputs(image_usage, stderr);
                return EXIT_USAGE;
            }
        }
        }
    }
    const char *registry_ref = optind < argc ? argv[optind] : NULL;
    int inputs = !!oci_layout + !!oci_archive + !!docker_archive + !!registry_ref;
    if (inputs != 1 || optind + (registry_ref ? 1 : 0) != argc) {
        fputs(image_usage, stderr);
        return tool_usage_error("give exactly one image: --oci-layout, --oci-archive, --docker-archive, a "
                                "reference, or --containerd-address with an image name");
    }
    if (containerd_address && !registry_ref)
        return tool_usage_error("--containerd-address needs the image's name in containerd");
    if (ns && !containerd_address)
        return tool_usage_error("--namespace is for --containerd-address");
    if (ns && !ns[0])
        return tool_usage_error("--namespace must not be empty");
    if (containerd_address && (ro.plain_http || ro.ca_file || ro.username || ro.authfile))
        return tool_usage_error(
            "--plain-http, --ca-file, --username and --authfile are for registries, not containerd");
    if (ro.authfile && !registry_ref)
        return tool_usage_error("--authfile is for registries");
    if (ro.authfile && ro.username)
        return tool_usage_error("--authfile and --username exclude each other");
    if (ref && registry_ref)
        return tool_usage_error("--ref is for layouts and archives; put the tag in the %s",
                                containerd_address ? "image name" : "reference");
    if (sel.platform && sel.all_platforms)
        return tool_usage_error("--platform and --all-platforms exclude each other");
    if (!po.layer.verity && po.layer.tarfs.format != TARFS_FORMAT_TARFS)
        return tool_usage_error("image roothash needs verity (drop --no-verity)");
    if (genpolicy_cache && po.layer.tarfs.format != TARFS_FORMAT_TARFS)
        return tool_usage_error("--genpolicy-cache holds tarfs root hashes: add --format tarfs");
    if (password_stdin && !ro.username)
        return tool_usage_error("--password-stdin needs --username");
    if (ro.username && !password_stdin)
        return tool_usage_error(
            "--username needs --password-stdin (passwords are not taken on the command line)");
    if (po.output_dir) {
        struct stat st;
        if (stat(po.output_dir, &st) < 0 || !S_ISDIR(st.st_mode))
            return tool_usage_error("--output-dir '%s' is not a directory", po.output_dir);
    }
    char *password = NULL;
    if (password_stdin) {
        password = read_password();
        if (!password)
            return tool_usage_error("--password-stdin: nothing on stdin");
        ro.password = password;
    }
    po.progress = !quiet && isatty(STDERR_FILENO);
    ro.quiet = quiet;
    /* A converter that stops reading early must not kill us: the tee sees EPIPE and keeps hashing. */
    signal(SIGPIPE, SIG_IGN);

    struct vs_error err = {0};
    struct image_source *src = NULL;
    int rc;
    if (oci_layout)
        rc = image_source_oci_layout_open(oci_layout, ref, &src, &err);
    else if (oci_archive)
        rc = image_source_oci_archive_open(oci_archive, ref, &src, &err);
    else if (docker_archive)
        rc = image_source_docker_archive_open(docker_archive, ref, &src, &err);
    else if (containerd_address)
        rc = image_source_containerd_open(containerd_address, ns ? ns : "k8s.io", registry_ref, &src, &err);
    else
        rc = image_source_registry_open(registry_ref, &ro, &src, &err);
    if (password) {
        explicit_bzero(password, strlen(password));
        free(password);
        ro.password = NULL;
    }
    if (rc < 0)
        return tool_fail(&err);
    struct image *images = NULL;
    size_t count = 0;
    struct image_cache *cache = NULL;
    rc = image_resolve(src, &sel, &images, &count, &err);
    if (rc == 0 && layers_cache)
        rc = image_cache_open(layers_cache, &cache, &err);
    if (rc == 0)
        rc = image_process(src, images, count, &po, cache, &err);
    if (rc == 0 && cache)
        rc = image_cache_save(cache, &err);
    if (rc == 0 && genpolicy_cache)
        rc = image_genpolicy_cache_save(genpolicy_cache, images, count, &err);
    int exit_code = EXIT_OK;
    if (rc < 0) {
        exit_code = tool_fail(&err);
    } else {
        json_t *out = NULL;
        if (sel.all_platforms) {
            out = json_array();
            for (size_t i = 0; i < count; i++)
                json_array_append_new(out, image_json(src, &images[i]));
        } else {
            out = image_json(src, &images[0]);
        }
        tool_print_json(out);
        json_decref(out);
    }
    for (size_t i = 0; i < count; i++)
        image_free(&images[i]);
    free(images);
    image_cache_free(cache);
    image_source_free(src);
    return exit_code;
}

int cmd_image(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(image_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (strcmp(argv[1], "roothash") == 0)
        return image_roothash(argc - 1, argv + 1);
    fprintf(stderr, "veritysnap: unknown image command '%s'\n%s", argv[1], image_usage);
    return EXIT_USAGE;
}
