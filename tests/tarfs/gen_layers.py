#!/usr/bin/env python3
"""Edge-case OCI layers for the tarfs converter tests.

Good layers exercise one area each (so a failure points at it); bad layers must be refused with exit code 1.
Most layers are written with python's tarfile (pax, GNU and ustar formats); hand-built headers cover what tarfile
cannot express (raw binary pax xattrs without hdrcharset, v7 directories, lying sizes, broken checksums); the sparse
layers come from GNU tar --sparse on sparse files made with truncate, as real layers do.

Usage: gen_layers.py --list
       gen_layers.py OUTDIR [CASE...]      writes OUTDIR/<case>.<ext> and OUTDIR/<case>.json (what the test expects)
"""
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

BLOCK = 512
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def blob(n, seed):
    """n deterministic bytes that differ at every offset, so a misplaced block or tail shows up."""
    return hashlib.shake_256(seed.encode()).digest(n) if n else b""


def pad(n):
    return b"\0" * (-n % BLOCK)


def pax_record(key, value):
    """One pax extended-header record "LEN key=value\\n"; value is raw bytes (binary allowed, as GNU tar and Go write)."""
    key = key.encode() if isinstance(key, str) else key
    value = value.encode() if isinstance(value, str) else value
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def ustar_header(name, typeflag=b"0", size=0, mode=0o644, uid=0, gid=0, mtime=0, linkname=b"", devmajor=0,
                 devminor=0, prefix=b"", magic=b"ustar\x0000", size_field=None):
    """A 512-byte header written field by field (for what tarfile refuses to write)."""
    h = bytearray(BLOCK)

    def put(off, width, val):
        assert len(val) <= width, (off, val)
        h[off:off + len(val)] = val

    enc = lambda v: v.encode() if isinstance(v, str) else v
    put(0, 100, enc(name))
    put(100, 8, b"%07o\0" % mode)
    put(108, 8, b"%07o\0" % uid)
    put(116, 8, b"%07o\0" % gid)
    put(124, 12, size_field if size_field is not None else b"%011o\0" % size)
    put(136, 12, b"%011o\0" % mtime)
    put(148, 8, b" " * 8)
    put(156, 1, typeflag)
    put(157, 100, enc(linkname))
    if magic:
        put(257, 8, magic)
        put(329, 8, b"%07o\0" % devmajor)
        put(337, 8, b"%07o\0" % devminor)
        put(345, 155, enc(prefix))
    put(148, 8, b"%06o\0 " % sum(h))
    return bytes(h)


class Layer:
    """An uncompressed tar built entry by entry, remembering where each entry's headers and data start."""

    def __init__(self, fmt=tarfile.PAX_FORMAT):
        self.fmt = fmt
        self.buf = bytearray()
        self.marks = {}

    def _append(self, headers, data, mark):
        start = len(self.buf)
        self.buf += headers
        hdr = len(self.buf) - BLOCK
        self.buf += data + pad(len(data))
        if mark:
            self.marks[mark] = {"group_offset": start, "header_offset": hdr, "data_offset": hdr + BLOCK}

    def add(self, name, kind="reg", data=b"", mode=None, uid=0, gid=0, mtime=1600000000, target="", dev=(0, 0),
            pax=None, fmt=None, mark=None):
        ti = tarfile.TarInfo(name)
        ti.type = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                   "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE,
                   "cont": tarfile.CONTTYPE}[kind]
        ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
        ti.uid, ti.gid, ti.mtime = uid, gid, mtime
        ti.size = len(data) if kind in ("reg", "cont") else 0
        ti.linkname = target
        ti.devmajor, ti.devminor = dev
        ti.uname = ti.gname = ""
        ti.pax_headers = dict(pax or {})
        self._append(ti.tobuf(fmt if fmt is not None else self.fmt, "utf-8", "surrogateescape"), data, mark)

    def add_raw(self, headers, data=b"", mark=None):
        self._append(headers, data, mark)

    def add_pax(self, name, typeflag=b"0", data=b"", records=(), mark=None, **kw):
        """A hand-built pax entry: an 'x' header carrying raw records, then a ustar header."""
        body = b"".join(pax_record(k, v) for k, v in records)
        short = name.encode()[-99:] if isinstance(name, str) else name[-99:]
        xh = ustar_header(b"PaxHeaders/" + short.split(b"/")[-1][:80], b"x", size=len(body), mode=0o644)
        self._append(xh + body + pad(len(body)) + ustar_header(short, typeflag, size=len(data), **kw), data, mark)

    def bytes(self, trailer=True):
        return bytes(self.buf) + (b"\0" * (2 * BLOCK) if trailer else b"")


def xattrs(**kv):
    return {"SCHILY.xattr." + k.replace("__", "."): v for k, v in kv.items()}


