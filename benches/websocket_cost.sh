#!/usr/bin/env bash
# The WebSocket path's cost against the native TLS path (issue 15), same workload, same
# run. For each workload (1 publisher, SUBS subscribers in group 1, MSGS messages of
# SIZE bytes), PAIRS pairs of runs of ONE driver, benches/web_driver.mjs (the
# browser's JavaScript client of io-tokio/web/ under Node), over two transports:
#
#   ws   Node's WebSocket, wss:// (pushwire frames in WebSocket binary messages);
#   tls  a WebSocket-shaped adapter on node:tls carrying the raw frames (the native
#        protocol: the same frames on TLS without WebSocket framing).
#
# The order within a pair alternates (ws first in odd pairs, tls first in even ones).
# Each pair also runs, as a reference, the native load generator `pushwire bench --tls`
# on the same workload twice: flat out (with BENCH_FACTOR times the messages, so the
# run is long enough to count CPU ticks), and paced (--rate) at the tls run's
# publication rate, so its server cost is taken at the same message rate as the
# drivers' (a server's cost per message falls as the rate rises: more messages share
# each write and wake-up).
#
# Every run gets a fresh `pushwire serve --web` (release build). Server cost: its
# utime+stime clock ticks from /proc/PID/stat over the workload (the driver reads them
# before its first publication and after its last delivery; for `pushwire bench`,
# before its start and after its exit) divided by the deliveries → µs per delivered
# message. Prints every run, then the medians and the ws/tls ratios.
#
#   bash benches/websocket_cost.sh
#   PAIRS=7 WORKLOADS="16:1:250000 1024:10:25000" bash benches/websocket_cost.sh
#
# Needs Node 20+ (its WebSocket behind --experimental-websocket on 20 and 21).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${PUSHWIRE_BIN:-${CARGO_TARGET_DIR:-target}/release/pushwire}
PAIRS=${PAIRS:-5}
# size:subscribers:messages
WORKLOADS=${WORKLOADS:-"16:1:250000 16:10:50000 1024:10:25000"}
BENCH_FACTOR=${BENCH_FACTOR:-4}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
HZ=$(getconf CLK_TCK)

if [ ! -x "$BIN" ]; then
  cargo build --release --locked --quiet -p pushwire-tokio --bin pushwire
fi
NODE_FLAGS=(--no-warnings)
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
  NODE_FLAGS+=(--experimental-websocket)
fi
# Node's WebSocket (undici) and node:tls both trust the development CA through this.
export NODE_EXTRA_CA_CERTS="$PWD/certs/ca.cert.pem"

SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

start_server() { # tag; sets SERVER_PID and ADDR
  local out="$LOG_DIR/serve-$1.out"
  : >"$out" # before the server's own redirection, which runs in the background job
  RUST_LOG=warn "$BIN" serve --web --listen 127.0.0.1:0 >"$out" 2>"$LOG_DIR/serve-$1.err" &
  SERVER_PID=$!
  ADDR=""
  for _ in $(seq 100); do
    ADDR=$(sed -n 's/^listening on //p' "$out")
    [ -n "$ADDR" ] && break
    sleep 0.1
  done
  [ -n "$ADDR" ] || { echo "server did not start (see $LOG_DIR/serve-$1.err)" >&2; exit 1; }
}

stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

field() { sed -n "s/^result .*[ ]$1=\([0-9.]*\).*/\1/p"; }

# Writes "rate server_us_per_msg client_us_per_msg" of one driver run to $LOG_DIR/last.
run_driver() { # transport size subs msgs tag
  start_server "$5"
  node "${NODE_FLAGS[@]}" benches/web_driver.mjs --url "wss://$ADDR/" --transport "$1" \
    --size "$2" --subs "$3" --msgs "$4" --pid "$SERVER_PID" --hz "$HZ" >"$LOG_DIR/driver-$5.txt"
  stop_server
  local f="$LOG_DIR/driver-$5.txt"
  echo "$(field rate <"$f") $(field server_us_per_msg <"$f") $(field client_us_per_msg <"$f")" >"$LOG_DIR/last"
}

