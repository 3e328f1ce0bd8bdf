#!/usr/bin/env python3
"""Child-VM test on the mounts the DAEMON returned: veritysnapd's kata-erofs (default) or kata-tardev socket behind
Debian's containerd 1.6. kata-erofs (ctest guest_daemon_kata_erofs):

  1. veritysnapd with one [[listen]] socket of dialect kata-erofs (plugin key veritysnap-kata) and containerd 1.6, both
     under a temp dir; an OCI archive of test_guest.py's three layers (gzip, plain, gzip: files, dirs, symlinks,
     hardlinks, a fifo, setuid, owners, whiteouts, an opaque dir, a symlink over a dir) is imported with
     `ctr images import --snapshotter veritysnap-kata` (containerd unpacks through the daemon's host mounts)
  2. `ctr snapshots --snapshotter veritysnap-kata prepare ctr-guest <top chain ID>`, then `ctr snapshots mounts`:
     its lines are parsed into containerd's Mount list ([{"type", "source", "options"}], saved as
     mounts-daemon.json) and checked: one erofs mount per layer, topmost first, options ro,loop,X-containerd.dmverity=
     <layer>.dmverity with the sidecar there, then format/mkdir/overlay
  3. host side: the daemon's layer files mounted read-only (`mount -t erofs -o loop,ro`) and overlaid
     (lowerdir=top:...:bottom): the walk equals the root filesystem expected from the tar semantics (test_guest.py;
     as containerd applies them: a hardlink header's mode is chmod'ed onto the shared inode)
  4. the guest (tests/guest: Debian's kernels under qemu TCG, the layer files as read-only virtio disks) gets those
     mounts through mounts.py: dm-verity from each sidecar with raw DM ioctls, erofs, overlay; its manifest equals the
     tar-semantics expectation and the host-side walk. A copy of the bottom layer with one data byte flipped reads
     EIO for that file only, and a sidecar with a wrong root hash fails closed: the daemon's trees protect the layers.
  kata-tardev (--dialect kata-tardev, ctest guest_daemon_kata_tardev): tarfs layers only come by the blob path, so
  the daemon serves one kata-tardev socket (plugin veritysnap-tardev) with --containerd-address pointing at the test's
  containerd, and the same OCI archive is pulled with `veritysnap pull --snapshotter veritysnap-tardev --oci-archive`
  (each layer converted from its blob). `ctr snapshots mounts` of the container snapshot must be one
  fuse3.kata-overlay mount: layer-src-prefix <root>/layers, three base64 layer= options (topmost first, file names
  sha256(chain ID)), overlay-rw, lowerdir. On the host, each layer file resolved through mounts.py is byte-identical
  to `veritysnap convert --format tarfs` of its tar, with the option's root hash, and its data part starts with the
  tar. In the guest (no tarfs module in Debian's kernels): each layer's verity device, set up from the tardev trailer
  as the AKS agent does, reads back whole and equals the layer file's data part, and every file's byte range hashes
  as on the host; a copy of the bottom layer with a data byte of usr/lib/big.bin flipped (same name, another
  layer-src-prefix) reads EIO in exactly that file's range (the full read fails too); the top layer's option with a
  wrong root hash serves nothing.
Usage (root): test_guest_daemon.py --veritysnapd PATH [--dialect kata-erofs|kata-tardev] [--veritysnap CLI]
                                   --work DIR [--kernels stable,backports] [--keep]
Exit 0 pass, 1 fail, 77 cannot run here (not root, containerd/ctr/qemu missing, no daemon; kata-tardev: no
veritysnap CLI).
"""
import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import mounts as dialect_mounts  # noqa: E402
import test_guest as tg  # noqa: E402
from vstest import SKIP, Fail, Proc, check, failures, log, mounts_under, run, start_containerd, wait_for  # noqa: E402
NS = "vsguest"
BASE = "docker.io/library/veritysnap-guest"
IMAGE = BASE + ":1"
KEY_EROFS, KEY_TARDEV = "veritysnap-kata", "veritysnap-tardev"
PFX = dialect_mounts.PFX


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(tars, path):
    """An OCI archive of the layer tars (bottom first): layer 1 uncompressed, the others gzip. Returns the diff IDs."""
    blobs = {}

    def blob(data):
        d = sha(data)
        blobs[d] = data
        return {"digest": d, "size": len(data)}

    raw = [open(t, "rb").read() for t in tars]
    diff_ids = [sha(r) for r in raw]
    layers = []
    for i, r in enumerate(raw):
        if i == 1:
            layers.append(dict(mediaType="application/vnd.oci.image.layer.v1.tar", **blob(r)))
        else:
            layers.append(dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip",
                               **blob(gzip.compress(r, mtime=0))))
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(mediaType="application/vnd.oci.image.config.v1+json",
                               **blob(json.dumps(config).encode())), "layers": layers}
    mdesc = dict(mediaType="application/vnd.oci.image.manifest.v1+json", **blob(json.dumps(manifest).encode()),
                 annotations={"org.opencontainers.image.ref.name": "1"})
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
               "index.json": json.dumps({"schemaVersion": 2, "manifests": [mdesc]}).encode()}
    for d, data in blobs.items():
        members["blobs/sha256/" + d[7:]] = data
    with tarfile.open(path, "w") as t:
        for n, data in members.items():
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
    return diff_ids


