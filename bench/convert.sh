#!/usr/bin/env bash
# Times `veritysnap convert` (erofs and tarfs) beside the anchor pipelines in ONE hyperfine run per layer, measures
# peak RSS, and compares image sizes with mkfs.erofs on the extracted tree; prints a markdown report for
# docs/performance.md.
# Usage: bench/convert.sh [BUILD_DIR]          (default <repo>/build; the veritysnap target is built if missing)
# Env:   VERITYSNAP_CORPUS  corpus dir (default /var/tmp/veritysnap-corpus; made by ../shared/bench/make-corpus.sh)
#        BENCH_OUT          where JSON and the report go (default BUILD_DIR/bench)
#        RUNS               hyperfine runs per command (default 5, after 1 warm-up)
#        LAYERS             layer files in the corpus (default "debian.tar.gz debian.tar.zst npm.tar.gz")
#        ANCHORS            anchors script (default ../shared/bench/anchors.sh next to the repository)
# Needs hyperfine, /usr/bin/time (package `time`), mkfs.erofs, veritysetup, igzip, zstd (scripts/install-deps.sh).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
bin=$build/bin/veritysnap
corpus=${VERITYSNAP_CORPUS:-/var/tmp/veritysnap-corpus}
out=${BENCH_OUT:-$build/bench}
runs=${RUNS:-5}
anchors=${ANCHORS:-$top/../shared/bench/anchors.sh}
read -r -a layers <<<"${LAYERS:-debian.tar.gz debian.tar.zst npm.tar.gz}"

for tool in hyperfine /usr/bin/time mkfs.erofs veritysetup igzip zstd python3; do
  command -v "$tool" >/dev/null || { echo "convert.sh: $tool missing (run scripts/install-deps.sh)" >&2; exit 2; }
