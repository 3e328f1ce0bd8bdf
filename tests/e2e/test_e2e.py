#!/usr/bin/env python3
"""End to end: Debian's containerd 1.6 + runc + veritysnapd as [proxy_plugins.veritysnap].

Usage (as root):
  test_e2e.py --veritysnapd PATH [--keep DIR] [--workdir DIR]
  test_e2e.py --builtin native     (validates the harness: containerd's own `native` snapshotter in place of the
                                    daemon, compared against overlayfs; the daemon-only steps are skipped)

Everything lives under one temp dir (containerd root, state, sockets, config; the daemon's root and socket):
  1. build an OCI image archive (make_image.py: 4 layers, whiteouts, opaque dirs, hardlinks, xattrs, symlinks, ...)
  2. `ctr images import --snapshotter veritysnap` and `--snapshotter overlayfs`; the committed chain is listed by
     `ctr snapshots ls` with the right parents
  3. a read-only view of the top layer of each snapshotter, mounted on the host and walked (types, modes, owners,
     sizes, sha256, mtimes, link targets, xattrs, hardlink groups): identical
  4. restart the daemon (SIGTERM -> exit 0, start again) between unpack and run
  5. a container per snapshotter (`ctr run --rm`) prints a manifest of its root filesystem with busybox
     (find, stat, sha256sum, readlink): identical, and equal to the host-side walk where they overlap
  6. a container writes; the write is in its active snapshot (`ctr snapshots ls/info/usage/mounts`), survives a daemon
     restart and is seen again by a second start of the same container
  7. a running container reads and writes its rootfs across a daemon restart (`ctr task exec`)
  7b. three more images (distinct first layers with 48 MiB of incompressible data) imported at once, while
     `ctr snapshots ls/info/usage` are called in a loop: all unpack, and no call waits behind a conversion
  8. remove the container and the images with `ctr images rm --sync` (synchronous garbage collection): no snapshots
     left in either snapshotter, no layer files, snapshot dirs, loop devices or mounts of the daemon left
  9. stop containerd and the daemon (exit 0); nothing mounted under the temp dir
Exit 0 pass, 1 fail, 77 cannot run here (not root, containerd/ctr/runc/busybox-static missing, no daemon).
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from vstest import Fail, Proc, log, mounts_under, run, skip, start_containerd, wait_for  # noqa: E402,F401

NS = "vse2e"
IMAGE = "docker.io/library/veritysnap-e2e:1"
PLUGIN = "veritysnap"
MOUNTPOINTS = ("/proc", "/sys", "/dev", "/run")  # the runtime mounts over these: compared by presence only


def loops_under(d):
    if not shutil.which("losetup"):
        return []
    p = run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], check=False)
    out = []
    for line in p.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and (parts[1].startswith(d + "/")):
            out.append(line.strip())
    return out


def processes_mentioning(s):
    """pids (not ours) whose command line contains s: the shims our containerd started."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                if s.encode() in f.read():
                    pids.append(int(p))
        except OSError:
            pass
    return pids


# ---------------------------------------------------------------------------------------------------------------
# manifests

