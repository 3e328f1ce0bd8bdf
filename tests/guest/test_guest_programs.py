#!/usr/bin/env python3
"""Child-VM test of the product's own device-mapper code: dynamically linked test programs run in a guest kernel
that has device-mapper, dm-verity, loop, EROFS and overlay.

This machine's kernel (and most CI containers') has no device-mapper, so verity/verity_device.c (libcryptsetup
activation, libdevmapper listing) and the dm-verity path of snapshotter/host_mount.c only run here. For each
Debian kernel (the release's and backports', built by build-initramfs.sh in the work directory shared with
guest_dmverity), this script appends to that kernel's initramfs a second cpio archive holding: the programs,
every shared library `ldd` names for them (and the dynamic loader) at the same path, the loop module with its
dependencies (resolved with `modprobe --show-depends` against the unpacked kernel package) and init-programs as
/init. It boots both kernels at once under `qemu-system-x86_64 -accel tcg` and judges the serial console:
each program must exit 0 (77, "skipped", is a failure here: the guest has everything) and print the lines that
prove its device-mapper branch ran (EXPECT below).

Usage: test_guest_programs.py --work DIR --program BIN [--program BIN...] [--kernels stable,backports]
Exit: 0 pass, 1 fail, 77 skipped (qemu-system-x86_64 missing or unable to run TCG).
"""
import argparse
import gzip
import json
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import test_guest as tg  # noqa: E402
from vstest import SKIP, check, failures, log  # noqa: E402

# Lines (regular expressions) each program must print in the guest: proof that the device-mapper branch ran, not
# the -ENODEV one.
EXPECT = {
    "test_verity_device": [
        r"^ok   activated /dev/mapper/vs-test-verity-device \(superblock, \d+ data blocks\): the device is the file's "
        r"data part, its EROFS holds big.bin and small.txt$",
        r"^ok   without superblock: ",
        r"^ok   flipped byte in data block \d+: that block reads EIO, the other \d+ verify; on the EROFS big.bin "
        r"reads EIO, small.txt reads$",
        r"^ok   wrong root hash: ",
        r"^ok   superblock not matching the layout: refused",
        r"^ok   list vs-test-verity-a: \[vs-test-verity-a[12] vs-test-verity-a[12]\]",
        r"^ok   remove vs-test-verity-a: removed a1 and a2, left \[vs-test-verity-b1\]",
        r"^ok   activated, read back, listed, removed \(device-mapper in this kernel\)$",
    ],
    "test_snapshotter_snapshot_model": [r"^ok$"],
    "guest_host_verity": [r"^ok   .*/dev/mapper/", r"^ok   all host dialect checks passed$"],
}
FORBID = [r"device-mapper is not available", r"^SKIP"]