def posix_acl(entries):
    """system.posix_acl_* value in the Linux binary form: version 2, then (tag u16, perm u16, id u32) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


ACL_UNDEF = 0xFFFFFFFF
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
# security.capability revision 2 (20 bytes): magic|effective, permitted/inheritable low and high words.
# Revision 3 carries a root uid that the kernel rewrites on read, so it would not round-trip byte for byte.
CAP_NET_RAW_V2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

# ---------------------------------------------------------------------------------------------- good layers


def case_types_pax():
    """Every file type, sizes around the block size, special modes, big ids and nanosecond mtimes, pax format."""
    L = Layer(tarfile.PAX_FORMAT)
    # A pax global header as `git archive` writes one: not an entry.
    body = pax_record("comment", "0123456789abcdef0123456789abcdef01234567")
    L.add_raw(ustar_header(b"pax_global_header", b"g", size=len(body)) + body + pad(len(body)))
    L.add("files", "dir", uid=1, gid=2, mtime=1600000001)
    L.add_pax("files/pax_size", data=blob(5000, "paxsize"), records=[("size", "5000")], size_field=b"0" * 11 + b"\0")
    for n in (0, 1, 4095, 4096, 4097, 8191, 8192, 12289, MiB + 123):
        L.add(f"files/size{n}", data=blob(n, f"size{n}"), mode=0o640, uid=1000, gid=1000)
    L.add("files/mode0", data=b"no permissions\n", mode=0)
    L.add("files/suid", data=b"#!/bin/sh\n", mode=0o4755)
    L.add("files/sgid", data=b"#!/bin/sh\n", mode=0o2711)
    L.add("files/all", data=b"x", mode=0o7777)
    L.add("tmp", "dir", mode=0o1777)
    L.add("private", "dir", mode=0o700, uid=33, gid=33)
    L.add("private/secret", data=b"s3cret", mode=0o400, uid=33, gid=33)
    L.add("sym", "dir")
    L.add("sym/short", "sym", target="target", mode=0o777)
    L.add("sym/abs", "sym", target="/etc/passwd", mode=0o777)
    L.add("sym/dangling", "sym", target="nonexistent/x", mode=0o777)
    L.add("sym/dotdot", "sym", target="../files/size1", mode=0o777)
    for n in (150, 1024, 4095):
        L.add(f"sym/long{n}", "sym", target=("t/" * n)[:n - 1] + "z", mode=0o777)
    L.add("dev", "dir")
    L.add("dev/null", "chr", dev=(1, 3), mode=0o666)
    L.add("dev/bigchr", "chr", dev=(4095, 1048575), mode=0o600)
    L.add("dev/sda1", "blk", dev=(8, 1), mode=0o660, gid=6)
    L.add("dev/nvme", "blk", dev=(259, 300000), mode=0o660, gid=6)
    L.add("dev/fifo", "fifo", mode=0o620)
    L.add("links", "dir")
    L.add("links/h1", "link", target="files/size4097", mode=0o640, uid=1000, gid=1000)
    L.add("links/h2", "link", target="links/h1", mode=0o640, uid=1000, gid=1000)
    L.add("owners", "dir")
    L.add("owners/u100000", data=b"a", uid=100000, gid=100000)
    L.add("owners/umax", data=b"b", uid=4294967294, gid=4294967294)
    L.add("owners/dir65536", "dir", uid=65536, gid=65537)
    L.add("mt", "dir", mtime=0)
    L.add("mt/ns", data=b"n", pax={"mtime": "1700000000.123456789"})
    L.add("mt/ns_small", data=b"n", pax={"mtime": "1.000000001"})
    L.add("mt/zero", data=b"z", mtime=0)
    L.add("mt/neg", data=b"-", pax={"mtime": "-86400"})
    L.add("mt/y2106", data=b"y", mtime=4294967296 + 5)  # past u32 seconds
    L.add("mt/dir_ns", "dir", pax={"mtime": "1234567890.5"})
    return L.bytes()


def case_types_gnu():
    """The same kinds of entries in GNU format: ././@LongLink names and targets, base-256 numbers."""
    L = Layer(tarfile.GNU_FORMAT)
    long_dir = "g" * 120
    L.add(long_dir, "dir", mode=0o750)
    L.add(f"{long_dir}/{'n' * 255}", data=blob(5000, "gnu-long"), mode=0o644)
    L.add("gsym", "sym", target="/" + "x" * 300, mode=0o777)
    L.add("glink", "link", target=f"{long_dir}/{'n' * 255}", mode=0o644)
    L.add("gfile0", data=b"")
    L.add("gfile4096", data=blob(4096, "g4096"))
    L.add("gfile4097", data=blob(4097, "g4097"))
    L.add("gbig_ids", data=b"i", uid=4294967294, gid=3000000000)   # base-256 uid/gid
    L.add("gneg_mtime", data=b"m", mtime=-86400 * 365)              # base-256 negative
    L.add("gfar_mtime", data=b"f", mtime=8 ** 11 + 7)               # > 11 octal digits: base-256
    L.add("gchr", "chr", dev=(10, 200), mode=0o600)
    L.add("gblk", "blk", dev=(7, 0), mode=0o660)
    L.add("gfifo", "fifo")
    return L.bytes()


def case_ustar_legacy():
    """ustar with a prefix/name split, a v7-style directory (typeflag NUL, trailing slash), a contiguous file."""
    L = Layer(tarfile.USTAR_FORMAT)
    deep = "/".join(["p" * 40] * 4)  # 163 bytes: needs the prefix field
    L.add(deep, "dir")
    L.add(f"{deep}/file_in_prefixed_dir", data=b"prefix split\n")
    L.add("v7dir/x", data=b"x")  # parent listed after, as a v7 directory entry
    L.add_raw(ustar_header(b"v7dir/", b"\0", mode=0o711, uid=5, gid=6, mtime=777, magic=b""))
    L.add_raw(ustar_header(b"v7file", b"\0", size=3, mode=0o600, mtime=888, magic=b""), b"abc")
    L.add("contiguous", "cont", data=blob(4100, "contig"))
    # Old Docker wrote st_mode type bits into the mode field; the typeflag decides the type.
    L.add_raw(ustar_header(b"typebits_file", b"0", size=2, mode=0o100640), b"tb")
    L.add_raw(ustar_header(b"typebits_dir/", b"5", mode=0o40750))
    L.add_raw(ustar_header(b"typebits_lying", b"0", size=1, mode=0o120777), b"l")
    return L.bytes()


def case_whiteouts():
    """.wh.<name> -> 0/0 character devices, .wh..wh..opq -> trusted.overlay.opaque=y, in every order."""
    L = Layer()
    L.add("d1", "dir")
    L.add("d1/.wh..wh..opq", mtime=0)         # marker before the siblings
    L.add("d1/keep", data=b"kept")
    L.add("d2", "dir", mode=0o750)
    L.add("d2/a", data=b"a")
    L.add("d2/.wh..wh..opq", mtime=0)         # marker after the siblings: they stay
    L.add("d3/.wh..wh..opq", mtime=0)         # opaque directory that the tar never lists
    L.add("d4", "dir", pax=xattrs(user__keep="yes"))
    L.add("d4/.wh..wh..opq", mtime=0)         # opaque keeps the directory's own xattrs
    L.add(".wh.rootgone", mtime=0)
    L.add("d5", "dir")
    L.add("d5/.wh.gone", mtime=0)
    L.add("d5/.wh.gone_dir", mtime=0)
    L.add("imp/sub/.wh.x", mtime=0)           # whiteout under parents the tar does not list
    L.add("d6", "dir")
    L.add("d6/.wh..wh..opq", mtime=0)
    L.add("d6/.wh.y", mtime=0)
    L.add("d7", "dir")
    L.add("d7/.wh..wh..opq", mtime=0)
    L.add("d7/sub", "dir")
    L.add("d7/sub/.wh..wh..opq", mtime=0)
    L.add("d8", "dir")
    L.add("d8/.wh." + "w" * 251, mtime=0)     # 255-byte whiteout name -> 251-byte whited-out name
    L.add("d8/.wh.wh_in_name.wh.", mtime=0)
    return L.bytes()


def case_duplicates():
    """A later entry for a path replaces the earlier one; directory over directory keeps the children."""
    L = Layer()
    L.add("dup", "dir")
    L.add("dup/f", data=b"first version, longer than the second one\n", mode=0o644)
    L.add("dup/f", data=b"second\n", mode=0o600, uid=5, gid=6, mtime=1600000500)
    L.add("dup/d", "dir")
    L.add("dup/d/child", data=b"c")
    L.add("dup/d/sub/x", data=b"x")
    L.add("dup/d", data=b"now a file\n", mode=0o640)                      # non-directory over directory
    L.add("dup/g", data=b"file first\n")
    L.add("dup/g", "dir", mode=0o700)                                     # directory over file
    L.add("dup/g/inner", data=b"inner")
    L.add("dup/dd", "dir", mode=0o755, mtime=1)
    L.add("dup/dd/c", data=b"c")
    L.add("dup/dd/sub", "dir")
    L.add("dup/dd", "dir", mode=0o711, uid=9, gid=9, mtime=2, pax=xattrs(user__new="attr"))  # dir over dir
    L.add("dup/s", "sym", target="a", mode=0o777)
    L.add("dup/s", "sym", target="bbbbbb", mode=0o777)
    L.add("dup/sd", "sym", target="elsewhere", mode=0o777)
    L.add("dup/sd", "dir", mode=0o755)
    L.add("dup/sd/in", data=b"in")
    L.add("dup/x", "dir")
    L.add("dup/x/y", data=b"y")
    L.add("dup/x", "sym", target="dup", mode=0o777)
    L.add("dup/fifo", "fifo")
    L.add("dup/fifo", "chr", dev=(1, 5), mode=0o666)
    L.add("dup/big", data=blob(3 * 4096 + 7, "big1"))
    L.add("dup/big", data=blob(5, "big2"))
    return L.bytes()


def case_hardlinks():
    """Hardlinks share one inode with the right nlink, including links that sort before their target."""
    L = Layer()
    L.add("z", "dir")
    L.add("z/deep", "dir")
    L.add("z/deep/sub", "dir")
    L.add("z/deep/sub/target", data=blob(6000, "hl-target"), mode=0o755, uid=7, gid=8, mtime=1600000007)
    L.add("a_link", "link", target="z/deep/sub/target", mode=0o755, uid=7, gid=8, mtime=1600000007)
    L.add("m/link2", "link", target="z/deep/sub/target", mode=0o755, uid=7, gid=8, mtime=1600000007)
    L.add("hl/f", data=b"old content")
    L.add("hl/h", "link", target="hl/f")
    L.add("hl/f", data=b"new content, a new inode")                     # h keeps the old inode
    L.add("hl2/d/f", data=b"under a directory that goes away")
    L.add("hl2/h", "link", target="hl2/d/f")
    L.add("hl2/d", data=b"file over the directory")                    # h keeps the inode, nlink 1
    L.add("hl3/s", "sym", target="tgt", mode=0o777)
    L.add("hl3/hs", "link", target="hl3/s", mode=0o777)                # hardlink to a symlink
    L.add("hl3/p", "fifo", mode=0o600)
    L.add("hl3/hp", "link", target="hl3/p", mode=0o600)                # hardlink to a fifo
    L.add("hl3/c", "chr", dev=(5, 1), mode=0o600)
    L.add("hl3/hc", "link", target="hl3/c", mode=0o600)                # hardlink to a device
    L.add("./hl4/f", data=b"dot slash", pax=xattrs(user__shared="xattr on a linked inode"))
    L.add("hl4/h1", "link", target="./hl4/f")
    L.add("hl4/h2", "link", target="hl4//f")
    L.add("hl4/h3", "link", target="hl4/h1")
    L.add("hl5/t", data=b"t")
    L.add("hl5/x", data=b"x, replaced by a link")
    L.add("hl5/x", "link", target="hl5/t")                             # link replacing a file
    L.add("hl6/e", data=b"")
    for i in range(70):
        L.add(f"hl6/many{i:02d}", "link", target="hl6/e")
    return L.bytes()


def case_noparents():
    """Entries whose parents the tar does not list; a parent listed after its children takes its attributes."""
    L = Layer()
    L.add("np/a/b/c/file", data=b"deep")
    L.add("np/a", "dir", mode=0o700, uid=3, gid=4, mtime=5)
    L.add("np2/x/y", "sym", target="../../np", mode=0o777)
    L.add("/".join(["deep"] + [f"l{i}" for i in range(30)] + ["leaf"]), data=b"leaf")
    L.add("np3/q/h", "link", target="np/a/b/c/file")
    L.add("np4/dev/null", "chr", dev=(1, 3))
    return L.bytes()


def case_root_dotslash():
    """A ./ entry gives the root its attributes and xattrs."""
    L = Layer()
    L.add("./", "dir", mode=0o700, uid=11, gid=12, pax={"mtime": "1234567890.987654321",
                                                         **xattrs(user__root="1", trusted__r="2")})
    L.add("./file", data=b"f")
    L.add("./sub/", "dir", mode=0o751)
    return L.bytes()


def case_root_dot():
    """A '.' entry that comes after other entries still gives the root its attributes."""
    L = Layer(tarfile.GNU_FORMAT)
    L.add("file", data=b"f")
    L.add("dir", "dir")
    L.add(".", "dir", mode=0o750, uid=0, gid=5, mtime=99)
    return L.bytes()


def case_bigdir():
    """Directories needing many dirent blocks: 2000 names of 40 bytes, 300 names of 255 bytes."""
    L = Layer()
    L.add("big", "dir")
    for i in range(2000):
        L.add(f"big/{i:05d}-{'x' * 34}", data=b"" if i % 3 else bytes([i & 255]))
    L.add("names255", "dir")
    for i in range(300):
        L.add(f"names255/{i:04d}{'y' * 251}", data=b"1")
    L.add("one255", "dir")
    L.add(f"one255/{'z' * 255}", "dir")
    L.add(f"one255/{'z' * 255}/{'q' * 255}", data=b"q")
    return L.bytes()


def case_longnames():
    """pax paths far past 100 bytes, 255-byte components at several depths, long symlink and hardlink targets."""
    L = Layer()
    c255 = [ch * 255 for ch in "abcd"]
    L.add(c255[0], "dir")
    L.add(f"{c255[0]}/{c255[1]}", "dir")
    L.add(f"{c255[0]}/{c255[1]}/{c255[2]}", "dir")
    L.add(f"{c255[0]}/{c255[1]}/{c255[2]}/{c255[3]}", data=blob(777, "long"))
    L.add("l" * 101, data=b"101")
    L.add("s/" + "m" * 150 + "/f", data=b"implicit long parent")
    L.add("lsym", "sym", target="/".join(c255), mode=0o777)
    L.add("llink", "link", target=f"{c255[0]}/{c255[1]}/{c255[2]}/{c255[3]}")
    L.add("u/ünïcødé-名前", data="utf-8 name".encode())
    return L.bytes()


def case_xattrs():
    """Raw binary pax xattrs (as GNU tar and Go write them): user, trusted, security.capability, POSIX ACLs."""
    L = Layer()
    acl_access = posix_acl([(ACL_USER_OBJ, 7, ACL_UNDEF), (ACL_USER, 5, 1000), (ACL_GROUP_OBJ, 5, ACL_UNDEF),
                            (ACL_MASK, 5, ACL_UNDEF), (ACL_OTHER, 0, ACL_UNDEF)])
    acl_default = posix_acl([(ACL_USER_OBJ, 7, ACL_UNDEF), (ACL_GROUP_OBJ, 5, ACL_UNDEF),
                             (ACL_GROUP, 7, 2000), (ACL_MASK, 7, ACL_UNDEF), (ACL_OTHER, 5, ACL_UNDEF)])
    L.add_pax("xa", b"5", mode=0o755, records=[("SCHILY.xattr.system.posix_acl_default", acl_default),
                                               ("SCHILY.xattr.user.d", b"dir")])
    L.add_pax("xa/file", data=b"payload", mode=0o750, records=[
        ("SCHILY.xattr.user.a", b"1"), ("SCHILY.xattr.user.empty", b""), ("SCHILY.xattr.trusted.t", b"abc"),
        ("SCHILY.xattr.security.capability", CAP_NET_RAW_V2), ("SCHILY.xattr.system.posix_acl_access", acl_access)])
    L.add_pax("xa/binary", data=b"b", records=[("SCHILY.xattr.user.bin", bytes(range(256))),
                                               ("SCHILY.xattr.trusted.nl", b"a\nb=c\n")])
    L.add_pax("xa/big", data=b"", records=[("SCHILY.xattr.user.big", blob(3000, "bigxattr"))])
    L.add_pax("xa/many", data=b"m", records=[(f"SCHILY.xattr.user.k{i:02d}", f"v{i}" * (i % 7)) for i in range(50)])
    for i in range(20):
        L.add_pax(f"xa/shared{i:02d}", data=bytes([i]), records=[("SCHILY.xattr.user.shared", b"same for all"),
                                                                 ("SCHILY.xattr.trusted.shared", b"also same")])
    L.add_pax("xa/sym", b"2", mode=0o777, linkname=b"file", records=[("SCHILY.xattr.trusted.s", b"on a symlink")])
    L.add_pax("xa/dev", b"3", mode=0o600, devmajor=1, devminor=7, records=[("SCHILY.xattr.trusted.dev", b"d")])
    L.add_pax("xa/longname", data=b"l", records=[("SCHILY.xattr.user." + "k" * 200, b"long xattr name")])
    L.add("xa/tarfile_binary", data=b"t", pax=xattrs(user__via_tarfile="plain", trusted__bin=bytes([0xff, 0, 0xfe]).decode(
        "utf-8", "surrogateescape")))  # tarfile writes hdrcharset=BINARY for this one
    return L.bytes()


def case_normalise():
    """a/./b and a//b are a/b; a/../b inside the root is b; trailing slashes and ./ prefixes go."""
    L = Layer()
    L.add("./n/a", data=b"a")
    L.add("n//dbl", data=b"dbl")
    L.add("n/./dot", data=b"dot")
    L.add("n/x/../up", data=b"up")
    L.add("n/trail/", "dir", mode=0o711)
    L.add("n/sub/././/deep", data=b"deep")
    L.add("n/hl", "link", target="./n//a")
    L.add("n/zz/../", "dir", mode=0o750, uid=4, mtime=44)   # names n itself
    L.add(".//top", data=b"top")
    return L.bytes()


