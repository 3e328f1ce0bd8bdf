#!/usr/bin/env bash
# Installs everything veritysnap needs to build, run and test, from Debian bookworm's packages.
# Usage (as root): scripts/install-deps.sh
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  build-essential cmake pkg-config git clang clang-format libclang-rt-14-dev
  libarchive-dev libisal-dev libzstd-dev libssl-dev libjansson-dev zlib1g-dev
  libcryptsetup-dev libdevmapper-dev libsqlite3-dev
  libgrpc-dev protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev protobuf-compiler
  erofs-utils cryptsetup-bin isal zstd gzip tar python3 hyperfine util-linux kmod time
  containerd runc golang-go golang-github-containerd-containerd-dev busybox-static
  libcurl4-openssl-dev docker-registry skopeo apache2-utils openssl
  qemu-system-x86 cpio xz-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
