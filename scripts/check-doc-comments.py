#!/usr/bin/env python3
"""Checks that every public type, function, initializer and typealias under Sources/ has a `///` doc comment.

A declaration counts as documented when the line above it (attributes such as @discardableResult skipped) is a
doc comment. `==` and `hash(into:)` are left out: their protocols document them. Run from the package root; exits 1
with one line per undocumented declaration.
"""
import os
import re
import sys

DECLARATION = re.compile(
    r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*(?:public|open)\s+"
    r"(?:(?:static|final|override|mutating|nonisolated|convenience|required|indirect)\s+)*"
    r"(struct|class|enum|protocol|actor|func|init|typealias)\b"
)
EXEMPT = ("static func ==", "func hash(into")


def main():
    total, missing = 0, []
    for root, _, files in os.walk("Sources"):
        for name in sorted(files):
            if not name.endswith(".swift"):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8") as source:
                lines = source.read().split("\n")
            for index, line in enumerate(lines):
                if not DECLARATION.match(line) or any(exempt in line for exempt in EXEMPT):
                    continue
                total += 1
                above = index - 1
                while above >= 0 and re.match(r"^\s*@\w+", lines[above]):
                    above -= 1
                if above < 0 or not lines[above].strip().startswith("///"):
                    missing.append(f"{path}:{index + 1}: no doc comment: {line.strip()}")
    for line in missing:
        print(line)
    if missing:
        sys.exit(1)
    print(f"Sources: all {total} public types and functions have a doc comment")


if __name__ == "__main__":
    main()
