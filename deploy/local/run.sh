#!/usr/bin/env bash
# Quick start: starts the private PostgreSQL, then `kommo-pay serve` with the example
# configuration (deploy/local/kommo-pay.toml) and its demo secrets (deploy/local/example.env).
# The example configuration's account talks to the sandbox (examples/sandbox.rs): local
# stand-ins for Kommo, Stripe and Lemon Squeezy, started here beside `serve` and stopped with it.
# `deploy/local/demo.sh`, from another terminal, plays deals being paid; the console shows them.
#
# Extra arguments go to kommo-pay instead of `serve`, e.g. `deploy/local/run.sh dead counts`.
# With KOMMO_PAY_CONFIG set (your own configuration), no sandbox starts.
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

sandbox=no
if [ -z "${KOMMO_PAY_CONFIG:-}" ] && [ "${1:-serve}" = serve ]; then
  sandbox=yes
fi
export KOMMO_PAY_CONFIG=${KOMMO_PAY_CONFIG:-$here/kommo-pay.toml}

cargo build --release --quiet
if [ "$sandbox" = no ]; then
  exec target/release/kommo-pay "${@:-serve}"
fi

cargo build --release --quiet --example sandbox
target/release/examples/sandbox &
sandbox_pid=$!
trap 'kill "$sandbox_pid" 2>/dev/null || true' EXIT INT TERM
cat >&2 <<TEXT

  kommo-pay with the sandbox's Kommo, Stripe and Lemon Squeezy (nothing leaves this machine).
  Console:  http://127.0.0.1:8080/console
  Token:    $KOMMO_PAY_OPS_TOKEN   (the demo ops token, from deploy/local/example.env)
  Demo:     deploy/local/demo.sh   (from another terminal: deals get links, are paid, one fails)

TEXT
target/release/kommo-pay serve
