"""Public functional API: pairwise distances, centroid statistics and the alignment loss.

Every function takes ``backend="auto" | "triton" | "reference"`` (see :mod:`cma_kernels.dispatch`).
Inputs may be float32/float16/bfloat16 (computed in float32) or float64 (kept).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from . import _checks
from .cost import CentroidStats
from .dispatch import resolve_backend
from .sinkhorn import DEFAULT_MAX_ITER, DEFAULT_TOL, _backend_ops, sinkhorn_divergence


def pairwise_sqdist(x: Tensor, y: Tensor, *, backend: str = "auto") -> Tensor:
    """C_ij = ‖x_i − y_j‖² = ‖x_i‖² + ‖y_j‖² − 2⟨x_i, y_j⟩ (clamped at 0), shape (N, M)."""
    x, y = _checks.check_pair(x, y)
    dtype = _checks.compute_dtype(x, y)
    ops = _backend_ops(resolve_backend(backend, x, y))
    return ops.sqdist(x.to(dtype), y.to(dtype))


def centroid_stats(
    x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None, *, backend: str = "auto"
) -> CentroidStats:
    """μ_x = Σ_i a_i x_i, μ_y = Σ_j b_j y_j and G_C² = ‖μ_x − μ_y‖², differentiable in x, y."""
    x, y = _checks.check_pair(x, y)
    dtype = _checks.compute_dtype(x, y)
    a = _checks.check_weights("a", a, x.shape[0], x, y)
    b = _checks.check_weights("b", b, y.shape[0], x, y)
    ops = _backend_ops(resolve_backend(backend, x, y))
    return ops.centroid(x.to(dtype), y.to(dtype), a, b)


class GapTerms(NamedTuple):
    """The two parts of the exact decomposition S_ε(x, y) = G_C² + S_ε(x − μ_x, y − μ_y)."""

    centroid: Tensor  # G_C² = ‖μ_x − μ_y‖²
    distribution: Tensor  # G_D² = S_ε(x − μ_x, y − μ_y)


def gap_terms(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    blur: float = 0.05,
    scaling: float = 0.5,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    backend: str = "auto",
) -> GapTerms:
    """G_C² and G_D² = S_ε(x − μ_x, y − μ_y), both differentiable in x and y.

    The centring is fused into the solver as a translation of y by μ_x − μ_y (no centred
    copies); gradients flow through μ_x, μ_y into every point.
    """
    stats = centroid_stats(x, y, a, b, backend=backend)
    distribution = sinkhorn_divergence(
        x,
        y,
        a,
        b,
        blur=blur,
        scaling=scaling,
        tol=tol,
        max_iter=max_iter,
        backend=backend,
        shift=stats.mu_x - stats.mu_y,
    )
    return GapTerms(stats.gap2, distribution)


def distribution_gap_loss(
    x: Tensor,
    y: Tensor,
    *,
    lambda_centroid: float = 1.0,
    lambda_distribution: float = 1.0,
    blur: float = 0.05,
    a: Tensor | None = None,
    b: Tensor | None = None,
    scaling: float = 0.5,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    backend: str = "auto",
) -> Tensor:
    """L_align = λ_C·‖μ_x − μ_y‖² + λ_D·S_ε(x − μ_x, y − μ_y).

    With λ_C = λ_D = 1 this equals S_ε(x, y) exactly (the centroid/distribution
    decomposition holds for every ε). A 0-dim float32 (float64 for float64 inputs) tensor.
    """
    terms = gap_terms(
        x, y, a, b, blur=blur, scaling=scaling, tol=tol, max_iter=max_iter, backend=backend
    )
    return lambda_centroid * terms.centroid + lambda_distribution * terms.distribution
