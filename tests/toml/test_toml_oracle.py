#!/usr/bin/env python3
"""vs_toml against Python's tomllib (the oracle): the seed corpus, then generated documents (valid ones, ones using
what the subset leaves out, and byte-level mutations of both).

Usage: test_toml_oracle.py TOML_DUMP CORPUS_DIR [COUNT [SEED]]

Rules, for every document:
- vs_toml accepts it  => tomllib accepts it and the trees are equal (types included: true is not 1);
- vs_toml rejects it  => tomllib rejects it too, or the message says the subset refuses it ("not supported",
  "does not fit in 64 bits");
- every message starts with "<path>:<line>:" with a line inside the document.
Exit 0 on success, 1 on a disagreement, 77 when python3 has no tomllib (before 3.11).
"""
import json
import os
import random
import re
import subprocess
import sys
import tempfile

try:
    import tomllib
except ImportError:
    print("SKIP: python3 has no tomllib (needs 3.11)")
    sys.exit(77)

SUBSET = ("not supported", "does not fit in 64 bits")


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def oracle(data):
    # utf-8-sig: vs_toml skips a leading byte order mark, as readers of config files commonly do; tomllib sees text.
    try:
        return True, tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return False, str(e)


# ---- generator ----

KEYS = ["a", "b", "c", "key", "1234", "-_-", "true", "x-y"]
SUB = ["a", "b", "t", "listen"]
CHARS = list("abc xyz#=[]{},.'\"\\\t") + ["é", "😀", "\\n", "\\t", "\\\"", "\\\\", "\\u00e9", "\\U0001F600", "\\b",
                                           "\\f", "\\r", "\\u0000", "\\uD800", "\\q", "\\u12"]


def gen_key(r):
    c = r.random()
    if c < 0.7:
        return r.choice(KEYS)
    if c < 0.85:
        return '"' + r.choice(KEYS + ["a b", "a.b", "", "é", "\\u00e9", "q\\\"q"]) + '"'
    return "'" + r.choice(KEYS + ["a b", "a.b", "", "é"]) + "'"


def gen_basic(r):
    body = "".join(r.choice(CHARS[:12] + CHARS[17:]) for _ in range(r.randrange(0, 8)))
    return '"' + body + '"'


def gen_literal(r):
    return "'" + "".join(r.choice(list("abc \\\"#=[],é\t")) for _ in range(r.randrange(0, 8))) + "'"


def gen_string(r):
    return gen_basic(r) if r.random() < 0.6 else gen_literal(r)


def gen_int(r):
    c = r.random()
    if c < 0.5:
        v = str(r.randrange(-1000, 100000))
    elif c < 0.7:
        v = r.choice(["9223372036854775807", "-9223372036854775808", "9223372036854775808", "-9223372036854775809",
                      "+0", "-0", "0", "00", "01", "+1", "1_000", "1__0", "_1", "1_", "99999999999999999999"])
    else:
        v = str(r.randrange(0, 10**r.randrange(1, 19)))
        if r.random() < 0.3 and len(v) > 2:
            i = r.randrange(1, len(v) - 1)
            v = v[:i] + "_" + v[i:]
    return v


def gen_array(r):
    items = [gen_string(r) for _ in range(r.randrange(0, 4))]
    if r.random() < 0.1:
        items.append(gen_int(r))
    if r.random() < 0.05:
        items.append("[" + gen_string(r) + "]")
    sep = r.choice([", ", ",", ",\n  ", " , # c\n "])
    tail = r.choice(["", ",", ",\n", "\n", " # c\n"]) if items else r.choice(["", " ", "\n"])
    return "[" + r.choice(["", " ", "\n  "]) + sep.join(items) + tail + "]"


def gen_value(r):
    c = r.random()
    if c < 0.3:
        return gen_string(r)
    if c < 0.5:
        return gen_int(r)
    if c < 0.6:
        return r.choice(["true", "false"])
    if c < 0.85:
        return gen_array(r)
    return r.choice(["1.5", "-1e3", "inf", "nan", "1979-05-27", "07:32:00", "0x1f", "0o7", "0b1", "{a = 1}", "{}",
                     '"""m"""', "'''m'''", "[1, 2]", "[[\"a\"]]", "TRUE", "tru", "'a", '"a'])


def gen_path(r):
    n = r.choice([1, 1, 1, 2, 2, 3])
    parts = [r.choice(SUB) if r.random() < 0.85 else gen_key(r) for _ in range(n)]
    return r.choice([".", " . ", "."]).join(parts)


