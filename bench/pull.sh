#!/usr/bin/env bash
# The pre-pull benchmark of the blob-path issue: the corpus image (oci/ from ../shared/bench/make-corpus.sh) served by
# Debian's docker-registry on 127.0.0.1 (pushed with skopeo), in one run:
#   pull-to-running: `veritysnap pull` + the first `ctr run --snapshotter veritysnap`
#                vs  `ctr images pull --snapshotter overlayfs` + the first `ctr run --snapshotter overlayfs`
#   unpack alone:    the blobs fetched into the content store beforehand (`ctr content fetch`, untimed), then
#                    `veritysnap pull` (only unpacks: every layer converted from its blob)
#                vs  `ctr images pull --snapshotter overlayfs` (only unpacks: the content is there)
# each measurement against a fresh containerd (and a fresh veritysnapd with --containerd-address), alternating
# veritysnap/overlayfs, RUNS times; prints the medians and the ratios (goal: unpack <= 0.3x, pull-to-running <= 0.7x).
# Usage (root): bench/pull.sh [BUILD_DIR]       (default <repo>/build)
# Env: VERITYSNAP_CORPUS (default /var/tmp/veritysnap-corpus), RUNS (default 3), VERITY (veritysnapd --verity, default
#      off: the host dm-verity mounts need a kernel with dm-verity; `auto` measures them where there is one).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
vs=$build/bin/veritysnap
vsd=$build/bin/veritysnapd
corpus=${VERITYSNAP_CORPUS:-/var/tmp/veritysnap-corpus}
runs=${RUNS:-3}
verity=${VERITY:-off}
[ "$(id -u)" = 0 ] || { echo "pull.sh: needs root (containerd)" >&2; exit 2; }
for tool in containerd ctr runc docker-registry skopeo python3; do
  command -v "$tool" >/dev/null || { echo "pull.sh: $tool missing" >&2; exit 2; }
done
[ -x "$vs" ] && [ -x "$vsd" ] || { echo "pull.sh: build $build first (veritysnap, veritysnapd)" >&2; exit 2; }
if [ ! -f "$corpus/oci/index.json" ]; then
  "$top/../shared/bench/make-corpus.sh" "$corpus" >/dev/null
fi

