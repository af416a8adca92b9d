#!/usr/bin/env bash
# Ingest benchmark: signed Stripe webhooks over HTTP into `kommo-pay ingest`, against the
# PostgreSQL ceiling for the same work measured in the same run.
#
#   benches/ingest.sh [SECONDS_PER_STEP]      (default 10)
#   CONCURRENCIES="8 32 64" ROUNDS=3 APPENDS=2
#       the concurrencies to measure; rounds of each; database.ingest_concurrent_appends
#
# 1. The ceiling: pgbench runs the statement ingest runs (append one event and its job, one
#    durable commit) at each concurrency.
# 2. The service: examples/stripe_load.rs sends correctly signed events, each new, at the same
#    concurrencies, then at a fixed 500 events/s.
# Prints one table; copy it into the README with the machine it ran on. Everything runs on
# loopback against the project's private PostgreSQL (deploy/local/postgres.sh), in a database
# of its own that is dropped and made anew at each run. Each step starts after a CHECKPOINT.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
seconds=${1:-10}
concurrencies=${CONCURRENCIES:-"8 32 64"}
port=${BENCH_PORT:-18080}

eval "export $(deploy/local/postgres.sh start)"
server_url=${DATABASE_URL%/*}
bench_db=kommo_pay_bench
psql "$server_url/postgres" -qAtc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" -c "CREATE DATABASE $bench_db"
export DATABASE_URL=$server_url/$bench_db

cargo build --release --quiet --bin kommo-pay --example stripe_load
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

secret=whsec_bench_secret
cat >"$work/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[database]
max_connections = 64
ingest_concurrent_appends = ${APPENDS:-2}
[log]
filter = "warn"
[[accounts]]
slug = "bench"
[accounts.kommo]
account_id = 1
base_url = "https://bench.kommo.com"
webhook_secret_env = "BENCH_KOMMO_SECRET"
auth = { kind = "long_lived_token", token_env = "BENCH_KOMMO_TOKEN" }
[accounts.stripe]
secret_key_env = "BENCH_STRIPE_KEY"
webhook_secret_envs = ["BENCH_STRIPE_WHSEC"]
EOF
export BENCH_KOMMO_SECRET=bench-kommo-secret-0123456789abcdef BENCH_KOMMO_TOKEN=x BENCH_STRIPE_KEY=sk_test_x BENCH_STRIPE_WHSEC=$secret

target/release/kommo-pay migrate --config "$work/bench.toml" >/dev/null
target/release/kommo-pay ingest --config "$work/bench.toml" 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# The statement ingest runs (core/src/event_log.rs), with a payload of the same size.
# Hex-encoded, because pgbench would read the JSON's `:name` sequences as its own variables.
payload=$(target/release/examples/stripe_load --print-event | tr -d '\n' | od -An -v -tx1 | tr -d ' \n')
cat >"$work/append.sql" <<EOF
WITH appended AS (
    INSERT INTO events (id, account, source, kind, dedup_key, lead_id, payload, headers)
    SELECT * FROM unnest(ARRAY[gen_random_uuid()], ARRAY['bench'], ARRAY['stripe'], ARRAY['checkout.session.completed'],
                         ARRAY[gen_random_uuid()::text], ARRAY[15318175::int8], ARRAY[convert_from(decode('$payload', 'hex'), 'UTF8')::jsonb], ARRAY['{}'::jsonb])
    ON CONFLICT ON CONSTRAINT events_dedup DO NOTHING
    RETURNING id
), enqueued AS (
    INSERT INTO jobs (event_id, kind, args, account, lead_id, max_attempts, unique_key)
    SELECT id, 'stripe.payment', jsonb_build_object('event_id', id), 'bench', 15318175, 20, NULL FROM appended
    RETURNING 1
)
SELECT (SELECT count(*) FROM appended), (SELECT count(*) FROM enqueued);
EOF

# This machine's speed drifts by tens of percent within minutes (pgbench alone has swung from
# 4.4k to 6.1k tx/s between runs), so each concurrency alternates the two ROUNDS times and the
# verdict is the median of the rounds' ratios: each ratio compares two runs a few seconds apart.
rounds=${ROUNDS:-3}
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
row() { printf '%-12s %6s %12s %14s %9s %9s %7s\n' "$@"; }
printf '\n'
row concurrency round "pgbench tx/s" "ingest ev/s" "p50 ms" "p99 ms" ratio
# Each step starts from a CHECKPOINT, so that no step pays for the previous step's WAL.
checkpoint() { psql "$DATABASE_URL" -qAtc CHECKPOINT; }
for c in $concurrencies; do
  : >"$work/rounds"
  for round in $(seq "$rounds"); do
    checkpoint
    ceiling=$(pgbench -n -M prepared -c "$c" -j 2 -T "$seconds" -f "$work/append.sql" "$DATABASE_URL" 2>/dev/null \
      | awk '/^tps/ {print int($3)}')
    checkpoint
    read -r rate p50 p99 _ < <(target/release/examples/stripe_load "http://127.0.0.1:$port/webhooks/stripe/bench" "$secret" closed "$c" "$seconds" \
      | sed -E 's/[a-z0-9_]+=//g')
    ratio=$(awk -v a="$rate" -v b="$ceiling" 'BEGIN { printf "%.2f", a / b }')
    row "$c" "$round" "$ceiling" "$rate" "$p50" "$p99" "$ratio"
    echo "$ceiling $rate $p50 $p99 $ratio" >>"$work/rounds"
  done
  medians=()
  for column in 1 2 3 4 5; do medians+=("$(cut -d' ' -f"$column" "$work/rounds" | median)"); done
  row "$c" median "${medians[@]}"
done
checkpoint
read -r rate p50 p99 max _ < <(target/release/examples/stripe_load "http://127.0.0.1:$port/webhooks/stripe/bench" "$secret" rate 500 "$seconds" \
  | sed -E 's/[a-z0-9_]+=//g')
printf '\nfixed rate 500 events/s for %ss: %s events/s, p50 %s ms, p99 %s ms, max %s ms\n' "$seconds" "$rate" "$p50" "$p99" "$max"
errors=$(grep -c ' ERROR ' "$work/server.log" || true)
echo "server errors logged: $errors; events in the log: $(psql "$DATABASE_URL" -qAtc 'SELECT count(*) FROM events')"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
