#!/usr/bin/env python3
"""Seed corpus for fuzz_tar_erofs: the small edge layers of tests/tarfs (good and bad), each also gzip'd and zstd'd.
Usage: make_seeds.py OUTDIR"""
import gzip
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tarfs"))
import gen_layers  # noqa: E402

MAX_SEED = 128 * 1024   # libFuzzer mutates small inputs far faster; bigger layers add little coverage


def main(out):
    os.makedirs(out, exist_ok=True)
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for case in gen_layers.cases():
            if case in ("nlink_overflow", "tail_budget", "bigdir", "tails"):
                continue  # megabytes; their code paths are reached by the smaller cases too
            path, _ = gen_layers.generate(case, tmp)
            with open(path, "rb") as f:
                data = f.read()
            if len(data) > MAX_SEED:
                continue
            variants = {"": data}
            if path.endswith(".tar"):
                variants[".gz"] = gzip.compress(data, 6, mtime=0)
                variants[".zst"] = subprocess.run(["zstd", "-q", "-3", "-c"], input=data, stdout=subprocess.PIPE,
                                                  check=True).stdout
            for ext, blob in variants.items():
                with open(os.path.join(out, f"{case}{ext}"), "wb") as f:
                    f.write(blob)
                n += 1
    print(f"{n} seeds in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
