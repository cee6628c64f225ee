#!/usr/bin/env bash
# Browser test prerequisites: Debian's chromium and Playwright for Python (driver only; no browser
# download: the test launches /usr/bin/chromium). Idempotent; safe to run on every test run.
set -uo pipefail
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null; then
    echo "browser_setup: installing Debian chromium"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
      || echo "browser_setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "browser_setup: no apt-get; install chromium at /usr/bin/chromium to run the browser test" >&2
  fi
fi
PY="${PYTHON:-python}"
if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "browser_setup: pip install playwright==1.65.2"
  "$PY" -m pip install -q "playwright==1.65.2" || echo "browser_setup: could not install playwright" >&2
fi
exit 0
