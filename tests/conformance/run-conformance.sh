#!/bin/bash
# containerd 1.6's snapshotter test suite (snapshots/testsuite), one case per snapshotter daemon, through containerd's
# proxy client (snapshots/proxy) over a unix socket: the path containerd itself uses for [proxy_plugins].
#
# For each case: a fresh temp dir with the daemon's root and socket, start the daemon, run the one case
# (-test.run '^TestProxy$/^CASE$'), remove every snapshot the case left through the same client (TestDrain: children
# first, then Cleanup) and check that no mounts, loop devices or files (other than the store) are left under the temp
# dir, stop the daemon with SIGTERM (it must exit 0 within 30 s), and check again. Per-case results at the end.
#
# Usage:
#   run-conformance.sh [options]
#     --veritysnapd PATH     the daemon under test (default: $VERITYSNAPD); run as
#                            PATH --root DIR --address SOCK --verity off
#     --overlay              test containerd's own overlayfs snapshotter served by overlayserver (validates the harness)
#     --build-dir DIR        where the Go programs are built (GOPATH mode, offline, GOCACHE inside; default:
#                            $VERITYSNAP_CONFORMANCE_BUILD or /tmp/veritysnap-conformance-build)
#     --cases "A B ..."      only these cases (default: every case of the 1.6 suite)
#     --keep DIR             keep per-case logs (test output, daemon log) in DIR
#     --timeout DURATION     per-case go test timeout (default 15m)
#     --no-drain             do not remove the case's snapshots before stopping the daemon (then the leftover check
#                            also sees what the daemon keeps mounted across a stop for snapshots that still exist)
# Exit: 0 every case passed (Rename skips itself in 1.6 and counts as expected), 1 a case failed, 77 cannot run here
# (not root, no go, no containerd source, no daemon).
set -u

here=$(cd "$(dirname "$0")" && pwd)
daemon=${VERITYSNAPD:-}
mode=veritysnapd
build_dir=${VERITYSNAP_CONFORMANCE_BUILD:-/tmp/veritysnap-conformance-build}
cases=""
keep=""
timeout=15m
drain=1

while [ $# -gt 0 ]; do
    case "$1" in
        --veritysnapd) daemon=$2; mode=veritysnapd; shift 2 ;;
        --overlay) mode=overlay; shift ;;
        --build-dir) build_dir=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --no-drain) drain=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "run-conformance: unknown argument $1" >&2; exit 2 ;;
    esac
done

skip() { echo "SKIP: $*"; exit 77; }

# Every case of containerd 1.6.20's SnapshotterSuite, in its order (names as spelled there, typos included).
all_cases="Basic StatActive StatComitted TransitivityTest PreareViewFailingtest Update Remove Walk LayerFileupdate
RemoveDirectoryInLowerLayer Chown DirectoryPermissionOnCommit RemoveIntermediateSnapshot DeletedFilesInChildSnapshot
MoveFileFromLowerLayer Rename ViewReadonly StatInWalk CloseTwice RootPermission 128LayersMount"
# Cases that skip themselves in 1.6 (t.Skip at the top of checkRename).
expected_skips=" Rename "

[ "$(id -u)" = 0 ] || skip "the suite mounts overlays: needs root"
command -v go >/dev/null || skip "go is not installed (Debian: golang-go)"
gocode=/usr/share/gocode
suite_src=$gocode/src/github.com/containerd/containerd/snapshots/testsuite/testsuite.go
[ -f "$suite_src" ] || skip "containerd's test suite source is missing (Debian: golang-github-containerd-containerd-dev)"
if [ "$mode" = veritysnapd ]; then
    [ -n "$daemon" ] || skip "no daemon given (--veritysnapd PATH or VERITYSNAPD=PATH)"
    [ -x "$daemon" ] || skip "daemon $daemon does not exist (yet)"
fi

# The suite's own list must match ours: a case we do not run would be a silent gap.
src_cases=$(sed -n 's/^[[:space:]]*t\.Run("\([^"]*\)", makeTest(.*/\1/p' "$suite_src" | tr '\n' ' ')
if [ "$(echo $src_cases)" != "$(echo $all_cases)" ]; then
    echo "run-conformance: the installed suite's cases differ from this runner's list" >&2
    echo "  suite:  $src_cases" >&2
    echo "  runner: $(echo $all_cases)" >&2
    exit 1
