#!/usr/bin/env bash
# Publish-to-deliver latency at half the peak rate, plaintext and TLS, on loopback.
#
# For each transport and workload: measure the peak publish rate (median of ROUNDS
# unpaced runs of `pushwire bench`), then publish at half of it for about SECONDS
# seconds with `--rate` and report p50 / p99 / p99.9 / max. Each run gets a fresh
# `pushwire serve` process, as in nats_compare.sh (a server keeps the sessions of
# clients that left for a while, and they would still receive the next run's
# publications).
#
# Each row then runs NATS (nats-server, the `compare` driver: the same workload
# driver, pacing and histogram) at the same rate and the same number of messages, on
# a fresh nats-server, and prints its p99 and the ratio pushwire p99 / NATS p99 (under
# 1: pushwire's tail is shorter). NATS runs plaintext in both rows of a workload; only
# the rate differs.
#
#   bash benches/latency_at_half_peak.sh
#   ROUNDS=5 SECONDS_AT_RATE=20 bash benches/latency_at_half_peak.sh
#   WORKER_THREADS=1 bash benches/latency_at_half_peak.sh
#
# WORKER_THREADS sets tokio's worker threads (TOKIO_WORKER_THREADS) of both the server
# and the load generator, peak and paced runs alike (and of `compare`; nats-server, a
# Go program, keeps its own); by default each process has one per core, so on a
# 2-core machine four busy threads share two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_AT_RATE=${SECONDS_AT_RATE:-10}
LOG_DIR=${LOG_DIR:-target/latency}
if [ -n "${WORKER_THREADS:-}" ]; then
  export TOKIO_WORKER_THREADS=$WORKER_THREADS
fi
# "size subscribers" of each workload (1 publisher, one group).
WORKLOADS=("16 1" "16 10")

command -v nats-server >/dev/null || (apt-get update && apt-get install -y nats-server)

cargo build --release --locked -p pushwire-tokio --bin pushwire
cargo build --release --locked -p pushwire-benches --bin compare
TARGET=${CARGO_TARGET_DIR:-target}
PUSHWIRE=$TARGET/release/pushwire
COMPARE=$TARGET/release/compare
mkdir -p "$LOG_DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts a fresh `pushwire serve` for TRANSPORT (plaintext or tls); sets SERVER_PID
# and SERVER_ADDR.
start_server() {
  local out="$LOG_DIR/serve-$1.out"
  local flags=()
  [ "$1" = plaintext ] && flags=(--plaintext)
  rm -f "$out"
  RUST_LOG=warn "$PUSHWIRE" serve --listen 127.0.0.1:0 "${flags[@]}" \
    >"$out" 2>>"$LOG_DIR/serve-$1.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$out" 2>/dev/null; then
      SERVER_ADDR=$(sed -n 's/^listening on //p' "$out")
      return 0
    fi
    sleep 0.1
  done
  echo "pushwire serve ($1) did not start" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# `pushwire bench` against a fresh server: transport, log file, bench flags…
bench() {
  local transport=$1 log=$2
  shift 2
  start_server "$transport"
  timeout 600 "$PUSHWIRE" bench "--$transport" --server "$SERVER_ADDR" "$@" --quiet >"$log"
  stop_server
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until something accepts connections on 127.0.0.1:$1.
wait_for_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# `compare` against a fresh nats-server: log file, workload flags…
bench_nats() {
  local log=$1 port pid
  shift
  port=$(free_port)
  nats-server -a 127.0.0.1 -p "$port" >>"$LOG_DIR/nats-server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_for_port "$port"
  timeout 600 "$COMPARE" --server "127.0.0.1:$port" "$@" --quiet >"$log"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

field() { # key, from the result line on stdin
  grep '^result ' | tr ' ' '\n' | sed -n "s/^$1=//p"
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}


echo "tokio worker threads per process: ${WORKER_THREADS:-one per core (default)}"
echo
printf '| %-18s | %-9s | %14s | %12s | %9s | %9s | %9s | %9s | %12s | %10s |\n' \
  "workload (1 pub)" transport "peak pub/s" "rate used" "p50 us" "p99 us" "p99.9 us" "max us" \
  "NATS p99 us" "p99 / NATS"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "--------------------" "-----------" \
  "---------------:" "-------------:" "----------:" "----------:" "----------:" "----------:" \
  "-------------:" "-----------:"
for workload in "${WORKLOADS[@]}"; do
  read -r size subs <<<"$workload"
  for transport in plaintext tls; do
    peaks=""
    for round in $(seq "$ROUNDS"); do
      log="$LOG_DIR/peak-$transport-${size}B-${subs}sub-$round.txt"
      bench "$transport" "$log" --msgs 200000 --size "$size" --subs "$subs"
      peaks+="$(field publish_rate <"$log")"$'\n'
    done
    peak=$(printf '%s' "$peaks" | median)
    rate=$(awk -v p="$peak" 'BEGIN { printf "%d", p / 2 }')
    msgs=$((rate * SECONDS_AT_RATE))
    log="$LOG_DIR/half-$transport-${size}B-${subs}sub.txt"
    bench "$transport" "$log" --msgs "$msgs" --size "$size" --subs "$subs" --rate "$rate"
    result=$(grep '^result ' "$log")
    nats_log="$LOG_DIR/half-nats-at-$transport-rate-${size}B-${subs}sub.txt"
    bench_nats "$nats_log" --msgs "$msgs" --size "$size" --subs "$subs" --rate "$rate"
    nats_p99=$(grep '^result ' "$nats_log" | field p99_us)
    p99=$(field p99_us <<<"$result")
    printf '| %-18s | %-9s | %14s | %12s | %9s | %9s | %9s | %9s | %12s | %10s |\n' \
      "$size B to $subs sub" "$transport" "$peak" "$rate" \
      "$(field p50_us <<<"$result")" "$p99" \
      "$(field p999_us <<<"$result")" "$(field max_us <<<"$result")" \
      "$nats_p99" "$(awk -v a="$p99" -v b="$nats_p99" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  done
done
