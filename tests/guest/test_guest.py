#!/usr/bin/env python3
"""Child-VM test: dm-verity activation, EROFS and overlay mounts of veritysnap's layer files in a real guest kernel.

Builds three OCI layers with python's tarfile (files, dirs, symlinks, hardlinks, a fifo, whiteouts and an opaque
directory across layers), converts them with `veritysnap convert` (erofs with the verity superblock, erofs
--no-superblock, tarfs), tampers copies, and boots each Debian kernel (the release's and backports') under
`qemu-system-x86_64 -accel tcg` with every layer file attached read-only as a virtio disk. The guest program
(guest_verity.c) activates dm-verity with raw DM ioctls, mounts, overlays and prints what it sees; this script
compares that with the expectation computed from the tar semantics alone.

Checks, per kernel (one boot carries all of them):
  erofs / erofs-nosb   the overlay of the three layers equals the expected root filesystem (paths, types, modes,
                       owners, mtimes, sizes, sha256, symlink targets, hardlinks, nlink)
  erofs-flip           a byte flipped in a data block of one file: that file reads EIO, every other entry is intact
  erofs-badroot        a wrong root hash: activation or the mount fails
  erofs-badtree        a corrupted hash tree: activation or the mount fails
  tarfs                each tarfs layer through the table the tardev agent builds from the trailer: the whole verity
                       device and every file's byte range hash as on the host
  tarfs-flip           a flipped data byte: that file's range reads EIO, the others read, the full read fails
  tarfs-badtrailer*    a corrupted trailer (data_blocks off by one, absurd): activation or every read fails
  tarfs-badroot        a wrong root hash: activation or the reads fail

Usage: test_guest.py --veritysnap BIN --work DIR [--kernels stable,backports] [--keep]
Exit: 0 pass, 1 fail, 77 skipped (qemu-system-x86_64 missing or unable to start).
"""
import argparse
import base64
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import mounts as dialect_mounts  # noqa: E402
from vstest import SKIP, check, failures, log  # noqa: E402,F401


# ---- layers --------------------------------------------------------------------------------------------------------
def rnd_bytes(seed, n):
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def add(tf, name, kind="f", data=b"", mode=0o644, uid=0, gid=0, mtime=1700000000, target=None):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
    if kind == "f":
        ti.type, ti.size = tarfile.REGTYPE, len(data)
        tf.addfile(ti, io.BytesIO(data))
        return
    ti.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE, "p": tarfile.FIFOTYPE}[kind]
    if target is not None:
        ti.linkname = target
    tf.addfile(ti)


BIG0 = rnd_bytes(1, 3 * 4096 + 100)   # the file whose data block the erofs-flip check corrupts (layer 0)
BIG2 = rnd_bytes(2, 2 * 4096 + 7)


