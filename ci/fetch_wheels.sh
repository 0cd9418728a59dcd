#!/usr/bin/env bash
# Fetch what ci/gpu.sh needs on the GPU machine and that its image lacks, as wheels for
# CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored; carried with carry=[".whl"]).
# Run here, where pip reaches the registry. ≈ 36 MiB, POT alone 31 MiB.
#
# The peers: GeomLoss, flash-sinkhorn, POT; open_clip (for the ViT-B/32 training step) and
# ftfy + wcwidth, its dependencies missing there. Everything else they need (numpy, scipy,
# torch, torchvision, triton, regex, tqdm, huggingface_hub, safetensors, timm) is installed
# there already (the device's KINDS.md lists its packages). One version of each: a stale
# wheel of another version is removed first, since two stop the whole install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHEELS=(
  geomloss==0.3.1
  flash-sinkhorn==0.4.1
  pot==0.9.7.post1
  open_clip_torch==3.3.0
  ftfy==6.3.1
  wcwidth==0.9.4
)
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
