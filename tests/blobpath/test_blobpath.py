#!/usr/bin/env python3
"""The blob path end to end: Debian's containerd 1.6 + runc + veritysnapd (with --containerd-address) + `veritysnap pull`.

Usage (as root): test_blobpath.py --veritysnapd PATH --veritysnap PATH [--commit-client PATH] [--big-mib N]
                                  [--keep DIR] [--workdir DIR]

Reuses tests/e2e (make_image.py for the images, test_e2e.py's manifest helpers) and tests/lib/vstest.py (processes,
containerd). Images come from OCI archives (`veritysnap pull --oci-archive`), and in step 8 from Debian's
docker-registry. The daemon serves two sockets (dialects host and kata-tardev, plugins veritysnap and
veritysnap-tardev).
  1. image A (4 layers: gzip with a --big-mib file, plain tar, zstd, gzip) and image B (A's first 3 layers, its own
     config), their blobs imported first (ctr import --no-unpack): both pulled at once into namespace ns1: every
     layer converted from its blob (the daemon's "layer converted" lines all say source=blob, directory_conversions
     stays 0), each shared layer converted exactly once, a Prepare of the shared first layer waited for the other's
     conversion and got ALREADY_EXISTS
  2. each layer's root hash (the snapshot label, and the store) equals `veritysnap convert` of the layer blob, the
     layer file is byte-identical to convert's output, and equals `veritysnap image roothash` of the archive
  3. `ctr run --snapshotter veritysnap` of A: its root filesystem equals the overlayfs snapshotter's (same image,
     imported with `ctr images import --snapshotter overlayfs`)
  4. a second pull of A does nothing and says so
  5. namespace ns2: A pulled again works (container runs)
  7. kata-tardev (a second socket of the same daemon, plugin veritysnap-tardev): `veritysnap pull --snapshotter
     veritysnap-tardev` of A (its layers already converted to erofs: their tarfs forms are added from the blobs) and
     of E (fresh layers: erofs and tarfs from the blob at Prepare); `ctr snapshots prepare/mounts` of a container
     snapshot prints the fuse3.kata-overlay options; each tarfs file is byte-identical to `veritysnap convert
     --format tarfs` of its blob and its root hash equals the one in the options
  8. a real registry: Debian's docker-registry on 127.0.0.1 fed by skopeo (from an OCI archive), `veritysnap pull
     --plain-http 127.0.0.1:PORT/...` of an image with a fresh first layer, `ctr run --snapshotter veritysnap` of it,
     a second pull that does nothing and says so (skipped with a note when docker-registry or skopeo is missing)
  9. Commit from the blob (CRI's order: Prepare while the blob is absent, then the blob is fetched, then Commit),
     driven straight over gRPC by blob_commit_client (--commit-client): two layers of a fresh image; each committed
     layer row has source 'blob', its blob digest and diff ID, and its file equals `veritysnap convert` of the blob
  6. image C: A with a wrong diff ID for layer 2 in its config: pull fails, the error names the layer, nothing
     committed for it; image D (a distinct first layer) whose blob is corrupted on disk in containerd's content
     store: Prepare fails naming the layer, nothing committed
Exit 0 pass, 1 fail, 77 cannot run here.
"""
import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import test_e2e as e2e  # noqa: E402
from vstest import Fail, Proc, log, mounts_under, run, skip, start_containerd, wait_for  # noqa: E402
PLUGIN = "veritysnap"
TARDEV = "veritysnap-tardev"
TARDEV_PREFIX = "/var/lib/containerd/io.containerd.snapshotter.v1.tardev/layers"
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
        self.tardev_sock = os.path.join(self.tmp, "vs-tardev.sock")
        self.runc_root = os.path.join(self.tmp, "runc")
        self.containerd = self.daemon = None
        self.failures = []

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
            log("FAIL: " + msg)

    def ctr(self, ns, *a, check=True, timeout=300):
        return run(["ctr", "-a", self.sock, "-n", ns] + list(a), check=check, timeout=timeout)

    def pull(self, ns, archive, name, check=True, snapshotter=PLUGIN):
        return run([self.args.veritysnap, "pull", "--namespace", ns, "--containerd-address", self.sock,
                    "--snapshotter", snapshotter, "--oci-archive", archive, "--name", name], check=check, timeout=900)

    def start(self):
        cfg = os.path.join(self.tmp, "veritysnap.toml")
        with open(cfg, "w") as f:
            f.write('tardev_layer_src_prefix = "%s"\n\n' % TARDEV_PREFIX)
            f.write('[[listen]]\naddress = "%s"\ndialect = "host"\n\n[[listen]]\naddress = "%s"\n'
                    'dialect = "kata-tardev"\n' % (self.vs_sock, self.tardev_sock))
        self.daemon = Proc("veritysnapd", [self.args.veritysnapd, "--config", cfg, "--root", self.vs_root,
                                           "--verity", "off", "--containerd-address", self.sock],
                           os.path.join(self.tmp, "veritysnapd.log"))
        for s in (self.vs_sock, self.tardev_sock):
            wait_for(lambda s=s: os.path.exists(s), "the daemon's socket " + s, self.daemon)
        self.containerd = start_containerd(self.tmp, self.sock, [(PLUGIN, self.vs_sock), (TARDEV, self.tardev_sock)],
                                           debug=True)

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
                               "docker.io/library/vsblob-a:1", "--busybox", self.args.busybox, "--variant", "a",
                               "--big-mib", str(self.args.big_mib)]).stdout)
        files = read_archive(a_tar)
        index = json.loads(files["index.json"])
        man = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
        a = {"name": info["name"], "layers": [l["digest"] for l in man["layers"]], "chain_ids": info["chain_ids"]}
        b_tar = os.path.join(self.tmp, "b.tar")
        b = derive_image(a_tar, b_tar, "docker.io/library/vsblob-b:1", keep=3)
        self.start()

        # 1. two images sharing three layers (the first one large), pulled at once; the blobs are in the content
        # store already (ctr import --no-unpack), so that both unpacks reach the shared layer at the same moment
        for tar in (a_tar, b_tar):
            self.ctr("ns1", "images", "import", "--no-unpack", tar, timeout=600)
        log("pulling A and B at once into ns1 (shared first layer of %d MiB)" % self.args.big_mib)
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
        conv = [c for c in self.conversions() if c.get("format", "erofs") == "erofs"]
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
        waits = [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)) for line in self.daemon_log().splitlines()
                 if "waiting for the conversion of this layer" in line]
        waited = {w.get("chain_id", "").strip('"') for w in waits}
        self.check(a["chain_ids"][0] in waited,
                   "no Prepare waited for the shared first layer's conversion (waits: %s)" % sorted(waited))
        said = results["a"].stderr + results["b"].stderr
        self.check(said.count("layer 1/") >= 2 and "converted from its blob by the snapshotter" in said,
                   "pull progress: %s" % said)
        log("%d conversions, all from blobs, each layer once; %d Prepare(s) waited for another's conversion"
            % (len(conv), len(waits)))

        # 2. root hashes and layer files against the offline tool
        db = sqlite3.connect(os.path.join(self.vs_root, "state.db"))
        rh_json = json.loads(run([self.args.veritysnap, "image", "roothash", "--oci-archive", a_tar, "-q"]).stdout)
        image_hashes = [l["root_hash"] for l in rh_json["layers"]]
        self.check(len(image_hashes) == len(a["layers"]), "image roothash gave %d layers for %d"
                   % (len(image_hashes), len(a["layers"])))
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
            self.check(i < len(image_hashes) and image_hashes[i] == label,
                       "layer %d: image roothash says %s, the daemon %s"
                       % (i + 1, image_hashes[i] if i < len(image_hashes) else None, label))
        log("root hashes and layer files equal the offline tool's (convert and image roothash)")

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

        # 7. the kata-tardev socket
        self.tardev(a_tar, a, files)

        # 8. a real registry
        self.registry()

        # 9. Commit converting from the blob
        self.commit_from_blob(db)

        # 6a. wrong diff ID in the config
        c_tar = os.path.join(self.tmp, "c.tar")
        c = derive_image(a_tar, c_tar, "docker.io/library/vsblob-c:1", wrong_diff=1)
        p = self.pull("ns3", c_tar, c["name"], check=False)
        msg = p.stdout + p.stderr
        log("pull of C (wrong diff ID): exit %d: %s" % (p.returncode, msg.strip()[-600:]))
        self.check(p.returncode == 1, "pull of an image with a wrong diff ID: exit %d, not 1 (bad input)" % p.returncode)
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
        self.check(p.returncode == 1, "pull over a corrupted blob: exit %d, not 1 (bad input)" % p.returncode)
        self.check(dlayer in msg, "the error does not name the layer blob %s: %s" % (dlayer, msg))
        n = db.execute("SELECT COUNT(*) FROM labels WHERE key = 'containerd.io/snapshot.ref' AND value = ?",
                       (dinfo["chain_ids"][0],)).fetchone()[0]
        self.check(n == 0, "a snapshot of the corrupted layer was committed")
        left = os.listdir(os.path.join(self.vs_root, "tmp"))
        self.check(not left, "files left in the daemon's tmp/: %s" % left)

    def tardev(self, a_tar, a, a_files):
        e_tar = os.path.join(self.tmp, "e.tar")
        einfo = json.loads(run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), e_tar,
                                "docker.io/library/vsblob-e:1", "--busybox", self.args.busybox, "--variant", "8"]).stdout)
        e_files = read_archive(e_tar)
        eman = json.loads(e_files["blobs/sha256/" + json.loads(e_files["index.json"])["manifests"][0]["digest"][7:]])
        e = {"name": einfo["name"], "layers": [l["digest"] for l in eman["layers"]], "chain_ids": einfo["chain_ids"]}
        before = len(self.conversions())
        reads_before = int(self.conversions()[-1]["blob_reads"])
        for img, tar, files in ((a, a_tar, a_files), (e, e_tar, e_files)):
            p = self.pull("ns5", tar, img["name"], snapshotter=TARDEV)
            log("pull %s through %s: %s" % (img["name"], TARDEV, p.stdout.strip()))
            key = "tardev-" + img["name"].rsplit("/", 1)[-1].replace(":", "-")
            self.ctr("ns5", "snapshots", "--snapshotter", TARDEV, "prepare", key, img["chain_ids"][-1])
            out = self.ctr("ns5", "snapshots", "--snapshotter", TARDEV, "mounts", "/mnt/x", key).stdout.strip()
            log("kata-tardev mounts of %s:\n%s" % (key, out))
            parts = out.split()
            if len(out.splitlines()) != 1 or parts[:4] != ["mount", "-t", "fuse3.kata-overlay", "/"] or parts[5] != "-o":
                raise Fail("not one fuse3.kata-overlay mount: %s" % out)
            opts = parts[6].split(",")
            n = len(img["layers"])
            # the configured prefix (AKS's tardev directory, where genpolicy's policies expect the layers)
            prefix = "io.katacontainers.fs-opt.layer-src-prefix=" + TARDEV_PREFIX
            self.check(opts[0] == prefix, "option 1 is %s, not %s" % (opts[0], prefix))
            self.check(len(opts) == n + 3 and opts[n + 1] == "io.katacontainers.fs-opt.overlay-rw",
                       "options %s" % opts)
            names = []
            for i in range(n):
                layer = n - 1 - i  # topmost first
                chain, digest = img["chain_ids"][layer], img["layers"][layer]
                h = hashlib.sha256(chain.encode()).hexdigest()
                names.append(h)
                o = opts[1 + i]
                self.check(o.startswith("io.katacontainers.fs-opt.layer="), "layer option %s" % o)
                plain = base64.b64decode(o.split("=", 1)[1]).decode()
                fields = plain.split(",")
                self.check(fields[:5] == [h, "tar", "ro", "io.katacontainers.fs-opt.block_device=file",
                                          "io.katacontainers.fs-opt.is-layer"] and len(fields) == 6
                           and fields[5].startswith("io.katacontainers.fs-opt.root-hash="),
                           "layer %d option %s" % (layer + 1, plain))
                root = fields[-1].split("=", 1)[1]
                blob = os.path.join(self.tmp, "tblob")
                with open(blob, "wb") as f:
                    f.write(files["blobs/sha256/" + digest[7:]])
                out_file = os.path.join(self.tmp, "convert.tarfs")
                cj = json.loads(run([self.args.veritysnap, "convert", "--format", "tarfs", "--no-sidecar", "-o",
                                     out_file, blob]).stdout)
                self.check(cj["root_hash"] == root, "layer %d: tarfs root hash %s in the options, convert says %s"
                           % (layer + 1, root, cj["root_hash"]))
                with open(os.path.join(self.vs_root, "layers", h), "rb") as f1, open(out_file, "rb") as f2:
                    self.check(f1.read() == f2.read(),
                               "layer %d: the daemon's tarfs file differs from `convert --format tarfs`" % (layer + 1))
                os.unlink(out_file)
            self.check(opts[-1] == "lowerdir=" + ":".join(names), "lowerdir option %s" % opts[-1])
            self.ctr("ns5", "snapshots", "--snapshotter", TARDEV, "rm", key)
        conv = self.conversions()[before:]
        self.check(all(c.get("source") == "blob" for c in conv), "kata-tardev pulls took the directory path: %s" % conv)
        tarfs_n = sum(1 for c in conv if c.get("format") == "tarfs")
        self.check(tarfs_n == len(a["layers"]) + len(e["layers"]), "%d tarfs conversions, expected %d"
                   % (tarfs_n, len(a["layers"]) + len(e["layers"])))
        # One read of each blob: layers new to the store get both forms from the same read, layers the host socket
        # converted already are read once more for their tarfs form.
        erofs_n = sum(1 for c in conv if c.get("format") == "erofs")
        reads = int(conv[-1]["blob_reads"]) - reads_before if conv else 0
        self.check(erofs_n > 0, "no layer new to the store in the kata-tardev pulls: the one-read check is vacuous")
        self.check(reads == tarfs_n, "%d blob reads for %d tarfs and %d erofs conversions (one read each expected)"
                   % (reads, tarfs_n, erofs_n))
        log("kata-tardev: %d tarfs forms from blobs (%d alongside a new erofs form) in %d blob reads; mounts and files "
            "equal the offline tool's" % (tarfs_n, erofs_n, reads))

    def commit_from_blob(self, db):
        if not self.args.commit_client:
            log("NOTE: no --commit-client: Commit from the blob not tested")
            return
        f_tar = os.path.join(self.tmp, "f.tar")
        finfo = json.loads(run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), f_tar,
                                "docker.io/library/vsblob-f:1", "--busybox", self.args.busybox, "--variant", "10"]).stdout)
        ffiles = read_archive(f_tar)
        fman = json.loads(ffiles["blobs/sha256/" + json.loads(ffiles["index.json"])["manifests"][0]["digest"][7:]])
        before = len(self.conversions())
        parent = ""
        for i in range(2):
            digest, chain = fman["layers"][i]["digest"], finfo["chain_ids"][i]
            blob = os.path.join(self.tmp, "fblob-%d" % i)
            with open(blob, "wb") as f:
                f.write(ffiles["blobs/sha256/" + digest[7:]])
            seq = 100 + 2 * i
            p = run([self.args.commit_client, self.vs_sock, self.sock, "ns7", str(seq), parent, chain, digest, blob])
            log("commit client, layer %d: %s" % (i + 1, " / ".join(p.stdout.strip().splitlines())))
            name = "ns7/%d/%s" % (seq + 1, chain)
            rows = db.execute("SELECT l.path, l.source, l.blob_digest, l.diff_id, l.root_hash FROM layers l JOIN "
                              "snapshots s ON s.id = l.snapshot_id WHERE s.key = ? AND l.format = 'erofs'",
                              (name,)).fetchall()
            self.check(len(rows) == 1 and rows[0][1] == "blob" and rows[0][2] == digest,
                       "Commit of layer %d: store rows %s (want source blob, blob digest %s)" % (i + 1, rows, digest))
            out = os.path.join(self.tmp, "fconvert-%d.erofs" % i)
            cj = json.loads(run([self.args.veritysnap, "convert", "-o", out, blob]).stdout)
            if rows:
                self.check(rows[0][3] == cj["diff_id"], "layer %d: diff ID %s, convert says %s"
                           % (i + 1, rows[0][3], cj.get("diff_id")))
                self.check(rows[0][4] == cj["root_hash"], "layer %d: root hash %s, convert says %s"
                           % (i + 1, rows[0][4], cj["root_hash"]))
                with open(os.path.join(self.vs_root, rows[0][0]), "rb") as f1, open(out, "rb") as f2:
                    self.check(f1.read() == f2.read(), "Commit of layer %d: the layer file differs from convert's"
                               % (i + 1))
            parent = name
        conv = self.conversions()[before:]
        self.check(len(conv) == 2 and all(c.get("source") == "blob" for c in conv),
                   "Commit conversions: %s" % conv)
        log("Commit converted both layers from their blobs, files equal convert's")

    def registry(self):
        if not shutil.which("docker-registry") or not shutil.which("skopeo"):
            log("NOTE: docker-registry or skopeo missing: registry pull not tested")
            return
        r_tar = os.path.join(self.tmp, "r.tar")
        rinfo = json.loads(run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), r_tar,
                                "docker.io/library/vsblob-r:1", "--busybox", self.args.busybox, "--variant", "9"]).stdout)
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            port = so.getsockname()[1]
        rdir = os.path.join(self.tmp, "registry")
        os.makedirs(rdir)
        with open(os.path.join(rdir, "config.yml"), "w") as f:
            json.dump({"version": 0.1, "log": {"level": "error"},
                       "storage": {"filesystem": {"rootdirectory": rdir + "/data"}},
                       "http": {"addr": "127.0.0.1:%d" % port, "secret": "test"}}, f)
        self.reg = Proc("docker-registry", ["docker-registry", "serve", os.path.join(rdir, "config.yml")],
                        os.path.join(self.tmp, "registry.log"))

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, "docker-registry", self.reg)
        ref = "127.0.0.1:%d/vsblob/r:1" % port
        run(["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
             "oci-archive:" + r_tar, "docker://" + ref], env=dict(os.environ, HOME=rdir))
        before = len(self.conversions())
        pull = [self.args.veritysnap, "pull", "--namespace", "ns6", "--containerd-address", self.sock, "--snapshotter",
                PLUGIN, "--plain-http", ref]
        p = run(pull, timeout=900)
        log("registry pull: " + p.stdout.strip())
        conv = self.conversions()[before:]
        chains = sorted(c["key"].rsplit("/", 1)[-1] for c in conv)
        self.check(all(c.get("source") == "blob" for c in conv), "registry pull took the directory path: %s" % conv)
        self.check(rinfo["chain_ids"][0] in chains, "the fresh first layer was not converted: %s" % chains)
        p = self.ctr("ns6", "run", "--runc-root", self.runc_root, "--rm", "--snapshotter", PLUGIN, ref, "regc",
                     "/bin/busybox", "cat", "/variant")
        self.check(p.stdout.strip() == "variant 9", "container of the registry image printed %r" % p.stdout)
        p = run(pull, timeout=300)
        self.check("nothing to do" in p.stdout, "second registry pull did not say nothing to do: %s" % p.stdout)
        self.check(len(self.conversions()) == before + len(conv), "second registry pull converted something")
        log("registry: pulled %s, container ran, second pull: %s" % (ref, p.stdout.strip()))
        self.reg.stop()
        self.reg = None

    def stop(self):
        if getattr(self, "reg", None):
            self.reg.stop()
        for p in (self.containerd, self.daemon):
            if p:
                p.stop()
        for mp in sorted(mounts_under(self.tmp), reverse=True):
            run(["umount", "-l", mp], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--veritysnapd", required=True)
    ap.add_argument("--veritysnap", required=True)
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--big-mib", type=int, default=96, help="size of the shared first layer's big file")
    ap.add_argument("--commit-client", help="blob_commit_client (tests/blobpath/blob_commit_client.c)")
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
