/* The blob path at Commit, in CRI's order, driven straight over gRPC: containerd's CRI unpacker calls Prepare with
 * the labels containerd.io/snapshot.ref and containerd.io/snapshot/cri.layer-digest BEFORE it fetches the blob, so
 * the daemon takes the directory path; the blob is written into containerd's content store afterwards, and Commit
 * must convert from the blob (source 'blob' in the store), not from the (here empty) directory.
 *
 * Usage: blob_commit_client DAEMON_SOCK CONTAINERD_SOCK NAMESPACE SEQ PARENT_NAME CHAIN_ID BLOB_DIGEST BLOB_FILE
 *   Against the daemon (as containerd's metadata layer would call its proxy backend): Prepare of
 *   "<NS>/<SEQ>/extract-<SEQ> <CHAIN_ID>" with parent PARENT_NAME ("" for none) and both labels, which must succeed
 *   (the blob is absent: checked first with Content.Info against containerd); then the blob is written into
 *   containerd's content store (Content.Write under a lease); then Commit as "<NS>/<SEQ+1>/<CHAIN_ID>" with the ref
 *   label. Prints the committed name. The caller checks the store and the layer file. Exit 0 ok, 1 failure. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "grpc/containerd_client.h"

static int fail(const char *what, const struct vs_error *err)
{
    fprintf(stderr, "blob_commit_client: %s: %s (%d)\n", what, err->message, err->code);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s DAEMON_SOCK CONTAINERD_SOCK NAMESPACE SEQ PARENT_NAME CHAIN_ID BLOB_DIGEST "
                        "BLOB_FILE\n",
                argv[0]);
        return 2;
    }
    const char *daemon = argv[1], *containerd = argv[2], *ns = argv[3], *parent = argv[5], *chain = argv[6],
               *digest = argv[7], *blob_path = argv[8];
    long seq = strtol(argv[4], NULL, 10);
    FILE *f = fopen(blob_path, "rb");
    if (!f) {
        perror(blob_path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *blob = malloc(size ? (size_t)size : 1);
    if (!blob || fread(blob, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "reading %s failed\n", blob_path);
        return 1;
    }
    fclose(f);

    grpc_init();
    struct vs_error err;
    vs_error_clear(&err);
    struct cd_client *vs = NULL, *cd = NULL;
    int rc = 1;
    if (cd_client_new(daemon, &vs, &err) < 0 || cd_client_new(containerd, &cd, &err) < 0) {
        rc = fail("client", &err);
        goto out;
    }
    struct cd_ctx ctx = {ns, NULL};
    int64_t have = 0;
    int irc = cd_content_info(cd, &ctx, digest, &have, &err);
    if (irc != -ENOENT) {
        fprintf(stderr, "blob_commit_client: the blob must be absent before Prepare (Content.Info: %d %s)\n", irc,
                err.message);
        goto out;
    }

    char key[512], name[512];
    snprintf(key, sizeof(key), "%s/%ld/extract-%ld %s", ns, seq, seq, chain);
    snprintf(name, sizeof(name), "%s/%ld/%s", ns, seq + 1, chain);
    struct cd_label labels[2] = {{"containerd.io/snapshot.ref", chain},
                                 {"containerd.io/snapshot/cri.layer-digest", digest}};
    struct snapshot_mounts mounts = {0};
    if (cd_snapshot_prepare(vs, &ctx, "veritysnap", key, parent, labels, 2, &mounts, &err) < 0) {
        rc = fail("Prepare (blob absent: the directory path)", &err);
        goto out;
    }
    printf("prepared %s: %zu mount(s), first %s\n", key, mounts.count, mounts.count ? mounts.items[0].type : "-");
    snapshot_mounts_free(&mounts);

    /* CRI's unpacker fetches now: the blob lands in the content store (under a lease, as a pull does). */
    char lease[64];
    snprintf(lease, sizeof(lease), "blob-commit-test-%d-%ld", (int)getpid(), seq);
    if (cd_lease_create(cd, ns, lease, 3600, &err) < 0) {
        rc = fail("Leases.Create", &err);
        goto out;
    }
    struct cd_ctx lctx = {ns, lease};
    char ref[128];
    snprintf(ref, sizeof(ref), "layer-%s", digest);
    if (cd_content_write(cd, &lctx, ref, digest, size, NULL, 0, blob, &err) < 0 && err.code != -EEXIST) {
        rc = fail("Content.Write", &err);
        goto out;
    }
    struct cd_label commit_labels[1] = {{"containerd.io/snapshot.ref", chain}};
    if (cd_snapshot_commit(vs, &ctx, "veritysnap", name, key, commit_labels, 1, &err) < 0) {
        rc = fail("Commit", &err);
        goto out;
    }
    printf("committed %s\n", name);
    rc = 0;
    /* The lease stays: the caller's checks read nothing from containerd, and the namespace is thrown away. */
out:
    cd_client_free(vs);
    cd_client_free(cd);
    grpc_shutdown();
    free(blob);
    return rc;
}
