#!/usr/bin/env bash
# A frozen subscriber next to a reading one: the scenario of issue 13, with the CLI.
#
# What it measures. A fresh `pushwire serve` (TLS, development certificates, a free
# loopback port) per run; two `pushwire sub 1 --json --count N` writing to files;
# one of them stopped with SIGSTOP once it has subscribed; then
# `pushwire pub 1 --message <SIZE bytes> --repeat N --no-echo`. For each run it
# reports (one "key=value" line per run, in LOG_DIR/results too):
#
#   pub_s, pub_rate   wall time of the `pushwire pub` process (connect, N
#                     publications, the closing ListGroups) and N / that time
#   reader_s          from the start of `pushwire pub` to the reader's last line
#   reader_*          publications the reading subscriber printed (pubs), its gap
#                     lines and the events they cover (gaps, lost), disconnected,
#                     resumed and session_lost lines, and cover: "exact" when the
#                     sequence numbers printed plus the gaps run without a hole or a
#                     repeat (a clean run: pubs=N, lost=0, no disconnect, exact)
#   frozen_*          the same for the frozen subscriber after SIGCONT (it never
#                     reaches --count after a gap, so it is stopped with Ctrl-C
#                     once its output has been quiet for 2 s: status=interrupted)
#   rss_growth_kib    the server's VmHWM at the end minus its VmRSS just before the
#                     publisher started: the peak memory the run cost the server
#                     (rss_peak_kib: the highest VmRSS sampled every 50 ms)
#   slow_consumers    "slow consumer" warnings in the server's log
#   server_exit       the server's exit status after Ctrl-C (0), or died:STATUS if it
#                     had exited by itself (its log is kept as serve-KIND-runN.err)
#
# Each run does four scenarios: with the frozen subscriber and without it (the
# reader alone, for comparison), each with the server's flow control (its
# default: high water 1 MiB, low water 256 KiB, grace 2 s) and with
# `--no-flow-control` (the behaviour of issue 13). The summary gives min / median /
# max over the runs and how many runs the reader came through clean.
#
# How to run (from anywhere; it builds the release binary first):
#
#   bash benches/slow_receiver.sh
#   RUNS=5 bash benches/slow_receiver.sh
#   MESSAGES=100000 SIZE=1000 RUNS=5 LOG_DIR=/tmp/slow bash benches/slow_receiver.sh
#   MODES=on bash benches/slow_receiver.sh            # only with flow control
#   SERVE_ARGS="--grace-ms 500" bash benches/slow_receiver.sh   # more serve flags
#   PUSHWIRE=target/debug/pushwire bash benches/slow_receiver.sh  # another binary
#
# What the figures mean. Without flow control the frozen subscriber is cut at the
# 8 MiB outbound limit at once and the publisher never waits for it, while a reader
# that falls 8 MiB behind the publisher (printing JSON is slower than publishing)
# is cut too and loses what did not fit in its replay buffer to a gap (issue 13:
# ~20,000 messages in about half the runs). With flow control the publisher is held
# while a receiver is over the high-water mark: by the reader for moments, by the
# frozen subscriber for the grace, after which the frozen one is cut as a slow
# consumer (session kept: thawed, it resumes with a gap) and the publisher goes on.
# So pub_s with the frozen subscriber should be about the grace over pub_s without
# it, the reader should be clean in every run, and the server's memory bounded by
# the high-water mark rather than the hard limit. Compare pub_rate with SIZE=900:
# if it is far lower at the default SIZE, the publisher itself is the bottleneck
# (`pushwire pub` keeps 1,024 publications in flight, which from about 960 B on is
# more than its 1 MiB send window; then it slowed to a round trip per publication
# when this was written), and a reader that keeps up with it shows nothing.
#
# Logs of the last run of each scenario stay in LOG_DIR (default
# target/slow_receiver): the server's log (serve-KIND.err), each subscriber's stderr
# and its JSON lines without the publications (*.jsonl.notices: subscriptions, gaps,
# disconnects with their reason, resumes), and every run's result line (results).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1}
MESSAGES=${MESSAGES:-100000}
SIZE=${SIZE:-1000}
LOG_DIR=${LOG_DIR:-target/slow_receiver}
# Longest a subscriber may take to get everything, and a thawed one to go quiet.
SUB_TIMEOUT=${SUB_TIMEOUT:-120}
# Flow control "on" (the server's default) and/or "off" (--no-flow-control).
read -r -a MODES <<<"${MODES:-on off}"
read -r -a EXTRA_SERVE <<<"${SERVE_ARGS:-}"

