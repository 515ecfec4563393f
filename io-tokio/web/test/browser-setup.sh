# Sourced by io-tokio/web/test/browser.sh and benches/browser_rate.sh, from the
# repository root: installs what a browser run needs when it is missing — Debian's
# chromium and chromium-driver (apt-get, as root), Selenium into target/browser-python
# (pip --target, nothing global) — and puts Selenium on PYTHONPATH.

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${CHROMEDRIVER:-/usr/bin/chromedriver}" ]; then
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
