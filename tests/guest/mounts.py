#!/usr/bin/env python3
"""Turns the mounts a veritysnap socket returned (containerd's Mount list as JSON: [{"type", "source", "options"}],
as `ctr snapshots mounts` prints them or the gRPC reply carries them) into the guest program's layer list.

Dialects (docs/formats.md, "Kata dialects"):
  kata-erofs   one `erofs` mount per layer, topmost first, with `X-containerd.dmverity=<sidecar>` (or `=on`: the
               sidecar is `<source>.dmverity`), then an overlay mount (its upper is the guest's own business);
  kata-tardev  one `fuse3.kata-overlay` mount: `io.katacontainers.fs-opt.layer-src-prefix=<dir>`, one base64
               `io.katacontainers.fs-opt.layer=` option per layer (topmost first) whose decoded fields are
               `<name>,tar,ro,...,io.katacontainers.fs-opt.root-hash=<hex>`; the layer file is <dir>/<name>.

Each layer: {"file", "format", "root_hash", "dmverity" (erofs: the sidecar)}. The test attaches each file as a virtio
disk and adds "serial". Usage as a command: mounts.py MOUNTS.json  -> prints the layer list.
"""
import base64
import json
import os
import sys

PFX = "io.katacontainers.fs-opt."


def layers_from_mounts(mounts, read_file=None):
    read_file = read_file or (lambda p: open(p).read())
    layers = []
    for m in mounts:
        mtype = m.get("type") or m.get("Type")
        source = m.get("source") or m.get("Source")
        options = m.get("options") or m.get("Options") or []
        if mtype == "erofs":
            sidecar = None
            for o in options:
                if o.startswith("X-containerd.dmverity="):
                    v = o.split("=", 1)[1]
                    sidecar = source + ".dmverity" if v == "on" else v
            if sidecar is None:
                raise ValueError(f"erofs mount of {source} without X-containerd.dmverity: no integrity to check")
            dm = json.loads(read_file(sidecar))
            layers.append({"file": source, "format": "erofs", "root_hash": dm["roothash"], "dmverity": dm})
        elif mtype == "fuse3.kata-overlay":
            prefix = None
            for o in options:
                if o.startswith(PFX + "layer-src-prefix="):
                    prefix = o.split("=", 1)[1]
            for o in options:
                if not o.startswith(PFX + "layer="):
                    continue
                fields = base64.b64decode(o.split("=", 1)[1], validate=True).decode().split(",")
                name, fstype = fields[0], fields[1]
                if fstype != "tar":
                    raise ValueError(f"kata-overlay layer {name}: fs type {fstype}, expected tar")
                roots = [f.split("=", 1)[1] for f in fields if f.startswith(PFX + "root-hash=")]
                if not roots:
                    raise ValueError(f"kata-overlay layer {name}: no root-hash")
                layers.append({"file": os.path.join(prefix or "", name), "format": "tarfs", "root_hash": roots[0]})
        elif mtype in ("overlay", "format/mkdir/overlay", "mkdir/overlay", "format/overlay", "bind"):
            continue   # the writable layer: the guest makes its own
        else:
            raise ValueError(f"mount type {mtype} carries no verity layer")
    return layers


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    print(json.dumps(layers_from_mounts(doc if isinstance(doc, list) else doc.get("mounts", [])), indent=1))
