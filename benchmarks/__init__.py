"""Benchmarks of ``cma_kernels`` against GeomLoss, POT and flash-sinkhorn (issue #8).

Run ``pytest benchmarks/ --benchmark-only --benchmark-json=bench.json`` from the repository root,
then ``python -m benchmarks.report bench.json --out docs/benchmarks.md``. See
``benchmarks/README.md``.
"""
