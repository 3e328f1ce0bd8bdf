#!/usr/bin/env python3
"""The blob path end to end: Debian's containerd 1.6 + runc + veritysnapd (with --containerd-address) + `veritysnap pull`.

Usage (as root): test_blobpath.py --veritysnapd PATH --veritysnap PATH [--keep DIR] [--workdir DIR]

Reuses tests/e2e (make_image.py for the images, test_e2e.py's process and manifest helpers). Images come from OCI
archives (`veritysnap pull --oci-archive`): the registry client is another issue's; a registry run is in the docs.
  1. image A (4 layers: gzip, plain tar, zstd, gzip) and image B (A's first 3 layers, its own config): both pulled
     at once into namespace ns1: every layer converted from its blob (the daemon's "layer converted" lines all say
     source=blob, directory_conversions stays 0), each shared layer converted exactly once
  2. each layer's root hash (the snapshot label, and the store) equals `veritysnap convert` of the layer blob, the
     layer file is byte-identical to convert's output, and equals `veritysnap image roothash` of the archive
  3. `ctr run --snapshotter veritysnap` of A: its root filesystem equals the overlayfs snapshotter's (same image,
     imported with `ctr images import --snapshotter overlayfs`)
  4. a second pull of A does nothing and says so
  5. namespace ns2: A pulled again works (container runs)
  6. image C: A with a wrong diff ID for layer 2 in its config: pull fails, the error names the layer, nothing
     committed for it; image D (a distinct first layer) whose blob is corrupted on disk in containerd's content
     store: Prepare fails naming the layer, nothing committed
Exit 0 pass, 1 fail, 77 cannot run here.
"""
import argparse
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import test_e2e as e2e  # noqa: E402

Fail, run, log, skip, Proc, wait_for = e2e.Fail, e2e.run, e2e.log, e2e.skip, e2e.Proc, e2e.wait_for
PLUGIN = "veritysnap"
ROOT_HASH_LABEL = "containerd.io/snapshot/veritysnap.root-hash"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_archive(path):
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def write_archive(path, files):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1700000000
            t.addfile(ti, io.BytesIO(data))


def derive_image(src, dst, name, keep=None, wrong_diff=None):
    """An image from src's archive: its first `keep` layers, or layer index `wrong_diff` given a wrong diff ID."""
    files = read_archive(src)
    index = json.loads(files["index.json"])
    man = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    cfg = json.loads(files["blobs/sha256/" + man["config"]["digest"].split(":")[1]])
    if keep:
        man["layers"] = man["layers"][:keep]
        cfg["rootfs"]["diff_ids"] = cfg["rootfs"]["diff_ids"][:keep]
        cfg["history"] = cfg["history"][:keep]
    cfg["config"]["Env"] = ["PATH=/bin", "VERITYSNAP_DERIVED=" + name]
    if wrong_diff is not None:
        cfg["rootfs"]["diff_ids"][wrong_diff] = sha(b"not this layer")
    cb = json.dumps(cfg, sort_keys=True).encode()
    man["config"] = {"mediaType": man["config"]["mediaType"], "digest": sha(cb), "size": len(cb)}
    mb = json.dumps(man, sort_keys=True).encode()
    index["manifests"][0].update(digest=sha(mb), size=len(mb))
    index["manifests"][0]["annotations"] = {"io.containerd.image.name": name,
                                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}
    keep_blobs = {l["digest"] for l in man["layers"]}
    out = {k: v for k, v in files.items() if not k.startswith("blobs/") or "sha256:" + k.split("/")[-1] in keep_blobs}
    out["blobs/sha256/" + sha(cb)[7:]] = cb
    out["blobs/sha256/" + sha(mb)[7:]] = mb
    out["index.json"] = json.dumps(index, sort_keys=True).encode()
    write_archive(dst, out)
    chain = []
    for d in cfg["rootfs"]["diff_ids"]:
        chain.append(d if not chain else sha((chain[-1] + " " + d).encode()))
    return {"name": name, "layers": [l["digest"] for l in man["layers"]], "chain_ids": chain}


