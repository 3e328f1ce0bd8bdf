#!/usr/bin/env python3
"""Build the end-to-end test image: an OCI image layout archive that `ctr images import` accepts.

Usage: make_image.py OUT.tar IMAGE_NAME [--busybox PATH] [--variant N [--big-mib M]]
Prints one JSON object: name, manifest digest, diff IDs, chain IDs (what the snapshotters name the layers).

The image is deterministic (fixed mtimes, sorted entries, gzip without timestamps) and exercises what a layer can
carry: a static busybox with applet symlinks, regular files of several sizes (empty, small, several MiB, a sparse-ish
one), hardlinks (within a layer, and to a file of a lower layer re-added), symlinks (relative, absolute, dangling,
to directories), xattrs (user.*, security.capability), setuid/setgid/sticky modes, uid/gid other than 0, a fifo,
long and non-ASCII names, deep directories; and in upper layers OCI whiteouts (`.wh.<name>`) of files and of
directories, opaque directories (`.wh..wh..opq`), a file replaced by a directory and a directory replaced by a file,
mode/owner changes of lower directories, and a whited-out name re-created in a later layer.
--variant N makes a distinct first layer (a /variant file, and with --big-mib an incompressible file of M MiB).
Layer 1 is tar+gzip, layer 2 plain tar, layer 3 tar+zstd (when the zstd command exists, else gzip), layer 4 gzip.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

MTIME = 1700000000  # fixed: the image is the same bytes on every run


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name, typ, mode, uid=0, gid=0, mtime=MTIME, xattrs=None):
        ti = tarfile.TarInfo(name.lstrip("/"))
        ti.type = typ
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = mtime
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
        return ti

    def dir(self, name, mode=0o755, **kw):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def file(self, name, data, mode=0o644, **kw):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def symlink(self, name, target, **kw):
        ti = self._info(name, tarfile.SYMTYPE, 0o777, **kw)
        ti.linkname = target
        self.tar.addfile(ti)

    def hardlink(self, name, target, **kw):
        ti = self._info(name, tarfile.LNKTYPE, 0o644, **kw)
        ti.linkname = target.lstrip("/")
        self.tar.addfile(ti)

    def fifo(self, name, mode=0o600, **kw):
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode, **kw))

    def whiteout(self, path):
        d, b = os.path.split(path.lstrip("/"))
        self.file(os.path.join(d, ".wh." + b), b"", mode=0o600)

    def opaque(self, dirpath):
        self.file(os.path.join(dirpath.lstrip("/"), ".wh..wh..opq"), b"", mode=0o600)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def pattern(n, seed):
    """n deterministic, incompressible bytes."""
    return hashlib.shake_256(seed.encode()).digest(n)


# security.capability v2: cap_net_bind_service (bit 10) permitted+effective.
CAP_NET_BIND = (b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + b"\x00\x00\x00\x00" + b"\x00" * 8)

APPLETS = ["sh", "ash", "find", "sha256sum", "stat", "readlink", "cat", "ls", "echo", "sort", "cut", "mkdir",
           "rm", "mv", "dd", "du", "test", "[", "printf", "head", "wc", "sleep", "true", "false", "ln", "touch"]


def layer1(busybox, variant=None, big_mib=0):
    l = Layer()
    if variant is not None:
        # a distinct first layer (so distinct chain IDs) with a large incompressible file: slow enough to convert
        # that several imports overlap
        l.file("variant", "variant %s\n" % variant)
        if big_mib:
            l.file("variant-big", pattern(big_mib << 20, "variant-%s" % variant))
    for d in ["bin", "etc", "usr", "usr/lib", "usr/share", "var", "var/lib", "proc", "sys", "dev", "run", "data"]:
        l.dir(d)
    l.dir("tmp", mode=0o1777)
    with open(busybox, "rb") as f:
        l.file("bin/busybox", f.read(), mode=0o755)
    for a in APPLETS:
        l.symlink("bin/" + a, "busybox")
    l.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    l.file("etc/group", "root:x:0:\nuser:x:1000:\n")
    l.file("etc/os-release", "NAME=veritysnap-e2e\n")
    l.dir("home")
    l.dir("home/user", mode=0o750, uid=1000, gid=1000)
    l.file("home/user/notes.txt", "mine\n", mode=0o600, uid=1000, gid=1000)
    # sizes: empty, tiny, one block, odd, several MiB
    l.dir("usr/share/sizes")
    l.file("usr/share/sizes/empty", b"")
    l.file("usr/share/sizes/one", b"x")
    l.file("usr/share/sizes/block", pattern(4096, "block"))
    l.file("usr/share/sizes/odd", pattern(4096 * 3 + 17, "odd"))
    l.file("usr/share/sizes/big", pattern(5 * 1024 * 1024 + 123, "big"))
    l.file("usr/share/sizes/zeros", b"\0" * (1024 * 1024))
    # modes
    l.dir("usr/lib/modes")
    l.file("usr/lib/modes/setuid", b"#!/bin/sh\n", mode=0o4755)
    l.file("usr/lib/modes/setgid", b"#!/bin/sh\n", mode=0o2755)
    l.dir("usr/lib/modes/sticky", mode=0o1777)
    l.file("usr/lib/modes/readonly", b"ro\n", mode=0o444)
    l.file("usr/lib/modes/none", b"none\n", mode=0o000)
    # xattrs
    l.dir("usr/lib/xattr", xattrs={"user.dir": "on a directory"})
    l.file("usr/lib/xattr/file", "x\n", xattrs={"user.one": "1", "user.two": "second value"})
    l.file("usr/lib/xattr/cap", b"\x7fELF-not-really\n", mode=0o755,
           xattrs={"security.capability": CAP_NET_BIND.decode("latin-1")})
    # hardlinks within the layer
    l.dir("usr/lib/links")
    l.file("usr/lib/links/orig", "linked content\n")
    l.hardlink("usr/lib/links/hard1", "usr/lib/links/orig")
    l.hardlink("usr/lib/links/hard2", "usr/lib/links/orig")
    # symlinks
    l.symlink("usr/lib/links/rel", "orig")
    l.symlink("usr/lib/links/abs", "/usr/lib/links/orig")
    l.symlink("usr/lib/links/dangling", "does/not/exist")
    l.symlink("usr/lib/links/todir", "../modes")
    l.fifo("usr/lib/links/fifo")
    # names
    l.dir("usr/share/names")
    l.file("usr/share/names/" + "n" * 255, "long\n")
    l.file("usr/share/names/ünïcødé-名前", "utf8\n")
    l.file("usr/share/names/with space", "space\n")
    deep = "usr/share/deep"
    l.dir(deep)
    for i in range(20):
        deep += "/d%02d" % i
        l.dir(deep)
    l.file(deep + "/leaf", "deep\n")
    # things later layers change
    l.dir("var/lib/gone-dir")
    l.file("var/lib/gone-dir/a", "a\n")
    l.dir("var/lib/gone-dir/sub")
    l.file("var/lib/gone-dir/sub/b", "b\n")
    l.file("var/lib/gone-file", "gone\n")
    l.dir("var/lib/opaque")
    l.file("var/lib/opaque/old1", "old1\n")
    l.dir("var/lib/opaque/olddir")
    l.file("var/lib/opaque/olddir/x", "x\n")
    l.file("var/lib/file-to-dir", "file\n")
    l.dir("var/lib/dir-to-file")
    l.file("var/lib/dir-to-file/inner", "inner\n")
    l.dir("var/lib/chmod", mode=0o755)
    l.file("var/lib/chmod/kept", "kept\n")
    l.file("var/lib/recreate", "first version\n")
    l.file("var/lib/overwrite", "layer 1\n")
    l.file("var/lib/hl-target", "target in layer 1\n")
    return l.bytes()


def layer2():
    l = Layer()
    l.dir("var")
    l.dir("var/lib")
    l.whiteout("var/lib/gone-dir")
    l.whiteout("var/lib/gone-file")
    l.dir("var/lib/opaque")
    l.opaque("var/lib/opaque")
    l.file("var/lib/opaque/new1", "new1\n")
    l.dir("var/lib/opaque/newdir")
    l.file("var/lib/opaque/newdir/y", "y\n")
    # a file replaced by a directory, a directory replaced by a file
    l.dir("var/lib/file-to-dir", mode=0o700)
    l.file("var/lib/file-to-dir/now-a-dir", "dir\n")
    l.file("var/lib/dir-to-file", "now a file\n")
    # chmod/chown of a lower directory (re-stated)
    l.dir("var/lib/chmod", mode=0o711, uid=1000, gid=1000)
    l.whiteout("var/lib/recreate")
    l.file("var/lib/overwrite", "layer 2 is longer than layer 1\n")
    # a hardlink to a lower layer's file: the file is re-added in this layer with its link
    l.file("var/lib/hl-target", "target re-added in layer 2\n")
    l.hardlink("var/lib/hl-link", "var/lib/hl-target")
    l.dir("usr")
    l.dir("usr/lib")
    l.dir("usr/lib/xattr", xattrs={"user.dir": "changed in layer 2"})
    l.file("usr/lib/xattr/added", "a\n", xattrs={"user.layer": "2"})
    return l.bytes()


def layer3():
    l = Layer()
    l.dir("var")
    l.dir("var/lib")
    l.file("var/lib/recreate", "second version, layer 3\n", mode=0o640, uid=1000)
    l.dir("var/lib/gone-dir")          # re-created empty after its whiteout
    l.file("var/lib/gone-dir/fresh", "fresh\n")
    l.dir("var/lib/opaque")
    l.file("var/lib/opaque/new2", "new2\n")
    l.whiteout("var/lib/opaque/new1")
    l.dir("usr")
    l.dir("usr/lib")
    l.dir("usr/lib/links")
    l.symlink("usr/lib/links/rel", "hard1")   # symlink retargeted
    l.whiteout("usr/lib/links/hard2")          # one name of a hardlink group removed
    l.dir("usr/share")
    l.dir("usr/share/sizes")
    l.file("usr/share/sizes/big", pattern(3 * 1024 * 1024 + 1, "big-v3"))
    return l.bytes()


def layer4():
    l = Layer()
    l.dir("var")
    l.dir("var/lib")
    l.dir("var/lib/opaque")
    l.opaque("var/lib/opaque")  # opaque again over layers 2 and 3
    l.file("var/lib/opaque/only", "only this\n")
    l.dir("etc")
    l.file("etc/motd", "welcome\n")
    return l.bytes()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(raw, how):
    if how == "gzip":
        return gzip.compress(raw, compresslevel=6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        out = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, stdout=subprocess.PIPE, check=True).stdout
        return out, "application/vnd.oci.image.layer.v1.tar+zstd"
    return raw, "application/vnd.oci.image.layer.v1.tar"


def main():
    args = sys.argv[1:]
    opts = {"--busybox": "/bin/busybox", "--variant": None, "--big-mib": "0"}
    for k in list(opts):
        if k in args:
            i = args.index(k)
            opts[k] = args[i + 1]
            del args[i:i + 2]
    busybox, variant, big_mib = opts["--busybox"], opts["--variant"], int(opts["--big-mib"])
    if len(args) != 2:
        sys.exit(__doc__)
    out, name = args
    zstd = "zstd" if shutil.which("zstd") else "gzip"
    raws = [(layer1(busybox, variant, big_mib), "gzip"), (layer2(), "none"), (layer3(), zstd), (layer4(), "gzip")]

    blobs = {}
    layers, diff_ids = [], []
    for raw, how in raws:
        blob, mt = compress(raw, how)
        d = sha(blob)
        blobs[d] = blob
        layers.append({"mediaType": mt, "digest": d, "size": len(blob)})
        diff_ids.append(sha(raw))
    config = {
        "architecture": "amd64", "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "veritysnap e2e layer %d" % (i + 1)}
                    for i in range(len(diff_ids))],
    }
    cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    blobs[sha(cfg)] = cfg
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg), "size": len(cfg)},
        "layers": layers,
    }
    man = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    blobs[sha(man)] = man
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man), "size": len(man),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
        }],
    }
    files = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
             ("index.json", json.dumps(index, sort_keys=True).encode())]
    files += [("blobs/sha256/" + d.split(":")[1], b) for d, b in sorted(blobs.items())]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for dname in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(dname)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
            t.addfile(ti)
        for fname, data in files:
            ti = tarfile.TarInfo(fname)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, MTIME
            t.addfile(ti, io.BytesIO(data))

    chain = []
    for d in diff_ids:
        chain.append(d if not chain else sha((chain[-1] + " " + d).encode()))
    print(json.dumps({"name": name, "manifest": sha(man), "diff_ids": diff_ids, "chain_ids": chain,
                      "layer_media_types": [l["mediaType"] for l in layers]}))


if __name__ == "__main__":
    main()
