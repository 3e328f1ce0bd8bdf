/* The image model: index -> manifest -> config -> layers, media types, platforms and chain IDs (OCI image
 * spec). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "common/vs_digest.h"
#include "image.h"

#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"

void image_digest_of(const void *data, size_t len, char out[IMAGE_DIGEST_MAX])
{
    uint8_t d[VS_SHA256_LEN];
    vs_sha256(data, len, d);
    vs_digest_format(d, out);
}

bool image_digest_valid(const char *digest)
{
    if (strncmp(digest, "sha256:", 7) != 0 || strlen(digest) != 71)
        return false;
    for (const char *p = digest + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

void image_blob_free(struct image_blob *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

void image_descriptor_free(struct image_descriptor *d)
{
    free(d->media_type);
    free(d->path);
    free(d->platform);
    memset(d, 0, sizeof(*d));
}

void image_source_free(struct image_source *s)
{
    if (s)
        s->ops->free(s);
}

void image_free(struct image *img)
{
    for (size_t i = 0; i < img->layer_count; i++) {
        image_descriptor_free(&img->layers[i].desc);
        json_decref(img->layers[i].result);
    }
    free(img->layers);
    free(img->platform);
    memset(img, 0, sizeof(*img));
}

void image_host_platform(char *out, size_t cap)
{
    struct utsname u;
    const char *arch = "amd64";
    if (uname(&u) == 0) {
        if (strcmp(u.machine, "x86_64") == 0)
            arch = "amd64";
        else if (strcmp(u.machine, "aarch64") == 0)
            arch = "arm64";
        else if (strncmp(u.machine, "armv7", 5) == 0)
            arch = "arm/v7";
        else if (strcmp(u.machine, "s390x") == 0 || strcmp(u.machine, "ppc64le") == 0 ||
                 strcmp(u.machine, "riscv64") == 0)
            arch = u.machine;
    }
    snprintf(out, cap, "linux/%s", arch);
}

static json_t *parse_json(const struct image_blob *b, const char *what, struct vs_error *err)
{
    json_error_t je;
    json_t *j = json_loadb(b->data, b->len, 0, &je);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        vs_fail(err, -EBADMSG, "%s %s is not a JSON object%s%s", what, b->digest[0] ? b->digest : "",
                j ? "" : ": ", j ? "" : je.text);
        return NULL;
    }
    return j;
}

/* Parses a descriptor object; what names it in messages. */
static int parse_descriptor(json_t *j, const char *what, struct image_descriptor *d, struct vs_error *err)
{
    memset(d, 0, sizeof(*d));
    d->size = -1;
    if (!json_is_object(j))
        return vs_fail(err, -EBADMSG, "%s is not a descriptor object", what);
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    const char *digest = json_string_value(json_object_get(j, "digest"));
    json_t *size = json_object_get(j, "size");
    json_t *ann = json_object_get(j, "annotations");
    const char *path = json_string_value(json_object_get(ann, IMAGE_ANNOTATION_PATH));
    const char *comp = json_string_value(json_object_get(ann, IMAGE_ANNOTATION_COMPRESSION));
    if (digest && !image_digest_valid(digest))
        return vs_fail(err, -EBADMSG, "%s: unsupported or malformed digest '%s' (sha256 only)", what, digest);
    if (!digest && !path)
        return vs_fail(err, -EBADMSG, "%s has no digest", what);
    if (size && (!json_is_integer(size) || json_integer_value(size) < 0))
        return vs_fail(err, -EBADMSG, "%s: bad size", what);
    d->media_type = strdup(mt ? mt : "");
    if (digest)
        snprintf(d->digest, sizeof(d->digest), "%s", digest);
    d->size = size ? (int64_t)json_integer_value(size) : -1;
    d->path = path ? strdup(path) : NULL;
    d->compression_auto = comp && strcmp(comp, "auto") == 0;
    json_t *p = json_object_get(j, "platform");
    if (json_is_object(p)) {
        const char *os = json_string_value(json_object_get(p, "os"));
        const char *arch = json_string_value(json_object_get(p, "architecture"));
        const char *var = json_string_value(json_object_get(p, "variant"));
        if (os && arch && asprintf(&d->platform, "%s/%s%s%s", os, arch, var ? "/" : "", var ? var : "") < 0)
            d->platform = NULL;
    }
    return 0;
}

