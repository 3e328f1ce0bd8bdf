#!/usr/bin/env python3
"""Tests of `veritysnap image roothash` against outside oracles: `veritysnap convert`/`roothash` run on each layer
blob alone (the per-layer converter, already checked against veritysetup and the kernel), python's hashlib for
digests, diff IDs and chain IDs (OCI image spec), and for the registry tests Debian's distribution registry
(`docker-registry`) fed by Debian's `skopeo`, with TLS from an openssl-made CA, htpasswd basic auth and a bearer-token
front end served here; the containerd test runs Debian's containerd 1.6 (as root) and imports with `ctr`.

Usage: test_image.py VERITYSNAP_BINARY [TEST_NAME...]   (exit 77 when a needed tool is missing)
"""
import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import platform
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from vstest import SKIP, run_args as run, run_tests, start_containerd  # noqa: E402

VS = sys.argv[1]
ONLY = set(sys.argv[2:])

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {"none": "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform():
    m = platform.machine()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def layer_tar(seed, files=30):
    """A deterministic layer: directories, files of edge sizes, a symlink, a whiteout."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name, typ=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mtime, ti.mode = typ, 1700000000, 0o755 if typ == tarfile.DIRTYPE else 0o644
            for k, v in kw.items():
                setattr(ti, k, v)
            ti.size = len(data) if typ == tarfile.REGTYPE else 0
            t.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)
        add(f"d{seed}", tarfile.DIRTYPE)
        for i, size in enumerate([0, 1, 4095, 4096, 4097, 70000 + seed]):
            add(f"d{seed}/f{i}", data=bytes((j * 7 + i + seed) % 251 for j in range(size)))
        for i in range(files):
            add(f"d{seed}/many/file-{i:04d}", data=f"layer {seed} file {i}\n".encode() * (i % 5))
        add(f"d{seed}/link", tarfile.SYMTYPE, linkname="f1")
        add(f"gone{seed}/.wh.x")
    return buf.getvalue()


def compress(data, how):
    if how == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout
    return data


class Layout:
    """An OCI image layout written by hand: blobs, manifests, configs, an index."""

    def __init__(self, path):
        self.path = path
        os.makedirs(f"{path}/blobs/sha256", exist_ok=True)
        with open(f"{path}/oci-layout", "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index = []
        self.images = {}  # manifest digest -> dict(layers=[(blob, tar, mediatype)], config=..., platform=...)

    def blob(self, data):
        d = sha(data)
        with open(f"{self.path}/blobs/sha256/{d[7:]}", "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    def image(self, layers, plat="linux/amd64", diff_ids=None, media_types=None):
        """layers: [(tar bytes, compression)]; returns the manifest descriptor."""
        os_, arch = plat.split("/")[:2]
        blobs = [compress(t, c) for t, c in layers]
        config = {"architecture": arch, "os": os_, "config": {},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(t) for t, _ in layers]}}
        cfg = self.blob(json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": dict(mediaType=MT_CONFIG, **cfg),
                    "layers": [dict(mediaType=(media_types[i] if media_types else MT_LAYER[c]), **self.blob(b))
                               for i, (b, (_, c)) in enumerate(zip(blobs, layers))]}
        desc = dict(mediaType=MT_MANIFEST, **self.blob(json.dumps(manifest).encode()))
        self.images[desc["digest"]] = {"layers": list(zip(blobs, [t for t, _ in layers])), "platform": plat,
                                       "config": cfg["digest"]}
        return desc

    def add(self, desc, ref=None, plat=None):
        d = dict(desc)
        if ref:
            d["annotations"] = {"org.opencontainers.image.ref.name": ref}
        if plat:
            os_, arch = plat.split("/")[:2]
            d["platform"] = {"os": os_, "architecture": arch}
        self.index.append(d)

    def multi(self, descs, ref):
        idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
        for d in descs:
            os_, arch = self.images[d["digest"]]["platform"].split("/")[:2]
            idx["manifests"].append(dict(d, platform={"os": os_, "architecture": arch}))
        desc = dict(mediaType=MT_INDEX, **self.blob(json.dumps(idx).encode()))
        self.add(desc, ref)
        return desc

    def write(self):
        with open(f"{self.path}/index.json", "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.index}, f)


def expected(img, *flags, tmp):
    """Per-layer oracle: `veritysnap roothash` on each blob alone, hashlib for digests, diff and chain IDs."""
    out, chain = [], None
    for i, (blob, tar) in enumerate(img["layers"]):
        p = f"{tmp}/oracle-blob"
        with open(p, "wb") as f:
            f.write(blob)
        r = json.loads(run(VS, "roothash", *flags, p).stdout)[0]
        diff = sha(tar)
        chain = diff if chain is None else sha(f"{chain} {diff}".encode())
        assert r["diff_id"] == diff, (r["diff_id"], diff)
        out.append({"index": i, "digest": sha(blob), "size": len(blob), "diff_id": diff, "chain_id": chain,
                    "root_hash": r["root_hash"], "format": r["format"], "data_blocks": r.get("data_blocks")})
    return out


def check_layers(got, want, digests=True):
    assert len(got["layers"]) == len(want), (len(got["layers"]), len(want))
    for g, w in zip(got["layers"], want):
        for k in ("index", "diff_id", "chain_id", "root_hash", "format", "data_blocks") + \
                 (("digest", "size") if digests else ()):
            assert g[k] == w[k], f"layer {w['index']} {k}: got {g[k]}, want {w[k]}"


def image_roothash(*args, check=True):
    p = run(VS, "image", "roothash", "--quiet", *args, check=check)
    return (json.loads(p.stdout) if p.returncode == 0 else None), p


def three_layer_image(tmp, ref="v1"):
    lay = Layout(f"{tmp}/oci")
    desc = lay.image([(layer_tar(1), "gzip"), (layer_tar(2), "zstd"), (layer_tar(3), "none")], host_platform())
    lay.add(desc, ref)
    lay.write()
    return lay, desc


def test_oci_layout(tmp):
    lay, desc = three_layer_image(tmp)
    img = lay.images[desc["digest"]]
    for flags in ([], ["--format", "tarfs"], ["--hash-algorithm", "sha512", "--salt", "-", "--no-superblock"]):
        got, _ = image_roothash("--oci-layout", lay.path, *flags)
        check_layers(got, expected(img, *flags, tmp=tmp))
        assert got["manifest_digest"] == desc["digest"] and got["config_digest"] == img["config"]
        assert got["platform"] == host_platform()
        assert got["image"].startswith("oci:")
        assert [l["media_type"] for l in got["layers"]] == [MT_LAYER[c] for c in ("gzip", "zstd", "none")]
        assert all(k in got["layers"][0] for k in ("salt", "hash_algorithm", "hash_offset", "table"))
    # --ref picks by name; a wrong name is a clear error
    got, _ = image_roothash("--oci-layout", lay.path, "--ref", "v1")
    _, p = image_roothash("--oci-layout", lay.path, "--ref", "nope", check=False)
    assert p.returncode != 0 and b"no manifest named 'nope'" in p.stderr, p.stderr


def tar_dir(src, dst, gz=False):
    with tarfile.open(dst, "w:gz" if gz else "w") as t:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for n in sorted(files):
                full = os.path.join(root, n)
                t.add(full, arcname=os.path.relpath(full, src))


def test_oci_archive(tmp):
    lay, desc = three_layer_image(tmp)
    want = expected(lay.images[desc["digest"]], tmp=tmp)
    for gz in (False, True):
        arc = f"{tmp}/image.tar" + (".gz" if gz else "")
        tar_dir(lay.path, arc, gz)
        got, _ = image_roothash("--oci-archive", arc)
        check_layers(got, want)
        assert got["manifest_digest"] == desc["digest"]


def docker_archive(tmp, img, new_layout):
    """`docker save` output: old (<id>/layer.tar, <hex>.json) or new (Docker 25+: OCI blobs + manifest.json)."""
    tars = [t for _, t in img["layers"]]
    os_, arch = img["platform"].split("/")[:2]
    config = json.dumps({"architecture": arch, "os": os_, "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}}).encode()
    members = {}
    if new_layout:
        cname = f"blobs/sha256/{sha(config)[7:]}"
        lnames = [f"blobs/sha256/{sha(t)[7:]}" for t in tars]
        members["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    else:
        cname = f"{sha(config)[7:]}.json"
        lnames = [f"{hashlib.sha256(str(i).encode() + t[:64]).hexdigest()}/layer.tar" for i, t in enumerate(tars)]
        for n in lnames:
            members[n.replace("layer.tar", "VERSION")] = b"1.0"
        members["repositories"] = b'{"test/image":{"1":"x"}}'
    members[cname] = config
    for n, t in zip(lnames, tars):
        members[n] = t
    members["manifest.json"] = json.dumps([{"Config": cname, "RepoTags": ["test/image:1"], "Layers": lnames}]).encode()
    path = f"{tmp}/docker-{'new' if new_layout else 'old'}.tar"
    with tarfile.open(path, "w") as t:
        for n, data in members.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path


def test_docker_archive(tmp):
    lay, desc = three_layer_image(tmp)
    img = lay.images[desc["digest"]]
    want = expected(img, tmp=tmp)
    for new in (False, True):
        path = docker_archive(tmp, img, new)
        got, _ = image_roothash("--docker-archive", path)
        # The archive holds the uncompressed layers: same diff IDs, chain IDs and root hashes, other blob digests.
        check_layers(got, want, digests=False)
        for g, (_, t) in zip(got["layers"], img["layers"]):
            assert g["digest"] == sha(t) and g["size"] == len(t), g
        got, _ = image_roothash("--docker-archive", path, "--ref", "test/image:1")
        check_layers(got, want, digests=False)
        _, p = image_roothash("--docker-archive", path, "--ref", "other:2", check=False)
        assert p.returncode != 0 and b"no image tagged 'other:2'" in p.stderr, p.stderr


def test_multi_platform(tmp):
    lay = Layout(f"{tmp}/oci")
    amd = lay.image([(layer_tar(10), "gzip"), (layer_tar(11), "zstd")], "linux/amd64")
    arm = lay.image([(layer_tar(20), "gzip")], "linux/arm64")
    s390 = lay.image([(layer_tar(30), "none")], "linux/s390x")
    idx = lay.multi([amd, arm, s390], "multi")
    lay.write()
    for plat, d in (("linux/arm64", arm), ("linux/amd64", amd), ("linux/s390x", s390)):
        got, _ = image_roothash("--oci-layout", lay.path, "--platform", plat)
        check_layers(got, expected(lay.images[d["digest"]], tmp=tmp))
        assert got["platform"] == plat and got["manifest_digest"] == d["digest"]
    host = {"linux/amd64": amd, "linux/arm64": arm}.get(host_platform())
    if host:
        got, _ = image_roothash("--oci-layout", lay.path)
        assert got["manifest_digest"] == host["digest"]
    got, _ = image_roothash("--oci-layout", lay.path, "--all-platforms")
    assert [g["platform"] for g in got] == ["linux/amd64", "linux/arm64", "linux/s390x"], got
    assert sum(len(g["layers"]) for g in got) == 4
    _, p = image_roothash("--oci-layout", lay.path, "--platform", "windows/amd64", check=False)
    assert p.returncode != 0 and b"no image for platform windows/amd64" in p.stderr, p.stderr
    assert idx["digest"].encode() in p.stderr


def test_output_dir(tmp):
    lay, desc = three_layer_image(tmp)
    img = lay.images[desc["digest"]]
    for flags in ([], ["--format", "tarfs"]):
        out = f"{tmp}/out{len(flags)}"
        os.mkdir(out)
        got, _ = image_roothash("--oci-layout", lay.path, "--output-dir", out, *flags)
        ext = "tarfs" if flags else "erofs"
        for g, (blob, tar) in zip(got["layers"], img["layers"]):
            with open(f"{tmp}/blob", "wb") as f:
                f.write(blob)
            ref = json.loads(run(VS, "convert", *flags, "-o", f"{tmp}/ref", f"{tmp}/blob").stdout)
            mine = f"{out}/{g['diff_id'][7:]}.{ext}"
            assert g["file"] == mine, g["file"]
            assert open(mine, "rb").read() == open(f"{tmp}/ref", "rb").read(), f"layer {g['index']} differs"
            if os.path.exists(f"{tmp}/ref.dmverity"):
                assert open(mine + ".dmverity").read() == open(f"{tmp}/ref.dmverity").read()
            assert ref["root_hash"] == g["root_hash"]
        assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)


def test_corrupt_blob(tmp):
    lay, desc = three_layer_image(tmp)
    img = lay.images[desc["digest"]]
    blob = img["layers"][1][0]
    d = sha(blob)
    path = f"{lay.path}/blobs/sha256/{d[7:]}"
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x40
    with open(path, "wb") as f:
        f.write(bad)
    out = f"{tmp}/out"
    os.mkdir(out)
    _, p = image_roothash("--oci-layout", lay.path, "--output-dir", out, "--jobs", "1", check=False)
    msg = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, msg)
    assert "layer 1" in msg and "digest mismatch" in msg and d in msg and sha(bytes(bad)) in msg, msg
    assert not [n for n in os.listdir(out) if "partial" in n], os.listdir(out)
    # a truncated blob too
    with open(path, "wb") as f:
        f.write(blob[:-10])
    _, p = image_roothash("--oci-layout", lay.path, check=False)
    assert p.returncode == 1 and "layer 1" in p.stderr.decode() and d in p.stderr.decode(), p.stderr


def test_diff_id_mismatch(tmp):
    lay = Layout(f"{tmp}/oci")
    tars = [layer_tar(1), layer_tar(2)]
    wrong = sha(b"not the layer")
    desc = lay.image([(tars[0], "gzip"), (tars[1], "gzip")], host_platform(), diff_ids=[sha(tars[0]), wrong])
    lay.add(desc)
    lay.write()
    _, p = image_roothash("--oci-layout", lay.path, check=False)
    msg = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, msg)
    assert "layer 1" in msg and "diff ID mismatch" in msg and wrong in msg and sha(tars[1]) in msg, msg


def test_media_types(tmp):
    cases = {"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "foreign",
             "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "non-distributable",
             "application/vnd.oci.image.layer.v1.tar+gzip+encrypted": "encrypted",
             "application/vnd.example.weird": "unknown layer media type"}
    for i, (mt, word) in enumerate(cases.items()):
        lay = Layout(f"{tmp}/oci{i}")
        desc = lay.image([(layer_tar(1), "gzip"), (layer_tar(2), "gzip")], host_platform(),
                         media_types=[MT_LAYER["gzip"], mt])
        lay.add(desc)
        lay.write()
        _, p = image_roothash("--oci-layout", lay.path, check=False)
        msg = p.stderr.decode()
        assert p.returncode == 1 and "layer 1" in msg and word in msg and mt in msg, (p.returncode, msg)
    # Docker media types are accepted
    lay = Layout(f"{tmp}/docker")
    desc = lay.image([(layer_tar(1), "gzip"), (layer_tar(2), "zstd")], host_platform(),
                     media_types=["application/vnd.docker.image.rootfs.diff.tar.gzip",
                                  "application/vnd.docker.image.rootfs.diff.tar.zstd"])
    lay.add(desc)
    lay.write()
    got, _ = image_roothash("--oci-layout", lay.path)
    check_layers(got, expected(lay.images[desc["digest"]], tmp=tmp))


def test_layers_cache(tmp):
    lay = Layout(f"{tmp}/oci")
    a = lay.image([(layer_tar(1), "gzip"), (layer_tar(2), "zstd")], host_platform())
    b = lay.image([(layer_tar(1), "gzip"), (layer_tar(3), "gzip"), (layer_tar(4), "none")], host_platform())
    lay.add(a, "a")
    lay.add(b, "b")
    lay.write()
    cache = f"{tmp}/cache.json"
    first, _ = image_roothash("--oci-layout", lay.path, "--ref", "a", "--layers-cache", cache)
    doc = json.load(open(cache))
    assert doc["version"] == 1 and len(doc["layers"]) == 2
    # A cached run gives the same answer without reading the blobs: remove them to prove it.
    for blob, _ in lay.images[a["digest"]]["layers"]:
        os.rename(f"{lay.path}/blobs/sha256/{sha(blob)[7:]}", f"{tmp}/{sha(blob)[7:]}")
    again, _ = image_roothash("--oci-layout", lay.path, "--ref", "a", "--layers-cache", cache)
    assert again == first
    for blob, _ in lay.images[a["digest"]]["layers"]:
        os.rename(f"{tmp}/{sha(blob)[7:]}", f"{lay.path}/blobs/sha256/{sha(blob)[7:]}")
    # Other verity parameters are other keys.
    other, _ = image_roothash("--oci-layout", lay.path, "--ref", "a", "--layers-cache", cache, "--salt", "-")
    assert other["layers"][0]["root_hash"] != first["layers"][0]["root_hash"]
    assert len(json.load(open(cache))["layers"]) == 4
    # Two concurrent runs on one fresh cache keep both images' layers.
    for round_ in range(3):
        cache2 = f"{tmp}/shared-{round_}.json"
        procs = [subprocess.Popen([VS, "image", "roothash", "--quiet", "--oci-layout", lay.path, "--ref", r,
                                   "--layers-cache", cache2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for r in ("a", "b")]
        outs = [json.loads(pr.communicate()[0]) for pr in procs]
        assert all(pr.returncode == 0 for pr in procs)
        doc = json.load(open(cache2))
        diffs = {v["diff_id"] for v in doc["layers"].values()}
        want = {l["diff_id"] for o in outs for l in o["layers"]}
        assert diffs == want and len(want) == 4, (diffs, want)
        for o in outs:
            for l in o["layers"]:
                assert any(v["diff_id"] == l["diff_id"] and v["root_hash"] == l["root_hash"]
                           for v in doc["layers"].values())
    # genpolicy's view: tarfs root hashes by diff ID, merged into what is there.
    gp = f"{tmp}/layers-cache.json"
    with open(gp, "w") as f:
        json.dump([{"diff_id": "sha256:" + "0" * 64, "verity_hash": "ab", "passwd": "root:x:0:0::/:/bin/sh"}], f)
    got, _ = image_roothash("--oci-layout", lay.path, "--ref", "b", "--format", "tarfs", "--genpolicy-cache", gp)
    entries = json.load(open(gp))
    assert entries[0]["passwd"].startswith("root:")
    for l in got["layers"]:
        with open(f"{tmp}/blob", "wb") as f:
            f.write(next(bl for bl, t in lay.images[b["digest"]]["layers"] if sha(t) == l["diff_id"]))
        tarfs_root = json.loads(run(VS, "roothash", "--format", "tarfs", f"{tmp}/blob").stdout)[0]["root_hash"]
        assert {"diff_id": l["diff_id"], "verity_hash": tarfs_root} in entries, entries
    _, p = image_roothash("--oci-layout", lay.path, "--ref", "b", "--genpolicy-cache", gp, check=False)
    assert p.returncode == 2 and b"--format tarfs" in p.stderr


# ---- registry ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"missing {missing}", file=sys.stderr)
        return False
    return True


class Registry:
    """Debian's distribution registry on 127.0.0.1, with a generated config (TLS and htpasswd optional)."""

    def __init__(self, tmp, tls=False, htpasswd=None):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="reg-", dir=tmp)
        cfg = {"version": 0.1, "log": {"level": "error"},
               "storage": {"filesystem": {"rootdirectory": f"{self.dir}/data"}},
               "http": {"addr": f"127.0.0.1:{self.port}", "secret": "test"}}
        self.ca = None
        if tls:
            self.ca = make_certs(self.dir)
            cfg["http"]["tls"] = {"certificate": f"{self.dir}/server.crt", "key": f"{self.dir}/server.key"}
        if htpasswd:
            line = run("htpasswd", "-Bbn", *htpasswd).stdout.decode().strip()
            with open(f"{self.dir}/htpasswd", "w") as f:
                f.write(line + "\n")
            cfg["auth"] = {"htpasswd": {"realm": "test", "path": f"{self.dir}/htpasswd"}}
        with open(f"{self.dir}/config.yml", "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        self.log = open(f"{self.dir}/log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", f"{self.dir}/config.yml"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.addr = f"127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("registry did not start: " + open(f"{self.dir}/log").read())

    def push(self, layout, ref, repo, creds=None):
        args = ["skopeo", "--insecure-policy", "copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false"]
        if creds:
            args += ["--dest-creds", ":".join(creds)]
        if self.ca:
            certs = f"{self.dir}/certs"
            os.makedirs(certs, exist_ok=True)
            shutil.copy(self.ca, f"{certs}/ca.crt")
            args = ["skopeo", "--insecure-policy", "copy", "-q", "--all", "--preserve-digests", "--dest-cert-dir", certs] + \
                (["--dest-creds", ":".join(creds)] if creds else [])
        env = dict(os.environ, HOME=self.dir, REGISTRY_AUTH_FILE=f"{self.dir}/auth.json")
        run(*args, f"oci:{layout}:{ref}", f"docker://{self.addr}/{repo}", env=env)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def make_certs(d):
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=veritysnap test CA",
        "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f"{d}/server.key",
        "-out", f"{d}/server.csr")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/server.crt")
    return f"{d}/ca.crt"


