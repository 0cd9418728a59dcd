#!/usr/bin/env bash
# Fetch the comparison peers of ci/gpu_check.sh as wheels for the GPU machine (Python 3.12,
# x86-64, no internet there) into .whl/ (git-ignored). Run here, where pip reaches the registry.
# POT is not needed by the check; open_clip is not used by the kernel tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  geomloss==0.3.1 flash-sinkhorn==0.4.1
ls -l .whl