def case_empty():
    """A tar with no entries: just the root directory."""
    return b"\0" * 10240


def case_opaque_root():
    """.wh..wh..opq at the top marks the root directory opaque."""
    L = Layer()
    L.add(".wh..wh..opq", mtime=0)
    L.add("fresh", data=b"only this")
    return L.bytes()


def case_binary_names():
    """Names are bytes: latin-1 in ustar, raw non-UTF-8 in pax (with and without hdrcharset), odd characters."""
    L = Layer()
    L.add("bin", "dir")
    L.add_raw(ustar_header(b"bin/caf\xe9", size=1), b"1")
    L.add_pax(b"bin/x", data=b"2", records=[("path", b"bin/\xff\xfe-raw-pax")])
    L.add_pax(b"bin/y", data=b"3", records=[("hdrcharset", "BINARY"), ("path", b"bin/\x80-binary")])
    for name in ("bin/new\nline", "bin/sp ace", "bin/star*?[", "bin/back\\slash", "bin/tab\there", "bin/-dash"):
        L.add(name, data=name.encode())
    L.add_raw(ustar_header(b"bin/rawlink", b"2", mode=0o777, linkname=b"\xff\xfe-target"))
    return L.bytes()


def case_nlink_overflow():
    """More than 65535 links to one file and more than 65535 subdirectories (past 16-bit nlink)."""
    n = 65540
    L = Layer()
    L.add("l/t", data=b"target", mtime=0)
    for i in range(n):  # raw headers: tarfile takes three times as long for 131k entries
        L.add_raw(ustar_header(b"l/%05d" % i, b"1", linkname=b"l/t"))
    for i in range(n):
        L.add_raw(ustar_header(b"d/%05d/" % i, b"5", mode=0o755))
    return L.bytes()


