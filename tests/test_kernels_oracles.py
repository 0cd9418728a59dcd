"""The reference solver against oracles that share no code with it (issue #2).

1. exact optimal assignment (scipy ``linear_sum_assignment``) as blur → 0;
2. a plain dense log-domain Sinkhorn in numpy, alternating updates at a fixed ε;
3. d = 1: the closed-form W2² between sorted samples.

For uniform weights on n points and any ε, with W2² the optimal assignment cost,
W2² ≤ OT_ε ≤ W2² + ε·log n (the permutation plan is feasible, KL(P‖a⊗b) ∈ [0, log n]);
on well-separated points the entropic plan is the permutation up to e^{−gap/ε}, so
OT_ε = W2² + ε·log n to many digits.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

import cma_kernels as ck

F64 = torch.float64
TOL = 1e-10
MAX_ITER = 20_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ot(x: np.ndarray, y: np.ndarray, blur: float, a=None, b=None, debias=False) -> float:
    t = lambda v: None if v is None else torch.from_numpy(v)  # noqa: E731
    return float(
        ck.sinkhorn_divergence(
            torch.from_numpy(x),
            torch.from_numpy(y),
            t(a),
            t(b),
            blur=blur,
            debias=debias,
            tol=TOL,
            max_iter=MAX_ITER,
            backend="reference",
        )
    )


def _cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


# ------------------------------------------------------------------------------------------
# 1. exact assignment
# ------------------------------------------------------------------------------------------


def _separated_pair(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """x on a jittered lattice (spacing 0.3), y a jittered random permutation of x."""
    rng = np.random.default_rng(seed)
    side = math.ceil(n ** (1.0 / d)) + 1
    lattice = np.array(list(itertools.product(range(side), repeat=d)), dtype=np.float64)
    x = 0.3 * lattice[rng.choice(len(lattice), n, replace=False)]
    x += rng.uniform(-0.03, 0.03, x.shape)
    y = x[rng.permutation(n)] + rng.uniform(-0.05, 0.05, x.shape)
    return x, y


@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 8),
    st.integers(1, 4),
    st.sampled_from([0.01, 0.02]),
)
def test_ot_tends_to_the_optimal_assignment(seed: int, n: int, d: int, blur: float) -> None:
    x, y = _separated_pair(seed, n, d)
    c = _cost(x, y)
    rows, cols = linear_sum_assignment(c)
    w2 = c[rows, cols].mean()
    eps = blur * blur
    ot = _ot(x, y, blur)
    slack = 1e-9
    assert w2 - slack <= ot <= w2 + eps * math.log(n) + slack, (ot, w2, eps * math.log(n))
    # well separated: the entropic plan is the permutation, OT_ε = W2² + ε·log n
    assert abs(ot - (w2 + eps * math.log(n))) <= 1e-3 * eps * math.log(n), (ot, w2)


def test_ot_converges_to_the_assignment_as_blur_shrinks() -> None:
    x, y = _separated_pair(3, 6, 2)
    c = _cost(x, y)
    rows, cols = linear_sum_assignment(c)
    w2 = c[rows, cols].mean()
    gaps = [_ot(x, y, blur) - w2 for blur in (0.08, 0.04, 0.02, 0.01)]
    assert all(g >= -1e-9 for g in gaps)
    assert all(g1 > g2 for g1, g2 in itertools.pairwise(gaps)), gaps
    assert gaps[-1] <= 1e-4 * math.log(6) + 1e-9


# ------------------------------------------------------------------------------------------
# 2. plain dense log-domain Sinkhorn at fixed ε
# ------------------------------------------------------------------------------------------


def _plain_sinkhorn(x, y, a, b, eps, iters=20_000, tol=1e-13):
    """Alternating f = softmin(g), g = softmin(f) at fixed ε; returns (OT_ε, plan P).

    Stops when the plan's row marginal is off by less than ``tol`` in L1 (the columns are
    exact after each g-update).
    """
    c = _cost(x, y)
    log_a, log_b = np.log(a), np.log(b)
    f = np.zeros(len(a))
    g = np.zeros(len(b))
    for _ in range(iters):
        g = -eps * logsumexp(log_a[:, None] + (f[:, None] - c) / eps, axis=0)
        f_new = -eps * logsumexp(log_b[None, :] + (g[None, :] - c) / eps, axis=1)
        done = a @ np.abs(np.expm1((f - f_new) / eps)) < tol
        f = f_new
        if done:
            break
    g = -eps * logsumexp(log_a[:, None] + (f[:, None] - c) / eps, axis=0)
    plan = np.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - c) / eps)
    assert np.abs(plan.sum(1) - a).sum() < 1e-11, "oracle did not converge"
    assert np.abs(plan.sum(0) - b).sum() < 1e-12
    return float(a @ f + b @ g), plan


def _unit_ball(rng, n, d, scale):
    z = rng.standard_normal((n, d)) * scale / math.sqrt(d)
    return z / np.maximum(1.0, np.linalg.norm(z, axis=1, keepdims=True))


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 8),
    st.sampled_from([0.3, 0.5, 1.0]),
    st.sampled_from([0.5, 1.0, 1.25]),
    st.booleans(),
)
def test_matches_a_plain_log_domain_sinkhorn(seed, n, m, d, blur, radius, weighted) -> None:
    """Clouds of radius ``radius``·blur: at fixed ε (no annealing) plain Sinkhorn converges."""
    rng = np.random.default_rng(seed)
    x = _unit_ball(rng, n, d, 1.0) * radius * blur
    y = (_unit_ball(rng, m, d, 0.8) + 0.3 / math.sqrt(d)) * radius * blur
    a = rng.dirichlet(np.ones(n)) if weighted else np.full(n, 1.0 / n)
    b = rng.dirichlet(np.ones(m)) if weighted else np.full(m, 1.0 / m)
    a, b = a / a.sum(), b / b.sum()
    eps = blur * blur

    ot_xy, p_xy = _plain_sinkhorn(x, y, a, b, eps)
    ot_xx, p_xx = _plain_sinkhorn(x, x, a, a, eps)
    ot_yy, p_yy = _plain_sinkhorn(y, y, b, b, eps)
    s_oracle = ot_xy - 0.5 * ot_xx - 0.5 * ot_yy

    ot = _ot(x, y, blur, a, b, debias=False)
    s = _ot(x, y, blur, a, b, debias=True)
    # the solver stops at marginal error ≤ TOL, which moves the dual value by O(ε·TOL)
    floor = 10 * eps * TOL
    assert abs(ot - ot_xy) <= 1e-8 * abs(ot_xy) + floor, (ot, ot_xy)
    assert abs(s - s_oracle) <= 1e-8 * abs(s_oracle) + floor, (s, s_oracle)

    # envelope gradients from the oracle's plans:
    # ∂OT(x,y)/∂x_i = 2 Σ_j P_ij (x_i − y_j);
    # OT(x,x) moves both arguments: ∂/∂x_i = 4 Σ_j P^xx_ij (x_i − x_j)
    g_ot_x = 2 * (p_xy.sum(1)[:, None] * x - p_xy @ y)
    g_ot_y = 2 * (p_xy.sum(0)[:, None] * y - p_xy.T @ x)
    g_xx = 4 * (p_xx.sum(1)[:, None] * x - p_xx @ x)
    g_yy = 4 * (p_yy.sum(1)[:, None] * y - p_yy @ y)
    g_s_x = g_ot_x - 0.5 * g_xx
    g_s_y = g_ot_y - 0.5 * g_yy

    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.from_numpy(y).requires_grad_()
    for debias, (want_x, want_y) in ((False, (g_ot_x, g_ot_y)), (True, (g_s_x, g_s_y))):
        value = ck.sinkhorn_divergence(
            xt,
            yt,
            torch.from_numpy(a),
            torch.from_numpy(b),
            blur=blur,
            debias=debias,
            tol=TOL,
            max_iter=MAX_ITER,
            backend="reference",
        )
        gx, gy = torch.autograd.grad(value, (xt, yt))
        scale = max(np.abs(want_x).max(), np.abs(want_y).max(), 1e-3)
        np.testing.assert_allclose(gx.numpy(), want_x, rtol=0, atol=1e-7 * scale)
        np.testing.assert_allclose(gy.numpy(), want_y, rtol=0, atol=1e-7 * scale)


# ------------------------------------------------------------------------------------------
# 3. d = 1: sorted samples
# ------------------------------------------------------------------------------------------


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 16),
    st.floats(-1.0, 1.0),
    st.sampled_from([0.01, 0.02]),
)
def test_one_dimensional_ot_matches_sorted_matching(seed, n, offset, blur) -> None:
    """W2² = (1/n) Σ (x_(i) − y_(i))² for equal sizes and uniform weights in 1-D."""
    rng = np.random.default_rng(seed)
    x = 0.25 * rng.permutation(n) + rng.uniform(-0.03, 0.03, n)
    y = 0.25 * rng.permutation(n) + offset + rng.uniform(-0.03, 0.03, n)
    w2 = float(np.mean((np.sort(x) - np.sort(y)) ** 2))
    eps = blur * blur
    ot = _ot(x[:, None], y[:, None], blur)
    log_n = math.log(n)
    assert w2 - 1e-9 <= ot <= w2 + eps * log_n + 1e-9, (ot, w2)
    assert abs(ot - (w2 + eps * log_n)) <= 1e-3 * eps * log_n + 1e-9, (ot, w2)


@pytest.mark.parametrize("strategy", ["tensorized", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cost_reductions_at_a_huge_dynamic_range_match_scipy(strategy, dtype) -> None:
    """Scores spanning ~10⁴ (most e^{−C/ε} underflow): the operators' soft-min and barycenters
    equal scipy's float64 log-sum-exp / softmax (the EXP_FLOOR clamp changes no digit), and
    the plans they multiply hold no subnormal value (what makes a CPU GEMM slow)."""
    from cma_kernels import reference as ref

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(37, 5)), rng.normal(size=(29, 5))
    h, g = rng.normal(size=29), rng.normal(size=37)
    eps = 1e-3
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    t = lambda a: torch.tensor(a, dtype=dtype).unsqueeze(0)  # noqa: E731
    op = ref.make_cost(t(x), t(y), strategy=strategy)
    rows, cols = h[None] - cost / eps, g[:, None] - cost / eps
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(op.softmin_rows(t(h), eps)[0], -eps * logsumexp(rows, 1), rtol)
    np.testing.assert_allclose(op.softmin_cols(t(g), eps)[0], -eps * logsumexp(cols, 0), rtol)
    p_rows = np.exp(rows - logsumexp(rows, 1, keepdims=True))
    p_cols = np.exp(cols - logsumexp(cols, 0, keepdims=True))
    np.testing.assert_allclose(op.barycenter_rows(t(h), eps)[0], p_rows @ y, rtol, 1e-7)
    np.testing.assert_allclose(op.barycenter_cols(t(g), eps)[0], p_cols.T @ x, rtol, 1e-7)
    plan = torch.tensor(rows, dtype=dtype)
    ref.exp_from_peak_(plan, -1)
    tiny = torch.finfo(dtype).tiny
    assert (plan >= tiny).all()  # no 0 … tiny subnormals: every entry ≥ e^{EXP_FLOOR}
    assert float(plan.max()) == 1.0
