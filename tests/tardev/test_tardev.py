#!/usr/bin/env python3
"""tardev index tests driven through test_tardev_index (the C harness).

  test_tardev.py listing  HARNESS VECTORS WORKDIR   reader output == a model built from Python's tarfile listing
  test_tardev.py warnings HARNESS VECTORS WORKDIR   warnings fire (and --strict fails) on small generated tars

Generated files go to WORKDIR (the build dir). Exit 77 = skipped."""
import io
import os
import stat
import subprocess
import sys
import tarfile

S_IFMT = 0o170000


def run(args):
    return subprocess.run(args, capture_output=True, text=True, errors="replace")


# ---- listing: the reader against an oracle built from the tar's own listing (Python's tarfile) ----

def model_listing(tar_path):
    """What the guest should see, from tarfile's view of the members and the documented tardev rules: parents the
    tar does not list get mode 0 (not directories, so nothing below them is reachable), whiteouts become 0/0
    character devices, .wh..wh..opq sets the opaque flag, hardlinks share the target's inode, only 0777 kept."""
    nodes = {(): {"mode": stat.S_IFDIR | 0o555, "uid": 0, "gid": 0, "mtime": 0, "size": 0, "offset": None,
                  "opaque": 0, "target": "-", "rdev": (0, 0), "kids": {}}}

    def blank():
        return {"mode": 0, "uid": 0, "gid": 0, "mtime": 0, "size": 0, "offset": 0, "opaque": 0, "target": "-",
                "rdev": (0, 0), "kids": {}}

    def walk(parts):
        cur = ()
        for p in parts:
            nxt = cur + (p,)
            if nxt not in nodes:
                nodes[nxt] = blank()
                nodes[cur]["kids"][p] = nxt
            cur = nxt
        return cur

    with tarfile.open(tar_path) as t:
        for m in t.getmembers():
            parts = tuple(p for p in m.name.split("/") if p not in ("", "."))
            base = parts[-1] if parts else ""
            if base == ".wh..wh..opq":
                nodes[walk(parts[:-1])]["opaque"] = 1
                continue
            if base.startswith(".wh."):
                n = nodes[walk(parts[:-1] + (base[4:],))]
                n["mode"] = (n["mode"] & ~S_IFMT) | stat.S_IFCHR
                n["size"], n["offset"], n["kids"] = 0, 0, {}
                continue
            if m.islnk():
                target = walk(tuple(p for p in m.linkname.split("/") if p not in ("", ".")))
                parent = walk(parts[:-1])
                nodes[parent]["kids"][base] = target
                continue
            key = walk(parts)
            n = nodes[key]
            n.update(uid=m.uid, gid=m.gid, mtime=int(m.mtime), kids={}, opaque=0, target="-", rdev=(0, 0),
                     size=0, offset=0)
            perm = m.mode & 0o777
            if m.isreg():
                n.update(mode=stat.S_IFREG | perm, size=m.size, offset=m.offset_data)
            elif m.isdir():
                n.update(mode=stat.S_IFDIR | perm, offset=None)
            elif m.issym():
                n.update(mode=stat.S_IFLNK | perm, size=len(m.linkname.encode()), target=m.linkname, offset=None)
            elif m.ischr() or m.isblk():
                n.update(mode=(stat.S_IFCHR if m.ischr() else stat.S_IFBLK) | perm, rdev=(m.devmajor, m.devminor),
                         offset=(m.devmajor << 32) | m.devminor)
            elif m.isfifo():
                n.update(mode=stat.S_IFIFO | perm)
    lines, queue = [], [((), "")]
    while queue:
        key, path = queue.pop(0)
        node = nodes[key]
        if node["mode"] & S_IFMT != stat.S_IFDIR:
            continue
        for name in sorted(node["kids"], key=lambda s: s.encode()):
            child = nodes[node["kids"][name]]
            cpath = path + "/" + name if path else name
            size = child["size"]
            if child["mode"] & S_IFMT == stat.S_IFDIR:
                size = 32 * len(child["kids"])
            lines.append((cpath, "%o" % child["mode"], str(child["uid"]), str(child["gid"]), str(child["mtime"]),
                          str(size), None if child["offset"] is None else str(child["offset"]),
                          str(child["opaque"]), child["target"], str(child["rdev"][0]), str(child["rdev"][1])))
            queue.append((node["kids"][name], cpath))
    return lines


