#!/usr/bin/env bash
# Installs a command the Makefile needs from the machine's packages, where it is missing:
# `make test` needs chromium (the browser tests drive Debian's build through Playwright,
# never `playwright install`, which would download its own) and npm (the compatibility
# tests fetch Plausible's and Umami's clients with it), `make bench` needs wrk.
#   scripts/install-package.sh COMMAND [PACKAGE]   (PACKAGE: COMMAND's own name by default)
set -euo pipefail
command=$1
package=${2:-$1}
command -v "$command" >/dev/null && exit 0
if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package"
elif command -v brew >/dev/null; then
  brew install "$package"
else
  echo "$command is needed: install the package $package with your package manager" >&2
  exit 1
fi
command -v "$command" >/dev/null