cargo build --release --locked -p pushwire-tokio --bin pushwire >&2
PUSHWIRE=${PUSHWIRE:-${CARGO_TARGET_DIR:-target}/release/pushwire}
mkdir -p "$LOG_DIR"
MESSAGE=$(head -c "$SIZE" /dev/zero | tr '\0' x)

# On exit (Ctrl-C included), stop this script's own background processes that are
# still running (a stopped subscriber is continued first so it can exit).
cleanup() {
  local pid
  for pid in $(jobs -p); do
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
RUN=0

# Starts a fresh server, with flow control (on) or without (off); sets SERVER_PID
# and SERVER_ADDR.
start_server() {
  local flags=("${EXTRA_SERVE[@]}")
  [ "$1" = off ] && flags+=(--no-flow-control)
  rm -f "$LOG_DIR/serve.out"
  RUST_LOG=${RUST_LOG:-info} "$PUSHWIRE" serve --listen 127.0.0.1:0 "${flags[@]}" \
    >"$LOG_DIR/serve.out" 2>"$LOG_DIR/serve.err" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$LOG_DIR/serve.out" 2>/dev/null; then
      SERVER_ADDR=$(sed -n 's/^listening on //p' "$LOG_DIR/serve.out")
      return 0
    fi
    sleep 0.1
  done
  echo "pushwire serve did not start: $(cat "$LOG_DIR/serve.err")" >&2
  return 1
}

# Stops the server with Ctrl-C; sets SERVER_EXIT to its exit status, or to
# "died:STATUS" if it had already exited by itself.
stop_server() {
  local died=""
  kill -0 "$SERVER_PID" 2>/dev/null || died="died:"
  kill -INT "$SERVER_PID" 2>/dev/null || true
  local status=0
  wait "$SERVER_PID" 2>/dev/null || status=$?
  SERVER_EXIT=$died$status
}

kib() { # field of /proc/PID/status, in KiB (0 once the process is gone)
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Samples the server's VmRSS every 50 ms into $LOG_DIR/rss until stopped.
start_sampler() {
  (
    while kill -0 "$SERVER_PID" 2>/dev/null; do
      kib "$SERVER_PID" VmRSS
      sleep 0.05
    done
  ) >"$LOG_DIR/rss" &
  SAMPLER_PID=$!
}

# Starts `pushwire sub 1` as USER writing to FILE; sets SUB_PID.
start_sub() {
  local user=$1 file=$2
  "$PUSHWIRE" sub 1 --json --count "$MESSAGES" --timeout "$SUB_TIMEOUT" \
    --server "$SERVER_ADDR" --user "$user" >"$file" 2>"$file.err" &
  SUB_PID=$!
}

wait_subscribed() { # file
  for _ in $(seq 100); do
    grep -q '"event":"subscribe".*"self":true' "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no subscription in $1: $(cat "$1.err")" >&2
  return 1
}

# Summary of a subscriber's JSON lines, as "key=value" words: pubs (publication
# lines), gaps (gap lines), lost (events the gaps cover), disconnects, resumes,
# session_lost, last_seq, and cover: "exact" when the sequence numbers of the
# events printed plus the gap ranges run from the first to the last without a
# hole, a repeat or a step back, else "HOLE".
summarise() { # file
  awk '
    function take(first, last) {
      if (next_seq != "" && first != next_seq) bad = 1
      next_seq = last + 1; last_seq = last
    }
    function num(key,   m) {
      if (!match($0, "\"" key "\":[0-9]+")) return ""
      return substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0
    }
    {
      match($0, /"event":"[a-z_]+"/); ev = substr($0, RSTART + 9, RLENGTH - 10)
    }
    ev == "publish" { pubs++ }
    ev == "subscribe" || ev == "unsubscribe" || ev == "publish" || ev == "user_message" {
      s = num("seq"); take(s, s)
    }
    ev == "gap" { f = num("first"); l = num("last"); gaps++; lost += l - f + 1; take(f, l) }
    ev == "disconnected" { disc++ }
    ev == "resumed" { res++ }
    ev == "session_lost" { sl++ }
    END {
      printf "pubs=%d gaps=%d lost=%d disconnects=%d resumes=%d session_lost=%d last_seq=%s cover=%s\n",
        pubs, gaps, lost, disc, res, sl, last_seq == "" ? "-" : last_seq, bad ? "HOLE" : "exact"
    }' "$1"
}

# Lets the subscriber PID, writing FILE, finish: it exits by itself once it has
# --count publications; one that lost some to a gap never gets there, so once FILE
# has not grown for 2 s it is stopped with Ctrl-C (SIGKILL 3 s later if need be).
# Sets SUB_STATUS: its exit code, or "interrupted".
finish_sub() { # pid file
  local pid=$1 file=$2 size=-1 same=0
  for _ in $(seq $((SUB_TIMEOUT * 4))); do
    kill -0 "$pid" 2>/dev/null || break
    local now_size
    now_size=$(stat -c %s "$file")
    if [ "$now_size" = "$size" ]; then
      same=$((same + 1))
      [ "$same" -ge 8 ] && break
    else
      same=0
      size=$now_size
    fi
    sleep 0.25
  done
  SUB_STATUS=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    SUB_STATUS=interrupted
  else
    wait "$pid" 2>/dev/null || SUB_STATUS=$?
  fi
}

# One run. KIND is "frozen-MODE" (a reading and a frozen subscriber) or
# "alone-MODE" (only the reading subscriber), MODE "on" or "off" (flow control).
# Prints its result line and appends it to $LOG_DIR/results.
run_once() {
  local kind=$1 mode=${1#*-}
  local reader="$LOG_DIR/reader-$kind.jsonl" frozen="$LOG_DIR/frozen-$kind.jsonl"
  rm -f "$reader"* "$frozen"*
  start_server "$mode"
  local frozen_pid=""
  if [ "${kind%-*}" = frozen ]; then
    start_sub frozen "$frozen"
    frozen_pid=$SUB_PID
    wait_subscribed "$frozen"
  fi
  start_sub reader "$reader"
  local reader_pid=$SUB_PID
  wait_subscribed "$reader"
  if [ -n "$frozen_pid" ]; then
    kill -STOP "$frozen_pid"
  fi
  sleep 0.2
  local rss_before
  rss_before=$(kib "$SERVER_PID" VmRSS)
  start_sampler

  local t0 t1 pub_status=0
  t0=$(now)
  "$PUSHWIRE" pub 1 --message "$MESSAGE" --repeat "$MESSAGES" --no-echo \
    --server "$SERVER_ADDR" --user publisher >"$LOG_DIR/pub.out" 2>"$LOG_DIR/pub.err" ||
    pub_status=$?
  t1=$(now)
  finish_sub "$reader_pid" "$reader"
  # When it printed its last event: the file's modification time.
  local reader_status=$SUB_STATUS t_reader
  t_reader=$(date -r "$reader" +%s.%N)

  local frozen_status=-
  if [ -n "$frozen_pid" ]; then
    # SIGCONT: it reads what the kernel kept for it, finds its connection gone and
    # resumes (replay, or a gap first).
    kill -CONT "$frozen_pid"
    finish_sub "$frozen_pid" "$frozen"
    frozen_status=$SUB_STATUS
  fi
  local rss_hwm rss_peak
  rss_hwm=$(kib "$SERVER_PID" VmHWM)
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  rss_peak=$(sort -n "$LOG_DIR/rss" | tail -1)
  local slow
  slow=$(grep -c 'slow consumer' "$LOG_DIR/serve.err" || true)
  stop_server

  local pub_s reader_s rate
  pub_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  reader_s=$(awk -v a="$t0" -v b="$t_reader" 'BEGIN { printf "%.3f", b - a }')
  rate=$(awk -v n="$MESSAGES" -v s="$pub_s" 'BEGIN { printf "%.0f", n / s }')
  local line="kind=$kind server_exit=$SERVER_EXIT pub_status=$pub_status pub_s=$pub_s pub_rate=$rate"
  line+=" reader_status=$reader_status reader_s=$reader_s"
  line+=" $(summarise "$reader" | sed 's/\([a-z_]*\)=/reader_\1=/g')"
  if [ -n "$frozen_pid" ]; then
    line+=" frozen_status=$frozen_status $(summarise "$frozen" | sed 's/\([a-z_]*\)=/frozen_\1=/g')"
  fi
  line+=" rss_before_kib=$rss_before rss_hwm_kib=$rss_hwm rss_peak_kib=$rss_peak"
  line+=" rss_growth_kib=$((rss_hwm - rss_before)) slow_consumers=$slow"
  echo "run $RUN: $line"
  echo "$line" >>"$LOG_DIR/results"
  # Keep every line but the publications (100 MB per subscriber).
  for file in "$reader" "$frozen"; do
    if [ -f "$file" ]; then
      grep -v '"event":"publish"' "$file" >"$file.notices" || true
      rm -f "$file"
    fi
  done
  cp "$LOG_DIR/serve.err" "$LOG_DIR/serve-$kind.err"
  if [ "$SERVER_EXIT" != 0 ]; then
    cp "$LOG_DIR/serve.err" "$LOG_DIR/serve-$kind-run$RUN.err"
    echo "run $RUN: the server exited with $SERVER_EXIT: $LOG_DIR/serve-$kind-run$RUN.err" >&2
  fi
}

field() { # key, from result lines on stdin
  tr ' ' '\n' | sed -n "s/^$1=//p"
}

stats() { # key, kind: "min / median / max" over the runs
  grep "^kind=$2 " "$LOG_DIR/results" | field "$1" | sort -g |
    awk '{ v[NR] = $1 }
      END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%s / %s / %s", v[1], m, v[NR]
      }'
}

count() { # kind, pattern: runs of that kind whose result line matches
  grep "^kind=$1 " "$LOG_DIR/results" | grep -c -- "$2" || true
}

: >"$LOG_DIR/results"
KINDS=()
for mode in "${MODES[@]}"; do
  KINDS+=("frozen-$mode" "alone-$mode")
done
for RUN in $(seq "$RUNS"); do
  for kind in "${KINDS[@]}"; do
    run_once "$kind"
  done
done

echo
echo "summary over $RUNS run(s) of $MESSAGES x $SIZE B (min / median / max):"
for kind in "${KINDS[@]}"; do
  case $kind in
  frozen-on) echo "  with a frozen subscriber, flow control on:" ;;
  alone-on) echo "  reader alone, flow control on:" ;;
  frozen-off) echo "  with a frozen subscriber, --no-flow-control:" ;;
  alone-off) echo "  reader alone, --no-flow-control:" ;;
  esac
  keys=(pub_s pub_rate reader_s reader_pubs reader_lost reader_disconnects
    rss_growth_kib rss_peak_kib slow_consumers)
  [ "${kind%-*}" = frozen ] && keys+=(frozen_pubs frozen_gaps frozen_lost frozen_disconnects
    frozen_resumes frozen_session_lost)
  for key in "${keys[@]}"; do
    printf '    %-20s %s\n' "$key" "$(stats "$key" "$kind")"
  done
  died=$(count "$kind" "server_exit=died")
  [ "$died" != 0 ] && echo "    THE SERVER EXITED BY ITSELF in $died of $RUNS run(s)"
  clean=$(count "$kind" "reader_pubs=$MESSAGES reader_gaps=0 reader_lost=0 reader_disconnects=0 reader_resumes=0 reader_session_lost=0 .*reader_cover=exact")
  echo "    reader got all $MESSAGES, no gap, no disconnect: $clean of $RUNS run(s)"
  if [ "${kind%-*}" = frozen ]; then
    echo "    frozen covered exactly (delivered + gaps): $(count "$kind" 'frozen_cover=exact') of $RUNS run(s)"
  fi
done
