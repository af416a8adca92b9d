#!/usr/bin/env bash
# Quick start: starts the private PostgreSQL, then `kommo-pay serve` with the example
# configuration (deploy/local/kommo-pay.toml) and its demo secrets (deploy/local/example.env).
# Extra arguments go to kommo-pay, e.g. `deploy/local/run.sh` or `KOMMO_PAY_CONFIG=my.toml deploy/local/run.sh`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

if [ -z "${DATABASE_URL:-}" ]; then
  eval "export $("$here/postgres.sh" start)"
fi
# Demo secrets, only for variables not already set.
while IFS='=' read -r name value; do
  case "$name" in ''|'#'*) continue ;; esac
  [ -n "${!name:-}" ] || export "$name=$value"
done <"$here/example.env"
export KOMMO_PAY_CONFIG=${KOMMO_PAY_CONFIG:-$here/kommo-pay.toml}

cargo build --release --quiet
exec target/release/kommo-pay "${@:-serve}"