static int fetch_checked(struct image_source *s, const struct image_descriptor *d, const char *what,
                         struct image_blob *b, struct vs_error *err)
{
    if (d->size > (int64_t)IMAGE_SMALL_BLOB_MAX)
        return vs_fail(err, -EBADMSG, "%s %s: %lld bytes is too big for a %s", what, d->digest,
                       (long long)d->size, what);
    int rc = s->ops->fetch(s, d, b, err);
    if (rc < 0)
        return rc;
    char got[IMAGE_DIGEST_MAX];
    image_digest_of(b->data, b->len, got);
    if (d->digest[0] && strcmp(got, d->digest) != 0) {
        image_blob_free(b);
        return vs_fail(err, -EBADMSG, "%s digest mismatch: descriptor says %s, content is %s", what,
                       d->digest, got);
    }
    if (d->size >= 0 && (size_t)d->size != b->len) {
        image_blob_free(b);
        return vs_fail(err, -EBADMSG, "%s %s: descriptor says %lld bytes, content is %zu", what, d->digest,
                       (long long)d->size, b->len);
    }
    snprintf(b->digest, sizeof(b->digest), "%s", d->digest[0] ? d->digest : got);
    if (d->media_type && d->media_type[0] && !b->media_type[0])
        snprintf(b->media_type, sizeof(b->media_type), "%s", d->media_type);
    return 0;
}

/* Kind of a manifest-ish blob: 'i' index, 'm' manifest, 0 unknown; from the media type, else from its keys.
 */
static int blob_kind(const char *media_type, json_t *j)
{
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    if (!mt || !mt[0])
        mt = media_type;
    if (mt && (strcmp(mt, MT_OCI_INDEX) == 0 || strcmp(mt, MT_DOCKER_LIST) == 0))
        return 'i';
    if (mt && (strcmp(mt, MT_OCI_MANIFEST) == 0 || strcmp(mt, MT_DOCKER_MANIFEST) == 0))
        return 'm';
    if (mt && mt[0])
        return 0;
    if (json_is_array(json_object_get(j, "manifests")))
        return 'i';
    if (json_is_array(json_object_get(j, "layers")))
        return 'm';
    return 0;
}

/* Why a layer media type is refused, or NULL when it is one we convert. */
static const char *layer_refusal(const char *mt, enum tarfs_compression *c)
{
    if (strstr(mt, "+encrypted"))
        return "encrypted layers are not supported";
    if (strstr(mt, "foreign"))
        return "foreign layers are not supported (their blobs live outside the image)";
    if (strstr(mt, "nondistributable"))
        return "non-distributable layers are not supported (their blobs live outside the image)";
    static const char oci[] = "application/vnd.oci.image.layer.v1.tar";
    static const char docker[] = "application/vnd.docker.image.rootfs.diff.tar";
    if (strncmp(mt, oci, sizeof(oci) - 1) != 0 && strncmp(mt, docker, sizeof(docker) - 1) != 0)
        return "unknown layer media type";
    if (tarfs_compression_from_media_type(mt, c) < 0)
        return "unsupported layer compression";
    return NULL;
}

static int chain_ids(struct image *img)
{
    char prev[IMAGE_DIGEST_MAX] = "";
    for (size_t i = 0; i < img->layer_count; i++) {
        struct image_layer *l = &img->layers[i];
        if (i == 0) {
            snprintf(l->chain_id, sizeof(l->chain_id), "%s", l->diff_id);
        } else {
            char buf[2 * IMAGE_DIGEST_MAX];
            int n = snprintf(buf, sizeof(buf), "%s %s", prev, l->diff_id);
            image_digest_of(buf, (size_t)n, l->chain_id);
        }
        snprintf(prev, sizeof(prev), "%s", l->chain_id);
    }
    return 0;
}

