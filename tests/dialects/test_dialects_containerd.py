#!/usr/bin/env python3
"""The Kata dialects through a real containerd 1.6: one veritysnapd, three sockets over one store
([[listen]] dialect = host / kata-erofs / kata-tardev, registered as veritysnap / veritysnap-kata / veritysnap-tardev).

  1. `ctr images import --snapshotter veritysnap-kata` unpacks (containerd's extract-... snapshots get host mounts,
     or the walking differ could not write into them) and so does `--snapshotter veritysnap`
  2. `ctr snapshots --snapshotter veritysnap-kata prepare/mounts` of a container snapshot prints the kata-erofs
     mounts: one `erofs` per layer (topmost first) with [ro, loop, X-containerd.dmverity=<layer>.dmverity], whose
     sidecar exists, then `format/mkdir/overlay` with workdir, upperdir, lowerdir={{ overlay 0 N-1 }}
  3. the same through the host socket prints one host `overlay`
  4. kata-tardev: the image unpacks (extract keys: host mounts), and a container snapshot is refused with
     FAILED_PRECONDITION naming the blob path (ctr import carries no cri.layer-digest, so no layer has a tarfs file)
  5. everything removed, containerd and the daemon stopped (exit 0), nothing mounted under the temp dir
Usage (root): test_dialects_containerd.py --veritysnapd PATH. Exit 0 pass, 1 fail, 77 cannot run here.
"""
import argparse
import os
import shutil
import stat
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from vstest import Fail, Proc, log, mounts_under, run, skip, start_containerd, wait_for  # noqa: E402

