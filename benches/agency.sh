#!/usr/bin/env bash
# Agency scale (examples/agency_bench.rs): one `kommo-pay serve` with the default worker
# settings, client accounts each with a fake Kommo that enforces 7 requests/s and answers after
# 150 ms, a fake Stripe whose link creations take 250 ms; against the project's private
# PostgreSQL, in a database made anew for each row.
#
#   benches/agency.sh [RUNS]     both rows: A's 1,000-deal burst beside B's deal a second, then
#                                20 accounts of 50 deals at once, RUNS times (default 5: one run
#                                of a row this short is no verdict on a shared machine), with
#                                the median and the worst of its slowest accounts
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
cargo build --release --quiet --bin kommo-pay --example agency_bench
# Each row starts from a settled server: the row before it leaves dirty pages whose flush (a
# checkpoint) would otherwise land in the next row's measurement.
fresh() {
    psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS kommo_pay_agency_bench WITH (FORCE)" -c "CREATE DATABASE kommo_pay_agency_bench" -c "CHECKPOINT"
    echo "$server_url/kommo_pay_agency_bench"
}
echo "== burst: account A moves 1,000 deals at once, account B one deal a second =="
target/release/examples/agency_bench "$(fresh)" target/release/kommo-pay burst 1000
runs=${1:-5}
slowest=()
for run in $(seq "$runs"); do
    echo "== accounts, run $run of $runs: 20 accounts move 50 deals each at once =="
    out=$(target/release/examples/agency_bench "$(fresh)" target/release/kommo-pay accounts 20 50)
    echo "$out"
    slowest+=("$(echo "$out" | sed -n 's/^slowest account: \([0-9.]*\) .*/\1/p')")
done
sorted=$(printf '%s\n' "${slowest[@]}" | sort -n)
echo "20 accounts, slowest account's makespan / floor over $runs runs: $(echo $sorted); median $(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p"), worst $(echo "$sorted" | tail -1)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