def gen_doc(r):
    lines = []
    for _ in range(r.randrange(1, 12)):
        c = r.random()
        if c < 0.1:
            lines.append(r.choice(["", "# comment", "  \t", "# [a] = 1"]))
        elif c < 0.3:
            lines.append("[" + gen_path(r) + "]" + r.choice(["", " # c", " "]))
        elif c < 0.4:
            lines.append("[[" + gen_path(r) + "]]")
        elif c < 0.45:
            lines.append(gen_key(r) + "." + gen_key(r) + " = " + gen_value(r))
        else:
            lines.append(gen_key(r) + r.choice([" = ", "=", "\t=\t"]) + gen_value(r) + r.choice(["", " # c"]))
    nl = "\r\n" if r.random() < 0.1 else "\n"
    text = nl.join(lines) + r.choice([nl, ""])
    return text.encode("utf-8")


def mutate(r, data):
    data = bytearray(data)
    for _ in range(r.randrange(1, 4)):
        c = r.random()
        pos = r.randrange(0, len(data) + 1)
        if c < 0.35 and data:
            del data[min(pos, len(data) - 1)]
        elif c < 0.7:
            data[pos:pos] = r.choice([b"[", b"]", b"=", b'"', b"'", b"\\", b"\n", b"\r", b"#", b".", b",", b" ",
                                      b"_", b"0", b"-", b"\x00", b"\x7f", b"\xff", b"\xc3", b"a"])
        elif data:
            i = min(pos, len(data) - 1)
            j = r.randrange(0, len(data))
            data[i], data[j] = data[j], data[i]
    return bytes(data)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    dump, corpus = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 6000
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 20261128
    r = random.Random(seed)

    seeds = []
    for name in sorted(os.listdir(corpus)):
        with open(os.path.join(corpus, name), "rb") as f:
            seeds.append((name, f.read()))
    docs = [("seed " + name, data) for name, data in seeds]
    for i in range(count):
        c = r.random()
        if c < 0.5:
            docs.append(("generated %d" % i, gen_doc(r)))
        elif c < 0.8:
            docs.append(("mutated generated %d" % i, mutate(r, gen_doc(r))))
        else:
            name, data = r.choice(seeds)
            docs.append(("mutated %s %d" % (name, i), mutate(r, data)))

    with tempfile.TemporaryDirectory(prefix="vs-toml-oracle-") as tmp:
        paths = []
        for i, (_, data) in enumerate(docs):
            path = os.path.join(tmp, "%d.toml" % i)
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        out = subprocess.run([dump, "-"], input="\n".join(paths) + "\n", capture_output=True, text=True)
        if out.returncode != 0:
            print("toml_dump failed:", out.stderr)
            return 1
        results = [json.loads(line) for line in out.stdout.splitlines()]
    if len(results) != len(docs):
        print("toml_dump printed %d results for %d documents" % (len(results), len(docs)))
        return 1

    stats = {"both accept": 0, "both reject": 0, "subset rejects": 0}
    bad = []
    for i, ((name, data), mine) in enumerate(zip(docs, results)):
        ok, theirs = oracle(data)
        path = os.path.join(tmp, "%d.toml" % i)
        problem = None
        if "ok" in mine:
            if not ok:
                problem = "vs_toml accepts, tomllib says: %s" % theirs
            elif not same(mine["ok"], theirs):
                problem = "trees differ:\n  vs_toml %r\n  tomllib %r" % (mine["ok"], theirs)
            else:
                stats["both accept"] += 1
        else:
            msg = mine["error"]
            m = re.match(re.escape(path) + r":(\d+):", msg)
            lines = data.count(b"\n") + 1
            if not m or not 1 <= int(m.group(1)) <= lines:
                problem = "message without a line inside the document: %s" % msg
            elif ok and not any(s in msg for s in SUBSET):
                problem = "vs_toml rejects valid TOML outside the subset: %s" % msg
            elif ok:
                stats["subset rejects"] += 1
            else:
                stats["both reject"] += 1
        if name.startswith("seed ") and "ok" not in mine:
            problem = problem or "seed rejected: %s" % mine["error"]
        if problem:
            bad.append("%s (%r):\n  %s" % (name, data[:300], problem))

    print("%d documents: %s" % (len(docs), ", ".join("%s %d" % kv for kv in stats.items())))
    for b in bad[:15]:
        print(b)
    if bad:
        print("%d disagreement(s)" % len(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
