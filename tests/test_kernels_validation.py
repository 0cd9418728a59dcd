"""Input validation (every bad input is a ValueError naming the argument) and the small
reference functions: pairwise_sqdist, centroid_stats, epsilon_schedule (issue #2)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cma_kernels as ck

F64 = torch.float64

# every public function taking two clouds, called with otherwise valid arguments
CLOUD_FUNCTIONS = {
    "sinkhorn_divergence": lambda x, y: ck.sinkhorn_divergence(x, y, blur=0.5, backend="reference"),
    "pairwise_sqdist": lambda x, y: ck.pairwise_sqdist(x, y, backend="reference"),
    "centroid_stats": lambda x, y: ck.centroid_stats(x, y, backend="reference"),
    "gap_terms": lambda x, y: ck.gap_terms(x, y, blur=0.5, backend="reference"),
    "distribution_gap_loss": lambda x, y: ck.distribution_gap_loss(
        x, y, blur=0.5, backend="reference"
    ),
}

# functions taking weights a, b
WEIGHT_FUNCTIONS = {
    "sinkhorn_divergence": lambda x, y, a, b: ck.sinkhorn_divergence(
        x, y, a, b, blur=0.5, backend="reference"
    ),
    "centroid_stats": lambda x, y, a, b: ck.centroid_stats(x, y, a, b, backend="reference"),
    "gap_terms": lambda x, y, a, b: ck.gap_terms(x, y, a, b, blur=0.5, backend="reference"),
    "distribution_gap_loss": lambda x, y, a, b: ck.distribution_gap_loss(
        x, y, a=a, b=b, blur=0.5, backend="reference"
    ),
}

# functions taking solver options
SOLVER_FUNCTIONS = {
    "sinkhorn_divergence": lambda x, y, **kw: ck.sinkhorn_divergence(
        x, y, backend="reference", **kw
    ),
    "gap_terms": lambda x, y, **kw: ck.gap_terms(x, y, backend="reference", **kw),
    "distribution_gap_loss": lambda x, y, **kw: ck.distribution_gap_loss(
        x, y, backend="reference", **kw
    ),
}


def _good(n: int = 5, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _with_value(value: float) -> torch.Tensor:
    x = _good()
    x[2, 1] = value
    return x


BAD_CLOUDS = {
    "nan": lambda: _with_value(float("nan")),
    "inf": lambda: _with_value(float("inf")),
    "-inf": lambda: _with_value(float("-inf")),
    "no points": lambda: torch.empty(0, 3),
    "no features": lambda: torch.empty(5, 0),
    "1-D": lambda: torch.randn(5),
    "4-D": lambda: torch.randn(2, 2, 5, 3),
    "0-D": lambda: torch.tensor(1.0),
    "int64": lambda: torch.ones(5, 3, dtype=torch.int64),
    "int32": lambda: torch.ones(5, 3, dtype=torch.int32),
    "bool": lambda: torch.ones(5, 3, dtype=torch.bool),
    "complex": lambda: torch.ones(5, 3, dtype=torch.complex64),
    "numpy": lambda: np.ones((5, 3), dtype=np.float32),
    "list": lambda: [[0.0, 1.0, 2.0]] * 5,
    "None": lambda: None,
}


@pytest.mark.parametrize("func", CLOUD_FUNCTIONS)
@pytest.mark.parametrize("bad", BAD_CLOUDS)
@pytest.mark.parametrize("position", ["x", "y"])
def test_bad_cloud_raises_naming_it(func: str, bad: str, position: str) -> None:
    good, broken = _good(), BAD_CLOUDS[bad]()
    args = (broken, good) if position == "x" else (good, broken)
    with pytest.raises(ValueError, match=rf"^{position}:"):
        CLOUD_FUNCTIONS[func](*args)


@pytest.mark.parametrize("func", CLOUD_FUNCTIONS)
def test_feature_dimension_mismatch_raises(func: str) -> None:
    with pytest.raises(ValueError, match=r"^y:.*dimension") as info:
        CLOUD_FUNCTIONS[func](_good(5, 3), _good(4, 2))
    assert "x" in str(info.value)


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n)


BAD_WEIGHTS = {
    "negative": lambda n: torch.tensor([-0.1, 0.6] + [0.5 / (n - 2)] * (n - 2)),
    "sums to 0.5": lambda n: _uniform(n) / 2,
    "sums to 2": lambda n: _uniform(n) * 2,
    "all zero": lambda n: torch.zeros(n),
    "too long": lambda n: _uniform(n + 1),
    "too short": lambda n: _uniform(n - 1),
    "2-D": lambda n: _uniform(n)[:, None],
    "0-D": lambda n: torch.tensor(1.0),
    "nan": lambda n: torch.tensor([float("nan")] + [1.0 / (n - 1)] * (n - 1)),
    "inf": lambda n: torch.tensor([float("inf")] + [0.0] * (n - 1)),
    "integer": lambda n: torch.tensor([1] + [0] * (n - 1)),
    "list": lambda n: [1.0 / n] * n,
}


@pytest.mark.parametrize("func", WEIGHT_FUNCTIONS)
@pytest.mark.parametrize("bad", BAD_WEIGHTS)
@pytest.mark.parametrize("which", ["a", "b"])
def test_bad_weights_raise_naming_them(func: str, bad: str, which: str) -> None:
    x, y = _good(5, 3), _good(4, 3, seed=1)
    a = BAD_WEIGHTS[bad](5) if which == "a" else None
    b = BAD_WEIGHTS[bad](4) if which == "b" else None
    with pytest.raises(ValueError, match=rf"^{which}:"):
        WEIGHT_FUNCTIONS[func](x, y, a, b)


def test_weights_within_tolerance_are_renormalised() -> None:
    """Weights that pass the sum check (e.g. float32 weights for float64 points, or off by
    a few 1e-4) must behave exactly like the normalised weights: same value, and a solver that
    still meets a tight tolerance (an unbalanced problem never would)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((30, 3)) * 0.5)
    y = torch.from_numpy(rng.standard_normal((20, 3)) * 0.5 + 0.3)
    a = torch.from_numpy(rng.dirichlet(np.ones(30)))
    b = torch.from_numpy(rng.dirichlet(np.ones(20)))
    kw = {"blur": 0.5, "tol": 1e-10, "max_iter": 20_000, "backend": "reference"}
    for a_off, b_off in ((a.float(), b.float()), (a * (1 + 5e-4), b), (a, b * (1 - 5e-4))):
        a64, b64 = a_off.double(), b_off.double()
        want = float(ck.sinkhorn_divergence(x, y, a64 / a64.sum(), b64 / b64.sum(), **kw))
        got = float(ck.sinkhorn_divergence(x, y, a_off, b_off, **kw))
        assert got == pytest.approx(want, rel=1e-8, abs=1e-12)
    stats = ck.centroid_stats(x, y, a * (1 + 5e-4), b, backend="reference")
    torch.testing.assert_close(stats.mu_x, a @ x / a.sum())


