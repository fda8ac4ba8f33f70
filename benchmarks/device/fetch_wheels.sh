#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), in the repository root, before a GPU run: downloads the pure-Python
# wheels the GPU machine lacks into .whl/ (git-ignored), for its Python 3.12.  That machine has torch,
# transformers, peft and accelerate but no diffusers.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl diffusers==0.42.1 importlib_metadata
ls -la .whl
