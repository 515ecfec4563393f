#!/usr/bin/env bash
# A/B of two `pushwire` server binaries under one load generator: for each workload,
# PAIRS pairs of runs, A then B, each against a fresh `serve --plaintext` (or TLS with
# MODE=tls), all driven by the same `pushwire bench` client binary. Prints every
# pair's delivered msg/s and B/A ratio and the median ratio: pairing runs side by side
# cancels most of a shared machine's drift, which a comparison of two separate
# `nats_compare.sh` runs does not.
#
#   bash benches/server_ab.sh OLD/pushwire NEW/pushwire
#   PAIRS=10 MSGS=400000 MODE=tls CLIENT=NEW/pushwire bash benches/server_ab.sh A B
#
# Build a binary of another commit with
#   git worktree add /tmp/old REV && cargo build --release -p pushwire-tokio \
#     --bin pushwire --manifest-path /tmp/old/Cargo.toml
set -euo pipefail

A=${1:?usage: server_ab.sh SERVER_A SERVER_B}
B=${2:?usage: server_ab.sh SERVER_A SERVER_B}
CLIENT=${CLIENT:-$B}
PAIRS=${PAIRS:-8}
MSGS=${MSGS:-200000}
MODE=${MODE:-plain}
# "size subscribers" of each workload (1 publisher, one group).
WORKLOADS=${WORKLOADS:-"16:1 16:10 16:100 1024:10"}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}

case $MODE in
  plain) serve_flags=(--plaintext) bench_flags=(--plaintext) ;;
  tls) serve_flags=() bench_flags=(--tls) ;;
  *) echo "MODE is plain or tls" >&2; exit 2 ;;
esac

SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

# Runs one server binary and the bench against it; prints the delivered rate and the
# server's CPU clock ticks.
run_one() { # binary size subs tag
  local out="$LOG_DIR/serve-$4.out"
  RUST_LOG=warn "$1" serve --listen 127.0.0.1:0 "${serve_flags[@]}" >"$out" 2>/dev/null &
  SERVER_PID=$!
  local addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$out")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "server $1 did not start" >&2; exit 1; }
  "$CLIENT" bench "${bench_flags[@]}" --server "$addr" --msgs "$MSGS" --size "$2" \
    --subs "$3" --quiet >"$LOG_DIR/bench-$4.txt"
  local ticks
  ticks=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  echo "$(sed -n 's/^result .*delivered_rate=\([0-9]*\).*/\1/p' "$LOG_DIR/bench-$4.txt") $ticks"
}

echo "A: $A"
echo "B: $B"
echo "client: $CLIENT; $MODE; $PAIRS pairs of $MSGS messages; logs in $LOG_DIR"
hz=$(getconf CLK_TCK)
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for workload in $WORKLOADS; do
  size=${workload%%:*}
  subs=${workload##*:}
  deliveries=$((MSGS * subs))
  rates=()
  costs=()
  for pair in $(seq "$PAIRS"); do
    read -r a_rate a_ticks < <(run_one "$A" "$size" "$subs" "a-$size-$subs-$pair")
    read -r b_rate b_ticks < <(run_one "$B" "$size" "$subs" "b-$size-$subs-$pair")
    line=$(awk -v ar="$a_rate" -v br="$b_rate" -v at="$a_ticks" -v bt="$b_ticks" \
      -v hz="$hz" -v d="$deliveries" 'BEGIN {
        ac = at / hz / d * 1e6; bc = bt / hz / d * 1e6
        printf "%.3f %.3f %.3f %.3f", br / ar, (ac > 0 ? bc / ac : 0), ac, bc }')
    read -r rate_ratio cost_ratio a_cost b_cost <<<"$line"
    rates+=("$rate_ratio")
    costs+=("$cost_ratio")
    echo "  $size B x $subs sub, pair $pair: A $a_rate msg/s ${a_cost} CPU s/M, B $b_rate msg/s ${b_cost} CPU s/M; rate B/A $rate_ratio, cost B/A $cost_ratio" >&2
  done
  echo "$size B to $subs sub: delivered rate B/A median $(printf '%s\n' "${rates[@]}" | median), server CPU per delivery B/A median $(printf '%s\n' "${costs[@]}" | median) over $PAIRS pairs"
done
