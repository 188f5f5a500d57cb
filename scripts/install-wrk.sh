#!/usr/bin/env bash
# make bench needs wrk, the C load generator: install it from the machine's packages.
set -euo pipefail
if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk
elif command -v brew >/dev/null; then
  brew install wrk
else
  echo "make bench needs wrk, the C load generator: install it with your package manager" >&2
  exit 1
fi
command -v wrk >/dev/null
