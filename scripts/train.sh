#!/usr/bin/env bash
# The README's main-job command: set up (venv + installs) if needed, then train on the embedded default.
# Extra arguments go to `flowdppo train` (e.g. `bash scripts/train.sh loss=flow_grpo seed=1`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/flowdppo train "$@"
