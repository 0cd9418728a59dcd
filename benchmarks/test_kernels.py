"""Kernel benchmarks: our reference (tensorized, chunked) and Triton paths against the peers.

Each case records its median time (pytest-benchmark), its accuracy against float64 and its peak
memory (``benchmark.extra_info``); see ``benchmarks/README.md``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ._harness import BenchContext, params, run_case


@pytest.mark.parametrize(("backend", "n"), params("sqdist"))
def test_pairwise_sqdist(benchmark: Any, bench_ctx: BenchContext, backend: str, n: int) -> None:
    """The (N, M) squared-distance matrix."""
    run_case(benchmark, bench_ctx, "sqdist", backend, n)


@pytest.mark.parametrize(("backend", "n"), params("centroid"))
def test_centroid_stats(benchmark: Any, bench_ctx: BenchContext, backend: str, n: int) -> None:
    """Both means and the squared centroid gap."""
    run_case(benchmark, bench_ctx, "centroid", backend, n)


@pytest.mark.parametrize(("backend", "n"), params("sinkhorn"))
def test_sinkhorn_forward(benchmark: Any, bench_ctx: BenchContext, backend: str, n: int) -> None:
    """Debiased S_ε(x, y), value only."""
    run_case(benchmark, bench_ctx, "sinkhorn", backend, n)


@pytest.mark.parametrize(("backend", "n"), params("sinkhorn_grad"))
def test_sinkhorn_forward_backward(
    benchmark: Any, bench_ctx: BenchContext, backend: str, n: int
) -> None:
    """S_ε(x, y) and its gradient in x and y."""
    run_case(benchmark, bench_ctx, "sinkhorn_grad", backend, n)


@pytest.mark.parametrize(("backend", "n"), params("gap_loss"))
def test_distribution_gap_loss(
    benchmark: Any, bench_ctx: BenchContext, backend: str, n: int
) -> None:
    """G_C² + S_ε(x − μ_x, y − μ_y) and its gradient."""
    run_case(benchmark, bench_ctx, "gap_loss", backend, n)
