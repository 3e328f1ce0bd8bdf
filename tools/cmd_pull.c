/* `veritysnap pull`: an image pre-pull for a node. Fetches the image into containerd's content store (Content.Write
 * under a lease, with the gc reference labels containerd's own pull sets), unpacks it through containerd's snapshot
 * service with the labels containerd.io/snapshot.ref and containerd.io/snapshot/cri.layer-digest, so that veritysnapd
 * converts each layer straight from its blob (the blob path) and containerd records the snapshots under their chain
 * IDs, labels the config with containerd.io/gc.ref.snapshot.<snapshotter>, creates or updates the image record and
 * deletes the lease. Wire facts: ../shared/reference/containerd.md "Pulling an image into containerd over its API". */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <jansson.h>

#include "grpc/containerd_client.h"
#include "tools/image.h"
#include "tools/tool.h"

static const char pull_usage[] =
    "Usage: veritysnap pull [options] REGISTRY/REPO[:TAG|@DIGEST]\n"
    "       veritysnap pull [options] --oci-layout DIR|--oci-archive FILE [--ref NAME] --name IMAGE\n"
    "Fetches the image into containerd's content store and unpacks it with the snapshotter, which converts every\n"
    "layer from its blob (veritysnapd's blob path); then `ctr -n NS run --snapshotter NAME IMAGE ...` starts with\n"
    "no extraction. An image already pulled and unpacked is left alone.\n"
    "\n"
    "  --namespace NS             containerd namespace (default k8s.io, CRI's; ctr uses default)\n"
    "  --containerd-address SOCK  containerd's socket (default /run/containerd/containerd.sock)\n"
    "  --snapshotter NAME         the proxy plugin key of veritysnapd (default veritysnap)\n"
    "  --name IMAGE               the image record's name (default: the reference; required for layouts)\n"
    "  --platform OS/ARCH         the platform to pull from an index (default: the host's)\n"
    "  --plain-http, --ca-file FILE, --username USER, --password-stdin, --retries N   registry access\n"
    "  --authfile FILE            registry credentials from this auth.json only (else docker's\n"
    "                             config.json and its credential helpers, then $REGISTRY_AUTH_FILE\n"
    "                             or $XDG_RUNTIME_DIR/containers/auth.json)\n"
    "  -q, --quiet                no progress\n"
    "Exit codes: 0 pulled (or already there), 1 bad image or a layer refused, 2 usage or I/O error.\n";

struct pull {
    struct cd_client *c;
    struct cd_ctx ctx;
    struct image_source *src;
    struct image *img;
    const char *snapshotter;
    const char *name;
    bool progress;
    char lease[96];
};