fi
[ -n "$cases" ] || cases=$all_cases

# Build the test binary and the overlay server (GOPATH mode, offline, from Debian's packaged sources).
mkdir -p "$build_dir/gopath" "$build_dir/cache" "$build_dir/tmp"
export GO111MODULE=off GOPATH="$build_dir/gopath:$gocode" GOCACHE="$build_dir/cache" GOFLAGS= GOPROXY=off
export GOTMPDIR="$build_dir/tmp"
( cd "$here" && go test -c -o "$build_dir/conformance.test" . ) || { echo "run-conformance: building the suite failed" >&2; exit 1; }
if [ "$mode" = overlay ]; then
    ( cd "$here" && go build -o "$build_dir/overlayserver" ./overlayserver ) ||
        { echo "run-conformance: building overlayserver failed" >&2; exit 1; }
    daemon=$build_dir/overlayserver
fi
unset GOTMPDIR

[ -z "$keep" ] || mkdir -p "$keep"

# Under the temp dir: mounts still there, and loop devices backed by files there.
leftovers() { # DIR
    local dir=$1
    awk -v d="$dir" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print "mount " m }' /proc/self/mountinfo
    if command -v losetup >/dev/null; then
        losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v d="$dir" 'index($2, d "/") == 1 { print "loop " $1 " " $2 }'
    fi
}
cleanup_dir() { # DIR: best effort, after leftovers were reported
    local dir=$1 m
    for m in $(awk -v d="$dir" '{ m = $5; if (index(m, d "/") == 1) print m }' /proc/self/mountinfo | sort -r); do
        umount -l "$m" 2>/dev/null
    done
    if command -v losetup >/dev/null; then
        losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v d="$dir" 'index($2, d "/") == 1 { print $1 }' |
            while read -r l; do losetup -d "$l" 2>/dev/null; done
    fi
    rm -rf "$dir"
}

daemon_pid=""
current_dir=""
on_exit() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    [ -z "$current_dir" ] || cleanup_dir "$current_dir"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