def registry_image(tmp):
    lay = Layout(f"{tmp}/oci")
    amd = lay.image([(layer_tar(1), "gzip"), (layer_tar(2), "zstd"), (layer_tar(3), "none")], "linux/amd64")
    arm = lay.image([(layer_tar(4), "gzip")], "linux/arm64")
    lay.add(amd, "single")
    lay.multi([amd, arm], "multi")
    lay.write()
    return lay, amd, arm


def test_registry_plain(tmp):
    if not need("docker-registry", "skopeo"):
        return SKIP
    lay, amd, arm = registry_image(tmp)
    reg = Registry(tmp)
    try:
        reg.push(lay.path, "single", "team/app:1")
        reg.push(lay.path, "multi", "team/multi:2")
        want = expected(lay.images[amd["digest"]], tmp=tmp)
        local, _ = image_roothash("--oci-layout", lay.path, "--ref", "single")
        got, _ = image_roothash("--plain-http", f"{reg.addr}/team/app:1")
        check_layers(got, want)
        assert got["manifest_digest"] == amd["digest"] == local["manifest_digest"]
        assert [l["root_hash"] for l in got["layers"]] == [l["root_hash"] for l in local["layers"]]
        got, _ = image_roothash("--plain-http", f"{reg.addr}/team/app@{amd['digest']}")
        check_layers(got, want)
        got, _ = image_roothash("--plain-http", f"{reg.addr}/team/multi:2", "--platform", "linux/arm64")
        check_layers(got, expected(lay.images[arm["digest"]], tmp=tmp))
        got, _ = image_roothash("--plain-http", f"{reg.addr}/team/multi:2", "--all-platforms")
        assert [g["platform"] for g in got] == ["linux/amd64", "linux/arm64"]
        _, p = image_roothash("--plain-http", f"{reg.addr}/team/nothing:1", check=False)
        assert p.returncode != 0 and b"repository 'team/nothing' not found" in p.stderr, p.stderr
        _, p = image_roothash("--plain-http", f"{reg.addr}/team/app:nope", check=False)
        assert p.returncode != 0 and b"tag 'nope' not found in repository 'team/app'" in p.stderr, p.stderr
    finally:
        reg.stop()