# Writes "delivered_rate server_us_per_msg" of one `pushwire bench --tls` run to
# $LOG_DIR/last.
run_bench() { # size subs msgs tag [rate]
  start_server "$4"
  local rate_flags=()
  [ -n "${5:-}" ] && rate_flags=(--rate "$5")
  local t0 t1
  t0=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
  "$BIN" bench --tls --server "$ADDR" --msgs "$3" --size "$1" --subs "$2" "${rate_flags[@]}" \
    --quiet >"$LOG_DIR/bench-$4.txt"
  t1=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat")
  stop_server
  local rate
  rate=$(sed -n 's/^result .*delivered_rate=\([0-9]*\).*/\1/p' "$LOG_DIR/bench-$4.txt")
  awk -v r="$rate" -v t="$((t1 - t0))" -v hz="$HZ" -v d="$(($3 * $2))" \
    'BEGIN { printf "%s %.3f\n", r, t / hz / d * 1e6 }' >"$LOG_DIR/last"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "server: $BIN (serve --web, fresh per run); node $(node --version) ${NODE_FLAGS[*]}"
echo "$(nproc) CPUs; $PAIRS pairs per workload; clock ticks $HZ/s; logs in $LOG_DIR"
summary=()
for workload in $WORKLOADS; do
  IFS=: read -r size subs msgs <<<"$workload"
  ws_rates=() tls_rates=() ws_costs=() tls_costs=() rate_ratios=() cost_ratios=()
  ws_client=() tls_client=() bench_rates=() bench_costs=() paced_rates=() paced_costs=()
  for pair in $(seq "$PAIRS"); do
    tag="$size-$subs-$pair"
    if [ $((pair % 2)) -eq 1 ]; then
      run_driver ws "$size" "$subs" "$msgs" "ws-$tag"; read -r wr wc wcl <"$LOG_DIR/last"
      run_driver tls "$size" "$subs" "$msgs" "tls-$tag"; read -r tr tc tcl <"$LOG_DIR/last"
    else
      run_driver tls "$size" "$subs" "$msgs" "tls-$tag"; read -r tr tc tcl <"$LOG_DIR/last"
      run_driver ws "$size" "$subs" "$msgs" "ws-$tag"; read -r wr wc wcl <"$LOG_DIR/last"
    fi
    run_bench "$size" "$subs" "$((msgs * BENCH_FACTOR))" "bench-$tag"; read -r br bc <"$LOG_DIR/last"
    pace=$((tr / subs))
    run_bench "$size" "$subs" "$msgs" "paced-$tag" "$pace"; read -r pr pc <"$LOG_DIR/last"
    ws_rates+=("$wr") tls_rates+=("$tr") ws_costs+=("$wc") tls_costs+=("$tc")
    ws_client+=("$wcl") tls_client+=("$tcl")
    bench_rates+=("$br") bench_costs+=("$bc") paced_rates+=("$pr") paced_costs+=("$pc")
    rate_ratios+=("$(awk -v a="$wr" -v b="$tr" 'BEGIN { printf "%.3f", a / b }')")
    cost_ratios+=("$(awk -v a="$wc" -v b="$tc" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')")
    echo "  $size B x $subs sub, pair $pair: ws $wr msg/s ${wc} us/msg (driver ${wcl}), tls $tr msg/s ${tc} us/msg (driver ${tcl}); bench --tls $br msg/s ${bc} us/msg; paced at $pace/s: $pr msg/s ${pc} us/msg"
  done
  m() { printf '%s\n' "$@" | median; }
  line="| $size B → $subs | $msgs | $(m "${ws_rates[@]}") | $(m "${tls_rates[@]}") | $(m "${rate_ratios[@]}") | $(m "${ws_costs[@]}") | $(m "${tls_costs[@]}") | $(m "${cost_ratios[@]}") | $(m "${ws_client[@]}") / $(m "${tls_client[@]}") | $(m "${bench_rates[@]}") | $(m "${bench_costs[@]}") | $(m "${paced_costs[@]}") |"
  summary+=("$line")
done
echo
echo "medians over $PAIRS pairs (rates: delivered msg/s; costs: server CPU µs per delivered message; driver: the Node process's CPU µs per delivered message)"
echo "| workload | msgs | ws msg/s | tls msg/s | ws/tls rate | ws µs/msg | tls µs/msg | ws/tls cost | driver µs/msg ws / tls | bench --tls msg/s | bench --tls µs/msg | bench --tls paced µs/msg |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${summary[@]}"