declare -A result reason
failed=0
echo "run-conformance: $mode ($daemon)"
for c in $cases; do
    dir=$(mktemp -d /tmp/vsconf.XXXXXX)   # short: sockets and 128 lowerdirs must fit
    current_dir=$dir
    mkdir -p "$dir/root" "$dir/suite"
    sock=$dir/s.sock
    if [ "$mode" = overlay ]; then
        "$daemon" --root "$dir/root" --address "$sock" >"$dir/daemon.log" 2>&1 &
    else
        "$daemon" --root "$dir/root" --address "$sock" --verity off >"$dir/daemon.log" 2>&1 &
    fi
    daemon_pid=$!
    for _ in $(seq 1 300); do
        [ -S "$sock" ] && break
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    why=""
    suite_st=none
    if ! [ -S "$sock" ]; then
        why="daemon did not create its socket: $(tail -n 5 "$dir/daemon.log" | tr '\n' ' ')"
        st=FAIL
    else
        # The suite makes its own temp dirs (os.MkdirTemp("")) and mounts under them: keep them inside $dir.
        TMPDIR=$dir/suite VERITYSNAP_SOCKET=$sock "$build_dir/conformance.test" -test.run "^TestProxy\$/^$c\$" \
            -test.v -test.timeout "$timeout" >"$dir/test.log" 2>&1
        rc=$?
        if grep -q -- "--- PASS: TestProxy/$c " "$dir/test.log"; then st=PASS
        elif grep -q -- "--- SKIP: TestProxy/$c " "$dir/test.log"; then st=SKIP
        elif grep -q -- "--- FAIL: TestProxy/$c " "$dir/test.log"; then st=FAIL
        else st=FAIL; why="case did not run (go test exit $rc)"
        fi
        [ "$st" = PASS ] && [ $rc -ne 0 ] && { st=FAIL; why="go test exit $rc"; }
        suite_st=$st
    fi
    # Drain: remove every snapshot the case left (children first) and Cleanup, through the same proxy client; then
    # nothing may be left: no mounts, no loop devices, no files but the store's.
    if [ "$drain" = 1 ] && kill -0 "$daemon_pid" 2>/dev/null && [ -S "$sock" ]; then
        TMPDIR=$dir/suite VERITYSNAP_SOCKET=$sock "$build_dir/conformance.test" -test.run '^TestDrain$' -test.v \
            -test.timeout 5m >"$dir/drain.log" 2>&1
        if ! grep -q -- "--- PASS: TestDrain" "$dir/drain.log"; then
            st=FAIL; why="$why; removing the case's snapshots failed: $(grep -m1 -E '[a-z_]+\.go:[0-9]+: ' "$dir/drain.log" | sed 's/^[[:space:]]*//')"
        fi
        left=$(leftovers "$dir")
        [ -z "$left" ] || { st=FAIL; why="$why; after removing every snapshot and Cleanup: $(echo "$left" | head -n 5 | tr '\n' ';')"; }
        files=$(find "$dir/root" -mindepth 1 ! -type d ! -name 'state.db*' ! -name 'metadata.db' 2>/dev/null | head -n 5)
        [ -z "$files" ] || { st=FAIL; why="$why; files left after removing every snapshot: $(echo "$files" | tr '\n' ' ')"; }
    fi
    # Stop the daemon: SIGTERM, must exit 0 within 30 s.
    if kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid"
        for _ in $(seq 1 300); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$daemon_pid" 2>/dev/null; then
            kill -KILL "$daemon_pid"; wait "$daemon_pid" 2>/dev/null
            st=FAIL; why="$why; daemon ignored SIGTERM for 30 s"
        else
            wait "$daemon_pid"; drc=$?
            [ $drc -eq 0 ] || { st=FAIL; why="$why; daemon exited $drc on SIGTERM"; }
        fi
    else
        wait "$daemon_pid"; drc=$?
        st=FAIL; why="$why; daemon died during the case (exit $drc)"
    fi
    daemon_pid=""
    left=$(leftovers "$dir")
    if [ -n "$left" ]; then
        st=FAIL; why="$why; left behind after SIGTERM: $(echo "$left" | head -n 5 | tr '\n' ';')"
    fi
    if [ "$st" = SKIP ] && [ "${expected_skips#* $c }" = "$expected_skips" ]; then
        st=FAIL; why="$why; skipped: $(grep -m1 -A1 -- "--- SKIP" "$dir/test.log" | tail -n 1 | sed 's/^ *//')"
    fi
    if [ "$st" = FAIL ]; then
        failed=1
        if [ -z "$why" ] || [ "${why#;}" != "$why" ]; then
            # The first assertion the suite printed (file:line: message), then the rest.
            if [ -z "$why" ] || grep -q -- "--- FAIL: TestProxy/$c " "$dir/test.log"; then
                # The first message the suite printed (file:line: message), without the unmount chatter.
                first=$(grep -E '^[[:space:]]+[a-z_0-9]+\.go:[0-9]+: ' "$dir/test.log" | grep -v 'helpers_unix.go:[0-9]*: unmount ' |
                    head -n 1 | sed 's/^[[:space:]]*//')
                why="${first:-see log}${why}"
            else
                why="suite case: $suite_st${why}"
            fi
        fi
        why=${why#; }
        echo "---- $c: test output (last 40 lines) ----"; tail -n 40 "$dir/test.log" 2>/dev/null
        echo "---- $c: daemon log (last 20 lines) ----"; tail -n 20 "$dir/daemon.log"
    fi
    result[$c]=$st; reason[$c]=$why
    printf '%-28s %s%s\n' "$c" "$st" "${why:+  ($why)}"
    if [ -n "$keep" ]; then
        cp "$dir/test.log" "$keep/$c.test.log" 2>/dev/null; cp "$dir/daemon.log" "$keep/$c.daemon.log"
    fi
    cleanup_dir "$dir"
    current_dir=""
done

echo
echo "==== summary ($mode) ===="
npass=0; nfail=0; nskip=0
for c in $cases; do
    printf '%-28s %s\n' "$c" "${result[$c]}"
    case ${result[$c]} in PASS) npass=$((npass+1));; SKIP) nskip=$((nskip+1));; *) nfail=$((nfail+1));; esac
done
echo "passed $npass, skipped $nskip (expected: Rename), failed $nfail"
exit $failed