def host_manifest(root):
    """Walk a mounted root: {relative path: description}."""
    entries = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames) if dirpath == root else sorted(dirnames + filenames):
            full = os.path.join(dirpath, name) if name else dirpath
            rel = "/" + os.path.relpath(full, root) if full != root else "/"
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            e = {"mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
            if rel != "/":   # the root's mtime is when the snapshot dir was made, not image content
                e["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(fmt):
                e["type"] = "file"
                e["size"] = st.st_size
                e["nlink"] = st.st_nlink
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                e["sha256"] = h.hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISDIR(fmt):
                e["type"] = "dir"
            elif stat.S_ISLNK(fmt):
                e["type"] = "symlink"
                e["target"] = os.readlink(full)
            elif stat.S_ISFIFO(fmt):
                e["type"] = "fifo"
            elif stat.S_ISCHR(fmt) or stat.S_ISBLK(fmt):
                e["type"] = "chr" if stat.S_ISCHR(fmt) else "blk"
                e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                e["type"] = "other %o" % fmt
            try:
                names = sorted(os.listxattr(full, follow_symlinks=False))
            except OSError as ex:
                names = ["<listxattr: %s>" % ex]
            xa = {}
            for n in names:
                try:
                    xa[n] = os.getxattr(full, n, follow_symlinks=False).hex()
                except OSError as ex:
                    xa[n] = "<getxattr: %s>" % ex
            if xa:
                e["xattrs"] = xa
            entries[rel] = e
    for paths in inodes.values():
        for p in paths:
            entries[p]["hardlinks"] = sorted(paths)
    return entries


# Runs inside the container with busybox only. One line per entry: stat fields TAB extra TAB path.
CONTAINER_SCRIPT = r'''
set -e
B=/bin/busybox
$B find / -xdev | $B sort | while IFS= read -r p; do
  case "$p" in
    /proc|/sys|/dev|/run) $B printf 'mountpoint\t\t%s\n' "$p"; continue ;;
  esac
  s=$($B stat -c '%F|%a|%u|%g|%s|%h|%d:%i|%Y' "$p")
  x=
  if [ -L "$p" ]; then x=$($B readlink "$p")
  elif [ -f "$p" ]; then x=$($B sha256sum < "$p" | $B cut -d' ' -f1)
  fi
  $B printf '%s\t%s\t%s\n' "$s" "$x" "$p"
done
echo END-OF-MANIFEST
'''


def container_manifest(text):
    lines = text.splitlines()
    if not lines or lines[-1] != "END-OF-MANIFEST":
        raise Fail("container manifest incomplete:\n" + text[-2000:])
    entries, inodes = {}, {}
    for line in lines[:-1]:
        s, x, p = line.split("\t", 2)
        if s == "mountpoint":
            entries[p] = {"type": "mountpoint"}
            continue
        ftype, mode, uid, gid, size, nlink, ino, mtime = s.split("|")
        e = {"type": ftype, "mode": mode, "uid": uid, "gid": gid}
        if p != "/":
            e["mtime"] = mtime
        if ftype.startswith("regular"):
            e.update(size=size, nlink=nlink, sha256=x)
            if int(nlink) > 1:
                inodes.setdefault(ino, []).append(p)
        elif ftype == "symbolic link":
            e["target"] = x
        elif ftype != "directory":
            e["nlink"] = nlink
        entries[p] = e
    for paths in inodes.values():
        for p in paths:
            entries[p]["hardlinks"] = sorted(paths)
    return entries


def diff_manifests(a, b, na, nb, limit=40, ignore=()):
    """ignore: keys to leave out ("KEY" everywhere, "dir:KEY" on directories only)."""
    def strip(e):
        t = "dir:" if e.get("type") in ("dir", "directory") else "-"
        return {k: v for k, v in e.items() if k not in ignore and t + k not in ignore}
    if ignore:
        a = {p: strip(e) for p, e in a.items()}
        b = {p: strip(e) for p, e in b.items()}
    out = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            out.append("only in %s: %s %s" % (nb, p, b[p]))
        elif p not in b:
            out.append("only in %s: %s %s" % (na, p, a[p]))
        elif a[p] != b[p]:
            keys = sorted(set(a[p]) | set(b[p]))
            d = ", ".join("%s: %s=%r %s=%r" % (k, na, a[p].get(k), nb, b[p].get(k))
                          for k in keys if a[p].get(k) != b[p].get(k))
            out.append("differs %s: %s" % (p, d))
    if len(out) > limit:
        out = out[:limit] + ["... %d more" % (len(out) - limit)]
    return out


def spot_checks(m, who):
    """What the image must look like after its 4 layers, independent of any snapshotter."""
    def has(p, **want):
        if p not in m:
            raise Fail("%s: %s is missing" % (who, p))
        for k, v in want.items():
            if m[p].get(k) != v:
                raise Fail("%s: %s has %s=%r, expected %r" % (who, p, k, m[p].get(k), v))

    def absent(p):
        if p in m:
            raise Fail("%s: %s should not exist (whiteout/opaque), found %s" % (who, p, m[p]))

    has("/bin/busybox", type="file", mode="0755")
    has("/bin/sh", type="symlink", target="busybox")
    absent("/var/lib/gone-file")
    has("/var/lib/gone-dir", type="dir")
    has("/var/lib/gone-dir/fresh", type="file")
    absent("/var/lib/gone-dir/a")
    absent("/var/lib/gone-dir/sub")
    for p in ("old1", "olddir", "new1", "new2", "newdir"):
        absent("/var/lib/opaque/" + p)
    has("/var/lib/opaque/only", type="file")
    has("/var/lib/file-to-dir", type="dir", mode="0700")
    has("/var/lib/file-to-dir/now-a-dir", type="file")
    has("/var/lib/dir-to-file", type="file")
    absent("/var/lib/dir-to-file/inner")
    has("/var/lib/chmod", type="dir", mode="0711", uid=1000, gid=1000)
    has("/var/lib/recreate", type="file", mode="0640", uid=1000)
    has("/usr/lib/modes/setuid", mode="4755")
    has("/usr/lib/modes/setgid", mode="2755")
    has("/usr/lib/modes/sticky", mode="1777")
    has("/tmp", mode="1777")
    # (nlink is not checked here: overlayfs reports the lower inode's count, 3, although hard2 is whited out)
    has("/usr/lib/links/orig", hardlinks=["/usr/lib/links/hard1", "/usr/lib/links/orig"])
    absent("/usr/lib/links/hard2")
    has("/var/lib/hl-link", nlink=2, hardlinks=["/var/lib/hl-link", "/var/lib/hl-target"])
    has("/usr/lib/links/rel", type="symlink", target="hard1")
    has("/usr/lib/links/dangling", type="symlink", target="does/not/exist")
    has("/usr/lib/links/fifo", type="fifo")
    has("/usr/share/names/" + "n" * 255, type="file")
    has("/usr/share/names/ünïcødé-名前", type="file")
    x = m["/usr/lib/xattr/file"].get("xattrs", {})
    if x.get("user.one") != b"1".hex() or x.get("user.two") != b"second value".hex():
        raise Fail("%s: xattrs of /usr/lib/xattr/file: %s" % (who, x))
    if m["/usr/lib/xattr"].get("xattrs", {}).get("user.dir") != b"changed in layer 2".hex():
        raise Fail("%s: xattr user.dir of /usr/lib/xattr: %s" % (who, m["/usr/lib/xattr"].get("xattrs")))
    if "security.capability" not in m["/usr/lib/xattr/cap"].get("xattrs", {}):
        raise Fail("%s: security.capability of /usr/lib/xattr/cap missing: %s" % (who, m["/usr/lib/xattr/cap"]))
    for p, e in m.items():
        if "/.wh." in p or any(k.startswith("trusted.overlay") for k in e.get("xattrs", {})) \
                or e["type"] in ("chr", "blk"):
            raise Fail("%s: whiteout artefact visible in the merged view: %s %s" % (who, p, e))


# ---------------------------------------------------------------------------------------------------------------

class E2E:
    def __init__(self, args):
        self.args = args
        self.builtin = args.builtin
        self.under_test = args.builtin or PLUGIN
        self.tmp = tempfile.mkdtemp(prefix="vse2e.", dir=args.workdir)
        os.chmod(self.tmp, 0o711)
        self.sock = os.path.join(self.tmp, "c.sock")
        self.vs_root = os.path.join(self.tmp, "vs")
        self.vs_sock = os.path.join(self.tmp, "vs.sock")
        self.runc_root = os.path.join(self.tmp, "runc")   # not /run/containerd/runc/<ns>
        self.containerd = None
        self.daemon = None
        self.mounted = []
        self.failures = []
        self.daemon_restarts = 0
        # native copies layers, so a hardlink whited out above keeps no count, and containerd 1.6 applies layers into
        # it through a plain mount (not straight into an overlay upperdir), so directory mtimes differ; overlay-based
        # snapshotters (overlayfs, veritysnap) see the same extracted upper dirs. Only the harness check ignores these.
        self.ignore = ("nlink", "dir:mtime_ns", "dir:mtime") if self.builtin == "native" else ()

    # -- processes
    def start_daemon(self):
        self.daemon = Proc("veritysnapd", [self.args.veritysnapd, "--root", self.vs_root, "--address", self.vs_sock,
                                           "--verity", "off"], os.path.join(self.tmp, "veritysnapd.log"))
        wait_for(lambda: os.path.exists(self.vs_sock) and stat.S_ISSOCK(os.stat(self.vs_sock).st_mode),
                 "the daemon's socket", self.daemon)

    def stop_daemon(self):
        rc = self.daemon.stop()
        if rc != 0:
            raise Fail("veritysnapd did not exit 0 on SIGTERM (status %s):\n%s" % (rc, self.daemon.tail()))

    def restart_daemon(self, why):
        log("restarting veritysnapd (%s)" % why)
        self.stop_daemon()
        self.daemon_restarts += 1
        self.start_daemon()
        # The socket file appears when the daemon binds, a moment before it accepts; and containerd, if it dialled
        # in that window (its snapshot GC does), backs off before dialling again. Ready means containerd gets
        # through, as a node's kubelet retrying would find.
        wait_for(lambda: self.ctr("snapshots", "--snapshotter", PLUGIN, "ls", check=False).returncode == 0,
                 "containerd to reach the restarted daemon", self.daemon)

    def start_containerd(self):
        self.containerd = start_containerd(self.tmp, self.sock, [] if self.builtin else [(PLUGIN, self.vs_sock)],
                                           debug=True)

    def ctr(self, *a, check=True, timeout=300):
        return run(["ctr", "-a", self.sock, "-n", NS] + list(a), check=check, timeout=timeout)

    # -- helpers
    def mount_from_ctr(self, ctr_output, target):
        """Mount what ctr printed: JSON ([{"Type", "Source", "Options"}], `view --mounts`) or the
        `mount -t TYPE SOURCE TARGET -o OPTS` lines of `ctr snapshots mounts`."""
        os.makedirs(target, exist_ok=True)
        text = ctr_output.strip()
        if text.startswith("["):
            mounts = [(m.get("Type", ""), m.get("Source", ""), m.get("Options") or []) for m in json.loads(text)]
        else:
            mounts = []
            for line in text.splitlines():
                parts = line.split()
                if parts[:2] == ["mount", "-t"]:
                    opts = parts[6] if len(parts) > 6 else ""
                    mounts.append((parts[2], parts[3], [o for o in opts.split(",") if o]))
        if len(mounts) != 1:
            raise Fail("expected exactly one mount from ctr, got:\n" + ctr_output)
        typ, src, opts = mounts[0]
        lowers = [o for o in opts if o.startswith("lowerdir=")]
        log("mount for %s: type=%s source=%s, %d lowerdirs%s" % (
            os.path.basename(target), typ, src, lowers[0].count(":") + 1 if lowers else 0,
            ", upperdir" if any(o.startswith("upperdir=") for o in opts) else ""))
        if typ == "bind" or "bind" in opts or "rbind" in opts:
            run(["mount", "--bind", src, target])
            self.mounted.append(target)
            if "ro" in opts:
                run(["mount", "-o", "remount,bind,ro", target])
        else:
            cmd = ["mount", "-t", typ, src, target]
            if opts:
                cmd += ["-o", ",".join(opts)]
            run(cmd)
            self.mounted.append(target)

    def umount(self, target):
        run(["umount", target])
        self.mounted.remove(target)

    def snapshots(self, snapshotter):
        """{key: (parent, kind)} from `ctr snapshots ls`."""
        out = self.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout.splitlines()
        res = {}
        for line in out[1:]:
            f = line.split()
            if len(f) == 3:
                res[f[0]] = (f[1], f[2])
            elif len(f) == 2:
                res[f[0]] = ("", f[1])
        return res

    def check(self, cond, msg):
        if not cond:
            raise Fail(msg)

    # -- steps
    def step_image(self):
        self.image_tar = os.path.join(self.tmp, "image.tar")
        p = run([sys.executable, os.path.join(HERE, "make_image.py"), self.image_tar, IMAGE,
                 "--busybox", self.args.busybox])
        self.image = json.loads(p.stdout)
        self.chain = self.image["chain_ids"]
        log("image built: %d layers (%s)" % (len(self.chain), ", ".join(self.image["layer_media_types"])))

    def step_import(self):
        for sn in (self.under_test, "overlayfs"):
            t0 = time.time()
            self.ctr("images", "import", "--snapshotter", sn, self.image_tar, timeout=600)
            log("imported and unpacked with %s in %.1fs" % (sn, time.time() - t0))
            snaps = self.snapshots(sn)
            parent = ""
            for c in self.chain:
                self.check(c in snaps, "%s: layer %s is not in `ctr snapshots ls`: %s" % (sn, c, snaps))
                self.check(snaps[c] == (parent, "Committed"),
                           "%s: %s is %s, expected parent %r Committed" % (sn, c, snaps[c], parent))
                parent = c
        if not self.builtin:
            files = self.layer_files()
            self.check(len(files) >= len(self.chain),
                       "%d committed layers but %d layer files in %s/layers: %s"
                       % (len(self.chain), len(files), self.vs_root, files))
            log("daemon holds %d layer files" % len(files))
        self.ctr("snapshots", "--snapshotter", self.under_test, "tree")
        info = json.loads(self.ctr("snapshots", "--snapshotter", self.under_test, "info", self.chain[-1]).stdout)
        self.check(info.get("Kind") == "Committed" and info.get("Parent") == self.chain[-2],
                   "ctr snapshots info of the top layer: %s" % info)

    def sync_gc(self):
        """Run containerd's garbage collection now and wait for it (a lease deleted with --sync)."""
        lid = "e2e-gc-%d" % time.monotonic_ns()
        self.ctr("leases", "create", "--id", lid)
        self.ctr("leases", "delete", "--sync", lid, timeout=600)

    def step_host_views(self):
        self.host = {}
        # ctr cannot protect a view from the GC (no lease, no labels at creation): run the GC the imports scheduled
        # first, create both views and label them as GC roots at once, and remove them (a deletion schedules a GC)
        # only when both were walked.
        self.sync_gc()
        views = {}
        for sn in (self.under_test, "overlayfs"):
            key = "hostview-" + sn
            views[sn] = self.ctr("snapshots", "--snapshotter", sn, "view", "--mounts", key, self.chain[-1]).stdout
            self.ctr("snapshots", "--snapshotter", sn, "label", key, "containerd.io/gc.root=e2e")
        for sn in (self.under_test, "overlayfs"):
            target = os.path.join(self.tmp, "mnt-" + sn)
            self.mount_from_ctr(views[sn], target)
            try:
                # a view is read-only
                try:
                    open(os.path.join(target, "should-fail"), "w").close()
                    raise Fail("%s: a view's mount is writable" % sn)
                except OSError:
                    pass
                self.host[sn] = host_manifest(target)
            finally:
                self.umount(target)
        for sn in (self.under_test, "overlayfs"):
            self.ctr("snapshots", "--snapshotter", sn, "rm", "hostview-" + sn)
            spot_checks(self.host[sn], "host view (%s)" % sn)
        d = diff_manifests(self.host[self.under_test], self.host["overlayfs"], self.under_test, "overlayfs",
                           ignore=self.ignore)
        self.check(not d, "host-side walk of the top layer differs:\n  " + "\n  ".join(d))
        log("host views identical (%d entries)" % len(self.host["overlayfs"]))

    def step_containers(self):
        self.cman = {}
        for sn in (self.under_test, "overlayfs"):
            cid = "manifest-" + sn
            p = self.ctr("run", "--runc-root", self.runc_root, "--rm", "--snapshotter", sn, IMAGE, cid, "/bin/busybox", "sh", "-c",
                         CONTAINER_SCRIPT, timeout=600)
            self.cman[sn] = container_manifest(p.stdout)
        d = diff_manifests(self.cman[self.under_test], self.cman["overlayfs"], self.under_test, "overlayfs",
                           ignore=self.ignore)
        self.check(not d, "container manifests differ:\n  " + "\n  ".join(d))
        # the container's view and the host's view agree on names, modes and content
        h, c = self.host["overlayfs"], self.cman["overlayfs"]
        self.check(set(h) == set(c), "container and host walks list different paths: %s"
                   % sorted(set(h) ^ set(c))[:20])
        for p in h:
            if c[p]["type"] == "mountpoint":
                continue
            if ("%o" % int(c[p]["mode"], 8)) != ("%o" % int(h[p]["mode"], 8)) or \
                    c[p].get("sha256") != h[p].get("sha256"):
                raise Fail("container and host disagree on %s: %s vs %s" % (p, c[p], h[p]))
        log("container manifests identical (%d entries)" % len(c))

    def step_writes(self):
        sn = self.under_test
        cid = "writer"
        script = ('B=/bin/busybox; if [ -f /data/marker ]; then $B cat /data/marker; $B sha256sum /data/blob; '
                  'else echo persisted-across-runs > /data/marker; '
                  '$B dd if=/dev/urandom of=/data/blob bs=1024 count=2048 2>/dev/null; $B sha256sum /data/blob; '
                  '$B rm -rf /var/lib/gone-dir /usr/share/sizes/big; $B mkdir -p /new/dir; echo wrote; fi')
        p = self.ctr("run", "--runc-root", self.runc_root, "--snapshotter", sn, IMAGE, cid, "/bin/busybox", "sh", "-c", script, timeout=300)
        self.check(p.stdout.strip().endswith("wrote"), "writer container output: %r" % p.stdout)
        blob_sum = p.stdout.split()[0]
        snaps = self.snapshots(sn)
        self.check(snaps.get(cid) == (self.chain[-1], "Active"),
                   "the container's snapshot in `ctr snapshots ls`: %r" % (snaps.get(cid),))
        info = json.loads(self.ctr("snapshots", "--snapshotter", sn, "info", cid).stdout)
        self.check(info.get("Kind") == "Active" and info.get("Parent") == self.chain[-1], "info: %s" % info)
        usage = self.ctr("snapshots", "--snapshotter", sn, "usage", "-b", cid).stdout.splitlines()
        self.check(len(usage) == 2 and usage[1].split()[0] == cid, "ctr snapshots usage: %s" % usage)
        size_field, inodes = int(usage[1].split()[1]), int(usage[1].split()[2])
        self.check(size_field >= 2 * 1024 * 1024 and inodes >= 3,
                   "usage of the writer's snapshot is %d bytes, %d inodes; it holds a 2 MiB file and more"
                   % (size_field, inodes))
        # the write is in the active snapshot, seen from the host through its mounts
        target = os.path.join(self.tmp, "mnt-writer")
        out = self.ctr("snapshots", "--snapshotter", sn, "mounts", target, cid).stdout
        self.mount_from_ctr(out, target)
        try:
            with open(os.path.join(target, "data/marker")) as f:
                self.check(f.read() == "persisted-across-runs\n", "marker content")
            self.check(not os.path.exists(os.path.join(target, "var/lib/gone-dir")), "removed dir still visible")
            self.check(not os.path.exists(os.path.join(target, "usr/share/sizes/big")), "removed file visible")
            self.check(os.path.isdir(os.path.join(target, "new/dir")), "new dir missing")
        finally:
            self.umount(target)
        if not self.builtin:
            self.restart_daemon("between a container's write and its second start")
        p = self.ctr("task", "start", cid, timeout=300)
        lines = p.stdout.split()
        self.check(lines[:2] == ["persisted-across-runs", blob_sum],
                   "second start of the writer: expected the marker and the blob's hash, got %r" % p.stdout)
        self.ctr("task", "rm", cid, check=False)
        log("container writes kept in the active snapshot (usage %d bytes)%s"
            % (size_field, "" if self.builtin else ", across a daemon restart"))

    def step_gc(self):
        self.ctr("containers", "rm", "writer")
        self.ctr("images", "rm", "--sync", *(getattr(self, "variant_images", []) + [IMAGE]), timeout=600)
        for sn in (self.under_test, "overlayfs"):
            left = self.snapshots(sn)
            self.check(not left, "%s: snapshots left after image removal and GC: %s" % (sn, left))
        left = self.ctr("content", "ls", "-q").stdout.split()
        self.check(not left, "content left after GC: %s" % left)
        if not self.builtin:
            self.check_daemon_empty("after image removal and GC")
        log("image removal + GC left nothing behind")

    def step_running_restart(self):
        """A container keeps running, and reading its rootfs, across a daemon restart."""
        sn = self.under_test
        cid = "long-running"
        self.ctr("run", "--runc-root", self.runc_root, "-d", "--snapshotter", sn, IMAGE, cid, "/bin/busybox", "sleep", "600")
        try:
            before = self.ctr("task", "exec", "--exec-id", "e1", cid, "/bin/busybox", "sha256sum",
                              "/usr/share/sizes/odd", "/bin/busybox").stdout
            self.restart_daemon("while a container runs")
            after = self.ctr("task", "exec", "--exec-id", "e2", cid, "/bin/busybox", "sha256sum",
                             "/usr/share/sizes/odd", "/bin/busybox", "/var/lib/opaque/only").stdout
            self.check(after.startswith(before) and "/var/lib/opaque/only" in after,
                       "reading the rootfs of a running container after a daemon restart: %r then %r" % (before, after))
            self.ctr("task", "exec", "--exec-id", "e3", cid, "/bin/busybox", "sh", "-c",
                     "echo after-restart > /data/running-write && /bin/busybox cat /data/running-write")
        finally:
            self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            for _ in range(100):
                st = self.ctr("task", "ls", check=False).stdout
                if cid not in st or "STOPPED" in st:
                    break
                time.sleep(0.1)
            self.ctr("task", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)
        log("a running container read and wrote its rootfs across a daemon restart")

    def layer_files(self):
        d = os.path.join(self.vs_root, "layers")
        return sorted(n for n in os.listdir(d) if not n.endswith(".dmverity")) if os.path.isdir(d) else []

    def step_concurrency(self, n=3, big_mib=48):
        """Several images unpacked at once; List/Stat/Usage answered while conversions run."""
        sn = self.under_test
        builds, images = [], []
        for i in range(n):
            tar = os.path.join(self.tmp, "variant-%d.tar" % i)
            name = "docker.io/library/veritysnap-e2e-variant-%d:1" % i
            builds.append((tar, name, subprocess.Popen(
                [sys.executable, os.path.join(HERE, "make_image.py"), tar, name, "--busybox", self.args.busybox,
                 "--variant", str(i), "--big-mib", str(big_mib)], stdout=subprocess.PIPE, text=True)))
        for tar, name, p in builds:
            out, _ = p.communicate()
            self.check(p.returncode == 0, "building variant image %s failed" % name)
            images.append((tar, name, json.loads(out)))
        self.variant_images = [name for _, name, _ in images]
        t0 = time.time()
        imports = [(name, subprocess.Popen(["ctr", "-a", self.sock, "-n", NS, "images", "import", "--snapshotter", sn,
                                            tar], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                   for tar, name, _ in images]
        worst, polls, overlapped = 0.0, 0, 0
        while any(p.poll() is None for _, p in imports):
            for cmd in (["snapshots", "--snapshotter", sn, "ls"],
                        ["snapshots", "--snapshotter", sn, "info", self.chain[0]],
                        # (usage of a stable key: `usage` of all races commits, it walks then asks per key)
                        ["snapshots", "--snapshotter", sn, "usage", "-b", self.chain[-1]]):
                t = time.time()
                p = self.ctr(*cmd, check=False, timeout=120)
                dt = time.time() - t
                worst = max(worst, dt)
                polls += 1
                self.check(p.returncode == 0, "`ctr %s` failed while images were unpacking: %s"
                           % (" ".join(cmd), p.stderr.strip()))
                if cmd[-1] == "ls" and any(" Active" in l and "extract-" in l for l in p.stdout.splitlines()):
                    overlapped += 1
        for name, p in imports:
            out, _ = p.communicate()
            self.check(p.returncode == 0, "concurrent import of %s failed:\n%s" % (name, out[-2000:]))
        snaps = self.snapshots(sn)
        for _, name, info in images:
            parent = ""
            for c in info["chain_ids"]:
                self.check(snaps.get(c) == (parent, "Committed"),
                           "%s: layer %s after concurrent unpack: %r" % (name, c, snaps.get(c)))
                parent = c
        self.check(worst < 5.0, "List/Stat/Usage took %.1fs while conversions ran (blocked behind them?)" % worst)
        log("%d images unpacked at once in %.1fs; %d List/Stat/Usage calls meanwhile (slowest %.2fs), %d saw "
            "an unpack in progress" % (n, time.time() - t0, polls, worst, overlapped))

    def check_daemon_empty(self, when):
        problems = []
        for sub in ("layers", "snapshots", "mnt"):
            d = os.path.join(self.vs_root, sub)
            if os.path.isdir(d):
                left = sorted(os.listdir(d))
                if left:
                    problems.append("%s/: %s" % (sub, left[:10]))
        m = mounts_under(self.vs_root)
        if m:
            problems.append("mounts: %s" % m[:10])
        lo = loops_under(self.vs_root)
        if lo:
            problems.append("loop devices: %s" % lo)
        self.check(not problems, "daemon state root not clean %s: %s" % (when, "; ".join(problems)))

    def step_stop(self):
        rc = self.containerd.stop(60)
        self.check(rc is not None, "containerd did not stop on SIGTERM")
        self.containerd = None
        if not self.builtin:
            self.stop_daemon()
            self.daemon = None
            self.check_daemon_empty("after the daemon stopped")
        m = mounts_under(self.tmp)
        self.check(not m, "mounts left under the test dir: %s" % m)

    def run(self):
        self.step_image()
        if not self.builtin:
            self.start_daemon()
        self.start_containerd()
        self.step_import()
        self.step_host_views()
        if not self.builtin:
            self.restart_daemon("between unpack and run")
        self.step_containers()
        self.step_writes()
        if not self.builtin:
            self.step_running_restart()
        self.step_concurrency()
        self.step_gc()
        self.step_stop()

    def cleanup(self):
        for t in reversed(self.mounted):
            run(["umount", "-l", t], check=False)
        if self.containerd is not None:
            self.containerd.stop(30)
        # shims our containerd started (they carry our socket path on their command line)
        for pid in processes_mentioning(self.sock):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.daemon is not None:
            self.daemon.stop(30)
        for m in sorted(mounts_under(self.tmp), key=len, reverse=True):
            run(["umount", "-l", m], check=False)
        for line in loops_under(self.tmp):
            run(["losetup", "-d", line.split()[0]], check=False)
        if self.args.keep:
            os.makedirs(self.args.keep, exist_ok=True)
            for n in ("containerd.log", "veritysnapd.log", "containerd.toml"):
                if os.path.exists(os.path.join(self.tmp, n)):
                    shutil.copy(os.path.join(self.tmp, n), os.path.join(self.args.keep, n))
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--veritysnapd", default=os.environ.get("VERITYSNAPD"))
    ap.add_argument("--builtin", choices=["native"], help="harness check: a built-in snapshotter instead")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--keep", help="copy containerd's and the daemon's logs here")
    ap.add_argument("--workdir", default="/tmp", help="parent of the temp dir (short paths)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        skip("needs root (containerd, runc, mounts)")
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if not shutil.which(tool):
            skip("%s is not installed (Debian: containerd, runc)" % tool)
    if not os.path.isfile(args.busybox) or (shutil.which("file") and "statically linked" not in
                                            run(["file", "-b", args.busybox], check=False).stdout):
        skip("a static busybox is needed at %s (Debian: busybox-static)" % args.busybox)
    if not args.builtin:
        if not args.veritysnapd or not os.access(args.veritysnapd, os.X_OK):
            skip("no veritysnapd (--veritysnapd PATH or VERITYSNAPD=PATH): %s" % args.veritysnapd)

    t = E2E(args)
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        t.run()
        print("PASS: end to end with %s (%d daemon restarts)" % (t.under_test, t.daemon_restarts), flush=True)
        return 0
    except Fail as e:
        print("FAIL: %s" % e, flush=True)
        if t.daemon is not None:
            print("--- veritysnapd log (tail)\n" + t.daemon.tail(40), flush=True)
        if t.containerd is not None:
            print("--- containerd log (tail)\n" + t.containerd.tail(40), flush=True)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
        t.cleanup()


if __name__ == "__main__":
    sys.exit(main())
