#!/usr/bin/env bash
# GPU check of the fused Triton kernels (issue #3); the whole run stays under 8 minutes.
#
#   here, once:        bash ci/fetch_wheels.sh          (GeomLoss + flash-sinkhorn into .whl/)
#   device tool:       run(command="bash ci/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# The project runs from source (PYTHONPATH=.) on the machine's own PyTorch/Triton; peers that
# are missing (no .whl/, or a wheel that does not import) are skipped by the benchmark.
# Writes into $OUT: env.txt, tests.log, bench.log, bench.json, bench.md, summary.txt.
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
TOTAL_S=${GPU_CHECK_TOTAL_S:-460}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elapsed() { echo $(( $(date +%s) - T0 )); }

# 1. comparison peers, carried as wheels (optional)
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/peers .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/peers"
  else
    echo "peer wheels did not install; continuing without them"
  fi
fi

# 2. environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('triton', triton.__version__)"
  for m in geomloss flash_sinkhorn; do
    "$PY" -c "import $m; print('$m', getattr($m, '__version__', '?'))" 2>&1 | tail -1
  done
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 3. the kernel tests on CUDA (exact fp32 products for tight tolerances; first config only —
#    every config is checked by the sweep in step 4)
CMA_TRITON_DOT_PRECISION=ieee CMA_TRITON_AUTOTUNE=0 timeout 200 "$PY" -m pytest \
  tests/test_triton_kernels.py tests/test_triton_sinkhorn.py -q -p no:cacheprovider \
  --durations=10 2>&1 | tee "$OUT/tests.log"
TESTS_RC=${PIPESTATUS[0]}
echo "tests rc=$TESTS_RC after $(elapsed)s"

# 4. config sweep, fused-path memory check, timings (budget = what is left, minus a margin)
LEFT=$(( TOTAL_S - $(elapsed) ))
(( LEFT < 90 )) && LEFT=90
BUDGET=$(( LEFT - 120 ))
(( BUDGET < 60 )) && BUDGET=60
timeout "$LEFT" "$PY" ci/gpu_bench.py --out "$OUT" --budget-s "$BUDGET" 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}

echo "tests_rc=$TESTS_RC bench_rc=$BENCH_RC seconds=$(elapsed)" | tee "$OUT/summary.txt"
[[ $TESTS_RC == 0 && $BENCH_RC == 0 ]]
