/* Image sources on local files: an OCI image layout directory, the same layout in a tar (oci-archive), and
 * `docker save` output (docker-archive). Archives are read with libarchive, never extracted. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"

/* Members up to this size are kept in memory by the first pass over an archive (manifests, configs, small
 * layers); bigger ones are streamed by a reader of their own that skips to them. */
#define MEMBER_KEEP_MAX (1u << 20)
#define MEMBER_KEEP_TOTAL (64u << 20)
#define CHUNK (1u << 20)

enum layout_kind { LAYOUT_DIR, LAYOUT_OCI_ARCHIVE, LAYOUT_DOCKER_ARCHIVE };

struct member {
    char *name;
    int64_t size;
    char *data; /* NULL when not kept */
};

struct layout_source {
    struct image_source base;
    enum layout_kind kind;
    char *path; /* directory or archive file */
    char *ref;
    struct member *members;
    size_t member_count;
};

int image_read_file(const char *path, size_t max, char **data, size_t *len, struct vs_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vs_fail(err, -errno, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        return vs_fail(err, S_ISREG(st.st_mode) ? -EFBIG : -EINVAL,
                       "'%s' is not a regular file of at most %zu bytes", path, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return vs_fail(err, -e, "reading '%s': %s", path, strerror(e));
        }
        got += (size_t)n;
    }
    close(fd);
    if (!buf)
        return vs_fail(err, -ENOMEM, "out of memory");
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

static const char *member_norm(const char *name)
{
    while (name[0] == '.' && name[1] == '/')
        name += 2;
    while (name[0] == '/')
        name++;
    return name;
}

static struct member *member_find(struct layout_source *s, const char *name)
{
    name = member_norm(name);
    for (size_t i = 0; i < s->member_count; i++)
        if (strcmp(s->members[i].name, name) == 0)
            return &s->members[i];
    return NULL;
}

static struct archive *archive_open(const char *path, struct vs_error *err)
{
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    archive_read_support_filter_all(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        vs_fail(err, -EINVAL, "cannot read archive '%s': %s", path, archive_error_string(a));
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* The first pass: the table of members, with the small ones kept. */
static int archive_scan(struct layout_source *s, struct vs_error *err)
{
    struct archive *a = archive_open(s->path, err);
    if (!a)
        return err->code;
    struct archive_entry *e;
    size_t kept = 0;
    int r, rc = 0;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        if (archive_entry_filetype(e) != AE_IFREG)
            continue;
        struct member m = {strdup(member_norm(archive_entry_pathname(e))), archive_entry_size(e), NULL};
        if (m.size >= 0 && (uint64_t)m.size <= MEMBER_KEEP_MAX &&
            kept + (size_t)m.size <= MEMBER_KEEP_TOTAL) {
            m.data = malloc((size_t)m.size + 1);
            la_ssize_t n = m.data ? archive_read_data(a, m.data, (size_t)m.size) : -1;
            if (n != m.size) {
                rc = vs_fail(err, -EBADMSG, "archive '%s': reading member '%s': %s", s->path, m.name,
                             n < 0 ? archive_error_string(a) : "truncated");
                free(m.name);
                free(m.data);
                break;
            }
            m.data[m.size] = '\0';
            kept += (size_t)m.size;
        }
        s->members = realloc(s->members, (s->member_count + 1) * sizeof(*s->members));
        s->members[s->member_count++] = m;
    }
    if (rc == 0 && r != ARCHIVE_EOF)
        rc = vs_fail(err, -EBADMSG, "archive '%s': %s", s->path, archive_error_string(a));
    archive_read_free(a);
    return rc;
}

/* Reads a small file of the layout (index.json, a manifest, a config). */
static int layout_get(struct layout_source *s, const char *rel, char **data, size_t *len,
                      struct vs_error *err)
{
    if (s->kind == LAYOUT_DIR) {
        char *p;
        if (asprintf(&p, "%s/%s", s->path, rel) < 0)
            return vs_fail(err, -ENOMEM, "out of memory");
        int rc = image_read_file(p, IMAGE_SMALL_BLOB_MAX, data, len, err);
        free(p);
        return rc;
    }
    struct member *m = member_find(s, rel);
    if (!m)
        return vs_fail(err, -ENOENT, "archive '%s' has no member '%s'", s->path, rel);
    if (!m->data)
        return vs_fail(err, -EFBIG, "archive '%s': member '%s' is too big for a manifest or config", s->path,
                       rel);
    *data = malloc((size_t)m->size + 1);
    if (!*data)
        return vs_fail(err, -ENOMEM, "out of memory");
    memcpy(*data, m->data, (size_t)m->size + 1);
    *len = (size_t)m->size;
    return 0;
}

static char *blob_path(const struct image_descriptor *d)
{
    if (d->path)
        return strdup(d->path);
    char *p;
    return asprintf(&p, "blobs/sha256/%s", d->digest + 7) < 0 ? NULL : p;
}

static int layout_fetch(struct image_source *base, const struct image_descriptor *d, struct image_blob *out,
                        struct vs_error *err)
{
    struct layout_source *s = (struct layout_source *)base;
    char *rel = blob_path(d);
    if (!rel)
        return vs_fail(err, -ENOMEM, "out of memory");
    memset(out, 0, sizeof(*out));
    int rc = layout_get(s, rel, &out->data, &out->len, err);
    free(rel);
    if (rc == 0 && d->media_type)
        snprintf(out->media_type, sizeof(out->media_type), "%s", d->media_type);
    return rc;
}

static int layout_stream(struct image_source *base, const struct image_descriptor *d, image_chunk_fn fn,
                         void *ctx, struct vs_error *err)
{
    struct layout_source *s = (struct layout_source *)base;
    char *rel = blob_path(d);
    if (!rel)
        return vs_fail(err, -ENOMEM, "out of memory");
    int rc = 0;
    if (s->kind == LAYOUT_DIR) {
        char *p;
        if (asprintf(&p, "%s/%s", s->path, rel) < 0) {
            free(rel);
            return vs_fail(err, -ENOMEM, "out of memory");
        }
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        char *buf = fd >= 0 ? malloc(CHUNK) : NULL;
        if (fd < 0)
            rc = vs_fail(err, errno == ENOENT ? -EBADMSG : -errno, "blob '%s' is missing from the layout: %s",
                         rel, strerror(errno));
        else if (!buf)
            rc = vs_fail(err, -ENOMEM, "out of memory");
        while (rc == 0) {
            ssize_t n = read(fd, buf, CHUNK);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                rc = vs_fail(err, -errno, "reading '%s': %s", p, strerror(errno));
            if (n <= 0)
                break;
            rc = fn(ctx, buf, (size_t)n, err);
        }
        free(buf);
        if (fd >= 0)
            close(fd);
        free(p);
        free(rel);
        return rc;
    }
    struct member *m = member_find(s, rel);
    if (!m) {
        rc = vs_fail(err, -EBADMSG, "archive '%s' has no member '%s'", s->path, rel);
        free(rel);
        return rc;
    }
    if (m->data) {
        for (size_t off = 0; rc == 0 && off < (size_t)m->size; off += CHUNK) {
            size_t n = (size_t)m->size - off < CHUNK ? (size_t)m->size - off : CHUNK;
            rc = fn(ctx, m->data + off, n, err);
        }
        free(rel);
        return rc;
    }
    /* A reader of our own: several layers of one archive stream at once, each skipping (seeking) to its
     * member. */
    struct archive *a = archive_open(s->path, err);
    if (!a) {
        free(rel);
        return err->code;
    }
    struct archive_entry *e;
    int r;
    bool found = false;
    while (!found && (r = archive_read_next_header(a, &e)) == ARCHIVE_OK)
        found = archive_entry_filetype(e) == AE_IFREG &&
                strcmp(member_norm(archive_entry_pathname(e)), m->name) == 0;
    if (!found)
        rc = vs_fail(err, -EBADMSG, "archive '%s': member '%s' vanished", s->path, rel);
    while (rc == 0) {
        const void *buf;
        size_t n;
        la_int64_t off;
        r = archive_read_data_block(a, &buf, &n, &off);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK) {
            rc = vs_fail(err, -EBADMSG, "archive '%s': member '%s': %s", s->path, rel,
                         archive_error_string(a));
            break;
        }
        rc = fn(ctx, buf, n, err);
    }
    archive_read_free(a);
    free(rel);
    return rc;
}

static int oci_resolve(struct image_source *base, struct image_blob *root, struct vs_error *err)
{
    struct layout_source *s = (struct layout_source *)base;
    char *data;
    size_t len;
    int rc = layout_get(s, "index.json", &data, &len, err);
    if (rc < 0)
        return vs_error_prefix(err, "not an OCI image layout");
    json_error_t je;
    json_t *idx = json_loadb(data, len, 0, &je);
    json_t *ms = json_object_get(idx, "manifests");
    if (!json_is_array(ms)) {
        json_decref(idx);
        free(data);
        return vs_fail(err, -EBADMSG, "index.json is not an OCI index");
    }
    json_t *pick = NULL;
    char names[1024] = "";
    bool all_platform = true;
    for (size_t i = 0; i < json_array_size(ms); i++) {
        json_t *d = json_array_get(ms, i);
        json_t *ann = json_object_get(d, "annotations");
        const char *name = json_string_value(json_object_get(ann, "org.opencontainers.image.ref.name"));
        const char *cname = json_string_value(json_object_get(ann, "io.containerd.image.name"));
        if (!json_is_object(json_object_get(d, "platform")))
            all_platform = false;
        if (name && strlen(names) + strlen(name) + 3 < sizeof(names)) {
            if (names[0])
                strcat(names, ", ");
            strcat(names, name);
        }
        if (s->ref && ((name && strcmp(name, s->ref) == 0) || (cname && strcmp(cname, s->ref) == 0)) && !pick)
            pick = d;
    }
    memset(root, 0, sizeof(*root));
    if (s->ref && !pick) {
        rc = vs_fail(err, -ENOENT, "no manifest named '%s' in index.json (names: %s)", s->ref,
                     names[0] ? names : "none");
    } else if (!pick && json_array_size(ms) == 1) {
        pick = json_array_get(ms, 0);
    } else if (!pick && !all_platform) {
        rc = vs_fail(err, -EINVAL, "index.json lists %zu images; pick one with --ref (names: %s)",
                     json_array_size(ms), names[0] ? names : "none");
    }
    if (rc == 0 && pick) {
        struct image_descriptor d = {.size = -1};
        const char *digest = json_string_value(json_object_get(pick, "digest"));
        const char *mt = json_string_value(json_object_get(pick, "mediaType"));
        if (!digest || !image_digest_valid(digest)) {
            rc = vs_fail(err, -EBADMSG, "index.json: a manifest descriptor has a malformed digest");
        } else {
            snprintf(d.digest, sizeof(d.digest), "%s", digest);
            d.media_type = (char *)(mt ? mt : "");
            rc = layout_fetch(base, &d, root, err);
            if (rc == 0) {
                char got[IMAGE_DIGEST_MAX];
                image_digest_of(root->data, root->len, got);
                if (strcmp(got, digest) != 0) {
                    image_blob_free(root);
                    rc = vs_fail(err, -EBADMSG, "manifest digest mismatch: index.json says %s, content is %s",
                                 digest, got);
                } else {
                    snprintf(root->digest, sizeof(root->digest), "%s", digest);
                }
            }
        }
    } else if (rc == 0) {
        /* index.json itself is the index of platforms. */
        root->data = data;
        root->len = len;
        data = NULL;
        snprintf(root->media_type, sizeof(root->media_type), "application/vnd.oci.image.index.v1+json");
    }
    json_decref(idx);
    free(data);
    return rc;
}

/* "blobs/sha256/<hex>" or "<hex>.json" name their digest; "<id>/layer.tar" does not. */
static void digest_from_name(const char *name, char out[IMAGE_DIGEST_MAX])
{
    out[0] = '\0';
    const char *slash = strrchr(name, '/');
    const char *base = slash ? slash + 1 : name;
    char hex[65];
    size_t n = strlen(base);
    if (n == 64 && strncmp(name, "blobs/sha256/", 13) == 0)
        memcpy(hex, base, 64);
    else if (n == 69 && strcmp(base + 64, ".json") == 0 && !slash)
        memcpy(hex, base, 64);
    else
        return;
    hex[64] = '\0';
    snprintf(out, IMAGE_DIGEST_MAX, "sha256:%s", hex);
    if (!image_digest_valid(out))
        out[0] = '\0';
}

static json_t *synth_descriptor(struct layout_source *s, const char *name, const char *media_type, bool layer)
{
    json_t *d = json_object();
    char digest[IMAGE_DIGEST_MAX];
    digest_from_name(member_norm(name), digest);
    json_object_set_new(d, "mediaType", json_string(media_type));
    if (digest[0])
        json_object_set_new(d, "digest", json_string(digest));
    struct member *m = member_find(s, name);
    if (m)
        json_object_set_new(d, "size", json_integer(m->size));
    json_t *ann = json_object();
    json_object_set_new(ann, IMAGE_ANNOTATION_PATH, json_string(member_norm(name)));
    if (layer)
        json_object_set_new(ann, IMAGE_ANNOTATION_COMPRESSION, json_string("auto"));
    json_object_set_new(d, "annotations", ann);
    return d;
}

static int docker_resolve(struct image_source *base, struct image_blob *root, struct vs_error *err)
{
    struct layout_source *s = (struct layout_source *)base;
    char *data;
    size_t len;
    int rc = layout_get(s, "manifest.json", &data, &len, err);
    if (rc < 0)
        return vs_error_prefix(err, "not a docker-archive");
    json_t *list = json_loadb(data, len, 0, NULL);
    free(data);
    if (!json_is_array(list) || json_array_size(list) == 0) {
        json_decref(list);
        return vs_fail(err, -EBADMSG, "manifest.json is not a non-empty array");
    }
    json_t *pick = NULL;
    char tags[1024] = "";
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *t = json_object_get(json_array_get(list, i), "RepoTags");
        for (size_t k = 0; k < json_array_size(t); k++) {
            const char *tag = json_string_value(json_array_get(t, k));
            if (!tag)
                continue;
            if (s->ref && strcmp(tag, s->ref) == 0 && !pick)
                pick = json_array_get(list, i);
            if (strlen(tags) + strlen(tag) + 3 < sizeof(tags)) {
                if (tags[0])
                    strcat(tags, ", ");
                strcat(tags, tag);
            }
        }
    }
    if (!pick && !s->ref && json_array_size(list) == 1)
        pick = json_array_get(list, 0);
    if (!pick) {
        rc = s->ref ? vs_fail(err, -ENOENT, "no image tagged '%s' in manifest.json (tags: %s)", s->ref,
                              tags[0] ? tags : "none")
                    : vs_fail(err, -EINVAL, "manifest.json lists %zu images; pick one with --ref (tags: %s)",
                              json_array_size(list), tags[0] ? tags : "none");
        json_decref(list);
        return rc;
    }
    const char *config = json_string_value(json_object_get(pick, "Config"));
    json_t *layers = json_object_get(pick, "Layers");
    if (!config || !json_is_array(layers)) {
        json_decref(list);
        return vs_fail(err, -EBADMSG, "manifest.json: an entry lacks Config or Layers");
    }
    /* The same image as an OCI manifest, with the member paths as annotations; no digest of its own. */
    json_t *m = json_object();
    json_object_set_new(m, "schemaVersion", json_integer(2));
    json_object_set_new(m, "mediaType", json_string("application/vnd.docker.distribution.manifest.v2+json"));
    json_object_set_new(m, "config",
                        synth_descriptor(s, config, "application/vnd.docker.container.image.v1+json", false));
    json_t *ls = json_array();
    for (size_t i = 0; i < json_array_size(layers); i++) {
        const char *l = json_string_value(json_array_get(layers, i));
        if (!l) {
            json_decref(ls);
            json_decref(m);
            json_decref(list);
            return vs_fail(err, -EBADMSG, "manifest.json: layer %zu is not a path", i);
        }
        json_array_append_new(ls,
                              synth_descriptor(s, l, "application/vnd.docker.image.rootfs.diff.tar", true));
    }
    json_object_set_new(m, "layers", ls);
    json_decref(list);
    memset(root, 0, sizeof(*root));
    root->data = json_dumps(m, JSON_COMPACT);
    root->len = strlen(root->data);
    snprintf(root->media_type, sizeof(root->media_type),
             "application/vnd.docker.distribution.manifest.v2+json");
    json_decref(m);
    return 0;
}

