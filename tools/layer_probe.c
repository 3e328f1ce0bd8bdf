#include "layer_probe.h"
#include "tool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int layer_probe(int fd, const char *path, struct layer_probe *p, struct vs_error *err)
{
    memset(p, 0, sizeof(*p));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vs_fail(err, -errno, "'%s': %s", path, strerror(errno));
    p->file_size = (uint64_t)st.st_size;
    struct vs_error probe_err = {0};
    char sidecar[4096];
    snprintf(sidecar, sizeof(sidecar), "%s.dmverity", path);
    bool have_sidecar = access(sidecar, F_OK) == 0;
    if (have_sidecar) {
        int rc = verity_sidecar_read(path, &p->layout, err);
        if (rc < 0)
            return rc;
        p->has_verity = p->root_known = true;
        p->from_sidecar = true;
    }
    if (tarfs_erofs_probe(fd, &p->info, &probe_err) == 0) {
        p->format = TARFS_FORMAT_EROFS;
        p->data_size = p->info.image_size;
        if (!p->has_verity && p->file_size > p->info.image_size &&
            verity_layout_read_superblock(fd, p->info.image_size, &p->layout, &probe_err) == 0)
            p->has_verity = true;
        return 0;
    }
    struct verity_layout tardev;
    if (verity_layout_read_tardev(fd, &tardev, &probe_err) == 0) {
        p->format = TARFS_FORMAT_TARFS;
        p->info.format = TARFS_FORMAT_TARFS;
        if (!p->has_verity)
            p->layout = tardev;
        p->has_verity = true;
        p->data_size = tardev.data_blocks * tardev.params.data_block_size;
        p->info.image_size = p->data_size;
        return 0;
    }
    return vs_fail(err, -EBADMSG, "'%s' is neither an EROFS layer file nor a tarfs (tardev) layer file", path);
}

int layer_probe_open(const char *path, int *fd, struct layer_probe *p)
{
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return tool_usage_error("cannot open '%s': %s", path, strerror(errno));
    struct vs_error err = {0};
    if (layer_probe(*fd, path, p, &err) < 0) {
        close(*fd);
        *fd = -1;
        return tool_fail(&err);
    }
    return EXIT_OK;
}