def case_tails():
    """Hundreds of files whose tails and inline xattrs vary, to stress inline tail packing across blocks."""
    L = Layer()
    for i in range(600):
        size = (i * 2654435761) % 12289
        pax = xattrs(**{f"user__x{j}": "v" * ((i * 31 + j) % 97) for j in range(i % 5)})
        L.add(f"t/{'n' * (i % 50)}{i:04d}", data=blob(size, f"tail{i}"), pax=pax, mtime=1600000000 + i)
    return L.bytes()


def case_tail_budget():
    """More than 24 MiB of small-file tails: past the default tail budget, tails get their own blocks."""
    L = Layer()
    for i in range(7000):
        L.add(f"tb/{i // 100:02d}/{i:04d}", data=blob(3900 + i % 196, f"tb{i}"))
    return L.bytes()


def _gnu_tar_sparse(files, fmt_args):
    """Builds a layer with GNU tar --sparse from sparse files; files maps name -> (size, [(offset, bytes)])."""
    with tempfile.TemporaryDirectory(prefix="vs-sparse-") as d:
        os.mkdir(os.path.join(d, "sp"))
        for name, (size, segs) in files.items():
            with open(os.path.join(d, "sp", name), "wb") as f:
                f.truncate(size)
                for off, data in segs:
                    f.seek(off)
                    f.write(data)
        out = os.path.join(d, "layer.tar")
        subprocess.run(["tar", "--sparse", *fmt_args, "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                        "--mtime=@1600000000", "-C", d, "-cf", out, "sp"], check=True)
        with open(out, "rb") as f:
            return f.read()


def case_sparse_pax():
    """Small sparse files in pax format (GNU sparse 1.0), one ending in a hole."""
    files = {"s10": (3 * MiB + 5, [(0, blob(4096, "a")), (MiB, blob(10000, "b")),
                                              (3 * MiB + 5 - 100, blob(100, "c"))]),
             "hole_at_end": (2 * MiB, [(8192, blob(5000, "d"))])}
    return _gnu_tar_sparse(files, ["--format=pax", "--sparse-version=1.0", "--pax-option=delete=atime,delete=ctime"])


def case_sparse_gnu():
    """Old GNU sparse headers with extension blocks (more than 4 data regions)."""
    segs = [(i * 256 * KiB, blob(4096 + i, f"r{i}")) for i in range(9)]
    return _gnu_tar_sparse({"many_regions": (9 * 256 * KiB + 3, segs)}, ["--format=gnu"])


def case_sparse_4g():
    """A file above 4 GiB from a sparse GNU tar: data at the start, across the 4 GiB line and at the end."""
    size = 4 * GiB + 12345
    segs = [(0, blob(4096, "start")), (2 * GiB + 100, blob(5000, "mid")),
            (4 * GiB - 3000, blob(6000, "cross")), (size - 345, blob(345, "end"))]
    return _gnu_tar_sparse({"big": (size, segs), "small": (10, [(0, b"0123456789")])}, ["--format=gnu"])


GOOD = {
    "types_pax": case_types_pax, "types_gnu": case_types_gnu, "ustar_legacy": case_ustar_legacy,
    "whiteouts": case_whiteouts, "duplicates": case_duplicates, "hardlinks": case_hardlinks,
    "noparents": case_noparents, "root_dotslash": case_root_dotslash, "root_dot": case_root_dot,
    "bigdir": case_bigdir, "longnames": case_longnames, "xattrs": case_xattrs,
    "normalise": case_normalise, "empty": case_empty,
    "opaque_root": case_opaque_root, "binary_names": case_binary_names, "tails": case_tails,
    "tail_budget": case_tail_budget, "nlink_overflow": case_nlink_overflow,
    "sparse_pax": case_sparse_pax, "sparse_gnu": case_sparse_gnu, "sparse_4g": case_sparse_4g,
}

# ----------------------------------------------------------------------------------------------- bad layers
# Each returns (bytes, extension, meta). meta["entry"]: a string the error message must contain (None for stream
# damage, where the entry being read is not well defined); meta["offsets"]: byte offsets in the uncompressed tar
# any of which the message may name (the entry's first header, its main header, its data, or where input ended);
# meta["cause"]: a regular expression (case-insensitive) the message must match, naming the kind of damage.


def _small_layer():
    L = Layer()
    L.add("a", "dir")
    for i in range(40):
        L.add(f"a/f{i:02d}", data=blob(3000 + 997 * i, f"small{i}"))
    return L.bytes()


def _gzip(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def _zstd(data):
    return subprocess.run(["zstd", "-q", "-3", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


def _entry_case(build, entry, cause):
    L = Layer()
    L.add("ok", data=b"fine")
    build(L)
    m = L.marks["bad"]
    return L.bytes(), "tar", {"entry": entry, "offsets": sorted(set(m.values())), "cause": cause}


ESCAPE = r"\.\.|root|escape|outside|travers"


def bad_trunc_gzip():
    z = _gzip(_small_layer())
    return z[:len(z) // 2], "tar.gz", {"entry": None, "cause": "gzip"}


def bad_trunc_zstd():
    z = _zstd(_small_layer())
    return z[:len(z) // 2], "tar.zst", {"entry": None, "cause": "zstd"}


def bad_gzip_crc():
    z = bytearray(_gzip(_small_layer()))
    z[-8] ^= 0xFF  # CRC32 in the trailer; the deflate data is intact
    return bytes(z), "tar.gz", {"entry": None, "cause": "gzip"}


def bad_gzip_isize():
    z = bytearray(_gzip(_small_layer()))
    z[-1] ^= 0x01  # ISIZE in the trailer
    return bytes(z), "tar.gz", {"entry": None, "cause": "gzip"}


def bad_zstd_checksum():
    z = bytearray(_zstd(_small_layer()))
    z[-1] ^= 0xFF  # last byte of the XXH64 content checksum
    return bytes(z), "tar.zst", {"entry": None, "cause": "zstd"}


def bad_gzip_trailing_garbage_member():
    z = _gzip(_small_layer()) + b"\x1f\x8b\x08\x00garbage"
    return z, "tar.gz", {"entry": None, "cause": "gzip"}


def bad_trunc_tar_data():
    t = _small_layer()
    L = Layer()
    L.add("a", "dir")
    for i in range(40):
        L.add(f"a/f{i:02d}", data=blob(3000 + 997 * i, f"small{i}"), mark=f"a/f{i:02d}")
    m = L.marks["a/f20"]
    cut = m["data_offset"] + 1000
    assert t[:cut] == L.bytes()[:cut]
    return t[:cut], "tar", {"entry": "a/f20", "offsets": sorted(set(m.values()) | {cut}), "cause": "truncat"}


def bad_trunc_tar_header():
    L = Layer()
    L.add("a", "dir")
    L.add("a/f", data=b"x" * 700)
    L.add("a/g", data=b"y", mark="g")
    cut = L.marks["g"]["header_offset"] + 200
    return L.bytes()[:cut], "tar", {"entry": None, "offsets": [L.marks["g"]["header_offset"], cut], "cause": "truncat"}


def bad_size_lie():
    """The header claims 1 MiB; 100 bytes and the end-of-archive blocks follow."""
    L = Layer()
    L.add("ok", data=b"fine")
    L.add_raw(ustar_header(b"liar", size=MiB), blob(100, "lie"), mark="bad")
    data = L.bytes()
    m = L.marks["bad"]
    return data, "tar", {"entry": "liar", "offsets": sorted(set(m.values()) | {len(data)}), "cause": "truncat|short"}


def bad_header_checksum():
    L = Layer()
    L.add("ok", data=b"fine")
    h = bytearray(ustar_header(b"broken", size=4))
    h[0] ^= 1  # name changes after the checksum was computed
    L.add_raw(bytes(h), b"data", mark="bad")
    L.add("after", data=b"after")
    data = L.bytes()
    return data, "tar", {"entry": None, "offsets": sorted(set(L.marks["bad"].values())), "cause": "damaged|checksum"}


def bad_escape():
    return _entry_case(lambda L: L.add("../escape", data=b"e", mark="bad"), "../escape", ESCAPE)


def bad_abs():
    return _entry_case(lambda L: L.add("/abs", data=b"a", mark="bad"), "/abs", "absolute")


def bad_abs_pax_path():
    # The ustar name is harmless; the pax path record that overrides it is absolute.
    return _entry_case(lambda L: L.add_pax("harmless", data=b"p", records=[("path", "/etc/abs_via_pax")],
                                           mark="bad"), "/etc/abs_via_pax", "absolute")


def bad_dotdot_deep():
    return _entry_case(lambda L: L.add("a/../../x", data=b"x", mark="bad"), "a/../../x", ESCAPE)


def bad_escape_gnu_longname():
    name = "d/" * 60 + "../" * 61 + "etc/passwd"
    L = Layer(tarfile.GNU_FORMAT)
    L.add("ok", data=b"fine")
    L.add(name, data=b"e", mark="bad")
    return L.bytes(), "tar", {"entry": name, "offsets": sorted(set(L.marks["bad"].values())), "cause": ESCAPE}


def bad_escape_dir():
    return _entry_case(lambda L: L.add("../up", "dir", mark="bad"), "../up", ESCAPE)


def bad_escape_symlink_entry_name():
    return _entry_case(lambda L: L.add("x/../../y", "sym", target="ok", mark="bad"), "x/../../y", ESCAPE)


def bad_hardlink_missing():
    return _entry_case(lambda L: L.add("h", "link", target="missing/target", mark="bad"), "missing/target", "exist|missing|not found")


def bad_hardlink_escape():
    return _entry_case(lambda L: L.add("h", "link", target="../ok", mark="bad"), "../ok", ESCAPE)


def bad_hardlink_to_dir():
    def build(L):
        L.add("dir", "dir")
        L.add("h", "link", target="dir", mark="bad")
    return _entry_case(build, "h", "director")


def bad_name_256():
    name = "d/" + "n" * 256
    return _entry_case(lambda L: L.add(name, data=b"x", mark="bad"), "n" * 256, "255|long")


def bad_whiteout_dotdot():
    def build(L):
        L.add("d", "dir")
        L.add("d/.wh...", mark="bad")   # would whiteout "..": no such directory entry can exist
    return _entry_case(build, "d/.wh...", "whiteout")


def bad_whiteout_dot():
    def build(L):
        L.add("d", "dir")
        L.add("d/.wh..", mark="bad")    # would whiteout "."
    return _entry_case(build, "d/.wh..", "whiteout")


def bad_whiteout_empty():
    def build(L):
        L.add("d", "dir")
        L.add("d/.wh.", mark="bad")     # whiteout of an empty name
    return _entry_case(build, "d/.wh.", "whiteout")


def bad_not_a_tar():
    return b"this is not a tar archive, just text\n" * 100, "tar", {"entry": None, "cause": "tar|format|archive"}


BAD = {name[4:]: fn for name, fn in sorted(globals().items()) if name.startswith("bad_")}


def cases():
    return list(GOOD) + [f"bad_{n}" for n in BAD]


def generate(case, outdir):
    """Writes one case; returns (layer path, meta dict)."""
    os.makedirs(outdir, exist_ok=True)
    if case in GOOD:
        data, ext, meta = GOOD[case](), "tar", {"expect": "ok"}
    elif case.startswith("bad_") and case[4:] in BAD:
        data, ext, meta = BAD[case[4:]]()
        meta = {"expect": "bad_input", **meta}
    else:
        raise SystemExit(f"gen_layers: unknown case {case!r}; known: {', '.join(cases())}")
    meta["doc"] = (GOOD.get(case) or BAD.get(case[4:])).__doc__
    path = os.path.join(outdir, f"{case}.{ext}")
    with open(path, "wb") as f:
        f.write(data)
    with open(os.path.join(outdir, f"{case}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path, meta


def main(argv):
    if argv[1:] == ["--list"]:
        print("\n".join(cases()))
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    for c in argv[2:] or cases():
        path, _ = generate(c, argv[1])
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