static void layout_free(struct image_source *base)
{
    struct layout_source *s = (struct layout_source *)base;
    for (size_t i = 0; i < s->member_count; i++) {
        free(s->members[i].name);
        free(s->members[i].data);
    }
    free(s->members);
    free(s->path);
    free(s->ref);
    free(s->base.name);
    free(s);
}

static const struct image_source_ops oci_ops = {oci_resolve, layout_fetch, layout_stream, layout_free};
static const struct image_source_ops docker_ops = {docker_resolve, layout_fetch, layout_stream, layout_free};

static int layout_open(enum layout_kind kind, const char *path, const char *ref, struct image_source **out,
                       struct vs_error *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return vs_fail(err, -errno, "cannot open '%s': %s", path, strerror(errno));
    if ((kind == LAYOUT_DIR) != !!S_ISDIR(st.st_mode))
        return vs_fail(err, -EINVAL, "'%s' is %s", path,
                       kind == LAYOUT_DIR ? "not a directory" : "a directory");
    struct layout_source *s = calloc(1, sizeof(*s));
    s->base.ops = kind == LAYOUT_DOCKER_ARCHIVE ? &docker_ops : &oci_ops;
    s->kind = kind;
    s->path = strdup(path);
    s->ref = ref ? strdup(ref) : NULL;
    const char *prefix = kind == LAYOUT_DIR           ? "oci"
                         : kind == LAYOUT_OCI_ARCHIVE ? "oci-archive"
                                                      : "docker-archive";
    if (asprintf(&s->base.name, "%s:%s%s%s", prefix, path, ref ? ":" : "", ref ? ref : "") < 0)
        s->base.name = NULL;
    int rc = kind == LAYOUT_DIR ? 0 : archive_scan(s, err);
    if (rc < 0) {
        layout_free(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

int image_source_oci_layout_open(const char *dir, const char *ref, struct image_source **out,
                                 struct vs_error *err)
{
    return layout_open(LAYOUT_DIR, dir, ref, out, err);
}

int image_source_oci_archive_open(const char *file, const char *ref, struct image_source **out,
                                  struct vs_error *err)
{
    return layout_open(LAYOUT_OCI_ARCHIVE, file, ref, out, err);
}

int image_source_docker_archive_open(const char *file, const char *ref, struct image_source **out,
                                     struct vs_error *err)
{
    return layout_open(LAYOUT_DOCKER_ARCHIVE, file, ref, out, err);
}