def test_registry_tls_basic(tmp):
    if not need("docker-registry", "skopeo", "htpasswd", "openssl"):
        return SKIP
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp, tls=True, htpasswd=("alice", "s3cret-pw"))
    try:
        reg.push(lay.path, "single", "team/app:1", creds=("alice", "s3cret-pw"))
        want = expected(lay.images[amd["digest"]], tmp=tmp)
        ref = f"{reg.addr}/team/app:1"
        p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, "--username", "alice", "--password-stdin",
                ref, input=b"s3cret-pw\n")
        check_layers(json.loads(p.stdout), want)
        assert b"s3cret" not in p.stdout + p.stderr
        # credentials from $DOCKER_CONFIG/config.json
        dc = f"{tmp}/docker-config"
        os.mkdir(dc)
        with open(f"{dc}/config.json", "w") as f:
            json.dump({"auths": {f"https://{reg.addr}": {"auth": base64.b64encode(b"alice:s3cret-pw").decode()}}}, f)
        p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, ref, env=dict(os.environ, DOCKER_CONFIG=dc))
        check_layers(json.loads(p.stdout), want)
        # wrong password, no password, untrusted CA, missing repository and tag
        p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, "--username", "alice", "--password-stdin",
                ref, input=b"wrong-pw\n", check=False)
        assert p.returncode != 0 and b"refused the credentials" in p.stderr and b"wrong-pw" not in p.stderr, p.stderr
        p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, ref, check=False,
                env=dict(os.environ, DOCKER_CONFIG=f"{tmp}/none"))
        assert p.returncode != 0 and b"wants a username and password" in p.stderr, p.stderr
        p = run(VS, "image", "roothash", "--quiet", ref, check=False, env=dict(os.environ, DOCKER_CONFIG=dc))
        assert p.returncode != 0 and b"certificate" in p.stderr.lower(), p.stderr
        for r, msg in ((f"{reg.addr}/team/none:1", b"repository 'team/none' not found"),
                       (f"{reg.addr}/team/app:2", b"tag '2' not found")):
            p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, r, check=False,
                    env=dict(os.environ, DOCKER_CONFIG=dc))
            assert p.returncode != 0 and msg in p.stderr, p.stderr
    finally:
        reg.stop()


