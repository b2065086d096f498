#!/usr/bin/env bash
# Starts every distributed role on this machine: write-api (8001), relay, project, query-api (8002).
# Needs EVENTFOLD_DATABASE_URL (postgresql://...) and EVENTFOLD_NATS_URL (nats://...) and a venv
# (bash scripts/demo.sh or scripts/test.sh creates one). Ctrl-C stops the roles it started.
# Optional: EVENTFOLD_READ_DATABASE_URL puts the read models in another database (default: the event
# store's), EVENTFOLD_QUERY_DATABASE_URL has query-api read a streaming replica of it (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${EVENTFOLD_DATABASE_URL:?set EVENTFOLD_DATABASE_URL=postgresql://user@host:5432/dbname}"
: "${EVENTFOLD_NATS_URL:?set EVENTFOLD_NATS_URL=nats://host:4222}"
# Who may call the APIs: two separate choices.
# - A token key (EVENTFOLD_JWKS_URL, EVENTFOLD_JWKS_FILE or EVENTFOLD_JWT_KEY): every request needs a valid
#   token, unless you also name the roles of callers without one in EVENTFOLD_ANONYMOUS_ROLES.
# - No key: a local demo where every caller may do everything without a token (EVENTFOLD_ANONYMOUS_ROLES=*,
#   set here). Development and trusted networks only.
if [ -z "${EVENTFOLD_JWKS_URL:-}${EVENTFOLD_JWKS_FILE:-}${EVENTFOLD_JWT_KEY:-}" ]; then
  : "${EVENTFOLD_ANONYMOUS_ROLES:=*}"
  export EVENTFOLD_ANONYMOUS_ROLES
  echo "no token key set: every caller may do everything (set EVENTFOLD_JWKS_URL for anything but a demo)" >&2
fi
# The application every role runs: the repository's example unless you name yours (package.module:app).
: "${EVENTFOLD_APP:=example_app.app:app}"
export EVENTFOLD_DATABASE_URL EVENTFOLD_NATS_URL EVENTFOLD_APP
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
