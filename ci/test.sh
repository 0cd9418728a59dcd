#!/usr/bin/env bash
# Run the test-suite offline on the CPU (Triton kernels through the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import cma, open_clip, hypothesis, pytest" 2>/dev/null; then
  bash ci/setup.sh
fi
export HF_HUB_OFFLINE=1 TRITON_INTERPRET=1 TOKENIZERS_PARALLELISM=false
export CMA_CACHE="${CMA_CACHE:-$PWD/.cache/cma}"
exec .venv/bin/python -m pytest tests/ -q "$@"
