#!/usr/bin/env bash
# The cluster's cost (issue 14), one run, same workload, same machine:
#   alone     one `pushwire serve` without --cluster, publisher and subscribers on it;
#   1 node    one `serve --cluster` (its records go to Redis, nobody reads them);
#   3 nodes   three `serve --cluster`, the publisher on n1, the subscribers spread
#             over n2 and n3 (`bench --sub-servers`): every delivery crosses Redis.
# For each: the peak delivered msg/s (publishers as fast as the window lets them),
# publish→deliver p50/p99 at a fixed rate well under every peak (RATE msg/s for 3 s;
# latency at the peak is queueing), and Redis' own CPU per published message (its
# /proc ticks and INFO commandstats).
#
#   bash benches/cluster.sh                 # release build, PAIRS=3 runs of each
#   MSGS=200000 SIZE=16 SUBS=10 bash benches/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MSGS=${MSGS:-100000}
SIZE=${SIZE:-16}
SUBS=${SUBS:-10}
RUNS=${RUNS:-3}
RATE=${RATE:-20000}
BIN=${BIN:-target/release/pushwire}
REDIS=${REDIS:-$(command -v redis-server)}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
[ -x "$BIN" ] || cargo build --release -q -p pushwire-tokio --bin pushwire
CLK_TCK=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_redis() {
  REDIS_PORT=$(free_port)
  "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "redis-server did not start" >&2; exit 1
}

# start_node NAME [cluster flags…]: sets ADDR_<NAME>.
start_node() {
  local name=$1; shift
  local out="$LOG_DIR/serve-$name.out"
  RUST_LOG=warn "$BIN" serve --plaintext --listen 127.0.0.1:0 --max-connections 100000 \
    --max-connections-per-address 100000 "$@" >"$out" 2>"$LOG_DIR/serve-$name.err" &
  PIDS+=("$!")
  local addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$out")
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { echo "node $name did not start" >&2; cat "$LOG_DIR/serve-$name.err" >&2; exit 1; }
  printf -v "ADDR_$name" '%s' "$addr"
}

stop_all() { cleanup; PIDS=(); sleep 0.3; }

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run_case LABEL MODE (peak or rate) → prints one line of figures.
run_case() {
  local label=$1 mode=$2 bench_flags=() load=(--msgs "$MSGS")
  [ "$mode" = rate ] && load=(--msgs $((RATE * 3)) --rate "$RATE")
  case $label in
    alone) start_node a; bench_flags=(--server "$ADDR_a") ;;
    1node)
      start_redis
      start_node a --cluster "redis://127.0.0.1:$REDIS_PORT" --node-id a
      bench_flags=(--server "$ADDR_a") ;;
    3nodes)
      start_redis
      for n in a b c; do start_node $n --cluster "redis://127.0.0.1:$REDIS_PORT" --node-id $n; done
      sleep 1.5 # discovery
      bench_flags=(--server "$ADDR_a" --sub-servers "$ADDR_b,$ADDR_c") ;;
  esac
  local redis_before=0
  if [ "$label" != alone ]; then
    redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    redis_before=$(ticks "$REDIS_PID")
  fi
  "$BIN" bench --plaintext "${bench_flags[@]}" "${load[@]}" --size "$SIZE" --subs "$SUBS" \
    --quiet >"$LOG_DIR/bench-$label-$mode.txt"
  local result
  result=$(grep '^result' "$LOG_DIR/bench-$label-$mode.txt")
  local msgs=$MSGS
  [ "$mode" = rate ] && msgs=$((RATE * 3))
  local delivered expected
  delivered=$(sed -n 's/.* delivered=\([0-9]*\).*/\1/p' <<<"$result")
  expected=$(sed -n 's/.* expected=\([0-9]*\).*/\1/p' <<<"$result")
  if [ "$delivered" != "$expected" ]; then
    echo "$label $mode: delivered $delivered of $expected" >&2
    exit 1
  fi
  local rate p50 p99
  rate=$(sed -n 's/.*delivered_rate=\([0-9]*\).*/\1/p' <<<"$result")
  p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$result")
  p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$result")
  local redis_us="-" evalsha="-" xread="-"
  if [ "$label" != alone ]; then
    sleep 0.5 # let the readers finish their last XREAD
    local redis_after
    redis_after=$(ticks "$REDIS_PID")
    redis_us=$(python3 -c "print(f'{($redis_after-$redis_before)*1e6/$CLK_TCK/$msgs:.2f}')")
    local stats
    stats=$(redis-cli -p "$REDIS_PORT" info commandstats)
    evalsha=$(sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\).*/\1 \2/p' <<<"$stats" | tr -d '\r')
    xread=$(sed -n 's/^cmdstat_xread:calls=\([0-9]*\),usec=\([0-9]*\).*/\1 \2/p' <<<"$stats" | tr -d '\r')
  fi
  printf '%-7s %-4s delivered %9s msg/s  p50 %9s us  p99 %9s us  redis cpu %6s us/msg  evalsha(calls usec) %-14s xread(calls usec) %s\n' \
    "$label" "$mode" "$rate" "$p50" "$p99" "$redis_us" "${evalsha:--}" "${xread:--}"
  stop_all
}

echo "cluster cost: $MSGS × $SIZE B → $SUBS subscribers, plaintext, $(nproc) cores, logs in $LOG_DIR"
for run in $(seq "$RUNS"); do
  for label in alone 1node 3nodes; do
    for mode in peak rate; do
      run_case "$label" "$mode"
    done
  done
done
