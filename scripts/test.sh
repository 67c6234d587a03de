#!/usr/bin/env bash
# Runs every test: the Swift test suites (unit, emulator protocol, multi-process) and the interop check of the
# official Python SDK (qq-botpy 1.2.1) against the emulator. Creates .venv for the probe when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --build-tests
# Unit and in-process suites run in parallel; the suites that run real clusters of processes run afterwards, on
# their own, so that their bounds (a hang found within misses x interval, a rename served within 1 s) hold on a
# busy two-core machine too.
swift test --skip-build --skip ProcessTests
swift test --skip-build --filter ProcessTests

if ! .venv/bin/python -c "import botpy" >/dev/null 2>&1; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet qq-botpy==1.2.1
fi
.venv/bin/python scripts/interop/botpy_probe.py --botcluster .build/debug/botcluster
