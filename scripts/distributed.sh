#!/usr/bin/env bash
# Starts every distributed role on this machine: write-api (8001), relay, project, query-api (8002).
# Needs EVENTFOLD_DATABASE_URL (postgresql://...) and EVENTFOLD_NATS_URL (nats://...) and a venv
# (bash scripts/demo.sh or scripts/test.sh creates one). Ctrl-C stops the roles it started.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${EVENTFOLD_DATABASE_URL:?set EVENTFOLD_DATABASE_URL=postgresql://user@host:5432/dbname}"
: "${EVENTFOLD_NATS_URL:?set EVENTFOLD_NATS_URL=nats://host:4222}"
# A local demo sends no tokens: allow anonymous callers unless told otherwise. write-api and query-api
# refuse to start without a token key (EVENTFOLD_JWKS_FILE, EVENTFOLD_JWKS_URL or EVENTFOLD_JWT_KEY)
# when this is off; anonymous access is for development and trusted networks only.
: "${EVENTFOLD_ALLOW_ANONYMOUS:=true}"
export EVENTFOLD_DATABASE_URL EVENTFOLD_NATS_URL EVENTFOLD_ALLOW_ANONYMOUS
bin=.venv/bin/eventfold
"$bin" init-db
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT INT TERM
"$bin" write-api --port "${WRITE_PORT:-8001}" & pids+=($!)
"$bin" relay & pids+=($!)
"$bin" project & pids+=($!)
"$bin" query-api --port "${QUERY_PORT:-8002}" & pids+=($!)
echo "roles running (pids ${pids[*]}): commands on :${WRITE_PORT:-8001}, GraphQL on :${QUERY_PORT:-8002}"
wait -n "${pids[@]}"
