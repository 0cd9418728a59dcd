#!/usr/bin/env bash
# Fetch what benchmarks/gpu.sh needs on the GPU machine (Python 3.12, x86-64, no internet there)
# as wheels into .whl/bench/ (git-ignored). Run here, where pip reaches the registry.
# pytest-benchmark (+ py-cpuinfo) runs the suite; GeomLoss, POT and flash-sinkhorn are the peers;
# open_clip (+ ftfy, wcwidth, regex, timm, safetensors, huggingface_hub) is for the training-step
# case, which is skipped if it does not import there (e.g. no matching torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl/bench
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl/bench \
  pytest-benchmark==5.3.1 py-cpuinfo geomloss==0.3.1 flash-sinkhorn==0.4.1 "POT==0.9.7.post1" \
  open_clip_torch==3.3.0 ftfy wcwidth regex timm safetensors huggingface_hub
ls -l .whl/bench