def containerd_semantics(tars, d):
    """Copies of the tars as containerd's applier reads them: it chmods a hardlink to its header's mode, which is
    the shared inode's (archive/tar.go, handleLChmod), so the last hardlink header of a file sets its mode.
    test_guest.py's hardlink headers carry mode 0 (real tar writers repeat the file's mode); the rest is unchanged."""
    out = []
    for t in tars:
        with tarfile.open(t) as tf:
            members = tf.getmembers()
            data = {m.name: tf.extractfile(m).read() for m in members if m.isfile()}
        byname = {m.name: m for m in members}
        for m in members:
            if m.islnk() and m.linkname in byname:
                byname[m.linkname].mode = m.mode
        p = os.path.join(d, "containerd-" + os.path.basename(t))
        with tarfile.open(p, "w", format=tarfile.PAX_FORMAT) as tf:
            for m in members:
                tf.addfile(m, io.BytesIO(data[m.name]) if m.isfile() else None)
        out.append(p)
    return out


def chain_ids(diff_ids):
    out = []
    for d in diff_ids:
        out.append(d if not out else sha(f"{out[-1]} {d}".encode()))
    return out


def parse_ctr_mounts(text):
    """`ctr snapshots mounts TARGET KEY` lines (`mount -t TYPE SOURCE TARGET -o OPTS`) -> containerd's Mount list."""
    out = []
    for line in text.strip().splitlines():
        parts = line.split()
        if parts[:2] != ["mount", "-t"] or len(parts) < 5:
            raise Fail("not a mount line: %r" % line)
        m = {"type": parts[2], "source": parts[3], "options": []}
        if len(parts) > 6 and parts[5] == "-o":
            m["options"] = " ".join(parts[6:]).split(",")   # "{{ overlay 0 2 }}" holds spaces
        out.append(m)
    return out


