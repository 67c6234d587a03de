#!/usr/bin/env python3
"""Checks that Package.swift declares exactly what each target imports.

SwiftPM's `--explicit-target-dependency-import-check error` catches a target importing another target of this
package without declaring it; it does not look at modules of other packages. This check covers both: every module
a target's sources import (beside the toolchain's own) is one of its declared dependencies, and every declared
dependency is imported by at least one of its files. Run from the package root; exits 1 with one line per problem.
"""
import json
import os
import re
import subprocess
import sys

# Modules the toolchain provides: importing them needs no declaration.
TOOLCHAIN = {
    "Foundation", "FoundationEssentials", "FoundationNetworking", "Glibc", "Musl", "Darwin", "Dispatch",
    "Synchronization", "Testing", "XCTest", "_Concurrency", "os",
}
IMPORT = re.compile(r"^(?:@testable\s+|@_exported\s+|@preconcurrency\s+)*(?:public\s+|package\s+|internal\s+)?import\s+(?:struct\s+|class\s+|enum\s+|func\s+)?([A-Za-z_][A-Za-z0-9_]*)", re.M)


def main():
    manifest = json.loads(subprocess.run(["swift", "package", "dump-package"], check=True, capture_output=True, text=True).stdout)
    problems = []
    for target in manifest["targets"]:
        if target["type"] in ("system", "plugin"):
            continue
        name = target["name"]
        path = target.get("path") or os.path.join("Tests" if target["type"] == "test" else "Sources", name)
        declared = set()
        for dependency in target["dependencies"]:
            kind, value = next(iter(dependency.items()))
            declared.add(value[0])
        imported = set()
        for root, _, files in os.walk(path):
            for file in files:
                if file.endswith(".swift"):
                    with open(os.path.join(root, file), encoding="utf-8") as source:
                        imported.update(IMPORT.findall(source.read()))
        imported -= TOOLCHAIN | {name}
        if not any(file.endswith(".swift") for _, _, files in os.walk(path) for file in files):
            continue  # a C target: its headers say what it needs
        for module in sorted(imported - declared):
            problems.append(f"{name}: imports {module} without declaring it")
        for module in sorted(declared - imported):
            problems.append(f"{name}: declares {module} but no file imports it")
    for problem in problems:
        print(f"Package.swift: {problem}")
    if problems:
        sys.exit(1)
    print(f"Package.swift: the dependencies of {sum(1 for t in manifest['targets'] if t['type'] not in ('system', 'plugin'))} targets match their imports")


if __name__ == "__main__":
    main()