static int load_manifest(struct image_source *s, const struct image_blob *mb, json_t *m, struct image *img,
                         struct vs_error *err)
{
    memset(img, 0, sizeof(*img));
    snprintf(img->manifest_digest, sizeof(img->manifest_digest), "%s", mb->digest);
    const char *mname = mb->digest[0] ? mb->digest : "the manifest";
    struct image_descriptor cd;
    int rc = parse_descriptor(json_object_get(m, "config"), "the manifest's config", &cd, err);
    if (rc < 0)
        return vs_error_prefix(err, "manifest %s", mname);
    struct image_blob cb = {0};
    rc = fetch_checked(s, &cd, "config", &cb, err);
    if (rc < 0) {
        image_descriptor_free(&cd);
        return vs_error_prefix(err, "manifest %s", mname);
    }
    snprintf(img->config_digest, sizeof(img->config_digest), "%s", cb.digest);
    image_descriptor_free(&cd);
    json_t *c = parse_json(&cb, "config", err);
    image_blob_free(&cb);
    if (!c)
        return err->code;
    const char *os = json_string_value(json_object_get(c, "os"));
    const char *arch = json_string_value(json_object_get(c, "architecture"));
    const char *var = json_string_value(json_object_get(c, "variant"));
    if (asprintf(&img->platform, "%s/%s%s%s", os ? os : "unknown", arch ? arch : "unknown", var ? "/" : "",
                 var ? var : "") < 0)
        img->platform = NULL;
    json_t *diff_ids = json_object_get(json_object_get(c, "rootfs"), "diff_ids");
    json_t *layers = json_object_get(m, "layers");
    if (!json_is_array(layers) || !json_is_array(diff_ids)) {
        json_decref(c);
        return vs_fail(err, -EBADMSG, "manifest %s: no layers array, or config %s has no rootfs.diff_ids",
                       mname, img->config_digest);
    }
    if (json_array_size(layers) != json_array_size(diff_ids)) {
        rc = vs_fail(err, -EBADMSG, "manifest %s has %zu layers but config %s lists %zu diff IDs", mname,
                     json_array_size(layers), img->config_digest, json_array_size(diff_ids));
        json_decref(c);
        return rc;
    }
    img->layer_count = json_array_size(layers);
    img->layers = calloc(img->layer_count ? img->layer_count : 1, sizeof(*img->layers));
    for (size_t i = 0; i < img->layer_count && rc == 0; i++) {
        struct image_layer *l = &img->layers[i];
        l->index = (int)i;
        char what[64];
        snprintf(what, sizeof(what), "layer %zu", i);
        rc = parse_descriptor(json_array_get(layers, i), what, &l->desc, err);
        if (rc < 0)
            break;
        const char *lname = l->desc.digest[0] ? l->desc.digest : l->desc.path;
        const char *diff = json_string_value(json_array_get(diff_ids, i));
        if (!diff || !image_digest_valid(diff)) {
            rc = vs_fail(err, -EBADMSG, "layer %zu (%s): config %s has a malformed diff ID", i, lname,
                         img->config_digest);
            break;
        }
        snprintf(l->diff_id, sizeof(l->diff_id), "%s", diff);
        if (l->desc.compression_auto) {
            l->compression = TARFS_COMPRESSION_AUTO;
            continue;
        }
        const char *why = layer_refusal(l->desc.media_type, &l->compression);
        if (why)
            rc = vs_fail(err, -ENOTSUP, "layer %zu (%s): %s: '%s'", i, lname, why, l->desc.media_type);
    }
    json_decref(c);
    if (rc == 0)
        chain_ids(img);
    return rc;
}

static bool platform_matches(const char *want, const char *have)
{
    if (!have)
        return false;
    if (strcmp(want, have) == 0)
        return true;
    /* linux/arm64 matches linux/arm64/v8 both ways, as containerd's platform matcher does. */
    size_t wl = strlen(want), hl = strlen(have);
    if (hl == wl + 3 && strncmp(have, want, wl) == 0 && strcmp(have + wl, "/v8") == 0 &&
        strstr(want, "arm64"))
        return true;
    if (wl == hl + 3 && strncmp(want, have, hl) == 0 && strcmp(want + hl, "/v8") == 0 &&
        strstr(have, "arm64"))
        return true;
    return false;
}

static int resolve_index(struct image_source *s, const struct image_blob *ib, json_t *idx,
                         const struct image_select *sel, int depth, struct image **images, size_t *count,
                         struct vs_error *err);

static int resolve_blob(struct image_source *s, struct image_blob *b, const struct image_select *sel,
                        int depth, struct image **images, size_t *count, struct vs_error *err)
{
    json_t *j = parse_json(b, "manifest", err);
    if (!j)
        return err->code;
    int kind = blob_kind(b->media_type, j), rc;
    if (kind == 'i') {
        rc = resolve_index(s, b, j, sel, depth, images, count, err);
    } else if (kind == 'm') {
        struct image img;
        rc = load_manifest(s, b, j, &img, err);
        if (rc == 0) {
            *images = realloc(*images, (*count + 1) * sizeof(**images));
            (*images)[(*count)++] = img;
        } else {
            image_free(&img);
        }
    } else {
        const char *mt = json_string_value(json_object_get(j, "mediaType"));
        rc = vs_fail(err, -ENOTSUP,
                     "%s: unsupported manifest media type '%s' (schema 1 and artifacts are not images)",
                     b->digest[0] ? b->digest : "the manifest", mt ? mt : b->media_type);
    }
    json_decref(j);
    return rc;
}

