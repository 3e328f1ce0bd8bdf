#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer + ASan + UBSan) and runs each for SECONDS: fuzz_tar_erofs (the
# tar -> EROFS converter), fuzz_tardev_index (the tarfs index writer, round-tripped through its reader),
# fuzz_erofs_reader (the EROFS reader behind inspect, on hostile images) and fuzz_toml (the config parser).
# Usage: tests/fuzz/run.sh [SECONDS]     (default 60, per target)
# Env:   VERITYSNAP_FUZZ_BUILD  build directory (default <repo>/build-fuzz); the corpus grows in <build>/fuzz/corpus,
#        crashing inputs land in <build>/fuzz/artifacts/. Replay one with: <build>/bin/fuzz_tar_erofs FILE
# Exit status: 0 when SECONDS passed without a crash, non-zero otherwise (libFuzzer's status).
set -euo pipefail
secs=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${VERITYSNAP_FUZZ_BUILD:-$top/build-fuzz}
cc=$(command -v clang || command -v clang-14) || { echo "run.sh: clang not found (scripts/install-deps.sh)" >&2; exit 2; }
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
[ -f "$build/CMakeCache.txt" ] && gen=()   # keep the generator an existing build dir was made with

cmake -S "$top" -B "$build" "${gen[@]}" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release -DVERITYSNAP_FUZZ=ON >/dev/null
cmake --build "$build" --target fuzz_tar_erofs fuzz_tardev_index fuzz_erofs_reader fuzz_toml

work=$build/fuzz
rm -rf "$work/seeds"
mkdir -p "$work/corpus" "$work/artifacts"
python3 -B "$here/make_seeds.py" "$work/seeds"
echo "fuzzing fuzz_tar_erofs for ${secs}s; corpus $work/corpus, crashes in $work/artifacts/"
"$build/bin/fuzz_tar_erofs" -max_total_time="$secs" -max_len=131072 -timeout=30 -rss_limit_mb=4096 \
  -dict="$here/tar.dict" -artifact_prefix="$work/artifacts/" -print_final_stats=1 "$work/corpus" "$work/seeds"
# The tarfs index takes the same tar seeds; the EROFS reader starts from images of them made by the Release build's
# veritysnap when there is one (scripts/test.sh builds it first), else from nothing.
for target in fuzz_tardev_index fuzz_erofs_reader; do
  twork=$build/$target
  mkdir -p "$twork/corpus" "$twork/artifacts" "$twork/seeds"
  if [ "$target" = fuzz_erofs_reader ] && [ -x "$top/build/bin/veritysnap" ]; then
    for t in "$work"/seeds/*; do
      "$top/build/bin/veritysnap" convert --no-verity --no-sidecar -o "$twork/seeds/$(basename "$t").img" "$t" \
        >/dev/null 2>&1 || true
    done
  elif [ "$target" = fuzz_tardev_index ]; then
    cp "$work"/seeds/* "$twork/seeds/" 2>/dev/null || true
  fi
  echo "fuzzing $target for ${secs}s; corpus $twork/corpus, crashes in $twork/artifacts/"
  "$build/bin/$target" -max_total_time="$secs" -max_len=262144 -timeout=30 -rss_limit_mb=4096 \
    -artifact_prefix="$twork/artifacts/" -print_final_stats=1 "$twork/corpus" "$twork/seeds"
done

toml_work=$build/fuzz-toml
mkdir -p "$toml_work/corpus" "$toml_work/artifacts"
echo "fuzzing fuzz_toml for ${secs}s; corpus $toml_work/corpus, crashes in $toml_work/artifacts/"
"$build/bin/fuzz_toml" -max_total_time="$secs" -timeout=30 -dict="$top/tests/toml/toml.dict" \
  -artifact_prefix="$toml_work/artifacts/" -print_final_stats=1 "$toml_work/corpus" "$top/tests/toml/corpus"
