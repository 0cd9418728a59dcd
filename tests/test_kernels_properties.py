"""Hypothesis properties of the reference Sinkhorn divergence (issue #2).

Every property is checked in float64 with a tight marginal tolerance, on clouds whose scale
is chosen against the blur so that Sinkhorn converges (the identities below only hold at
convergence): points lie in the unit ball (Gaussian clouds clipped radially, or normalised
embeddings as CLIP produces), blur ∈ {0.25, 0.5, 1}.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cma_kernels as ck

F64 = torch.float64
TOL = 1e-10
MAX_ITER = 20_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices on 2 shared cores: intra-op threads only add contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cloud(rng: np.random.Generator, n: int, d: int, kind: str, spread: float) -> np.ndarray:
    z = rng.standard_normal((n, d))
    if kind == "sphere":  # normalised embeddings, clustered around a random direction
        z = z + 2.0 * rng.standard_normal(d) / math.sqrt(d)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    z = z * spread / math.sqrt(d)  # unit-scale Gaussian, clipped to the unit ball
    return z / np.maximum(1.0, np.linalg.norm(z, axis=1, keepdims=True))


def _weights(rng: np.random.Generator, n: int, alpha: float) -> torch.Tensor:
    w = rng.dirichlet(np.full(n, alpha))
    return torch.from_numpy(w / w.sum())


class Problem(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor | None
    b: torch.Tensor | None
    blur: float


@st.composite
def problems(draw, weighted: bool | None = None, max_n: int = 64, max_d: int = 32) -> Problem:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    blur = draw(st.sampled_from([0.25, 0.5, 1.0]))
    kind = draw(st.sampled_from(["gauss", "sphere"]))
    spread = draw(st.floats(0.3, 1.5))
    offset = draw(st.floats(0.0, 0.5))
    use_w = draw(st.booleans()) if weighted is None else weighted
    alpha = draw(st.sampled_from([0.5, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    x = _cloud(rng, n, d, kind, spread)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    y = _cloud(rng, m, d, kind, spread * draw(st.floats(0.5, 1.5))) + offset * direction
    a = _weights(rng, n, alpha) if use_w else None
    b = _weights(rng, m, alpha) if use_w else None
    return Problem(torch.from_numpy(x), torch.from_numpy(y), a, b, blur)


def _s(x, y, a=None, b=None, *, blur, **kw):
    kw = {"tol": TOL, "max_iter": MAX_ITER, "backend": "reference", **kw}
    return float(ck.sinkhorn_divergence(x, y, a, b, blur=blur, **kw))


def _close(got: float, want: float, rel: float, abs_: float = 1e-10) -> bool:
    return abs(got - want) <= rel * abs(want) + abs_


# ------------------------------------------------------------------------------------------
# basic properties of S_ε
# ------------------------------------------------------------------------------------------


@given(problems())
def test_divergence_is_nonnegative(p: Problem) -> None:
    s = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    assert math.isfinite(s)
    assert s >= -1e-9, s


@given(problems())
def test_divergence_of_a_cloud_with_itself_is_zero(p: Problem) -> None:
    assert abs(_s(p.x, p.x, p.a, p.a, blur=p.blur)) <= 1e-9
    # a copy with its rows permuted (and the weights with them) is the same measure
    perm = torch.randperm(p.y.shape[0], generator=torch.Generator().manual_seed(0))
    b_perm = None if p.b is None else p.b[perm]
    assert abs(_s(p.y, p.y[perm], p.b, b_perm, blur=p.blur)) <= 1e-9


@given(problems(), st.booleans())
def test_divergence_is_symmetric(p: Problem, debias: bool) -> None:
    s_xy = _s(p.x, p.y, p.a, p.b, blur=p.blur, debias=debias)
    s_yx = _s(p.y, p.x, p.b, p.a, blur=p.blur, debias=debias)
    assert _close(s_xy, s_yx, 1e-8), (s_xy, s_yx)


@given(problems(max_n=24, max_d=8))
def test_divergence_is_invariant_under_rigid_motions(p: Problem) -> None:
    d = p.x.shape[1]
    rng = np.random.default_rng(d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q = torch.from_numpy(q)
    t = torch.from_numpy(rng.standard_normal(d))
    s = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    s_moved = _s(p.x @ q + t, p.y @ q + t, p.a, p.b, blur=p.blur)
    assert _close(s_moved, s, 1e-7), (s_moved, s)


@given(problems(max_n=24, max_d=8), st.sampled_from([0.5, 2.0]))
def test_divergence_scales_quadratically_with_blur(p: Problem, c: float) -> None:
    """S_{c·blur}(c·x, c·y) = c²·S_blur(x, y): the cost is quadratic, ε = blur²."""
    s = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    s_scaled = _s(c * p.x, c * p.y, p.a, p.b, blur=c * p.blur)
    assert _close(s_scaled, c * c * s, 1e-7), (s_scaled, c * c * s)


@given(problems(max_n=24, max_d=8))
def test_zero_weight_points_are_ignored(p: Problem) -> None:
    """A point of weight 0 changes nothing: S equals S on the cloud without it."""
    n, d = p.x.shape
    a = p.a if p.a is not None else torch.full((n,), 1.0 / n, dtype=F64)
    far = torch.full((1, d), 0.7, dtype=F64)
    x_extra = torch.cat([p.x, far])
    a_extra = torch.cat([a, torch.zeros(1, dtype=F64)])
    s = _s(p.x, p.y, a, p.b, blur=p.blur)
    s_extra = _s(x_extra, p.y, a_extra, p.b, blur=p.blur)
    assert _close(s_extra, s, 1e-7), (s_extra, s)


@given(problems(max_n=32, max_d=8))
def test_translating_y_changes_ot_by_the_closed_form(p: Problem) -> None:
    """SPEC §2: OT_ε(x, y + t) = OT_ε(x, y) + ‖t‖² − 2⟨t, μ_x − μ_y⟩ (every coupling)."""
    d = p.x.shape[1]
    t = torch.from_numpy(np.random.default_rng(d + 7).uniform(-0.5, 0.5, d))
    stats = ck.centroid_stats(p.x, p.y, p.a, p.b, backend="reference")
    ot = _s(p.x, p.y, p.a, p.b, blur=p.blur, debias=False)
    want = ot + float(t @ t) - 2.0 * float(t @ (stats.mu_x - stats.mu_y))
    assert _close(_s(p.x, p.y + t, p.a, p.b, blur=p.blur, debias=False), want, 1e-8)
    # the same through the fused ``shift`` argument
    assert _close(_s(p.x, p.y, p.a, p.b, blur=p.blur, debias=False, shift=t), want, 1e-8)


# ------------------------------------------------------------------------------------------
# the exact centroid / distribution decomposition (SPEC §2)
# ------------------------------------------------------------------------------------------


@given(problems())
def test_total_gap_decomposes_into_centroid_and_distribution(p: Problem) -> None:
    """G_T² = G_C² + G_D², G_D² computed on explicitly centred copies (not the fused shift)."""
    g_t2 = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    stats = ck.centroid_stats(p.x, p.y, p.a, p.b, backend="reference")
    g_c2 = float(stats.gap2)
    x_c = p.x - stats.mu_x
    y_c = p.y - stats.mu_y
    g_d2 = _s(x_c, y_c, p.a, p.b, blur=p.blur)
    assert g_c2 >= 0.0
    assert g_d2 >= -1e-9
    assert _close(g_c2 + g_d2, g_t2, 1e-4), (g_t2, g_c2, g_d2)
    # the solver's tolerance allows far better than the 1e-4
    assert _close(g_c2 + g_d2, g_t2, 1e-7), (g_t2, g_c2, g_d2)

    # the fused route (translation of y inside the solver) agrees with the explicit one
    terms = ck.gap_terms(
        p.x, p.y, p.a, p.b, blur=p.blur, tol=TOL, max_iter=MAX_ITER, backend="reference"
    )
    assert _close(float(terms.centroid), g_c2, 1e-12, 1e-15)
    assert _close(float(terms.distribution), g_d2, 1e-7), (float(terms.distribution), g_d2)

    loss = ck.distribution_gap_loss(
        p.x, p.y, a=p.a, b=p.b, blur=p.blur, tol=TOL, max_iter=MAX_ITER, backend="reference"
    )
    assert loss.dtype == F64 and loss.dim() == 0
    assert _close(float(loss), g_t2, 1e-4), (float(loss), g_t2)


@given(problems(weighted=True, max_n=32, max_d=16))
def test_decomposition_with_weights(p: Problem) -> None:
    """Same identity with Dirichlet weights: μ are the weighted means."""
    stats = ck.centroid_stats(p.x, p.y, p.a, p.b, backend="reference")
    mu_x = (p.a[:, None] * p.x).sum(0)
    mu_y = (p.b[:, None] * p.y).sum(0)
    g_t2 = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    g_d2 = _s(p.x - mu_x, p.y - mu_y, p.a, p.b, blur=p.blur)
    g_c2 = float(((mu_x - mu_y) ** 2).sum())
    assert _close(float(stats.gap2), g_c2, 1e-10, 1e-14)
    assert _close(g_c2 + g_d2, g_t2, 1e-4), (g_t2, g_c2, g_d2)


@given(
    problems(max_n=32, max_d=16),
    st.floats(0.0, 3.0),
    st.floats(0.0, 3.0),
)
def test_loss_is_the_weighted_sum_of_the_two_terms(p: Problem, lam_c: float, lam_d: float) -> None:
    kw = {"blur": p.blur, "tol": TOL, "max_iter": MAX_ITER, "backend": "reference"}
    stats = ck.centroid_stats(p.x, p.y, p.a, p.b, backend="reference")
    g_d2 = _s(p.x - stats.mu_x, p.y - stats.mu_y, p.a, p.b, blur=p.blur)
    loss = ck.distribution_gap_loss(
        p.x, p.y, lambda_centroid=lam_c, lambda_distribution=lam_d, a=p.a, b=p.b, **kw
    )
    want = lam_c * float(stats.gap2) + lam_d * g_d2
    assert _close(float(loss), want, 1e-7), (float(loss), want)


@given(problems(max_n=48, max_d=32))
def test_float32_default_path_agrees_with_float64(p: Problem) -> None:
    """The float32 compute path (default tolerance) stays close to the float64 value."""
    s64 = _s(p.x, p.y, p.a, p.b, blur=p.blur)
    a32 = None if p.a is None else p.a.float()
    b32 = None if p.b is None else p.b.float()
    s32 = ck.sinkhorn_divergence(
        p.x.float(), p.y.float(), a32, b32, blur=p.blur, tol=1e-6, backend="reference"
    )
    assert s32.dtype == torch.float32
    assert abs(float(s32) - s64) <= 1e-3 * abs(s64) + 1e-4, (float(s32), s64)
