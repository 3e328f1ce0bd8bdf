/* The `<layer>.dmverity` sidecar: containerd's EROFS snapshotter keys (roothash, hashoffset = the
 * superblock's byte offset) plus the parameters needed without a superblock. Written to a temporary file,
 * fsynced, renamed, and the directory fsynced, so a crash leaves the old sidecar or the new one. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "verity/verity_internal.h"

#define SIDECAR_SUFFIX ".dmverity"

static int sidecar_path(const char *layer_path, char *out, size_t cap, struct vs_error *err)
{
    int n = snprintf(out, cap, "%s" SIDECAR_SUFFIX, layer_path);
    if (n < 0 || (size_t)n >= cap)
        return vs_fail(err, -ENAMETOOLONG, "verity sidecar: path of %s is too long", layer_path);
    return 0;
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static json_t *sidecar_json(const struct verity_layout *l)
{
    char root[2 * VERITY_MAX_DIGEST + 1], salt[2 * VERITY_MAX_SALT + 1];
    vs_hex_encode(l->root_hash, l->digest_size, root);
    vs_hex_encode(l->params.salt, l->params.salt_size, salt);
    return json_pack("{s:s, s:I, s:s, s:i, s:i, s:I, s:s, s:b, s:i}", "roothash", root, "hashoffset",
                     (json_int_t)l->hash_offset, "hash_algorithm", l->params.hash_algorithm,
                     "data_block_size", (int)l->params.data_block_size, "hash_block_size",
                     (int)l->params.hash_block_size, "data_blocks", (json_int_t)l->data_blocks, "salt", salt,
                     "superblock", (int)l->params.superblock, "verity_format", (int)l->params.format);
}

int verity_sidecar_write(const char *layer_path, const struct verity_layout *layout, struct vs_error *err)
{
    char path[4096], tmp[4096 + 16], dir[4096];
    int r = sidecar_path(layer_path, path, sizeof(path), err);
    if (r < 0)
        return r;
    struct verity_layout l = *layout;
    r = verity_layout_complete(&l, err);
    if (r < 0)
        return verity_error_wrap(err, r, "verity sidecar %s", path);
    json_t *j = sidecar_json(&l);
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    if (!text)
        return vs_fail(err, -ENOMEM, "verity sidecar %s: cannot encode JSON", path);
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        r = vs_fail(err, -errno, "verity sidecar: cannot create %s: %s", tmp, strerror(errno));
        free(text);
        return r;
    }
    const char *what = "write";
    r = write_all(fd, text, strlen(text));
    if (r == 0)
        r = write_all(fd, "\n", 1);
    if (r == 0 && fchmod(fd, 0644) < 0)
        r = -errno, what = "chmod";
    if (r == 0 && fsync(fd) < 0)
        r = -errno, what = "fsync";
    if (close(fd) < 0 && r == 0)
        r = -errno, what = "close";
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno, what = "rename";
    free(text);
    if (r < 0) {
        unlink(tmp);
        return vs_fail(err, r, "verity sidecar %s: %s failed: %s", path, what, strerror(-r));
    }
    snprintf(dir, sizeof(dir), "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return vs_fail(err, -errno, "verity sidecar %s: cannot open its directory: %s", path,
                       strerror(errno));
    r = fsync(dfd) < 0 ? -errno : 0;
    close(dfd);
    if (r < 0)
        return vs_fail(err, r, "verity sidecar %s: fsync of its directory failed: %s", path, strerror(-r));
    return 0;
}

static int get_uint(json_t *root, const char *key, uint64_t max, uint64_t *out, bool *present,
                    const char *path, struct vs_error *err)
{
    json_t *v = json_object_get(root, key);
    *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return vs_fail(err, -EBADMSG, "verity sidecar %s: \"%s\" is not an integer in 0..%llu", path, key,
                       (unsigned long long)max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* containerd's own sidecars hold only roothash and hashoffset: the rest defaults to its parameters (sha256,
 * 4096, 32 zero bytes of salt, format 1, superblock at hashoffset, the data being everything before it). */
