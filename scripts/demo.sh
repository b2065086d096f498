#!/usr/bin/env bash
# Sets up a virtual environment (.venv) and starts the example application embedded, with its demo data:
# `eventfold dev --app example_app.app:app --seed` (the example lives in this repository, not in the package).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/eventfold dev --app example_app.app:app --seed "$@"