done
[ -x "$bin" ] || cmake --build "$build" --target veritysnap
"$top/../shared/bench/make-corpus.sh" "$corpus" >/dev/null   # reuses the layers that already exist
mkdir -p "$out"
scratch=$(mktemp -d /var/tmp/vs-bench.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

for layer in "${layers[@]}"; do
  src=$corpus/$layer
  name=${layer//./_}
  echo "== $layer" >&2
  # One hyperfine run: the converter and both anchors measured side by side under the same conditions.
  hyperfine -N -w 1 -r "$runs" --export-json "$out/$name.hyperfine.json" \
    -n "convert erofs" "$bin convert -o $scratch/l.erofs $src" \
    -n "convert tarfs" "$bin convert --format tarfs -o $scratch/l.tarfs $src" \
    -n "anchor inflate" "$anchors inflate $src" \
    -n "anchor naive" "$anchors naive $src" >&2

  # Peak RSS (kB) of each command, one run each.
  rss() { /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F': ' '/Maximum resident set size/ {print $2}'; }
  rss_erofs=$(rss "$bin" convert -o "$scratch/l.erofs" "$src")
  rss_tarfs=$(rss "$bin" convert --format tarfs -o "$scratch/l.tarfs" "$src")
  rss_naive=$(rss "$anchors" naive "$src")
  rss_inflate=$(rss "$anchors" inflate "$src")

  # Sizes: our images (from the JSON) against mkfs.erofs 1.5 on the extracted tree, default options (tail packing
  # on) and -T0 as the naive anchor runs it.
  "$bin" convert -o "$scratch/l.erofs" "$src" >"$scratch/erofs.json"
  "$bin" convert --format tarfs -o "$scratch/l.tarfs" "$src" >"$scratch/tarfs.json" 2>"$out/$name.tarfs-warnings.log"
  rm -rf "$scratch/tree"; mkdir "$scratch/tree"
  tar --numeric-owner -xpf "$src" -C "$scratch/tree"
  mkfs.erofs "$scratch/mkfs-default.img" "$scratch/tree" >/dev/null
  mkfs.erofs -T0 "$scratch/mkfs-T0.img" "$scratch/tree" >/dev/null
  python3 - "$out/$name.sizes.json" "$scratch" "$src" "$rss_erofs" "$rss_tarfs" "$rss_naive" "$rss_inflate" <<'PY'
import json, os, sys
path, d, src = sys.argv[1:4]
rss = dict(zip(("convert erofs", "convert tarfs", "anchor naive", "anchor inflate"), map(int, sys.argv[4:8])))
e, t = (json.load(open(os.path.join(d, f))) for f in ("erofs.json", "tarfs.json"))
json.dump({"compressed": os.path.getsize(src), "tar": e.get("uncompressed_size"), "entries": e.get("entries"),
           "erofs_image": e["image_size"], "erofs_file": e["size"], "tarfs_image": t["image_size"],
           "tarfs_file": t["size"],
           "mkfs_default": os.path.getsize(os.path.join(d, "mkfs-default.img")),
           "mkfs_T0": os.path.getsize(os.path.join(d, "mkfs-T0.img")), "rss_kb": rss}, open(path, "w"), indent=1)
PY
  rm -rf "$scratch/tree" "$scratch"/*.img "$scratch"/l.*
done

python3 - "$out" "${layers[@]}" <<'PY' | tee "$out/report.md"
import json, os, platform, subprocess, sys
out, layers = sys.argv[1], sys.argv[2:]
MB = 1e6
def ver(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; {ver(['hyperfine', '--version'])}, "
      f"erofs-utils {ver(['fsck.erofs', '-V']).split()[-1]}, {' '.join(ver(['veritysetup', '--version']).split()[:2])}."
      f"\n")
print("Wall time, mean ± σ of the runs of one hyperfine invocation per layer (`bench/convert.sh`); the ratios are of "
      "medians. `inflate` is decompression alone (igzip / zstd -d), the floor under any converter; `naive` is "
      "tar -x + mkfs.erofs -T0 + veritysetup format.\n")
print("| layer | convert erofs | convert tarfs | anchor inflate | anchor naive | erofs / inflate | tarfs / inflate "
      "| naive / erofs |")
print("|---|---|---|---|---|---|---|---|")
rows_rss, rows_size = [], []
for layer in layers:
    name = layer.replace(".", "_")
    res = {r["command"]: r for r in json.load(open(os.path.join(out, f"{name}.hyperfine.json")))["results"]}
    m = {k: v["median"] for k, v in res.items()}
    cell = lambda k: f"{res[k]['mean']:.2f} ± {res[k]['stddev'] or 0:.2f} s"
    print(f"| {layer} | {cell('convert erofs')} | {cell('convert tarfs')} | {cell('anchor inflate')} | "
          f"{cell('anchor naive')} | {m['convert erofs'] / m['anchor inflate']:.2f}× | "
          f"{m['convert tarfs'] / m['anchor inflate']:.2f}× | {m['anchor naive'] / m['convert erofs']:.2f}× |")
    s = json.load(open(os.path.join(out, f"{name}.sizes.json")))
    r = s["rss_kb"]
    rows_rss.append(f"| {layer} | {r['convert erofs'] / 1024:.1f} | {r['convert tarfs'] / 1024:.1f} | "
                    f"{r['anchor inflate'] / 1024:.1f} | {r['anchor naive'] / 1024:.1f} |")
    rows_size.append(f"| {layer} | {s['entries']} | {s['compressed'] / MB:.1f} | {s['tar'] / MB:.1f} | "
                     f"{s['erofs_image'] / MB:.1f} | {s['erofs_file'] / MB:.1f} | {s['mkfs_default'] / MB:.1f} | "
                     f"{s['mkfs_T0'] / MB:.1f} | {s['erofs_image'] / s['mkfs_default']:.3f} | "
                     f"{s['erofs_image'] / s['tar']:.3f} | {s['tarfs_file'] / MB:.1f} |")
print("\nPeak RSS (MiB, /usr/bin/time -v; for the anchors, the largest process of the pipeline).\n")
print("| layer | convert erofs | convert tarfs | anchor inflate | anchor naive |")
print("|---|---|---|---|---|")
print("\n".join(rows_rss))
print("\nSizes (MB = 10^6 bytes). `mkfs.erofs` is erofs-utils 1.5 on the tree `tar --numeric-owner -xpf` extracted, "
      "default options (tail packing on) and -T0 (what the naive anchor runs); ours is `image_size`, then the whole "
      "file with the verity tree.\n")
print("| layer | entries | compressed | tar | our EROFS image | + verity | mkfs.erofs | mkfs.erofs -T0 "
      "| ours / mkfs.erofs | ours / tar | tarfs file |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows_size))
PY
echo "JSON and report in $out" >&2
