#!/usr/bin/env bash
# Measures botcluster's figures in release builds and prints them as a table, each beside its goal or its peer
# measured in the same run (the machines are shared and noisy: compare within one run, not across runs).
#
# usage: scripts/bench.sh [--rounds N] [--only emulator|worker|supervisor|rescale|webhook|shared|scale|hosts]... [--scale "16 256 1024"]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
ONLY=()
SCALE_SHARDS="16 256 1024"
while (($#)); do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --only) ONLY+=("$2"); shift 2 ;;
    --scale) SCALE_SHARDS="$2"; shift 2 ;;
    *) echo "usage: scripts/bench.sh [--rounds N] [--only emulator|worker|supervisor|rescale|webhook|shared|scale|hosts]... [--scale \"16 256 1024\"]" >&2; exit 2 ;;
  esac
done
# want SECTION: whether to run a section (all of them unless --only names some).
want() { ((${#ONLY[@]} == 0)) || [[ " ${ONLY[*]} " == *" $1 "* ]]; }

swift build -c release --product botcluster >&2
swift build -c release --product botcluster-bench >&2
ROOT=$(pwd)
BIN=.build/release/botcluster
BENCH=.build/release/botcluster-bench
OUT=$(mktemp -d)
cleanup() {
  # Only the jobs still running: a pid noted earlier may belong to another process by now.
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# start_emulator CONFIG: starts `botcluster emulator` on a free port, waits for its listening line, sets EMU_URL.
start_emulator() {
  local log="$OUT/emulator.$RANDOM.log"
  "$BIN" emulator --config "$1" --port 0 >"$log" 2>&1 &
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
# pss_private_mib PID: proportional set size / private (unshared) memory now, in MiB.
pss_private_mib() { awk '/^Pss:/ { p = $2 } /^Private_(Clean|Dirty):/ { u += $2 } END { printf "%.1f / %.1f", p / 1024, u / 1024 }' "/proc/$1/smaps_rollup"; }
# cpu_ticks PID...: user + system clock ticks the processes have used.
cpu_ticks() { printf '/proc/%s/stat\n' "$@" | xargs cat 2>/dev/null | awk '{ s += $14 + $15 } END { print s + 0 }'; }
now_ns() { date +%s%N; }
HZ=$(getconf CLK_TCK)
# median of numbers on stdin
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

export BOTCLUSTER_BENCH_SECRET=emulator-development-secret   # the emulator's development credentials
BOTCLUSTER_BENCH_ADMIN_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')   # the emulators' admin API token
export BOTCLUSTER_BENCH_ADMIN_TOKEN
ROWS=()
# row FIGURE VALUE GOAL VERDICT
row() { ROWS+=("$(printf '| %-44s | %-22s | %-26s | %-4s |' "$1" "$2" "$3" "$4")"); }
# value NAME FILE: the number on the line of NAME
value() { awk -v n="$1" '$1 == n { print $2 }' "$2"; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? "ok" : "MISS" }'; }
# at_most VALUE LIMIT: ok when VALUE <= LIMIT.
at_most() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 <= b + 0) ? "ok" : "MISS" }'; }

# --- the emulator's own capacity ---
if want emulator; then
start_emulator scripts/bench/emulator.json
"$BENCH" emulator-dispatch --url "$EMU_URL" --rounds "$ROUNDS" --count 100000 --shards 4 | tee -a "$OUT/emulator.txt" >&2
"$BENCH" emulator-replies --url "$EMU_URL" --rounds "$ROUNDS" --count 50000 --connections 8 | tee -a "$OUT/emulator.txt" >&2
stop_emulator
d=$(value emulator.dispatch.rate "$OUT/emulator.txt")
r=$(value emulator.replies.rate "$OUT/emulator.txt")
row "emulator: dispatches/s to 4 shards" "$d" ">= 50000" "$(verdict "$d" 50000)"
row "emulator: reply POSTs/s accepted" "$r" ">= 25000" "$(verdict "$r" 25000)"
fi

# --- one worker end to end, beside qq-botpy in the same run ---
if want worker; then
if ! .venv/bin/python -c "import botpy" >/dev/null 2>&1; then
  python3 -m venv .venv && .venv/bin/pip install --quiet qq-botpy==1.2.1
fi
# worker_config [TRUST]: a cluster.json pointing one worker at the emulator on EMU_URL, budget out of the way;
# TRUST is a PEM file of roots to trust (an emulator serving TLS).
worker_config() {
  local trust=""
  [[ -n ${1:-} ]] && trust=", \"trustRoots\": \"$1\""
  cat >"$OUT/worker.json" <<JSON
{"gateway": {"embedded": false, "url": "$EMU_URL", "tokenURL": "$EMU_URL/app/getAppAccessToken"$trust},
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
WORKER=$!
bc_rate=$(burst_rounds botcluster 20000)
bc_rss=$(peak_rss_mib "$WORKER")
kill -INT "$WORKER"; wait "$WORKER" || true
latency=$(sed -n 's/.*dispatch latency p50 \([^ ]*\) p99 \([^ ]*\)$/\1 \/ \2/p' "$OUT/worker.out")
stop_emulator

# The same burst over TLS, as the platform is reached (https + wss; HTTP/2 by ALPN for the OpenAPI).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=bench" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$OUT/tls.key" -out "$OUT/tls.pem" 2>/dev/null
sed "s#\"emulator\": {#\"emulator\": {\"tls\": {\"certificate\": \"$OUT/tls.pem\", \"key\": \"$OUT/tls.key\"},#" scripts/bench/e2e-emulator.json >"$OUT/e2e-tls.json"
export BOTCLUSTER_BENCH_TRUST_ROOTS="$OUT/tls.pem"
start_emulator "$OUT/e2e-tls.json"; worker_config "$OUT/tls.pem"
"$BIN" run --shard 0/1 --config "$OUT/worker.json" >"$OUT/tls.out" 2>"$OUT/tls.err" &
TLSWORKER=$!
tls_rate=$(burst_rounds botcluster-tls 20000)
kill -INT "$TLSWORKER"; wait "$TLSWORKER" || true
stop_emulator
unset BOTCLUSTER_BENCH_TRUST_ROOTS

# Dispatch latency without a burst: steady traffic well under capacity.
start_emulator scripts/bench/e2e-emulator.json; worker_config
"$BIN" run --shard 0/1 --config "$OUT/worker.json" >"$OUT/steady.out" 2>"$OUT/steady.err" &
STEADY=$!
"$BENCH" e2e --url "$EMU_URL" --count 1 --label warm-up >/dev/null
"$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 2000}' >/dev/null
sleep 5
"$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 0}' >/dev/null
kill -INT "$STEADY"; wait "$STEADY" || true
steady_latency=$(sed -n 's/.*dispatch latency p50 \([^ ]*\) p99 \([^ ]*\)$/\1 \/ \2/p' "$OUT/steady.out")
stop_emulator

start_emulator scripts/bench/e2e-emulator.json
.venv/bin/python scripts/bench/botpy_bench.py --url "$EMU_URL" >"$OUT/botpy.out" 2>&1 &
BOTPY=$!
py_rate=$(burst_rounds botpy 20000)
py_rss=$(peak_rss_mib "$BOTPY")
kill "$BOTPY"; wait "$BOTPY" 2>/dev/null || true
stop_emulator

start_emulator scripts/bench/e2e-emulator.json; worker_config
BENCH_HANDLER=count BENCH_EXPECT=20000 "$BENCH" bot run --shard 0/1 --config "$OUT/worker.json" >"$OUT/counter.out" 2>&1 &
COUNTER=$!
rx_rate=$(burst_rounds receive-only 1)
kill -INT "$COUNTER"; wait "$COUNTER" || true
stop_emulator

ratio=$(awk -v a="$bc_rate" -v b="$py_rate" 'BEGIN { printf "%.1fx", a / b }')
row "worker: burst of 20000, replied events/s" "$bc_rate ($ratio botpy)" ">= 10x botpy ($py_rate)" "$(verdict "$bc_rate" "$(awk -v b="$py_rate" 'BEGIN { print 10 * b }')")"
row "worker: the same burst over TLS (https+wss)" "$tls_rate" "(botpy: plain http)" ""
row "worker: peak RSS under the burst (MiB)" "$bc_rss" "<= 64 (botpy: $py_rss)" "$(awk -v a="$bc_rss" 'BEGIN { print (a <= 64) ? "ok" : "MISS" }')"
row "worker: receive-only events/s" "$rx_rate" "(counting handler)" ""
row "worker: dispatch latency p50 / p99, burst" "$latency" "(received -> handler)" ""
row "worker: dispatch latency p50 / p99, 2000/s" "$steady_latency" "(received -> handler)" ""
fi

# cluster_dir SHARDS [EXTRA]: a directory with a cluster.json for SHARDS workers on the emulator at EMU_URL.
cluster_dir() {
  local dir="$OUT/c$RANDOM"
  mkdir -p "$dir"
  cat >"$dir/cluster.json" <<JSON
{"gateway": {"embedded": false, "url": "$EMU_URL", "tokenURL": "$EMU_URL/app/getAppAccessToken"},
 "app": {"id": "102000001", "secret": "env:BOTCLUSTER_BENCH_SECRET"},
 "shards": {"count": $1}, "identify": {"window": "1s", "margin": "20ms"}, "http": {"listen": "127.0.0.1:0"}, ${2:-}
 "rateBudget": {"global": {"rate": 100000, "burst": 1000}},
 "log": {"level": "warning"}}
JSON
  echo "$dir"
}
# start_cluster DIR [SECONDS]: botcluster launch in DIR; waits (60 s unless told) for "cluster ready"; sets CLUSTER
# (pid) and READY (seconds).
start_cluster() {
  (cd "$1" && exec "$ROOT/$BIN" launch >launch.out 2>launch.err) &
  CLUSTER=$!
  for _ in $(seq 1 $((${2:-60} * 20))); do
    local ready
    ready=$(sed -n 's/^cluster ready: [0-9]* shards in //p' "$1/launch.out")
    if [[ -n $ready ]]; then
      READY=$(awk -v t="$ready" 'BEGIN { if (t ~ /ms$/) { sub(/ms$/, "", t); print t / 1000 } else if (t ~ /us$/) { sub(/us$/, "", t); print t / 1e6 } else { sub(/s$/, "", t); print t } }')
      return 0
    fi
    kill -0 "$CLUSTER" 2>/dev/null || { cat "$1/launch.err" >&2; echo "launch exited" >&2; exit 1; }
    sleep 0.05
  done
  echo "cluster did not get ready" >&2; exit 1
}
stop_cluster() { kill -TERM "$CLUSTER" 2>/dev/null || true; wait "$CLUSTER" || true; }
emulator_config() { sed "s/MAX_CONCURRENCY/$1/" scripts/bench/cluster-emulator.json >"$OUT/cluster-emulator-$1.json"; echo "$OUT/cluster-emulator-$1.json"; }

# --- the supervisor ---
if want supervisor; then
"$BENCH" ipc --count 20000 | tee "$OUT/ipc.txt" >&2
el_p50=$(value ipc.el.rtt.p50 "$OUT/ipc.txt"); el_p99=$(value ipc.el.rtt.p99 "$OUT/ipc.txt")
task_p50=$(value ipc.rtt.p50 "$OUT/ipc.txt"); task_p99=$(value ipc.rtt.p99 "$OUT/ipc.txt")
raw_p50=$(value raw.rtt.p50 "$OUT/ipc.txt"); raw_p99=$(value raw.rtt.p99 "$OUT/ipc.txt")
oneway=$(value ipc.oneway.rate "$OUT/ipc.txt")
el_ratio=$(awk -v a="$el_p50" -v b="$raw_p50" 'BEGIN { printf "%.1f", a / b }')
row "IPC round trip p50 / p99 (us), event loop" "$el_p50 / $el_p99 (${el_ratio}x)" "<= 4x raw ($raw_p50 / $raw_p99)" "$(awk -v r="$el_ratio" 'BEGIN { print (r <= 4) ? "ok" : "MISS" }')"
row "IPC round trip p50 / p99 (us), awaited in a task" "$task_p50 / $task_p99" "(raw $raw_p50 / $raw_p99)" ""
row "IPC one-way messages/s" "$oneway" "" ""

start_emulator "$(emulator_config 4)"
dir=$(cluster_dir 4 '"restart": {"resetAfter": "200ms", "maxCrashes": 1000},'); start_cluster "$dir"
"$BENCH" kill-resume --url "$EMU_URL" --socket "$dir/run/botcluster.sock" --count 20 | tee "$OUT/kill.txt" >&2
kill_p50=$(value kill.resumed.p50 "$OUT/kill.txt"); kill_max=$(value kill.resumed.max "$OUT/kill.txt")
row "kill -9 of a worker -> shard RESUMED, p50 of 20 (ms)" "$kill_p50 (max $kill_max)" "< 250" "$(awk -v a="$kill_p50" 'BEGIN { print (a < 250) ? "ok" : "MISS" }')"
"$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 0, "groupRate": 0, "c2cRate": 0}' >/dev/null
sleep 3
idle_worker=$(pgrep -f "botcluster worker --config $dir/cluster.json" | head -1)
worker_rss=$(peak_rss_mib "$idle_worker"); worker_shared=$(pss_private_mib "$idle_worker"); supervisor_rss=$(peak_rss_mib "$CLUSTER")
stop_cluster
stop_emulator
row "peak RSS of one idle worker (MiB)" "$worker_rss" "<= 25 (discord.js: > 300)" "$(awk -v a="$worker_rss" 'BEGIN { print (a <= 25) ? "ok" : "MISS" }')"
row "  its PSS / private memory, 4 workers (MiB)" "$worker_shared" "(the rest is shared code)" ""
row "peak RSS of the supervisor, 4 shards (MiB)" "$supervisor_rss" "" ""

# Launch time of 16 shards (median of the rounds) against the least the identify limits allow: (ceil(16 / mc) - 1) windows of 1 s (the
# ledger adds identify.margin, 20 ms here on loopback, to each), and at most one window when mc >= 16.
for mc in 1 4 16; do
  # A fresh emulator and cluster each round: no identify window of an earlier round is still running.
  took=$(for _ in $(seq 1 "$ROUNDS"); do
    start_emulator "$(emulator_config "$mc")" >&2; start_cluster "$(cluster_dir 16)" >&2; echo "$READY"; stop_cluster >&2; stop_emulator >&2
  done | median)
  least=$(awk -v mc="$mc" 'BEGIN { r = int((16 + mc - 1) / mc); printf "%.2f", (r > 1) ? (r - 1) * 1.0 : 1.0 }')
  if ((mc >= 16)); then
    row "launch 16 shards, max_concurrency $mc (s)" "$took" "<= one window (1.00)" "$(awk -v a="$took" 'BEGIN { print (a <= 1.0) ? "ok" : "MISS" }')"
    continue
  fi
  ratio=$(awk -v a="$took" -v b="$least" 'BEGIN { printf "%.2f", a / b }')
  row "launch 16 shards, max_concurrency $mc (s)" "$took (${ratio}x)" "<= 1.10x the limits ($least)" "$(awk -v r="$ratio" 'BEGIN { print (r <= 1.10) ? "ok" : "MISS" }')"
done
fi

# --- a live rescale: 4 -> 8 shards at max_concurrency 4, identify window 1 s, 50 messages/s ---
# The least the identify limits allow is (ceil(8 / 4) - 1) windows = 1 s; reply latency of the messages generated
# during the rescale is read beside that of the steady seconds before it, in the same round.
if want rescale; then
start_emulator "$(emulator_config 4)"
dir=$(cluster_dir 4); start_cluster "$dir"
"$BENCH" rescale --url "$EMU_URL" --botcluster "$ROOT/$BIN" --config "$dir/cluster.json" --from 4 --to 8 --rounds "$ROUNDS" | tee "$OUT/rescale.txt" >&2
stop_cluster
stop_emulator
took=$(value rescale.took "$OUT/rescale.txt")
ratio=$(awk -v a="$took" 'BEGIN { printf "%.2f", a / 1.0 }')
row "rescale 4 -> 8 shards, max_concurrency 4 (s)" "$took (${ratio}x)" "the limits allow 1.00" ""
row "  reply p99 during the rescale (ms)" "$(value rescale.during.p99 "$OUT/rescale.txt")" "before it: $(value rescale.before.p99 "$OUT/rescale.txt")" ""
row "  reply p50 during the rescale (ms)" "$(value rescale.during.p50 "$OUT/rescale.txt")" "before it: $(value rescale.before.p50 "$OUT/rescale.txt")" ""
row "  messages unreplied, all rounds" "$(value rescale.unreplied "$OUT/rescale.txt")" "0" "$(awk -v a="$(value rescale.unreplied "$OUT/rescale.txt")" 'BEGIN { print (a == 0) ? "ok" : "MISS" }')"
fi

# --- scale: N idle shards on one machine (max_concurrency 16, identify window 1 s, no traffic, the platform's 45 s
# heartbeat). Launch time beside the least the limits allow, then CPU over 20 s of idle (all processes, and the
# supervisor alone, in % of one core) and PSS (all processes) per shard. The goals are those of 1024 shards.
if want scale; then
# pss_kib PID...: the processes' proportional set sizes, summed, in KiB.
pss_kib() { printf '/proc/%s/smaps_rollup\n' "$@" | xargs cat 2>/dev/null | awk '/^Pss:/ { s += $2 } END { print s + 0 }'; }
# now_ns: the clock in nanoseconds, to divide by the time a sample really took.
# replied_count: the emulator's count of messages replied to.
replied_count() { python3 -c 'import json, sys, urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1] + "/emulator/stats"))["messagesReplied"])' "$EMU_URL"; }
for n in $SCALE_SHARDS; do
  start_emulator scripts/bench/scale-emulator.json
  dir=$(cluster_dir "$n"); start_cluster "$dir" $((n / 8 + 60))
  least=$(awk -v n="$n" 'BEGIN { r = int((n + 15) / 16); printf "%.2f", (r > 1) ? (r - 1) * 1.0 : 1.0 }')
  sleep 5
  mapfile -t workers < <(pgrep -P "$CLUSTER")
  ((${#workers[@]} == n)) || { echo "scale: $n shards ready but ${#workers[@]} worker processes" >&2; exit 1; }
  t0=$(now_ns); sup0=$(cpu_ticks "$CLUSTER"); all0=$(cpu_ticks "$CLUSTER" "${workers[@]}")
  sleep 20
  sup1=$(cpu_ticks "$CLUSTER"); all1=$(cpu_ticks "$CLUSTER" "${workers[@]}"); t1=$(now_ns)
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  pss=$(pss_kib "$CLUSTER" "${workers[@]}")
  echo "scale.$n.launch $READY s (least $least), workers ${#workers[@]}" >&2
  echo "scale.$n.cpu.all $(( all1 - all0 )) ticks, supervisor $(( sup1 - sup0 )) ticks in $seconds s at $HZ/s; pss $pss KiB" >&2
  # A hang at this size: one worker SIGSTOPped, timed until the supervisor has killed it (its beats stop; after
  # misses x interval = 1 s it gets SIGABRT, which a stopped process cannot take, and SIGKILL 500 ms later).
  victim=${workers[$((n / 2))]}
  h0=$(now_ns); kill -STOP "$victim"
  for _ in $(seq 1 2000); do kill -0 "$victim" 2>/dev/null || break; sleep 0.005; done
  hang_ms=$(awk -v a="$h0" -v b="$(now_ns)" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')
  sleep 2
  # kill -9 to RESUMED at this size (each replacement ready before the next kill).
  "$BENCH" kill-resume --url "$EMU_URL" --socket "$dir/run/botcluster.sock" --count 7 | tee "$OUT/scale-kill-$n.txt" >&2
  kill_p50=$(value kill.resumed.p50 "$OUT/scale-kill-$n.txt")
  # Under load: the same 400 messages/s over every size; the supervisor's CPU per event handled (claims, budget
  # leases and progress reports all grow with events, not with shards, if its work per event is flat).
  "$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 400, "groupRate": 0, "c2cRate": 0}' >/dev/null
  sleep 3
  l0=$(now_ns); lsup0=$(cpu_ticks "$CLUSTER"); replied0=$(replied_count)
  sleep 15
  lsup1=$(cpu_ticks "$CLUSTER"); replied1=$(replied_count); l1=$(now_ns)
  # A Prometheus scrape under that load: every worker asked over IPC and the answers merged (median of 5, each
  # past the one-second sharing of a collection).
  http=$(sed -n 's/^http listening on //p' "$dir/launch.out")
  scrape_ms=$(for _ in 1 2 3 4 5; do sleep 1.2; curl -s -o /dev/null -w '%{time_total}\n' "$http/metrics"; done | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f", v[3] * 1000 }')
  scrape_lines=$(curl -s "$http/metrics" | grep -c '^botcluster_gateway_heartbeat_latency_seconds_count')
  "$BENCH" admin --url "$EMU_URL" --path /emulator/traffic --body '{"rate": 0, "groupRate": 0, "c2cRate": 0}' >/dev/null
  events=$(( replied1 - replied0 ))
  per_event=$(awk -v t=$(( lsup1 - lsup0 )) -v hz="$HZ" -v e="$events" 'BEGIN { printf "%.0f", (e > 0) ? t / hz * 1e6 / e : -1 }')
  load_rate=$(awk -v e="$events" -v a="$l0" -v b="$l1" 'BEGIN { printf "%.0f", e / ((b - a) / 1e9) }')
  echo "scale.$n.hang $hang_ms ms; load $load_rate events/s, supervisor $(( lsup1 - lsup0 )) ticks" >&2
  echo "scale.$n.scrape $scrape_ms ms p50, heartbeat series for $scrape_lines shards" >&2
  ((n == ${SCALE_SHARDS%% *})) && per_event_base=$per_event
  stop_cluster
  stop_emulator
  cpu_all=$(awk -v t=$(( all1 - all0 )) -v hz="$HZ" -v s="$seconds" 'BEGIN { printf "%.1f", t / hz / s * 100 }')
  cpu_sup=$(awk -v t=$(( sup1 - sup0 )) -v hz="$HZ" -v s="$seconds" 'BEGIN { printf "%.1f", t / hz / s * 100 }')
  pss_shard=$(awk -v k="$pss" -v n="$n" 'BEGIN { printf "%.1f", k / 1024 / n }')
  ratio=$(awk -v a="$READY" -v b="$least" 'BEGIN { printf "%.2f", a / b }')
  judge() { if ((n == 1024)); then at_most "$1" "$2"; fi; }
  row "$n shards: launch at max_concurrency 16 (s)" "$READY (${ratio}x)" "<= 1.10x the limits ($least)" "$(judge "$ratio" 1.10)"
  row "$n shards idle: CPU, all processes (% core)" "$cpu_all" "<= 30 at 1024" "$(judge "$cpu_all" 30)"
  row "$n shards idle: CPU, supervisor (% core)" "$cpu_sup" "<= 5 at 1024" "$(judge "$cpu_sup" 5)"
  row "$n shards idle: PSS per shard (MiB)" "$pss_shard" "<= 5 at 1024" "$(judge "$pss_shard" 5)"
  row "$n shards: SIGSTOPped worker killed after (ms)" "$hang_ms" "<= 1000 + 500 abort grace" "$(judge "$hang_ms" 1700)"
  row "$n shards: kill -9 to RESUMED p50 (ms)" "$kill_p50" "<= 250" "$(judge "$kill_p50" 250)"
  row "$n shards, $load_rate events/s: supervisor us/event" "$per_event" "flat: <= 2x $per_event_base at ${SCALE_SHARDS%% *}" \
    "$(judge "$per_event" "$(awk -v b="$per_event_base" 'BEGIN { print 2 * b }')")"
  row "$n shards, under load: /metrics scrape p50 (ms)" "$scrape_ms" "< 1000 (the workers' deadline)" "$(judge "$scrape_ms" 999)"
done
fi

# --- webhook delivery beside websocket sessions: a burst of 20000 through a 4-worker cluster, each way, same run ---
# Webhook: every event a signed POST (32 at once, as the emulator's platform sends them), verified, written to
# cluster.sqlite (one commit per batch) and acknowledged, handed to its worker over IPC, replied to. Beside the rate
# (the emulator's signing shares the two cores), the supervisor's CPU per event, each way.
if want webhook; then
# webhook_bursts LABEL SESSIONS: ROUNDS bursts through the cluster running now; the supervisor's ticks go to
# $OUT/LABEL.ticks.
webhook_bursts() {
  for _ in $(seq 1 "$ROUNDS"); do
    local t0; t0=$(cpu_ticks "$CLUSTER")
    "$BENCH" e2e --url "$EMU_URL" --count 20000 --replies 20000 --sessions "$2" --label "$1" | tee -a "$OUT/webhook.txt" >&2
    echo $(( $(cpu_ticks "$CLUSTER") - t0 )) >>"$OUT/$1.ticks"
  done
}
per_event_us() { median <"$OUT/$1.ticks" | awk -v hz="$HZ" '{ printf "%.0f", $1 / hz * 1e6 / 20000 }'; }
start_emulator scripts/bench/e2e-emulator.json
dir=$(cluster_dir 4); start_cluster "$dir"
webhook_bursts cluster-websocket 4
stop_cluster
stop_emulator
sed 's#"emulator": {#"emulator": {"delivery": "webhook",#' scripts/bench/e2e-emulator.json >"$OUT/webhook-emulator.json"
start_emulator "$OUT/webhook-emulator.json"
dir=$(cluster_dir 4 '"webhook": {"listen": "127.0.0.1:0", "queueLimit": 100000, "streamLimit": 100000},')
sed -i 's#"embedded": false#"embedded": false, "mode": "webhook"#' "$dir/cluster.json"
start_cluster "$dir"
ingress=$(sed -n 's/^webhook listening on //p' "$dir/launch.out")
"$BENCH" admin --url "$EMU_URL" --path /emulator/webhook --body "{\"url\": \"$ingress/qqbot/callback\"}" >/dev/null
webhook_bursts cluster-webhook 0
stop_cluster
stop_emulator
ws=$(awk '$1 == "e2e.cluster-websocket.rate" { print $2 }' "$OUT/webhook.txt" | median)
wh=$(awk '$1 == "e2e.cluster-webhook.rate" { print $2 }' "$OUT/webhook.txt" | median)
row "4 workers, burst of 20000: websocket events/s" "$ws" "" ""
row "4 workers, burst of 20000: webhook events/s" "$wh ($(awk -v a="$wh" -v b="$ws" 'BEGIN { printf "%.2f", a / b }')x)" "(beside websocket, same run)" ""
row "  supervisor CPU per event (us), ws / webhook" "$(per_event_us cluster-websocket) / $(per_event_us cluster-webhook)" "(webhook: verify, write, route)" ""
fi

# --- shared state: the user cache and the REST budget ---
if want shared; then
"$BENCH" cache | tee "$OUT/cache.txt" >&2
hit=$(value cache.hit.ns "$OUT/cache.txt")
miss=$(value cache.miss.rate "$OUT/cache.txt"); miss_c=$(value cache.miss.c.rate "$OUT/cache.txt")
up=$(value cache.upsert.rate "$OUT/cache.txt"); up_c=$(value cache.upsert.c.rate "$OUT/cache.txt")
miss_ratio=$(awk -v a="$miss" -v b="$miss_c" 'BEGIN { printf "%.2f", a / b }')
up_ratio=$(awk -v a="$up" -v b="$up_c" 'BEGIN { printf "%.2f", a / b }')
row "cache hit (LRU), ns per lookup" "$hit" "" ""
row "cache miss (SQLite point read), lookups/s" "$miss (${miss_ratio}x C)" ">= 0.5x C ($miss_c)" "$(awk -v r="$miss_ratio" 'BEGIN { print (r >= 0.5) ? "ok" : "MISS" }')"
row "batched upserts, rows/s (with change check)" "$up (${up_ratio}x C)" "(C plain upsert: $up_c)" ""
"$BENCH" budget | tee "$OUT/budget.txt" >&2
row "budget grant without a lease p50 / p99 (us)" "$(value budget.grant.p50 "$OUT/budget.txt") / $(value budget.grant.p99 "$OUT/budget.txt")" "(one IPC round trip)" ""
row "budget permits granted/s, 4 workers" "$(value budget.permits.rate "$OUT/budget.txt")" "(leases of 4)" ""
fi

# --- several hosts sharing PostgreSQL (a server of the bench's own): startup against the identify limits, the
# store's transactions per event, a rename reaching every host's workers beside its own host's, takeover after
# kill -9 of a supervisor against leaseTTL + renewInterval, a rescale across the hosts against the identify limits ---
if want hosts; then
eval "$(bash scripts/postgres.sh start)"
"$BENCH" hosts --botcluster "$ROOT/$BIN" --postgres "$BOTCLUSTER_TEST_POSTGRES" --kills 5 | tee "$OUT/hosts.txt" >&2 || true
bash scripts/postgres.sh stop "$BOTCLUSTER_TEST_POSTGRES_DIR"
startup=$(value hosts.startup "$OUT/hosts.txt"); least=$(value hosts.startup.limit "$OUT/hosts.txt")
row "hosts: 12 shards on 3 hosts ready (s)" "$startup" "the limits + a round: $least" ""
row "hosts: store transactions per event" "$(value hosts.store.transactions_per_event "$OUT/hosts.txt")" "(60 msg/s; claim + record)" ""
row "hosts: a rename served on every host, p50 (ms)" "$(value hosts.users.across.p50 "$OUT/hosts.txt")" "its own host: $(value hosts.users.local.p50 "$OUT/hosts.txt")" ""
row "hosts: takeover after kill -9, p50 / max (ms)" "$(value hosts.takeover.p50 "$OUT/hosts.txt") / $(value hosts.takeover.max "$OUT/hosts.txt")" "expiry $(value hosts.takeover.bound "$OUT/hosts.txt") + a worker's start" ""
row "hosts: rescale 12 -> 16 shards across 3 hosts (s)" "$(value hosts.rescale.took "$OUT/hosts.txt")" "the limits + two rounds: $(value hosts.rescale.limit "$OUT/hosts.txt")" ""
fi

echo
printf '| %-44s | %-22s | %-26s | %-4s |\n' "figure (release, median of $ROUNDS)" "measured" "goal / peer" ""
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..28})" "------"
printf '%s\n' "${ROWS[@]}"