class TokenFront(http.server.BaseHTTPRequestHandler):
    """A bearer-token registry front: /token hands out tokens for repository:<repo>:pull to alice (GET with basic
    auth) and, by the OAuth2 refresh-token grant of the distribution token spec (POST of a form), to the holder of
    identity_token; /v2/ needs one and is proxied to the registry behind; blob requests are answered with a
    redirect, as registries on S3 do. token_requests logs the GETs' queries (and their auth in token_auths),
    token_posts the POSTs' forms."""
    upstream = None
    tokens = set()
    token_requests = []
    token_auths = []
    token_posts = []
    identity_token = None
    post_token_key = "access_token"  # what the POST answers the token as

    def do_POST(self):
        from urllib.parse import parse_qs
        if not self.path.startswith("/token"):
            return self.reply(405, b"{}")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        form = parse_qs(body, keep_blank_values=True)
        TokenFront.token_posts.append(dict(form=form, content_type=self.headers.get("Content-Type"),
                                           auth=self.headers.get("Authorization")))
        one = {k: v[0] for k, v in form.items() if len(v) == 1}
        if (self.headers.get("Content-Type") != "application/x-www-form-urlencoded" or
                one.get("grant_type") != "refresh_token" or one.get("service") != "test-registry" or
                not one.get("scope", "").startswith("repository:") or one.get("client_id") != "veritysnap"):
            return self.reply(400, b'{"error":"invalid_request"}')
        if one.get("refresh_token") != TokenFront.identity_token:
            return self.reply(401, b'{"error":"invalid_grant"}')
        tok = hashlib.sha256(f"{one['scope']}{time.time()}".encode()).hexdigest()
        TokenFront.tokens.add(tok)
        return self.reply(200, json.dumps({TokenFront.post_token_key: tok, "expires_in": 300}).encode())

    def log_message(self, *a):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path.startswith("/token"):
            from urllib.parse import parse_qs, urlparse
            q = parse_qs(urlparse(self.path).query)
            TokenFront.token_requests.append(q)
            auth = self.headers.get("Authorization", "")
            TokenFront.token_auths.append(auth)
            if auth != "Basic " + base64.b64encode(b"alice:tok-pw").decode():
                return self.reply(401, b'{"details":"bad credentials"}')
            scope = q.get("scope", [""])[0]
            if not scope.startswith("repository:") or not scope.endswith(":pull"):
                return self.reply(403, b"{}")
            tok = hashlib.sha256(f"{scope}{time.time()}".encode()).hexdigest()
            TokenFront.tokens.add(tok)
            return self.reply(200, json.dumps({"token": tok, "expires_in": 300}).encode())
        if self.path.startswith("/redirected/"):
            return self.proxy(self.path[len("/redirected"):])
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in TokenFront.tokens:
            repo = self.path[4:].rsplit("/", 2)[0]
            ch = f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",scope="repository:{repo}:pull"'
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": ch})
        if "/blobs/" in self.path:
            return self.reply(307, b"", {"Location": f"http://127.0.0.1:{port}/redirected{self.path}"})
        return self.proxy(self.path)

    def proxy(self, path):
        c = http.client.HTTPConnection(TokenFront.upstream)
        c.request("GET", path, headers={k: v for k, v in self.headers.items() if k.lower() == "accept"})
        r = c.getresponse()
        body = r.read()
        hdrs = {k: v for k, v in r.getheaders() if k.lower() in ("content-type", "docker-content-digest")}
        self.reply(r.status, body, hdrs)

    def reply(self, code, body, headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_registry_bearer(tmp):
    if not need("docker-registry", "skopeo"):
        return SKIP
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp)
    srv = None
    try:
        reg.push(lay.path, "single", "team/app:1")
        TokenFront.upstream = reg.addr
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenFront)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        front = f"127.0.0.1:{srv.server_address[1]}"
        want = expected(lay.images[amd["digest"]], tmp=tmp)
        p = run(VS, "image", "roothash", "--quiet", "--plain-http", "--username", "alice", "--password-stdin",
                f"{front}/team/app:1", input=b"tok-pw\n")
        check_layers(json.loads(p.stdout), want)
        assert TokenFront.token_requests and all(q["scope"] == ["repository:team/app:pull"] and
                                                 q["service"] == ["test-registry"] for q in TokenFront.token_requests)
        p = run(VS, "image", "roothash", "--quiet", "--plain-http", "--username", "alice", "--password-stdin",
                f"{front}/team/app:1", input=b"bad\n", check=False)
        assert p.returncode != 0 and b"refused the credentials" in p.stderr, p.stderr
    finally:
        if srv:
            srv.shutdown()
        reg.stop()


def test_registry_identity_token(tmp):
    """An identity token (az acr login's: auths.<host>.identitytoken, or a helper's Username "<token>") is traded
    at the realm by a form POST (grant_type=refresh_token, service, scope, client_id, refresh_token), never sent as
    basic auth; a refused one is an error naming the registry, without the token."""
    if not need("docker-registry", "skopeo"):
        return SKIP
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp)
    srv = None
    idt = "idt-" + hashlib.sha256(os.urandom(16)).hexdigest() + "+/="  # characters the form must encode
    try:
        reg.push(lay.path, "single", "team/app:1")
        TokenFront.upstream = reg.addr
        TokenFront.identity_token = idt
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenFront)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        front = f"127.0.0.1:{srv.server_address[1]}"
        want = expected(lay.images[amd["digest"]], tmp=tmp)
        h = CredHelper(tmp)

        def roothash(env, check=True):
            TokenFront.token_requests.clear(), TokenFront.token_auths.clear(), TokenFront.token_posts.clear()
            p = run(VS, "image", "roothash", "--quiet", "--plain-http", f"{front}/team/app:1", env=env, check=check)
            assert idt.encode() not in p.stdout + p.stderr and b"wrong-idt" not in p.stdout + p.stderr, p.stderr
            return p

        def check_posts():
            posts = TokenFront.token_posts
            assert posts, "no POST to the token endpoint"
            for post in posts:
                assert post["content_type"] == "application/x-www-form-urlencoded" and not post["auth"], post
                assert post["form"] == {"grant_type": ["refresh_token"], "service": ["test-registry"],
                                        "scope": ["repository:team/app:pull"], "client_id": ["veritysnap"],
                                        "refresh_token": [idt]}, post["form"]
            assert not any(a.startswith("Basic ") for a in TokenFront.token_auths), TokenFront.token_auths

        # (1) docker login's config.json: "auth" with the user and no password beside "identitytoken"
        zero = "00000000-0000-0000-0000-000000000000"
        dc = write_config(f"{tmp}/dc1", {"auths": {front: {"auth": b64(zero, ""), "identitytoken": idt}}})
        check_layers(json.loads(roothash(h.env(dc)).stdout), want)
        check_posts()
        # ... and a token endpoint that answers "token" rather than "access_token"
        TokenFront.post_token_key = "token"
        check_layers(json.loads(roothash(h.env(dc)).stdout), want)
        check_posts()
        TokenFront.post_token_key = "access_token"
        # (2) a credential helper answering Username "<token>"
        h.store({front: ["<token>", idt]})
        dc = write_config(f"{tmp}/dc2", {"credHelpers": {front: "vstest"}})
        check_layers(json.loads(roothash(h.env(dc)).stdout), want)
        check_posts()
        assert h.calls() == [f"docker-credential-vstest get {front}"], h.calls()
        # (3) a wrong identity token, from the helper and from config.json: refused, naming the registry
        h.store({front: ["<token>", "wrong-idt-from-helper"]})
        p = roothash(h.env(dc), check=False)
        msg = p.stderr.decode()
        assert p.returncode == 2 and f"registry '{front}'" in msg and "refused the identity token" in msg, \
            (p.returncode, msg)
        assert TokenFront.token_posts and not TokenFront.token_requests, TokenFront.token_requests
        dc = write_config(f"{tmp}/dc3", {"auths": {front: {"identitytoken": "wrong-idt-in-config"}}})
        p = roothash(h.env(dc), check=False)
        msg = p.stderr.decode()
        assert p.returncode == 2 and f"registry '{front}'" in msg and "refused the identity token" in msg, \
            (p.returncode, msg)
        # username and password still use the GET with basic auth
        p = run(VS, "image", "roothash", "--quiet", "--plain-http", "--username", "alice", "--password-stdin",
                f"{front}/team/app:1", input=b"tok-pw\n", env=h.env(dc))
        check_layers(json.loads(p.stdout), want)
    finally:
        TokenFront.identity_token = None
        if srv:
            srv.shutdown()
        reg.stop()


