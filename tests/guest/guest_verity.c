// guest_verity: the child-VM test's guest program. It does what a Kata guest agent does with the layers of a
// container: for each layer, find its virtio disk, set up a read-only dm-verity device with raw device-mapper
// ioctls, mount it (EROFS) and assemble the overlay; tarfs layers (no tarfs module in Debian's kernels) are
// only read through their verity device. It prints what it saw as one JSON object per line, prefixed "VSG ",
// on the console.
//
// Input: a JSON document on the virtio disk whose serial is "vsconfig" (NUL- or end-padded), or the file
// named by the first argument:
//   {"groups": [{"name": "...", "overlay": true|false, "manifest": true|false,
//                "layers": [   (topmost first, as lowerdir and the Kata dialects list them)
//                  {"name": "...", "serial": "..." | "disk": "vdb", "format": "erofs" | "tarfs",
//                   "root_hash": "<hex>"            (tarfs: required; erofs: else dmverity.roothash),
//                   "dmverity": {sidecar: roothash, hashoffset, hash_algorithm, data_block_size,
//                   hash_block_size,
//                                data_blocks, salt, superblock, verity_format}      (erofs),
//                   "ranges": [[offset, length], ...]       (tarfs: byte ranges of the data to read and
//                   hash), "read_device": true                     (read and hash the whole verity
//                   device)}]}]}
// Output records ("t"): group, layer (disk, table, activation), mount, overlay, entry (manifest of the merged
// root: path, type, mode, uid, gid, nlink, mtime, size, sha256 or error, target, rdev, hardlink_of), device,
// range, kmsg (kernel messages of device-mapper, verity, erofs, overlay), end.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

// ---- SHA-256 (FIPS 180-4)
// -----------------------------------------------------------------------------------------
typedef struct {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha256_block(sha256_ctx *c, const uint8_t *p)
{
    uint32_t w[64], a, b, d, e, f, g, h, cc, t1, t2;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g, g = f, f = e, e = d + t1, d = cc, cc = b, b = a, a = t1 + t2;
    }
    c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d, c->h[4] += e, c->h[5] += f, c->h[6] += g,
        c->h[7] += h;
}
static void sha256_init(sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->len = 0;
    c->n = 0;
}
static void sha256_update(sha256_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    c->len += len;
    while (len > 0) {
        if (c->n == 0 && len >= 64) {
            sha256_block(c, p);
            p += 64, len -= 64;
            continue;
        }
        size_t k = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, k);
        c->n += k, p += k, len -= k;
        if (c->n == 64)
            sha256_block(c, c->buf), c->n = 0;
    }
}
static void sha256_hex(sha256_ctx *c, char out[65])
{
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    sha256_update(c, &pad, 1);
    while (c->n != 56)
        sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, lenb, 8);
    for (int i = 0; i < 8; i++)
        sprintf(out + 8 * i, "%08x", c->h[i]);
}

// ---- output
// --------------------------------------------------------------------------------------------------------
static int kmsg_fd = -1;

static void emit(json_t *obj)
{ // steals obj
    char *s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    if (s) {
        printf("VSG %s\n", s);
        fflush(stdout);
        free(s);
    }
    json_decref(obj);
}

// Paths may hold any bytes: valid UTF-8 goes out as is, anything else byte by byte as U+0080..U+00FF escapes
// of a
// "\u0000"-free latin-1 view, flagged with "path_latin1": true.
static json_t *jpath(const char *p)
{
    json_t *s = json_string(p);
    if (s)
        return s;
    size_t n = strlen(p);
    char *u = malloc(2 * n + 1), *q = u;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x80)
            *q++ = (char)ch;
        else
            *q++ = (char)(0xc0 | ch >> 6), *q++ = (char)(0x80 | (ch & 0x3f));
    }
    *q = 0;
    s = json_string(u);
    free(u);
    return s;
}

