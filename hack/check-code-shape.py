#!/usr/bin/env python3
"""Checks the shape rules of issue 12 on the workspace's Rust sources:

- no source file over MAX_FILE_LINES lines,
- no function over MAX_FN_LINES lines outside tests,
- none of our crates depends directly on two versions of one crate.

Test code is exempt from the function limit: files under a crate's `tests/` folder, sibling
test modules (`tests.rs`, `*_tests.rs`) and everything after a file's first `#[cfg(test)]`.
Exceptions are listed in EXCEPTIONS with their reason; an exception that no longer applies
fails the check too, so the list stays true.

Usage: python3 hack/check-code-shape.py [--self-test]
"""

import json
import os
import re
import subprocess
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 80
CRATES = ["contract", "http-server", "service-kit", "operator", "gateway-image", "worker-image", "api-image", "simulator"]

# (path, function or None for the file limit): reason
EXCEPTIONS = {}

FN_START = re.compile(r"^(\s*)(pub(\([a-z:]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def is_test_file(path):
    parts = path.split(os.sep)
    name = parts[-1]
    return "tests" in parts[1:-1] or name == "tests.rs" or name.endswith("_tests.rs")


def long_functions(lines):
    """(name, first line number, length) of every function longer than MAX_FN_LINES,
    up to the first `#[cfg(test)]`. A function ends at the first line that is its own
    indentation followed by `}`."""
    end = next((i for i, line in enumerate(lines) if line.strip() == "#[cfg(test)]"), len(lines))
    found = []
    for i in range(end):
        match = FN_START.match(lines[i])
        if not match or lines[i].rstrip().endswith(";"):
            continue
        closing = match.group(1) + "}"
        for j in range(i + 1, end):
            if lines[j].rstrip() == closing:
                length = j - i + 1
                if length > MAX_FN_LINES:
                    found.append((match.group(7), i + 1, length))
                break
    return found


def rust_files(root):
    for crate in CRATES:
        for folder, dirs, files in os.walk(os.path.join(root, crate)):
            dirs[:] = [d for d in dirs if d != "target"]
            for name in sorted(files):
                if name.endswith(".rs"):
                    yield os.path.relpath(os.path.join(folder, name), root)


def shape_findings(root):
    findings = set()
    for path in rust_files(root):
        with open(os.path.join(root, path), encoding="utf-8") as file:
            lines = file.read().split("\n")
        if len(lines) - 1 > MAX_FILE_LINES:
            findings.add((path, None, f"{len(lines) - 1} lines (limit {MAX_FILE_LINES})"))
        if is_test_file(path):
            continue
        for name, line, length in long_functions(lines):
            findings.add((path, name, f"line {line}: {length} lines (limit {MAX_FN_LINES})"))
    return findings


def duplicated_direct_dependencies(root):
    """Crate names that our workspace members depend on directly in more than one version."""
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=root, check=True, capture_output=True, text=True,
        ).stdout
    )
    members = set(metadata["workspace_members"])
    packages = {p["id"]: p for p in metadata["packages"]}
    versions = {}
    for node in metadata["resolve"]["nodes"]:
        if node["id"] not in members:
            continue
        for dep in node["deps"]:
            if dep["pkg"] in members:
                continue
            package = packages[dep["pkg"]]
            versions.setdefault(package["name"], set()).add(package["version"])
    return {name: sorted(v) for name, v in versions.items() if len(v) > 1}


def self_test():
    sample = ["fn short() {", "}", "pub async fn long(x: u8) -> u8 {"]
    sample += ["    x;"] * MAX_FN_LINES + ["}", "#[cfg(test)]", "fn in_tests() {"] + ["    1;"] * 99 + ["}"]
    assert long_functions(sample) == [("long", 3, MAX_FN_LINES + 2)], long_functions(sample)
    assert is_test_file(os.path.join("operator", "tests", "cluster.rs"))
    assert is_test_file(os.path.join("operator", "src", "controller", "tests.rs"))
    assert not is_test_file(os.path.join("operator", "src", "run.rs"))
    print("self-test passed")


def main():
    if "--self-test" in sys.argv:
        self_test()
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    findings = shape_findings(root)
    failed = False
    for path, function, what in sorted(findings, key=lambda f: (f[0], f[1] or "")):
        where = f"{path}: fn {function}" if function else path
        if (path, function) in EXCEPTIONS:
            print(f"kept: {where}: {what} — {EXCEPTIONS[(path, function)]}")
        else:
            print(f"too long: {where}: {what}")
            failed = True
    for key in sorted(set(EXCEPTIONS) - {(p, f) for p, f, _ in findings}, key=str):
        print(f"stale exception (now within the limit, remove it): {key}")
        failed = True
    for name, versions in sorted(duplicated_direct_dependencies(root).items()):
        print(f"direct dependency in two versions: {name} {', '.join(versions)}")
        failed = True
    if failed:
        return 1
    print(f"code shape: files ≤ {MAX_FILE_LINES} lines, functions ≤ {MAX_FN_LINES} lines outside tests, "
          f"one version per direct dependency ({len(EXCEPTIONS)} kept exceptions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
