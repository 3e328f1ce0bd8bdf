#!/usr/bin/env bash
# Configures and builds veritysnap. Usage: scripts/build.sh [BUILD_DIR] [BUILD_TYPE]   (defaults: build Release)
# Build types: Release, Debug, Asan (AddressSanitizer + UndefinedBehaviorSanitizer), Tsan (ThreadSanitizer).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$top/build}
type=${2:-Release}
cmake -S "$top" -B "$dir" -DCMAKE_BUILD_TYPE="$type" >/dev/null
cmake --build "$dir" -j"$(nproc)"