static const char *errname(int e)
{
    switch (e) {
    case EIO:
        return "EIO";
    case ENOENT:
        return "ENOENT";
    case EINVAL:
        return "EINVAL";
    case ENXIO:
        return "ENXIO";
    case EACCES:
        return "EACCES";
    case EPERM:
        return "EPERM";
    case EBUSY:
        return "EBUSY";
    case ENODEV:
        return "ENODEV";
    case ENOTBLK:
        return "ENOTBLK";
    case EUCLEAN:
        return "EUCLEAN";
    case ENOMEM:
        return "ENOMEM";
    case EROFS:
        return "EROFS";
    case ENOTDIR:
        return "ENOTDIR";
    case EOPNOTSUPP:
        return "EOPNOTSUPP";
    case E2BIG:
        return "E2BIG";
    case ENOSPC:
        return "ENOSPC";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno %d", e);
        return buf;
    }
    }
}

// Kernel messages from the subsystems under test, each as a record (the console itself runs at loglevel 1).
static void drain_kmsg(void)
{
    if (kmsg_fd < 0)
        return;
    char buf[2048];
    for (;;) {
        ssize_t n = read(kmsg_fd, buf, sizeof buf - 1);
        if (n < 0) {
            if (errno == EPIPE)
                continue; // overwritten records
            break;
        }
        buf[n] = 0;
        char *msg = strchr(buf, ';');
        if (!msg)
            continue;
        msg++;
        char *nl = strchr(msg, '\n');
        if (nl)
            *nl = 0;
        if (strstr(msg, "using shash") || strstr(msg, "mounted with root inode"))
            continue; // routine
        if (strstr(msg, "device-mapper") || strstr(msg, "verity") || strstr(msg, "erofs") ||
            strstr(msg, "overlay") || strstr(msg, "I/O error") || strstr(msg, "EROFS"))
            emit(json_pack("{s:s,s:s}", "t", "kmsg", "msg", msg));
    }
}

// ---- device-mapper ioctls
// ------------------------------------------------------------------------------------------
static int dm_fd = -1;

static void dm_init(struct dm_ioctl *io, size_t size, const char *name)
{
    memset(io, 0, size);
    io->version[0] = DM_VERSION_MAJOR;
    io->version[1] = 0;
    io->version[2] = 0;
    io->data_size = (uint32_t)size;
    io->data_start = sizeof(struct dm_ioctl);
    if (name)
        snprintf(io->name, sizeof io->name, "%s", name);
}

static int dm_open(void)
{
    if (dm_fd >= 0)
        return 0;
    dm_fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (dm_fd < 0 && errno == ENOENT) {
        mkdir("/dev/mapper", 0755);
        if (mknod("/dev/mapper/control", S_IFCHR | 0600, makedev(10, 236)) == 0)
            dm_fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    }
    return dm_fd < 0 ? -1 : 0;
}

static void dm_remove(const char *name)
{
    struct dm_ioctl io;
    dm_init(&io, sizeof io, name);
    ioctl(dm_fd, DM_DEV_REMOVE, &io);
}

// Creates NAME with one read-only "verity" target of SECTORS sectors and PARAMS, activates it and makes
// /dev/mapper/NAME. Returns 0, or -1 with errno and *step naming the ioctl that failed.
static int dm_create_verity(const char *name, uint64_t sectors, const char *params, dev_t *out,
                            const char **step)
{
    if (dm_open() < 0)
        return *step = "open /dev/mapper/control", -1;
    struct dm_ioctl io;
    dm_init(&io, sizeof io, name);
    if (ioctl(dm_fd, DM_DEV_CREATE, &io) < 0)
        return *step = "DM_DEV_CREATE", -1;
    dev_t dev = (dev_t)io.dev;

    size_t plen = strlen(params) + 1;
    size_t spec_len = (sizeof(struct dm_target_spec) + plen + 7) & ~(size_t)7;
    size_t size = sizeof(struct dm_ioctl) + spec_len;
    struct dm_ioctl *tl = calloc(1, size);
    dm_init(tl, size, name);
    tl->flags = DM_READONLY_FLAG;
    tl->target_count = 1;
    struct dm_target_spec *spec = (struct dm_target_spec *)((char *)tl + tl->data_start);
    spec->sector_start = 0;
    spec->length = sectors;
    spec->status = 0;
    spec->next = (uint32_t)spec_len;
    snprintf(spec->target_type, sizeof spec->target_type, "verity");
    memcpy((char *)(spec + 1), params, plen);
    int r = ioctl(dm_fd, DM_TABLE_LOAD, tl);
    int e = errno;
    free(tl);
    if (r < 0) {
        dm_remove(name);
        errno = e;
        return *step = "DM_TABLE_LOAD", -1;
    }
    dm_init(&io, sizeof io,
            name); // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live
    if (ioctl(dm_fd, DM_DEV_SUSPEND, &io) < 0) {
        e = errno;
        dm_remove(name);
        errno = e;
        return *step = "DM_DEV_SUSPEND (resume)", -1;
    }
    mkdir("/dev/mapper", 0755);
    char path[300];
    snprintf(path, sizeof path, "/dev/mapper/%s", name);
    unlink(path);
    if (mknod(path, S_IFBLK | 0400, dev) < 0)
        return *step = "mknod", -1;
    *out = dev;
    return 0;
}

