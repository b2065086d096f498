#!/usr/bin/env bash
# Sets up a virtual environment (.venv) and starts the embedded demo: `eventfold dev --seed`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/eventfold dev --seed "$@"