# ---- flaky and hostile registry fronts ----

class Front(http.server.BaseHTTPRequestHandler):
    """A registry front proxying to the docker-registry behind (server.upstream), logging every request's path,
    Range header and what it answered in server.requests; subclasses decide how to misbehave."""

    def log_message(self, *a):
        pass

    def fetch(self, path):
        c = http.client.HTTPConnection(self.server.upstream)
        c.request("GET", path, headers={k: v for k, v in self.headers.items() if k.lower() == "accept"})
        r = c.getresponse()
        body = r.read()
        hdrs = {k: v for k, v in r.getheaders() if k.lower() in ("content-type", "docker-content-digest")}
        c.close()
        return r.status, body, hdrs

    def note(self, status, **kw):
        with self.server.lock:
            self.server.requests.append(dict(path=self.path, range=self.headers.get("Range"), status=status, **kw))

    def reply(self, code, body, headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_front(handler, tls_dir=None, **attrs):
    """A threading HTTP(S) server for handler on 127.0.0.1 (TLS with tls_dir's server.crt/key, from make_certs);
    attrs become server attributes. Returns the server and its host:port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls_dir:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{tls_dir}/server.crt", f"{tls_dir}/server.key")
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.lock = threading.Lock()
    srv.requests = []
    srv.seen = {}
    for k, v in attrs.items():
        setattr(srv, k, v)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"127.0.0.1:{srv.server_address[1]}"


class FlakyFront(Front):
    """Answers 503 to the first server.fail503 requests of each blob; then cuts the first full answer of every
    manifest and blob (Content-Length of the whole, half the body sent, connection closed); later requests with
    Range get server.ranges: "honour" (206 + Content-Range), "ignore" (200 and the whole body again) or "wrong"
    (206 claiming to start at byte 0)."""

    def do_GET(self):
        srv = self.server
        with srv.lock:
            n = srv.seen.get(self.path, 0)
            srv.seen[self.path] = n + 1
        blob = "/blobs/" in self.path
        fail503 = srv.fail503 if blob else 0
        if n < fail503:
            self.note(503)
            return self.reply(503, b'{"errors":[{"code":"UNAVAILABLE"}]}')
        status, body, hdrs = self.fetch(self.path)
        if status != 200:
            self.note(status)
            return self.reply(status, body, hdrs)
        if n == fail503:
            half = len(body) // 2
            self.note("cut", sent=half, size=len(body))
            self.send_response(200)
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:half])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.ranges != "ignore":
            start = int(m.group(1)) if srv.ranges == "honour" else 0
            self.note(206)
            return self.reply(206, body[start:], dict(hdrs, **{"Content-Range":
                                                               f"bytes {start}-{len(body) - 1}/{len(body)}"}))
        self.note(200)
        return self.reply(200, body, hdrs)


def flaky_run(tmp, ranges, fail503):
    """The amd64 image pushed to a registry behind a FlakyFront; returns the oracle, the image, the command's
    process and the front's request log."""
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp)
    srv = None
    try:
        reg.push(lay.path, "single", "team/app:1")
        srv, front = start_front(FlakyFront, upstream=reg.addr, ranges=ranges, fail503=fail503)
        img = lay.images[amd["digest"]]
        want = expected(img, tmp=tmp)
        got, p = image_roothash("--plain-http", "--jobs", "2", f"{front}/team/app:1", check=False)
        return want, img, got, p, list(srv.requests)
    finally:
        if srv:
            srv.shutdown()
        reg.stop()


def requests_of(log, path):
    return [(e["status"], e["range"]) for e in log if e["path"] == path]


def check_resumed(img, log, last_status, fail503):
    """Each layer blob: fail503 503s, a cut after half, then a request with Range from exactly that half; the
    manifest and the config (buffered) start again from byte 0 without Range."""
    for blob, _ in img["layers"]:
        path = f"/v2/team/app/blobs/{sha(blob)}"
        cut = [e for e in log if e["path"] == path and e["status"] == "cut"]
        assert len(cut) == 1 and cut[0]["size"] == len(blob), (path, log)
        want = [(503, None)] * fail503 + [("cut", None), (last_status, f"bytes={len(blob) // 2}-")]
        assert requests_of(log, path) == want, (path, requests_of(log, path))
    cfg = f"/v2/team/app/blobs/{img['config']}"
    assert requests_of(log, cfg) == [(503, None)] * fail503 + [("cut", None), (200, None)], requests_of(log, cfg)
    assert requests_of(log, "/v2/team/app/manifests/1") == [("cut", None), (200, None)], log


def test_registry_resume_range(tmp):
    """A blob cut halfway is resumed with Range from the bytes already delivered; the server's 206 continues the
    stream, and the root hashes are the oracle's (each byte went to the converter once)."""
    if not need("docker-registry", "skopeo"):
        return SKIP
    want, img, got, p, log = flaky_run(tmp, "honour", fail503=2)
    assert p.returncode == 0, p.stderr
    check_layers(got, want)
    check_resumed(img, log, 206, fail503=2)


def test_registry_resume_no_range(tmp):
    """A server that ignores Range re-sends the whole blob with 200: the bytes already delivered are skipped.
    A 206 that starts elsewhere than asked is an error naming the registry."""
    if not need("docker-registry", "skopeo"):
        return SKIP
    want, img, got, p, log = flaky_run(tmp, "ignore", fail503=1)
    assert p.returncode == 0, p.stderr
    check_layers(got, want)
    check_resumed(img, log, 200, fail503=1)
    os.mkdir(f"{tmp}/wrong")
    _, _, _, p, _ = flaky_run(f"{tmp}/wrong", "wrong", fail503=0)
    msg = p.stderr.decode()
    assert p.returncode == 2 and "registry '127.0.0.1:" in msg and "resuming a blob at byte" in msg and \
        "starts at byte 0" in msg, (p.returncode, msg)


class DenyFront(Front):
    """Answers 403 (DENIED, as Docker Hub and GHCR do) to every manifest request."""

    def do_GET(self):
        if "/manifests/" in self.path:
            self.note(403)
            return self.reply(403, b'{"errors":[{"code":"DENIED","message":"requested access to the resource is '
                                   b'denied"}]}', {"Content-Type": "application/json"})
        status, body, hdrs = self.fetch(self.path)
        self.note(status)
        return self.reply(status, body, hdrs)


def test_registry_denied(tmp):
    """403 on the manifest: exit 2, "denied access" naming the repository and the registry, not retried."""
    if not need("docker-registry", "skopeo"):
        return SKIP
    lay, _, _ = registry_image(tmp)
    reg = Registry(tmp)
    srv = None
    try:
        reg.push(lay.path, "single", "team/app:1")
        srv, front = start_front(DenyFront, upstream=reg.addr)
        _, p = image_roothash("--plain-http", f"{front}/team/app:1", check=False)
        msg = p.stderr.decode()
        assert p.returncode == 2 and f"registry '{front}' denied access to repository 'team/app'" in msg, \
            (p.returncode, msg)
        assert [e["status"] for e in srv.requests] == [403], srv.requests
    finally:
        if srv:
            srv.shutdown()
        reg.stop()