// ---- disks
// ---------------------------------------------------------------------------------------------------------
// Finds the virtio disk with SERIAL (or named DISK) and returns "/dev/vdX" in path.
static int find_disk(const char *serial, const char *disk, char *path, size_t size)
{
    if (disk) {
        snprintf(path, size, "/dev/%s", disk);
        return access(path, F_OK);
    }
    DIR *d = opendir("/sys/block");
    if (!d)
        return -1;
    struct dirent *de;
    int found = -1;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "vd", 2) != 0)
            continue;
        char p[300], buf[64] = {0};
        snprintf(p, sizeof p, "/sys/block/%s/serial", de->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == 0))
            buf[--n] = 0;
        if (strcmp(buf, serial) == 0) {
            snprintf(path, size, "/dev/%s", de->d_name);
            found = 0;
            break;
        }
    }
    closedir(d);
    return found;
}

static uint64_t device_size(int fd)
{
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0)
        return 0;
    return size;
}

// ---- hashing devices and files
// ------------------------------------------------------------------------------------- Hashes LEN bytes from
// OFFSET (LEN = UINT64_MAX: to the end). Returns 0 or the errno of the first failed read, with *bad the
// offset of the chunk that failed.
static int hash_fd(int fd, uint64_t offset, uint64_t len, char hex[65], uint64_t *bad, uint64_t *total)
{
    static uint8_t buf[1 << 16];
    sha256_ctx c;
    sha256_init(&c);
    uint64_t done = 0;
    while (done < len) {
        size_t want = sizeof buf;
        if (len - done < want)
            want = (size_t)(len - done);
        ssize_t n = pread(fd, buf, want, (off_t)(offset + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (bad)
                *bad = offset + done;
            return errno;
        }
        if (n == 0)
            break;
        sha256_update(&c, buf, (size_t)n);
        done += (uint64_t)n;
    }
    if (total)
        *total = done;
    sha256_hex(&c, hex);
    return 0;
}

// ---- manifest
// ------------------------------------------------------------------------------------------------------
typedef struct {
    dev_t dev;
    ino_t ino;
    char *path;
} link_seen;
static link_seen *links;
static size_t nlinks, caplinks;

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void manifest_entry(const char *group, const char *root, const char *rel)
{
    char full[4096];
    snprintf(full, sizeof full, "%s%s%s", root, rel[0] ? "/" : "", rel);
    struct stat st;
    json_t *o = json_pack("{s:s,s:s}", "t", "entry", "group", group);
    json_object_set_new(o, "path", jpath(rel[0] ? rel : "."));
    if (lstat(full, &st) < 0) {
        json_object_set_new(o, "error", json_string(errname(errno)));
        emit(o);
        return;
    }
    const char *type = S_ISREG(st.st_mode)    ? "f"
                       : S_ISDIR(st.st_mode)  ? "d"
                       : S_ISLNK(st.st_mode)  ? "l"
                       : S_ISCHR(st.st_mode)  ? "c"
                       : S_ISBLK(st.st_mode)  ? "b"
                       : S_ISFIFO(st.st_mode) ? "p"
                                              : "s";
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "mode", json_integer(st.st_mode & 07777));
    json_object_set_new(o, "uid", json_integer(st.st_uid));
    json_object_set_new(o, "gid", json_integer(st.st_gid));
    json_object_set_new(o, "mtime", json_integer(st.st_mtime));
    if (!S_ISDIR(st.st_mode))
        json_object_set_new(o, "nlink", json_integer((json_int_t)st.st_nlink));
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
        json_object_set_new(o, "rdev", json_sprintf("%u:%u", major(st.st_rdev), minor(st.st_rdev)));
    if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))
        json_object_set_new(o, "size", json_integer(st.st_size));
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
        for (size_t i = 0; i < nlinks; i++)
            if (links[i].dev == st.st_dev && links[i].ino == st.st_ino) {
                json_object_set_new(o, "hardlink_of", jpath(links[i].path));
                break;
            }
        if (!json_object_get(o, "hardlink_of")) {
            if (nlinks == caplinks)
                links = realloc(links, (caplinks = caplinks * 2 + 16) * sizeof *links);
            links[nlinks++] = (link_seen){st.st_dev, st.st_ino, strdup(rel)};
        }
    }
    if (S_ISLNK(st.st_mode)) {
        char target[4097];
        ssize_t n = readlink(full, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = 0;
            json_object_set_new(o, "target", jpath(target));
        } else {
            json_object_set_new(o, "error", json_string(errname(errno)));
        }
    }
    if (S_ISREG(st.st_mode)) {
        int fd = open(full, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            json_object_set_new(o, "error", json_string(errname(errno)));
        } else {
            char hex[65];
            uint64_t bad = 0;
            int e = hash_fd(fd, 0, UINT64_MAX, hex, &bad, NULL);
            if (e) {
                json_object_set_new(o, "error", json_string(errname(e)));
                json_object_set_new(o, "error_offset", json_integer((json_int_t)bad));
            } else {
                json_object_set_new(o, "sha256", json_string(hex));
            }
            close(fd);
        }
    }
    emit(o);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(full);
        if (!d) {
            emit(json_pack("{s:s,s:s,s:o,s:s}", "t", "entry", "group", group, "path",
                           jpath(rel[0] ? rel : "."), "error", errname(errno)));
            return;
        }
        char **names = NULL;
        size_t n = 0, cap = 0;
        struct dirent *de;
        errno = 0;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            if (n == cap)
                names = realloc(names, (cap = cap * 2 + 16) * sizeof *names);
            names[n++] = strdup(de->d_name);
        }
        if (errno)
            emit(json_pack("{s:s,s:s,s:o,s:s}", "t", "readdir", "group", group, "path",
                           jpath(rel[0] ? rel : "."), "error", errname(errno)));
        closedir(d);
        qsort(names, n, sizeof *names, cmp_names);
        for (size_t i = 0; i < n; i++) {
            char child[4096];
            snprintf(child, sizeof child, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
            manifest_entry(group, root, child);
            free(names[i]);
        }
        free(names);
    }
}

