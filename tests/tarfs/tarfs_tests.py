#!/usr/bin/env python3
"""Tests of `veritysnap convert` against real oracles (run by ctest; see CMakeLists.txt).

Usage: tarfs_tests.py --bin VERITYSNAP --work DIR MODE [ARG...]
  oracle CASE...   convert good edge layers; mount each image with the kernel and compare with python's tarfile
  bad CASE...      bad layers (bad_*): exit 1, a message naming the entry, offset and cause, nothing left behind
  determinism      tar, gzip -n, zstd, stdin and repeated runs give the same bytes; --no-verity is the image prefix
  usage            usage and I/O errors exit 2 and leave nothing behind
  corpus NAME      a real layer (debian, npm) from $VERITYSNAP_CORPUS or /var/tmp/veritysnap-corpus (skipped if absent)
  all              everything above (corpus layers only if present)
Exit status: 0 pass, 1 fail, 77 skipped (not root, no loop devices, no EROFS, no corpus).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_layers  # noqa: E402
import oracle  # noqa: E402

SKIP = 77
TIMEOUT = 900


class Failures:
    def __init__(self):
        self.items = []

    def add(self, test, msg):
        self.items.append((test, msg))
        print(f"FAIL {test}: {msg}", flush=True)


def run_convert(bin_, args, stdin=None, env=None, cwd=None):
    t = time.monotonic()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as inp:
        r = subprocess.run([bin_, "convert", *args], stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TIMEOUT, env=env, cwd=cwd)
    r.elapsed = time.monotonic() - t
    r.err = r.stderr.decode("utf-8", "replace").strip()
    return r


def parse_json(r):
    try:
        j = json.loads(r.stdout)
    except ValueError as e:
        return None, f"stdout is not one JSON object ({e}): {r.stdout[:300]!r}"
    return (j, None) if isinstance(j, dict) else (None, f"stdout JSON is not an object: {r.stdout[:300]!r}")


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def mount_skip():
    why = oracle.environment_skip_reason()
    if why:
        print(f"SKIP: {why}; these tests mount images with mount -t erofs -o loop,ro")
    return why


# ------------------------------------------------------------------------------------------------ modes

def check_good(bin_, layer, work, name, fails):
    out = os.path.join(work, "out", "layer.erofs")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = run_convert(bin_, ["-o", out, layer])
    if r.returncode != 0:
        fails.add(name, f"convert exit {r.returncode}: {r.err}")
        return
    j, err = parse_json(r)
    if err:
        fails.add(name, err)
    try:
        diffs, notes = oracle.check_image(layer, out, j)
    except RuntimeError as e:  # mount failed
        fails.add(name, str(e))
        return
    for n in notes:
        print(f"note {name}: {n}")
    for d in diffs:
        fails.add(name, d)
    print(f"{name}: convert {r.elapsed:.2f}s, {len(diffs)} difference(s)", flush=True)
    if not diffs:
        shutil.rmtree(os.path.dirname(out))  # images can be GiBs (sparse_4g); keep them only when something failed


def mode_oracle(bin_, work, cases, fails):
    if mount_skip():
        return SKIP
    for case in cases:
        if case not in gen_layers.GOOD:
            raise SystemExit(f"unknown good case {case}")
        w = fresh(os.path.join(work, case))
        layer, _ = gen_layers.generate(case, w)
        check_good(bin_, layer, w, case, fails)
    return 0


NUM = re.compile(r"(?<![\w.])(-?(?:0x[0-9a-fA-F]+|\d+))")


def mode_bad(bin_, work, cases, fails):
    for case in cases:
        w = fresh(os.path.join(work, case))
        layer, meta = gen_layers.generate(case, os.path.join(w, "in"))
        # The layer really is bad by the independent model too (guards the generator).
        try:
            with tempfile.TemporaryDirectory() as t:
                oracle.Expected(oracle.uncompressed(layer, t))
            fails.add(case, "test bug: the oracle accepts this layer")
        except Exception:
            pass
        outdir = fresh(os.path.join(w, "out"))
        out = os.path.join(outdir, "layer.erofs")
        r = run_convert(bin_, ["-o", out, layer])
        print(f"{case}: exit {r.returncode}: {r.err[:400]}")
        if r.returncode != 1:
            fails.add(case, f"exit {r.returncode}, expected 1 (bad input); stderr: {r.err[:300]!r}")
        if not r.err:
            fails.add(case, "no message on stderr")
        left = sorted(os.listdir(outdir))
        if left:
            fails.add(case, f"left behind in the output directory: {left}")
        if meta.get("entry") and meta["entry"] not in r.err:
            fails.add(case, f"message does not name the entry {meta['entry'][:80]!r}")
        if meta.get("cause") and not re.search(meta["cause"], r.err, re.I):
            fails.add(case, f"message does not name the cause (/{meta['cause']}/)")
        nums = [int(n, 0) for n in NUM.findall(r.err)]
        if any(n < 0 for n in nums):
            fails.add(case, f"message names a negative byte offset: {[n for n in nums if n < 0]}")
        if meta.get("offsets") and not set(nums) & set(meta["offsets"]):
            fails.add(case, f"message names none of the entry's byte offsets {meta['offsets']} (numbers seen: "
                            f"{nums[:10]})")
    return 0


DETERMINISM_CASES = ("types_pax", "whiteouts", "hardlinks", "xattrs", "bigdir", "sparse_pax")
SAME_KEYS = ("format", "size", "image_size", "blocks", "entries", "diff_id", "root_hash")


def first_difference(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                n = min(len(x), len(y))
                return pos + next((i for i in range(n) if x[i] != y[i]), n)
            if not x:
                return None
            pos += len(x)


def mode_determinism(bin_, work, fails):
    for case in DETERMINISM_CASES:
        w = fresh(os.path.join(work, case))
        tar, _ = gen_layers.generate(case, w)
        with open(tar, "rb") as f:
            raw = f.read()
        gz, zst = tar + ".gz", tar + ".zst"
        subprocess.run(["gzip", "-n", "-6", "-k", "-f", tar], check=True)
        subprocess.run(["zstd", "-q", "-3", "-f", tar, "-o", zst], check=True)
        o = lambda n: os.path.join(w, n)
        runs = {  # name -> (args, stdin, env)
            "tar": (["-o", o("tar.img"), tar], None, None),
            "tar.gz": (["-o", o("gz.img"), gz], None, None),
            "tar.zst": (["-o", o("zst.img"), zst], None, None),
            "stdin tar.gz": (["-o", o("stdin.img"), "-"], gz, None),
            "second run, later, other TZ and umask": (["-o", o("again.img"), tar], None,
                                                       dict(os.environ, TZ="Asia/Tokyo")),
        }
        results = {}
        for name, (args, stdin, env) in runs.items():
            if name.startswith("second"):
                time.sleep(1.1)  # a wall-clock second later
                old = os.umask(0o077)
            r = run_convert(bin_, args, stdin=stdin, env=env)
            if name.startswith("second"):
                os.umask(old)
            if r.returncode != 0:
                fails.add(f"{case} {name}", f"convert exit {r.returncode}: {r.err}")
                continue
            j, err = parse_json(r)
            if err:
                fails.add(f"{case} {name}", err)
                continue
            results[name] = (args[1], j)
        if "tar" not in results:
            continue
        ref_path, ref = results["tar"]
        want_diff = "sha256:" + hashlib.sha256(raw).hexdigest()
        for name, (path, j) in results.items():
            if j.get("diff_id") != want_diff:
                fails.add(f"{case} {name}", f"diff_id {j.get('diff_id')}, expected {want_diff}")
            for k in SAME_KEYS:
                if j.get(k) != ref.get(k):
                    fails.add(f"{case} {name}", f"JSON {k} {j.get(k)!r} differs from the plain tar's {ref.get(k)!r}")
            d = first_difference(ref_path, path)
            if d is not None:
                fails.add(f"{case} {name}", f"output differs from the plain tar's output from byte {d}")
        # --no-verity writes exactly the image: the verity file's first image_size bytes
        nv = o("noverity.img")
        r = run_convert(bin_, ["--no-verity", "-o", nv, tar])
        if r.returncode != 0:
            fails.add(f"{case} --no-verity", f"convert exit {r.returncode}: {r.err}")
        else:
            j, err = parse_json(r)
            size = os.path.getsize(nv)
            if err or j.get("image_size") != ref.get("image_size") or size != ref.get("image_size"):
                fails.add(f"{case} --no-verity", f"file {size} bytes, JSON image_size "
                          f"{(j or {}).get('image_size')}, verity run's image_size {ref.get('image_size')}")
            with open(nv, "rb") as a, open(ref_path, "rb") as b:
                if a.read() != b.read(size):
                    fails.add(f"{case} --no-verity", "image differs from the first image_size bytes of the verity "
                                                     "output")
        # tarfs: the original tar comes first, and the output does not depend on the compression either
        tf = {}
        for name, src in (("tar", tar), ("tar.gz", gz)):
            out = o(f"tarfs-{name}.img")
            r = run_convert(bin_, ["--format", "tarfs", "-o", out, src])
            if r.returncode != 0:
                fails.add(f"{case} tarfs {name}", f"convert exit {r.returncode}: {r.err}")
                continue
            j, _ = parse_json(r)
            tf[name] = out
            if (j or {}).get("format") != "tarfs":
                fails.add(f"{case} tarfs {name}", f"JSON format {(j or {}).get('format')!r}")
            with open(out, "rb") as f:
                if f.read(len(raw)) != raw:
                    fails.add(f"{case} tarfs {name}", "output does not start with the uncompressed tar, byte for byte")
            if os.path.getsize(out) % 4096:
                fails.add(f"{case} tarfs {name}", f"size {os.path.getsize(out)} not a multiple of 4096")
        if len(tf) == 2 and first_difference(tf["tar"], tf["tar.gz"]) is not None:
            fails.add(f"{case} tarfs", "tarfs output from tar.gz differs from the one from tar")
        print(f"{case}: {len(results)} erofs runs, --no-verity, {len(tf)} tarfs runs compared", flush=True)
        shutil.rmtree(w)
    return 0


def mode_usage(bin_, work, fails):
    w = fresh(os.path.join(work, "usage"))
    layer, _ = gen_layers.generate("empty", os.path.join(w, "in"))
    outdir = fresh(os.path.join(w, "out"))
    out = os.path.join(outdir, "x.img")
    cases = [
        ("no arguments", []),
        ("no layer", ["-o", out]),
        ("no -o", [layer]),
        ("unknown format", ["--format", "squashfs", "-o", out, layer]),
        ("unknown option", ["--frobnicate", "-o", out, layer]),
        ("missing layer file", ["-o", out, os.path.join(w, "does-not-exist.tar")]),
        ("output directory missing", ["-o", os.path.join(w, "no-such-dir", "x.img"), layer]),
        ("layer is a directory", ["-o", out, w]),
    ]
    for name, args in cases:
        r = run_convert(bin_, args)
        print(f"usage {name}: exit {r.returncode}: {r.err[:200]}")
        if r.returncode != 2:
            fails.add(f"usage {name}", f"exit {r.returncode}, expected 2; stderr {r.err[:200]!r}")
        if not r.err:
            fails.add(f"usage {name}", "no message on stderr")
        left = os.listdir(outdir)
        if left:
            fails.add(f"usage {name}", f"left behind: {left}")
            fresh(outdir)
    return 0


def mode_corpus(bin_, work, names, fails):
    base = os.environ.get("VERITYSNAP_CORPUS", "/var/tmp/veritysnap-corpus")
    found = False
    for name in names:
        layer = next((os.path.join(base, f"{name}.{ext}") for ext in ("tar.gz", "tar.zst", "tar")
                      if os.path.exists(os.path.join(base, f"{name}.{ext}"))), None)
        if layer is None:
            print(f"corpus layer {name} not in {base} (make it with ../shared/bench/make-corpus.sh)")
            continue
        if mount_skip():
            return SKIP
        found = True
        check_good(bin_, layer, fresh(os.path.join(work, f"corpus-{name}")), f"corpus {name}", fails)
    if not found:
        print("SKIP: no corpus layers")
        return SKIP
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("mode", choices=["oracle", "bad", "determinism", "usage", "corpus", "all"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    bin_ = os.path.abspath(a.bin)
    if not os.access(bin_, os.X_OK):
        print(f"FAIL: {bin_} is not an executable", file=sys.stderr)
        return 1
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="vs-tarfs-tests-"))
    os.makedirs(work, exist_ok=True)
    fails = Failures()
    t = time.monotonic()
    if a.mode == "oracle":
        rc = mode_oracle(bin_, work, a.args or list(gen_layers.GOOD), fails)
    elif a.mode == "bad":
        rc = mode_bad(bin_, work, a.args or [c for c in gen_layers.cases() if c.startswith("bad_")], fails)
    elif a.mode == "determinism":
        rc = mode_determinism(bin_, work, fails)
    elif a.mode == "usage":
        rc = mode_usage(bin_, work, fails)
    elif a.mode == "corpus":
        rc = mode_corpus(bin_, work, a.args or ["debian", "npm"], fails)
    else:
        mode_usage(bin_, work, fails)
        mode_bad(bin_, work, [c for c in gen_layers.cases() if c.startswith("bad_")], fails)
        mode_determinism(bin_, work, fails)
        mode_oracle(bin_, work, list(gen_layers.GOOD), fails)
        mode_corpus(bin_, work, ["debian", "npm"], fails)
        rc = 0  # skipped parts said so above
    print(f"{a.mode}: {len(fails.items)} failure(s) in {time.monotonic() - t:.1f}s")
    if fails.items:
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
