/* Layers converted on several threads at once (image roothash, the daemon's workers) must give the same
 * files, byte for byte, as the same layers converted one after the other: any state shared between
 * conversions shows up here as a different file (and as a report in the ThreadSanitizer build, which runs
 * this test too). Layers: tars written with libarchive (plain, gzip, zstd), converted to EROFS and to the
 * tarfs format with dm-verity, twice each at the same time. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshotter/snapshotter.h"
#include "tests/lib/vs_test.h"

#define LAYERS 4
#define COPIES 2 /* each layer converted by this many threads at once */

static char work[] = "/tmp/vs-concurrent-XXXXXX";

/* A layer of a few hundred entries (directories, files across block boundaries, symlinks) that differs per
 * seed. */
static int write_layer(const char *path, int seed)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    if (seed % 3 == 1)
        archive_write_add_filter_gzip(a);
    else if (seed % 3 == 2)
        archive_write_add_filter_zstd(a);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK) {
        fprintf(stderr, "%s: %s\n", path, archive_error_string(a));
        archive_write_free(a);
        return -1;
    }
    static char data[3 * 4096 + 17];
    struct archive_entry *e = archive_entry_new();
    for (int d = 0; d < 8; d++) {
        char name[64];
        snprintf(name, sizeof(name), "dir%d-%d", seed, d);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, name);
        archive_entry_set_filetype(e, AE_IFDIR);
        archive_entry_set_perm(e, 0755);
        archive_entry_set_mtime(e, 1700000000 + seed, 0);
        archive_write_header(a, e);
        for (int f = 0; f < 40; f++) {
            size_t size = (size_t)(f * 331 + seed * 97 + d) % sizeof(data);
            for (size_t k = 0; k < size; k++)
                data[k] = (char)(k * 31 + (size_t)f + (size_t)seed);
            snprintf(name, sizeof(name), "dir%d-%d/file-%02d", seed, d, f);
            archive_entry_clear(e);
            archive_entry_set_pathname(e, name);
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_uid(e, (la_int64_t)(1000 + f));
            archive_entry_set_mtime(e, 1700000000 + f, f * 1000);
            archive_entry_set_size(e, (la_int64_t)size);
            archive_write_header(a, e);
            archive_write_data(a, data, size);
        }
        snprintf(name, sizeof(name), "dir%d-%d/link", seed, d);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, name);
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_perm(e, 0777);
        archive_entry_set_symlink(e, "file-01");
        archive_write_header(a, e);
    }
    archive_entry_free(e);
    int rc = archive_write_close(a) == ARCHIVE_OK ? 0 : -1;
    archive_write_free(a);
    return rc;
}

struct job {
    char in[256], out[256];
    struct layer_file_options opts;
    struct layer_file_result result;
    struct vs_error err;
    int rc;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    int fd = open(j->in, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        j->rc = -errno;
        snprintf(j->err.message, sizeof(j->err.message), "%s: %s", j->in, strerror(errno));
        return NULL;
    }
    j->rc = layer_file_build_fd(fd, j->out, &j->opts, &j->result, &j->err);
    close(fd);
    return NULL;
}

