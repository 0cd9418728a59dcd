#!/usr/bin/env bash
# The one GPU check (benchmarks/gpu.py; docs/gpu.md): kernel tests on CUDA, autotuned configs,
# sinkhorn_divergence timings against the peers, ViT-B/32 training step; ≈ 7.5 minutes.
#
#   here, once:    bash ci/fetch_wheels.sh             (peers + open_clip as wheels into .whl/)
#   device tool:   run(command="bash ci/gpu.sh", carry=[".whl"], timeout_s=480)
#   any CPU:       bash ci/gpu.sh --dry-run            (the same script, tiny sizes, < 1 minute)
#
# Runs from source (PYTHONPATH=.) on the machine's own PyTorch/Triton; the carried wheels are
# installed into a scratch folder first (a peer that does not import is recorded and skipped).
# Writes into $OUT (/tmp/cma-gpu without one): gpu.json, gpu.md, gpu.log, tests.log, pip.log.
# Extra arguments go to `python -m benchmarks.gpu` (e.g. --sections, --budget-s, --sizes; set
# the folder with OUT=…, not --out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${TMPDIR:-/tmp}/cma-gpu}
mkdir -p "$OUT"
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
for arg in "$@"; do [[ $arg == --dry-run ]] && DRY=1; done

if [[ $DRY == 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  SITE=/tmp/cma-gpu-site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl >"$OUT/pip.log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
  else
    echo "the carried wheels did not install (see pip.log); continuing without them"
  fi
fi

# The script keeps to its own budget (420 s; dry run 300 s) and saves after every case; the
# limit here only stops a hang, leaving what was saved.
timeout -k 15 "${CMA_GPU_TIMEOUT_S:-450}" "$PY" -m benchmarks.gpu --out "$OUT" "$@" 2>&1 \
  | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