def make_layers(d):
    """Returns the paths of three tars, bottom first."""
    # layer 0: a base system
    l0 = [
        ("etc", "d", b"", 0o755), ("etc/passwd", "f", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "f", b"root:x:0:\n", 0o644),
        ("bin", "d", b"", 0o755), ("bin/sh", "f", b"#!fake shell\n" * 50, 0o755),
        ("usr", "d", b"", 0o755), ("usr/lib", "d", b"", 0o755),
        ("usr/lib/big.bin", "f", BIG0, 0o644),
        ("usr/lib/libfoo.so.1", "f", b"\x7fELF" + bytes(range(256)) * 20, 0o755),
        ("usr/lib/libfoo.so", "l", "libfoo.so.1", 0o777),
        ("usr/lib/empty", "f", b"", 0o600),
        ("usr/lib/exact4k", "f", rnd_bytes(3, 4096), 0o644),
        ("usr/bin", "d", b"", 0o755), ("usr/bin/tool", "f", b"tool binary\n" * 300, 0o4755),
        ("usr/bin/tool-alias", "h", "usr/bin/tool", 0),
        ("usr/share", "d", b"", 0o755), ("usr/share/doc", "d", b"", 0o755),
        ("usr/share/doc/readme", "f", b"docs\n", 0o644),
        ("opt", "d", b"", 0o755), ("opt/old", "d", b"", 0o750), ("opt/old/x", "f", b"x\n", 0o644),
        ("opt/old/y", "f", b"y\n", 0o644),
        ("var", "d", b"", 0o755), ("var/gone", "f", b"will be whited out\n", 0o644),
        ("var/keep", "f", b"kept\n", 0o640, 1000, 1000, 1650000000),
        ("run", "d", b"", 0o755), ("run/fifo", "p", b"", 0o620),
        ("home", "d", b"", 0o755), ("home/donn\u00e9es.txt", "f", "caf\u00e9\n".encode(), 0o644, 1000, 100),
    ]
    # layer 1: whiteouts, an opaque directory, replacements
    l1 = [
        ("etc", "d", b"", 0o755), ("etc/passwd", "f", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n", 0o644),
        ("var", "d", b"", 0o755), ("var/.wh.gone", "f", b"", 0o644),
        ("opt", "d", b"", 0o755), ("opt/old", "d", b"", 0o700, 0, 0, 1710000000),
        ("opt/old/.wh..wh..opq", "f", b"", 0o644), ("opt/old/z", "f", b"z\n", 0o644),
        ("usr", "d", b"", 0o755), ("usr/share", "d", b"", 0o755),
        ("usr/share/doc", "l", "/usr/local/doc", 0o777),          # a symlink over a directory
        ("usr/bin", "d", b"", 0o755), ("usr/bin/.wh.tool-alias", "f", b"", 0o644),
        ("srv", "d", b"", 0o755), ("srv/data", "d", b"", 0o755), ("srv/data/a", "f", b"A" * 5000, 0o644),
        ("srv/data/a-link", "h", "srv/data/a", 0), ("srv/data/b-link", "h", "srv/data/a", 0),
    ]
    # layer 2: a deleted directory, attributes of a directory changed, new files
    l2 = [
        ("etc", "d", b"", 0o700, 0, 0, 1720000000), ("etc/hostname", "f", b"guest\n", 0o644),
        (".wh.bin", "f", b"", 0o644),
        ("usr", "d", b"", 0o755), ("usr/lib", "d", b"", 0o755), ("usr/lib/big2.bin", "f", BIG2, 0o644),
        ("usr/lib/libfoo.so.1", "f", b"\x7fELF new version\n" * 100, 0o755),
        ("usr/local", "d", b"", 0o755),
        ("usr/local/doc", "d", b"", 0o755), ("usr/local/doc/new", "f", b"new doc\n", 0o644),
    ]
    specs = [l0, l1, l2]
    paths = []
    for i, spec in enumerate(specs):
        p = os.path.join(d, f"layer{i}.tar")
        with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as tf:
            for e in spec:
                name, kind, data, mode = e[:4]
                uid, gid, mtime = (e[4], e[5], e[6]) if len(e) > 6 else ((e[4], e[5], 1700000000) if len(e) > 4
                                                                          else (0, 0, 1700000000))
                if kind in ("l", "h"):
                    add(tf, name, kind, mode=mode, uid=uid, gid=gid, mtime=mtime, target=data)
                else:
                    add(tf, name, kind, data, mode, uid, gid, mtime)
        paths.append(p)
    return paths


# ---- expectation from the tar semantics ----------------------------------------------------------------------------
def tar_tree(path, layer_index):
    """One layer as {path: entry} plus its whiteouts and opaque dirs; hardlinks share an inode key."""
    tree, whiteouts, opaque = {}, [], []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            name = m.name.strip("/")
            if name.startswith("./"):
                name = name[2:]
            if name in ("", "."):
                continue
            base = os.path.basename(name)
            parent = os.path.dirname(name)
            if base == ".wh..wh..opq":
                opaque.append(parent)
                continue
            if base.startswith(".wh."):
                whiteouts.append(os.path.join(parent, base[4:]) if parent else base[4:])
                continue
            # implicit parents: 0755 root, mtime 0
            p = parent
            while p and p not in tree:
                tree[p] = dict(type="d", mode=0o755, uid=0, gid=0, mtime=0)
                p = os.path.dirname(p)
            if m.islnk():
                target = m.linkname.strip("/")
                tree[name] = tree[target]          # the same object: one inode
                tree[name]["nlink"] += 1
                continue
            e = dict(mode=m.mode & 0o7777, uid=m.uid, gid=m.gid, mtime=int(m.mtime))
            if m.isdir():
                e["type"] = "d"
            elif m.issym():
                e.update(type="l", target=m.linkname, size=len(m.linkname.encode()), nlink=1)
            elif m.isfifo():
                e.update(type="p", nlink=1)
            elif m.isfile():
                data = tf.extractfile(m).read()
                e.update(type="f", size=len(data), sha256=hashlib.sha256(data).hexdigest(), nlink=1,
                         inode=(layer_index, name))
            tree[name] = e
    return tree, whiteouts, opaque


def below(path, prefix):
    return path == prefix or path.startswith(prefix + "/")


def expected_root(tars):
    """The overlay of the layers (bottom first) as the guest's manifest prints it."""
    merged = {}
    for i, t in enumerate(tars):
        tree, whiteouts, opaque = tar_tree(t, i)
        for w in whiteouts:
            merged = {p: e for p, e in merged.items() if not below(p, w)}
        for o in opaque:
            merged = {p: e for p, e in merged.items() if not (p.startswith(o + "/"))}
        for p in sorted(tree):
            e = tree[p]
            old = merged.get(p)
            if old is not None and (old["type"] == "d") != (e["type"] == "d"):
                merged = {q: x for q, x in merged.items() if not below(q, p)}
            merged[p] = e
    # a path whose parent is not a directory is unreachable
    merged = {p: e for p, e in merged.items()
              if all(merged.get(a, {}).get("type") == "d" for a in ancestors(p))}
    out = {}
    seen_inodes = {}
    for p in sorted(merged, key=lambda s: [c.encode() for c in s.split("/")]):   # the guest's walk order
        e = merged[p]
        r = {k: e[k] for k in ("type", "mode", "uid", "gid", "mtime", "size", "sha256", "target", "nlink") if k in e}
        if e.get("nlink", 1) > 1:
            key = e["inode"]
            if key in seen_inodes:
                r["hardlink_of"] = seen_inodes[key]
            else:
                seen_inodes[key] = p
        out[p] = r
    return out


def ancestors(p):
    parts = p.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


# ---- converting and tampering ----------------------------------------------------------------------------------------
def convert(veritysnap, tar, out, *opts):
    r = subprocess.run([veritysnap, "convert", *opts, "-o", out, tar], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"veritysnap convert {' '.join(opts)} {tar} failed: {r.stderr}")
    info = json.loads(r.stdout)
    sidecar = None
    if os.path.exists(out + ".dmverity"):
        with open(out + ".dmverity") as f:
            sidecar = json.load(f)
    return info, sidecar


def flip(src, dst, offset, mask=0x01):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def bad_root(root):
    return ("0" if root[0] != "0" else "1") + root[1:]


def tar_ranges(tar):
    """(path, offset, length, sha256) of every non-empty regular file's data inside the tar."""
    out = []
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            if m.isfile() and m.size > 0:
                data = tf.extractfile(m).read()
                out.append((m.name, m.offset_data, m.size, hashlib.sha256(data).hexdigest()))
    return out


def group_from_mounts(name, mlist, disks):
    """A guest group from a dialect's mounts: erofs layers are overlaid, tarfs layers read through verity."""
    layers = dialect_mounts.layers_from_mounts(mlist)
    out = []
    for i, layer in enumerate(layers):
        g = {"name": f"m{i}", "format": layer["format"], "serial": disks.add(layer["file"]),
             "root_hash": layer["root_hash"]}
        if layer["format"] == "erofs":
            g["dmverity"] = layer["dmverity"]
        else:   # a tarfs file starts with the original tar: its members give the byte ranges to check
            g["read_device"] = True
            g["ranges"] = [[off, n] for _, off, n, _ in tar_ranges(layer["file"])]
        out.append(g)
    return {"name": name, "overlay": all(x["format"] == "erofs" for x in layers), "layers": out}


# ---- the guest ---------------------------------------------------------------------------------------------------------
class Disks:
    def __init__(self):
        self.files = []   # (serial, path)

    def add(self, path):
        for s, p in self.files:
            if p == path:
                return s
        serial = f"vs{len(self.files)}"
        self.files.append((serial, path))
        return serial


def boot(kdir, disks, config_path, logpath, timeout):
    cmd = ["qemu-system-x86_64", "-accel", os.environ.get("VERITYSNAP_GUEST_ACCEL", "tcg"), "-cpu", "max",
           "-m", "512", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", os.path.join(kdir, "vmlinuz"), "-initrd", os.path.join(kdir, "initramfs.gz"),
           "-append", "console=ttyS0 quiet loglevel=1 panic=-1"]
    for i, (serial, path) in enumerate(disks.files + [("vsconfig", config_path)]):
        cmd += ["-drive", f"file={path},format=raw,if=none,id=d{i},readonly=on",
                "-device", f"virtio-blk-pci,drive=d{i},serial={serial}"]
    logf = open(logpath, "wb")
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    return p, logf, start, timeout, cmd


def parse_serial(logpath):
    recs = []
    with open(logpath, "rb") as f:
        for raw in f.read().decode("utf-8", "replace").splitlines():
            m = re.search(r"VSG (\{.*\})\s*$", raw)
            if m:
                try:
                    recs.append(json.loads(m.group(1)))
                except json.JSONDecodeError:
                    recs.append({"t": "garbled", "line": raw})
    return recs


def qemu_skip_reason():
    """Why the child VM cannot run here (None when it can)."""
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs qemu-system-x86)"
    r = subprocess.run(["qemu-system-x86_64", "-accel", "help"], capture_output=True, text=True)
    if r.returncode != 0 or "tcg" not in r.stdout:
        return f"qemu-system-x86_64 cannot run TCG: {r.stdout}{r.stderr}"
    return None


