#!/usr/bin/env bash
# Screenshots of every console page into docs/console/*.png (the README shows them), taken in
# headless Chromium from the quick start: start `deploy/local/run.sh` first; this plays the demo
# once (deploy/local/demo.sh) so that the pages have something to show, then shoots.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

"$here/browser.sh"
curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 || { echo "screenshots.sh: nothing answers on 127.0.0.1:8080: start deploy/local/run.sh first" >&2; exit 1; }
"$here/demo.sh" >/dev/null
# The demo's dead letter appears after its job's last retry.
for _ in $(seq 1 60); do
  dead=$(target/release/kommo-pay --config "$here/kommo-pay.toml" dead counts --json 2>/dev/null | grep -c '"count"' || true)
  [ "$dead" -gt 0 ] && break
  sleep 1
done
if [ -z "${KOMMO_PAY_OPS_TOKEN:-}" ]; then
  KOMMO_PAY_OPS_TOKEN=$(sed -n 's/^KOMMO_PAY_OPS_TOKEN=//p' "$here/example.env")
  export KOMMO_PAY_OPS_TOKEN
fi
cargo run --release --quiet --example console_screenshots -- http://127.0.0.1:8080 docs/console
