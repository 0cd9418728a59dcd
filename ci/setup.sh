#!/usr/bin/env bash
# Create .venv (if needed) and install cma with its dev extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch/torchvision are pinned exactly in pyproject.toml (the CPU-usable builds on this disk).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import cma, cma_kernels, open_clip, torch, triton; print('cma', cma_kernels.__version__, 'torch', torch.__version__, 'triton', triton.__version__)"