def built_kernels(work, kernels, rc):
    """The kernels build-initramfs.sh (exit status rc) built in work; each one it could not is a failed check."""
    for k in kernels:
        check(os.path.exists(os.path.join(work, k, "ok")), f"kernel {k}: build-initramfs.sh could not build it "
                                                           f"(exit {rc}; see its messages above)")
    return [k for k in kernels if os.path.exists(os.path.join(work, k, "ok"))]


def wait_guests(runs):
    """Waits until every guest of runs ({kernel: (process, serial log file, start, timeout, ...)}) powered off; one
    still running after its timeout is killed and fails a check. Returns {kernel: seconds it ran}."""
    times = {}
    while len(times) < len(runs):
        for k, (p, logf, start, timeout, *_) in runs.items():
            if k in times:
                continue
            if p.poll() is None and time.monotonic() - start > timeout:
                p.kill()
                p.wait()
                check(False, f"{k}: the guest did not power off within {timeout}s (serial log: {logf.name})")
            if p.poll() is not None:
                logf.close()
                times[k] = time.monotonic() - start
        time.sleep(0.1)
    return times


def finished(k, recs, logpath, what="the guest program"):
    """Whether the guest said it was done (a failed check, with the serial log's tail, if not)."""
    if check(any(r.get("t") == "done" for r in recs), f"{k}: {what} did not finish"):
        return True
    with open(logpath, "rb") as f:
        log(f.read().decode("utf-8", "replace")[-4000:])
    return False


