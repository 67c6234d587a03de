#!/usr/bin/env bash
# Measures botcluster's figures in release builds and prints them as a table, each beside its goal or its peer
# measured in the same run (the machines are shared and noisy: compare within one run, not across runs).
#
# usage: scripts/bench.sh [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
while (($#)); do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    *) echo "usage: scripts/bench.sh [--rounds N]" >&2; exit 2 ;;
  esac
done

swift build -c release --product botcluster >&2
swift build -c release --product botcluster-bench >&2
BIN=.build/release/botcluster
BENCH=.build/release/botcluster-bench
OUT=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# start_emulator CONFIG: starts `botcluster emulator` on a free port, waits for its listening line, sets EMU_URL.
start_emulator() {
  local log="$OUT/emulator.$RANDOM.log"
  "$BIN" emulator --config "$1" --port 0 >"$log" 2>&1 &
  PIDS+=($!)
  EMU_PID=$!
  for _ in $(seq 1 200); do
    EMU_URL=$(sed -n 's/^emulator listening on //p' "$log")
    [[ -n $EMU_URL ]] && return 0
    kill -0 "$EMU_PID" 2>/dev/null || { cat "$log" >&2; echo "emulator exited" >&2; exit 1; }
    sleep 0.05
  done
  echo "emulator did not start" >&2
  exit 1
}

stop_emulator() {
  kill "$EMU_PID" 2>/dev/null || true
  wait "$EMU_PID" 2>/dev/null || true
}

# peak_rss_mib PID: the process's peak resident set (VmHWM) in MiB.
peak_rss_mib() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# median of numbers on stdin
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

ROWS=()
# row FIGURE VALUE GOAL VERDICT
row() { ROWS+=("$(printf '| %-44s | %-22s | %-26s | %-4s |' "$1" "$2" "$3" "$4")"); }
# value NAME FILE: the number on the line of NAME
value() { awk -v n="$1" '$1 == n { print $2 }' "$2"; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? "ok" : "MISS" }'; }

# --- the emulator's own capacity (issue: emulator) ---
start_emulator scripts/bench/emulator.json
"$BENCH" emulator-dispatch --url "$EMU_URL" --rounds "$ROUNDS" --count 100000 --shards 4 | tee -a "$OUT/emulator.txt" >&2
"$BENCH" emulator-replies --url "$EMU_URL" --rounds "$ROUNDS" --count 50000 --connections 8 | tee -a "$OUT/emulator.txt" >&2
stop_emulator
d=$(value emulator.dispatch.rate "$OUT/emulator.txt")
r=$(value emulator.replies.rate "$OUT/emulator.txt")
row "emulator: dispatches/s to 4 shards" "$d" ">= 50000" "$(verdict "$d" 50000)"
row "emulator: reply POSTs/s accepted" "$r" ">= 25000" "$(verdict "$r" 25000)"

# --- one worker end to end, beside qq-botpy in the same run (issue: the shard worker) ---
if ! .venv/bin/python -c "import botpy" >/dev/null 2>&1; then
  python3 -m venv .venv && .venv/bin/pip install --quiet qq-botpy==1.2.1
fi
export BOTCLUSTER_BENCH_SECRET=emulator-development-secret   # the emulator's development credentials
# worker_config: a cluster.json pointing one worker at the emulator on EMU_URL, budget out of the way.
worker_config() {
  cat >"$OUT/worker.json" <<JSON
{"gateway": {"embedded": false, "url": "$EMU_URL", "tokenURL": "$EMU_URL/app/getAppAccessToken"},
 "app": {"id": "102000001", "secret": "env:BOTCLUSTER_BENCH_SECRET"},
 "identify": {"window": "0s"},
 "rateBudget": {"global": {"rate": 1000000, "burst": 100000}},
 "log": {"level": "warning"}}
JSON
}
# burst_rounds LABEL REPLIES: ROUNDS bursts of 20000 through the bot connected now; prints the median events/s.
burst_rounds() {
  for _ in $(seq 1 "$ROUNDS"); do
    "$BENCH" e2e --url "$EMU_URL" --count 20000 --replies "$2" --label "$1" | tee -a "$OUT/e2e.txt" >&2
  done
  awk -v n="e2e.$1.rate" '$1 == n { print $2 }' "$OUT/e2e.txt" | median
}

start_emulator scripts/bench/e2e-emulator.json; worker_config
"$BIN" run --shard 0/1 --config "$OUT/worker.json" >"$OUT/worker.out" 2>"$OUT/worker.err" &
WORKER=$!; PIDS+=($WORKER)
bc_rate=$(burst_rounds botcluster 20000)
bc_rss=$(peak_rss_mib "$WORKER")
kill -INT "$WORKER"; wait "$WORKER" || true
latency=$(sed -n 's/.*dispatch latency p50 \([^ ]*\) p99 \([^ ]*\)$/\1 \/ \2/p' "$OUT/worker.out")
stop_emulator

# Dispatch latency without a burst: steady traffic well under capacity.
start_emulator scripts/bench/e2e-emulator.json; worker_config
"$BIN" run --shard 0/1 --config "$OUT/worker.json" >"$OUT/steady.out" 2>"$OUT/steady.err" &
STEADY=$!; PIDS+=($STEADY)
"$BENCH" e2e --url "$EMU_URL" --count 1 --label warm-up >/dev/null
"$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 2000}' >/dev/null
sleep 5
"$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 0}' >/dev/null
kill -INT "$STEADY"; wait "$STEADY" || true
steady_latency=$(sed -n 's/.*dispatch latency p50 \([^ ]*\) p99 \([^ ]*\)$/\1 \/ \2/p' "$OUT/steady.out")
stop_emulator

start_emulator scripts/bench/e2e-emulator.json
.venv/bin/python scripts/bench/botpy_bench.py --url "$EMU_URL" >"$OUT/botpy.out" 2>&1 &
BOTPY=$!; PIDS+=($BOTPY)
py_rate=$(burst_rounds botpy 20000)
py_rss=$(peak_rss_mib "$BOTPY")
kill "$BOTPY"; wait "$BOTPY" 2>/dev/null || true
stop_emulator

start_emulator scripts/bench/e2e-emulator.json; worker_config
BENCH_HANDLER=count BENCH_EXPECT=20000 "$BENCH" bot run --shard 0/1 --config "$OUT/worker.json" >"$OUT/counter.out" 2>&1 &
COUNTER=$!; PIDS+=($COUNTER)
rx_rate=$(burst_rounds receive-only 1)
kill -INT "$COUNTER"; wait "$COUNTER" || true
stop_emulator

ratio=$(awk -v a="$bc_rate" -v b="$py_rate" 'BEGIN { printf "%.1fx", a / b }')
row "worker: burst of 20000, replied events/s" "$bc_rate ($ratio botpy)" ">= 10x botpy ($py_rate)" "$(verdict "$bc_rate" "$(awk -v b="$py_rate" 'BEGIN { print 10 * b }')")"
row "worker: peak RSS under the burst (MiB)" "$bc_rss" "<= 64 (botpy: $py_rss)" "$(awk -v a="$bc_rss" 'BEGIN { print (a <= 64) ? "ok" : "MISS" }')"
row "worker: receive-only events/s" "$rx_rate" "(counting handler)" ""
row "worker: dispatch latency p50 / p99, burst" "$latency" "(received -> handler)" ""
row "worker: dispatch latency p50 / p99, 2000/s" "$steady_latency" "(received -> handler)" ""

echo
printf '| %-44s | %-22s | %-26s | %-4s |\n' "figure (release, median of $ROUNDS)" "measured" "goal / peer" ""
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..28})" "------"
printf '%s\n' "${ROWS[@]}"
