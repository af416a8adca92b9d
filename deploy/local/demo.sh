#!/usr/bin/env bash
# Plays the demo on the quick start (`deploy/local/run.sh` running in another terminal): the
# sandbox's Kommo moves eight deals into the trigger stage and sends its webhooks, they get their
# payment links, the sandbox's Stripe sends five payments, a half refund, a declined subscription
# charge, and keeps failing one deal's link until its job is a dead letter. Prints what happens;
# the console (http://127.0.0.1:8080/console) shows it. Run it again for eight more deals.
set -euo pipefail
control=http://127.0.0.1:8180/demo
curl -fsS -X POST "$control" >/dev/null 2>&1 || { echo "demo.sh: the sandbox is not running: start deploy/local/run.sh first" >&2; exit 1; }
shown=0
for _ in $(seq 1 240); do
  mapfile -t lines < <(curl -fsS "$control")
  for line in "${lines[@]:$shown}"; do
    case "$line" in
      done) exit 0 ;;
      stopped:*) echo "demo.sh: $line" >&2; exit 1 ;;
      *) echo "$line" ;;
    esac
  done
  shown=${#lines[@]}
  sleep 0.5
done
echo "demo.sh: the demo did not finish within two minutes" >&2
exit 1
