#!/usr/bin/env bash
# The main job on a built-in example: installs dependencies, builds, starts Debian's containerd (own root, state and
# socket under a temp dir) with veritysnapd as its proxy snapshotter, imports an example image with
# --snapshotter veritysnap (layers extracted by containerd, converted at Commit), pre-pulls the same image with
# `veritysnap pull` into a second namespace (layers converted straight from their blobs), runs containers from
# both with runc, prints each layer's dm-verity root hash and checks that the pulled ones equal what a policy author
# computes offline with `veritysnap image roothash`; cleans up everything on exit. Usage (as root): scripts/example.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" "$top/build" Release
vs="$top/build/bin/veritysnap"
vsd="$top/build/bin/veritysnapd"

work=$(mktemp -d /tmp/veritysnap-example.XXXXXX)
containerd_pid=""
daemon_pid=""
ctr() { command ctr -a "$work/containerd.sock" -n example "$@"; }
cleanup() {
    set +e
    if [ -n "$containerd_pid" ]; then
        ctr tasks kill -s KILL demo >/dev/null 2>&1
        ctr containers rm demo >/dev/null 2>&1
        kill "$containerd_pid" 2>/dev/null
        wait "$containerd_pid" 2>/dev/null
    fi
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    # Whatever is still mounted below the temp dir (containerd's and the daemon's mounts), deepest first.
    awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== building an example image (4 layers: busybox, whiteouts, opaque dirs, hardlinks, xattrs)"
python3 "$top/tests/e2e/make_image.py" "$work/image.tar" example.local/veritysnap/demo:1 \
    --busybox /bin/busybox >"$work/image.json"

echo "== starting veritysnapd and containerd"
# This example runs anywhere, including kernels without device-mapper; production nodes keep verity = "require".
"$vsd" --root "$work/veritysnap" --address "$work/veritysnap.sock" --verity auto \
    --containerd-address "$work/containerd.sock" 2>"$work/veritysnapd.log" &
daemon_pid=$!
cat >"$work/containerd.toml" <<EOF
version = 2
root = "$work/containerd-root"
state = "$work/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"

[proxy_plugins.veritysnap]
  type = "snapshot"
  address = "$work/veritysnap.sock"
EOF
containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do
    [ -S "$work/containerd.sock" ] && [ -S "$work/veritysnap.sock" ] && ctr version >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== ctr images import --snapshotter veritysnap"
ctr images import --snapshotter veritysnap "$work/image.tar"

echo "== ctr run --snapshotter veritysnap (runc)"
ctr run --rm --snapshotter veritysnap example.local/veritysnap/demo:1 demo \
    /bin/busybox sh -c 'echo "hello from a container on verity-protected layers"; ls /; cat /etc/os-release 2>/dev/null | head -3'

echo "== veritysnap pull (blob path: every layer converted from its blob, reproducibly)"
"$vs" pull --quiet --namespace pulled --containerd-address "$work/containerd.sock" \
    --oci-archive "$work/image.tar" --name example.local/veritysnap/demo:1
command ctr -a "$work/containerd.sock" -n pulled run --rm --snapshotter veritysnap \
    example.local/veritysnap/demo:1 demo2 /bin/busybox echo "hello from a pre-pulled image"

echo "== each layer's dm-verity root hash (snapshot label containerd.io/snapshot/veritysnap.root-hash)"
"$vs" image roothash --quiet --oci-archive "$work/image.tar" >"$work/offline.json"
command ctr -a "$work/containerd.sock" -n pulled snapshots --snapshotter veritysnap ls |
    awk 'NR > 1 && $NF == "Committed" {print $1}' | while read -r key; do
    command ctr -a "$work/containerd.sock" -n pulled snapshots --snapshotter veritysnap info "$key"
done | python3 -c '
import json, sys
offline = {l["chain_id"]: l["root_hash"] for l in json.load(open(sys.argv[1]))["layers"]}
text, depth, start, ok = sys.stdin.read(), 0, 0, True
for i, c in enumerate(text):  # ctr prints one JSON object per snapshot
    depth += c == "{"
    depth -= c == "}"
    if c == "}" and depth == 0:
        info = json.loads(text[start:i + 1])
        start = i + 1
        node = info["Labels"]["containerd.io/snapshot/veritysnap.root-hash"]
        chain = info["Name"]
        same = offline.get(chain) == node
        ok &= same
        verdict = "= offline" if same else "DIFFERS from offline " + str(offline.get(chain))
        print(chain, node, verdict)
sys.exit(0 if ok else 1)' "$work/offline.json"
echo "== done: everything under $work is removed on exit"
