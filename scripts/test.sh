#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with the dev extras and runs the whole test suite.
# PostgreSQL: EVENTFOLD_TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster
# started from the local PostgreSQL binaries. Under CI=true nothing that needs a server skips.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pytest "$@"