def listing(harness, vectors, work):
    names = sorted(f[:-4] for f in os.listdir(vectors) if f.endswith(".tar")) if os.path.isdir(vectors) else []
    if not names:
        print("SKIP: tardev vectors not found at %s (set VERITYSNAP_TARDEV_VECTORS)" % vectors)
        return 77
    passed = failed = 0
    for name in names:
        tar_path, out = os.path.join(vectors, name + ".tar"), os.path.join(work, name + ".tar+index")
        r = run([harness, "index", tar_path, out])
        if r.returncode:
            print("FAIL %s: index: %s" % (name, r.stdout + r.stderr))
            failed += 1
            continue
        r = run([harness, "list", out])
        if r.returncode:
            print("FAIL %s: list: %s" % (name, r.stdout + r.stderr))
            failed += 1
            continue
        got = [tuple(line.split("\t")) for line in r.stdout.splitlines()]
        want = model_listing(tar_path)
        ok = len(got) == len(want)
        for g, w in zip(got, want):
            if any(wv is not None and gv != wv for gv, wv in zip(g, w)):
                print("FAIL %s: got  %s\n%s  want %s" % (name, "\t".join(g), " " * len(name), "\t".join(
                    x if x is not None else "*" for x in w)))
                ok = False
        if len(got) != len(want):
            print("FAIL %s: %d entries listed, model has %d" % (name, len(got), len(want)))
        if ok:
            print("ok %s: %d entries match the tar listing" % (name, len(got)))
            passed += 1
        else:
            failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


# ---- warnings on generated tars ----

def make_tar(path, members, fmt=tarfile.PAX_FORMAT, pax_headers=None):
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_headers) as t:
        for m in members:
            ti = tarfile.TarInfo(m["name"])
            ti.type = m.get("type", tarfile.REGTYPE)
            ti.mode = m.get("mode", 0o755 if ti.type == tarfile.DIRTYPE else 0o644)
            ti.mtime = 1700000000
            ti.linkname = m.get("link", "")
            ti.pax_headers = m.get("pax", {})
            data = m.get("data", b"")
            ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)


D = {"type": tarfile.DIRTYPE}
CASES = [
    # (name, members, tar options, [(entry, message fragment)] that must be warned, exact warning count or None)
    ("clean", [dict(D, name="etc"), {"name": "etc/hosts", "data": b"127.0.0.1\n"},
               {"name": "etc/link", "type": tarfile.SYMTYPE, "link": "hosts"}], {}, [], 0),
    ("xattrs", [{"name": "ping", "data": b"x", "pax": {"SCHILY.xattr.security.capability": "\x01\x02",
                                                        "SCHILY.xattr.user.note": "n"}}], {},
     [("ping", "xattrs dropped"), ("ping", "security.capability"), ("ping", "user.note")], 1),
    ("unlisted-parents", [{"name": "usr/bin/tool", "data": b"t"}], {},
     [("usr", "not listed in the tar"), ("usr/bin/tool", "unreachable in the guest: 'usr'")], 2),
    ("skipped-types", [dict(D, name="d"), {"name": "d/contig", "type": tarfile.CONTTYPE},
                       {"name": "d/sock", "type": b"Z"}], {"pax_headers": {"comment": "global"}},
     [("d/contig", "type '7' is not handled"), ("d/sock", "type 'Z' is not handled"),
      ("././@PaxHeader", "type 'g' is not handled")], 3),
    ("normalised", [dict(D, name="/abs"), {"name": "x/../abs/f", "data": b"f"},
                    {"name": "../escape", "data": b"e"}], {},
     [("/abs/", "normalises"), ("x/../abs/f", "normalises"), ("../escape", "points above the root")], 3),
    ("setuid", [{"name": "sudo", "data": b"s", "mode": 0o4755}], {}, [("sudo", "setuid/setgid/sticky")], 1),
    ("hardlink-to-dir", [dict(D, name="d"), {"name": "l", "type": tarfile.LNKTYPE, "link": "d"}], {},
     [("l", "hardlink to something that is not a regular file")], 1),
    ("long-symlinks-reordered",
     [dict(D, name="z"), dict(D, name="a"), {"name": "z/l1", "type": tarfile.SYMTYPE, "link": "/" + "A" * 150},
      {"name": "a/l2", "type": tarfile.SYMTYPE, "link": "/" + "B" * 120}], {},
     [("a/l2", "wrong bytes"), ("z/l1", "wrong bytes")], 2),
    ("long-symlink-dropped",
     [{"name": "x", "type": tarfile.SYMTYPE, "link": "/" + "C" * 130}, {"name": "x", "data": b"now a file"}], {},
     [("x", "shifts every name")], 1),
    ("concatenated", [{"name": "first", "data": b"1"}, {"name": "second", "data": b"2"}], {},
     [("", "not indexed by tardev")], 1),
    ("replaced-dir", [dict(D, name="d"), {"name": "d/f", "data": b"f"}, dict(D, name="d")], {},
     [("d/", "drops the 1 entries below it")], 1),
]