// ---- layers
// --------------------------------------------------------------------------------------------------------
static bool is_hex(const char *s, size_t len)
{
    if (!s || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!strchr("0123456789abcdefABCDEF", s[i]))
            return false;
    return true;
}

static uint64_t ju64(json_t *o, const char *key, uint64_t dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (uint64_t)json_integer_value(v) : dflt;
}
static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static uint32_t le32(const uint8_t *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const uint8_t *p)
{
    return le32(p) | (uint64_t)le32(p + 4) << 32;
}

// Sets up the verity device of one layer; on success writes /dev/mapper/<dmname> into mapper. Emits a "layer"
// record.
static int activate_layer(const char *group, json_t *layer, int index, char *mapper, size_t mapper_size)
{
    const char *lname = jstr(layer, "name");
    const char *format = jstr(layer, "format");
    const char *serial = jstr(layer, "serial");
    const char *diskname = jstr(layer, "disk");
    char dmname[128];
    snprintf(dmname, sizeof dmname, "%s-%d", group, index);
    json_t *rec =
        json_pack("{s:s,s:s,s:s?,s:s?}", "t", "layer", "group", group, "name", lname, "format", format);
    char disk[300];
    if (find_disk(serial ? serial : "", diskname, disk, sizeof disk) < 0) {
        json_object_set_new(rec, "error", json_sprintf("no disk with serial %s", serial ? serial : diskname));
        emit(rec);
        return -1;
    }
    json_object_set_new(rec, "disk", json_string(disk));
    struct stat st;
    int fd = open(disk, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        json_object_set_new(rec, "error", json_sprintf("open %s: %s", disk, errname(errno)));
        emit(rec);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint64_t disk_size = device_size(fd);
    char devstr[32];
    snprintf(devstr, sizeof devstr, "%u:%u", major(st.st_rdev), minor(st.st_rdev));

    const char *root = jstr(layer, "root_hash");
    char params[1024];
    uint64_t sectors = 0;
    const char *err = NULL;
    if (format && !strcmp(format, "tarfs")) {
        // As the tardev agent: the trailer (last 4 KiB) holds {u32 dbs, u32 hbs, u64 data_blocks} at [3584,
        // 3600); table "1 dev dev dbs hbs data_blocks ceil(data_size/hbs) sha256 root <64 zeros>".
        uint8_t trailer[4096];
        if (disk_size < 4096 || pread(fd, trailer, sizeof trailer, (off_t)(disk_size - 4096)) != 4096) {
            err = "cannot read the tardev trailer";
        } else {
            uint32_t dbs = le32(trailer + 3584), hbs = le32(trailer + 3588);
            uint64_t blocks = le64(trailer + 3592);
            json_object_set_new(rec, "trailer",
                                json_pack("{s:I,s:I,s:I}", "data_block_size", (json_int_t)dbs,
                                          "hash_block_size", (json_int_t)hbs, "data_blocks",
                                          (json_int_t)blocks));
            if (dbs == 0 || hbs == 0 || (dbs & (dbs - 1)) || (hbs & (hbs - 1)) || dbs % 512) {
                err = "bad block sizes in the tardev trailer";
            } else {
                uint64_t data_size = blocks * dbs;
                snprintf(params, sizeof params,
                         "1 %s %s %u %u %llu %llu sha256 %s "
                         "0000000000000000000000000000000000000000000000000000000000000000",
                         devstr, devstr, dbs, hbs, (unsigned long long)blocks,
                         (unsigned long long)((data_size + hbs - 1) / hbs), root ? root : "");
                sectors = data_size / 512;
            }
        }
    } else {
        // EROFS with containerd's sidecar (<layer>.dmverity): the tree starts one hash block after the
        // superblock at hashoffset, or at hashoffset without a superblock.
        json_t *v = json_object_get(layer, "dmverity");
        if (!json_is_object(v)) {
            err = "no dmverity parameters";
        } else {
            if (!root)
                root = jstr(v, "roothash");
            const char *alg = jstr(v, "hash_algorithm");
            const char *salt = jstr(v, "salt");
            uint64_t dbs = ju64(v, "data_block_size", 4096), hbs = ju64(v, "hash_block_size", 4096);
            uint64_t blocks = ju64(v, "data_blocks", 0), off = ju64(v, "hashoffset", 0);
            uint64_t ver = ju64(v, "verity_format", 1);
            bool sb = json_is_true(json_object_get(v, "superblock"));
            uint64_t hash_start = sb ? (off + 512 + hbs - 1) / hbs : off / hbs;
            if (!alg)
                alg = "sha256";
            if (sb) { // cross-check the on-disk cryptsetup superblock against the sidecar
                uint8_t s[512];
                if (pread(fd, s, sizeof s, (off_t)off) != (ssize_t)sizeof s)
                    err = "cannot read the verity superblock";
                else if (memcmp(s, "verity\0\0", 8) || le32(s + 8) != 1)
                    err = "no verity superblock at hashoffset";
                else if (le32(s + 64) != dbs || le32(s + 68) != hbs || le64(s + 72) != blocks ||
                         strncmp((char *)s + 32, alg, 32) || le32(s + 12) != ver)
                    err = "verity superblock disagrees with the sidecar";
            }
            if (!blocks)
                err = "data_blocks missing";
            snprintf(params, sizeof params, "%llu %s %s %llu %llu %llu %llu %s %s %s",
                     (unsigned long long)ver, devstr, devstr, (unsigned long long)dbs,
                     (unsigned long long)hbs, (unsigned long long)blocks, (unsigned long long)hash_start, alg,
                     root ? root : "", salt && salt[0] ? salt : "-");
            sectors = blocks * dbs / 512;
        }
    }
    close(fd);
    if (!err && !is_hex(root, 64) && !is_hex(root, 128))
        err = "root hash missing or not hex";
    if (err) {
        json_object_set_new(rec, "error", json_string(err));
        emit(rec);
        return -1;
    }
    json_object_set_new(rec, "table", json_sprintf("0 %llu verity %s", (unsigned long long)sectors, params));
    dev_t dev;
    const char *step = NULL;
    if (dm_create_verity(dmname, sectors, params, &dev, &step) < 0) {
        json_object_set_new(rec, "error", json_sprintf("%s: %s", step, errname(errno)));
        emit(rec);
        drain_kmsg();
        return -1;
    }
    snprintf(mapper, mapper_size, "/dev/mapper/%s", dmname);
    json_object_set_new(rec, "activated", json_string(mapper));
    json_object_set_new(rec, "dm", json_sprintf("%u:%u", major(dev), minor(dev)));
    emit(rec);
    drain_kmsg();
    return 0;
}

static void read_checks(const char *group, json_t *layer, const char *mapper)
{
    const char *lname = jstr(layer, "name");
    int fd = open(mapper, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        emit(json_pack("{s:s,s:s,s:s?,s:s}", "t", "device", "group", group, "name", lname, "error",
                       errname(errno)));
        return;
    }
    json_t *ranges = json_object_get(layer, "ranges");
    size_t i;
    json_t *r;
    json_array_foreach(ranges, i, r)
    {
        uint64_t off = (uint64_t)json_integer_value(json_array_get(r, 0));
        uint64_t len = (uint64_t)json_integer_value(json_array_get(r, 1));
        char hex[65];
        uint64_t bad = 0, total = 0;
        int e = hash_fd(fd, off, len, hex, &bad, &total);
        json_t *o = json_pack("{s:s,s:s,s:s?,s:I,s:I}", "t", "range", "group", group, "name", lname, "offset",
                              (json_int_t)off, "length", (json_int_t)len);
        if (e)
            json_object_set_new(o, "error", json_string(errname(e)));
        else if (total != len)
            json_object_set_new(o, "error", json_sprintf("short read %llu", (unsigned long long)total));
        else
            json_object_set_new(o, "sha256", json_string(hex));
        emit(o);
    }
    drain_kmsg();
    if (json_is_true(json_object_get(layer, "read_device"))) {
        char hex[65];
        uint64_t bad = 0, total = 0;
        int e = hash_fd(fd, 0, UINT64_MAX, hex, &bad, &total);
        json_t *o = json_pack("{s:s,s:s,s:s?,s:I}", "t", "device", "group", group, "name", lname, "size",
                              (json_int_t)device_size(fd));
        if (e) {
            json_object_set_new(o, "error", json_string(errname(e)));
            json_object_set_new(o, "error_offset", json_integer((json_int_t)bad));
        } else {
            json_object_set_new(o, "sha256", json_string(hex));
            json_object_set_new(o, "read", json_integer((json_int_t)total));
        }
        emit(o);
        drain_kmsg();
    }
    close(fd);
}

static void run_group(json_t *g)
{
    const char *group = jstr(g, "name");
    if (!group)
        group = "group";
    json_t *layers = json_object_get(g, "layers");
    bool overlay = !json_is_false(json_object_get(g, "overlay"));
    bool manifest = !json_is_false(json_object_get(g, "manifest"));
    emit(json_pack("{s:s,s:s}", "t", "group", "group", group));
    size_t n = json_array_size(layers);
    char(*mounts)[300] = calloc(n + 1, sizeof *mounts);
    bool all_mounted = n > 0;
    for (size_t i = 0; i < n; i++) {
        json_t *layer = json_array_get(layers, i);
        char mapper[300];
        if (activate_layer(group, layer, (int)i, mapper, sizeof mapper) < 0) {
            all_mounted = false;
            continue;
        }
        const char *format = jstr(layer, "format");
        if (format && !strcmp(format, "tarfs")) {
            all_mounted = false; // no tarfs module: read the device instead
            read_checks(group, layer, mapper);
            continue;
        }
        if (json_object_get(layer, "ranges") || json_is_true(json_object_get(layer, "read_device")))
            read_checks(group, layer, mapper);
        snprintf(mounts[i], sizeof mounts[i], "/mnt/%s/l%zu", group, i);
        char dir[300];
        snprintf(dir, sizeof dir, "/mnt/%s", group);
        mkdir(dir, 0755);
        mkdir(mounts[i], 0755);
        int r = mount(mapper, mounts[i], "erofs", MS_RDONLY, NULL);
        int e = errno;
        drain_kmsg();
        emit(json_pack("{s:s,s:s,s:s?,s:s,s:s}", "t", "mount", "group", group, "name", jstr(layer, "name"),
                       "target", mounts[i], "result", r == 0 ? "ok" : errname(e)));
        if (r < 0) {
            mounts[i][0] = 0;
            all_mounted = false;
        }
    }
    if (all_mounted && manifest) {
        char merged[300];
        if (overlay) {
            char upper[300], work[300];
            snprintf(upper, sizeof upper, "/tmp/%s-upper", group);
            snprintf(work, sizeof work, "/tmp/%s-work", group);
            snprintf(merged, sizeof merged, "/mnt/%s/merged", group);
            mkdir(upper, 0755);
            mkdir(work, 0755);
            mkdir(merged, 0755);
            size_t cap = 64 + n * 300;
            char *opts = malloc(cap);
            snprintf(opts, cap, "lowerdir=");
            for (size_t i = 0; i < n; i++) {
                if (i)
                    strcat(opts, ":");
                strcat(opts, mounts[i]);
            }
            snprintf(opts + strlen(opts), cap - strlen(opts), ",upperdir=%s,workdir=%s", upper, work);
            int r = mount("overlay", merged, "overlay", 0, opts);
            int e = errno;
            drain_kmsg();
            emit(json_pack("{s:s,s:s,s:s,s:s}", "t", "overlay", "group", group, "options", opts, "result",
                           r == 0 ? "ok" : errname(e)));
            free(opts);
            if (r < 0)
                merged[0] = 0;
        } else {
            snprintf(merged, sizeof merged, "%s", mounts[0]);
        }
        if (merged[0]) {
            manifest_entry(group, merged, "");
            drain_kmsg();
        }
    }
    free(mounts);
    emit(json_pack("{s:s,s:s}", "t", "end", "group", group));
}

static char *read_config(const char *path)
{
    char disk[300];
    if (!path) {
        if (find_disk("vsconfig", NULL, disk, sizeof disk) < 0)
            return NULL;
        path = disk;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap)
            buf = realloc(buf, (cap *= 2) + 1);
        ssize_t n = read(fd, buf + len, cap - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(buf + len - (size_t)n, 0, (size_t)n))
            break;
    }
    close(fd);
    buf[len] = 0;
    return buf;
}

int main(int argc, char **argv)
{
    kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (kmsg_fd >= 0)
        lseek(kmsg_fd, 0, SEEK_END);
    char *text = read_config(argc > 1 ? argv[1] : NULL);
    if (!text) {
        emit(json_pack("{s:s,s:s}", "t", "fatal", "error", "no configuration (disk with serial vsconfig)"));
        return 1;
    }
    json_error_t jerr;
    json_t *cfg = json_loads(text, JSON_DISABLE_EOF_CHECK, &jerr);
    free(text);
    if (!cfg) {
        emit(json_pack("{s:s,s:s}", "t", "fatal", "error", jerr.text));
        return 1;
    }
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(cfg, "groups"), i, g) run_group(g);
    json_decref(cfg);
    emit(json_pack("{s:s}", "t", "done"));
    return 0;
}