static int resolve_index(struct image_source *s, const struct image_blob *ib, json_t *idx,
                         const struct image_select *sel, int depth, struct image **images, size_t *count,
                         struct vs_error *err)
{
    if (depth > 4)
        return vs_fail(err, -EBADMSG, "indexes nested too deep at %s", ib->digest);
    json_t *ms = json_object_get(idx, "manifests");
    if (!json_is_array(ms))
        return vs_fail(err, -EBADMSG, "index %s has no manifests array", ib->digest);
    char host[64];
    const char *want = sel->platform;
    if (!want) {
        image_host_platform(host, sizeof(host));
        want = host;
    }
    size_t before = *count;
    char seen[1024] = "";
    for (size_t i = 0; i < json_array_size(ms); i++) {
        struct image_descriptor d;
        char what[64];
        snprintf(what, sizeof(what), "index entry %zu", i);
        int rc = parse_descriptor(json_array_get(ms, i), what, &d, err);
        if (rc < 0)
            return rc;
        /* Attestation manifests (buildkit) carry platform unknown/unknown: not images to run. */
        bool skip = !d.platform || strcmp(d.platform, "unknown/unknown") == 0 ||
                    (!sel->all_platforms && !platform_matches(want, d.platform));
        if (d.platform && strlen(seen) + strlen(d.platform) + 3 < sizeof(seen)) {
            if (seen[0])
                strcat(seen, ", ");
            strcat(seen, d.platform);
        }
        if (skip) {
            image_descriptor_free(&d);
            continue;
        }
        struct image_blob b = {0};
        rc = fetch_checked(s, &d, "manifest", &b, err);
        image_descriptor_free(&d);
        if (rc == 0)
            rc = resolve_blob(s, &b, sel, depth + 1, images, count, err);
        image_blob_free(&b);
        if (rc < 0)
            return rc;
        if (!sel->all_platforms)
            break;
    }
    if (*count == before)
        return vs_fail(err, -ENOENT, "index %s has no image for platform %s (it has: %s)",
                       ib->digest[0] ? ib->digest : "", sel->all_platforms ? "any" : want,
                       seen[0] ? seen : "none");
    return 0;
}

int image_resolve(struct image_source *s, const struct image_select *sel, struct image **images,
                  size_t *count, struct vs_error *err)
{
    *images = NULL;
    *count = 0;
    struct image_blob root = {0};
    int rc = s->ops->resolve(s, &root, err);
    if (rc == 0)
        rc = resolve_blob(s, &root, sel, 0, images, count, err);
    image_blob_free(&root);
    if (rc < 0) {
        for (size_t i = 0; i < *count; i++)
            image_free(&(*images)[i]);
        free(*images);
        *images = NULL;
        *count = 0;
        vs_error_prefix(err, "image '%s'", s->name);
    }
    return rc;
}

json_t *image_json(const struct image_source *s, const struct image *img)
{
    json_t *j = json_object();
    json_object_set_new(j, "image", json_string(s->name));
    json_object_set_new(j, "manifest_digest",
                        img->manifest_digest[0] ? json_string(img->manifest_digest) : json_null());
    json_object_set_new(j, "config_digest", json_string(img->config_digest));
    json_object_set_new(j, "platform", json_string(img->platform ? img->platform : ""));
    json_t *layers = json_array();
    for (size_t i = 0; i < img->layer_count; i++) {
        const struct image_layer *l = &img->layers[i];
        json_t *o = json_object();
        json_object_set_new(o, "index", json_integer(l->index));
        const char *digest = l->desc.digest[0] ? l->desc.digest : l->digest;
        json_object_set_new(o, "digest", digest[0] ? json_string(digest) : json_null());
        json_object_set_new(o, "media_type", json_string(l->desc.media_type));
        json_object_set_new(o, "size", json_integer(l->desc.size));
        json_object_set_new(o, "diff_id", json_string(l->diff_id));
        json_object_set_new(o, "chain_id", json_string(l->chain_id));
        /* Then every key convert prints (format first), so root_hash and the verity keys read the same. */
        const char *k;
        json_t *v;
        json_object_foreach(l->result, k, v)
        {
            if (strcmp(k, "diff_id") == 0 || strcmp(k, "layer") == 0)
                continue;
            /* "size" is the blob's here; convert's size (of the layer file) becomes file_size. */
            json_object_set(o, strcmp(k, "size") == 0 ? "file_size" : k, v);
        }
        json_array_append_new(layers, o);
    }
    json_object_set_new(j, "layers", layers);
    return j;
}