class RedirectFront(Front):
    """Answers blob requests with a 307 to server.target + the path under /redirected (a blob store elsewhere);
    serves /redirected/... itself by proxying, so that it can be the target too."""

    def do_GET(self):
        if self.path.startswith("/redirected/"):
            self.note("redirected")
            status, body, hdrs = self.fetch(self.path[len("/redirected"):])
            return self.reply(status, body, hdrs)
        if "/blobs/" in self.path:
            self.note(307)
            return self.reply(307, b"", {"Location": f"{self.server.target}/redirected{self.path}"})
        status, body, hdrs = self.fetch(self.path)
        self.note(status)
        return self.reply(status, body, hdrs)


def test_registry_redirect_downgrade(tmp):
    """An https registry redirecting blobs to another https URL works; redirecting them to http is refused
    (exit 2, the registry and the refused URL named) and the http URL is never asked."""
    if not need("docker-registry", "skopeo", "openssl"):
        return SKIP
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp)
    certs = tempfile.mkdtemp(prefix="certs-", dir=tmp)
    ca = make_certs(certs)
    servers = []
    try:
        reg.push(lay.path, "single", "team/app:1")
        plain, plain_addr = start_front(RedirectFront, upstream=reg.addr, target="")
        servers.append(plain)
        tls, tls_addr = start_front(RedirectFront, tls_dir=certs, upstream=reg.addr)
        servers.append(tls)
        want = expected(lay.images[amd["digest"]], tmp=tmp)
        # https -> https: followed
        tls.target = f"https://{tls_addr}"
        got, _ = image_roothash("--ca-file", ca, f"{tls_addr}/team/app:1")
        check_layers(got, want)
        assert sum(e["status"] == "redirected" for e in tls.requests) == len(want) + 1, tls.requests
        # https -> http: refused, not retried, the http side never asked
        tls.target = f"http://{plain_addr}"
        tls.requests.clear()
        _, p = image_roothash("--ca-file", ca, f"{tls_addr}/team/app:1", check=False)
        msg = p.stderr.decode()
        assert p.returncode == 2 and f"registry '{tls_addr}'" in msg and f"http://{plain_addr}/redirected/" in msg \
            and "must stay on https" in msg, (p.returncode, msg)
        assert plain.requests == [], plain.requests
        assert [e["status"] for e in tls.requests if "/blobs/" in e["path"]] == [307], tls.requests
        # with --plain-http, http redirects stay allowed
        plain.target = f"http://{plain_addr}"
        got, _ = image_roothash("--plain-http", f"{plain_addr}/team/app:1")
        check_layers(got, want)
    finally:
        for s in servers:
            s.shutdown()
        reg.stop()


# ---- progress output ----

def run_on_pty(*args):
    """Runs args with stderr on a new pseudo-terminal (stdout a pipe); returns (exit code, stdout, pty output)."""
    master, slave = os.openpty()
    p = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out, tty = [], []
    fds = {p.stdout.fileno(): out, master: tty}
    while fds:
        for fd in select.select(list(fds), [], [], 60)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:   # EIO: the pty's other side is closed
                data = b""
            if data:
                fds[fd].append(data)
            else:
                del fds[fd]
    os.close(master)
    return p.wait(60), b"".join(out), b"".join(tty)


def test_progress(tmp):
    """On a terminal, stderr gets a bar per layer ("layer N ... [###...] ... done", cursor movement); with stderr
    not a terminal, or with --quiet, no bar and no escape sequence; the JSON is the same in every case."""
    lay, desc = three_layer_image(tmp)
    want = expected(lay.images[desc["digest"]], tmp=tmp)
    rc, out, tty = run_on_pty(VS, "image", "roothash", "--jobs", "1", "--oci-layout", lay.path)
    text = tty.decode(errors="replace")
    assert rc == 0, text
    check_layers(json.loads(out), want)
    for i in range(len(want)):
        assert re.search(rf"layer {i} [0-9a-f]{{12}} \[#{{30}}\] .* done", text), text
    assert "\033[2K" in text and "\033[" in text.replace("\033[2K", ""), repr(text[:500])
    # stderr not a terminal
    p = run(VS, "image", "roothash", "--jobs", "1", "--oci-layout", lay.path)
    check_layers(json.loads(p.stdout), want)
    assert b"\033" not in p.stderr and b"layer 0" not in p.stderr and b"#" not in p.stderr, p.stderr
    # --quiet on a terminal
    rc, out, tty = run_on_pty(VS, "image", "roothash", "--quiet", "--oci-layout", lay.path)
    assert rc == 0, tty
    check_layers(json.loads(out), want)
    assert b"\033" not in tty and b"layer 0" not in tty and b"#" not in tty, tty


# ---- credential helpers and auth files ----

HELPER = r"""#!%s
# docker-credential-vstest: a double of docker-credential-helpers' protocol ("get", the server URL on stdin, JSON
# on stdout; "credentials not found in native keychain" and exit 1 when nothing is stored). It answers from
# store.json beside it and logs every call to calls.log there.
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
server = sys.stdin.read().strip()
with open(os.path.join(here, "calls.log"), "a") as f:
    f.write(f"{os.path.basename(sys.argv[0])} {' '.join(sys.argv[1:])} {server}\n")
store = json.load(open(os.path.join(here, "store.json")))
if sys.argv[1:] != ["get"]:
    print("unknown action", file=sys.stderr)
    sys.exit(1)
if store.get("fail"):
    print("vstest: the keyring is locked\nsecond line", file=sys.stderr)
    sys.exit(3)
if server not in store["creds"]:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = store["creds"][server]
print(json.dumps({"ServerURL": server, "Username": user, "Secret": secret}))
"""


class CredHelper:
    """docker-credential-<name> scripts in a directory put first on PATH, with what they store."""

    def __init__(self, tmp, names=("vstest",)):
        self.dir = f"{tmp}/helpers"
        os.makedirs(self.dir, exist_ok=True)
        for n in names:
            path = f"{self.dir}/docker-credential-{n}"
            with open(path, "w") as f:
                f.write(HELPER % sys.executable)
            os.chmod(path, 0o755)
        self.store({})

    def store(self, creds, fail=False):
        with open(f"{self.dir}/store.json", "w") as f:
            json.dump({"creds": creds, "fail": fail}, f)
        if os.path.exists(f"{self.dir}/calls.log"):
            os.unlink(f"{self.dir}/calls.log")

    def calls(self):
        if not os.path.exists(f"{self.dir}/calls.log"):
            return []
        return open(f"{self.dir}/calls.log").read().splitlines()

    def env(self, docker_config, **extra):
        """PATH with the helpers first, DOCKER_CONFIG, and no podman auth file unless given in extra."""
        env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR")}
        env.update(PATH=f"{self.dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", DOCKER_CONFIG=docker_config)
        env.update(extra)
        return env


def write_config(d, cfg):
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/config.json", "w") as f:
        json.dump(cfg, f)
    return d


def b64(user, pw):
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


def auth_registry(tmp):
    """A TLS registry with htpasswd (alice), the image pushed, and the oracle's layers."""
    lay, amd, _ = registry_image(tmp)
    reg = Registry(tmp, tls=True, htpasswd=("alice", "h3lper-pw"))
    reg.push(lay.path, "single", "team/app:1", creds=("alice", "h3lper-pw"))
    return reg, expected(lay.images[amd["digest"]], tmp=tmp)


def roothash_env(reg, env, *args, check=True):
    p = run(VS, "image", "roothash", "--quiet", "--ca-file", reg.ca, *args, f"{reg.addr}/team/app:1", env=env,
            check=check)
    assert b"h3lper-pw" not in p.stdout + p.stderr and b"wrong-pw" not in p.stdout + p.stderr, p.stderr
    return p


