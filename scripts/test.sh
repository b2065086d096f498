#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with the dev extras and runs the whole test suite.
# PostgreSQL: EVENTFOLD_TEST_DATABASE_URL, else 127.0.0.1:5432, else a throwaway cluster
# started from the local PostgreSQL binaries. Under CI=true nothing that needs a server skips.
# The suite runs in EVENTFOLD_TEST_WORKERS pytest-xdist processes (2 by default; 0 runs it in this
# process): the tests mostly wait on servers, and each worker has its own database, streams and ports.
# Whole files go to one worker (--dist loadgroup, groups set in tests/conftest.py), so a module's servers
# start once; the files that kill or restart servers share one worker, one after another.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pytest -n "${EVENTFOLD_TEST_WORKERS:-2}" --dist loadgroup "$@"
