#!/usr/bin/env bash
# Run the HTTP server and the processor in the foreground; Ctrl-C (or either one exiting) stops both.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python

"$python" -m ingest &
server=$!
"$python" -m processor &
processor=$!

base="http://localhost:${PORT:-3000}"
cat <<EOF
beacon-analytics is starting (Ctrl-C stops it):
  events:     POST $base/event  (Plausible: $base/api/event, Umami: $base/api/send)
  tracker:    $base/script.js
  dashboard:  $base/dashboard
  reports:    $base/api/v1/stats/aggregate?site_id=... (Plausible's Stats API), $base/stats?site_id=...&date=YYYY-MM-DD
  every route: $base/openapi.json
  health:     $base/healthz, readiness: $base/readyz, metrics: $base/metrics
  ledger:     $base/ledger?site_id=..., or: $python -m processor.ledger verify
EOF

stop() { kill -TERM "$server" "$processor" 2>/dev/null; }
trap stop INT TERM
wait -n
status=$?
stop
wait
exit "$status"
