#!/usr/bin/env python3
"""End-to-end tests of the veritysnap command against outside oracles: veritysetup (cryptsetup) for every tree and
root hash, the kernel for mounts, the tardev vectors for the tarfs format, python's tarfile for listings.

Usage: test_cli.py VERITYSNAP_BINARY [TEST_NAME...]   (exit 77 when a needed tool or privilege is missing)
"""
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from vstest import SKIP, run_args as run, run_tests  # noqa: E402

VS = sys.argv[1]
ONLY = set(sys.argv[2:])
VECTORS = os.environ.get("VERITYSNAP_TARDEV_VECTORS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "vectors", "tardev")


def convert(src, out, *flags):
    return json.loads(run(VS, "convert", *flags, "-o", out, src).stdout)


def sample_tar(path, files=40, big=300_000):
    """A layer with dirs, files of edge sizes, symlinks, a hardlink, a whiteout, an opaque dir, xattrs."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        def add(name, typ=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime, ti.mode = typ, kw.pop("mtime", 1700000000), kw.pop("mode", 0o644)
            for k, v in kw.items():
                setattr(ti, k, v)
            if typ == tarfile.REGTYPE:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
        add("etc", tarfile.DIRTYPE, mode=0o755)
        for i, size in enumerate([0, 1, 4095, 4096, 4097, big]):
            add(f"etc/f{i}", data=bytes((j * 7 + i) % 251 for j in range(size)))
        for i in range(files):
            add(f"many/file-{i:04d}", data=f"content {i}\n".encode() * (i % 7))
        add("etc/link", tarfile.SYMTYPE, linkname="f1")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/f2")
        add("var/.wh.gone")
        add("opaque", tarfile.DIRTYPE, mode=0o755)
        add("opaque/.wh..wh..opq")
        x = tarfile.TarInfo("etc/xattr")
        x.pax_headers = {"SCHILY.xattr.user.note": "hello"}
        x.size = 5
        t.addfile(x, io.BytesIO(b"xattr"))


def test_help_version(tmp):
    for args in (["--version"], ["--help"], ["convert", "--help"], ["roothash", "--help"], ["verify", "--help"],
                 ["inspect", "--help"]):
        p = run(VS, *args)
        assert p.stdout, f"{args} printed nothing"
    assert run(VS, "convert", check=False).returncode == 2
    assert run(VS, "no-such-command", check=False).returncode == 2


def test_determinism_and_compression(tmp):
    tar = os.path.join(tmp, "l.tar")
    sample_tar(tar)
    data = open(tar, "rb").read()
    open(tar + ".gz", "wb").write(gzip.compress(data, mtime=0))
    run("zstd", "-q", "-f", tar, "-o", tar + ".zst")
    results = []
    for i, src in enumerate([tar, tar + ".gz", tar + ".zst", tar]):
        out = os.path.join(tmp, f"o{i}")
        j = convert(src, out)
        results.append((open(out, "rb").read(), j["root_hash"], j["diff_id"]))
    assert all(r == results[0] for r in results), "outputs differ across runs or compressions"
    assert results[0][2] == "sha256:" + hashlib.sha256(data).hexdigest(), "diff_id is not the tar's sha256"
    j = json.loads(run(VS, "roothash", tar, tar + ".gz").stdout)
    assert [x["root_hash"] for x in j] == [results[0][1]] * 2, "roothash disagrees with convert"


def veritysetup_verify(j, path):
    cmd = j["veritysetup_verify"].split()
    cmd = [path if a == j.get("file") else a for a in cmd]
    return subprocess.run(cmd, capture_output=True).returncode


def test_veritysetup_agrees(tmp):
    if not shutil.which("veritysetup"):
        return SKIP
    tar = os.path.join(tmp, "l.tar")
    sample_tar(tar)
    variants = [[], ["--no-superblock"], ["--salt", "-"], ["--salt", "abcdef0123"], ["--hash-algorithm", "sha512"],
                ["--data-block-size", "512", "--hash-block-size", "512"], ["--hash-block-size", "1024"],
                ["--verity-format", "0"]]
    for flags in variants:
        out = os.path.join(tmp, "v.img")
        j = convert(tar, out, *flags)
        assert veritysetup_verify(j, out) == 0, f"veritysetup rejects {flags}: {j['veritysetup_verify']}"
        # veritysetup format over the same image with the same parameters gives the same root hash.
        img = os.path.join(tmp, "image-only")
        with open(out, "rb") as f, open(img, "wb") as g:
            g.write(f.read(j["image_size"]))
        salt = j["salt"] or "-"
        fmt = ["veritysetup", "format", f"--salt={salt}", f"--hash={j['hash_algorithm']}",
               f"--data-block-size={j['data_block_size']}", f"--hash-block-size={j['hash_block_size']}",
               f"--format={j['verity_format']}", img, img + ".hash"]
        if not j["superblock"]:
            fmt.insert(2, "--no-superblock")
        text = run(*fmt).stdout.decode()
        root = [l.split(":")[1].strip() for l in text.splitlines() if l.startswith("Root hash:")][0]
        assert root == j["root_hash"], f"{flags}: veritysetup {root} != ours {j['root_hash']}"
        os.unlink(img + ".hash")
        assert run(VS, "verify", out).returncode == 0


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_tamper(tmp):
    tar = os.path.join(tmp, "l.tar")
    sample_tar(tar)
    for flags in ([], ["--no-superblock"]):
        out = os.path.join(tmp, "t.img")
        j = convert(tar, out, *flags)
        size = os.path.getsize(out)
        tree_start = j["hash_start_block"] * j["hash_block_size"]
        positions = {"first data block": 5, "middle data": j["image_size"] // 2,
                     "last data block": j["image_size"] - 1, "tree": tree_start + 7, "tree end": size - 1}
        if j["superblock"]:
            positions["superblock"] = j["hash_offset"] + 72  # data_blocks field
        clean = open(out, "rb").read()
        for what, pos in positions.items():
            flip(out, pos)
            p = run(VS, "verify", out, check=False)
            assert p.returncode == 1, f"{flags} {what}: veritysnap verify exited {p.returncode}"
            if what != "superblock" and shutil.which("veritysetup"):
                assert veritysetup_verify(j, out) != 0, f"{flags} {what}: veritysetup verify accepted it"
            open(out, "wb").write(clean)
        assert run(VS, "verify", out).returncode == 0
        p = run(VS, "verify", "--root-hash", "00" * 32, out, check=False)
        assert p.returncode == 1, "a wrong root hash verified"


def test_tarfs_vectors(tmp):
    if not os.path.isdir(VECTORS):
        print(f"tardev vectors not found at {VECTORS}: tarfs compatibility not checked")
        return SKIP
    names = sorted(f[:-4] for f in os.listdir(VECTORS) if f.endswith(".tar"))
    assert names, "no vectors"
    for n in names:
        out = os.path.join(tmp, n + ".tarfs")
        j = convert(os.path.join(VECTORS, n + ".tar"), out, "--format", "tarfs")
        expected = open(os.path.join(VECTORS, n + ".tarfs"), "rb").read()
        assert open(out, "rb").read() == expected, f"{n}: tarfs file differs from tardev's"
        assert j["root_hash"] == open(os.path.join(VECTORS, n + ".roothash")).read().strip(), f"{n}: root hash"
        os.unlink(out + ".dmverity")
        assert run(VS, "verify", "--root-hash", j["root_hash"], out).returncode == 0
        listing = json.loads(run(VS, "inspect", "--list", out).stdout)["entries"]
        listed = {e["path"] for e in listing if e["path"]}
        # The tar's listing as the guest sees it: parents the tar does not list get mode 0 in tardev's index, so
        # they appear (as non-directories) and what is below them does not.
        with tarfile.open(os.path.join(VECTORS, n + ".tar")) as t:
            explicit, entries = set(), set()
            for m in t.getmembers():
                p = m.name.strip("/")
                base = os.path.basename(p)
                if base == ".wh..wh..opq":
                    continue
                if base.startswith(".wh."):
                    p = os.path.join(os.path.dirname(p), base[4:])
                explicit.add(p)
                entries.add(p)
            names_in_tar = set()
            for p in entries:
                parents = []
                q = p
                while "/" in q:
                    q = os.path.dirname(q)
                    parents.append(q)
                hidden = [q for q in parents if q not in explicit]
                if hidden:
                    names_in_tar.add(hidden[-1])  # the topmost unlisted parent is listed, with mode 0
                else:
                    names_in_tar.add(p)
        assert listed == names_in_tar, f"{n}: inspect --list {sorted(listed ^ names_in_tar)}"
    rc = run(VS, "convert", "--format", "tarfs", "--strict", "-o", os.path.join(tmp, "s"),
             os.path.join(VECTORS, "simple.tar"), check=False)
    assert rc.returncode == 1 and not os.path.exists(os.path.join(tmp, "s")), "--strict did not refuse"


def need_mount():
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        return False
    return "erofs" in open("/proc/filesystems").read()


def walk(root):
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            content = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(open(p, "rb").read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            xattrs = {x: os.getxattr(p, x, follow_symlinks=False) for x in os.listxattr(p, follow_symlinks=False)}
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_rdev, content, xattrs,
                        st.st_nlink if not stat.S_ISDIR(st.st_mode) else None)
    return out


def test_directory_source(tmp):
    if not need_mount():
        return SKIP
    src = os.path.join(tmp, "upper")
    os.makedirs(os.path.join(src, "dir/sub"))
    open(os.path.join(src, "dir/file"), "wb").write(b"x" * 5000)
    os.link(os.path.join(src, "dir/file"), os.path.join(src, "dir/file-link"))
    os.symlink("file", os.path.join(src, "dir/sym"))
    os.mknod(os.path.join(src, "dir/whiteout"), stat.S_IFCHR | 0, os.makedev(0, 0))
    os.setxattr(os.path.join(src, "dir/sub"), "trusted.overlay.opaque", b"y")
    os.setxattr(os.path.join(src, "dir/sub"), "trusted.overlay.origin", b"private")
    os.setxattr(os.path.join(src, "dir/file"), "user.keep", b"kept")
    os.chown(os.path.join(src, "dir/file"), 100000, 4294967294)
    os.utime(os.path.join(src, "dir/file"), ns=(1, 1234567890123456789))
    out = os.path.join(tmp, "dir.img")
    j1 = json.loads(run(VS, "convert", "-o", out, "--dir", src).stdout)
    j2 = json.loads(run(VS, "convert", "-o", out + "2", "--dir", src).stdout)
    assert open(out, "rb").read() == open(out + "2", "rb").read(), "directory conversion is not deterministic"
    assert j1["root_hash"] == j2["root_hash"]
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    run("mount", "-t", "erofs", "-o", "loop,ro", out, mnt)
    try:
        got = walk(mnt)
    finally:
        run("umount", mnt)
    want = walk(src)
    sub = want["dir/sub"]
    want["dir/sub"] = sub[:6] + ({"trusted.overlay.opaque": b"y"},) + sub[7:]
    for k in sorted(set(got) | set(want)):
        assert got.get(k) == want.get(k), f"{k}: image {got.get(k)} != directory {want.get(k)}"


def test_bad_input_leaves_nothing(tmp):
    d = os.path.join(tmp, "bad")
    os.mkdir(d)
    cases = {}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("../escape")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"abc"))
    cases["traversal.tar"] = raw.getvalue()
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as t:
        ti = tarfile.TarInfo("file")
        ti.size = 100000
        t.addfile(ti, io.BytesIO(b"z" * 100000))
    cases["truncated.tar"] = good.getvalue()[:50000]
    cases["truncated.tar.gz"] = gzip.compress(good.getvalue(), mtime=0)[:-100]
    gz = bytearray(gzip.compress(good.getvalue(), mtime=0))
    gz[-6] ^= 0xFF  # CRC32 of the trailer
    cases["badcrc.tar.gz"] = bytes(gz)
    for name, data in cases.items():
        src = os.path.join(tmp, name)
        open(src, "wb").write(data)
        p = run(VS, "convert", "-o", os.path.join(d, "out"), src, check=False)
        assert p.returncode == 1, f"{name}: exit {p.returncode} ({p.stderr.decode()})"
        assert b"veritysnap:" in p.stderr, f"{name}: no message"
        assert os.listdir(d) == [], f"{name}: left {os.listdir(d)}"


def test_size_limit(tmp):
    """A layer that expands beyond --max-size (here a 3 GiB sparse file in a 10 KiB tar) is refused before it fills
    the disk: exit 1, a message, nothing left, in both formats; under the limit it converts."""
    src = os.path.join(tmp, "sparse")
    with open(src, "wb") as f:
        f.truncate(3 << 30)
        f.seek(1 << 20)
        f.write(b"data")
    tar = os.path.join(tmp, "s.tar")
    run("tar", "--sparse", "-C", tmp, "-cf", tar, "sparse")
    assert os.path.getsize(tar) < 1 << 20
    out_dir = os.path.join(tmp, "out")
    os.mkdir(out_dir)
    for fmt, limit in (("erofs", "1G"), ("tarfs", "8K")):
        p = run(VS, "convert", "--format", fmt, "--max-size", limit, "-o", os.path.join(out_dir, "l"), tar, check=False)
        assert p.returncode == 1 and b"limit" in p.stderr, f"{fmt}: exit {p.returncode} {p.stderr.decode()}"
        assert os.listdir(out_dir) == [], f"{fmt}: left {os.listdir(out_dir)}"
    # tarfs keeps the tar as it is (10 KiB here): under a 1 MiB limit it converts.
    j = convert(tar, os.path.join(out_dir, "l"), "--format", "tarfs", "--max-size", "1M")
    assert j["size"] < 1 << 20 and os.path.exists(os.path.join(out_dir, "l"))
    assert run(VS, "convert", "--max-size", "2X", "-o", os.path.join(out_dir, "l"), tar, check=False).returncode == 2


def test_inspect_hostile_image(tmp):
    """A directory entry pointing back at the root (a loop) is refused with a message, not followed forever."""
    tar = os.path.join(tmp, "l.tar")
    with tarfile.open(tar, "w") as t:
        for name in ("a", "a/b"):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            t.addfile(ti)
    img = os.path.join(tmp, "loop.img")
    convert(tar, img, "--no-verity", "--no-sidecar")
    entries = json.loads(run(VS, "inspect", "--list", img).stdout)["entries"]
    nid = {e["path"]: e["ino"] for e in entries}
    data = bytearray(open(img, "rb").read())
    import struct
    needle = struct.pack("<Q", nid["a/b"])
    hits = [i for i in range(0, len(data) - 12) if data[i:i + 8] == needle and data[i + 10] == 2 and data[i + 11] == 0]
    assert len(hits) == 2, f"expected a's entry for b and b's '.', found {len(hits)}"
    for h in hits:  # a/b (and its '.') now point at the root
        data[h:h + 8] = struct.pack("<Q", nid[""])
    open(img, "wb").write(data)
    p = run(VS, "inspect", "--list", img, check=False)
    assert p.returncode == 1 and b"loop" in p.stderr, f"exit {p.returncode}: {p.stderr.decode()}"


TESTS = [test_help_version, test_determinism_and_compression, test_veritysetup_agrees, test_tamper,
         test_tarfs_vectors, test_directory_source, test_bad_input_leaves_nothing, test_inspect_hostile_image,
         test_size_limit]


def main():
    run_tests(TESTS, ONLY, prefix="vs-cli-")


main()
