"""Gradients, chunked == tensorized, dtypes and double-backward of the reference path (issue #2).

Gradients come from the envelope theorem at converged potentials (SPEC §3); they are checked
with ``torch.autograd.gradcheck`` and against central finite differences of converged float64
values, which catches the "2·P" trap of differentiating both recomputed potentials.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cma_kernels as ck
from cma_kernels import reference

F64 = torch.float64
TIGHT = {"tol": 1e-12, "max_iter": 100_000, "backend": "reference"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ball(seed: int, n: int, d: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)) * scale / math.sqrt(d)
    z = z / np.maximum(1.0, np.linalg.norm(z, axis=1, keepdims=True))
    return torch.from_numpy(z + offset / math.sqrt(d))


def _dirichlet(seed: int, n: int) -> torch.Tensor:
    w = np.random.default_rng(seed).dirichlet(np.ones(n))
    return torch.from_numpy(w / w.sum())


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


# ------------------------------------------------------------------------------------------
# gradcheck (float64, tight tolerance)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize(("n", "m", "weighted"), [(5, 5, False), (5, 3, False), (4, 6, True)])
def test_gradcheck_sinkhorn_divergence(debias: bool, n: int, m: int, weighted: bool) -> None:
    x, y = _leaf(_ball(1, n, 3)), _leaf(_ball(2, m, 3, 0.8, 0.4))
    a = _dirichlet(3, n) if weighted else None
    b = _dirichlet(4, m) if weighted else None

    def fn(x, y):
        return ck.sinkhorn_divergence(x, y, a, b, blur=0.5, debias=debias, **TIGHT)

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_shift_argument() -> None:
    x, y = _leaf(_ball(5, 4, 2)), _leaf(_ball(6, 5, 2))
    shift = _leaf(torch.tensor([0.3, -0.2], dtype=F64))

    def fn(x, y, shift):
        return ck.sinkhorn_divergence(x, y, blur=0.7, shift=shift, **TIGHT)

    assert torch.autograd.gradcheck(fn, (x, y, shift), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_distribution_gap_loss_and_gap_terms(weighted: bool) -> None:
    """Non-trivial λ: the gradient must flow through the fused centring shift μ_x − μ_y."""
    n, m = 5, 4
    x, y = _leaf(_ball(7, n, 3)), _leaf(_ball(8, m, 3, 1.0, 0.6))
    a = _dirichlet(9, n) if weighted else None
    b = _dirichlet(10, m) if weighted else None

    def loss(x, y):
        return ck.distribution_gap_loss(
            x, y, lambda_centroid=0.3, lambda_distribution=2.5, blur=0.5, a=a, b=b, **TIGHT
        )

    def terms(x, y):
        return tuple(ck.gap_terms(x, y, a, b, blur=0.5, **TIGHT))

    assert torch.autograd.gradcheck(loss, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(terms, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# finite differences of a converged float64 value (the SPEC's trap)
# ------------------------------------------------------------------------------------------


def _directional_check(fn, x: torch.Tensor, y: torch.Tensor, seed: int, h: float = 1e-4) -> None:
    """⟨∇f, v⟩ == (f(z + h·v) − f(z − h·v)) / 2h for random directions in x and in y."""
    xl, yl = _leaf(x), _leaf(y)
    gx, gy = torch.autograd.grad(fn(xl, yl), (xl, yl))
    rng = np.random.default_rng(seed)
    for which in ("x", "y", "both"):
        vx = torch.from_numpy(rng.standard_normal(x.shape)) if which != "y" else torch.zeros_like(x)
        vy = torch.from_numpy(rng.standard_normal(y.shape)) if which != "x" else torch.zeros_like(y)
        with torch.no_grad():
            fd = (fn(x + h * vx, y + h * vy) - fn(x - h * vx, y - h * vy)) / (2 * h)
        analytic = (gx * vx).sum() + (gy * vy).sum()
        assert float(abs(analytic - fd)) <= 1e-6 * float(abs(fd)) + 1e-8, (which, analytic, fd)


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(debias: bool, weighted: bool) -> None:
    n, m, d = 12, 9, 4
    x, y = _ball(11, n, d), _ball(12, m, d, 1.2, 0.5)
    a = _dirichlet(13, n) if weighted else None
    b = _dirichlet(14, m) if weighted else None

    def fn(x, y):
        return ck.sinkhorn_divergence(x, y, a, b, blur=0.4, debias=debias, **TIGHT)

    _directional_check(fn, x, y, seed=15)


def test_gradient_magnitude_is_not_doubled() -> None:
    """Explicit check of the trap: the envelope gradient, not 2x it, on a single pair of points.

    For one point each, OT_ε = ‖x − y‖² exactly, so ∂OT/∂x = 2(x − y).
    """
    x = _leaf(torch.tensor([[0.3, -0.1]], dtype=F64))
    y = _leaf(torch.tensor([[-0.2, 0.4]], dtype=F64))
    value = ck.sinkhorn_divergence(x, y, blur=0.3, debias=False, **TIGHT)
    assert float(value.detach()) == pytest.approx(0.5, rel=1e-9)
    gx, gy = torch.autograd.grad(value, (x, y))
    torch.testing.assert_close(gx, 2 * (x - y).detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gy, 2 * (y - x).detach(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradient_matches_finite_differences(weighted: bool) -> None:
    n, m, d = 10, 8, 3
    x, y = _ball(21, n, d), _ball(22, m, d, 0.9, 0.7)
    a = _dirichlet(23, n) if weighted else None
    b = _dirichlet(24, m) if weighted else None

    def fn(x, y):
        return ck.distribution_gap_loss(
            x, y, lambda_centroid=1.7, lambda_distribution=0.4, blur=0.5, a=a, b=b, **TIGHT
        )

    _directional_check(fn, x, y, seed=25)


# ------------------------------------------------------------------------------------------
# chunked == tensorized
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_elements", [1, 25, 64])
@pytest.mark.parametrize("with_shift", [False, True])
@pytest.mark.parametrize("eps", [0.01, 0.3])
def test_chunked_primitives_match_tensorized(chunk_elements, with_shift, eps) -> None:
    """A batch of two different problems: chunked == tensorized == the explicit formulas."""
    n, m, d = 13, 10, 5
    x = torch.stack([_ball(31, n, d), _ball(34, n, d, 0.7)])
    y = torch.stack([_ball(32, m, d, 1.0, 0.3), _ball(35, m, d, 1.2, -0.2)])
    rng = np.random.default_rng(33)
    shift = torch.from_numpy(rng.uniform(-0.5, 0.5, (2, d))) if with_shift else None
    h_m = torch.from_numpy(rng.standard_normal((2, m)))  # indexed by y (rows reductions)
    h_n = torch.from_numpy(rng.standard_normal((2, n)))  # indexed by x (column reductions)

    dense = reference.TensorizedCost(x, y, shift)
    chunked = reference.ChunkedCost(x, y, shift, chunk_elements=chunk_elements)
    assert len(chunked._blocks(n, m)) > 1 and len(chunked._blocks(m, n)) > 1

    close = {"rtol": 1e-12, "atol": 1e-12}
    for name, h in (("softmin_rows", h_m), ("softmin_cols", h_n)):
        for kind in ("softmin", "barycenter"):
            method = name.replace("softmin", kind)
            torch.testing.assert_close(
                getattr(chunked, method)(h, eps), getattr(dense, method)(h, eps), **close
            )
    assert float(chunked.diameter()) == pytest.approx(float(dense.diameter()), rel=1e-12)
    assert chunked.passes == dense.passes == 4
    assert dense.cost_entries == 4 * 2 * n * m

    # and the tensorized ones are what their docstrings say, item by item, from explicit costs
    for i in range(2):
        y_s = y[i] if shift is None else y[i] + shift[i]
        c = ((x[i][:, None, :] - y_s[None, :, :]) ** 2).sum(-1)
        hm, hn = h_m[i], h_n[i]
        want_rows = -eps * torch.logsumexp(hm[None, :] - c / eps, 1)
        want_cols = -eps * torch.logsumexp(hn[:, None] - c / eps, 0)
        torch.testing.assert_close(dense.softmin_rows(h_m, eps)[i], want_rows, **close)
        torch.testing.assert_close(dense.softmin_cols(h_n, eps)[i], want_cols, **close)
        w = torch.softmax(hm[None, :] - c / eps, 1)
        torch.testing.assert_close(dense.barycenter_rows(h_m, eps)[i], w @ y_s, **close)
        w = torch.softmax(hn[:, None] - c / eps, 0)
        torch.testing.assert_close(dense.barycenter_cols(h_n, eps)[i], w.T @ x[i], **close)


def test_chunked_primitives_float32() -> None:
    x, y = _ball(34, 17, 6).float()[None], _ball(35, 11, 6, 1.0, 0.3).float()[None]
    h = torch.randn(1, 11, generator=torch.Generator().manual_seed(0))
    dense = reference.TensorizedCost(x, y)
    chunked = reference.ChunkedCost(x, y, chunk_elements=30)
    torch.testing.assert_close(chunked.softmin_rows(h, 0.05), dense.softmin_rows(h, 0.05))
    torch.testing.assert_close(chunked.barycenter_rows(h, 0.05), dense.barycenter_rows(h, 0.05))


@pytest.fixture
def small_chunks(monkeypatch):
    """Make ``strategy="chunked"`` build ChunkedCost with tiny blocks; counts the blocks used."""
    original = reference.ChunkedCost
    seen = []

    def factory(x, y, shift=None):
        cost = original(x, y, shift, chunk_elements=20)
        seen.append(len(cost._blocks(cost.n, cost.m)))
        return cost

    monkeypatch.setattr(reference, "ChunkedCost", factory)
    return seen


@pytest.mark.parametrize("debias", [True, False])
def test_chunked_strategy_end_to_end(small_chunks, debias: bool) -> None:
    n, m, d = 14, 11, 4
    x, y = _ball(41, n, d), _ball(42, m, d, 1.1, 0.5)
    a, b = _dirichlet(43, n), _dirichlet(44, m)
    shift = torch.tensor([0.1, -0.2, 0.05, 0.3], dtype=F64)
    results = {}
    for strategy in ("tensorized", "chunked"):
        xl, yl, sl = _leaf(x), _leaf(y), _leaf(shift)
        value = ck.sinkhorn_divergence(
            xl, yl, a, b, blur=0.3, debias=debias, shift=sl, strategy=strategy, **TIGHT
        )
        results[strategy] = (value.detach(), *torch.autograd.grad(value, (xl, yl, sl)))
    assert small_chunks and min(small_chunks) > 1, small_chunks  # really ran in many blocks
    for got, want in zip(results["chunked"], results["tensorized"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# dtypes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(low: torch.dtype) -> None:
    x16, y16 = _ball(51, 20, 8).to(low), _ball(52, 15, 8, 1.0, 0.5).to(low)
    kw = {"blur": 0.5, "tol": 1e-6, "backend": "reference"}

    x_lo, y_lo = _leaf(x16), _leaf(y16)
    value = ck.sinkhorn_divergence(x_lo, y_lo, **kw)
    assert value.dtype == torch.float32
    gx, gy = torch.autograd.grad(value, (x_lo, y_lo))
    assert gx.dtype == low and gy.dtype == low

    x32, y32 = _leaf(x16.float()), _leaf(y16.float())
    ref = ck.sinkhorn_divergence(x32, y32, **kw)
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-7)
    rx, ry = torch.autograd.grad(ref, (x32, y32))
    torch.testing.assert_close(gx, rx.to(low))
    torch.testing.assert_close(gy, ry.to(low))

    loss = ck.distribution_gap_loss(x16, y16, lambda_centroid=0.5, **kw)
    assert loss.dtype == torch.float32
    ref_loss = ck.distribution_gap_loss(x16.float(), y16.float(), lambda_centroid=0.5, **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)

    c = ck.pairwise_sqdist(x16, y16, backend="reference")
    assert c.dtype == torch.float32
    torch.testing.assert_close(c, ck.pairwise_sqdist(x16.float(), y16.float(), backend="reference"))
    stats = ck.centroid_stats(x16, y16, backend="reference")
    assert all(t.dtype == torch.float32 for t in stats)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_precision_dtypes_are_kept(dtype: torch.dtype) -> None:
    x, y = _leaf(_ball(53, 9, 3).to(dtype)), _leaf(_ball(54, 7, 3).to(dtype))
    value = ck.sinkhorn_divergence(x, y, blur=0.5, backend="reference")
    assert value.dtype == dtype and value.dim() == 0
    gx, gy = torch.autograd.grad(value, (x, y))
    assert gx.dtype == dtype and gy.dtype == dtype
    assert ck.distribution_gap_loss(x, y, blur=0.5, backend="reference").dtype == dtype
    assert ck.pairwise_sqdist(x, y, backend="reference").dtype == dtype
    assert all(t.dtype == dtype for t in ck.centroid_stats(x, y, backend="reference"))
    assert all(t.dtype == dtype for t in ck.gap_terms(x, y, blur=0.5, backend="reference"))


@pytest.mark.parametrize("weighted", [False, True])
def test_mixed_precision_inputs_compute_in_float64(weighted: bool) -> None:
    """float32 x with float64 y (either order) computes in float64, like float64 on both."""
    x64, y64 = _ball(55, 8, 3), _ball(56, 6, 3, 1.0, 0.4)
    a = _dirichlet(57, 8).float() if weighted else None
    b = _dirichlet(58, 6).float() if weighted else None
    kw = {"blur": 0.5, **TIGHT}
    for x, y in ((x64.float(), y64), (x64, y64.float())):
        xl, yl = _leaf(x), _leaf(y)
        value = ck.sinkhorn_divergence(xl, yl, a, b, **kw)
        assert value.dtype == F64
        want = ck.sinkhorn_divergence(x.double(), y.double(), a, b, **kw)
        torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-14)
        gx, gy = torch.autograd.grad(value, (xl, yl))
        assert gx.dtype == x.dtype and gy.dtype == y.dtype
        loss = ck.distribution_gap_loss(x, y, a=a, b=b, lambda_centroid=0.5, **kw)
        want = ck.distribution_gap_loss(x.double(), y.double(), a=a, b=b, lambda_centroid=0.5, **kw)
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
        stats = ck.centroid_stats(x, y, a, b, backend="reference")
        assert all(t.dtype == F64 for t in stats)


# ------------------------------------------------------------------------------------------
# second derivatives: documented as unsupported
# ------------------------------------------------------------------------------------------


def test_second_derivatives_are_not_supported() -> None:
    """The backward is an opaque op without its own autograd formula: double-backward raises."""
    x, y = _leaf(_ball(61, 5, 2)), _leaf(_ball(62, 4, 2))
    value = ck.sinkhorn_divergence(x, y, blur=0.5, **TIGHT)
    (gx,) = torch.autograd.grad(value, x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        torch.autograd.grad(gx.sum(), x)

    # first-order use with create_graph=False (the normal training path) is fine
    value = ck.distribution_gap_loss(x, y, blur=0.5, **TIGHT)
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
