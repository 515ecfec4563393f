#!/usr/bin/env bash
# The chat page in a real browser: io-tokio/web/test/browser_test.py drives headless
# Chromium through chromedriver with Selenium, against `pushwire serve --web`.
# Installs what is missing: Debian's chromium and chromium-driver (apt-get, as root),
# Selenium into target/browser-python (pip --target, nothing global). Takes the binary
# from PUSHWIRE_BIN, or builds it (debug). Screenshots: target/browser/{alice,bob}.png.
set -euo pipefail
cd "$(dirname "$0")/../../.."

source io-tokio/web/test/browser-setup.sh

if [ -z "${PUSHWIRE_BIN:-}" ]; then
  cargo build --locked --quiet -p pushwire-tokio --bin pushwire
  PUSHWIRE_BIN="${CARGO_TARGET_DIR:-target}/debug/pushwire"
fi
PUSHWIRE_BIN="$(realpath "$PUSHWIRE_BIN")"
export PUSHWIRE_BIN

exec python3 io-tokio/web/test/browser_test.py
