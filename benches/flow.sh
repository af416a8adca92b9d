#!/usr/bin/env bash
# End-to-end latency: Kommo webhook into ingest -> event log -> queue -> worker -> fake Stripe ->
# fake Kommo receiving the deal's payment link (examples/flow_latency.rs), against the project's
# private PostgreSQL in a database of its own made anew at each run.
#
#   benches/flow.sh [DEALS] [PER_SECOND]      (default 200 deals at 10 per second)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
deals=${1:-200}
per_second=${2:-10}

eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS kommo_pay_flow_bench WITH (FORCE)" -c "CREATE DATABASE kommo_pay_flow_bench"
cargo build --release --quiet --example flow_latency
target/release/examples/flow_latency "$server_url/kommo_pay_flow_bench" "$deals" "$per_second"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