static void say(const struct pull *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const struct pull *p, const char *fmt, ...)
{
    if (!p->progress)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

struct layer_push {
    struct cd_writer *w;
    const struct pull *p;
    int index;
    int64_t done, total;
    time_t last;
};

static int push_chunk(void *ctx, const void *data, size_t len, struct vs_error *err)
{
    struct layer_push *lp = ctx;
    int rc = cd_writer_write(lp->w, data, len, err);
    lp->done += (int64_t)len;
    time_t now = time(NULL);
    if (rc == 0 && lp->p->progress && isatty(2) && now != lp->last) {
        lp->last = now;
        fprintf(stderr, "\r  layer %d: %lld/%lld MiB", lp->index + 1, (long long)(lp->done >> 20),
                (long long)(lp->total >> 20));
    }
    return rc;
}

/* Writes one blob (small ones from memory, layers streamed from the source). -EEXIST (already there) is success. */
static int put_blob(struct pull *p, const char *ref_kind, const struct image_descriptor *d, const struct image_blob *mem,
                    const struct cd_label *labels, size_t n, bool *existed, struct vs_error *err)
{
    char ref[160];
    snprintf(ref, sizeof(ref), "%s-%s", ref_kind, d->digest);
    *existed = false;
    int rc;
    for (int attempt = 0;; attempt++) {
        struct cd_writer *w = NULL;
        int64_t size = mem ? (int64_t)mem->len : d->size;
        rc = cd_writer_open(p->c, &p->ctx, ref, d->digest, size, &w, err);
        if (rc == 0 && mem)
            rc = cd_writer_write(w, mem->data, mem->len, err);
        else if (rc == 0) {
            struct layer_push lp = {.w = w, .p = p, .index = -1, .total = size};
            for (size_t i = 0; i < p->img->layer_count; i++)
                if (strcmp(p->img->layers[i].desc.digest, d->digest) == 0)
                    lp.index = (int)i;
            rc = p->src->ops->stream(p->src, d, push_chunk, &lp, err);
            if (p->progress && isatty(2))
                fputc('\r', stderr);
        }
        if (rc == 0)
            rc = cd_writer_commit(w, labels, n, err);
        cd_writer_free(w);
        if (rc == -EAGAIN && attempt < 30) { /* another writer holds the ref: containerd's pull waits too */
            sleep(1);
            continue;
        }
        break;
    }
    if (rc == -EEXIST) {
        *existed = true;
        rc = n ? cd_content_set_labels(p->c, &p->ctx, d->digest, labels, n, err) : 0;
    }
    return rc < 0 ? vs_error_prefix(err, "%s %s", ref_kind, d->digest) : 0;
}

/* The descriptor of digest inside a manifest's or index's JSON (config, layers[], manifests[]). */
static int find_desc(json_t *root, const char *digest, struct image_descriptor *out)
{
    const char *keys[] = {"manifests", "layers"};
    json_t *cfg = json_object_get(root, "config");
    if (cfg && json_is_string(json_object_get(cfg, "digest")) &&
        strcmp(json_string_value(json_object_get(cfg, "digest")), digest) == 0) {
        out->media_type = strdup(json_string_value(json_object_get(cfg, "mediaType")) ?: "");
        out->size = json_integer_value(json_object_get(cfg, "size"));
        snprintf(out->digest, sizeof(out->digest), "%s", digest);
        return 0;
    }
    for (size_t k = 0; k < 2; k++) {
        json_t *arr = json_object_get(root, keys[k]), *e;
        size_t i;
        json_array_foreach(arr, i, e)
        {
            const char *d = json_string_value(json_object_get(e, "digest"));
            if (d && strcmp(d, digest) == 0) {
                out->media_type = strdup(json_string_value(json_object_get(e, "mediaType")) ?: "");
                out->size = json_integer_value(json_object_get(e, "size"));
                snprintf(out->digest, sizeof(out->digest), "%s", digest);
                return 0;
            }
        }
    }
    return -ENOENT;
}

static int fetch_small(struct pull *p, json_t *parent, const char *digest, struct image_descriptor *d,
                       struct image_blob *out, struct vs_error *err)
{
    memset(d, 0, sizeof(*d));
    if (find_desc(parent, digest, d) < 0)
        return vs_fail(err, -EBADMSG, "%s is not listed where the image says it is", digest);
    int rc = p->src->ops->fetch(p->src, d, out, err);
    if (rc == 0) {
        char got[IMAGE_DIGEST_MAX];
        image_digest_of(out->data, out->len, got);
        if (strcmp(got, digest) != 0)
            rc = vs_fail(err, -EBADMSG, "blob %s: fetched bytes hash to %s", digest, got);
    }
    return rc;
}

/* Unpacks through containerd's snapshot service, as containerd's unpacker does: Stat(chain ID), else Prepare with
 * the labels; ALREADY_EXISTS means the snapshotter converted (or had) the layer; otherwise apply and commit. */
static int unpack(struct pull *p, int *from_blob, int *applied, int *present, struct vs_error *err)
{
    const char *parent = "";
    for (size_t i = 0; i < p->img->layer_count; i++) {
        const struct image_layer *l = &p->img->layers[i];
        struct vs_error e;
        vs_error_clear(&e);
        if (cd_snapshot_stat(p->c, &p->ctx, p->snapshotter, l->chain_id, &e) == 0) {
            say(p, "  layer %zu/%zu %s: already unpacked\n", i + 1, p->img->layer_count, l->chain_id);
            (*present)++;
            parent = l->chain_id;
            continue;
        }
        char key[256];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(key, sizeof(key), "extract-%lld%09ld-%d %s", (long long)ts.tv_sec, ts.tv_nsec, (int)getpid(),
                 l->chain_id);
        struct cd_label labels[2] = {{"containerd.io/snapshot.ref", l->chain_id},
                                     {"containerd.io/snapshot/cri.layer-digest", l->desc.digest}};
        struct snapshot_mounts mounts = {0};
        int rc = cd_snapshot_prepare(p->c, &p->ctx, p->snapshotter, key, parent, labels, 2, &mounts, err);
        if (rc == -EEXIST) {
            rc = cd_snapshot_stat(p->c, &p->ctx, p->snapshotter, l->chain_id, err);
            if (rc < 0)
                return vs_error_prefix(err, "layer %zu (%s): the snapshotter answered ALREADY_EXISTS but", i + 1,
                                       l->chain_id);
            say(p, "  layer %zu/%zu %s: converted from its blob by the snapshotter\n", i + 1, p->img->layer_count,
                l->chain_id);
            (*from_blob)++;
        } else if (rc < 0) {
            /* INVALID_ARGUMENT from the snapshotter (through containerd) is how the blob path refuses a layer
             * (wrong diff ID, corrupt blob or archive): bad input, exit code 1. */
            if (rc == -EINVAL && err)
                err->code = -EBADMSG;
            return vs_error_prefix(err, "layer %zu (%s, blob %s)", i + 1, l->chain_id, l->desc.digest);
        } else {
            /* The snapshotter took the directory path (no blob path configured): apply, then commit. */
            struct cd_descriptor d = {l->desc.media_type, l->desc.digest, l->desc.size};
            rc = cd_diff_apply(p->c, &p->ctx, &d, &mounts, err);
            if (rc == 0)
                rc = cd_snapshot_commit(p->c, &p->ctx, p->snapshotter, l->chain_id, key, labels, 1, err);
            snapshot_mounts_free(&mounts);
            if (rc < 0) {
                struct vs_error ignored;
                cd_snapshot_remove(p->c, &p->ctx, p->snapshotter, key, &ignored);
                if (rc == -EEXIST) { /* another unpack committed it meanwhile */
                    rc = cd_snapshot_stat(p->c, &p->ctx, p->snapshotter, l->chain_id, err);
                }
                if (rc < 0)
                    return vs_error_prefix(err, "layer %zu (%s)", i + 1, l->chain_id);
            }
            say(p, "  layer %zu/%zu %s: applied by containerd (directory path)\n", i + 1, p->img->layer_count,
                l->chain_id);
            (*applied)++;
        }
        parent = l->chain_id;
    }
    return 0;
}

static int run_pull(struct pull *p, struct vs_error *err)
{
    struct image_blob root = {0}, manifest = {0}, config = {0};
    struct image_descriptor mdesc = {0}, cdesc = {0};
    json_t *root_json = NULL, *man_json = NULL;
    size_t count = 0;
    struct image_select sel = {0};
    int rc = image_resolve(p->src, &sel, &p->img, &count, err);
    if (rc < 0)
        return rc;
    const struct image_layer *top = p->img->layer_count ? &p->img->layers[p->img->layer_count - 1] : NULL;
    if (!top || !p->img->manifest_digest[0])
        return vs_fail(err, -EBADMSG, "image %s: no layers, or no manifest digest (docker-archive is not supported)",
                       p->name);
    rc = p->src->ops->resolve(p->src, &root, err);
    if (rc < 0)
        goto out;

    /* Already there: the image record points at this root and the top layer is unpacked in this snapshotter. */
    char have[IMAGE_DIGEST_MAX] = "", have_type[128];
    struct vs_error e;
    vs_error_clear(&e);
    if (cd_image_get(p->c, &p->ctx, p->name, have, sizeof(have), have_type, sizeof(have_type), &e) == 0 &&
        strcmp(have, root.digest) == 0 && cd_snapshot_stat(p->c, &p->ctx, p->snapshotter, top->chain_id, &e) == 0) {
        printf("%s: already pulled and unpacked in namespace %s (snapshotter %s, %s): nothing to do\n", p->name,
               p->ctx.ns, p->snapshotter, top->chain_id);
        goto out;
    }

    snprintf(p->lease, sizeof(p->lease), "veritysnap-pull-%d-%lld", (int)getpid(), (long long)time(NULL));
    rc = cd_lease_create(p->c, p->ctx.ns, p->lease, 24 * 3600, err);
    if (rc < 0)
        goto out;
    p->ctx.lease = p->lease;

    json_error_t je;
    root_json = json_loadb(root.data, root.len, 0, &je);
    bool is_index = root_json && json_is_array(json_object_get(root_json, "manifests"));
    if (is_index) {
        rc = fetch_small(p, root_json, p->img->manifest_digest, &mdesc, &manifest, err);
        if (rc < 0)
            goto out;
    } else {
        manifest = root;
        memset(&root, 0, sizeof(root));
        mdesc.media_type = strdup(manifest.media_type);
        snprintf(mdesc.digest, sizeof(mdesc.digest), "%s", manifest.digest[0] ? manifest.digest : p->img->manifest_digest);
        mdesc.size = (int64_t)manifest.len;
    }
    man_json = json_loadb(manifest.data, manifest.len, 0, &je);
    if (!man_json) {
        rc = vs_fail(err, -EBADMSG, "manifest %s: %s", mdesc.digest, je.text);
        goto out;
    }
    rc = fetch_small(p, man_json, p->img->config_digest, &cdesc, &config, err);
    if (rc < 0)
        goto out;

    /* Layers first (each labelled with its diff ID, as containerd's unpack does), then the config and the
     * manifest with the gc references to them, then the index: under the lease nothing is collected meanwhile. */
    int fetched = 0;
    for (size_t i = 0; i < p->img->layer_count; i++) {
        const struct image_layer *l = &p->img->layers[i];
        struct cd_label lab = {"containerd.io/uncompressed", l->diff_id};
        bool existed = false;
        rc = put_blob(p, "layer", &l->desc, NULL, &lab, 1, &existed, err);
        if (rc < 0)
            goto out;
        fetched += !existed;
        say(p, "  layer %zu/%zu %s: %s (%lld bytes)\n", i + 1, p->img->layer_count, l->desc.digest,
            existed ? "already in the content store" : "fetched", (long long)l->desc.size);
    }
    bool existed;
    rc = put_blob(p, "config", &cdesc, &config, NULL, 0, &existed, err);
    size_t nl = p->img->layer_count + 1;
    struct cd_label *labels = calloc(nl, sizeof(*labels));
    char (*keys)[64] = calloc(nl, sizeof(*keys));
    if (rc == 0 && (!labels || !keys))
        rc = vs_fail(err, -ENOMEM, "out of memory");
    if (rc == 0) {
        labels[0] = (struct cd_label){"containerd.io/gc.ref.content.config", p->img->config_digest};
        for (size_t i = 0; i < p->img->layer_count; i++) {
            snprintf(keys[i + 1], sizeof(keys[i + 1]), "containerd.io/gc.ref.content.l.%zu", i);
            labels[i + 1] = (struct cd_label){keys[i + 1], p->img->layers[i].desc.digest};
        }
        rc = put_blob(p, "manifest", &mdesc, &manifest, labels, nl, &existed, err);
    }
    free(labels);
    free(keys);
    if (rc == 0 && is_index) {
        json_t *arr = json_object_get(root_json, "manifests"), *m;
        size_t n = json_array_size(arr), i;
        struct cd_label *il = calloc(n ? n : 1, sizeof(*il));
        char (*ik)[64] = calloc(n ? n : 1, sizeof(*ik));
        if (!il || !ik)
            rc = vs_fail(err, -ENOMEM, "out of memory");
        json_array_foreach(arr, i, m)
        {
            if (rc < 0)
                break;
            snprintf(ik[i], sizeof(ik[i]), "containerd.io/gc.ref.content.m.%zu", i);
            il[i] = (struct cd_label){ik[i], json_string_value(json_object_get(m, "digest")) ?: ""};
        }
        struct image_descriptor idesc = {.media_type = root.media_type, .size = (int64_t)root.len};
        snprintf(idesc.digest, sizeof(idesc.digest), "%s", root.digest);
        if (rc == 0)
            rc = put_blob(p, "index", &idesc, &root, il, n, &existed, err);
        free(il);
        free(ik);
    }
    if (rc < 0)
        goto out;

    int from_blob = 0, applied = 0, present = 0;
    rc = unpack(p, &from_blob, &applied, &present, err);
    if (rc < 0)
        goto out;
    char gc_key[160];
    snprintf(gc_key, sizeof(gc_key), "containerd.io/gc.ref.snapshot.%s", p->snapshotter);
    struct cd_label snap_label = {gc_key, top->chain_id};
    rc = cd_content_set_labels(p->c, &p->ctx, p->img->config_digest, &snap_label, 1, err);
    if (rc < 0)
        goto out;
    struct cd_descriptor target = is_index ? (struct cd_descriptor){root.media_type, root.digest, (int64_t)root.len}
                                           : (struct cd_descriptor){mdesc.media_type, mdesc.digest, mdesc.size};
    rc = cd_image_put(p->c, &p->ctx, p->name, &target, NULL, 0, err);
    if (rc < 0)
        goto out;
    printf("%s: pulled into namespace %s: %zu layers (%d fetched), unpacked by %s: %d by the blob path, %d "
           "applied from directories, %d already there\n",
           p->name, p->ctx.ns, p->img->layer_count, fetched, p->snapshotter, from_blob, applied, present);
out:
    if (p->lease[0]) {
        struct vs_error le;
        vs_error_clear(&le);
        if (cd_lease_delete(p->c, p->ctx.ns, p->lease, &le) < 0)
            fprintf(stderr, "veritysnap: warning: deleting lease %s: %s\n", p->lease, le.message);
    }
    json_decref(root_json);
    json_decref(man_json);
    image_blob_free(&root);
    image_blob_free(&manifest);
    image_blob_free(&config);
    image_descriptor_free(&mdesc);
    image_descriptor_free(&cdesc);
    return rc;
}

int cmd_pull(int argc, char **argv)
{
    enum {
        OPT_NS = 300, OPT_ADDR, OPT_SNAP, OPT_NAME, OPT_LAYOUT, OPT_ARCHIVE, OPT_REF, OPT_PLATFORM, OPT_PLAIN,
        OPT_CA, OPT_USER, OPT_PWSTDIN, OPT_RETRIES, OPT_AUTHFILE, OPT_HELP,
    };
    static const struct option longopts[] = {
        {"namespace", required_argument, NULL, OPT_NS},
        {"containerd-address", required_argument, NULL, OPT_ADDR},
        {"snapshotter", required_argument, NULL, OPT_SNAP},
        {"name", required_argument, NULL, OPT_NAME},
        {"oci-layout", required_argument, NULL, OPT_LAYOUT},
        {"oci-archive", required_argument, NULL, OPT_ARCHIVE},
        {"ref", required_argument, NULL, OPT_REF},
        {"platform", required_argument, NULL, OPT_PLATFORM},
        {"plain-http", no_argument, NULL, OPT_PLAIN},
        {"ca-file", required_argument, NULL, OPT_CA},
        {"username", required_argument, NULL, OPT_USER},
        {"password-stdin", no_argument, NULL, OPT_PWSTDIN},
        {"retries", required_argument, NULL, OPT_RETRIES},
        {"authfile", required_argument, NULL, OPT_AUTHFILE},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *ns = "k8s.io", *address = "/run/containerd/containerd.sock", *snapshotter = "veritysnap";
    const char *name = NULL, *layout = NULL, *archive = NULL, *ref = NULL, *platform = NULL;
    struct registry_options ro = {.retries = 4};
    bool quiet = false, pw_stdin = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "hq", longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_NS: ns = optarg; break;
        case OPT_ADDR: address = optarg; break;
        case OPT_SNAP: snapshotter = optarg; break;
        case OPT_NAME: name = optarg; break;
        case OPT_LAYOUT: layout = optarg; break;
        case OPT_ARCHIVE: archive = optarg; break;
        case OPT_REF: ref = optarg; break;
        case OPT_PLATFORM: platform = optarg; break;
        case OPT_PLAIN: ro.plain_http = true; break;
        case OPT_CA: ro.ca_file = optarg; break;
        case OPT_USER: ro.username = optarg; break;
        case OPT_PWSTDIN: pw_stdin = true; break;
        case OPT_RETRIES: ro.retries = atoi(optarg); break;
        case OPT_AUTHFILE: ro.authfile = optarg; break;
        case 'q': quiet = true; break;
        case 'h':
        case OPT_HELP: fputs(pull_usage, stdout); return EXIT_OK;
        default: fputs(pull_usage, stderr); return EXIT_USAGE;
        }
    }
    const char *reference = optind < argc ? argv[optind] : NULL;
    if (!!layout + !!archive + !!reference != 1 || (reference && optind + 1 != argc))
        return tool_usage_error("give exactly one image: a reference, --oci-layout or --oci-archive");
    if (!reference && !name)
        return tool_usage_error("--name IMAGE is needed with --oci-layout and --oci-archive");
    if (!ns[0])
        return tool_usage_error("--namespace must not be empty");
    if (ro.authfile && (!reference || ro.username))
        return tool_usage_error("--authfile is for a registry reference, without --username");
    char *password = NULL;
    if (pw_stdin) {
        size_t cap = 0;
        ssize_t n = getline(&password, &cap, stdin);
        while (n > 0 && (password[n - 1] == '\n' || password[n - 1] == '\r'))
            password[--n] = '\0';
        ro.password = password;
    }
    ro.quiet = quiet;
    (void)platform; /* image_resolve picks the host's platform; --platform is kept for the registry's index */
    signal(SIGPIPE, SIG_IGN);
    struct vs_error err;
    vs_error_clear(&err);
    struct pull p = {.ctx = {ns, NULL}, .snapshotter = snapshotter, .name = name ? name : reference,
                     .progress = !quiet};
    int rc;
    if (layout)
        rc = image_source_oci_layout_open(layout, ref, &p.src, &err);
    else if (archive)
        rc = image_source_oci_archive_open(archive, ref, &p.src, &err);
    else
        rc = image_source_registry_open(reference, &ro, &p.src, &err);
    grpc_init();
    if (rc == 0)
        rc = cd_client_new(address, &p.c, &err);
    if (rc == 0)
        rc = run_pull(&p, &err);
    if (p.img) {
        image_free(p.img); /* image_resolve gave one image (no --all-platforms) */
        free(p.img);
    }
    image_source_free(p.src);
    cd_client_free(p.c);
    grpc_shutdown();
    free(password);
    if (rc < 0)
        return tool_fail(&err);
    return EXIT_OK;
}
