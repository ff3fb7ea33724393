#!/usr/bin/env bash
# Installs the tools the benchmarks (bench/) drive besides Python: wrk, the
# HTTP load generator of bench/receive.py (Debian's package). Idempotent: does
# nothing when wrk is there. `make bench` runs it first.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
# wrk -v prints its version and exits 1.
wrk -v 2>&1 | head -1 || true
