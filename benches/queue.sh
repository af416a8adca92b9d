#!/usr/bin/env bash
# Queue benchmark: no-op jobs per second through the worker (claim with SKIP LOCKED, run,
# batched durable completion), with 1 and 2 worker processes, against the project's private
# PostgreSQL, in a database of its own made anew at each run.
#
#   benches/queue.sh [JOBS]      (default 100000)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
jobs=${1:-100000}

eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS kommo_pay_queue_bench WITH (FORCE)" -c "CREATE DATABASE kommo_pay_queue_bench"
export DATABASE_URL=$server_url/kommo_pay_queue_bench
cargo build --release --quiet --bin kommo-pay --example queue_bench
(set -a; . deploy/local/example.env; target/release/kommo-pay migrate --config deploy/local/kommo-pay.toml >/dev/null)

for processes in 1 2; do
  target/release/examples/queue_bench "$DATABASE_URL" "$jobs" "$processes" 2>/dev/null
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
