#!/usr/bin/env python3
"""Checks that Package.swift declares exactly what each target imports, and that docs/ARCHITECTURE.md says so.

SwiftPM's `--explicit-target-dependency-import-check error` catches a target importing another target of this
package without declaring it; it does not look at modules of other packages. This check covers both: every module
a target's sources import (beside the toolchain's own) is one of its declared dependencies, and every declared
dependency is imported by at least one of its files. Then the map: the targets table of docs/ARCHITECTURE.md has a
row for every target that is not a test, whose last column lists exactly its declared dependencies, and the module
graph picture (mermaid) has exactly the edges of the package's graph with those implied by a longer path left out.
Run from the package root; exits 1 with one line per problem.
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


DOC = "docs/ARCHITECTURE.md"
ROW = re.compile(r"^\|\s*`([^`]+)`[^|]*\|.*\|\s*([^|]*?)\s*\|\s*$")
EDGE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*-->\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


def dependencies(target):
    """The names a target declares: targets of this package and products of others."""
    return {next(iter(dependency.values()))[0] for dependency in target["dependencies"]}


def check_document(manifest):
    """The targets table and the module graph of docs/ARCHITECTURE.md against the manifest."""
    problems = []
    with open(DOC, encoding="utf-8") as file:
        text = file.read()
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0] if "## Targets" in text else ""
    if not section:
        return [f"{DOC}: no '## Targets' section"]
    targets = {t["name"]: t for t in manifest["targets"] if t["type"] not in ("test", "plugin")}
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match and match.group(1) != "target":
            listed = match.group(2).strip()
            rows[match.group(1)] = set() if listed in ("-", "") else {name.strip() for name in listed.split(",")}
    for name, target in sorted(targets.items()):
        if name not in rows:
            problems.append(f"{DOC}: the targets table has no row for {name}")
            continue
        declared = dependencies(target)
        for missing in sorted(declared - rows[name]):
            problems.append(f"{DOC}: {name} depends on {missing}, which its row does not list")
        for extra in sorted(rows[name] - declared):
            problems.append(f"{DOC}: {name}'s row lists {extra}, which Package.swift does not declare")
    for name in sorted(set(rows) - set(targets)):
        problems.append(f"{DOC}: the targets table has a row for {name}, which is no target")
    # The picture: the transitive reduction of the graph of this package's targets.
    graph = {name: dependencies(target) & set(targets) for name, target in targets.items()}

    def reachable(name):
        seen, stack = set(), list(graph[name])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(graph[node])
        return seen

    expected = {(name, dependency) for name, deps in graph.items() for dependency in deps
                if not any(dependency in reachable(other) for other in deps if other != dependency)}
    picture = section.split("```mermaid", 1)[1].split("```", 1)[0] if "```mermaid" in section else ""
    drawn = {match.groups() for match in map(EDGE.match, picture.splitlines()) if match}
    if not picture:
        problems.append(f"{DOC}: no mermaid module graph in the Targets section")
    for edge in sorted(expected - drawn):
        problems.append(f"{DOC}: the module graph lacks {edge[0]} --> {edge[1]}")
    for edge in sorted(drawn - expected):
        problems.append(f"{DOC}: the module graph draws {edge[0]} --> {edge[1]}, " + (
            "which Package.swift does not declare" if edge[1] not in graph.get(edge[0], set()) else "which a longer path implies"))
    return problems


def main():
    manifest = json.loads(subprocess.run(["swift", "package", "dump-package"], check=True, capture_output=True, text=True).stdout)
    problems = []
    for target in manifest["targets"]:
        if target["type"] in ("system", "plugin"):
            continue
        name = target["name"]
        path = target.get("path") or os.path.join("Tests" if target["type"] == "test" else "Sources", name)
        declared = dependencies(target)
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
    problems = [f"Package.swift: {problem}" for problem in problems] + check_document(manifest)
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print(f"Package.swift: the dependencies of {sum(1 for t in manifest['targets'] if t['type'] not in ('system', 'plugin'))} targets match their imports, and {DOC} draws and lists them")


if __name__ == "__main__":
    main()