int verity_sidecar_read(const char *layer_path, struct verity_layout *out, struct vs_error *err)
{
    char path[4096];
    memset(out, 0, sizeof(*out));
    int r = sidecar_path(layer_path, path, sizeof(path), err);
    if (r < 0)
        return r;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (access(path, F_OK) < 0 && errno == ENOENT)
            return vs_fail(err, -ENOENT, "verity sidecar %s does not exist", path);
        return vs_fail(err, -EBADMSG, "verity sidecar %s: line %d: %s", path, jerr.line, jerr.text);
    }
    verity_params_default(&out->params);
    uint64_t v = 0;
    bool present, blocks_present;
    const char *s;
    if (!json_is_object(root)) {
        r = vs_fail(err, -EBADMSG, "verity sidecar %s is not a JSON object", path);
        goto out;
    }
    if (!(s = json_string_value(json_object_get(root, "roothash")))) {
        r = vs_fail(err, -EBADMSG, "verity sidecar %s: no \"roothash\" string", path);
        goto out;
    }
    int root_len = vs_hex_decode(s, out->root_hash, sizeof(out->root_hash));
    if ((r = get_uint(root, "hashoffset", UINT64_MAX >> 1, &out->hash_offset, &present, path, err)) < 0)
        goto out;
    if (!present) {
        r = vs_fail(err, -EBADMSG, "verity sidecar %s: no \"hashoffset\"", path);
        goto out;
    }
    if ((s = json_string_value(json_object_get(root, "hash_algorithm")))) {
        if (strlen(s) >= sizeof(out->params.hash_algorithm)) {
            r = vs_fail(err, -EBADMSG, "verity sidecar %s: hash algorithm \"%s\" is not supported", path, s);
            goto out;
        }
        strcpy(out->params.hash_algorithm, s);
    }
    if ((r = get_uint(root, "data_block_size", 1u << 20, &v, &present, path, err)) < 0)
        goto out;
    if (present)
        out->params.data_block_size = (uint32_t)v;
    if ((r = get_uint(root, "hash_block_size", 1u << 20, &v, &present, path, err)) < 0)
        goto out;
    if (present)
        out->params.hash_block_size = (uint32_t)v;
    if ((r = get_uint(root, "verity_format", 1, &v, &present, path, err)) < 0)
        goto out;
    if (present)
        out->params.format = (uint32_t)v;
    if ((r = get_uint(root, "data_blocks", UINT64_MAX >> 1, &out->data_blocks, &blocks_present, path, err)) <
        0)
        goto out;
    json_t *sb = json_object_get(root, "superblock");
    if (sb && !json_is_boolean(sb)) {
        r = vs_fail(err, -EBADMSG, "verity sidecar %s: \"superblock\" is not a boolean", path);
        goto out;
    }
    if (sb)
        out->params.superblock = json_is_true(sb);
    if ((s = json_string_value(json_object_get(root, "salt")))) {
        int n = vs_hex_decode(s, out->params.salt, sizeof(out->params.salt));
        if (n < 0) {
            r = vs_fail(err, -EBADMSG, "verity sidecar %s: salt is not hex of at most %d bytes", path,
                        VERITY_MAX_SALT);
            goto out;
        }
        out->params.salt_size = (uint32_t)n;
    }
    r = verity_params_check(&out->params, err);
    if (r < 0) {
        r = verity_error_wrap(err, -EBADMSG, "verity sidecar %s", path);
        goto out;
    }
    if (root_len != (int)verity_digest_size(&out->params)) {
        r = vs_fail(err, -EBADMSG, "verity sidecar %s: roothash is not %u bytes of hex", path,
                    verity_digest_size(&out->params));
        goto out;
    }
    if (!blocks_present)
        out->data_blocks = out->hash_offset / out->params.data_block_size;
    r = verity_layout_complete(out, err);
    if (r < 0)
        r = verity_error_wrap(err, -EBADMSG, "verity sidecar %s", path);
out:
    json_decref(root);
    return r;
}
