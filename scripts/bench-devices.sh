#!/usr/bin/env bash
# The command-channel benchmark (docs/PERFORMANCE.md): 10,000 idle devices on one server, and
# ring → acknowledgement against a Mosquitto QoS 1 round trip on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
export PATH="$PATH:/usr/sbin"
# 10,000 connections on each side of loopback, plus the database and the client's pool.
ulimit -n "$(ulimit -Hn)"
exec cargo bench -p mica --bench devices "$@"
