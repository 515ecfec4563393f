#!/usr/bin/env bash
# Side by side: nats-server (async-nats client) against pushwire, plaintext and TLS,
# on loopback, with the same workload driver and the same measurement (see
# io-tokio/src/cli/bench.rs and benches/src/bin/compare.rs).
#
# Each workload runs ROUNDS times, alternating NATS / pushwire plaintext / pushwire
# TLS, and the table shows the median delivered msg/s of each with the ratios to NATS.
# Every run gets a fresh server process (a pushwire server keeps the sessions of
# clients that left for its session timeout, and they would still receive the next
# run's publications); the clients of a run (publishers and subscribers) share one
# process, as `nats bench` does.
#
# The workloads (WORKLOADS, ";"-separated, each "SIZE SUBS [PUBS [GROUPS]]"; PUBS
# "room" for a chat room):
#
#   16 1, 16 10, 16 100, 1024 10   1 publisher, S subscribers, one group (the first
#                                  four rows, as before)
#   16 1000 8 200                  "deployment": 8 publishers, 1,000 subscribers spread
#                                  over 200 groups (5 each), 1,008 connections; message
#                                  k goes from publisher k % 8 to group k % 200 + 1, so
#                                  each publisher has 25 groups of its own
#   16 100 room 1                  a chat room: 100 members in one group, each publishes
#                                  and subscribes (echo off: 99 deliveries a message)
#
# Both drivers take the same flags for these: `--pubs P` (alias `--publishers`),
# `--groups G` (subscriber i in group i % G + 1) and `--room` (every subscriber also
# publishes to its group; NATS members connect with no_echo). See
# `pushwire bench --help` and `compare --help`. Every row is measured the same way:
# delivered msg/s = deliveries at all subscribers / (last delivery - first publish).
# pushwire serve gets the groups (`--group`) when a row has more than its default 3,
# and room for the connections (`--max-connections-per-address`, default 1,000).
#
#   bash benches/nats_compare.sh              # 3 rounds, 200,000 messages (~9 min here)
#   ROUNDS=5 MSGS=500000 bash benches/nats_compare.sh
#   WORKLOADS="16 1000 8 200;16 100 room 1" ROUNDS=1 bash benches/nats_compare.sh
#
# Full outputs go to $LOG_DIR (default target/nats_compare). The client process holds
# one socket per connection: `ulimit -n` must exceed the largest row's connections.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-200000}
LOG_DIR=${LOG_DIR:-target/nats_compare}
# "SIZE SUBS [PUBS [GROUPS]]" of each workload; PUBS "room": a chat room.
IFS=';' read -ra WORKLOADS <<<"${WORKLOADS:-16 1;16 10;16 100;1024 10;16 1000 8 200;16 100 room 1}"

command -v nats-server >/dev/null || (apt-get update && apt-get install -y nats-server)

cargo build --release --locked -p pushwire-benches --bin compare
cargo build --release --locked -p pushwire-tokio --bin pushwire
TARGET=${CARGO_TARGET_DIR:-target}
COMPARE=$TARGET/release/compare
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

# Starts `pushwire serve NAME FLAGS…` in the background (in this shell, so the trap
# can stop it).
start_pushwire() {
  local name=$1
  shift
  # Removed first: the redirection below happens in the background child, later.
  rm -f "$LOG_DIR/serve-$name.out"
  RUST_LOG=warn "$PUSHWIRE" serve --listen 127.0.0.1:0 --max-connections-per-address 100000 "$@" \
    >"$LOG_DIR/serve-$name.out" 2>"$LOG_DIR/serve-$name.err" &
  PIDS+=($!)
}

# The address `pushwire serve NAME` printed (waits at most 10 s).
address_of() {
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$LOG_DIR/serve-$1.out" 2>/dev/null; then
      sed -n 's/^listening on //p' "$LOG_DIR/serve-$1.out"
      return 0
    fi
    sleep 0.1
  done
  echo "pushwire serve ($1) did not start; see $LOG_DIR/serve-$1.err" >&2
  return 1
}

