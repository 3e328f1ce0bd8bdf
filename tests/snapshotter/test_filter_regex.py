#!/usr/bin/env python3
"""containerd's ~= filters use Go regular expressions; the daemon translates them to POSIX (snapshotter/filter.c).
Oracle: Go's own regexp package (regex_oracle.go, run with the Go toolchain containerd's test suite also uses).
Every pattern below must match exactly the names Go matches, or, for the few constructs POSIX cannot express, be
refused (INVALID_ARGUMENT) rather than matched differently.

Usage: test_filter_regex.py FILTER_REGEX_MATCH_BINARY   (exit 77 when go is missing)
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

NAMES = ["", "a", "abc", "ABC", "a1", "sha256:0f3a9", "k8s.io/12/extract-1700 sha256:ab", "default/3/app-view-x",
         "x.y", "x-y", "x]y", "x[y", "x^y", "x\\y", "tab\there", "line", "a/b", "a|b", "aaa", "ab12_z",
         "über", "v1.2.3", "  spaced  ", "CamelCase", "$dollar", "q?", "star*", "plus+", "{brace}", "(paren)"]

PATTERNS = [
    "", "a", "^a", "c$", "^abc$", "a.c", "a.*c", "a+", "a?b", "a{2}", "a{2,}", "a{1,2}", "(ab|x)", "ab|x",
    "[abc]", "[^abc]", "[a-c]", "[a-cx-z]", "[]a]", "[^]a]", "[a-]", "[-a]", "[a\\-z]", "[\\]]", "[\\[]",
    "[\\^]", "[x^]", "[\\\\]", "[.]", "[*+?]", "\\d", "\\d+", "^\\d", "\\D", "\\w+", "\\W", "\\s", "\\S+",
    "[\\d]", "[\\w.]", "[\\s]", "[a\\d]", "\\.", "\\*", "\\+", "\\?", "\\(", "\\)", "\\[", "\\]", "\\{", "\\}",
    "\\|", "\\^", "\\$", "\\\\", "\\/", "\\-", "\\t", "\\x41", "[\\x41-\\x43]", "(?:ab)+", "(?:a|b)c",
    "(?i)abc", "(?i)^camel", "a*?", "a+?c", "a??b", "a{1,2}?", ".*?z", "sha256:[0-9a-f]+$", "^k8s\\.io/",
    "extract-", "/extract-\\d+ ", "-view-", "^[^/]+/\\d+/", "[[:alpha:]]+", "[[:digit:]]", "v\\d+\\.\\d+",
    "x]y", "\\$dollar", "q\\?", "star\\*", "\\{brace\\}", "\\(paren\\)", "a/b", "a\\|b",
    # invalid in Go too: both refuse
    "a{2}?", "a*?b", "(?P<n>a)b", "a{2", "a{,2}", "a{x}", "}",
    # invalid in Go too: both refuse
    "(", "[a", "*a", "\\", "(a)\\1", "\\C", "a**", "a+*", "a*??", "a{2}{3}", "a{2}*",
]

# What POSIX cannot express: refused by the daemon (Go accepts them).
UNSUPPORTED = ["\\bab", "a\\B", "\\Aa", "c\\z", "\\pL", "\\p{Greek}", "\\Qa.b\\E", "(?m)^a", "(?s)a.b", "a(?i)b",
               "[\\D]", "[\\W]", "[\\S]"]


def main():
    match_bin = sys.argv[1]
    go = shutil.which("go")
    if not go:
        print("SKIP: the Go toolchain is missing (Debian: golang-go)")
        sys.exit(77)
    cases = [(p, n) for p in PATTERNS for n in NAMES] + [(p, n) for p in UNSUPPORTED for n in NAMES[:6]]
    text = "".join("%s\t%s\n" % (p, n) for p, n in cases)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GO111MODULE="off", GOCACHE=os.path.join(tmp, "cache"), GOPATH=tmp, GOFLAGS="")
        exe = os.path.join(tmp, "oracle")
        subprocess.run([go, "build", "-o", exe, os.path.join(HERE, "regex_oracle.go")], env=env, check=True)
        want = subprocess.run([exe], input=text, capture_output=True, text=True, check=True).stdout.splitlines()
    got = subprocess.run([match_bin], input=text, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(got) == len(want) == len(cases), (len(got), len(want), len(cases))
    failures = 0
    for (p, n), g, w in zip(cases, got, want):
        verdict = g.split(" ", 1)[0]
        if p in UNSUPPORTED:
            if w == "E" or verdict != "E" or "has " not in g:
                failures += 1
                print("FAIL unsupported %r on %r: Go %s, we %s (want a clear refusal)" % (p, n, w, g))
        elif verdict != w:
            failures += 1
            print("FAIL %r on %r: Go says %s, the filter %s" % (p, n, w, g))
    print("%d cases (%d patterns x names), %d differ from Go" % (len(cases), len(PATTERNS) + len(UNSUPPORTED),
                                                              failures))
    sys.exit(1 if failures else 0)


main()
