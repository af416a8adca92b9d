#!/usr/bin/env bash
# Queue benchmark: no-op jobs per second through the worker (claim with SKIP LOCKED, run,
# batched durable completion), with 1 and 2 worker processes, against the project's private
# PostgreSQL, in a database of its own made anew at each run.
#
#   benches/queue.sh [JOBS]                  (default 100000)
#   BASELINE=REV benches/queue.sh [JOBS]     also REV's benchmark, in the same run, alternating
#
# With BASELINE, revision REV (e.g. the commit before a change to the claim) is checked out in a
# git worktree under target/, its driver built and run beside this one's, one after the other
# for each process count: this machine's speed drifts within minutes, so only figures measured
# side by side compare.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
jobs=${1:-100000}
baseline=${BASELINE:-}

eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
export DATABASE_URL=$server_url/kommo_pay_queue_bench

drivers=(this)
if [ -n "$baseline" ]; then
  rev=$(git rev-parse --short "$baseline")
  tree=target/baseline-$rev
  [ -d "$tree" ] || git worktree add --detach --quiet "$tree" "$rev"
  # The same target directory: the dependencies are built once for both.
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../../target" cargo build --release --quiet --bin kommo-pay --example queue_bench)
  mkdir -p "target/baseline-bin-$rev"
  cp target/release/kommo-pay target/release/examples/queue_bench "target/baseline-bin-$rev/"
  drivers=("$rev" this)
fi
cargo build --release --quiet --bin kommo-pay --example queue_bench

# A database made anew and migrated by the driver's own binary: each is measured with its own
# schema (indexes cost every write). Each binary reads the example configuration of its own
# revision (an older one refuses keys added since).
fresh_database() {
  psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS kommo_pay_queue_bench WITH (FORCE)" -c "CREATE DATABASE kommo_pay_queue_bench"
  (set -a; . "$2/deploy/local/example.env"; "$1" migrate --config "$2/deploy/local/kommo-pay.toml" >/dev/null)
}

for processes in 1 2; do
  for driver in "${drivers[@]}"; do
    case "$driver" in
      this) bin=target/release ; examples=target/release/examples ; label=this ; source_tree=. ;;
      *) bin=target/baseline-bin-$driver ; examples=$bin ; label="baseline $driver" ; source_tree=target/baseline-$driver ;;
    esac
    fresh_database "$bin/kommo-pay" "$source_tree"
    printf '%-18s ' "$label"
    "$examples/queue_bench" "$DATABASE_URL" "$jobs" "$processes" 2>/dev/null
  done
done
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