def test_registry_cred_helpers(tmp):
    """credHelpers[host] runs docker-credential-<name> get with the host on stdin; it wins over credsStore and
    auths; a wrong secret from it is the registry's refusal."""
    if not need("docker-registry", "skopeo", "htpasswd", "openssl"):
        return SKIP
    reg, want = auth_registry(tmp)
    try:
        h = CredHelper(tmp, names=("vstest", "vsother"))
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        dc = write_config(f"{tmp}/dc1", {"credHelpers": {reg.addr: "vstest"}})
        check_layers(json.loads(roothash_env(reg, h.env(dc)).stdout), want)
        assert h.calls() == [f"docker-credential-vstest get {reg.addr}"], h.calls()
        # precedence: credHelpers[host] over credsStore and over wrong auths
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        dc = write_config(f"{tmp}/dc2", {"credHelpers": {f"https://{reg.addr}": "vstest"}, "credsStore": "vsother",
                                         "auths": {reg.addr: {"auth": b64("alice", "wrong-pw")}}})
        check_layers(json.loads(roothash_env(reg, h.env(dc)).stdout), want)
        assert h.calls() == [f"docker-credential-vstest get {reg.addr}"], h.calls()
        # a helper for another host is not asked
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        dc = write_config(f"{tmp}/dc3", {"credHelpers": {"other.example:5000": "vsother"},
                                         "auths": {reg.addr: {"auth": b64("alice", "h3lper-pw")}}})
        check_layers(json.loads(roothash_env(reg, h.env(dc)).stdout), want)
        assert h.calls() == [], h.calls()
        # a wrong secret from the helper: the registry refuses it
        h.store({reg.addr: ["alice", "wrong-pw"]})
        dc = write_config(f"{tmp}/dc4", {"credHelpers": {reg.addr: "vstest"}})
        p = roothash_env(reg, h.env(dc), check=False)
        assert p.returncode == 2 and b"refused the credentials" in p.stderr, (p.returncode, p.stderr)
        # an identity token is for a bearer token endpoint: a basic-auth registry is refused clearly
        h.store({reg.addr: ["<token>", "some-refresh-token"]})
        p = roothash_env(reg, h.env(dc), check=False)
        assert p.returncode == 2 and b"identity token" in p.stderr and reg.addr.encode() in p.stderr \
            and b"some-refresh-token" not in p.stdout + p.stderr, p.stderr
    finally:
        reg.stop()


