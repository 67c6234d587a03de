#!/usr/bin/env bash
# Faults at random against a live cluster on the emulator, judged by the emulator's ground truth.
#
# usage: scripts/chaos.sh [--duration S] [--seed N] [--shards N] [--mode websocket|webhook] [--hosts N] [--release]
#
# Launches the emulator and a cluster with steady traffic; at seeded random moments it kills a worker with -9,
# SIGSTOPs one, has the emulator send op 7 / op 9 / drop a socket / stop ACKs / close with 4009, scales up, scales
# down, rolls every worker. Then it lets the traffic drain and prints: messages generated, undelivered, replied
# once, replied more than once, unreplied, 429s, identify violations, hard kills, worker restarts, processes left
# behind. Exit status 0 only if unreplied = 0, replied more than once <= hard kills, 429s = 0, violations = 0 and
# nothing is left behind. With --mode webhook the emulator delivers by signed POSTs to the cluster's ingress (and
# redelivers a share of events with the same id); the gateway faults give way to those, and the run also fails if a
# gateway session was started or a delivery was given up.
#
# With --hosts N (as root): N supervisors share a PostgreSQL store, each in a network namespace of its own with a
# link to the emulator and one to the database, run as the user botcluster-test. Besides the worker and gateway
# faults, a supervisor is killed with SIGKILL (and started again seconds later), a host's link to the database is
# cut (and mended seconds later), and the database restarts. The run also fails if two sessions of one shard were
# ever live at once. The server is BOTCLUSTER_TEST_POSTGRES (with BOTCLUSTER_TEST_POSTGRES_DIR, for the restarts,
# and BOTCLUSTER_TEST_POSTGRES_PASSWORD, which the hosts give from their namespaces) when set, else one this script
# starts (scripts/postgres.sh) and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGURATION=debug
ARGS=()
while (($#)); do
  case "$1" in
    --duration|--seed|--shards|--mode) ARGS+=("$1" "$2"); shift 2 ;;
    --hosts) HOSTS=$2; ARGS+=("$1" "$2"); shift 2 ;;
    --release) CONFIGURATION=release; shift ;;
    *) echo "usage: scripts/chaos.sh [--duration S] [--seed N] [--shards N] [--mode websocket|webhook] [--hosts N] [--release]" >&2; exit 2 ;;
  esac
done

if (( ${HOSTS:-1} > 1 )); then
  own_postgres=""
  trap '[[ -n $own_postgres ]] && bash scripts/postgres.sh stop "$own_postgres"' EXIT
  if [[ -z ${BOTCLUSTER_TEST_POSTGRES:-} ]]; then
    eval "$(bash scripts/postgres.sh start)"
    own_postgres=$BOTCLUSTER_TEST_POSTGRES_DIR
  fi
  ARGS+=(--postgres "$BOTCLUSTER_TEST_POSTGRES")
  [[ -n ${BOTCLUSTER_TEST_POSTGRES_DIR:-} ]] && ARGS+=(--postgres-directory "$BOTCLUSTER_TEST_POSTGRES_DIR")
fi

swift build -c "$CONFIGURATION" --product botcluster >&2
swift build -c "$CONFIGURATION" --product botcluster-chaos >&2
BIN=$(swift build -c "$CONFIGURATION" --show-bin-path)
"$BIN/botcluster-chaos" --botcluster "$BIN/botcluster" "${ARGS[@]}"
