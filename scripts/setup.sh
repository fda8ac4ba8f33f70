#!/usr/bin/env bash
# Create .venv (if missing) and install flowdppo with its test extras. Idempotent; safe on a fresh machine.
# torch==2.13.0 goes first: a bare `torch` requirement with no torch installed pulls a multi-GB CUDA build.
# The install is redone whenever pyproject.toml changes (a stamp in .venv records its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.flowdppo-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import flowdppo, torch, diffusers, hypothesis" >/dev/null 2>&1; then
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
