#!/usr/bin/env python3
"""Child-VM test on the mounts the DAEMON returned: veritysnapd's kata-erofs socket behind Debian's containerd 1.6.

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
Usage (root): test_guest_daemon.py --veritysnapd PATH --work DIR [--kernels stable,backports] [--keep]
Exit 0 pass, 1 fail, 77 cannot run here (not root, containerd/ctr/qemu missing, no daemon).
"""
import argparse
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
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import mounts as dialect_mounts  # noqa: E402
import test_guest as tg  # noqa: E402
from test_e2e import Fail, Proc, mounts_under, run, wait_for  # noqa: E402

SKIP = 77
NS = "vsguest"
BASE = "docker.io/library/veritysnap-guest"
IMAGE = BASE + ":1"
KEY = "veritysnap-kata"
log = tg.log
check = tg.check


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--veritysnapd", default=os.environ.get("VERITYSNAPD"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--kernels", default="stable,backports")
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon and containerd state, logs)")
    a = ap.parse_args()
    t0 = time.monotonic()
    if os.geteuid() != 0:
        log("SKIP: needs root (containerd, loop mounts)")
        return SKIP
    for tool in ("containerd", "ctr", "qemu-system-x86_64"):
        if not shutil.which(tool):
            log(f"SKIP: {tool} is not installed")
            return SKIP
    r = subprocess.run(["qemu-system-x86_64", "-accel", "help"], capture_output=True, text=True)
    if r.returncode != 0 or "tcg" not in r.stdout:
        log(f"SKIP: qemu-system-x86_64 cannot run TCG: {r.stdout}{r.stderr}")
        return SKIP
    if not a.veritysnapd or not os.access(a.veritysnapd, os.X_OK):
        log(f"SKIP: no veritysnapd: {a.veritysnapd}")
        return SKIP
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    kernels = [k for k in a.kernels.split(",") if k]
    # the kernels and initramfs are built (or found cached) while containerd unpacks
    builder = subprocess.Popen(["bash", os.path.join(HERE, "build-initramfs.sh"), work, *kernels])

    tmp = tempfile.mkdtemp(prefix="vsguestd.", dir="/tmp")
    os.chmod(tmp, 0o711)
    sock, vsock = os.path.join(tmp, "c.sock"), os.path.join(tmp, "kata-erofs.sock")
    daemon = containerd = None
    host_mps = []
    ok = False

    def ctr(*args, check=True):
        return run(["ctr", "-a", sock, "-n", NS] + list(args), check=check)

    try:
        # 1. daemon, containerd, image
        vcfg = os.path.join(tmp, "veritysnap.toml")
        with open(vcfg, "w") as f:   # verity = off: the host kernel has no dm-verity; the layer files still get trees
            f.write(f'root = "{tmp}/vs"\nverity = "off"\nlog_level = "debug"\n\n'
                    f'[[listen]]\naddress = "{vsock}"\ndialect = "kata-erofs"\n')
        daemon = Proc("veritysnapd", [a.veritysnapd, "--config", vcfg], os.path.join(tmp, "veritysnapd.log"))
        wait_for(lambda: os.path.exists(vsock) and stat.S_ISSOCK(os.stat(vsock).st_mode), "socket " + vsock, daemon)
        ccfg = os.path.join(tmp, "containerd.toml")
        with open(ccfg, "w") as f:
            f.write(f"""version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"
[proxy_plugins.{KEY}]
  type = "snapshot"
  address = "{vsock}"
""")
        containerd = Proc("containerd", ["containerd", "--config", ccfg], os.path.join(tmp, "containerd.log"))
        wait_for(lambda: os.path.exists(sock) and ctr("version", check=False).returncode == 0, "containerd",
                 containerd)
        d = os.path.join(work, "daemon-layers")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tars = tg.make_layers(d)
        want = tg.expected_root(containerd_semantics(tars, d))
        with open(os.path.join(work, "expected-daemon.json"), "w") as f:
            json.dump(want, f, indent=1, sort_keys=True)
        archive = os.path.join(d, "image.tar")
        diff_ids = oci_archive(tars, archive)
        ctr("images", "import", "--base-name", BASE, "--snapshotter", KEY, archive)
        t_import = time.monotonic() - t0

        # 2. a container snapshot on the kata-erofs socket, and its mounts
        top = chain_ids(diff_ids)[-1]
        ctr("snapshots", "--snapshotter", KEY, "prepare", "ctr-guest", top)
        text = ctr("snapshots", "--snapshotter", KEY, "mounts", "/mnt/x", "ctr-guest").stdout
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
        host_root = host.pop(".")
        for mp in reversed(host_mps):
            run(["umount", mp])
        host_mps = []
        if check(host == want, "host overlay of the daemon's layer files differs from the tar semantics:\n" +
                 "\n".join(diff(host, want, "host", "expected"))):
            log(f"  ok host: overlay of the daemon's {len(layers)} erofs layer files = expected root "
                f"({len(want) + 1} entries)")
        host["."] = host_root

        # 4. the guest
        rc = builder.wait()
        for k in kernels:
            check(os.path.exists(os.path.join(work, k, "ok")), f"kernel {k}: build-initramfs.sh could not build it "
                                                               f"(exit {rc}; see its messages above)")
        kernels = [k for k in kernels if os.path.exists(os.path.join(work, k, "ok"))]
        if not kernels:
            raise Fail("no kernel to boot")
        disks = tg.Disks()
        groups = [tg.group_from_mounts("daemon", mlist, disks)]
        # tampering with the daemon's files: a data byte of usr/lib/big.bin (bottom layer), a wrong root hash (top)
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
        config = os.path.join(work, "guest-config-daemon.json")
        text = json.dumps({"groups": groups}, indent=1).encode()
        with open(config, "wb") as f:
            f.write(text + b"\0" * (4096 - len(text) % 4096))
        t_boot0 = time.monotonic()
        runs = {k: tg.boot(os.path.join(work, k), disks, config, os.path.join(work, f"serial-daemon-{k}.log"),
                           a.timeout) for k in kernels}
        times = {}
        while len(times) < len(runs):
            for k, (p, logf, start, timeout, _) in runs.items():
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
        for k in kernels:
            logpath = os.path.join(work, f"serial-daemon-{k}.log")
            recs = tg.parse_serial(logpath)
            bootrec = [r for r in recs if r.get("t") == "boot"]
            log(f"== {k}: kernel {bootrec[0]['kernel'] if bootrec else '?'}, boot+run {times[k]:.1f}s, "
                f"serial log {logpath}")
            if not check(any(r.get("t") == "done" for r in recs), f"{k}: the guest program did not finish"):
                with open(logpath, "rb") as f:
                    log(f.read().decode("utf-8", "replace")[-4000:])
                continue
            for r in recs:
                if r.get("t") in ("insmod", "fatal", "garbled"):
                    log(f"  {k}: {r}")
            g = "daemon"
            fc = tg.failed_closed(recs, g)
            if check(fc is None, f"{k}/{g}: {fc}"):
                got = tg.manifest_of(recs, g)
                if tg.compare_manifest(k, g, got, want):
                    log(f"  ok {k}/{g}: the daemon's kata-erofs mounts give the expected root filesystem "
                        f"({len(want) + 1} entries)")
                got.pop(".", None)
                hm = dict(host)
                hm.pop(".")
                if check(got == hm, f"{k}/{g}: guest and host walks differ:\n" + "\n".join(diff(got, hm, "guest",
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

        # 5. clean up
        ctr("snapshots", "--snapshotter", KEY, "rm", "ctr-guest")
        ctr("images", "rm", "--sync", IMAGE)
        rc = containerd.stop()
        containerd = None
        rc = daemon.stop()
        daemon = None
        check(rc == 0, f"veritysnapd exited {rc} on SIGTERM")
        log(f"timing: import {t_import:.1f}s, boots " + ", ".join(f"{k} {t:.1f}s" for k, t in times.items()) +
            f" (from {time.monotonic() - t_boot0:.1f}s), total {time.monotonic() - t0:.1f}s")
        if tg.failures:
            log(f"{len(tg.failures)} check(s) failed")
            return 1
        ok = True
        log("PASS: the daemon's kata-erofs mounts boot in the child VM")
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
        for mp in sorted(set(host_mps) | set(mounts_under(tmp)), key=len, reverse=True):
            run(["umount", "-l", mp], check=False)
        if ok or not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"state left in {tmp}")


if __name__ == "__main__":
    sys.exit(main())
