#!/usr/bin/env bash
# Every benchmark, one after the other, on the release build: the figures the README shows.
#
#   benches/all.sh            (about ten minutes after the release build)
#
# Runs benches/ingest.sh (10 s per step), benches/queue.sh (100,000 jobs), benches/flow.sh and
# benches/agency.sh and benches/console.sh with their defaults; each prints its own table. Run it on an otherwise idle
# machine.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== ingest";  "$here/ingest.sh" 10
echo "== queue";   "$here/queue.sh" 100000
echo "== flow";    "$here/flow.sh"
echo "== agency";  "$here/agency.sh"
echo "== console"; "$here/console.sh"
