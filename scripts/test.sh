#!/usr/bin/env bash
# Set up everything (runtime, training, export, tests) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
exec .venv/bin/python -m pytest "$@"
