/* The layers cache (--layers-cache) and genpolicy's view of it (--genpolicy-cache). Several processes may
 * share a file: readers take a shared flock on FILE.lock, writers an exclusive one, re-read the file, merge
 * their entries and replace it by rename, so a reader never sees half a file and no writer loses another's
 * entries. (genpolicy's own cache once got corrupted by concurrent runs writing in place.) */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "image.h"

#define CACHE_VERSION 1

struct image_cache {
    char *path;
    json_t *entries; /* key -> convert keys, as loaded */
    json_t *added;   /* key -> convert keys, this run's */
};

static int lock_open(const char *path, int how, struct vs_error *err)
{
    char *lp;
    if (asprintf(&lp, "%s.lock", path) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = vs_fail(err, -errno, "cannot open the lock file '%s': %s", lp, strerror(errno));
        free(lp);
        return rc;
    }
    while (flock(fd, how) < 0) {
        if (errno != EINTR) {
            int rc = vs_fail(err, -errno, "cannot lock '%s': %s", lp, strerror(errno));
            close(fd);
            free(lp);
            return rc;
        }
    }
    free(lp);
    return fd;
}

/* Loads path as JSON; a missing file is NULL with 0, an unreadable or malformed one a warning and NULL. */
static json_t *load_json(const char *path, struct vs_error *err)
{
    char *data;
    size_t len;
    struct vs_error e = {0};
    if (image_read_file(path, 256u << 20, &data, &len, &e) < 0) {
        if (e.code != -ENOENT)
            fprintf(stderr, "veritysnap: warning: ignoring the cache: %s\n", e.message);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(data, len, 0, &je);
    free(data);
    if (!j)
        fprintf(stderr, "veritysnap: warning: ignoring the malformed cache '%s': %s\n", path, je.text);
    (void)err;
    return j;
}

/* Writes j to path through a temporary file in the same directory, fsynced, renamed, directory fsynced. */
static int replace_file(const char *path, json_t *j, struct vs_error *err)
{
    char *tmp;
    if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        return vs_fail(err, -ENOMEM, "out of memory");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = 0;
    if (fd < 0) {
        rc = vs_fail(err, -errno, "cannot create '%s': %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    char *s = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    size_t len = s ? strlen(s) : 0, off = 0;
    while (s && off < len) {
        ssize_t n = write(fd, s + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = vs_fail(err, -errno, "writing '%s': %s", tmp, strerror(errno));
            break;
        }
        off += (size_t)n;
    }
    if (rc == 0 && (write(fd, "\n", 1) != 1 || fsync(fd) < 0))
        rc = vs_fail(err, -errno, "writing '%s': %s", tmp, strerror(errno));
    close(fd);
    free(s);
    if (rc == 0 && rename(tmp, path) < 0)
        rc = vs_fail(err, -errno, "renaming '%s' to '%s': %s", tmp, path, strerror(errno));
    if (rc < 0) {
        unlink(tmp);
    } else {
        char *dup = strdup(path);
        int dfd = open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dup);
    }
    free(tmp);
    return rc;
}

static char *cache_key(const char *diff_id, const struct layer_file_options *o)
{
    char *k;
    int n;
    if (o->tarfs.format == TARFS_FORMAT_TARFS) {
        /* tarfs always uses tardev's verity parameters. */
        n = asprintf(&k, "%s tarfs", diff_id);
    } else if (!o->verity) {
        n = asprintf(&k, "%s erofs no-verity", diff_id);
    } else {
        char salt[2 * VERITY_MAX_SALT + 1];
        vs_hex_encode(o->params.salt, o->params.salt_size, salt);
        n = asprintf(&k, "%s erofs %s data=%u hash=%u salt=%s superblock=%d format=%u", diff_id,
                     o->params.hash_algorithm, o->params.data_block_size, o->params.hash_block_size,
                     salt[0] ? salt : "-", o->params.superblock ? 1 : 0, o->params.format);
    }
    return n < 0 ? NULL : k;
}

static json_t *layers_of(json_t *doc)
{
    json_t *l = json_object_get(doc, "layers");
    if (json_integer_value(json_object_get(doc, "version")) != CACHE_VERSION || !json_is_object(l))
        return NULL;
    return l;
}

int image_cache_open(const char *path, struct image_cache **out, struct vs_error *err)
{
    int lfd = lock_open(path, LOCK_SH, err);
    if (lfd < 0)
        return lfd;
    json_t *doc = load_json(path, err);
    close(lfd);
    struct image_cache *c = calloc(1, sizeof(*c));
    c->path = strdup(path);
    json_t *l = layers_of(doc);
    if (doc && !l)
        fprintf(stderr, "veritysnap: warning: ignoring '%s': not a veritysnap layers cache (version %d)\n",
                path, CACHE_VERSION);
    c->entries = l ? json_incref(l) : json_object();
    c->added = json_object();
    json_decref(doc);
    *out = c;
    return 0;
}

json_t *image_cache_get(struct image_cache *c, const char *diff_id, const struct layer_file_options *o)
{
    char *k = cache_key(diff_id, o);
    json_t *v = k ? json_object_get(c->added, k) : NULL;
    if (!v && k)
        v = json_object_get(c->entries, k);
    free(k);
    return json_is_object(v) && json_is_string(json_object_get(v, "format")) ? json_deep_copy(v) : NULL;
}

void image_cache_put(struct image_cache *c, const char *diff_id, const struct layer_file_options *o,
                     json_t *result)
{
    char *k = cache_key(diff_id, o);
    if (!k)
        return;
    json_t *v = json_deep_copy(result);
    json_object_del(v, "file"); /* a path is this run's business, not the cache's */
    json_object_set_new(v, "diff_id", json_string(diff_id));
    json_object_set_new(c->added, k, v);
    free(k);
}

int image_cache_save(struct image_cache *c, struct vs_error *err)
{
    if (json_object_size(c->added) == 0)
        return 0;
    int lfd = lock_open(c->path, LOCK_EX, err);
    if (lfd < 0)
        return lfd;
    json_t *doc = load_json(c->path, err);
    json_t *l = layers_of(doc);
    json_t *merged = l ? json_incref(l) : json_object();
    json_object_update(merged, c->added);
    json_t *out = json_object();
    json_object_set_new(out, "version", json_integer(CACHE_VERSION));
    json_object_set_new(out, "layers", merged);
    int rc = replace_file(c->path, out, err);
    json_decref(out);
    json_decref(doc);
    close(lfd);
    return rc;
}

void image_cache_free(struct image_cache *c)
{
    if (!c)
        return;
    json_decref(c->entries);
    json_decref(c->added);
    free(c->path);
    free(c);
}

int image_genpolicy_cache_save(const char *path, struct image *images, size_t count, struct vs_error *err)
{
    int lfd = lock_open(path, LOCK_EX, err);
    if (lfd < 0)
        return lfd;
    json_t *doc = load_json(path, err);
    json_t *list = json_is_array(doc) ? json_incref(doc) : json_array();
    for (size_t i = 0; i < count; i++) {
        for (size_t k = 0; k < images[i].layer_count; k++) {
            const struct image_layer *l = &images[i].layers[k];
            const char *root = json_string_value(json_object_get(l->result, "root_hash"));
            if (!root)
                continue;
            json_t *found = NULL;
            for (size_t n = 0; n < json_array_size(list) && !found; n++) {
                const char *d = json_string_value(json_object_get(json_array_get(list, n), "diff_id"));
                if (d && strcmp(d, l->diff_id) == 0)
                    found = json_array_get(list, n);
            }
            if (!found) {
                found = json_object();
                json_object_set_new(found, "diff_id", json_string(l->diff_id));
                json_array_append_new(list, found);
            }
            json_object_set_new(found, "verity_hash", json_string(root));
        }
    }
    int rc = replace_file(path, list, err);
    json_decref(list);
    json_decref(doc);
    close(lfd);
    return rc;
}