scratch=$(mktemp -d /var/tmp/vs-bench-pull.XXXXXX)
chmod 711 "$scratch"
reg_pid=
cd_pid=
vsd_pid=
cleanup() {
  for p in $cd_pid $vsd_pid $reg_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  { grep -F " $scratch/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT

now() { date +%s.%N; }
wait_for() { # COMMAND... until it succeeds (30 s)
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "pull.sh: timed out waiting for: $*" >&2; exit 1
}

# ---- the registry ----
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$scratch/registry"
printf '{"version":0.1,"log":{"level":"error"},"storage":{"filesystem":{"rootdirectory":"%s/registry/data"}},"http":{"addr":"127.0.0.1:%s","secret":"bench"}}\n' \
  "$scratch" "$port" >"$scratch/registry/config.yml"
docker-registry serve "$scratch/registry/config.yml" >"$scratch/registry/log" 2>&1 &
reg_pid=$!
wait_for python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=0.2)"
ref=127.0.0.1:$port/veritysnap/corpus:1
HOME=$scratch/registry skopeo --insecure-policy copy -q --preserve-digests --dest-tls-verify=false \
  "oci:$corpus/oci:1" "docker://$ref"
size=$(du -sb "$corpus/oci/blobs" | cut -f1)
echo "corpus image $ref ($((size >> 20)) MiB of blobs), $runs runs, veritysnapd --verity $verity" >&2

# ---- one fresh containerd (+ veritysnapd) ----
start() { # DIR SNAPSHOTTER
  local d=$1
  mkdir -p "$d"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$d/c.sock"
[ttrpc]
  address = "$d/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[proxy_plugins.veritysnap]
  type = "snapshot"
  address = "$d/vs.sock"
EOF
  if [ "$2" = veritysnap ]; then
    "$vsd" --root "$d/vs" --address "$d/vs.sock" --verity "$verity" --containerd-address "$d/c.sock" \
      >"$d/veritysnapd.log" 2>&1 &
    vsd_pid=$!
    wait_for test -S "$d/vs.sock"
  fi
  containerd --config "$d/containerd.toml" >"$d/containerd.log" 2>&1 &
  cd_pid=$!
  wait_for ctr -a "$d/c.sock" version
}
stop() { # DIR
  ctr -a "$1/c.sock" -n bench tasks ls -q 2>/dev/null | while read -r t; do ctr -a "$1/c.sock" -n bench tasks kill -s KILL "$t" || true; done
  for p in $cd_pid $vsd_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  cd_pid= vsd_pid=
  { grep -F " $1/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$1"
}

C() { ctr -a "$d/c.sock" -n bench "$@"; }
pull() { # SNAPSHOTTER
  if [ "$1" = veritysnap ]; then
    "$vs" pull -q --namespace bench --containerd-address "$d/c.sock" --snapshotter veritysnap --plain-http "$ref" >/dev/null
  else
    C images pull --plain-http --snapshotter overlayfs "$ref" >/dev/null
  fi
}
first_run() { # SNAPSHOTTER
  C run --rm --runc-root "$d/runc" --snapshotter "$1" "$ref" "bench-$RANDOM" /bin/true >/dev/null
}

declare -A t
for i in $(seq "$runs"); do
  for s in veritysnap overlayfs; do
    # pull-to-running, fresh containerd
    d=$scratch/$s-e2e-$i
    start "$d" "$s"
    sync
    t0=$(now); pull "$s"; t1=$(now); first_run "$s"; t2=$(now)
    if [ "$s" = veritysnap ] && grep -q 'source=directory' "$d/veritysnapd.log"; then
      echo "pull.sh: veritysnapd took the directory path:" >&2; grep 'layer converted' "$d/veritysnapd.log" >&2; exit 1
    fi
    stop "$d"
    # unpack alone: the content is fetched first (untimed)
    d=$scratch/$s-unpack-$i
    start "$d" "$s"
    C content fetch --plain-http "$ref" >/dev/null
    sync
    t3=$(now); pull "$s"; t4=$(now)
    stop "$d"
    t[$s,pull,$i]=$(python3 -c "print($t1-$t0)")
    t[$s,run,$i]=$(python3 -c "print($t2-$t1)")
    t[$s,unpack,$i]=$(python3 -c "print($t4-$t3)")
    printf 'run %d %-10s pull %6.2f s  first run %5.2f s  pull-to-running %6.2f s  unpack alone %6.2f s\n' "$i" "$s" \
      "${t[$s,pull,$i]}" "${t[$s,run,$i]}" "$(python3 -c "print($t2-$t0)")" "${t[$s,unpack,$i]}" >&2
  done
done

med() { # SNAPSHOTTER KIND...  -> median over the runs of the sum of the kinds
  local vals=()
  for i in $(seq "$runs"); do
    local sum=0
    for k in "${@:2}"; do sum=$(python3 -c "print($sum+${t[$1,$k,$i]})"); done
    vals+=("$sum")
  done
  python3 -c "import statistics,sys; print('%.2f' % statistics.median(map(float, sys.argv[1:])))" "${vals[@]}"
}
vp=$(med veritysnap pull run); op=$(med overlayfs pull run)
vu=$(med veritysnap unpack); ou=$(med overlayfs unpack)
vpull=$(med veritysnap pull); opull=$(med overlayfs pull)
vrun=$(med veritysnap run); orun=$(med overlayfs run)
echo
echo "| median of $runs | veritysnap | overlayfs | ratio | goal |"
echo "|---|---|---|---|---|"
printf '| pull | %s s | %s s | %.2fx | |\n' "$vpull" "$opull" "$(python3 -c "print($vpull/$opull)")"
printf '| first ctr run | %s s | %s s | %.2fx | |\n' "$vrun" "$orun" "$(python3 -c "print($vrun/$orun)")"
printf '| pull-to-running | %s s | %s s | %.2fx | <= 0.7x |\n' "$vp" "$op" "$(python3 -c "print($vp/$op)")"
printf '| unpack alone | %s s | %s s | %.2fx | <= 0.3x |\n' "$vu" "$ou" "$(python3 -c "print($vu/$ou)")"