def warnings(harness, vectors, work):
    del vectors
    passed = failed = 0
    for name, members, opts, expect, count in CASES:
        tar_path, out = os.path.join(work, name + ".tar"), os.path.join(work, name + ".tar+index")
        if name == "concatenated":
            make_tar(tar_path + ".1", members[:1])
            make_tar(tar_path + ".2", members[1:])
            with open(tar_path, "wb") as f:
                for part in (".1", ".2"):
                    with open(tar_path + part, "rb") as p:
                        f.write(p.read())
        else:
            make_tar(tar_path, members, **opts)
        r = run([harness, "index", tar_path, out])
        got = [tuple(line[5:].split("\t", 1)) for line in r.stdout.splitlines() if line.startswith("WARN ")]
        problems = []
        if r.returncode:
            problems.append("index failed: " + r.stdout + r.stderr)
        for entry, fragment in expect:
            if not any(e == entry and fragment in msg for e, msg in got):
                problems.append("no warning (%r, %r)" % (entry, fragment))
        if count is not None and len(got) != count:
            problems.append("%d warnings, expected %d" % (len(got), count))
        if expect:
            s = run([harness, "index", tar_path, out + ".strict", "--strict"])
            if s.returncode != 2 or "EBADMSG" not in s.stdout and "-74" not in s.stdout:
                problems.append("--strict did not fail with -EBADMSG: rc %d %s" % (s.returncode, s.stdout))
        else:
            s = run([harness, "index", tar_path, out + ".strict", "--strict"])
            if s.returncode:
                problems.append("--strict failed on a clean tar: " + s.stdout)
        if problems:
            print("FAIL %s:\n  %s\n  warnings: %s" % (name, "\n  ".join(problems), got))
            failed += 1
        else:
            print("ok %s: %d warning(s)%s" % (name, len(got), ", strict fails" if expect else ""))
            passed += 1
    # The reordered long symlinks: the reader must show what the guest reads (tardev's misplaced bytes).
    r = run([harness, "list", os.path.join(work, "long-symlinks-reordered.tar+index")])
    targets = {l.split("\t")[0]: l.split("\t")[8] for l in r.stdout.splitlines()}
    if targets.get("a/l2") == "/" + "A" * 120 and targets.get("z/l1") == "A" * 30 + "/" + "B" * 120:
        print("ok long-symlinks-reordered: reader shows tardev's misplaced targets")
        passed += 1
    else:
        print("FAIL long-symlinks-reordered listing: %s" % targets)
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("listing", "warnings"):
        print(__doc__)
        return 2
    mode, harness, vectors, work = sys.argv[1:]
    vectors = os.environ.get("VERITYSNAP_TARDEV_VECTORS") or vectors
    os.makedirs(work, exist_ok=True)
    return listing(harness, vectors, work) if mode == "listing" else warnings(harness, vectors, work)


if __name__ == "__main__":
    sys.exit(main())
