#!/usr/bin/env bash
# Run the HTTP server and the processor in the foreground; Ctrl-C (or either one exiting) stops both.
set -u
cd "$(dirname "$0")/.."
python=.venv/bin/python

"$python" -m ingest &
server=$!
"$python" -m processor &
processor=$!

stop() { kill -TERM "$server" "$processor" 2>/dev/null; }
trap stop INT TERM
wait -n
status=$?
stop
wait
exit "$status"
