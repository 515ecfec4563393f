#!/usr/bin/env bash
# The chat page in a real browser: io-tokio/web/test/browser_test.py drives headless
# Chromium through chromedriver with Selenium, against `pushwire serve --web`.
# Installs what is missing: Debian's chromium and chromium-driver (apt-get, as root),
# Selenium into target/browser-python (pip --target, nothing global). Takes the binary
# from PUSHWIRE_BIN, or builds it (debug). Screenshots: target/browser/{alice,bob}.png.
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "== installing Debian's chromium and chromium-driver"
  apt-get update
  apt-get install -y chromium chromium-driver
fi

export PYTHONPATH="$PWD/target/browser-python${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c 'import selenium, sys; sys.exit(not selenium.__version__.startswith("4."))' 2>/dev/null; then
  echo "== installing Selenium into target/browser-python"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade \
    --target target/browser-python selenium==4.27.1
fi

if [ -z "${PUSHWIRE_BIN:-}" ]; then
  cargo build --locked --quiet -p pushwire-tokio --bin pushwire
  PUSHWIRE_BIN="${CARGO_TARGET_DIR:-target}/debug/pushwire"
fi
PUSHWIRE_BIN="$(realpath "$PUSHWIRE_BIN")"
export PUSHWIRE_BIN

exec python3 io-tokio/web/test/browser_test.py
