#!/usr/bin/env bash
# Console benchmark: every console page's answer time over a large database (1,000,000 events
# over 30 days in 20 accounts, a completed job for every other event of the last 7 days as
# housekeeping keeps them, 10,000 dead letters),
# signed in, one request at a time, against the project's private PostgreSQL, in a database of
# its own made anew at each run.
#
#   benches/console.sh [EVENTS] [DEAD] [SAMPLES]     (defaults 1000000 10000 50)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS kommo_pay_console_bench WITH (FORCE)" -c "CREATE DATABASE kommo_pay_console_bench"
cargo build --release --quiet --example console_bench
target/release/examples/console_bench "$server_url/kommo_pay_console_bench" "${1:-1000000}" "${2:-10000}" "${3:-50}"
