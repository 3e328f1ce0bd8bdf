/* Whole images for `veritysnap image roothash`: where an image lives (image sources), what it is made of
 * (index, manifest, config, layers), and turning every layer into a root hash in one streaming pass.
 *
 * An image source is one implementation of struct image_source_ops: an OCI layout directory, an oci-archive,
 * a docker-archive, a registry and containerd's content store (read over Images.Get and Content.Read with the
 * gRPC client, image_source_containerd.c). Each fills those four operations:
 *   resolve  the reference -> the top-level manifest or index (bytes, media type, digest);
 *   fetch    a small blob by descriptor (a manifest, an index, a config) into memory;
 *   stream   a layer blob by descriptor, pushed chunk by chunk to a callback (Content.Read responses map
 * 1:1); free. Everything else (platform selection, media types, digest and diff ID checks, conversion, cache,
 * output) is shared and does not change. stream is called from several threads at once: a source must be
 * thread-safe there. */
#ifndef VERITYSNAP_TOOLS_IMAGE_H
#define VERITYSNAP_TOOLS_IMAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "snapshotter/snapshotter.h"

/* "sha256:" + 64 hex + NUL, rounded. */
#define IMAGE_DIGEST_MAX 80
/* Manifests, indexes and configs are small; a bound keeps a wrong descriptor from eating memory. */
#define IMAGE_SMALL_BLOB_MAX (16u * 1024 * 1024)

/* Annotations a source may put on descriptors it synthesizes (the docker-archive's manifest.json has none of
 * its own): the member path inside the archive, and "auto" compression (docker load accepts compressed
 * layer.tar). */
#define IMAGE_ANNOTATION_PATH "io.veritysnap.source.path"
#define IMAGE_ANNOTATION_COMPRESSION "io.veritysnap.source.compression"

struct image_descriptor {
    char *media_type;
    char digest[IMAGE_DIGEST_MAX]; /* "" when the source does not know it (docker-archive, old layout) */
    int64_t size;                  /* -1 when unknown */
    char *path;                    /* IMAGE_ANNOTATION_PATH, or NULL */
    bool compression_auto;         /* IMAGE_ANNOTATION_COMPRESSION = auto */
    char *platform;                /* "os/arch[/variant]" for index entries, or NULL */
};

/* A small blob read into memory. */
struct image_blob {
    char *data;
    size_t len;
    char media_type[128];
    char digest[IMAGE_DIGEST_MAX]; /* "" when unknown (a synthesized manifest) */
};

/* Called by stream for each chunk of a blob, in order; returns 0 or a negative code to stop. */
typedef int (*image_chunk_fn)(void *ctx, const void *data, size_t len, struct vs_error *err);

struct image_source;

struct image_source_ops {
    int (*resolve)(struct image_source *s, struct image_blob *root, struct vs_error *err);
    int (*fetch)(struct image_source *s, const struct image_descriptor *d, struct image_blob *out,
                 struct vs_error *err);
    int (*stream)(struct image_source *s, const struct image_descriptor *d, image_chunk_fn fn, void *ctx,
                  struct vs_error *err);
    void (*free)(struct image_source *s);
};

struct image_source {
    const struct image_source_ops *ops;
    char *name; /* the image as the user named it, for messages and the "image" key */
};

/* OCI image layout directory; ref selects a manifest of index.json by org.opencontainers.image.ref.name
 * (NULL: the only one, or index.json itself as an index of platforms). */
int image_source_oci_layout_open(const char *dir, const char *ref, struct image_source **out,
                                 struct vs_error *err);
/* The same layout in a tar file (an oci-archive), read with libarchive: small members are kept in memory,
 * layers are streamed from a fresh reader that skips to their member, so several layers stream at once. */
int image_source_oci_archive_open(const char *file, const char *ref, struct image_source **out,
                                  struct vs_error *err);
/* `docker save` output (manifest.json; old <id>/layer.tar and new blobs/sha256/ layouts); ref picks a
 * RepoTags entry when the archive holds several images. */
int image_source_docker_archive_open(const char *file, const char *ref, struct image_source **out,
                                     struct vs_error *err);

/* How to reach a registry. Credentials are never printed or logged. */
struct registry_options {
    bool plain_http;
    const char *ca_file;
    const char *username; /* with password: basic auth, and the token endpoint's credentials */
    const char *password;
    const char *authfile; /* without username: the only place credentials come from (podman's --authfile) */
    int retries;          /* attempts after the first on 5xx and connection errors (default 4) */
    bool quiet;
};

/* REGISTRY/REPO[:TAG|@DIGEST] over the OCI distribution API with libcurl. Without username, credentials come
 * from registry_credentials_find (registry_credentials.c). */
int image_source_registry_open(const char *reference, const struct registry_options *opts,
                               struct image_source **out, struct vs_error *err);