def test_registry_creds_store(tmp):
    """credsStore is the default helper (over auths); "not found in native keychain" is anonymous; a failing or
    missing helper is an error that names it."""
    if not need("docker-registry", "skopeo", "htpasswd", "openssl"):
        return SKIP
    reg, want = auth_registry(tmp)
    plain = Registry(tmp)
    try:
        h = CredHelper(tmp)
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        dc = write_config(f"{tmp}/dc1", {"credsStore": "vstest",
                                         "auths": {reg.addr: {"auth": b64("alice", "wrong-pw")}}})
        check_layers(json.loads(roothash_env(reg, h.env(dc)).stdout), want)
        assert h.calls() == [f"docker-credential-vstest get {reg.addr}"], h.calls()
        # nothing stored for the host: anonymous, so a registry without auth works ...
        lay, amd, _ = registry_image(f"{tmp}/plain")
        plain.push(lay.path, "single", "team/app:1")
        h.store({})
        p = run(VS, "image", "roothash", "--quiet", "--plain-http", f"{plain.addr}/team/app:1", env=h.env(dc))
        check_layers(json.loads(p.stdout), expected(lay.images[amd["digest"]], tmp=tmp))
        assert h.calls() == [f"docker-credential-vstest get {plain.addr}"], h.calls()
        # ... and one with auth asks for credentials
        p = roothash_env(reg, h.env(dc), check=False)
        assert p.returncode == 2 and b"wants a username and password" in p.stderr, p.stderr
        # Docker Hub is asked for under its index URL (a dead proxy keeps the request itself off the network)
        h.store({})
        env = h.env(dc, https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
        p = run(VS, "image", "roothash", "--quiet", "--retries", "0", "docker.io/library/none:1", env=env,
                check=False)
        assert p.returncode == 2, p.stderr
        assert h.calls() == ["docker-credential-vstest get https://index.docker.io/v1/"], h.calls()
        # a failing helper: an error naming it, its setting and the first line it printed
        h.store({reg.addr: ["alice", "h3lper-pw"]}, fail=True)
        p = roothash_env(reg, h.env(dc), check=False)
        msg = p.stderr.decode()
        assert p.returncode == 2 and "docker-credential-vstest" in msg and "credsStore" in msg, (p.returncode, msg)
        assert "exit code 3" in msg and "the keyring is locked" in msg and "second line" not in msg, msg
        # a helper that is not installed
        dc = write_config(f"{tmp}/dc2", {"credsStore": "vsmissing"})
        p = roothash_env(reg, h.env(dc), check=False)
        assert p.returncode == 2 and b"docker-credential-vsmissing" in p.stderr, p.stderr
        assert b"not found in PATH" in p.stderr, p.stderr
    finally:
        plain.stop()
        reg.stop()


def test_registry_auth_file(tmp):
    """podman's auth.json: $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, when docker's config
    has nothing for the host; --authfile replaces every other place."""
    if not need("docker-registry", "skopeo", "htpasswd", "openssl"):
        return SKIP
    reg, want = auth_registry(tmp)
    try:
        h = CredHelper(tmp)
        good = {"auths": {reg.addr: {"auth": b64("alice", "h3lper-pw")}}}
        wrong = {"auths": {reg.addr: {"auth": b64("alice", "wrong-pw")}}}
        write_config(f"{tmp}/good", good)
        write_config(f"{tmp}/wrong", wrong)
        empty = write_config(f"{tmp}/dc-empty", {"auths": {"other.example": {"auth": b64("x", "y")}}})
        # REGISTRY_AUTH_FILE
        env = h.env(empty, REGISTRY_AUTH_FILE=f"{tmp}/good/config.json")
        check_layers(json.loads(roothash_env(reg, env).stdout), want)
        # $XDG_RUNTIME_DIR/containers/auth.json
        os.makedirs(f"{tmp}/run/containers")
        shutil.copy(f"{tmp}/good/config.json", f"{tmp}/run/containers/auth.json")
        check_layers(json.loads(roothash_env(reg, h.env(empty, XDG_RUNTIME_DIR=f"{tmp}/run")).stdout), want)
        # REGISTRY_AUTH_FILE comes before XDG_RUNTIME_DIR
        env = h.env(empty, XDG_RUNTIME_DIR=f"{tmp}/run", REGISTRY_AUTH_FILE=f"{tmp}/wrong/config.json")
        p = roothash_env(reg, env, check=False)
        assert p.returncode == 2 and b"refused the credentials" in p.stderr, p.stderr
        # docker's config comes first when it has the host
        wrong_dc = f"{tmp}/wrong"
        p = roothash_env(reg, h.env(wrong_dc, REGISTRY_AUTH_FILE=f"{tmp}/good/config.json"), check=False)
        assert p.returncode == 2 and b"refused the credentials" in p.stderr, p.stderr
        # --authfile replaces them all (docker's wrong config, a wrong REGISTRY_AUTH_FILE)
        env = h.env(wrong_dc, REGISTRY_AUTH_FILE=f"{tmp}/wrong/config.json")
        check_layers(json.loads(roothash_env(reg, env, "--authfile", f"{tmp}/good/config.json").stdout), want)
        # --authfile with a credential helper in it
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        write_config(f"{tmp}/helper", {"credHelpers": {reg.addr: "vstest"}})
        check_layers(json.loads(roothash_env(reg, env, "--authfile", f"{tmp}/helper/config.json").stdout), want)
        assert h.calls() == [f"docker-credential-vstest get {reg.addr}"], h.calls()
        # a missing or broken --authfile is an error naming it
        p = roothash_env(reg, env, "--authfile", f"{tmp}/nope.json", check=False)
        assert p.returncode == 2 and b"nope.json" in p.stderr, p.stderr
        with open(f"{tmp}/broken.json", "w") as f:
            f.write("{not json")
        p = roothash_env(reg, env, "--authfile", f"{tmp}/broken.json", check=False)
        assert p.returncode == 2 and b"broken.json" in p.stderr and b"not valid JSON" in p.stderr, p.stderr
        _, p = image_roothash("--authfile", f"{tmp}/good/config.json", "--oci-layout", tmp, check=False)
        assert p.returncode == 2 and b"--authfile is for registries" in p.stderr, p.stderr
    finally:
        reg.stop()


def test_registry_pull_authfile(tmp):
    """`veritysnap pull --authfile` and a credsStore helper fetch from a registry with auth into containerd
    (native snapshotter, containerd's own unpack); the image in containerd then has the oracle's root hashes."""
    if os.geteuid() != 0:
        print("containerd needs root", file=sys.stderr)
        return SKIP
    if not need("containerd", "ctr", "docker-registry", "skopeo", "htpasswd", "openssl"):
        return SKIP
    reg, want = auth_registry(tmp)
    ctd = None
    try:
        ctd = Containerd(tmp)
        h = CredHelper(tmp)
        write_config(f"{tmp}/good", {"auths": {reg.addr: {"auth": b64("alice", "h3lper-pw")}}})
        wrong = write_config(f"{tmp}/wrong", {"auths": {reg.addr: {"auth": b64("alice", "wrong-pw")}}})
        ref = f"{reg.addr}/team/app:1"

        def pull(env, *args, check=True):
            p = run(VS, "pull", "--quiet", "--containerd-address", ctd.sock, "--namespace", "vscred",
                    "--snapshotter", "native", "--ca-file", reg.ca, *args, ref, env=env, check=check)
            assert b"h3lper-pw" not in p.stdout + p.stderr, p.stderr
            return p

        p = pull(h.env(wrong), check=False)
        assert p.returncode == 2 and b"refused the credentials" in p.stderr, p.stderr
        pull(h.env(wrong), "--authfile", f"{tmp}/good/config.json")
        got, _ = image_roothash("--containerd-address", ctd.sock, "--namespace", "vscred", ref)
        check_layers(got, want)
        # a credsStore helper for pull too (the image is already there: nothing to do, after authenticating)
        h.store({reg.addr: ["alice", "h3lper-pw"]})
        p = pull(h.env(write_config(f"{tmp}/store", {"credsStore": "vstest"})))
        assert b"nothing to do" in p.stdout and h.calls() == [f"docker-credential-vstest get {reg.addr}"], \
            (p.stdout, h.calls())
    finally:
        if ctd:
            ctd.stop()
        reg.stop()


# ---- containerd ----

class Containerd:
    """Debian's containerd 1.6 with its own root, state and socket under a temp dir (no CRI, nothing unpacked)."""

    def __init__(self, tmp):
        self.dir = tempfile.mkdtemp(prefix="ctd-", dir=tmp)
        self.sock = f"{self.dir}/c.sock"
        self.proc = start_containerd(self.dir, self.sock)

    def ctr(self, *args, ns="default", check=True):
        return run("ctr", "-a", self.sock, "-n", ns, *args, check=check)

    def blob_path(self, digest):
        return f"{self.dir}/root/io.containerd.content.v1.content/blobs/sha256/{digest[7:]}"

    def stop(self):
        self.proc.stop()


def test_containerd(tmp):
    """An image imported into containerd (ctr images import of an OCI archive: gzip, zstd and plain layers) gives
    the same JSON as --oci-archive on that archive and as the registry (skopeo-pushed); namespaces are honoured; a
    missing image names the reference; a corrupted blob in containerd's store is caught."""
    if os.geteuid() != 0:
        print("containerd needs root", file=sys.stderr)
        return SKIP
    if not need("containerd", "ctr", "docker-registry", "skopeo"):
        return SKIP
    lay, desc = three_layer_image(tmp)
    arc = f"{tmp}/image.tar"
    tar_dir(lay.path, arc)
    other = Layout(f"{tmp}/other")   # another image under the same name, in another namespace
    odesc = other.image([(layer_tar(7), "zstd"), (layer_tar(8), "gzip")], host_platform())
    other.add(odesc, "v1")
    other.write()
    oarc = f"{tmp}/other.tar"
    tar_dir(other.path, oarc)
    want = expected(lay.images[desc["digest"]], tmp=tmp)
    ctd = Containerd(tmp)
    reg = Registry(tmp)
    try:
        name = "localhost/team/app:v1"
        ctd.ctr("images", "import", "--no-unpack", "--base-name", "localhost/team/app", arc, ns="vsimg")
        ctd.ctr("images", "import", "--no-unpack", "--base-name", "localhost/team/app", oarc, ns="vsimg-other")
        ctd.ctr("images", "import", "--no-unpack", "--base-name", "docker.io/library/short", arc, ns="vsimg")
        assert name in ctd.ctr("images", "ls", "-q", ns="vsimg").stdout.decode().split()
        reg.push(lay.path, "v1", "team/app:v1")

        got, _ = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg", name)
        check_layers(got, want)
        arch, _ = image_roothash("--oci-archive", arc)
        remote, _ = image_roothash("--plain-http", f"{reg.addr}/team/app:v1")
        assert got["image"] == f"containerd:vsimg/{name}", got["image"]
        for o in (arch, remote):
            for k in ("manifest_digest", "config_digest", "platform", "layers"):
                assert got[k] == o[k], f"{o['image']}: {k} differs:\n{got[k]}\n{o[k]}"
        assert got["manifest_digest"] == desc["digest"]
        assert [l["media_type"] for l in got["layers"]] == [MT_LAYER[c] for c in ("gzip", "zstd", "none")]
        # other flags travel as for any source; unix: addresses work
        t, _ = image_roothash("--containerd-address", "unix:" + ctd.sock, "--namespace", "vsimg", name,
                              "--format", "tarfs", "--jobs", "1")
        check_layers(t, expected(lay.images[desc["digest"]], "--format", "tarfs", tmp=tmp))
        # docker-style short names resolve to docker.io/library/...
        short, _ = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg", "short:v1")
        assert short["layers"] == got["layers"]

        # the namespace is honoured: the same name is another image in vsimg-other, and absent from the default
        o, _ = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg-other", name)
        assert o["manifest_digest"] == odesc["digest"] != got["manifest_digest"]
        check_layers(o, expected(other.images[odesc["digest"]], tmp=tmp))
        _, p = image_roothash("--containerd-address", ctd.sock, name, check=False)   # default: k8s.io
        assert p.returncode == 2 and f"image '{name}' not found in containerd namespace 'k8s.io'".encode() \
            in p.stderr, p.stderr

        # a missing image: a clear error naming the reference (and the docker.io form tried)
        _, p = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg", "localhost/team/nothing:1",
                              check=False)
        assert p.returncode == 2 and b"image 'localhost/team/nothing:1' not found in containerd namespace 'vsimg'" \
            in p.stderr, p.stderr
        _, p = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg", "nothing", check=False)
        assert p.returncode == 2 and b"'nothing' not found" in p.stderr and b"docker.io/library/nothing:latest" \
            in p.stderr, p.stderr
        # no such socket; options of other sources
        _, p = image_roothash("--containerd-address", f"{tmp}/none.sock", name, check=False)
        assert p.returncode == 2 and b"none.sock" in p.stderr, p.stderr
        _, p = image_roothash("--namespace", "x", f"{reg.addr}/team/app:v1", check=False)
        assert p.returncode == 2 and b"--namespace is for --containerd-address" in p.stderr, p.stderr

        # a blob corrupted in containerd's content store: exit 1, the layer and the digest named
        blob = lay.images[desc["digest"]]["layers"][1][0]
        path = ctd.blob_path(sha(blob))
        os.chmod(path, 0o644)
        bad = bytearray(blob)
        bad[len(bad) // 2] ^= 0x40
        with open(path, "wb") as f:
            f.write(bad)
        _, p = image_roothash("--containerd-address", ctd.sock, "--namespace", "vsimg", name, check=False)
        msg = p.stderr.decode()
        assert p.returncode == 1 and "layer 1" in msg and sha(blob) in msg, (p.returncode, msg)
    finally:
        reg.stop()
        ctd.stop()


TESTS = [test_oci_layout, test_oci_archive, test_docker_archive, test_multi_platform, test_output_dir,
         test_corrupt_blob, test_diff_id_mismatch, test_media_types, test_layers_cache, test_registry_plain,
         test_registry_tls_basic, test_registry_bearer, test_registry_identity_token, test_registry_cred_helpers,
         test_registry_creds_store, test_registry_auth_file, test_registry_pull_authfile, test_registry_resume_range,
         test_registry_resume_no_range, test_registry_denied, test_registry_redirect_downgrade, test_progress,
         test_containerd]


def main():
    run_tests(TESTS, ONLY, prefix="vs-image-")


main()