# Starts a fresh server for SYSTEM (nats, plain or tls) with GROUPS groups and sets
# SERVER_PID and SERVER_ADDR.
start_server() { # system groups
  case $1 in
    nats)
      local port
      port=$(free_port)
      nats-server -a 127.0.0.1 -p "$port" >>"$LOG_DIR/nats-server.log" 2>&1 &
      SERVER_PID=$!
      wait_for_port "$port"
      SERVER_ADDR="127.0.0.1:$port"
      ;;
    plain | tls)
      local flags=()
      [ "$1" = plain ] && flags=(--plaintext)
      # More than the 3 default groups: register 1..=GROUPS.
      if [ "$2" -gt 3 ]; then
        for g in $(seq "$2"); do
          flags+=(--group "$g=bench $g")
        done
      fi
      start_pushwire "$1" "${flags[@]}"
      SERVER_PID=${PIDS[-1]}
      SERVER_ADDR=$(address_of "$1")
      ;;
  esac
  PIDS+=("$SERVER_PID")
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# The delivered rate from a run's `result` line.
delivered_rate() {
  sed -n 's/^result .*delivered_rate=\([0-9]*\).*/\1/p'
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

run_one() { # system size subs pubs groups round; sets RATE to the delivered rate, 0 if the run failed
  local log="$LOG_DIR/$1-$2B-$3sub-$4pub-$5group-round$6.txt"
  local common=(--msgs "$MSGS" --size "$2" --subs "$3" --groups "$5" --quiet)
  if [ "$4" = room ]; then
    common+=(--room)
  else
    common+=(--pubs "$4")
  fi
  local status=0
  start_server "$1" "$5"
  case $1 in
    nats) timeout 600 "$COMPARE" --server "$SERVER_ADDR" "${common[@]}" >"$log" || status=$? ;;
    plain) timeout 600 "$PUSHWIRE" bench --plaintext --server "$SERVER_ADDR" "${common[@]}" >"$log" || status=$? ;;
    tls) timeout 600 "$PUSHWIRE" bench --tls --server "$SERVER_ADDR" "${common[@]}" >"$log" || status=$? ;;
  esac
  stop_server
  if [ "$status" -ne 0 ]; then
    echo "  FAILED ($status): $1 $2 B x $3 sub ($4 pub, $5 groups), round $6; see $log" >&2
    RATE=0
    return
  fi
  RATE=$(delivered_rate <"$log")
}

echo "nats-server $(nats-server --version | sed 's/.*v//') and pushwire serve (plaintext, TLS), a fresh server per run"
echo "$ROUNDS rounds of $MSGS messages per workload; logs in $LOG_DIR"
declare -A RESULT
ROWS=()
for workload in "${WORKLOADS[@]}"; do
  read -r size subs pubs groups <<<"$workload"
  pubs=${pubs:-1}
  groups=${groups:-1}
  for system in nats plain tls; do
    RESULT[$system]=""
  done
  for round in $(seq "$ROUNDS"); do
    for system in nats plain tls; do
      run_one "$system" "$size" "$subs" "$pubs" "$groups" "$round"
      rate=$RATE
      echo "  $size B x $subs sub ($pubs pub, $groups groups), round $round, $system: $rate msg/s" >&2
      RESULT[$system]+="$rate"$'\n'
    done
  done
  nats=$(printf '%s' "${RESULT[nats]}" | median)
  plain=$(printf '%s' "${RESULT[plain]}" | median)
  tls=$(printf '%s' "${RESULT[tls]}" | median)
  ROWS+=("$size $subs $pubs $groups $nats $plain $tls")
done

echo
printf '| %-40s | %14s | %18s | %10s | %14s | %10s |\n' \
  "workload (1 pub unless said)" "NATS msg/s" "pushwire plain" "plain/NATS" "pushwire TLS" "TLS/NATS"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------------------" "----------------:" \
  "--------------------:" "-----------:" "----------------:" "-----------:"
for row in "${ROWS[@]}"; do
  read -r size subs pubs groups nats plain tls <<<"$row"
  awk -v size="$size" -v subs="$subs" -v pubs="$pubs" -v groups="$groups" \
    -v nats="$nats" -v plain="$plain" -v tls="$tls" 'BEGIN {
    if (pubs == "room") {
      name = size " B room of " subs ", all publish" (groups == 1 ? "" : " (" groups " rooms)")
    } else {
      name = size " B"
      if (pubs != 1) name = name ", " pubs " pubs"
      name = name " to " subs " sub" (subs == 1 ? "" : "s")
      if (groups != 1) name = name " in " groups " groups"
    }
    printf "| %-40s | %14d | %18d | %9.2fx | %14d | %9.2fx |\n",
      name, nats, plain, (nats > 0 ? plain / nats : 0), tls, (nats > 0 ? tls / nats : 0)
  }'
done
