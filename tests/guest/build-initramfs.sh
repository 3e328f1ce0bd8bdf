#!/usr/bin/env bash
# Builds what the child-VM test boots: for each requested Debian kernel, its vmlinuz and an initramfs (cpio newc, gzip)
# holding busybox-static, the kernel's modules for virtio block, device-mapper, dm-verity, EROFS and overlay with their
# dependencies (resolved with `modprobe --show-depends` against the unpacked package after `depmod`), /init and the
# statically linked guest program (guest_verity.c).
#
# Usage: build-initramfs.sh OUTDIR [SUITE...]        SUITE: stable (the release's kernel, 6.1 on bookworm) or
#                                                     backports (<codename>-backports, 6.12 on bookworm); default both.
# Output: OUTDIR/guest_verity, OUTDIR/<SUITE>/{vmlinuz,initramfs.gz,version}; OUTDIR/<SUITE>/ok marks a finished kernel.
# Packages come from apt-get only (`apt-get download`, cached in $VERITYSNAP_GUEST_CACHE or OUTDIR/cache). When the
# backports suite is not configured, it is added (as root) with the URIs and key of the machine's existing Debian entry.
# Exit status: 0 all requested kernels built; 3 some kernel could not be had (the others are built; see messages).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-initramfs.sh OUTDIR [stable|backports...]}
shift
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(stable backports)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${VERITYSNAP_GUEST_CACHE:-$out/cache}
mkdir -p "$cache"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
log() { echo "build-initramfs: $*" >&2; }

# --- the guest program --------------------------------------------------------------------------------------------
build_guest() {
    local src=$here/guest_verity.c bin=$out/guest_verity
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
        gcc -std=gnu17 -O2 -Wall -Wextra -Werror -static -o "$bin.tmp" "$src" -ljansson
        mv "$bin.tmp" "$bin"
    fi
}

# --- apt: the backports suite ---------------------------------------------------------------------------------------
have_suite() {  # is SUITE among apt's configured sources?
    grep -rqsE "(^|[[:space:]])$1([[:space:]]|\$)" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

enable_backports() {
    local suite=$codename-backports
    have_suite "$suite" && return 0
    if [ "$(id -u)" != 0 ]; then log "$suite is not configured and we are not root"; return 1; fi
    local uri="" signed=""
    # deb822 stanzas: the one listing our codename as a suite.
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        read -r uri signed < <(awk -v c="$codename" 'BEGIN{RS="";FS="\n"}
            { u="";s="";ok=0
              for(i=1;i<=NF;i++){ if($i ~ /^#/) continue
                if($i ~ /^URIs:/){u=$i; sub(/^URIs:[ \t]*/,"",u); sub(/[ \t].*/,"",u)}
                if($i ~ /^Signed-By:/){s=$i; sub(/^Signed-By:[ \t]*/,"",s)}
                if($i ~ /^Suites:/){n=split($i,a,/[ \t]+/); for(j=2;j<=n;j++) if(a[j]==c) ok=1} }
              if(ok && u!=""){print u, (s==""?"-":s); exit} }' "$f") || true
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ] && [ -e /etc/apt/sources.list ]; then  # one-line style: deb [opts] URI codename components
        read -r uri signed < <(awk -v c="$codename" '$1=="deb"{u="";for(i=2;i<=NF;i++){if($i ~ /^\[/||$i ~ /\]$/||$i ~ /=/)continue;
            if(u==""){u=$i;continue} if($i==c){print u, "-"; exit} break}}' /etc/apt/sources.list) || true
    fi
    if [ -z "$uri" ]; then log "no Debian source entry for $codename to derive $suite from"; return 1; fi
    local dst=/etc/apt/sources.list.d/veritysnap-$suite.sources
    log "adding $suite from the existing $codename entry ($dst)"
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: $suite"
        echo "Components: main"
        [ "$signed" = "-" ] || echo "Signed-By: $signed"
    } > "$dst"
    apt-get update -qq || { log "apt-get update failed"; return 1; }
}

