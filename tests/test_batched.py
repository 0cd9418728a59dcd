"""Batched clouds (B, N, d): one solve equals the loop over the batch items (issue #15).

The batched solve shares one ε-schedule (from the largest diameter in the batch) and stops when
every item meets ``tol``, so items converge along different paths than alone: with a tight
``tol`` in float64 the values and gradients agree to 1e-9 (relative). The Triton path runs
under the interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py``) on tiny shapes.
"""

from __future__ import annotations

import pytest
import torch

import cma_kernels as ck

F64 = torch.float64
TIGHT = {"tol": 1e-11, "max_iter": 100_000}


def batch(b: int, n: int, m: int, d: int, seed: int, dtype: torch.dtype = F64):
    """x (b, n, d), y (b, m, d) with items at different scales and offsets; random weights."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, b, dtype=dtype).view(b, 1, 1)
    x = scale * torch.randn(b, n, d, generator=g, dtype=dtype)
    y = scale * (torch.randn(b, m, d, generator=g, dtype=dtype) + 0.4)
    a = torch.rand(b, n, generator=g, dtype=dtype) + 0.2
    w = torch.rand(b, m, generator=g, dtype=dtype) + 0.2
    return x, y, a / a.sum(-1, keepdim=True), w / w.sum(-1, keepdim=True)


def with_grads(fn, x: torch.Tensor, y: torch.Tensor):
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = fn(xg, yg)
    gx, gy = torch.autograd.grad(value.sum(), (xg, yg))
    return value.detach(), gx, gy


def looped(fn, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None):
    """(values (B,), grads) of ``fn`` applied item by item to 2-D clouds."""
    out = [
        with_grads(
            lambda xi, yi, i=i: fn(
                xi, yi, None if a is None else a[i], None if b is None else b[i]
            ),
            x[i],
            y[i],
        )
        for i in range(x.shape[0])
    ]
    return (
        torch.stack([o[0] for o in out]),
        torch.stack([o[1] for o in out]),
        torch.stack([o[2] for o in out]),
    )


def assert_close(batched, loop, rtol: float) -> None:
    for u, v in zip(batched, loop, strict=True):
        assert u.shape == v.shape
        assert float((u - v).norm()) <= rtol * float(v.norm())


@pytest.mark.parametrize(
    ("reach", "debias", "weighted"),
    [(None, True, False), (None, True, True), (1.5, True, True), (0.7, False, False),
     (None, False, True)],
)  # fmt: skip
def test_sinkhorn_divergence_batched_equals_loop(reach, debias, weighted):
    x, y, a, b = batch(3, 10, 7, 3, seed=1)
    a, b = (a, b) if weighted else (None, None)

    def fn(xi, yi, ai, bi):
        return ck.sinkhorn_divergence(xi, yi, ai, bi, blur=0.4, reach=reach, debias=debias, **TIGHT)

    batched = with_grads(lambda xg, yg: fn(xg, yg, a, b), x, y)
    assert batched[0].shape == (3,)
    assert_close(batched, looped(fn, x, y, a, b), 1e-9)


@pytest.mark.parametrize("reach", [None, 1.0])
def test_gap_functions_batched_equal_loop(reach):
    """centroid_stats, gap_terms and distribution_gap_loss on (B, N, d) = the per-item loop."""
    x, y, a, b = batch(3, 9, 9, 4, seed=2)
    stats = ck.centroid_stats(x, y, a, b)
    for i in range(3):
        one = ck.centroid_stats(x[i], y[i], a[i], b[i])
        for u, v in zip(stats, one, strict=True):
            assert torch.allclose(u[i], v, rtol=1e-12, atol=1e-14)

    def terms(xi, yi, ai, bi):
        t = ck.gap_terms(xi, yi, ai, bi, blur=0.5, reach=reach, **TIGHT)
        return t.centroid + 2.0 * t.distribution  # both terms reach the gradient

    assert_close(with_grads(lambda xg, yg: terms(xg, yg, a, b), x, y), looped(terms, x, y, a, b),
                 1e-9)  # fmt: skip

    def loss(xi, yi, ai, bi):
        return ck.distribution_gap_loss(
            xi, yi, a=ai, b=bi, lambda_centroid=0.3, blur=0.5, reach=reach, **TIGHT
        )

    assert_close(with_grads(lambda xg, yg: loss(xg, yg, a, b), x, y), looped(loss, x, y, a, b),
                 1e-9)  # fmt: skip


@pytest.mark.parametrize("loss", ["sinkhorn", "gaussian"])
@pytest.mark.parametrize("reach", [None, 0.8])
def test_samples_loss_batched_equals_loop(loss, reach):
    x, y, a, b = batch(4, 8, 6, 3, seed=3)
    fn_loss = ck.SamplesLoss(loss, blur=0.5, reach=reach, **TIGHT)

    def fn(xi, yi, ai, bi):
        return fn_loss(ai, xi, bi, yi)

    batched = with_grads(lambda xg, yg: fn(xg, yg, a, b), x, y)
    assert batched[0].shape == (4,)
    assert_close(batched, looped(fn, x, y, a, b), 1e-9)
    pot = ck.SamplesLoss(loss, blur=0.5, reach=reach, potentials=True, **TIGHT)
    f, g = pot(a, x, b, y)
    assert f.shape == (4, 8) and g.shape == (4, 6)
    f0, g0 = pot(a[1], x[1], b[1], y[1])
    shift = float((f[1] - f0).mean()) if loss == "sinkhorn" and reach is None else 0.0
    assert torch.allclose(f[1] - shift, f0, atol=1e-8) and torch.allclose(
        g[1] + shift, g0, atol=1e-8
    )


@pytest.mark.triton
@pytest.mark.parametrize("reach", [None, 0.9])
def test_triton_batched_matches_reference(reach):
    """Triton (interpreted) on a batched, weighted problem = the reference, value and gradient.

    float32; tolerances 1e-4 (value) and 1e-3 (gradient, relative norm) at tol 1e-6.
    """
    x, y, a, b = batch(2, 6, 5, 4, seed=4, dtype=torch.float32)

    def fn(backend: str):
        def run(xg, yg):
            return ck.sinkhorn_divergence(
                xg, yg, a, b, blur=0.6, reach=reach, tol=1e-6, backend=backend
            )

        return with_grads(run, x, y)

    ref, tri = fn("reference"), fn("triton")
    assert tri[0].shape == (2,)
    assert torch.allclose(tri[0], ref[0], rtol=1e-4, atol=1e-6)
    assert_close(tri[1:], ref[1:], 1e-3)
