#!/usr/bin/env bash
# Every test: installs dependencies, builds the Release and the sanitizer (ASan+UBSan) builds, runs ctest in both,
# and runs each fuzz target briefly. Usage (as root): scripts/test.sh
# Environment: VERITYSNAP_FUZZ_SECONDS (default 60 per target; 0 skips fuzzing),
#              VERITYSNAP_TARDEV_VECTORS (tardev test vectors; default ../shared/vectors/tardev next to the repo).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
jobs=$(nproc)

echo "== Release build and tests"
"$top/scripts/build.sh" "$top/build" Release
(cd "$top/build" && ctest --output-on-failure -j"$jobs")

echo "== ASan+UBSan build and tests"
"$top/scripts/build.sh" "$top/build-asan" Asan
(cd "$top/build-asan" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j"$jobs" -LE slow)

seconds=${VERITYSNAP_FUZZ_SECONDS:-60}
if [ "$seconds" -gt 0 ] && [ -x "$top/tests/fuzz/run.sh" ]; then
    echo "== fuzzing, ${seconds}s per target"
    "$top/tests/fuzz/run.sh" "$seconds"
fi
echo "== all tests passed"
