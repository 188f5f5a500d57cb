#!/usr/bin/env bash
# The browser test (tests/test_tracker_browser.py) drives Debian's chromium headless
# through Playwright: install the browser from the machine's packages, never with
# `playwright install` (which downloads its own build at run time).
set -euo pipefail
if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
else
  echo "the browser test needs chromium: install it with your package manager" >&2
  exit 1
fi
command -v chromium >/dev/null
