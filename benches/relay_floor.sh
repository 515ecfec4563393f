#!/usr/bin/env bash
# The physical floor: pushwire against the fastest relay there is, on loopback.
#
# `relay_floor` (benches/src/bin/relay_floor.rs) is a few dozen lines of std Rust:
# one thread, blocking plaintext TCP, one publisher socket and N subscriber sockets;
# it reads the publisher's length-prefixed frames in chunks of up to 256 KiB and
# writes each chunk's whole frames to every subscriber with one write each. No
# protocol, no sessions, no copies beyond the kernel's. `relay_bench` drives it with
# `pushwire bench`'s own workload driver (same payload timestamps, flow-control
# window, delivered-rate definition and report); its frames are as long on the wire
# as the Published frame pushwire delivers for the same payload: 60 B for 16 B (a
# 4-byte length, the payload, zeros). The relay forwards frames unchanged, so the
# publisher sends 60 B frames too, where pushwire's Publish frame is 35 B; the sizes
# are printed with the table. The relay runs are short (tens of ms at 200,000
# messages), so its figures are noisier than pushwire's; a larger MSGS steadies them.
#
# For each workload (16 B to 1, 10 and 100 subscribers, MSGS messages, as in
# nats_compare.sh) the script runs ROUNDS rounds, alternating relay / `pushwire
# serve --plaintext` with `pushwire bench --plaintext`, a fresh server process per run,
# and prints the median delivered msg/s of each and pushwire as a fraction of the
# floor.
#
#   bash benches/relay_floor.sh               # 3 rounds, 200,000 messages
#   ROUNDS=1 MSGS=50000 bash benches/relay_floor.sh
#   WORKLOADS="16 10" bash benches/relay_floor.sh
#
# Full outputs go to $LOG_DIR (default target/relay_floor).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-200000}
LOG_DIR=${LOG_DIR:-target/relay_floor}
# "SIZE SUBS" of each workload (1 publisher, one group).
IFS=';' read -ra WORKLOADS <<<"${WORKLOADS:-16 1;16 10;16 100}"

cargo build --release --locked -p pushwire-benches --bin relay_floor --bin relay_bench
cargo build --release --locked -p pushwire-tokio --bin pushwire
TARGET=${CARGO_TARGET_DIR:-target}
RELAY=$TARGET/release/relay_floor
RELAY_BENCH=$TARGET/release/relay_bench
PUSHWIRE=$TARGET/release/pushwire

mkdir -p "$LOG_DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Starts SYSTEM's server (relay or pushwire) on a free loopback port, in this shell so
# the trap can stop it; sets SERVER_PID and SERVER_ADDR from its "listening on" line.
start_server() {
  local out="$LOG_DIR/server-$1.out"
  rm -f "$out"
  case $1 in
    relay) "$RELAY" 127.0.0.1:0 >"$out" 2>>"$LOG_DIR/server-$1.err" & ;;
    pushwire)
      RUST_LOG=warn "$PUSHWIRE" serve --listen 127.0.0.1:0 --plaintext \
        >"$out" 2>>"$LOG_DIR/server-$1.err" &
      ;;
  esac
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$out" 2>/dev/null; then
      SERVER_ADDR=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$out")
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not start; see $LOG_DIR/server-$1.err" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

delivered_rate() {
  sed -n 's/^result .*delivered_rate=\([0-9]*\).*/\1/p'
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

run_one() { # system size subs round; sets RATE to the delivered rate, 0 if the run failed
  local log="$LOG_DIR/$1-$2B-$3sub-round$4.txt"
  local common=(--msgs "$MSGS" --size "$2" --subs "$3" --quiet --timeout 120)
  local status=0
  start_server "$1"
  case $1 in
    relay) timeout 600 "$RELAY_BENCH" --server "$SERVER_ADDR" "${common[@]}" >"$log" || status=$? ;;
    pushwire) timeout 600 "$PUSHWIRE" bench --plaintext --server "$SERVER_ADDR" "${common[@]}" >"$log" || status=$? ;;
  esac
  stop_server
  if [ "$status" -ne 0 ]; then
    echo "  FAILED ($status): $1 $2 B x $3 sub, round $4; see $log" >&2
    RATE=0
    return
  fi
  RATE=$(delivered_rate <"$log")
}

echo "relay_floor (1 thread, blocking std I/O) and pushwire serve --plaintext, a fresh server per run"
echo "$ROUNDS rounds of $MSGS messages per workload; logs in $LOG_DIR"
declare -A RESULT
ROWS=()
FRAMES=""
for workload in "${WORKLOADS[@]}"; do
  read -r size subs <<<"$workload"
  RESULT[relay]=""
  RESULT[pushwire]=""
  for round in $(seq "$ROUNDS"); do
    for system in relay pushwire; do
      run_one "$system" "$size" "$subs" "$round"
      echo "  $size B x $subs sub, round $round, $system: $RATE msg/s" >&2
      RESULT[$system]+="$RATE"$'\n'
    done
  done
  frames=$(sed -n 's/.*; frames of \(.*\)$/\1/p' "$LOG_DIR/relay-${size}B-${subs}sub-round1.txt" || true)
  FRAMES+="  $size B to $subs sub: frames of ${frames:-?}"$'\n'
  relay=$(printf '%s' "${RESULT[relay]}" | median)
  pushwire=$(printf '%s' "${RESULT[pushwire]}" | median)
  ROWS+=("$size $subs $relay $pushwire")
done

echo
echo "Relay frame sizes on the wire:"
printf '%s' "$FRAMES"
echo
printf '| %-22s | %16s | %18s | %16s |\n' \
  "workload (1 pub)" "relay floor msg/s" "pushwire plain" "pushwire / floor"
printf '|%s|%s|%s|%s|\n' "------------------------" "------------------:" \
  "--------------------:" "------------------:"
for row in "${ROWS[@]}"; do
  read -r size subs relay pushwire <<<"$row"
  awk -v size="$size" -v subs="$subs" -v relay="$relay" -v pushwire="$pushwire" 'BEGIN {
    printf "| %-22s | %16d | %18d | %16.2f |\n",
      size " B to " subs " sub" (subs == 1 ? "" : "s"), relay, pushwire,
      (relay > 0 ? pushwire / relay : 0)
  }'
done
