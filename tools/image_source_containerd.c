/* An image source on containerd's content store, read over containerd's gRPC API with the client of grpc/:
 * the image record (Images.Get) gives the top-level descriptor, manifests, indexes and configs are read whole
 * (Content.Info + Content.Read), layers are streamed out of Content.Read chunk by chunk. Nothing is pulled
 * again and nothing is written: an image that containerd holds (pulled, imported, or put there by `veritysnap
 * pull`) is hashed from the bytes containerd has. The client is thread-safe, so several layers stream at
 * once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "grpc/containerd_client.h"
#include "image.h"

#define CHUNK (1u << 20)

struct containerd_source {
    struct image_source base;
    struct cd_client *client;
    char *address;
    char *ns;
    char *ref;
};

/* "busybox:1" -> "docker.io/library/busybox:1", "team/app" -> "docker.io/team/app:latest", as docker and CRI
 * name images; NULL when ref already names a registry (a first component with '.' or ':', or "localhost"). */
static char *docker_normalized(const char *ref)
{
    const char *slash = strchr(ref, '/');
    if (slash) {
        size_t n = (size_t)(slash - ref);
        if (memchr(ref, '.', n) || memchr(ref, ':', n) || (n == 9 && strncmp(ref, "localhost", 9) == 0))
            return NULL;
    }
    const char *last = strrchr(ref, '/');
    last = last ? last + 1 : ref;
    bool tagged = strchr(last, ':') || strchr(ref, '@');
    char *out;
    if (asprintf(&out, "docker.io/%s%s%s", slash ? "" : "library/", ref, tagged ? "" : ":latest") < 0)
        return NULL;
    return out;
}

static int cd_source_read_small(struct containerd_source *s, const char *digest, const char *what,
                                struct image_blob *out, struct vs_error *err)
{
    struct cd_ctx ctx = {s->ns, NULL};
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = cd_content_read_all(s->client, &ctx, digest, IMAGE_SMALL_BLOB_MAX, &data, &len, err);
    if (rc == -ENOENT)
        return vs_fail(err, -ENOENT,
                       "%s %s is not in containerd's content store (namespace '%s'): the image is incomplete "
                       "there (imported or pulled for another platform?)",
                       what, digest, s->ns);
    if (rc < 0)
        return vs_error_prefix(err, "containerd at %s: reading %s %s", s->address, what, digest);
    /* NUL-terminated, as the other sources hand out their blobs. */
    char *buf = realloc(data, len + 1);
    if (!buf) {
        free(data);
        return vs_fail(err, -ENOMEM, "out of memory");
    }
    buf[len] = '\0';
    memset(out, 0, sizeof(*out));
    out->data = buf;
    out->len = len;
    return 0;
}

static int cd_source_resolve(struct image_source *base, struct image_blob *root, struct vs_error *err)
{
    struct containerd_source *s = (struct containerd_source *)base;
    struct cd_ctx ctx = {s->ns, NULL};
    char digest[IMAGE_DIGEST_MAX], media_type[128];
    struct vs_error e;
    vs_error_clear(&e);
    const char *name = s->ref;
    char *alt = NULL;
    int rc = cd_image_get(s->client, &ctx, name, digest, sizeof(digest), media_type, sizeof(media_type), &e);
    if (rc == -ENOENT && (alt = docker_normalized(s->ref)) != NULL) {
        vs_error_clear(&e);
        name = alt;
        rc = cd_image_get(s->client, &ctx, name, digest, sizeof(digest), media_type, sizeof(media_type), &e);
    }
    if (rc == -ENOENT) {
        rc = vs_fail(
            err, -ENOENT,
            "image '%s' not found in containerd namespace '%s' at %s%s%s%s (see `ctr -n %s images ls`)",
            s->ref, s->ns, s->address, alt ? " (nor as '" : "", alt ? alt : "", alt ? "')" : "", s->ns);
        free(alt);
        return rc;
    }
    if (rc < 0) {
        *err = e;
        free(alt);
        return vs_error_prefix(err, "containerd at %s: image '%s'", s->address, s->ref);
    }
    free(alt);
    if (!image_digest_valid(digest))
        return vs_fail(err, -EBADMSG, "image '%s' in containerd: unsupported or malformed target digest '%s'",
                       s->ref, digest);
    rc = cd_source_read_small(s, digest, "the image's manifest", root, err);
    if (rc < 0)
        return rc;
    /* cd_content_read_all checked the bytes against the digest. */
    snprintf(root->digest, sizeof(root->digest), "%s", digest);
    snprintf(root->media_type, sizeof(root->media_type), "%s", media_type);
    return 0;
}