/* Credentials for host, found as docker does in $DOCKER_CONFIG/config.json or ~/.docker/config.json
 * (credHelpers[host], else credsStore: the helper docker-credential-<name> is run; else auths), and when that
 * has nothing, in podman's containers auth.json ($REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/
 * auth.json); authfile (not NULL) replaces them. At most one of *basic (base64 of user:password) and
 * *identity_token (an OAuth2 refresh token: auths' identitytoken, a helper's Username "<token>") is set; both
 * NULL: anonymous. The caller wipes and frees them. */
int registry_credentials_find(const char *host, const char *authfile, char **basic, char **identity_token,
                              struct vs_error *err);

/* base64(username:password), or NULL when out of memory. */
char *registry_basic_credentials(const char *username, const char *password);

/* An image in containerd's content store, read over its gRPC API at address (a socket path or unix:PATH): the
 * record named ref in namespace ns (Images.Get; a docker-style short name is also tried as docker.io/...), its
 * manifests and config through Content.Read, its layers streamed out of Content.Read. */
int image_source_containerd_open(const char *address, const char *ns, const char *ref, struct image_source **out,
                                 struct vs_error *err);

void image_source_free(struct image_source *s);
void image_blob_free(struct image_blob *b);
void image_descriptor_free(struct image_descriptor *d);

/* Reads a file of at most max bytes into a NUL-terminated buffer. */
int image_read_file(const char *path, size_t max, char **data, size_t *len, struct vs_error *err);

/* "sha256:<hex>" of data. */
void image_digest_of(const void *data, size_t len, char out[IMAGE_DIGEST_MAX]);

/* True for a well-formed "sha256:<64 lower-case hex>". */
bool image_digest_valid(const char *digest);

/* ---- The image model ---- */

struct image_layer {
    int index;
    struct image_descriptor desc;
    char diff_id[IMAGE_DIGEST_MAX]; /* from the config */
    char chain_id[IMAGE_DIGEST_MAX];
    enum tarfs_compression compression;
    /* filled by processing */
    char digest[IMAGE_DIGEST_MAX]; /* computed from the bytes streamed */
    json_t *result;                /* the convert keys, or NULL */
    bool from_cache;
};

struct image {
    char manifest_digest[IMAGE_DIGEST_MAX]; /* "" when unknown (docker-archive) */
    char config_digest[IMAGE_DIGEST_MAX];
    char *platform; /* "os/arch[/variant]" from the config */
    struct image_layer *layers;
    size_t layer_count;
};

struct image_select {
    const char *platform; /* "os/arch[/variant]"; NULL: the host's */
    bool all_platforms;
};

/* Resolves the source's reference into one image (or, with all_platforms, every image of an index): fetches
 * the index, manifest and config, checks their digests, the media types of every layer, and computes chain
 * IDs. */
int image_resolve(struct image_source *s, const struct image_select *sel, struct image **images,
                  size_t *count, struct vs_error *err);
void image_free(struct image *img);

/* The host platform, "linux/amd64" style (arm64 gets variant v8 only when asked for). */
void image_host_platform(char *out, size_t cap);

/* ---- Processing ---- */

struct image_process_options {
    struct layer_file_options layer;
    const char *output_dir; /* write layer files there, as convert would; NULL: hash only */
    int jobs;               /* concurrent layers (default: online cores) */
    bool progress;          /* bars on stderr */
};

struct image_cache;

/* Converts (or hashes) every layer not already in cache (may be NULL), several at once, verifying each blob's
 * digest and diff ID while it streams; fills layer->result. On the first failure the others stop. */
int image_process(struct image_source *s, struct image *images, size_t count,
                  const struct image_process_options *o, struct image_cache *cache, struct vs_error *err);

/* The JSON object of one image: image, manifest_digest, config_digest, platform, layers[]. */
json_t *image_json(const struct image_source *s, const struct image *img);

/* The `veritysnap image` command. */
int cmd_image(int argc, char **argv);

/* ---- Layers cache ---- */

/* Loads FILE (missing is empty) under a shared lock on FILE.lock. */
int image_cache_open(const char *path, struct image_cache **out, struct vs_error *err);
/* The cached convert keys for (diff_id, format and verity parameters), a new reference, or NULL. */
json_t *image_cache_get(struct image_cache *c, const char *diff_id, const struct layer_file_options *o);
void image_cache_put(struct image_cache *c, const char *diff_id, const struct layer_file_options *o,
                     json_t *result);
/* Merges the new entries into FILE as it is now: exclusive lock on FILE.lock, temporary file, fsync, rename.
 */
int image_cache_save(struct image_cache *c, struct vs_error *err);
void image_cache_free(struct image_cache *c);

/* Merges [{"diff_id","verity_hash"}] entries (tarfs root hashes) into genpolicy's layers-cache FILE, same
 * locking; other keys of existing entries are kept. */
int image_genpolicy_cache_save(const char *path, struct image *images, size_t count, struct vs_error *err);

#endif