@pytest.mark.parametrize("func", SOLVER_FUNCTIONS)
@pytest.mark.parametrize(
    "blur", [0.0, -0.5, float("nan"), float("inf"), float("-inf"), True, "0.1", None]
)
def test_bad_blur_raises(func: str, blur) -> None:
    with pytest.raises(ValueError, match=r"^blur:"):
        SOLVER_FUNCTIONS[func](_good(), _good(seed=1), blur=blur)


@pytest.mark.parametrize("func", SOLVER_FUNCTIONS)
@pytest.mark.parametrize("scaling", [0.0, 1.0, 1.5, -0.5, float("nan"), float("inf"), "0.5"])
def test_bad_scaling_raises(func: str, scaling) -> None:
    with pytest.raises(ValueError, match=r"^scaling:"):
        SOLVER_FUNCTIONS[func](_good(), _good(seed=1), blur=0.5, scaling=scaling)


@pytest.mark.parametrize("func", SOLVER_FUNCTIONS)
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tol", 0.0),
        ("tol", -1e-3),
        ("tol", float("nan")),
        ("max_iter", 0),
        ("max_iter", -3),
        ("max_iter", 2.5),
        ("max_iter", True),
    ],
)
def test_bad_solver_options_raise(func: str, name: str, value) -> None:
    with pytest.raises(ValueError, match=rf"^{name}:"):
        SOLVER_FUNCTIONS[func](_good(), _good(seed=1), blur=0.5, **{name: value})


def test_bad_shift_and_strategy_raise() -> None:
    x, y = _good(), _good(seed=1)
    for shift in (torch.zeros(2), torch.zeros(1, 3), [0.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match=r"^shift:"):
            ck.sinkhorn_divergence(x, y, shift=shift, backend="reference")
    with pytest.raises(ValueError, match=r"^strategy:"):
        ck.sinkhorn_divergence(x, y, strategy="blocked", backend="reference")


def test_valid_edge_inputs_are_accepted() -> None:
    """Single points, d = 1, zero weights and mixed float dtypes are all fine."""
    one = torch.tensor([[0.5]])
    assert float(ck.sinkhorn_divergence(one, one + 1, blur=0.5, backend="reference")) == (
        pytest.approx(1.0, rel=1e-5)
    )
    a = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0])
    value = ck.sinkhorn_divergence(_good(), _good(seed=1), a, blur=0.5, backend="reference")
    assert torch.isfinite(value)
    mixed = ck.sinkhorn_divergence(_good().double(), _good(seed=1), blur=0.5, backend="reference")
    assert mixed.dtype == F64