static int cd_source_fetch(struct image_source *base, const struct image_descriptor *d,
                           struct image_blob *out, struct vs_error *err)
{
    struct containerd_source *s = (struct containerd_source *)base;
    if (!d->digest[0])
        return vs_fail(err, -EBADMSG, "a descriptor without a digest cannot be read from containerd");
    int rc = cd_source_read_small(s, d->digest, "blob", out, err);
    if (rc == 0 && d->media_type)
        snprintf(out->media_type, sizeof(out->media_type), "%s", d->media_type);
    return rc;
}

static int cd_source_stream(struct image_source *base, const struct image_descriptor *d, image_chunk_fn fn,
                            void *cbctx, struct vs_error *err)
{
    struct containerd_source *s = (struct containerd_source *)base;
    struct cd_ctx ctx = {s->ns, NULL};
    if (!d->digest[0])
        return vs_fail(err, -EBADMSG, "a layer without a digest cannot be read from containerd");
    int64_t size = 0;
    int rc = cd_content_info(s->client, &ctx, d->digest, &size, err);
    if (rc == -ENOENT)
        return vs_fail(err, -ENOENT, "the blob is not in containerd's content store (namespace '%s')", s->ns);
    if (rc < 0)
        return vs_error_prefix(err, "containerd at %s", s->address);
    int fd;
    struct cd_read *r;
    rc = cd_content_read_start(s->client, &ctx, d->digest, size, &fd, &r, err);
    if (rc < 0)
        return vs_error_prefix(err, "containerd at %s", s->address);
    char *buf = malloc(CHUNK);
    if (!buf)
        rc = vs_fail(err, -ENOMEM, "out of memory");
    while (rc == 0) {
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = vs_fail(err, -errno, "reading the blob from containerd: %s", strerror(errno));
            break;
        }
        if (n == 0)
            break;
        rc = fn(cbctx, buf, (size_t)n, err);
    }
    free(buf);
    /* On success everything was read already: finishing checks containerd's status, the size and the digest
     * of the whole blob. On a failure here the stream is abandoned, and our error is the one that counts. */
    struct vs_error fe;
    vs_error_clear(&fe);
    int frc = cd_content_read_finish(r, rc == 0, &fe);
    if (rc == 0 && frc < 0) {
        *err = fe;
        rc = frc;
    }
    return rc;
}

static void cd_source_free(struct image_source *base)
{
    struct containerd_source *s = (struct containerd_source *)base;
    cd_client_free(s->client);
    grpc_shutdown();
    free(s->address);
    free(s->ns);
    free(s->ref);
    free(s->base.name);
    free(s);
}

static const struct image_source_ops containerd_ops = {cd_source_resolve, cd_source_fetch, cd_source_stream,
                                                       cd_source_free};

int image_source_containerd_open(const char *address, const char *ns, const char *ref,
                                 struct image_source **out, struct vs_error *err)
{
    *out = NULL;
    if (!ns || !ns[0])
        return vs_fail(err, -EINVAL, "the containerd namespace is empty");
    if (!ref || !ref[0])
        return vs_fail(err, -EINVAL, "no image reference given");
    if (access(strncmp(address, "unix:", 5) == 0 ? address + 5 : address, F_OK) < 0)
        return vs_fail(err, -errno, "containerd socket '%s': %s", address, strerror(errno));
    struct containerd_source *s = calloc(1, sizeof(*s));
    if (!s)
        return vs_fail(err, -ENOMEM, "out of memory");
    grpc_init();
    s->base.ops = &containerd_ops;
    s->address = strdup(address);
    s->ns = strdup(ns);
    s->ref = strdup(ref);
    if (asprintf(&s->base.name, "containerd:%s/%s", ns, ref) < 0)
        s->base.name = NULL;
    int rc = cd_client_new(address, &s->client, err);
    if (rc < 0 || !s->address || !s->ns || !s->ref || !s->base.name) {
        if (rc == 0)
            rc = vs_fail(err, -ENOMEM, "out of memory");
        cd_source_free(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}