static int same_files(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = getc(fa), cb = getc(fb);
        if (ca != cb)
            same = 0;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

static void run_format(enum tarfs_format format, const char *ext)
{
    struct job serial[LAYERS], parallel[LAYERS * COPIES];
    memset(serial, 0, sizeof(serial));
    memset(parallel, 0, sizeof(parallel));
    /* The threads first: state set up on first use is only raced before anything else has used it. */
    pthread_t th[LAYERS * COPIES];
    for (int i = 0; i < LAYERS * COPIES; i++) {
        struct job *j = &parallel[i];
        layer_file_options_default(&j->opts);
        j->opts.tarfs.format = format;
        snprintf(j->in, sizeof(j->in), "%s/layer-%d.tar", work, i % LAYERS);
        snprintf(j->out, sizeof(j->out), "%s/parallel-%d.%s", work, i, ext);
        if (pthread_create(&th[i], NULL, run_job, j) != 0) {
            CHECK(0, "pthread_create failed");
            run_job(j);
            th[i] = 0;
        }
    }
    for (int i = 0; i < LAYERS * COPIES; i++)
        if (th[i])
            pthread_join(th[i], NULL);
    for (int i = 0; i < LAYERS; i++) {
        struct job *j = &serial[i];
        layer_file_options_default(&j->opts);
        j->opts.tarfs.format = format;
        snprintf(j->in, sizeof(j->in), "%s/layer-%d.tar", work, i);
        snprintf(j->out, sizeof(j->out), "%s/serial-%d.%s", work, i, ext);
        run_job(j);
        CHECK(j->rc == 0, "serial %s layer %d: %s", ext, i, j->err.message);
    }
    for (int i = 0; i < LAYERS * COPIES; i++) {
        struct job *p = &parallel[i], *s = &serial[i % LAYERS];
        CHECK(p->rc == 0, "parallel %s layer %d: %s", ext, i % LAYERS, p->err.message);
        if (p->rc || s->rc)
            continue;
        CHECK(memcmp(p->result.layout.root_hash, s->result.layout.root_hash, s->result.layout.digest_size) ==
                  0,
              "%s layer %d: the root hash converted alongside others differs from the one converted alone",
              ext, i % LAYERS);
        CHECK(same_files(p->out, s->out), "%s layer %d: %s and %s differ", ext, i % LAYERS, p->out, s->out);
    }
}

/* Both forms from one read of each layer must be the files the single-format builds made (run_format's serial
 * files), sidecar included; a layer cut short leaves neither file. */
static void check_both(void)
{
    for (int i = 0; i < LAYERS; i++) {
        struct layer_file_options opts;
        layer_file_options_default(&opts);
        char in[256], e[256], t[256], se[256], st[256], es[300], ses[300];
        snprintf(in, sizeof(in), "%s/layer-%d.tar", work, i);
        snprintf(e, sizeof(e), "%s/both-%d.erofs", work, i);
        snprintf(t, sizeof(t), "%s/both-%d.tarfs", work, i);
        snprintf(se, sizeof(se), "%s/serial-%d.erofs", work, i);
        snprintf(st, sizeof(st), "%s/serial-%d.tarfs", work, i);
        snprintf(es, sizeof(es), "%s.dmverity", e);
        snprintf(ses, sizeof(ses), "%s.dmverity", se);
        int fd = open(in, O_RDONLY | O_CLOEXEC);
        struct layer_file_result re, rt;
        struct vs_error err = {0};
        int rc = fd >= 0 ? layer_file_build_fd_both(fd, e, t, &opts, &re, &rt, &err) : -errno;
        if (fd >= 0)
            close(fd);
        CHECK(rc == 0, "both forms of layer %d: %s", i, err.message);
        if (rc)
            continue;
        CHECK(same_files(e, se), "layer %d: the EROFS file made beside the tarfs one differs from %s", i, se);
        CHECK(same_files(t, st), "layer %d: the tarfs file made beside the EROFS one differs from %s", i, st);
        CHECK(same_files(es, ses), "layer %d: the sidecars differ", i);
        CHECK(memcmp(re.image.diff_id, rt.image.diff_id, 32) == 0, "layer %d: two diff IDs", i);
    }
    /* A truncated layer: an error, and neither file (nor a temporary one) is left. */
    char in[256], cut[256], e[256], t[256];
    snprintf(in, sizeof(in), "%s/layer-0.tar", work);
    snprintf(cut, sizeof(cut), "%s/cut/layer.tar", work);
    snprintf(e, sizeof(e), "%s/cut/layer.erofs", work);
    snprintf(t, sizeof(t), "%s/cut/layer.tarfs", work);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/cut' && head -c 30000 '%s' > '%s'", work, in, cut);
    CHECK(system(cmd) == 0, "making a truncated layer");
    struct layer_file_options opts;
    layer_file_options_default(&opts);
    struct layer_file_result re, rt;
    struct vs_error err = {0};
    int fd = open(cut, O_RDONLY | O_CLOEXEC);
    int rc = fd >= 0 ? layer_file_build_fd_both(fd, e, t, &opts, &re, &rt, &err) : 0;
    if (fd >= 0)
        close(fd);
    CHECK(rc < 0, "a truncated layer converted without an error");
    snprintf(cmd, sizeof(cmd), "test \"$(ls -A '%s/cut')\" = layer.tar", work);
    CHECK(system(cmd) == 0, "a failed two-form build left files behind in %s/cut", work);
}

int main(void)
{
    if (!mkdtemp(work)) {
        perror("mkdtemp");
        return 1;
    }
    for (int i = 0; i < LAYERS; i++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/layer-%d.tar", work, i);
        CHECK(write_layer(path, i) == 0, "writing %s", path);
    }
    if (!failures) {
        run_format(TARFS_FORMAT_EROFS, "erofs");
        run_format(TARFS_FORMAT_TARFS, "tarfs");
        check_both();
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", work);
    if (failures) {
        fprintf(stderr, "FAIL: %d failure(s)\n", failures);
        return 1;
    }
    printf("ok: %d layers converted %d at a time give the files converted one by one\n", LAYERS,
           LAYERS * COPIES);
    return 0;
}
