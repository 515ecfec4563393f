#!/usr/bin/env bash
# The cluster demo: a Redis this script starts, three `pushwire serve --cluster` nodes
# (TLS, development certificates) and clients on each, printing what every client sees:
#   1. bob (on n2) and carol (on n3) join group 1; alice (on n1) publishes to it:
#      both get it, once, with alice as the sender;
#   2. alice sends dave a user message: dave has one session on n2 and one on n3,
#      both get it and alice is told it reached 2 connections;
#   3. n3 is killed: after the liveness timeout bob sees carol leave group 1.
# Exits 0 when every step's events arrived.
#
#   bash io-tokio/demo/cluster.sh        # builds target/debug/pushwire if needed
#   PUSHWIRE_BIN=target/release/pushwire bash io-tokio/demo/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${PUSHWIRE_BIN:-target/debug/pushwire}
[ -x "$BIN" ] || cargo build -q -p pushwire-tokio --bin pushwire
REDIS=${PUSHWIRE_REDIS_SERVER:-$(command -v redis-server || true)}
[ -n "$REDIS" ] || { echo "needs redis-server (Debian: apt-get install redis-server)" >&2; exit 2; }
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # FILE PATTERN SECONDS
  for _ in $(seq $(($3 * 20))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for \"$2\" in $1:" >&2; cat "$1" >&2; return 1
}

REDIS_PORT=$(free_port)
"$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$DIR/redis.log" 2>&1 &
PIDS+=("$!")
echo "redis    | redis-server on 127.0.0.1:$REDIS_PORT (no persistence)"

declare -A ADDR PID
for n in n1 n2 n3; do
  RUST_LOG=info "$BIN" serve --listen 127.0.0.1:0 --cluster "redis://127.0.0.1:$REDIS_PORT" \
    --node-id "$n" > "$DIR/$n.out" 2> "$DIR/$n.log" &
  PID[$n]=$!
  PIDS+=("$!")
  wait_for "$DIR/$n.out" "listening on" 10
  ADDR[$n]=$(sed -n 's/^listening on //p' "$DIR/$n.out")
  echo "$n       | serving on ${ADDR[$n]}, node $n of the cluster"
done
wait_for "$DIR/n1.log" "node n3 .* found" 5
echo "cluster  | n1 found n2 and n3 through Redis"

sub() { # NAME NODE ARGS… (background; output in $DIR/NAME.out)
  local name=$1 node=$2; shift 2
  "$BIN" sub --server "${ADDR[$node]}" --user "$name" "$@" > "$DIR/$name.out" 2>/dev/null &
  PIDS+=("$!")
}
show() { sed "s/^/$1 ($2) | /" "$DIR/$1.out"; }

sub bob n2 1
sub carol n3 1
wait_for "$DIR/bob.out" "Subscribe for \[1\] by bob" 5
wait_for "$DIR/carol.out" "Subscribe for \[1\] by carol" 5
wait_for "$DIR/bob.out" "by carol" 5
"$BIN" pub --server "${ADDR[n1]}" --user alice --message "hello from n1" 1 > /dev/null 2>&1
wait_for "$DIR/bob.out" "hello from n1" 5
wait_for "$DIR/carol.out" "hello from n1" 5
echo "step 1   | alice (n1) published to group 1: bob (n2) and carol (n3) got it"

sub dave n2
"$BIN" sub --server "${ADDR[n3]}" --user dave > "$DIR/dave2.out" 2>/dev/null &
PIDS+=("$!")
sleep 1
sent=$("$BIN" send --server "${ADDR[n1]}" --user alice --message "psst, dave" dave 2>/dev/null)
wait_for "$DIR/dave.out" "psst, dave" 5
wait_for "$DIR/dave2.out" "psst, dave" 5
echo "step 2   | alice (n1) to dave: $sent; dave's sessions on n2 and n3 both got it"
grep -q "2 connection" <<<"$sent" || { echo "expected 2 connections reached: $sent" >&2; exit 1; }

kill -9 "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true
echo "step 3   | n3 killed (no goodbye); waiting for the liveness timeout (5 s)"
wait_for "$DIR/bob.out" "Unsubscribe from \[1\] by carol" 15
echo "step 3   | bob (n2) saw carol (n3) leave group 1"
echo
show bob n2
show carol n3
sed "s/^/dave (n2) | /" "$DIR/dave.out"
sed "s/^/dave (n3) | /" "$DIR/dave2.out"
echo
echo "cluster demo finished: every step's events arrived"
