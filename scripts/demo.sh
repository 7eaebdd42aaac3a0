#!/usr/bin/env bash
# Set up the runtime and run it on the bundled default model and the bundled sample recording.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
exec .venv/bin/edge-mer run --video samples/crema-d_1001_DFA_six_emotions.mp4 --fast "$@"
