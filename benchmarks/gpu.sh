#!/usr/bin/env bash
# The benchmark suite on a GPU (issue #8), for sessions lent the device; ≈ 8 minutes.
#
#   here, once:    bash benchmarks/fetch_wheels.sh      (pytest-benchmark, peers → .whl/bench/)
#   device tool:   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=560)
#   here, after:   python -m benchmarks.report <files_at>/bench-*.json --out docs/benchmarks.md \
#                      --png docs/benchmarks.png          (add the CPU JSON to get both tables)
#
# Runs from source (PYTHONPATH=.) on the machine's own PyTorch/Triton. Three pytest runs, each
# with its own time limit and JSON (a run cut by its limit loses only its own results):
# the default sizes (256–4096), the large sizes (CMA_BENCH_LARGE: 16384, 65536) and the
# training step (ViT-B/32, batch 1024, bf16 autocast). Peers that do not import are skipped.
# Writes into $OUT: env.txt, bench-*.log, bench-*.json, benchmarks.md, benchmarks.png.
set -uo pipefail
T0=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CMA_BENCH_DEVICE=cuda CMA_BENCH_PEER_TIMEOUT=${CMA_BENCH_PEER_TIMEOUT:-20}
export CMA_BENCH_CACHE=0
elapsed() { echo $(( $(date +%s) - T0 )); }

# 1. pytest-benchmark and the peers, carried as wheels
if compgen -G ".whl/bench/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/benchpkgs .whl/bench/*.whl || echo "some wheels did not install"
  export PYTHONPATH="$PYTHONPATH:/tmp/benchpkgs"
fi

# 2. environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, \
torch.cuda.get_device_name(0))"
  for m in triton pytest_benchmark geomloss ot flash_sinkhorn open_clip; do
    "$PY" -c "import $m; print('$m', getattr($m, '__version__', '?'))" 2>&1 | tail -1
  done
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

bench() {  # name, limit (s), extra pytest args...
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$PY" -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench-$name.json" "$@" 2>&1 | tail -40 | tee "$OUT/bench-$name.log"
  echo "$name rc=${PIPESTATUS[0]} after $(elapsed)s"
}

# 3. the three runs
bench default 200 -k "not training"
CMA_BENCH_LARGE=1 CMA_BENCH_SIZES=16384,65536 bench large 200 -k "not training"
bench train 90 -k training

# 4. the report
"$PY" -m benchmarks.report "$OUT"/bench-*.json --out "$OUT/benchmarks.md" \
  --png "$OUT/benchmarks.png" || echo "report failed"
echo "done after $(elapsed)s"
