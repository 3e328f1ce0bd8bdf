#!/usr/bin/env python3
"""Unpack benchmark: `ctr images import --snapshotter S` of the corpus image (image.tar from
../shared/bench/make-corpus.sh) with S = veritysnap (the directory path: containerd extracts, veritysnapd converts
at Commit) and S = overlayfs, each against a fresh containerd (and a fresh veritysnapd), alternating, in one run.
Prints the median times and their ratio. Not a test.

Usage (as root): bench/unpack.py [--runs N] [--image image.tar] [--veritysnapd build/bin/veritysnapd]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
top = os.path.dirname(here)
corpus = os.environ.get("VERITYSNAP_CORPUS", "/var/tmp/veritysnap-corpus")


def wait_for(pred, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def one_run(snapshotter, image, vsd):
    tmp = tempfile.mkdtemp(prefix="vs-bench-unpack-")
    sock, vs_sock = os.path.join(tmp, "c.sock"), os.path.join(tmp, "vs.sock")
    procs = []
    try:
        if snapshotter == "veritysnap":
            procs.append(subprocess.Popen([vsd, "--root", os.path.join(tmp, "vs"), "--address", vs_sock,
                                           "--verity", "off"], stderr=subprocess.DEVNULL))
            wait_for(lambda: os.path.exists(vs_sock), "veritysnapd")
        cfg = os.path.join(tmp, "containerd.toml")
        with open(cfg, "w") as f:
            f.write(f'''version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[proxy_plugins.veritysnap]
  type = "snapshot"
  address = "{vs_sock}"
''')
        procs.append(subprocess.Popen(["containerd", "--config", cfg], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        ctr = ["ctr", "-a", sock, "-n", "bench"]
        wait_for(lambda: subprocess.run(ctr + ["version"], capture_output=True).returncode == 0, "containerd")
        start = time.monotonic()
        subprocess.run(ctr + ["images", "import", "--snapshotter", snapshotter, image], check=True,
                       capture_output=True)
        return time.monotonic() - start
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        with open("/proc/self/mountinfo") as f:
            mounts = [l.split()[4] for l in f if l.split()[4].startswith(tmp)]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--image", default=os.path.join(corpus, "image.tar"))
    ap.add_argument("--veritysnapd", default=os.path.join(top, "build", "bin", "veritysnapd"))
    a = ap.parse_args()
    times = {"overlayfs": [], "veritysnap": []}
    for i in range(a.runs):
        for s in times:
            t = one_run(s, a.image, a.veritysnapd)
            times[s].append(t)
            print(f"run {i + 1}: {s:10s} {t:6.2f} s", flush=True)
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"\n| snapshotter | median import time | runs |\n|---|---|---|")
    for s, v in times.items():
        print(f"| {s} | {med[s]:.2f} s | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"\nveritysnap / overlayfs = {med['veritysnap'] / med['overlayfs']:.2f}")


main()
