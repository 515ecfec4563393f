#!/usr/bin/env bash
# Delivered messages per second in one browser page (issue 15): headless Chromium on
# `pushwire serve --web`'s chat page subscribes with the served /pushwire.js, a native
# `pushwire pub --repeat` publishes; see io-tokio/web/test/browser_bench.py.
#
#   bash benches/browser_rate.sh
#   RUNS=5 WORKLOADS="16:300000 1024:100000" bash benches/browser_rate.sh
#
# Needs Debian's chromium and chromium-driver and Selenium in target/browser-python,
# as io-tokio/web/test/browser.sh installs them (run that once, or see it). Uses the
# release binary (PUSHWIRE_BIN to override), built if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${CHROMEDRIVER:-/usr/bin/chromedriver}" ]; then
  echo "no chromium or chromedriver: run io-tokio/web/test/browser.sh once (it installs them)" >&2
  exit 2
fi
export PYTHONPATH="$PWD/target/browser-python${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c 'import selenium, sys; sys.exit(not selenium.__version__.startswith("4."))' 2>/dev/null; then
  echo "== installing Selenium into target/browser-python"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade \
    --target target/browser-python selenium==4.27.1
fi
if [ -z "${PUSHWIRE_BIN:-}" ]; then
  PUSHWIRE_BIN="${CARGO_TARGET_DIR:-target}/release/pushwire"
  [ -x "$PUSHWIRE_BIN" ] || cargo build --release --locked --quiet -p pushwire-tokio --bin pushwire
fi
PUSHWIRE_BIN="$(realpath "$PUSHWIRE_BIN")"
export PUSHWIRE_BIN
echo "$(nproc) CPUs (nproc)"
exec python3 io-tokio/web/test/browser_bench.py