# --- kernel packages ------------------------------------------------------------------------------------------------
# Prints the name=version of the real image package behind the linux-image-amd64 metapackage (for a target release).
image_package() {
    local target=$1 meta_ver deps
    if [ -n "$target" ]; then
        meta_ver=$(apt-cache policy linux-image-amd64 | awk -v t="$target" '
            /^ +(\*\*\* )?[0-9]/ && NF<=3 {v=$1; if(v=="***") v=$2; next} $0 ~ " "t"/" {print v; exit}')
    else
        meta_ver=$(apt-cache policy linux-image-amd64 | awk '/Candidate:/{print $2}')
    fi
    [ -n "$meta_ver" ] && [ "$meta_ver" != "(none)" ] || return 1
    deps=$(apt-cache show "linux-image-amd64=$meta_ver" | awk -F': ' '/^Depends:/{print $2; exit}')
    # Depends: linux-image-6.12.x+bpo-amd64 (= ver) | linux-image-...-unsigned (= ver)   -> the first alternative
    echo "$deps" | tr ',' '\n' | head -1 | sed -E 's/\|.*//; s/^ +//; s/ +$//' |
        sed -E 's/^([^ ]+) \(= ([^)]+)\)$/\1=\2/'
}

fetch_kernel() {  # SUITE -> unpacks into $out/SUITE/root, writes $out/SUITE/version
    local suite=$1 dir=$out/$1 target="" pkg deb
    case $suite in
        stable) target="" ;;
        backports) enable_backports || return 1; target=$codename-backports ;;
        *) log "unknown suite $suite"; return 1 ;;
    esac
    if [ ! -d /var/lib/apt/lists ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -i packages)" ]; then
        apt-get update -qq || true
    fi
    pkg=$(image_package "$target") || { log "no linux-image-amd64 in ${target:-the default suites}"; return 1; }
    log "$suite: $pkg"
    local name=${pkg%%=*} version=${pkg#*=}
    deb=$cache/${name}_${version//:/%3a}_amd64.deb
    if [ ! -f "$deb" ]; then
        (cd "$cache" && apt-get download -qq -o APT::Sandbox::User=root "$pkg") || { log "apt-get download $pkg failed"; return 1; }
        [ -f "$deb" ] || deb=$(ls "$cache/${name}_"*.deb | head -1)
    fi
    if [ ! -f "$dir/unpacked.stamp" ] || [ "$(cat "$dir/unpacked.stamp")" != "$(basename "$deb")" ]; then
        rm -rf "$dir/root"
        mkdir -p "$dir/root"
        dpkg-deb -x "$deb" "$dir/root"
        basename "$deb" > "$dir/unpacked.stamp"
    fi
    local ver
    ver=$(ls "$dir/root/lib/modules/" | head -1)
    echo "$ver" > "$dir/version"
    cp "$dir/root/boot/vmlinuz-$ver" "$dir/vmlinuz"
}

# --- initramfs ------------------------------------------------------------------------------------------------------
# Modules (and aliases) the guest needs; dependencies come from modprobe --show-depends.
wanted_modules=(virtio_pci virtio_blk dm-mod dm-verity erofs overlay crypto-sha256 crypto-crc32c)

build_initramfs() {
    local suite=$1 dir=$out/$1 ver root stage key
    ver=$(cat "$dir/version")
    root=$dir/root
    # rebuilt only when the kernel package, the guest program, /init or this script changed
    key=$(cat "$dir/unpacked.stamp" "$out/guest_verity" "$here/init" "$0" | sha256sum | cut -d' ' -f1)
    if [ -f "$dir/initramfs.gz" ] && [ "$(cat "$dir/initramfs.stamp" 2>/dev/null)" = "$key" ]; then
        log "$suite: kernel $ver, initramfs up to date"
        return 0
    fi
    depmod -b "$root" "$ver"
    stage=$dir/stage
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,mnt,lib/modules}
    cp /bin/busybox "$stage/bin/busybox"
    cp "$out/guest_verity" "$stage/bin/guest_verity"
    : > "$stage/lib/modules/load.list"
    local m line path name seen=" "
    for m in "${wanted_modules[@]}"; do
        local deps
        if ! deps=$(modprobe --show-depends -d "$root" -S "$ver" "$m" 2>&1); then
            log "$suite: modprobe --show-depends $m: $deps"; return 1
        fi
        while read -r line; do
            case $line in
                builtin*) continue ;;
                insmod*) path=$(echo "$line" | awk '{print $2}') ;;
                *) continue ;;
            esac
            path=$root${path#"$root"}
            name=$(basename "$path")
            name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
            case $seen in *" $name "*) continue ;; esac
            seen="$seen$name "
            case $path in
                *.xz) xz -dc "$path" > "$stage/lib/modules/$name" ;;
                *.zst) zstd -qdc "$path" > "$stage/lib/modules/$name" ;;
                *.gz) gzip -dc "$path" > "$stage/lib/modules/$name" ;;
                *) cp "$path" "$stage/lib/modules/$name" ;;
            esac
            echo "$name" >> "$stage/lib/modules/load.list"
        done <<< "$deps"
    done
    install -m 0755 "$here/init" "$stage/init"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner 0:0 | gzip -6n) \
        > "$dir/initramfs.gz.tmp"
    mv "$dir/initramfs.gz.tmp" "$dir/initramfs.gz"
    echo "$key" > "$dir/initramfs.stamp"
    log "$suite: kernel $ver, modules: $(tr '\n' ' ' < "$stage/lib/modules/load.list")"
}

build_guest
status=0
for s in "${suites[@]}"; do
    rm -f "$out/$s/ok"
    if fetch_kernel "$s" && build_initramfs "$s"; then
        touch "$out/$s/ok"
    else
        log "$s: kernel not available"
        status=3
    fi
done
exit $status