class BlobPath:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="vsblob.", dir=args.workdir)
        os.chmod(self.tmp, 0o711)
        self.sock = os.path.join(self.tmp, "c.sock")
        self.vs_root = os.path.join(self.tmp, "vs")
        self.vs_sock = os.path.join(self.tmp, "vs.sock")
        self.runc_root = os.path.join(self.tmp, "runc")
        self.containerd = self.daemon = None
        self.failures = []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
            log("FAIL: " + msg)

    def ctr(self, ns, *a, check=True, timeout=300):
        return run(["ctr", "-a", self.sock, "-n", ns] + list(a), check=check, timeout=timeout)

    def pull(self, ns, archive, name, check=True):
        return run([self.args.veritysnap, "pull", "--namespace", ns, "--containerd-address", self.sock,
                    "--snapshotter", PLUGIN, "--oci-archive", archive, "--name", name], check=check, timeout=900)

    def start(self):
        self.daemon = Proc("veritysnapd", [self.args.veritysnapd, "--root", self.vs_root, "--address", self.vs_sock,
                                           "--verity", "off", "--containerd-address", self.sock],
                           os.path.join(self.tmp, "veritysnapd.log"))
        wait_for(lambda: os.path.exists(self.vs_sock), "the daemon's socket", self.daemon)
        shim = type("S", (), {})()
        shim.tmp, shim.sock, shim.builtin, shim.vs_sock = self.tmp, self.sock, None, self.vs_sock
        shim.ctr = lambda *a, **kw: run(["ctr", "-a", self.sock] + list(a), **kw)
        e2e.E2E.start_containerd(shim)
        self.containerd = shim.containerd

    def daemon_log(self):
        with open(os.path.join(self.tmp, "veritysnapd.log"), errors="replace") as f:
            return f.read()

    def conversions(self):
        out = []
        for line in self.daemon_log().splitlines():
            if 'msg="layer converted"' in line:
                out.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)))
        for d in out:
            for k, v in d.items():
                d[k] = v.strip('"')
        return out

    def snapshot_info(self, ns, chain):
        return json.loads(self.ctr(ns, "snapshots", "--snapshotter", PLUGIN, "info", chain).stdout)

    # ---------------------------------------------------------------------------------------------------------
    def run_all(self):
        a_tar = os.path.join(self.tmp, "a.tar")
        info = json.loads(run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), a_tar,
                               "docker.io/library/vsblob-a:1", "--busybox", self.args.busybox]).stdout)
        files = read_archive(a_tar)
        index = json.loads(files["index.json"])
        man = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
        a = {"name": info["name"], "layers": [l["digest"] for l in man["layers"]], "chain_ids": info["chain_ids"]}
        b_tar = os.path.join(self.tmp, "b.tar")
        b = derive_image(a_tar, b_tar, "docker.io/library/vsblob-b:1", keep=3)
        self.start()

        # 1. two images sharing three layers, pulled at once
        log("pulling A and B at once into ns1")
        results = {}

        def go(key, tar, name):
            results[key] = self.pull("ns1", tar, name, check=False)
        ts = [threading.Thread(target=go, args=(k, t, n)) for k, t, n in (("a", a_tar, a["name"]),
                                                                          ("b", b_tar, b["name"]))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for k, p in results.items():
            if p.returncode != 0:
                raise Fail("pull of %s failed (%d):\n%s\n%s" % (k, p.returncode, p.stdout, p.stderr))
            log("pull %s: %s" % (k, p.stdout.strip()))
        conv = self.conversions()
        self.check(conv and all(c.get("source") == "blob" for c in conv),
                   "not every conversion was from a blob: %s" % conv)
        self.check(all(c.get("directory_conversions") == "0" for c in conv), "directory conversions happened: %s" % conv)
        per_chain = {}
        for c in conv:
            per_chain.setdefault(c["key"].rsplit("/", 1)[-1], []).append(c)
        self.check(sorted(per_chain) == sorted(a["chain_ids"]),
                   "converted chains %s, expected A's %s" % (sorted(per_chain), sorted(a["chain_ids"])))
        self.check(all(len(v) == 1 for v in per_chain.values()),
                   "a layer was converted more than once: %s" % {k: len(v) for k, v in per_chain.items()})
        log("%d conversions, all from blobs, each layer once" % len(conv))

        # 2. root hashes and layer files against the offline tool
        db = sqlite3.connect(os.path.join(self.vs_root, "state.db"))
        rh_json = json.loads(run([self.args.veritysnap, "image", "roothash", "--oci-archive", a_tar, "-q"],
                                 check=False).stdout or "null")
        image_hashes = None
        if isinstance(rh_json, dict) and "layers" in rh_json:
            image_hashes = [l.get("root_hash") for l in rh_json["layers"]]
        elif isinstance(rh_json, list) and rh_json and "layers" in rh_json[0]:
            image_hashes = [l.get("root_hash") for l in rh_json[0]["layers"]]
        for i, (digest, chain) in enumerate(zip(a["layers"], a["chain_ids"])):
            blob = os.path.join(self.tmp, "blob-%d" % i)
            with open(blob, "wb") as f:
                f.write(files["blobs/sha256/" + digest[7:]])
            out = os.path.join(self.tmp, "convert-%d.erofs" % i)
            cj = json.loads(run([self.args.veritysnap, "convert", "-o", out, blob]).stdout)
            label = self.snapshot_info("ns1", chain)["Labels"].get(ROOT_HASH_LABEL)
            row = db.execute("SELECT path, root_hash, source, blob_digest, diff_id FROM layers WHERE blob_digest = ?",
                             (digest,)).fetchall()
            self.check(len(row) == 1 and row[0][2] == "blob", "layer %d: store rows %s" % (i + 1, row))
            self.check(label == cj["root_hash"], "layer %d: root hash label %s, convert says %s"
                       % (i + 1, label, cj["root_hash"]))
            if row:
                with open(os.path.join(self.vs_root, row[0][0]), "rb") as f1, open(out, "rb") as f2:
                    self.check(f1.read() == f2.read(), "layer %d: the daemon's layer file differs from convert's" % (i + 1))
            if image_hashes is not None:
                self.check(image_hashes[i] == label, "layer %d: image roothash says %s, the daemon %s"
                           % (i + 1, image_hashes[i], label))
        log("root hashes and layer files equal the offline tool's%s"
            % ("" if image_hashes is not None else " (image roothash output not parsed)"))

        # 3. container rootfs vs overlayfs
        self.ctr("ovl", "images", "import", "--snapshotter", "overlayfs", a_tar, timeout=600)
        mans = {}
        for ns, sn in (("ns1", PLUGIN), ("ovl", "overlayfs")):
            p = self.ctr(ns, "run", "--runc-root", self.runc_root, "--rm", "--snapshotter", sn, a["name"],
                         "m-" + sn, "/bin/busybox", "sh", "-c", e2e.CONTAINER_SCRIPT, timeout=600)
            mans[sn] = e2e.container_manifest(p.stdout)
        d = e2e.diff_manifests(mans[PLUGIN], mans["overlayfs"], PLUGIN, "overlayfs")
        self.check(not d, "container manifests differ:\n  " + "\n  ".join(d))
        log("container rootfs equals overlayfs's (%d entries)" % len(mans[PLUGIN]))

        # 4. second pull
        p = self.pull("ns1", a_tar, a["name"])
        self.check("nothing to do" in p.stdout, "second pull did not say nothing to do: %s" % p.stdout)
        self.check(len(self.conversions()) == len(conv), "second pull converted something")

        # 5. another namespace
        p = self.pull("ns2", a_tar, a["name"])
        log("pull ns2: " + p.stdout.strip())
        p = self.ctr("ns2", "run", "--runc-root", self.runc_root, "--rm", "--snapshotter", PLUGIN, a["name"], "ns2c",
                     "/bin/busybox", "cat", "/usr/lib/xattr/file")
        log("ns2 container ran")
        self.check(all(c.get("source") == "blob" for c in self.conversions()), "ns2 took the directory path")

        # 6a. wrong diff ID in the config
        c_tar = os.path.join(self.tmp, "c.tar")
        c = derive_image(a_tar, c_tar, "docker.io/library/vsblob-c:1", wrong_diff=1)
        p = self.pull("ns3", c_tar, c["name"], check=False)
        msg = p.stdout + p.stderr
        log("pull of C (wrong diff ID): exit %d: %s" % (p.returncode, msg.strip()[-600:]))
        self.check(p.returncode != 0, "pull of an image with a wrong diff ID succeeded")
        self.check(c["chain_ids"][1] in msg and a["layers"][1] in msg, "the error does not name the layer: %s" % msg)
        n = db.execute("SELECT COUNT(*) FROM labels WHERE key = 'containerd.io/snapshot.ref' AND value = ?",
                       (c["chain_ids"][1],)).fetchone()[0]
        self.check(n == 0, "a snapshot of the bad layer was committed")
        # 6b. a corrupted blob in the content store
        d_tar = os.path.join(self.tmp, "d.tar")
        dinfo = json.loads(run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), d_tar,
                                "docker.io/library/vsblob-d:1", "--busybox", self.args.busybox, "--variant", "7"]).stdout)
        dfiles = read_archive(d_tar)
        dman = json.loads(dfiles["blobs/sha256/" + json.loads(dfiles["index.json"])["manifests"][0]["digest"][7:]])
        dlayer = dman["layers"][0]["digest"]
        self.ctr("ns4", "images", "import", "--no-unpack", d_tar)
        path = os.path.join(self.tmp, "root", "io.containerd.content.v1.content", "blobs", "sha256", dlayer[7:])
        data = bytearray(open(path, "rb").read())
        for off in range(len(data) // 2, len(data) // 2 + 64):
            data[off] ^= 0xff
        with open(path, "wb") as f:
            f.write(data)
        p = self.pull("ns4", d_tar, dinfo["name"], check=False)
        msg = p.stdout + p.stderr
        log("pull of D (corrupted blob): exit %d: %s" % (p.returncode, msg.strip()[-600:]))
        self.check(p.returncode != 0, "pull over a corrupted blob succeeded")
        self.check(dlayer in msg, "the error does not name the layer blob %s: %s" % (dlayer, msg))
        n = db.execute("SELECT COUNT(*) FROM labels WHERE key = 'containerd.io/snapshot.ref' AND value = ?",
                       (dinfo["chain_ids"][0],)).fetchone()[0]
        self.check(n == 0, "a snapshot of the corrupted layer was committed")
        left = os.listdir(os.path.join(self.vs_root, "tmp"))
        self.check(not left, "files left in the daemon's tmp/: %s" % left)

    def stop(self):
        for p in (self.containerd, self.daemon):
            if p:
                p.stop()
        for mp in sorted(e2e.mounts_under(self.tmp), reverse=True):
            run(["umount", "-l", mp], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--veritysnapd", required=True)
    ap.add_argument("--veritysnap", required=True)
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--keep")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if os.geteuid() != 0:
        skip("needs root (containerd, mounts)")
    for tool in ("containerd", "ctr", "runc"):
        if not shutil.which(tool):
            skip("%s is not installed" % tool)
    for b in (args.veritysnapd, args.veritysnap):
        if not os.access(b, os.X_OK):
            skip("%s does not exist (yet)" % b)
    t = BlobPath(args)
    rc = 0
    try:
        t.run_all()
    except Exception as ex:  # noqa: BLE001
        traceback.print_exc()
        t.failures.append("exception: %s" % ex)
    finally:
        try:
            t.stop()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for f in ("veritysnapd.log", "containerd.log"):
                if os.path.exists(os.path.join(t.tmp, f)):
                    shutil.copy(os.path.join(t.tmp, f), args.keep)
    if t.failures:
        print("FAILED:\n  " + "\n  ".join(t.failures))
        rc = 1
    else:
        print("PASS")
        shutil.rmtree(t.tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