def host_manifest(root):
    """The walk of a mounted root in the guest program's manifest form (guest_verity.c manifest_entry)."""
    out, seen = {}, {}

    def entry(rel):
        full = os.path.join(root, rel) if rel else root
        st = os.lstat(full)
        m = st.st_mode
        t = ("f" if stat.S_ISREG(m) else "d" if stat.S_ISDIR(m) else "l" if stat.S_ISLNK(m) else
             "c" if stat.S_ISCHR(m) else "b" if stat.S_ISBLK(m) else "p" if stat.S_ISFIFO(m) else "s")
        e = {"type": t, "mode": m & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
        if t != "d":
            e["nlink"] = st.st_nlink
        if t in ("c", "b"):
            e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        if t in ("f", "l"):
            e["size"] = st.st_size
        if t != "d" and st.st_nlink > 1:
            k = (st.st_dev, st.st_ino)
            if k in seen:
                e["hardlink_of"] = seen[k]
            else:
                seen[k] = rel
        if t == "l":
            e["target"] = os.readlink(full)
        if t == "f":
            with open(full, "rb") as f:
                e["sha256"] = hashlib.sha256(f.read()).hexdigest()
        out[rel or "."] = e
        if t == "d":
            for n in sorted(os.listdir(full), key=lambda s: s.encode()):
                entry(os.path.join(rel, n) if rel else n)

    entry("")
    return out


def diff(a, b, na, nb, limit=20):
    lines = []
    for p in sorted(set(a) | set(b)):
        if a.get(p) != b.get(p):
            lines.append(f"  {p}: {na} {a.get(p)} != {nb} {b.get(p)}")
    return lines[:limit] + ([f"  ... {len(lines) - limit} more"] if len(lines) > limit else [])


DIALECTS = {"kata-erofs": "veritysnap-kata", "kata-tardev": "veritysnap-tardev"}


def erofs_setup(ctx):
    """kata-erofs: `ctr images import` (directory path), the container snapshot's mounts checked, the host overlay of
    the daemon's layer files compared with the tar semantics, and the guest groups (daemon, daemon-flip,
    daemon-badroot). Returns the judge for one kernel's records."""
    tmp, work, d, tars, ctr = ctx["tmp"], ctx["work"], ctx["d"], ctx["tars"], ctx["ctr"]
    want = tg.expected_root(containerd_semantics(tars, d))
    with open(os.path.join(work, "expected-daemon.json"), "w") as f:
        json.dump(want, f, indent=1, sort_keys=True)
    ctr("images", "import", "--base-name", BASE, "--snapshotter", KEY_EROFS, ctx["archive"])
    ctx["t_import"] = time.monotonic() - ctx["t0"]

    # 2. a container snapshot on the kata-erofs socket, and its mounts
    ctr("snapshots", "--snapshotter", KEY_EROFS, "prepare", "ctr-guest", ctx["top"])
    text = ctr("snapshots", "--snapshotter", KEY_EROFS, "mounts", "/mnt/x", "ctr-guest").stdout
    log("kata-erofs mounts from the daemon:\n" + text.rstrip())
    mlist = parse_ctr_mounts(text)
    with open(os.path.join(work, "mounts-daemon.json"), "w") as f:
        json.dump(mlist, f, indent=1)
    layers = dialect_mounts.layers_from_mounts(mlist)
    if len(layers) != 3 or len(mlist) != 4 or mlist[3]["type"] != "format/mkdir/overlay":
        raise Fail(f"expected three erofs layers and format/mkdir/overlay, got {mlist}")
    for m, layer in zip(mlist, layers):
        src = m["source"]
        if not src.startswith(f"{tmp}/vs/layers/") or m["options"] != ["ro", "loop", f"X-containerd.dmverity="
                                                                       f"{src}.dmverity"]:
            raise Fail(f"not a kata-erofs layer mount of the daemon's store: {m}")
        if not layer["dmverity"].get("roothash") or layer["dmverity"]["roothash"] != layer["root_hash"]:
            raise Fail(f"sidecar of {src} carries no root hash: {layer['dmverity']}")

    # 3. host side: the same layer files, erofs loop mounts overlaid
    host_mps = ctx["host_mps"]
    lowers = []
    for i, layer in enumerate(layers):
        mp = os.path.join(tmp, f"host-l{i}")
        os.mkdir(mp)
        run(["mount", "-t", "erofs", "-o", "loop,ro", layer["file"], mp])
        host_mps.append(mp)
        lowers.append(mp)
    merged = os.path.join(tmp, "host-merged")
    os.mkdir(merged)
    run(["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(lowers), merged])
    host_mps.append(merged)
    host = host_manifest(merged)
    host.pop(".")
    for mp in reversed(host_mps):
        run(["umount", mp])
    del host_mps[:]
    if check(host == want, "host overlay of the daemon's layer files differs from the tar semantics:\n" +
             "\n".join(diff(host, want, "host", "expected"))):
        log(f"  ok host: overlay of the daemon's {len(layers)} erofs layer files = expected root "
            f"({len(want) + 1} entries)")

    # 4. the guest groups: the daemon's mounts, and tampering with the daemon's files: a data byte of
    # usr/lib/big.bin (bottom layer), a wrong root hash (top)
    disks = ctx["disks"]
    groups = ctx["groups"]
    groups.append(tg.group_from_mounts("daemon", mlist, disks))
    bottom = layers[2]["file"]
    img = open(bottom, "rb").read()
    at = img.find(tg.BIG0[:256])
    flip_ok = at > 0 and at % 4096 == 0
    check(flip_ok, f"big.bin not found block-aligned in the daemon's bottom layer file ({at})")
    if flip_ok:
        flipped = os.path.join(d, "bottom.flip.erofs")
        tg.flip(bottom, flipped, at + 4096 + 123)
        mflip = [dict(m) for m in mlist]
        mflip[2] = dict(mflip[2], source=flipped,
                        options=["ro", "loop", f"X-containerd.dmverity={bottom}.dmverity"])
        groups.append(tg.group_from_mounts("daemon-flip", mflip, disks))
    badsc = os.path.join(d, "top.bad.dmverity")
    with open(badsc, "w") as f:
        json.dump(dict(layers[0]["dmverity"], roothash=tg.bad_root(layers[0]["root_hash"])), f)
    groups.append(tg.group_from_mounts("daemon-badroot", [dict(mlist[0], options=[
        "ro", "loop", f"X-containerd.dmverity={badsc}"])], disks))
    groups[-1]["overlay"] = False

    def judge(k, recs):
        g = "daemon"
        fc = tg.failed_closed(recs, g)
        if check(fc is None, f"{k}/{g}: {fc}"):
            got = tg.manifest_of(recs, g)
            if tg.compare_manifest(k, g, got, want):
                log(f"  ok {k}/{g}: the daemon's kata-erofs mounts give the expected root filesystem "
                    f"({len(want) + 1} entries)")
            got.pop(".", None)
            if check(got == host, f"{k}/{g}: guest and host walks differ:\n" + "\n".join(diff(got, host, "guest",
                                                                                            "host"))):
                log(f"  ok {k}/{g}: equal to the host-side overlay of the same layer files")
        if flip_ok:
            g = "daemon-flip"
            if check(tg.failed_closed(recs, g) is None, f"{k}/{g}: {tg.failed_closed(recs, g)}"):
                if tg.compare_manifest(k, g, tg.manifest_of(recs, g), want, expect_errors=("usr/lib/big.bin",)):
                    log(f"  ok {k}/{g}: a byte flipped in the daemon's bottom layer: usr/lib/big.bin reads EIO, "
                        f"the other {len(want) - 1} entries are intact")
        g = "daemon-badroot"
        fc = tg.failed_closed(recs, g)
        if check(fc is not None, f"{k}/{g}: the layer was served: {[r for r in recs if r.get('group') == g]}"):
            log(f"  ok {k}/{g}: the top layer with a wrong root hash: {fc}")
    return judge


def tardev_trailer(path):
    """(data_block_size, hash_block_size, data_blocks) from a tarfs file's tardev trailer (its last 4 KiB)."""
    with open(path, "rb") as f:
        f.seek(-4096, os.SEEK_END)
        t = f.read(4096)
    return (int.from_bytes(t[3584:3588], "little"), int.from_bytes(t[3588:3592], "little"),
            int.from_bytes(t[3592:3600], "little"))


def tardev_setup(ctx):
    """kata-tardev: `veritysnap pull --snapshotter veritysnap-tardev` of the OCI archive (the blob path builds each
    layer's tarfs form), the container snapshot's fuse3.kata-overlay mount checked, each layer file's data part
    checked against its tar on the host, and the guest groups (tardev: every layer's verity device and file ranges;
    tardev-flip: the bottom layer with a data byte of usr/lib/big.bin flipped; tardev-badroot: the top layer's option
    with a wrong root hash). Returns the judge for one kernel's records."""
    tmp, work, d, tars, ctr = ctx["tmp"], ctx["work"], ctx["d"], ctx["tars"], ctx["ctr"]
    p = run([ctx["veritysnap"], "pull", "--snapshotter", KEY_TARDEV, "--containerd-address", ctx["sock"],
             "--namespace", NS, "--oci-archive", ctx["archive"], "--name", IMAGE], timeout=600)
    log("veritysnap pull: " + (p.stdout.strip() or p.stderr.strip().splitlines()[-1]))
    ctx["t_import"] = time.monotonic() - ctx["t0"]

    # 2. a container snapshot on the kata-tardev socket, and its mount
    chains = chain_ids(ctx["diff_ids"])
    ctr("snapshots", "--snapshotter", KEY_TARDEV, "prepare", "ctr-guest", chains[-1])
    text = ctr("snapshots", "--snapshotter", KEY_TARDEV, "mounts", "/mnt/x", "ctr-guest").stdout
    log("kata-tardev mounts from the daemon:\n" + text.rstrip())
    mlist = parse_ctr_mounts(text)
    with open(os.path.join(work, "mounts-daemon-tardev.json"), "w") as f:
        json.dump(mlist, f, indent=1)
    if len(mlist) != 1 or mlist[0]["type"] != "fuse3.kata-overlay":
        raise Fail(f"expected one fuse3.kata-overlay mount, got {mlist}")
    opts = mlist[0]["options"]
    prefix = f"{tmp}/vs/layers"
    names = [hashlib.sha256(c.encode()).hexdigest() for c in reversed(chains)]   # topmost first
    lopts = [o for o in opts if o.startswith(PFX + "layer=")]
    if (opts[0] != PFX + "layer-src-prefix=" + prefix or len(lopts) != 3 or opts[1:4] != lopts
            or PFX + "overlay-rw" not in opts or opts[-1] != "lowerdir=" + ":".join(names)):
        raise Fail(f"not the kata-tardev mount of the daemon's store with three layers: {opts}")
    layers = dialect_mounts.layers_from_mounts(mlist)
    if [x["file"] for x in layers] != [os.path.join(prefix, n) for n in names] or \
            any(x["format"] != "tarfs" or len(x["root_hash"]) != 64 for x in layers):
        raise Fail(f"layers from the kata-tardev mount: {layers}")

    # 3. host side: each layer file is byte-identical to `veritysnap convert --format tarfs` of its tar (the blob
    # uncompressed) with the root hash of its option; its data part (what the guest's verity device holds) starts
    # with the tar, then the tarfs index; the file ranges are the tar's
    dev_sha, ranges = [], []
    for i, (layer, tar) in enumerate(zip(layers, reversed(tars))):
        raw = open(tar, "rb").read()
        out = os.path.join(d, f"convert-{i}.tarfs")
        cj = json.loads(run([ctx["veritysnap"], "convert", "--format", "tarfs", "--no-sidecar", "-o", out,
                             tar]).stdout)
        with open(layer["file"], "rb") as f1, open(out, "rb") as f2:
            same = f1.read() == f2.read()
        os.unlink(out)
        dbs, hbs, blocks = tardev_trailer(layer["file"])
        with open(layer["file"], "rb") as f:
            data = f.read(blocks * dbs)
        ok = check(same and cj["root_hash"] == layer["root_hash"],
                   f"{layer['file']}: not `veritysnap convert --format tarfs` of {tar} (root hash {cj['root_hash']}, "
                   f"the option says {layer['root_hash']})")
        ok &= check(dbs == 4096 and hbs == 4096 and len(data) == blocks * dbs and len(data) > len(raw) and
                    data.startswith(raw), f"{layer['file']}: the data part (trailer {dbs}/{hbs}/{blocks}) does not "
                                          f"start with {tar}")
        r_file, r_tar = tg.tar_ranges(layer["file"]), tg.tar_ranges(tar)
        ok &= check(r_file == r_tar, f"{layer['file']}: file ranges differ from {tar}'s")
        if ok:
            log(f"  ok host: {os.path.basename(layer['file'])[:12]}.. = convert --format tarfs of "
                f"{os.path.basename(tar)} ({blocks} data blocks: the tar and its index; {len(r_file)} file ranges)")
        dev_sha.append(hashlib.sha256(data).hexdigest())
        ranges.append(r_file)

    # 4. the guest groups
    disks, groups = ctx["disks"], ctx["groups"]
    groups.append(tg.group_from_mounts("tardev", mlist, disks))
    # a data byte of usr/lib/big.bin flipped in a copy of the bottom layer, named as the daemon names it, under
    # another layer-src-prefix; the bottom layer's own option
    big = [r for r in ranges[2] if r[0].endswith("big.bin")]
    flip_ok = check(len(big) == 1, f"usr/lib/big.bin not in the bottom layer's ranges: {ranges[2]}")
    if flip_ok:
        fdir = os.path.join(d, "flip")
        os.makedirs(fdir)
        tg.flip(layers[2]["file"], os.path.join(fdir, names[2]), big[0][1] + 4096 + 5)
        groups.append(tg.group_from_mounts("tardev-flip", [dict(mlist[0], options=[
            PFX + "layer-src-prefix=" + fdir, lopts[2], PFX + "overlay-rw", "lowerdir=" + names[2]])], disks))
    # the top layer's option with a wrong root hash
    fields = base64.b64decode(lopts[0].split("=", 1)[1]).decode().split(",")
    fields = [PFX + "root-hash=" + tg.bad_root(layers[0]["root_hash"]) if x.startswith(PFX + "root-hash=") else x
              for x in fields]
    bad = PFX + "layer=" + base64.b64encode(",".join(fields).encode()).decode()
    groups.append(tg.group_from_mounts("tardev-badroot", [dict(mlist[0], options=[
        opts[0], bad, PFX + "overlay-rw", "lowerdir=" + names[0]])], disks))

    def judge(k, recs):
        g = "tardev"
        ok = check(tg.failed_closed(recs, g) is None, f"{k}/{g}: {tg.failed_closed(recs, g)}")
        for i in range(3):
            name = f"m{i}"
            dev = [r for r in recs if r.get("t") == "device" and r.get("group") == g and r.get("name") == name]
            rng = {r["offset"]: r for r in recs if r.get("t") == "range" and r.get("group") == g
                   and r.get("name") == name}
            ok &= check(len(dev) == 1 and dev[0].get("sha256") == dev_sha[i],
                        f"{k}/{g}/{name}: device read {dev}, the layer file's data part hashes {dev_sha[i]}")
            ok &= check(len(rng) == len(ranges[i]), f"{k}/{g}/{name}: {len(rng)} ranges read, {len(ranges[i])} "
                                                    f"expected")
            for path, off, n, h in ranges[i]:
                ok &= check(rng.get(off, {}).get("sha256") == h, f"{k}/{g}/{name}: {path} at {off}: {rng.get(off)}")
        if ok:
            log(f"  ok {k}/{g}: each of the daemon's 3 tarfs layers: the verity device reads back whole and equals "
                f"the layer file's data part; {sum(len(r) for r in ranges)} file ranges hash as on the host")
        if flip_ok:
            g = "tardev-flip"
            dev = [r for r in recs if r.get("t") == "device" and r.get("group") == g]
            rng = {r["offset"]: r for r in recs if r.get("t") == "range" and r.get("group") == g}
            ok = check(len(dev) == 1 and dev[0].get("error") == "EIO", f"{k}/{g}: the full read should fail: {dev}")
            ok &= check(len(rng) == len(ranges[2]), f"{k}/{g}: {len(rng)} ranges read, {len(ranges[2])} expected")
            for path, off, n, h in ranges[2]:
                if path.endswith("big.bin"):
                    ok &= check(rng.get(off, {}).get("error") == "EIO", f"{k}/{g}: {path} should read EIO: "
                                                                        f"{rng.get(off)}")
                else:
                    ok &= check(rng.get(off, {}).get("sha256") == h, f"{k}/{g}: {path} should read: {rng.get(off)}")
            if ok:
                log(f"  ok {k}/{g}: a byte flipped in the daemon's bottom layer: usr/lib/big.bin's range reads "
                    f"EIO, the other {len(ranges[2]) - 1} ranges read, the full read fails at "
                    f"{dev[0].get('error_offset')}")
        g = "tardev-badroot"
        fc = tg.failed_closed(recs, g)
        if check(fc is not None, f"{k}/{g}: the layer was served: {[r for r in recs if r.get('group') == g]}"):
            log(f"  ok {k}/{g}: the top layer's option with a wrong root hash: {fc}")
    return judge


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--veritysnapd", default=os.environ.get("VERITYSNAPD"))
    ap.add_argument("--veritysnap", help="the CLI, for `veritysnap pull` (kata-tardev; default: next to "
                                         "--veritysnapd)")
    ap.add_argument("--dialect", choices=sorted(DIALECTS), default="kata-erofs")
    ap.add_argument("--work", required=True)
    ap.add_argument("--kernels", default="stable,backports")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon and containerd state, logs)")
    a = ap.parse_args()
    t0 = time.monotonic()
    tardev = a.dialect == "kata-tardev"
    key = DIALECTS[a.dialect]
    if os.geteuid() != 0:
        log("SKIP: needs root (containerd, loop mounts)")
        return SKIP
    for tool in ("containerd", "ctr"):
        if not shutil.which(tool):
            log(f"SKIP: {tool} is not installed")
            return SKIP
    why = tg.qemu_skip_reason()
    if why:
        log("SKIP: " + why)
        return SKIP
    if not a.veritysnapd or not os.access(a.veritysnapd, os.X_OK):
        log(f"SKIP: no veritysnapd: {a.veritysnapd}")
        return SKIP
    veritysnap = a.veritysnap or os.path.join(os.path.dirname(os.path.abspath(a.veritysnapd)), "veritysnap")
    if tardev and not os.access(veritysnap, os.X_OK):
        log(f"SKIP: no veritysnap CLI: {veritysnap}")
        return SKIP
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    kernels = [k for k in a.kernels.split(",") if k]
    sfx = "-tardev" if tardev else ""
    # the kernels and initramfs are built (or found cached) while containerd unpacks
    builder = subprocess.Popen(["bash", os.path.join(HERE, "build-initramfs.sh"), work, *kernels])

    tmp = tempfile.mkdtemp(prefix="vsguestd.", dir="/tmp")
    os.chmod(tmp, 0o711)
    sock, vsock = os.path.join(tmp, "c.sock"), os.path.join(tmp, a.dialect + ".sock")
    daemon = containerd = None
    ctx = {"tmp": tmp, "work": work, "sock": sock, "veritysnap": veritysnap, "t0": t0, "host_mps": [],
           "disks": tg.Disks(), "groups": []}
    ok = False

    def ctr(*args, check=True):
        return run(["ctr", "-a", sock, "-n", NS] + list(args), check=check)
    ctx["ctr"] = ctr

    try:
        # 1. daemon, containerd, image
        vcfg = os.path.join(tmp, "veritysnap.toml")
        with open(vcfg, "w") as f:   # verity = off: the host kernel has no dm-verity; the layer files still get trees
            f.write(f'root = "{tmp}/vs"\nverity = "off"\nlog_level = "debug"\n\n'
                    f'[[listen]]\naddress = "{vsock}"\ndialect = "{a.dialect}"\n')
        # kata-tardev: tarfs forms come from the layer blobs in the test containerd's content store (blob path)
        daemon = Proc("veritysnapd", [a.veritysnapd, "--config", vcfg] +
                      (["--containerd-address", sock] if tardev else []), os.path.join(tmp, "veritysnapd.log"))
        wait_for(lambda: os.path.exists(vsock) and stat.S_ISSOCK(os.stat(vsock).st_mode), "socket " + vsock, daemon)
        containerd = start_containerd(tmp, sock, [(key, vsock)])
        d = os.path.join(work, "daemon" + sfx + "-layers")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tars = tg.make_layers(d)
        archive = os.path.join(d, "image.tar")
        diff_ids = oci_archive(tars, archive)
        ctx.update(d=d, tars=tars, archive=archive, diff_ids=diff_ids, top=chain_ids(diff_ids)[-1])
        judge = (tardev_setup if tardev else erofs_setup)(ctx)

        # 4. the guest
        kernels = tg.built_kernels(work, kernels, builder.wait())
        if not kernels:
            raise Fail("no kernel to boot")
        disks = ctx["disks"]
        config = os.path.join(work, f"guest-config-daemon{sfx}.json")
        text = json.dumps({"groups": ctx["groups"]}, indent=1).encode()
        with open(config, "wb") as f:
            f.write(text + b"\0" * (4096 - len(text) % 4096))
        t_boot0 = time.monotonic()
        runs = {k: tg.boot(os.path.join(work, k), disks, config, os.path.join(work, f"serial-daemon{sfx}-{k}.log"),
                           a.timeout) for k in kernels}
        times = tg.wait_guests(runs)
        for k in kernels:
            logpath = os.path.join(work, f"serial-daemon{sfx}-{k}.log")
            recs = tg.parse_serial(logpath)
            bootrec = [r for r in recs if r.get("t") == "boot"]
            log(f"== {k}: kernel {bootrec[0]['kernel'] if bootrec else '?'}, boot+run {times[k]:.1f}s, "
                f"serial log {logpath}")
            if not tg.finished(k, recs, logpath):
                continue
            for r in recs:
                if r.get("t") in ("insmod", "fatal", "garbled"):
                    log(f"  {k}: {r}")
            judge(k, recs)

        # 5. clean up
        ctr("snapshots", "--snapshotter", key, "rm", "ctr-guest")
        ctr("images", "rm", "--sync", IMAGE)
        rc = containerd.stop()
        containerd = None
        rc = daemon.stop()
        daemon = None
        check(rc == 0, f"veritysnapd exited {rc} on SIGTERM")
        log(f"timing: {'pull' if tardev else 'import'} {ctx['t_import']:.1f}s, boots " +
            ", ".join(f"{k} {t:.1f}s" for k, t in times.items()) +
            f" (from {time.monotonic() - t_boot0:.1f}s), total {time.monotonic() - t0:.1f}s")
        if failures:
            log(f"{len(failures)} check(s) failed")
            return 1
        ok = True
        log(f"PASS: the daemon's {a.dialect} mounts boot in the child VM")
        return 0
    except Fail as e:
        log(f"FAIL: {e}")
        for p in (daemon, containerd):
            if p is not None:
                log(f"--- {p.name} log (tail)\n" + p.tail(40))
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        if builder.poll() is None:
            builder.wait()
        for p in (containerd, daemon):
            if p is not None:
                p.stop()
        for mp in sorted(set(ctx["host_mps"]) | set(mounts_under(tmp)), key=len, reverse=True):
            run(["umount", "-l", mp], check=False)
        if ok or not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"state left in {tmp}")


if __name__ == "__main__":
    sys.exit(main())
