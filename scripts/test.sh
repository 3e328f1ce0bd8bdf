#!/usr/bin/env bash
# Every test: installs dependencies, builds the Release and the sanitizer builds (ASan+UBSan, TSan), runs ctest in each,
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

# Layers are converted on several threads at once (image roothash, the daemon's workers): a race there changes root
# hashes. libgrpc and abseil are not instrumented; tests/tsan.supp keeps their inner workings out of the report.
echo "== ThreadSanitizer build and tests"
"$top/scripts/build.sh" "$top/build-tsan" Tsan
(cd "$top/build-tsan" && TSAN_OPTIONS="halt_on_error=1 suppressions=$top/tests/tsan.supp" \
    ctest --output-on-failure -j"$jobs" -LE slow)

seconds=${VERITYSNAP_FUZZ_SECONDS:-60}
if [ "$seconds" -gt 0 ] && [ -x "$top/tests/fuzz/run.sh" ]; then
    echo "== fuzzing, ${seconds}s per target"
    "$top/tests/fuzz/run.sh" "$seconds"
fi
echo "== all tests passed"
