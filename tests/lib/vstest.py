"""Helpers shared by the python test scripts: commands with captured output, processes we start (with their log
files), waiting, logging, skipping (exit 77), non-fatal checks, a runner for scripts made of test functions, and a
throwaway containerd.

Scripts import it with the tests/lib directory put first on sys.path, relative to their own file:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


class Fail(AssertionError):
    """A failed assertion of a test (an AssertionError, so test-function runners count it like `assert`)."""


def log(*a):
    print("[%s %s]" % (os.path.splitext(os.path.basename(sys.argv[0]))[0], time.strftime("%H:%M:%S")), *a,
          flush=True)


def skip(msg):
    print("SKIP: " + msg, flush=True)
    sys.exit(SKIP)


failures = []


def check(cond, msg):
    """A check that does not stop the script: the message is logged and kept in failures; returns cond."""
    if not cond:
        failures.append(msg)
        log("FAIL: " + msg)
    return cond


def run(cmd, check=True, timeout=300, text=True, **kw):
    """Runs cmd (a list) with stdout and stderr captured; with check, a non-zero exit raises Fail naming the
    command, its status and the ends of both outputs."""
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        out, err = (p.stdout[-4000:], p.stderr[-4000:])
        if not text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        raise Fail("command failed (exit %d): %s\n--- stdout\n%s\n--- stderr\n%s"
                   % (p.returncode, " ".join(str(c) for c in cmd), out, err))
    return p


def run_args(*args, check=True, **kw):
    """run() for a command written out as arguments: bytes out, no time limit (the test-function scripts)."""
    return run(args, check=check, timeout=None, text=False, **kw)


def run_tests(tests, only=(), prefix="vs-test-"):
    """Runs each test function (all, or those named in only) with a fresh temp dir; a test returns SKIP to skip.
    Exits 1 if any failed (AssertionError), SKIP if every test named in only skipped, else returns."""
    failed, skipped = [], 0
    for t in tests:
        if only and t.__name__ not in only:
            continue
        tmp = tempfile.mkdtemp(prefix=prefix)
        try:
            r = t(tmp)
            if r == SKIP:
                skipped += 1
                print(f"SKIP {t.__name__}")
            else:
                print(f"ok   {t.__name__}")
        except AssertionError as e:
            failed.append(t.__name__)
            print(f"FAIL {t.__name__}: {e}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(1)
    if skipped and only and skipped == len(only):
        sys.exit(SKIP)


def mounts_under(d):
    """Mount points at or below d (from /proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == d or mp.startswith(d + "/"):
                out.append(mp)
    return out


class Proc:
    """A long-running process we started, with its log file."""

    def __init__(self, name, cmd, logpath):
        self.name, self.cmd, self.logpath = name, cmd, logpath
        self.logf = open(logpath, "ab")
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                self.logf.close()
                return None
        self.logf.close()
        return self.p.returncode

    def tail(self, n=30):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def wait_for(pred, what, proc=None, timeout=30):
    """Polls pred until it holds; raises Fail on timeout or when proc exits first (with its log's tail)."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and not proc.alive():
            raise Fail("%s exited (status %s) while waiting for %s:\n%s" % (proc.name, proc.p.returncode, what,
                                                                          proc.tail()))
        time.sleep(0.1)
    raise Fail("timed out waiting for " + what + (":\n" + proc.tail() if proc else ""))


def start_containerd(d, sock, proxies=(), debug=False, extra=""):
    """Debian's containerd 1.6 with root, state, opt, config (containerd.toml) and log (containerd.log) under d,
    its socket at sock, no CRI; proxies: (name, socket) pairs registered as proxy snapshotters. Returns the Proc
    once `ctr version` answers (stopped again, and Fail raised, if it does not within 30 s)."""
    text = f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""
    if debug:
        text += '[debug]\n  address = ""\n  level = "debug"\n[metrics]\n  address = ""\n'
    for name, address in proxies:
        text += f'\n[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{address}"\n'
    text += extra
    cfg = os.path.join(d, "containerd.toml")
    with open(cfg, "w") as f:
        f.write(text)
    proc = Proc("containerd", ["containerd", "--config", cfg], os.path.join(d, "containerd.log"))
    try:
        wait_for(lambda: os.path.exists(sock) and run(["ctr", "-a", sock, "version"], check=False).returncode == 0,
                 "containerd", proc)
    except BaseException:
        proc.stop()
        raise
    return proc
