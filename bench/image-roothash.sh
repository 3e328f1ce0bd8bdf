#!/usr/bin/env bash
# Times `veritysnap image roothash` on the corpus OCI image against the decompression floor of its layers (the sum
# of `anchors.sh inflate` over its layer blobs, as one shell command running both one after the other), in ONE
# hyperfine run, and prints the ratio. The issue's goal: at most 1.2x with layers processed concurrently on 2 cores.
# Usage: bench/image-roothash.sh [BUILD_DIR]      (default <repo>/build; the veritysnap target is built if missing)
# Env:   VERITYSNAP_CORPUS  corpus dir (default /var/tmp/veritysnap-corpus; made by ../shared/bench/make-corpus.sh)
#        RUNS               hyperfine runs per command (default 5, after 1 warm-up)
#        ANCHORS            anchors script (default ../shared/bench/anchors.sh next to the repository)
#        BENCH_OUT          where the hyperfine JSON goes (default BUILD_DIR/bench)
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
bin=$build/bin/veritysnap
corpus=${VERITYSNAP_CORPUS:-/var/tmp/veritysnap-corpus}
runs=${RUNS:-5}
anchors=${ANCHORS:-$top/../shared/bench/anchors.sh}
out=${BENCH_OUT:-$build/bench}
for tool in hyperfine python3 igzip zstd; do
  command -v "$tool" >/dev/null || { echo "image-roothash.sh: $tool missing (run scripts/install-deps.sh)" >&2; exit 2; }
done
[ -x "$bin" ] || cmake --build "$build" --target veritysnap
[ -d "$corpus/oci" ] || "$top/../shared/bench/make-corpus.sh" "$corpus" >/dev/null
mkdir -p "$out"
oci=$corpus/oci
# The layer blobs of the image, from its manifest (blob names carry no suffix: anchors.sh inflates them with igzip,
# which is right for the corpus's gzip layers; zstd layers get a .zst link so the anchor picks zstd).
scratch=$(mktemp -d /var/tmp/vs-bench-image.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mapfile -t blobs < <(python3 - "$oci" "$scratch" <<'PY'
import json, os, sys
oci, scratch = sys.argv[1], sys.argv[2]
idx = json.load(open(f"{oci}/index.json"))
man = json.load(open(f"{oci}/blobs/sha256/{idx['manifests'][0]['digest'][7:]}"))
for l in man["layers"]:
    p = f"{oci}/blobs/sha256/{l['digest'][7:]}"
    if l["mediaType"].endswith("zstd"):
        os.symlink(p, f"{scratch}/{l['digest'][7:]}.zst")
        p = f"{scratch}/{l['digest'][7:]}.zst"
    print(p)
PY
)
inflate_all=""
for b in "${blobs[@]}"; do inflate_all+="$anchors inflate $b; "; done
echo "== image roothash on $oci (${#blobs[@]} layers, $(nproc) cores)" >&2
hyperfine -w 1 -r "$runs" --export-json "$out/image-roothash.hyperfine.json" \
  -n "veritysnap image roothash" "$bin image roothash --quiet --oci-layout $oci" \
  -n "sum of anchors.sh inflate" "bash -c '$inflate_all'" >&2
python3 - "$out/image-roothash.hyperfine.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
a, b = r["veritysnap image roothash"], r["sum of anchors.sh inflate"]
print("| command | mean s | stddev s |")
print("|---|---|---|")
for x in (a, b):
    print(f"| {x['command']} | {x['mean']:.3f} | {x['stddev']:.3f} |")
print(f"\nratio image roothash / sum of inflate: {a['mean'] / b['mean']:.2f}x (goal <= 1.2x)")
PY