def ldd_closure(programs):
    """Every file the dynamic loader maps for the programs: {path as ldd names it}."""
    paths = set()
    for p in programs:
        r = subprocess.run(["ldd", p], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ldd {p} failed: {r.stdout}{r.stderr}")
        for line in r.stdout.splitlines():
            m = re.match(r"\s*(\S+) => (/\S+) \(0x", line) or re.match(r"\s*(/\S+) \(0x", line)
            if m:
                paths.add(m.group(m.lastindex))
            elif "not found" in line:
                raise SystemExit(f"ldd {p}: {line.strip()}")
    return paths


def extra_modules(kdir, base):
    """loop and its dependencies for the kernel unpacked in kdir, minus what the base initramfs loads."""
    ver = open(os.path.join(kdir, "version")).read().strip()
    root = os.path.join(kdir, "root")
    r = subprocess.run(["modprobe", "--show-depends", "-d", root, "-S", ver, "loop"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"modprobe --show-depends loop ({ver}): {r.stderr}")
    out = []
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == "insmod":
            path = f[1]
            name = os.path.basename(path)
            for ext in (".xz", ".zst", ".gz"):
                if name.endswith(ext):
                    name = name[: -len(ext)]
            if name not in base and name not in [n for n, _ in out]:
                out.append((name, path))
    return out   # builtin loop: nothing to load


def decompress_module(path):
    if path.endswith(".xz"):
        return subprocess.run(["xz", "-dc", path], capture_output=True, check=True).stdout
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-qdc", path], capture_output=True, check=True).stdout
    if path.endswith(".gz"):
        return gzip.decompress(open(path, "rb").read())
    return open(path, "rb").read()


def build_initramfs(work, kernel, programs, libs):
    """WORK/KERNEL/initramfs-programs.gz: the kernel's initramfs.gz followed by a gzip cpio with the programs."""
    kdir = os.path.join(work, kernel)
    base = set(open(os.path.join(kdir, "stage", "lib", "modules", "load.list")).read().split())
    mods = extra_modules(kdir, base)
    key = hashlib.sha256()
    for f in [os.path.join(kdir, "initramfs.gz"), os.path.join(HERE, "init-programs"), os.path.abspath(__file__),
              *programs, *sorted(libs), *[p for _, p in mods]]:
        key.update(f.encode() + b"\0")
        with open(f, "rb") as fh:
            key.update(hashlib.sha256(fh.read()).digest())
    out = os.path.join(kdir, "initramfs-programs.gz")
    stamp = out + ".stamp"
    if os.path.exists(out) and os.path.exists(stamp) and open(stamp).read() == key.hexdigest():
        return out
    stage = os.path.join(kdir, "stage-programs")
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("programs", "lib/modules", "run"):
        os.makedirs(os.path.join(stage, d))
    names = []
    for p in programs:
        name = os.path.basename(p)
        dst = os.path.join(stage, "programs", name)
        # without debug info the archive is smaller and unpacks faster under TCG
        if subprocess.run(["strip", "--strip-debug", "-o", dst, p], capture_output=True).returncode != 0:
            shutil.copyfile(p, dst)
        os.chmod(dst, 0o755)
        names.append(name)
    with open(os.path.join(stage, "programs", "list"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    for lib in sorted(libs):
        dst = os.path.join(stage, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.realpath(lib), dst)
        os.chmod(dst, 0o755)
    with open(os.path.join(stage, "lib", "modules", "load-extra.list"), "w") as f:
        for name, path in mods:
            with open(os.path.join(stage, "lib", "modules", name), "wb") as m:
                m.write(decompress_module(path))
            f.write(name + "\n")
    shutil.copyfile(os.path.join(HERE, "init-programs"), os.path.join(stage, "init"))
    os.chmod(os.path.join(stage, "init"), 0o755)
    files = subprocess.run("find . -mindepth 1 | LC_ALL=C sort", shell=True, cwd=stage, capture_output=True,
                           check=True).stdout
    cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0"], input=files, cwd=stage,
                          capture_output=True, check=True).stdout
    # concatenated archives: the kernel unpacks them in order, later files (here /init) replace earlier ones
    with open(out + ".tmp", "wb") as f:
        f.write(open(os.path.join(kdir, "initramfs.gz"), "rb").read())
        f.write(gzip.compress(cpio, compresslevel=6, mtime=0))
    os.replace(out + ".tmp", out)
    with open(stamp, "w") as f:
        f.write(key.hexdigest())
    log(f"{kernel}: initramfs-programs.gz {os.path.getsize(out) >> 20} MiB: {' '.join(names)}, "
        f"{len(libs)} libraries, extra modules: {' '.join(n for n, _ in mods) or '(loop built in)'}")
    return out


def boot(kdir, initrd, logpath, timeout):
    cmd = ["qemu-system-x86_64", "-accel", os.environ.get("VERITYSNAP_GUEST_ACCEL", "tcg"), "-cpu", "max",
           "-m", "1024", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", os.path.join(kdir, "vmlinuz"), "-initrd", initrd,
           "-append", "console=ttyS0 quiet loglevel=1 panic=-1"]
    logf = open(logpath, "wb")
    start = time.monotonic()
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT), logf, start, timeout


def parse_serial(logpath):
    """(records, {program: [output lines]}) from the console."""
    recs, out = [], {}
    with open(logpath, "rb") as f:
        for raw in f.read().decode("utf-8", "replace").splitlines():
            raw = raw.rstrip("\r")
            m = re.search(r"VSG (\{.*\})\s*$", raw)
            if m:
                try:
                    recs.append(json.loads(m.group(1)))
                except json.JSONDecodeError:
                    recs.append({"t": "garbled", "line": raw})
                continue
            m = re.search(r"VSO ([\w.-]+): ?(.*)$", raw)
            if m:
                out.setdefault(m.group(1), []).append(m.group(2))
    return recs, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--program", action="append", required=True)
    ap.add_argument("--kernels", default="stable,backports")
    ap.add_argument("--timeout", type=int, default=400)
    a = ap.parse_args()
    t0 = time.monotonic()
    why = tg.qemu_skip_reason()
    if why:
        log("SKIP: " + why)
        return SKIP
    programs = [os.path.abspath(p) for p in a.program]
    for p in programs:
        if not os.access(p, os.X_OK):
            log(f"FAIL: {p} is not an executable")
            return 1
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    kernels = [k for k in a.kernels.split(",") if k]

    b = subprocess.run(["bash", os.path.join(HERE, "build-initramfs.sh"), work, *kernels])
    kernels = tg.built_kernels(work, kernels, b.returncode)
    if not kernels:
        return 1
    libs = ldd_closure(programs)
    initrds = {k: build_initramfs(work, k, programs, libs) for k in kernels}
    t_build = time.monotonic() - t0

    runs = {k: boot(os.path.join(work, k), initrds[k], os.path.join(work, f"serial-programs-{k}.log"), a.timeout)
            for k in kernels}
    times = tg.wait_guests(runs)

    for k in kernels:
        logpath = os.path.join(work, f"serial-programs-{k}.log")
        recs, out = parse_serial(logpath)
        bootrec = [r for r in recs if r.get("t") == "boot"]
        log(f"== {k}: kernel {bootrec[0]['kernel'] if bootrec else '?'}, boot+run {times[k]:.1f}s "
            f"(guest uptime at start {bootrec[0]['uptime'] if bootrec else '?'}s), serial log {logpath}")
        for r in recs:
            if r.get("t") in ("insmod", "garbled"):
                check(False, f"{k}: {r}")
        if not tg.finished(k, recs, logpath, "the guest"):
            continue
        results = {r["program"]: r for r in recs if r.get("t") == "result"}
        for p in programs:
            name = os.path.basename(p)
            res = results.get(name)
            lines = out.get(name, [])
            took = f"{float(res['end']) - float(res['start']):.1f}s" if res else "?"
            ok = check(res is not None and res["status"] == 0,
                       f"{k}/{name}: exit status {res['status'] if res else 'missing'} (0 expected)")
            for pat in EXPECT.get(name, []):
                ok &= check(any(re.search(pat, line) for line in lines), f"{k}/{name}: no line matches {pat!r}")
            for pat in FORBID:
                bad = [line for line in lines if re.search(pat, line)]
                ok &= check(not bad, f"{k}/{name}: {bad}")
            if ok:
                log(f"  ok {k}/{name}: exit 0 in {took}")
            for line in lines:
                log(f"     {k}/{name}| {line}")
        for line in out.get("kmsg", []):
            log(f"     {k} kernel| {line}")

    log(f"timing: initramfs {t_build:.1f}s, boots " + ", ".join(f"{k} {t:.1f}s" for k, t in times.items()) +
        f", total {time.monotonic() - t0:.1f}s")
    if failures:
        log(f"{len(failures)} check(s) failed")
        return 1
    log("all guest program checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
