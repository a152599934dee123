#!/bin/sh
# Installs Debian's Prometheus (2.42, with promtool) for the observability tests, if missing.
# Idempotent: does nothing when both binaries are on PATH. Needs root and the Debian archive
# (the project's CI machines have both); the tests skip with a reason when this could not run.
set -eu
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_prometheus.sh: prometheus/promtool missing and not root; run: sudo apt-get install -y prometheus" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service is not started: there is no init system here, and the tests run their own.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null
