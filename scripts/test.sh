#!/usr/bin/env bash
# Runs every test: the Swift test suites (unit, emulator protocol, multi-process) and the interop check of the
# official Python SDK (qq-botpy 1.2.1) against the emulator. Creates .venv for the probe when it is missing.
#
# The suites that run real clusters of processes run as an unprivileged user, the way operators run botcluster
# (systemd User=, a container's USER): run as root, this script creates the user botcluster-test and runs them as
# it, so that nothing only root may do (a privileged socket option, a file another user owns) can pass unseen.
set -euo pipefail
cd "$(dirname "$0")/.."

# The module graph cannot drift: a target imports only what Package.swift declares for it (SwiftPM checks the
# targets of this package, scripts/check-dependencies.py every module, and that each declared one is used), and
# docs/ARCHITECTURE.md's targets table and module graph say what Package.swift says. Every public type and function
# keeps its doc comment.
python3 scripts/check-dependencies.py
python3 scripts/check-doc-comments.py
swift build --build-tests --explicit-target-dependency-import-check error
# What ships beside the binary: the runtime image has every library the binary links, the systemd unit passes
# systemd's own check (with ExecStart pointed at this build).
bash scripts/check-image-libraries.sh
unit=$(mktemp -d)
sed "s#/usr/local/bin/botcluster#$(swift build --show-bin-path)/botcluster#g" deploy/systemd/botcluster.service > "$unit/botcluster.service"
systemd-analyze verify "$unit/botcluster.service"
rm -rf "$unit"
# The Python tools of the checks: the official SDK (the interop check at the end) and Kubernetes' schemas.
if ! .venv/bin/python -c "import botpy" >/dev/null 2>&1; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet qq-botpy==1.2.1
fi
[[ -x .venv/bin/kubernetes-validate ]] || .venv/bin/pip install --quiet kubernetes-validate==1.31.0
# deploy/kubernetes/ against Kubernetes' own schemas, offline, and its cluster.json through config check.
.venv/bin/python scripts/check-kubernetes.py --validator .venv/bin/kubernetes-validate --botcluster "$(swift build --show-bin-path)/botcluster"
# The suites of the PostgreSQL store need a server: CI starts one (scripts/postgres.sh); without it, one of our own
# runs for this script's life.
own_postgres=""
stage=""
cleanup() {
  [[ -n $stage ]] && rm -rf "$stage"
  [[ -n $own_postgres ]] && bash scripts/postgres.sh stop "$own_postgres"
  return 0
}
trap cleanup EXIT
if [[ -z ${BOTCLUSTER_TEST_POSTGRES:-} ]]; then
  eval "$(bash scripts/postgres.sh start)"
  own_postgres=$BOTCLUSTER_TEST_POSTGRES_DIR
fi
# Unit and in-process suites run in parallel; the suites that run real clusters of processes run afterwards, on
# their own, so that their bounds (a hang found within misses x interval, a rename served within 1 s) hold on a
# busy two-core machine too.
swift test --skip-build --skip ProcessTests

if [[ $(id -u) -eq 0 ]]; then
  user=botcluster-test
  if ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --create-home --home-dir "/var/lib/$user" --shell /bin/sh "$user"
  fi
  # The test bundle finds botcluster, botcluster-bench and botcluster-chaos beside itself: all go where the user
  # can run them.
  stage=$(mktemp -d /tmp/botcluster-process-tests.XXXXXX)
  bin=$(swift build --show-bin-path)
  cp "$bin/botclusterPackageTests.xctest" "$bin/botcluster" "$bin/botcluster-bench" "$bin/botcluster-chaos" "$stage/"
  # And the files the suites read: the dashboard and alert rules they check, the browser driver of the status page.
  mkdir -p "$stage/scripts" "$stage/deploy"
  cp scripts/page_driver.py scripts/tcp_cut.py "$stage/scripts/"
  cp -r deploy/grafana deploy/prometheus "$stage/deploy/"
  chown -R "$user" "$stage"
  chmod 700 "$stage"
  echo "process tests as $user (uid $(id -u "$user")), not root"
  # In a directory of its own, with the system's PATH: this checkout and root's tools may be closed to it.
  runuser -u "$user" -- env -i -C "$stage" PATH=/usr/local/bin:/usr/bin:/bin HOME="/var/lib/$user" LANG=C.UTF-8 \
    BOTCLUSTER_TEST_POSTGRES="$BOTCLUSTER_TEST_POSTGRES" \
    "$stage/botclusterPackageTests.xctest" --testing-library swift-testing --filter ProcessTests
  # Three hosts, each in a network namespace of its own (which only root may make), run as the same user; a worker
  # or a supervisor killed, a host's link to the database cut, the database restarted: the emulator judges.
  "$stage/botcluster-chaos" --botcluster "$stage/botcluster" --hosts 3 --duration 45 --seed 8 --user "$user" \
    --postgres "$BOTCLUSTER_TEST_POSTGRES" ${BOTCLUSTER_TEST_POSTGRES_DIR:+--postgres-directory "$BOTCLUSTER_TEST_POSTGRES_DIR"}
else
  swift test --skip-build --filter ProcessTests
  echo "the chaos run of several hosts needs network namespaces, which only root may make: not run" >&2
fi

.venv/bin/python scripts/interop/botpy_probe.py --botcluster .build/debug/botcluster