NS = "vsdialect"
IMAGE = "docker.io/library/veritysnap-dialect:1"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--veritysnapd", default=os.environ.get("VERITYSNAPD"))
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--keep", help="keep the temp dir (logs) on failure")
    args = ap.parse_args()
    if os.geteuid() != 0:
        skip("needs root (containerd, mounts)")
    for tool in ("containerd", "ctr"):
        if not shutil.which(tool):
            skip("%s is not installed (Debian: containerd)" % tool)
    if not args.veritysnapd or not os.access(args.veritysnapd, os.X_OK):
        skip("no veritysnapd: %s" % args.veritysnapd)
    if not os.path.isfile(args.busybox):
        skip("a static busybox is needed at %s (Debian: busybox-static)" % args.busybox)

    tmp = tempfile.mkdtemp(prefix="vsdia.", dir="/tmp")
    os.chmod(tmp, 0o711)
    sock = os.path.join(tmp, "c.sock")
    socks = {d: os.path.join(tmp, "%s.sock" % d) for d in ("host", "kata-erofs", "kata-tardev")}
    keys = {"host": "veritysnap", "kata-erofs": "veritysnap-kata", "kata-tardev": "veritysnap-tardev"}
    daemon = containerd = None
    ok = False

    def ctr(*a, check=True, ns=NS):
        return run(["ctr", "-a", sock, "-n", ns] + list(a), check=check)

    def sctr(d, *a, check=True):
        """ctr in the dialect's own namespace (containerd 1.6 cannot unpack one image into two snapshotters of
        one namespace)."""
        return ctr(*a, check=check, ns="%s-%s" % (NS, d))

    try:
        vcfg = os.path.join(tmp, "veritysnap.toml")
        with open(vcfg, "w") as f:
            f.write('root = "%s/vs"\nverity = "off"\nlog_level = "debug"\n' % tmp)
            for d, s in socks.items():
                f.write('\n[[listen]]\naddress = "%s"\ndialect = "%s"\n' % (s, d))
        daemon = Proc("veritysnapd", [args.veritysnapd, "--config", vcfg], os.path.join(tmp, "veritysnapd.log"))
        for s in socks.values():
            wait_for(lambda s=s: os.path.exists(s) and stat.S_ISSOCK(os.stat(s).st_mode), "socket " + s, daemon)

        containerd = start_containerd(tmp, sock, [(key, socks[d]) for d, key in keys.items()], debug=True)

        image_tar = os.path.join(tmp, "image.tar")
        run([sys.executable, os.path.join(HERE, "..", "e2e", "make_image.py"), image_tar, IMAGE,
             "--busybox", args.busybox])

        # 1. unpack through every socket: the extract snapshots get host mounts
        for d in ("kata-erofs", "host", "kata-tardev"):
            log("import through %s" % keys[d])
            sctr(d, "images", "import", "--snapshotter", keys[d], image_tar)

        def top_chain(d):
            key = keys[d]
            out = sctr(d, "snapshots", "--snapshotter", key, "ls").stdout.splitlines()[1:]
            rows = [line.split() for line in out if line.strip()]
            committed = [r[0] for r in rows if r[-1] == "Committed"]
            parents = {r[1] for r in rows if len(r) == 3}
            tops = [c for c in committed if c not in parents]
            if len(tops) != 1:
                raise Fail("expected one top layer in %s, got %s" % (key, rows))
            return tops[0], len(committed)

        # 2. kata-erofs mounts of a container snapshot
        top, n = top_chain("kata-erofs")
        sctr("kata-erofs", "snapshots", "--snapshotter", keys["kata-erofs"], "prepare", "ctr-k", top)
        out = sctr("kata-erofs", "snapshots", "--snapshotter", keys["kata-erofs"], "mounts", "/mnt/x", "ctr-k").stdout
        log("kata-erofs mounts:\n" + out)
        lines = [line.split() for line in out.strip().splitlines()]
        if len(lines) != n + 1:
            raise Fail("expected %d erofs mounts and an overlay, got:\n%s" % (n, out))
        for parts in lines[:n]:
            if parts[:2] != ["mount", "-t"] or parts[2] != "erofs" or parts[5] != "-o":
                raise Fail("not an erofs mount line: %s" % parts)
            src, opts = parts[3], parts[6].split(",")
            if not src.startswith(tmp + "/vs/layers/") or not os.path.isfile(src):
                raise Fail("erofs source %s is not a layer file of the store" % src)
            if opts != ["ro", "loop", "X-containerd.dmverity=%s.dmverity" % src]:
                raise Fail("erofs options %s" % opts)
            if not os.path.isfile(src + ".dmverity"):
                raise Fail("no sidecar %s.dmverity" % src)
        parts = lines[n]
        if parts[2:4] != ["format/mkdir/overlay", "overlay"]:
            raise Fail("last mount is not format/mkdir/overlay: %s" % parts)
        opts = " ".join(parts[6:]).split(",")  # "{{ overlay 0 3 }}" has spaces
        if len(opts) != 3 or not opts[0].startswith("workdir=" + tmp + "/vs/snapshots/") \
                or not opts[1].startswith("upperdir=" + tmp + "/vs/snapshots/") \
                or opts[2] != "lowerdir={{ overlay 0 %d }}" % (n - 1):
            raise Fail("overlay options %s" % opts)

        # 3. the host socket: a plain overlay of host-mounted layers
        htop, _ = top_chain("host")
        sctr("host", "snapshots", "--snapshotter", keys["host"], "prepare", "ctr-h", htop)
        out = sctr("host", "snapshots", "--snapshotter", keys["host"], "mounts", "/mnt/x", "ctr-h").stdout
        log("host mounts:\n" + out)
        if len(out.strip().splitlines()) != 1 or not out.startswith("mount -t overlay overlay"):
            raise Fail("host socket: expected one overlay mount:\n" + out)

        # 4. kata-tardev: refused without tarfs layers, with the reason
        ttop, _ = top_chain("kata-tardev")
        p = sctr("kata-tardev", "snapshots", "--snapshotter", keys["kata-tardev"], "prepare", "ctr-t", ttop, check=False)
        log("kata-tardev prepare: exit %d: %s" % (p.returncode, p.stderr.strip()))
        if p.returncode == 0 or "failed precondition" not in p.stderr.lower() or "cri.layer-digest" not in p.stderr:
            raise Fail("kata-tardev without tarfs layers should fail with FAILED_PRECONDITION naming "
                       "cri.layer-digest:\n" + p.stdout + p.stderr)

        # 5. clean up
        for d, k in (("kata-erofs", "ctr-k"), ("host", "ctr-h")):
            sctr(d, "snapshots", "--snapshotter", keys[d], "rm", k)
        for d in keys:
            sctr(d, "images", "rm", "--sync", IMAGE)
        rc = containerd.stop()
        containerd = None
        if rc not in (0, None):
            log("containerd exited %s" % rc)
        rc = daemon.stop()
        daemon = None
        if rc != 0:
            raise Fail("veritysnapd exited %s on SIGTERM" % rc)
        # the daemon keeps host layer mounts across restarts by design; unmount what is left under our temp dir
        left = mounts_under(tmp)
        for mp in sorted(left, key=len, reverse=True):
            run(["umount", mp], check=False)
        ok = True
        print("PASS: kata dialects through containerd 1.6", flush=True)
        return 0
    except Fail as e:
        print("FAIL: %s" % e, flush=True)
        if daemon is not None:
            print("--- veritysnapd log (tail)\n" + daemon.tail(40), flush=True)
        if containerd is not None:
            print("--- containerd log (tail)\n" + containerd.tail(40), flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        for p in (containerd, daemon):
            if p is not None:
                p.stop()
        for mp in sorted(mounts_under(tmp), key=len, reverse=True):
            run(["umount", "-l", mp], check=False)
        if ok or not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("state left in %s" % tmp)


if __name__ == "__main__":
    sys.exit(main())
