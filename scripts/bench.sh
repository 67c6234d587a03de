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

echo
printf '| %-44s | %-22s | %-26s | %-4s |\n' "figure (release, median of $ROUNDS)" "measured" "goal / peer" ""
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..28})" "------"
printf '%s\n' "${ROWS[@]}"
