"""Public functional API: pairwise distances, centroid statistics and the alignment loss.

Every function takes ``backend="auto" | "triton" | "reference"`` (see :mod:`cma_kernels.dispatch`).
Inputs may be float32/float16/bfloat16 (computed in float32) or float64 (kept); clouds may be
batched, (B, N, d) with weights (B, N), giving (B,)-shaped results (``pairwise_sqdist`` takes
2-D clouds only). With ``group=`` a process group, the clouds are this process's shards of the
whole problem (:mod:`cma_kernels.sharded`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, sharded
from .cost import CentroidStats
from .dispatch import resolve_backend
from .sinkhorn import DEFAULT_MAX_ITER, DEFAULT_TOL, _backend_ops, sinkhorn_divergence


def pairwise_sqdist(x: Tensor, y: Tensor, *, backend: str = "auto") -> Tensor:
    """C_ij = ‖x_i − y_j‖² = ‖x_i‖² + ‖y_j‖² − 2⟨x_i, y_j⟩ (clamped at 0), shape (N, M)."""
    x, y = _checks.check_pair(x, y, batched=False)
    if x.device.type == "cpu":
        _checks.check_data({"x": x, "y": y}, {})
    dtype = _checks.compute_dtype(x, y)
    ops = _backend_ops(resolve_backend(backend, x, y))
    return ops.sqdist(x.to(dtype), y.to(dtype))


def centroid_stats(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    backend: str = "auto",
    group: object = None,
) -> CentroidStats:
    """μ_x = Σ_i a_i x_i, μ_y = Σ_j b_j y_j and G_C² = ‖μ_x − μ_y‖², differentiable in x, y.

    Batched clouds give (B, d) means and (B,) gaps. Data checks (NaN/Inf, weight values) run on
    CPU tensors, where they cost no device sync: a NaN/Inf point makes its mean non-finite, so
    the finished G_C² is the probe (O(B) values read, no extra pass over the clouds) and only a
    non-finite result scans the inputs to name the bad one. On accelerators non-finite inputs
    give non-finite outputs (the Sinkhorn functions check them within their own single sync).
    Sharded (``group``): the means are all-reduced (differentiable) over every process's points.
    """
    x, y = _checks.check_pair(x, y)
    dtype = _checks.compute_dtype(x, y)
    a = _checks.check_weights("a", a, x, dtype)
    b = _checks.check_weights("b", b, y, dtype)
    resolved = resolve_backend(backend, x, y)
    group_id = sharded.register(group, x, y)
    weights = {k: w for k, w in (("a", a), ("b", b)) if w is not None}
    checked = x.device.type == "cpu" and group_id < 0 and not torch.compiler.is_compiling()
    if checked and weights:
        _checks.check_data({}, weights)
    stats = _centroid_stats(x.to(dtype), y.to(dtype), a, b, resolved, group_id)
    if checked and not bool(torch.isfinite(stats.gap2).all()):
        _checks.check_data({"x": x, "y": y}, {})  # names the bad cloud (or the sum overflowed)
    return stats


def _centroid_stats(
    x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None, resolved: str, group_id: int
) -> CentroidStats:
    """:func:`centroid_stats` once the inputs are checked: the backend's means and gap."""
    dtype = x.dtype
    total = sharded.total_fn(group_id)
    a = None if a is None else _checks.normalized(a, total)
    b = None if b is None else _checks.normalized(b, total)
    if group_id >= 0:
        return _sharded_centroid(x, y, a, b, group_id)
    if resolved == "triton":  # the kernel takes explicit, batched weights
        batched = x.dim() == 3
        xb, yb = (x, y) if batched else (x.unsqueeze(0), y.unsqueeze(0))
        ab = _checks.uniform(xb, dtype) if a is None else a.reshape(xb.shape[:-1])
        bb = _checks.uniform(yb, dtype) if b is None else b.reshape(yb.shape[:-1])
        stats = _backend_ops(resolved).centroid(xb, yb, ab, bb)
        return stats if batched else CentroidStats(*(t[0] for t in stats))
    return _backend_ops(resolved).centroid(x, y, a, b)


def _sharded_centroid(
    x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None, group_id: int
) -> CentroidStats:
    """Means over every process's points: all-reduced local sums Σ_i a_i x_i (or Σ_i x_i / N)."""
    n, m = sharded.global_sizes(group_id, x, y)

    def partial(z: Tensor, w: Tensor | None, count: int) -> Tensor:
        return z.sum(dim=-2) / count if w is None else (w.unsqueeze(-2) @ z).squeeze(-2)

    mu_x = sharded.all_reduce_with_grad(partial(x, a, n), group_id)
    mu_y = sharded.all_reduce_with_grad(partial(y, b, m), group_id)
    diff = mu_x - mu_y
    return CentroidStats(mu_x, mu_y, (diff * diff).sum(dim=-1))


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
    reach: float | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    check_every: int | None = None,
    backend: str = "auto",
    group: object = None,
) -> GapTerms:
    """G_C² and G_D² = S_ε(x − μ_x, y − μ_y), both differentiable in x and y.

    The centring is fused into the solver as a translation of y by μ_x − μ_y (no centred
    copies); gradients flow through μ_x, μ_y into every point.
    """
    stats = centroid_stats(x, y, a, b, backend=backend, group=group)
    distribution = sinkhorn_divergence(
        x, y, a, b, blur=blur, scaling=scaling, reach=reach, tol=tol, max_iter=max_iter,
        check_every=check_every, backend=backend, shift=stats.mu_x - stats.mu_y, group=group,
    )  # fmt: skip
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
    reach: float | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    check_every: int | None = None,
    backend: str = "auto",
    group: object = None,
) -> Tensor:
    """L_align = λ_C·‖μ_x − μ_y‖² + λ_D·S_ε(x − μ_x, y − μ_y).

    With λ_C = λ_D = 1 (and balanced transport) this equals S_ε(x, y) exactly (the
    centroid/distribution decomposition holds for every ε). A 0-dim float32 (float64 for
    float64 inputs) tensor; (B,) for batched clouds.
    """
    terms = gap_terms(
        x, y, a, b, blur=blur, scaling=scaling, reach=reach, tol=tol, max_iter=max_iter,
        check_every=check_every, backend=backend, group=group,
    )  # fmt: skip
    return lambda_centroid * terms.centroid + lambda_distribution * terms.distribution