# ------------------------------------------------------------------------------------------
# pairwise_sqdist, centroid_stats, epsilon_schedule
# ------------------------------------------------------------------------------------------


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 70),
    st.integers(1, 70),
    st.integers(1, 40),
    st.floats(0.01, 100.0),
)
def test_pairwise_sqdist_equals_cdist_squared(seed, n, m, d, scale) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64) * scale
    y = torch.randn(m, d, generator=g, dtype=F64) * scale + scale
    c = ck.pairwise_sqdist(x, y, backend="reference")
    assert c.shape == (n, m) and c.dtype == F64
    assert bool((c >= 0).all())
    exact = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # no cancellation
    atol = 1e-12 * float(torch.cat([x, y]).pow(2).sum(1).max())
    torch.testing.assert_close(c, torch.cdist(x, y) ** 2, rtol=1e-9, atol=atol)
    torch.testing.assert_close(c, exact, rtol=1e-9, atol=atol)
    c32 = ck.pairwise_sqdist(x.float(), y.float(), backend="reference")
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.double(), exact, rtol=1e-4, atol=1e-5 * atol * 1e12)


def test_pairwise_sqdist_of_a_cloud_with_itself() -> None:
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(3), dtype=F64)
    c = ck.pairwise_sqdist(x, x, backend="reference")
    assert bool((c >= 0).all())
    assert float(c.diagonal().abs().max()) <= 1e-12
    torch.testing.assert_close(c, c.T)


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 40), st.integers(1, 16))
def test_centroid_stats_equal_hand_written_weighted_means(seed, n, m, d) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 0.5
    a, b = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(m))
    a, b = a / a.sum(), b / b.sum()
    mu_x = [sum(a[i] * x[i, k] for i in range(n)) for k in range(d)]
    mu_y = [sum(b[j] * y[j, k] for j in range(m)) for k in range(d)]
    gap2 = sum((u - v) ** 2 for u, v in zip(mu_x, mu_y, strict=True))

    t = torch.from_numpy
    stats = ck.centroid_stats(t(x), t(y), t(a), t(b), backend="reference")
    np.testing.assert_allclose(stats.mu_x.numpy(), mu_x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.mu_y.numpy(), mu_y, rtol=1e-12, atol=1e-14)
    assert float(stats.gap2) == pytest.approx(gap2, rel=1e-10, abs=1e-14)
    assert stats.gap2.dim() == 0

    uniform = ck.centroid_stats(t(x), t(y), backend="reference")
    np.testing.assert_allclose(uniform.mu_x.numpy(), x.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(uniform.mu_y.numpy(), y.mean(0), rtol=1e-12, atol=1e-14)


def test_centroid_stats_are_differentiable() -> None:
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    y = torch.randn(4, 3, dtype=F64, requires_grad=True)
    a = torch.tensor([0.1, 0.2, 0.3, 0.1, 0.2, 0.1], dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x, y: tuple(ck.centroid_stats(x, y, a, backend="reference")), (x, y)
    )


def test_centroid_stats_scan_the_clouds_only_for_a_bad_result(monkeypatch) -> None:
    """The means are the NaN/Inf probe: clean clouds get no extra pass over their values, and a
    bad point (even one with zero weight) is still found and named."""
    from cma_kernels import _checks

    scanned: list[tuple[str, ...]] = []
    real = _checks.check_data

    def spy(clouds, weights):
        scanned.append(tuple(clouds))
        return real(clouds, weights)

    monkeypatch.setattr(_checks, "check_data", spy)
    x, y = torch.randn(50, 7), torch.randn(40, 7)
    ck.centroid_stats(x, y, backend="reference")
    assert scanned == []
    a = torch.full((50,), 1 / 50)
    ck.centroid_stats(x, y, a, backend="reference")
    assert scanned == [()]  # the weights' own checks, no cloud scan
    x[7, 3], a[7] = float("inf"), 0.0
    a = a / a.sum()
    with pytest.raises(ValueError, match=r"x: contains NaN or Inf values \(in 1 of 50 rows\)"):
        ck.centroid_stats(x, y, a, backend="reference")
    assert scanned[-1] == ("x", "y")


@given(st.floats(0.0, 100.0), st.floats(1e-3, 10.0), st.floats(0.05, 0.95))
def test_epsilon_schedule(diameter: float, blur: float, scaling: float) -> None:
    eps = ck.epsilon_schedule(diameter, blur, scaling)
    assert eps[0] >= blur**2
    assert eps[0] == pytest.approx(max(diameter, blur) ** 2, rel=1e-12)
    assert eps[-1] == blur**2  # exactly
    assert all(e > 0 and math.isfinite(e) for e in eps)
    for big, small in itertools.pairwise(eps[:-1]):
        assert small / big == pytest.approx(scaling**2, rel=1e-9)  # geometric by scaling²
    if len(eps) > 1:
        ratio = eps[-1] / eps[-2]
        assert scaling**2 * (1 - 1e-9) <= ratio <= 1.0 + 1e-12  # last step no larger
        assert eps[-2] > blur**2 * (1 - 1e-9)  # and no step beyond blur²
    assert len(eps) <= 2 + math.ceil(math.log(max(diameter, blur) / blur) / -math.log(scaling))
