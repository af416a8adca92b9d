#!/usr/bin/env bash
# Quick start: runs the whole test suite against a real PostgreSQL and a real browser. Starts the
# project's private cluster (deploy/local/postgres.sh) unless DATABASE_URL is set; each test
# creates and drops its own database on that server. Installs Chromium and ChromeDriver for the
# console's browser tests when they are missing (deploy/local/browser.sh). Extra arguments go to
# the test runner.
#
# Style is part of the suite: unformatted code (rustfmt.toml) or any clippy warning fails it
# before a test runs, so main never drifts from either.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

if [ -z "${DATABASE_URL:-}" ]; then
  eval "export $("$here/postgres.sh" start)"
fi
"$here/browser.sh"
cargo fmt --all --check || { echo "test.sh: code is not formatted; run cargo fmt --all" >&2; exit 1; }
cargo clippy --workspace --all-targets --quiet -- -D warnings || { echo "test.sh: clippy has warnings (above)" >&2; exit 1; }

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  # One process runs every test with `cargo test`; the crash-point tests' fault points are set
  # per process, so its tests go one at a time.
  echo "test.sh: cargo-nextest not found; running cargo test one test at a time" >&2
  exec cargo test --workspace --no-fail-fast "$@" -- --test-threads=1
fi