# ---- judging ---------------------------------------------------------------------------------------------------------
def manifest_of(recs, group):
    return {r["path"]: {k: v for k, v in r.items() if k not in ("t", "group", "path")}
            for r in recs if r.get("t") == "entry" and r.get("group") == group}


def compare_manifest(kernel, group, got, want, expect_errors=()):
    ok = True
    got = dict(got)
    root = got.pop(".", None)
    ok &= check(root is not None and root.get("type") == "d", f"{kernel}/{group}: no root directory in the manifest")
    for p in sorted(set(got) | set(want)):
        g, w = got.get(p), want.get(p)
        if p in expect_errors:
            ok &= check(g is not None and g.get("error") == "EIO" and "sha256" not in g,
                        f"{kernel}/{group}: {p} should fail with EIO, got {g}")
            continue
        if g is None or w is None:
            ok &= check(False, f"{kernel}/{group}: {p} {'missing in the guest' if g is None else 'unexpected'}: "
                               f"{w if g is None else g}")
            continue
        ok &= check(g == w, f"{kernel}/{group}: {p}: guest {g} != expected {w}")
    return ok


def failed_closed(recs, group):
    """True when activation or the mount failed, or every file read failed: nothing of the layer was served."""
    layers = [r for r in recs if r.get("t") == "layer" and r.get("group") == group]
    mounts = [r for r in recs if r.get("t") == "mount" and r.get("group") == group]
    entries = [r for r in recs if r.get("t") == "entry" and r.get("group") == group]
    reads = [r for r in recs if r.get("t") in ("range", "device") and r.get("group") == group]
    if any("error" in r for r in layers):
        return "activation failed: " + "; ".join(r["error"] for r in layers if "error" in r)
    if mounts and any(r["result"] != "ok" for r in mounts):
        return "mount failed: " + "; ".join(r["result"] for r in mounts)
    files = [r for r in entries if r.get("type") in ("f", None)]
    if files and all("error" in r for r in files):
        return "all reads failed"
    if reads and all("error" in r for r in reads):
        return "all reads failed: " + ", ".join(sorted({r["error"] for r in reads}))
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--veritysnap", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--kernels", default="stable,backports")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--mounts", help="also boot with these mounts (JSON list, as a veritysnap socket returned them)")
    a = ap.parse_args()
    t0 = time.monotonic()
    why = qemu_skip_reason()
    if why:
        log("SKIP: " + why)
        return SKIP
    if not os.access(a.veritysnap, os.X_OK):
        log(f"FAIL: {a.veritysnap} is not an executable")
        return 1
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    kernels = [k for k in a.kernels.split(",") if k]

    # 1. kernels and initramfs
    b = subprocess.run(["bash", os.path.join(HERE, "build-initramfs.sh"), work, *kernels])
    t_build = time.monotonic() - t0
    kernels = built_kernels(work, kernels, b.returncode)
    if not kernels:
        return 1

    # 2. layers
    d = os.path.join(work, "layers")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tars = make_layers(d)
    want = expected_root(tars)
    with open(os.path.join(work, "expected.json"), "w") as f:
        json.dump(want, f, indent=1, sort_keys=True)
    ero, nosb, tfs = [], [], []
    for i, t in enumerate(tars):
        ero.append((os.path.join(d, f"l{i}.erofs"),) + convert(a.veritysnap, t, os.path.join(d, f"l{i}.erofs")))
        nosb.append((os.path.join(d, f"l{i}.nosb.erofs"),) +
                    convert(a.veritysnap, t, os.path.join(d, f"l{i}.nosb.erofs"), "--no-superblock"))
        tfs.append((os.path.join(d, f"l{i}.tarfs"),) +
                   convert(a.veritysnap, t, os.path.join(d, f"l{i}.tarfs"), "--format", "tarfs"))

    disks = Disks()

    def erofs_layer(entry, name, path=None, root=None, sidecar=None):
        p, info, sc = entry
        return {"name": name, "format": "erofs", "serial": disks.add(path or p),
                "root_hash": root or info["root_hash"], "dmverity": sidecar or sc}

    def tarfs_layer(entry, name, tar, path=None, root=None):
        p, info, _ = entry
        return {"name": name, "format": "tarfs", "serial": disks.add(path or p), "root_hash": root or info["root_hash"],
                "read_device": True, "ranges": [[off, n] for _, off, n, _ in tar_ranges(tar)]}

    groups = []
    # erofs with the superblock, and without, top layer first
    groups.append({"name": "erofs", "layers": [erofs_layer(ero[i], f"l{i}") for i in (2, 1, 0)]})
    groups.append({"name": "erofs-nosb", "layers": [erofs_layer(nosb[i], f"l{i}") for i in (2, 1, 0)]})
    # a flipped byte in the second data block of usr/lib/big.bin (layer 0)
    img = open(ero[0][0], "rb").read()
    at = img.find(BIG0[:256])
    check(at > 0 and at % 4096 == 0, f"big.bin not found block-aligned in the layer-0 image ({at})")
    flipped = os.path.join(d, "l0.flip.erofs")
    flip(ero[0][0], flipped, at + 4096 + 123)
    groups.append({"name": "erofs-flip", "layers": [erofs_layer(ero[2], "l2"), erofs_layer(ero[1], "l1"),
                                                    erofs_layer(ero[0], "l0", path=flipped)]})
    # a wrong root hash (sidecar and mount agree on it, the image does not)
    sc = dict(ero[1][2], roothash=bad_root(ero[1][2]["roothash"]))
    groups.append({"name": "erofs-badroot", "overlay": False,
                   "layers": [erofs_layer(ero[1], "l1", root=sc["roothash"], sidecar=sc)]})
    # a corrupted hash tree: the first byte of the top-level hash block
    badtree = os.path.join(d, "l1.badtree.erofs")
    flip(ero[1][0], badtree, ero[1][1]["hash_start_block"] * 4096, 0xff)
    groups.append({"name": "erofs-badtree", "overlay": False, "layers": [erofs_layer(ero[1], "l1", path=badtree)]})
    # tarfs: each layer alone, as the tardev agent activates it from the trailer
    groups.append({"name": "tarfs", "overlay": False,
                   "layers": [tarfs_layer(tfs[i], f"l{i}", tars[i]) for i in (2, 1, 0)]})
    # tarfs: a flipped byte in big.bin's data inside the tar
    big = [r for r in tar_ranges(tars[0]) if r[0].endswith("big.bin")][0]
    tflip = os.path.join(d, "l0.flip.tarfs")
    flip(tfs[0][0], tflip, big[1] + 4096 + 5)
    groups.append({"name": "tarfs-flip", "overlay": False,
                   "layers": [tarfs_layer(tfs[0], "l0", tars[0], path=tflip)]})
    # tarfs: corrupted trailers (data_blocks one less; data_blocks absurd), wrong root, corrupted tree
    size = os.path.getsize(tfs[1][0])
    nblocks = tfs[1][1]["data_blocks"]
    bad1 = os.path.join(d, "l1.trailer-1.tarfs")
    shutil.copyfile(tfs[1][0], bad1)
    with open(bad1, "r+b") as f:
        f.seek(size - 4096 + 3592)
        f.write((nblocks - 1).to_bytes(8, "little"))
    bad2 = os.path.join(d, "l1.trailer-huge.tarfs")
    shutil.copyfile(tfs[1][0], bad2)
    with open(bad2, "r+b") as f:
        f.seek(size - 4096 + 3592)
        f.write((nblocks * 1000).to_bytes(8, "little"))
    groups.append({"name": "tarfs-badtrailer-1", "overlay": False,
                   "layers": [tarfs_layer(tfs[1], "l1", tars[1], path=bad1)]})
    groups.append({"name": "tarfs-badtrailer-huge", "overlay": False,
                   "layers": [tarfs_layer(tfs[1], "l1", tars[1], path=bad2)]})
    groups.append({"name": "tarfs-badroot", "overlay": False,
                   "layers": [tarfs_layer(tfs[2], "l2", tars[2], root=bad_root(tfs[2][1]["root_hash"]))]})
    tbadtree = os.path.join(d, "l2.badtree.tarfs")
    flip(tfs[2][0], tbadtree, tfs[2][1]["hash_start_block"] * 4096 + 7, 0xff)
    groups.append({"name": "tarfs-badtree", "overlay": False,
                   "layers": [tarfs_layer(tfs[2], "l2", tars[2], path=tbadtree)]})

    # the same layers through the Kata dialects' mounts (docs/formats.md), via the adapter in mounts.py
    erofs_mounts = [{"type": "erofs", "source": ero[i][0],
                     "options": ["ro", "loop", f"X-containerd.dmverity={ero[i][0]}.dmverity"]} for i in (2, 1, 0)]
    erofs_mounts.append({"type": "format/mkdir/overlay", "source": "overlay",
                         "options": ["workdir=/w", "upperdir=/u", "lowerdir={{ overlay 0 2 }}"]})
    fs_opt = "io.katacontainers.fs-opt."
    tardev_mounts = [{"type": "fuse3.kata-overlay", "source": "/", "options":
                      [fs_opt + "layer-src-prefix=" + d] +
                      [fs_opt + "layer=" + base64.b64encode(
                          f"{os.path.basename(tfs[i][0])},tar,ro,{fs_opt}block_device=file,{fs_opt}is-layer,"
                          f"{fs_opt}root-hash={tfs[i][1]['root_hash']}".encode()).decode() for i in (2, 1, 0)] +
                      [fs_opt + "overlay-rw", "lowerdir=" + ":".join(os.path.basename(tfs[i][0]) for i in (2, 1, 0))]}]
    for name, mlist in (("kata-erofs", erofs_mounts), ("kata-tardev", tardev_mounts)):
        with open(os.path.join(work, f"mounts-{name}.json"), "w") as f:
            json.dump(mlist, f, indent=1)
        groups.append(group_from_mounts(name, mlist, disks))
    if a.mounts:
        with open(a.mounts) as f:
            doc = json.load(f)
        groups.append(group_from_mounts("mounts", doc if isinstance(doc, list) else doc["mounts"], disks))

    config = os.path.join(work, "guest-config.json")
    text = json.dumps({"groups": groups}, indent=1).encode()
    with open(config, "wb") as f:
        f.write(text + b"\0" * (4096 - len(text) % 4096))

    # 3. boot every kernel at once (TCG runs one vCPU per host thread)
    runs = {}
    for k in kernels:
        runs[k] = boot(os.path.join(work, k), disks, config, os.path.join(work, f"serial-{k}.log"), a.timeout)
    times = wait_guests(runs)

    # 4. judge
    for k in kernels:
        logpath = os.path.join(work, f"serial-{k}.log")
        recs = parse_serial(logpath)
        bootrec = [r for r in recs if r.get("t") == "boot"]
        version = bootrec[0]["kernel"] if bootrec else "?"
        log(f"== {k}: kernel {version}, boot+run {times[k]:.1f}s "
            f"(guest uptime at start {bootrec[0]['uptime'] if bootrec else '?'}s), serial log {logpath}")
        if not finished(k, recs, logpath):
            continue
        for r in recs:
            if r.get("t") in ("insmod", "fatal", "garbled"):
                log(f"  {k}: {r}")
        for r in recs:
            if r.get("t") == "kmsg":
                log(f"  {k} kernel: {r['msg']}")
        for g in ("erofs", "erofs-nosb"):
            fc = failed_closed(recs, g)
            if check(fc is None, f"{k}/{g}: {fc}"):
                if compare_manifest(k, g, manifest_of(recs, g), want):
                    log(f"  ok {k}/{g}: manifest of {len(want) + 1} entries equals the expectation")
        g = "erofs-flip"
        if check(failed_closed(recs, g) is None, f"{k}/{g}: {failed_closed(recs, g)}"):
            if compare_manifest(k, g, manifest_of(recs, g), want, expect_errors=("usr/lib/big.bin",)):
                log(f"  ok {k}/{g}: usr/lib/big.bin reads EIO, the other {len(want) - 1} entries are intact")
        for g in ("erofs-badroot", "erofs-badtree", "tarfs-badtrailer-1", "tarfs-badtrailer-huge", "tarfs-badroot",
                  "tarfs-badtree"):
            fc = failed_closed(recs, g)
            if check(fc is not None, f"{k}/{g}: the layer was served: {[r for r in recs if r.get('group') == g]}"):
                log(f"  ok {k}/{g}: {fc}")
        # tarfs: device and ranges
        for i in range(3):
            entry, tar = tfs[i], tars[i]
            with open(entry[0], "rb") as f:
                dev_sha = hashlib.sha256(f.read(entry[1]["data_blocks"] * 4096)).hexdigest()
            dev = [r for r in recs if r.get("t") == "device" and r["group"] == "tarfs" and r["name"] == f"l{i}"]
            rng = {r["offset"]: r for r in recs if r.get("t") == "range" and r["group"] == "tarfs"
                   and r["name"] == f"l{i}"}
            ok = check(len(dev) == 1 and dev[0].get("sha256") == dev_sha,
                       f"{k}/tarfs/l{i}: device read {dev} != sha256 {dev_sha}")
            for name, off, n, sha in tar_ranges(tar):
                ok &= check(rng.get(off, {}).get("sha256") == sha, f"{k}/tarfs/l{i}: {name} at {off}: {rng.get(off)}")
            if ok:
                log(f"  ok {k}/tarfs/l{i}: verity device ({entry[1]['data_blocks']} blocks) and "
                    f"{len(tar_ranges(tar))} file ranges hash as on the host")
        g = "kata-erofs"
        if check(failed_closed(recs, g) is None, f"{k}/{g}: {failed_closed(recs, g)}"):
            if compare_manifest(k, g, manifest_of(recs, g), want):
                log(f"  ok {k}/{g}: the dialect's mounts (adapter) give the expected root filesystem")
        g = "kata-tardev"
        ok = True
        for i, name in ((2, "m0"), (1, "m1"), (0, "m2")):
            with open(tfs[i][0], "rb") as f:
                dev_sha = hashlib.sha256(f.read(tfs[i][1]["data_blocks"] * 4096)).hexdigest()
            dev = [r for r in recs if r.get("t") == "device" and r["group"] == g and r["name"] == name]
            rng = [r for r in recs if r.get("t") == "range" and r["group"] == g and r["name"] == name]
            ok &= check(len(dev) == 1 and dev[0].get("sha256") == dev_sha, f"{k}/{g}/{name}: {dev}")
            ok &= check(len(rng) == len(tar_ranges(tars[i])) and all("sha256" in r for r in rng),
                        f"{k}/{g}/{name}: ranges {rng}")
        if ok:
            log(f"  ok {k}/{g}: the dialect's mounts (adapter) activate and read every tarfs layer")
        if a.mounts:
            g = "mounts"
            errs = [r for r in recs if r.get("group") == g and ("error" in r or r.get("result", "ok") != "ok")]
            n = len([r for r in recs if r.get("group") == g and r.get("t") in ("entry", "range", "device")])
            if check(not errs and n > 0, f"{k}/{g}: {errs or 'nothing read'}"):
                log(f"  ok {k}/{g}: {n} entries/ranges read from {a.mounts}")
        g = "tarfs-flip"
        rng = {r["offset"]: r for r in recs if r.get("t") == "range" and r["group"] == g}
        dev = [r for r in recs if r.get("t") == "device" and r["group"] == g]
        ok = check(len(dev) == 1 and dev[0].get("error") == "EIO", f"{k}/{g}: full read should fail: {dev}")
        for name, off, n, sha in tar_ranges(tars[0]):
            if name.endswith("big.bin"):
                ok &= check(rng.get(off, {}).get("error") == "EIO", f"{k}/{g}: {name} should read EIO: {rng.get(off)}")
            else:
                ok &= check(rng.get(off, {}).get("sha256") == sha, f"{k}/{g}: {name} should read: {rng.get(off)}")
        if ok:
            log(f"  ok {k}/{g}: big.bin's range reads EIO, the other ranges read, the full read fails at "
                f"{dev[0].get('error_offset')}")

    log(f"timing: kernels+initramfs {t_build:.1f}s, boots " +
        ", ".join(f"{k} {t:.1f}s" for k, t in times.items()) + f", total {time.monotonic() - t0:.1f}s")
    if failures:
        log(f"{len(failures)} check(s) failed")
        return 1
    log("all guest checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
