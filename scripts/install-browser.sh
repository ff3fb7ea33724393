#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (tests/browser/) and for
# scripts/screenshots.py. Playwright drives this binary; its own browser
# downloads are never used. Idempotent: does nothing when chromium is there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
