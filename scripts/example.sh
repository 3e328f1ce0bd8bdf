#!/usr/bin/env bash
# The main job on a built-in example: installs dependencies, builds, converts a sample OCI layer (tar+gzip) into
# an EROFS layer file with a dm-verity tree, checks it with veritysetup, mounts it read-only and lists it.
# Usage (as root): scripts/example.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" "$top/build" Release
vs="$top/build/bin/veritysnap"
work=$(mktemp -d /tmp/veritysnap-example.XXXXXX)
cleanup() { mountpoint -q "$work/mnt" && umount "$work/mnt"; rm -rf "$work"; }
trap cleanup EXIT

# A small layer with what real layers carry: directories, files, a symlink, a hardlink, a whiteout.
mkdir -p "$work/tree/etc" "$work/tree/usr/bin" "$work/tree/var/lib"
printf 'NAME="veritysnap example"\n' >"$work/tree/etc/os-release"
printf '#!/bin/sh\necho hello from a verity-protected layer\n' >"$work/tree/usr/bin/hello"
chmod 755 "$work/tree/usr/bin/hello"
ln -s ../usr/bin/hello "$work/tree/etc/hello-link"
ln "$work/tree/etc/os-release" "$work/tree/etc/os-release.copy"
touch "$work/tree/var/lib/.wh.removed-by-this-layer"
tar --numeric-owner --owner=0 --group=0 --mtime=@1700000000 --sort=name -C "$work/tree" -cf - . |
    gzip -n >"$work/layer.tar.gz"

echo "== veritysnap convert (erofs + dm-verity)"
"$vs" convert -o "$work/layer.erofs" "$work/layer.tar.gz" | tee "$work/convert.json"
root=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["root_hash"])' "$work/convert.json")
offset=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hash_offset"])' "$work/convert.json")

echo "== veritysetup verify (cryptsetup checks our tree)"
veritysetup verify --hash-offset="$offset" "$work/layer.erofs" "$work/layer.erofs" "$root" && echo "verified: $root"

echo "== veritysnap verify"
"$vs" verify "$work/layer.erofs" >/dev/null && echo "verified every block"

echo "== the kernel mounts it"
mkdir "$work/mnt"
mount -t erofs -o loop,ro "$work/layer.erofs" "$work/mnt"
ls -lR "$work/mnt"
"$work/mnt/usr/bin/hello" || true
umount "$work/mnt"

echo "== the same layer in the tarfs format (AKS Kata guests)"
"$vs" convert --format tarfs -o "$work/layer.tarfs" "$work/layer.tar.gz" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print("tarfs root hash:", j["root_hash"])'
"$vs" verify "$work/layer.tarfs" >/dev/null && echo "tarfs layer verified"
