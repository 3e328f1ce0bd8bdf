#!/usr/bin/env python3
"""Oracle for converted layers: what the image must hold, worked out from the tar by python's tarfile with the OCI
layer rules, against what the kernel shows when it mounts the image, field by field; plus fsck.erofs on the image.

The expected tree never comes from veritysnap's code: tarfile parses the archive, the rules below apply the layer
semantics, and the kernel's EROFS driver reads the image.

Usage: oracle.py LAYER IMAGE      (LAYER: tar, tar+gzip or tar+zstd) prints every difference; exit 1 if any.
"""
import contextlib
import decimal
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

CHUNK = 1 << 20
WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
SKIP = 77


class LayerError(Exception):
    """The layer is bad input: the converter must refuse it (exit 1)."""


# ------------------------------------------------------------------------------------------------ decompression

def magic_kind(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "tar"


def uncompressed(path, tmpdir):
    """Path of the uncompressed tar: python's gzip (not ISA-L) or the zstd tool, never veritysnap's decoder."""
    kind = magic_kind(path)
    if kind == "tar":
        return path
    out = os.path.join(tmpdir, "layer.tar")
    if kind == "gzip":
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    else:
        with open(out, "wb") as dst:
            r = subprocess.run(["zstd", "-q", "-dc", path], stdout=dst, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise LayerError(f"zstd -d: {r.stderr.strip()}")
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            h.update(b)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ expected tree

class Content:
    """A regular file's bytes: size, and data segments (logical offset, length, offset in the tar); the rest is zero."""

    def __init__(self, size, segments):
        self.size = size
        self.segments = segments

    def expected(self, tar, start, n):
        buf = bytearray(n)
        for off, length, where in self.segments:
            lo, hi = max(off, start), min(off + length, start + n, self.size)
            if lo < hi:
                tar.seek(where + lo - off)
                buf[lo - start:hi - start] = tar.read(hi - lo)
        return buf


class Node:
    def __init__(self, kind, origin, mode=0o755, uid=0, gid=0, mtime=(0, 0), xattrs=None):
        self.kind = kind              # dir reg sym chr blk fifo whiteout
        self.origin = origin          # the tar entry that made it (for messages)
        self.mode, self.uid, self.gid, self.mtime = mode, uid, gid, mtime
        self.xattrs = dict(xattrs or {})
        self.children = {} if kind == "dir" else None
        self.opaque = False
        self.content = None
        self.target = None
        self.rdev = (0, 0)

    def expected_xattrs(self):
        x = dict(self.xattrs)
        if self.opaque:
            x[b"trusted.overlay.opaque"] = b"y"
        return x


def implicit_dir(origin):
    """Parents the tar does not list: 0755, root:root, mtime 0."""
    return Node("dir", f"(implicit parent of {origin})")


def normalise(name):
    """Tar name -> path components; absolute names and '..' leaving the root are bad input."""
    if name.startswith(b"/"):
        raise LayerError(f"absolute path {name!r}")
    out = []
    for c in name.split(b"/"):
        if c in (b"", b"."):
            continue
        if c == b"..":
            if not out:
                raise LayerError(f"{name!r} leaves the root")
            out.pop()
            continue
        if len(c) > 255:
            raise LayerError(f"{name!r}: component of {len(c)} bytes")
        out.append(c)
    return out


def pax_mtime(member):
    """(seconds, nanoseconds) exactly as written: the pax decimal (tarfile's float loses nanoseconds), else the field."""
    v = member.pax_headers.get("mtime")
    if v is None:
        return int(member.mtime), 0
    d = decimal.Decimal(v)
    sec = int(d.to_integral_value(rounding=decimal.ROUND_FLOOR))
    nsec = int(((d - sec) * 1000000000).to_integral_value(rounding=decimal.ROUND_FLOOR))
    return sec, nsec


def pax_xattrs(member):
    x = {}
    for k, v in member.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            # tarfile hands non-UTF-8 values back with surrogate escapes: this recovers the raw bytes.
            x[k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")] = v.encode("utf-8", "surrogateescape")
    return x


class Expected:
    """The tree a correct converter produces from the tar, plus what the JSON must say about it."""

    def __init__(self, tar_path):
        self.tar_path = tar_path
        self.root = Node("dir", "(root)")
        self.entries = 0
        self.notes = []
        self._build()

    def _parent(self, comps, origin, create=True):
        d = self.root
        for c in comps[:-1]:
            child = d.children.get(c)
            if child is None:
                if not create:
                    return None
                child = d.children[c] = implicit_dir(origin)
            elif child.kind != "dir":
                raise ValueError(f"test layer not well defined: {origin}: {c!r} is not a directory")
            d = child
        return d

    def lookup(self, comps):
        node = self.root
        for c in comps:
            if node.kind != "dir" or c not in node.children:
                return None
            node = node.children[c]
        return node

    def _build(self):
        size = os.path.getsize(self.tar_path)
        with tarfile.open(self.tar_path, "r:", encoding="utf-8", errors="surrogateescape") as tf:
            for m in tf:
                self.entries += 1
                self._apply(m, size)
            end = tf.offset
        # tarfile stops quietly at a damaged header in mid-archive; a correct reader must not.
        with open(self.tar_path, "rb") as f:
            f.seek(end)
            blk = f.read(512)
        if blk and blk != b"\0" * len(blk):
            raise LayerError(f"damaged or truncated tar header at offset {end}")

    def _apply(self, m, tar_size):
        name = os.fsencode(m.name)
        comps = normalise(name)
        origin = m.name
        for k in m.pax_headers:
            if k.startswith(("SCHILY.acl.", "LIBARCHIVE.xattr.", "RHT.security.")):
                self.notes.append(f"{origin}: pax record {k} is not modelled by the oracle")
        attrs = dict(mode=m.mode & 0o7777, uid=m.uid, gid=m.gid, mtime=pax_mtime(m), xattrs=pax_xattrs(m))

        if comps and comps[-1].startswith(WHITEOUT):
            parent = self._parent(comps, origin)  # the marker's directory, created if missing
            if comps[-1] == OPAQUE:
                parent.opaque = True
                return
            hidden = comps[-1][len(WHITEOUT):]
            if hidden in (b"", b".", b".."):
                raise LayerError(f"{origin}: whiteout of {hidden!r}")
            wh = Node("whiteout", origin, **attrs)
            parent.children[hidden] = wh
            return

        if m.isdir():
            if not comps:
                node = self.root
            else:
                parent = self._parent(comps, origin)
                node = parent.children.get(comps[-1])
                if node is None or node.kind != "dir":
                    node = parent.children[comps[-1]] = Node("dir", origin)
            node.mode, node.uid, node.gid, node.mtime, node.xattrs = (
                attrs["mode"], attrs["uid"], attrs["gid"], attrs["mtime"], attrs["xattrs"])
            node.origin = origin
            return

        if not comps:
            raise LayerError(f"{origin}: a non-directory names the root")
        parent = self._parent(comps, origin)
        if m.islnk():
            target = normalise(os.fsencode(m.linkname))
            node = self.lookup(target)
            if node is None:
                raise LayerError(f"{origin}: hardlink to missing {m.linkname!r}")
            if node.kind == "dir":
                raise LayerError(f"{origin}: hardlink to directory {m.linkname!r}")
            parent.children[comps[-1]] = node
            return

        if m.isreg():
            node = Node("reg", origin, **attrs)
            if m.issparse():
                segs, where = [], m.offset_data
                for off, length in m.sparse:
                    segs.append((off, length, where))
                    where += length
                stored = where - m.offset_data
            else:
                segs, stored = [(0, m.size, m.offset_data)], m.size
            if m.offset_data + stored > tar_size:
                raise LayerError(f"{origin}: data runs past the end of the archive")
            node.content = Content(m.size, segs)
        elif m.issym():
            node = Node("sym", origin, **attrs)
            node.target = os.fsencode(m.linkname)
        elif m.ischr() or m.isblk():
            node = Node("chr" if m.ischr() else "blk", origin, **attrs)
            node.rdev = (m.devmajor, m.devminor)
        elif m.isfifo():
            node = Node("fifo", origin, **attrs)
        else:
            raise ValueError(f"test layer not well defined: {origin}: tar type {m.type!r}")
        parent.children[comps[-1]] = node

    def walk(self):
        """(path bytes relative to the root, node) for every node, root first ('' is the root)."""
        stack = [(b"", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.kind == "dir":
                for name, child in node.children.items():
                    stack.append((path + b"/" + name if path else name, child))


# ------------------------------------------------------------------------------------------------ the kernel side

def environment_skip_reason():
    """Why mount-based checks cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (mount -t erofs -o loop)"
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        return "no loop devices (/dev/loop-control missing)"
    with open("/proc/filesystems") as f:
        have = "erofs" in f.read().split()
    if not have:
        subprocess.run(["modprobe", "erofs"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open("/proc/filesystems") as f:
            have = "erofs" in f.read().split()
    if not have:
        return "kernel has no EROFS (modprobe erofs failed)"
    r = subprocess.run(["losetup", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return f"no free loop device: {r.stderr.strip()}"
    return None


def kernel_log_tail(n=8):
    r = subprocess.run(["dmesg"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return "\n".join([l for l in r.stdout.splitlines() if "erofs" in l.lower() or "loop" in l.lower()][-n:])


@contextlib.contextmanager
def mounted(image):
    mnt = tempfile.mkdtemp(prefix="vs-oracle-mnt-")
    r = subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", image, mnt], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        raise RuntimeError(f"mount -t erofs -o loop,ro {image} failed: {r.stderr.strip()}\n{kernel_log_tail()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


def fsck(image, extract=True):
    """fsck.erofs 1.5: superblock, inodes, directories; with a bare --extract it also decodes every file's data
    without writing it anywhere (--extract=DIR would extract, but loses hardlinks and xattrs in 1.5)."""
    r = subprocess.run(["fsck.erofs"] + (["--extract"] if extract else []) + [image], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace")
    return r.returncode, r.stdout.strip()


KIND_OF = {stat.S_IFDIR: "dir", stat.S_IFREG: "reg", stat.S_IFLNK: "sym", stat.S_IFCHR: "chr",
           stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}


def fmt_ns(total):
    """Nanoseconds since the epoch as an exact signed decimal of seconds (-1250000000 -> -1.250000000)."""
    a = abs(total)
    return f"{'-' if total < 0 else ''}{a // 1000000000}.{a % 1000000000:09d}"


def show(path):
    return "/" + path.decode("utf-8", "backslashreplace") if path else "/ (root)"


def short(b, n=48):
    if b is None:
        return "None"
    return repr(b[:n]) + (f"...({len(b)} bytes)" if len(b) > n else "")


def compare_tree(exp, mnt):
    """Every difference between the expected tree and the mounted image, as text lines."""
    diffs, notes = [], []
    actual_inodes = {}                 # st_ino -> [(path, node)]
    expected_groups = {}               # id(node) -> [node, [(path, stat)]]
    data_checked = set()               # (st_ino, id(node)): a hardlinked inode's data is read once
    tar = open(exp.tar_path, "rb")
    mroot = os.fsencode(mnt)

    for path, node in exp.walk():
        full = os.path.join(mroot, path) if path else mroot
        where = show(path)
        try:
            st = os.lstat(full)
        except OSError as e:
            diffs.append(f"{where}: missing from the image (lookup: {e.strerror}); expected {node.kind} from "
                         f"entry {node.origin!r}")
            continue
        kind = KIND_OF.get(stat.S_IFMT(st.st_mode), "?")
        want_kind = "chr" if node.kind == "whiteout" else node.kind
        if kind != want_kind:
            diffs.append(f"{where}: type {kind}, expected {node.kind} (entry {node.origin!r})")
            continue
        if node.kind == "whiteout":
            if st.st_rdev != 0:
                diffs.append(f"{where}: whiteout with rdev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}, "
                             f"expected 0:0")
            for field, want, got in (("uid", node.uid, st.st_uid), ("gid", node.gid, st.st_gid)):
                if want != got:
                    notes.append(f"{where}: whiteout {field} {got} (the .wh. entry says {want}; not specified)")
        else:
            if node.mode != stat.S_IMODE(st.st_mode):
                diffs.append(f"{where}: mode {oct(stat.S_IMODE(st.st_mode))}, expected {oct(node.mode)}")
            for field, want, got in (("uid", node.uid, st.st_uid), ("gid", node.gid, st.st_gid)):
                if want != got:
                    diffs.append(f"{where}: {field} {got}, expected {want}")
            want_ns = node.mtime[0] * 1000000000 + node.mtime[1]
            if want_ns != st.st_mtime_ns:
                diffs.append(f"{where}: mtime {fmt_ns(st.st_mtime_ns)}, expected {fmt_ns(want_ns)}")
        # xattrs (whiteouts carry none in the model; extra ones there are only noted)
        try:
            names = os.listxattr(full, follow_symlinks=False)
            got_x = {os.fsencode(n): os.getxattr(full, n, follow_symlinks=False) for n in names}
        except OSError as e:
            diffs.append(f"{where}: listing xattrs failed: {e.strerror}")
            got_x = {}
        want_x = node.expected_xattrs()
        if got_x != want_x:
            for k in sorted(set(want_x) | set(got_x)):
                w, g = want_x.get(k), got_x.get(k)
                if w == g:
                    continue
                msg = f"{where}: xattr {k.decode(errors='backslashreplace')}: {short(g)}, expected {short(w)}"
                (notes if node.kind == "whiteout" and w is None else diffs).append(msg)

        if node.kind == "dir":
            subdirs = sum(1 for c in node.children.values() if c.kind == "dir")
            if st.st_nlink != 2 + subdirs:
                diffs.append(f"{where}: nlink {st.st_nlink}, expected {2 + subdirs} (2 + {subdirs} subdirectories)")
            try:
                listed = os.listdir(full)
            except OSError as e:
                diffs.append(f"{where}: readdir failed: {e.strerror}")
                continue
            if listed != sorted(listed):
                diffs.append(f"{where}: readdir order is not sorted by name (EROFS lookups binary-search it)")
            for extra in sorted(set(listed) - set(node.children)):
                diffs.append(f"{show(path + b'/' + extra if path else extra)}: in the image, not expected")
            for missing in sorted(set(node.children) - set(listed)):
                diffs.append(f"{show(path + b'/' + missing if path else missing)}: not listed by readdir of {where}")
            continue

        if node.kind != "whiteout":
            expected_groups.setdefault(id(node), [node, []])[1].append((path, st))
        actual_inodes.setdefault(st.st_ino, []).append((path, node))
        if (st.st_ino, id(node)) in data_checked:
            continue
        data_checked.add((st.st_ino, id(node)))

        if node.kind == "reg":
            if st.st_size != node.content.size:
                diffs.append(f"{where}: size {st.st_size}, expected {node.content.size}")
                continue
            bad = compare_content(full, node.content, tar)
            if bad is not None:
                diffs.append(f"{where}: content differs from the tar from byte {bad} (size {node.content.size})")
        elif node.kind == "sym":
            try:
                got = os.readlink(full)
            except OSError as e:
                got = f"<readlink failed: {e.strerror}>".encode()
            if got != node.target:
                diffs.append(f"{where}: symlink target {short(got, 80)}, expected {short(node.target, 80)}")
            if st.st_size != len(node.target):
                diffs.append(f"{where}: symlink size {st.st_size}, expected {len(node.target)}")
        elif node.kind in ("chr", "blk"):
            got = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if got != node.rdev:
                diffs.append(f"{where}: device {got[0]}:{got[1]}, expected {node.rdev[0]}:{node.rdev[1]}")

    # hardlinks: the expected sharing of nodes must be exactly the kernel's sharing of inodes, nlink included
    for node, paths in expected_groups.values():
        inos = set()
        for p, st in paths:
            inos.add(st.st_ino)
            if st.st_nlink != len(paths):
                diffs.append(f"{show(p)}: nlink {st.st_nlink}, expected {len(paths)}")
        if len(inos) > 1:
            diffs.append("hardlink group split over inodes " + ", ".join(map(str, sorted(inos))) + ": "
                         + ", ".join(show(p) for p, _ in paths))
    for ino, members in actual_inodes.items():
        nodes = {id(n) for _, n in members if n.kind != "whiteout"}
        if len(nodes) > 1:
            diffs.append(f"distinct files share inode {ino}: " + ", ".join(show(p) for p, _ in members))
        elif any(n.kind == "whiteout" for _, n in members) and len(members) > 1:
            notes.append(f"whiteouts share inode {ino}: " + ", ".join(show(p) for p, _ in members))
    tar.close()
    return diffs, notes


def compare_content(path, content, tar):
    """First differing byte offset, or None."""
    pos = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.read(CHUNK)
            if not got:
                break
            want = content.expected(tar, pos, len(got))
            if got != want:  # bytes against bytearray: one memcmp
                return pos + next(i for i in range(len(got)) if got[i] != want[i])
            pos += len(got)
    return None if pos == content.size else pos


def check_image(layer, image, json_out=None, verity=True):
    """Compares IMAGE with LAYER; returns (diffs, notes). json_out: the converter's JSON, checked against the tar."""
    with tempfile.TemporaryDirectory(prefix="vs-oracle-") as tmp:
        tar = uncompressed(layer, tmp)
        exp = Expected(tar)
        diffs, notes = [], list(exp.notes)
        if json_out is not None:
            diffs += check_json(json_out, tar, exp, image, verity)
        with mounted(image) as mnt:
            sv = os.statvfs(mnt)
            if sv.f_bsize != 4096:
                diffs.append(f"statfs block size {sv.f_bsize}, expected 4096")
            if json_out is not None and isinstance(json_out.get("blocks"), int) and sv.f_blocks != json_out["blocks"]:
                diffs.append(f"superblock blocks {sv.f_blocks}, JSON blocks {json_out['blocks']}")
            d, n = compare_tree(exp, mnt)
            diffs += d
            notes += n
        # fsck.erofs 1.5 reads a flat file's data with one pread, which Linux caps just under 2 GiB: for images
        # holding such a file, decode checks are left to the kernel read above and fsck checks the metadata only.
        huge = any(n.kind == "reg" and n.content.size >= 2 ** 31 - 4096 for _, n in exp.walk())
        if huge:
            notes.append("fsck.erofs run without --extract (a file of 2 GiB or more; fsck.erofs 1.5 cannot read it)")
        rc, out = fsck(image, extract=not huge)
        if rc != 0:
            diffs.append(f"fsck.erofs{' --extract' if not huge else ''} exit {rc}: {out[-2000:]}")
        return diffs, notes


def check_json(j, tar, exp, image, verity):
    diffs = []
    for key in ("format", "size", "image_size", "blocks", "entries", "diff_id"):
        if key not in j:
            diffs.append(f"JSON: no {key!r} in {sorted(j)}")
    size = os.path.getsize(image)
    want = {"format": "erofs", "size": size, "entries": exp.entries, "diff_id": "sha256:" + sha256_file(tar)}
    for key, w in want.items():
        if key in j and j[key] != w:
            diffs.append(f"JSON: {key} {j[key]!r}, expected {w!r}")
    isz = j.get("image_size")
    if isinstance(isz, int):
        if isz % 4096:
            diffs.append(f"JSON: image_size {isz} is not a multiple of 4096")
        if j.get("blocks") != isz // 4096:
            diffs.append(f"JSON: blocks {j.get('blocks')!r}, expected image_size/4096 = {isz // 4096}")
        if verity and not isz < size:
            diffs.append(f"JSON: image_size {isz} leaves no room for a verity tree in a {size}-byte file")
        if not verity and isz != size:
            diffs.append(f"JSON: image_size {isz} but --no-verity file is {size} bytes")
    # cryptsetup is the oracle for the tree after the image (skipped for multi-GiB images to bound the test time).
    root, off = j.get("root_hash"), j.get("hash_offset")
    if verity and isinstance(root, str) and isinstance(off, int) and size < 1 << 30:
        cmd = ["veritysetup", "verify", f"--hash-offset={off}", image, image, root]
        if not j.get("superblock", True):
            cmd[2:2] = ["--no-superblock", f"--data-blocks={j.get('data_blocks')}", f"--salt={j.get('salt')}",
                        f"--hash={j.get('hash_algorithm')}"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            diffs.append(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout.strip()[-500:]}")
    return diffs


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    why = environment_skip_reason()
    if why:
        print(f"SKIP: {why}")
        return SKIP
    diffs, notes = check_image(argv[1], argv[2])
    for n in notes:
        print("note:", n)
    for d in diffs:
        print("DIFF:", d)
    print(f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
