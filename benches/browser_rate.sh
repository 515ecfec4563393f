#!/usr/bin/env bash
# Delivered messages per second in one browser page (issue 15): headless Chromium on
# `pushwire serve --web`'s chat page subscribes with the served /pushwire.js, a native
# `pushwire pub --repeat` publishes; see io-tokio/web/test/browser_bench.py.
#
#   bash benches/browser_rate.sh
#   RUNS=5 WORKLOADS="16:300000 1024:100000" bash benches/browser_rate.sh
#
# Installs Debian's chromium and chromium-driver and Selenium in target/browser-python
# when missing (io-tokio/web/test/browser-setup.sh). Uses the release binary
# (PUSHWIRE_BIN to override), built if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source io-tokio/web/test/browser-setup.sh
if [ -z "${PUSHWIRE_BIN:-}" ]; then
  PUSHWIRE_BIN="${CARGO_TARGET_DIR:-target}/release/pushwire"
  [ -x "$PUSHWIRE_BIN" ] || cargo build --release --locked --quiet -p pushwire-tokio --bin pushwire
fi
PUSHWIRE_BIN="$(realpath "$PUSHWIRE_BIN")"
export PUSHWIRE_BIN
echo "$(nproc) CPUs (nproc)"
exec python3 io-tokio/web/test/browser_bench.py
