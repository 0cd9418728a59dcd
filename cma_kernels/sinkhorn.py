r"""Debiased Sinkhorn divergence with ε-scaling and envelope-theorem gradients.

With the cost C_ij = ‖x_i − y_j‖² (not halved) and ε = blur²,

    OT_ε(x, y) = min_P ⟨P, C⟩ + ε·KL(P ‖ a⊗b) = ⟨a, f⟩ + ⟨b, g⟩   (dual value at convergence)
    S_ε(x, y)  = OT_ε(x, y) − ½·OT_ε(x, x) − ½·OT_ε(y, y)            (Feydy et al. 2019)

The potentials solve f = softmin_ε(C, log b + g/ε), g = softmin_ε(Cᵀ, log a + f/ε). As in
GeomLoss they are found by *symmetric* (averaged) updates while ε is annealed from the cloud's
diameter² down to blur² by the factor ``scaling²`` per step; at the final ε alternating
(over-relaxed) updates go on until the plan's marginal error Σ_i |Σ_j P_ij − a_i| is at most
``tol`` or ``max_iter`` iterations have run.

Gradients use the envelope theorem at the converged potentials — nothing is differentiated
through the iterations:

    ∂OT_ε/∂x_i = 2·(a_i x_i − Σ_j P_ij y_j),   P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)
    ∂S_ε/∂x_i  = 2·(Σ_j P^xx_ij x_j − Σ_j P_ij y_j)

computed with each row of P normalised to its exact marginal a_i (the barycentric projection,
see :mod:`cma_kernels.cost`), which is the same at convergence and robust before it.

Second derivatives are not supported (the backward is not itself differentiable). The weights
``a``, ``b`` are treated as constants.

The forward and backward are registered as ``torch.library`` custom ops, so models using the
loss still compile with ``torch.compile`` (the solver is one opaque node).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks
from .cost import CostOperator
from .dispatch import resolve_backend


def epsilon_schedule(diameter: float, blur: float, scaling: float) -> list[float]:
    """ε values from diameter² down to blur², the blur shrinking by ``scaling`` each step.

    ``[diameter², (diameter·s)², (diameter·s²)², …, blur²]`` — GeomLoss's schedule with p = 2.
    """
    diameter = max(diameter, blur)
    steps = max(0, math.ceil(math.log(blur / diameter) / math.log(scaling)))
    return [(diameter * scaling**k) ** 2 for k in range(steps)] + [blur**2]


class Potentials(NamedTuple):
    """Dual potentials at the final ε: (f, g) for x↔y, p for x↔x, q for y↔y (empty if unused)."""

    f: Tensor
    g: Tensor
    p: Tensor
    q: Tensor
    iterations: int


def marginal_error(log_w: Tensor, old: Tensor, new: Tensor, eps: float) -> Tensor:
    """L1 violation of the plan's marginal, Σ_i w_i·|1 − exp((old_i − new_i)/ε)|.

    If ``new = softmin(…)`` is the update of ``old``, the plan built from ``old`` has row sums
    r_i = w_i·exp((old_i − new_i)/ε), so this is Σ_i |r_i − w_i| at no extra cost.
    """
    return (log_w.exp() * torch.expm1((old - new) / eps).abs()).sum()


def _solve_pair(
    cost: CostOperator,
    log_a: Tensor,
    log_b: Tensor,
    eps_list: list[float],
    tol: float,
    max_iter: int,
    overrelax: float,
) -> tuple[Tensor, Tensor, int]:
    """Sinkhorn for the x↔y problem; returns (f, g, iterations at the final ε).

    While ε is annealed the updates are symmetric (averaged, as in GeomLoss). At the final ε
    they alternate (f from g, then g from the new f) with over-relaxation ω
    (f ← (1−ω)f + ω·softmin(g), Thibault et al. 2017), until the marginal error is ≤ ``tol``.
    If the error ever grows, ω falls back to 1 (plain Sinkhorn, always convergent).
    """
    f = cost.softmin_rows(log_b, eps_list[0])
    g = cost.softmin_cols(log_a, eps_list[0])
    for eps in eps_list[:-1]:
        f, g = (
            0.5 * (f + cost.softmin_rows(log_b + g / eps, eps)),
            0.5 * (g + cost.softmin_cols(log_a + f / eps, eps)),
        )
    eps = eps_list[-1]
    omega, last_err = overrelax, math.inf
    for it in range(max_iter):
        f_new = cost.softmin_rows(log_b + g / eps, eps)
        err = float(marginal_error(log_a, f, f_new, eps))
        if err <= tol:
            return f, g, it
        if err > last_err:
            omega = 1.0
        last_err = err
        f = torch.lerp(f, f_new, omega) if omega != 1.0 else f_new
        g_new = cost.softmin_cols(log_a + f / eps, eps)
        g = torch.lerp(g, g_new, omega) if omega != 1.0 else g_new
    return f, g, max_iter


def _solve_self(
    cost: CostOperator, log_w: Tensor, eps_list: list[float], tol: float, max_iter: int
) -> Tensor:
    """Symmetric updates p ← ½(p + softmin(log w + p/ε)) for a cloud against itself."""
    p = cost.softmin_rows(log_w, eps_list[0])
    for eps in eps_list[:-1]:
        p = 0.5 * (p + cost.softmin_rows(log_w + p / eps, eps))
    eps = eps_list[-1]
    for _ in range(max_iter):
        p_new = cost.softmin_rows(log_w + p / eps, eps)
        if float(marginal_error(log_w, p, p_new, eps)) <= tol:
            break
        p = 0.5 * (p + p_new)
    return p


def _backend_ops(backend: str):
    if backend == "triton":
        from . import triton as ops
    else:
        from . import reference as ops
    return ops


def solve(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    *,
    blur: float,
    scaling: float,
    tol: float,
    max_iter: int,
    debias: bool,
    backend: str,
    strategy: str = "auto",
    overrelax: float = 1.5,
) -> Potentials:
    """Converged potentials of the x↔(y + shift) problem and, if ``debias``, the self problems."""
    ops = _backend_ops(backend)
    cost_xy = ops.make_cost(x, y, shift, strategy)
    eps_list = epsilon_schedule(cost_xy.diameter(), blur, scaling)
    log_a, log_b = a.log(), b.log()
    f, g, iters = _solve_pair(cost_xy, log_a, log_b, eps_list, tol, max_iter, overrelax)
    del cost_xy
    if not debias:
        return Potentials(f, g, x.new_empty(0), x.new_empty(0), iters)
    p = _solve_self(ops.make_cost(x, x, None, strategy), log_a, eps_list, tol, max_iter)
    q = _solve_self(ops.make_cost(y, y, None, strategy), log_b, eps_list, tol, max_iter)
    return Potentials(f, g, p, q, iters)


# --------------------------------------------------------------------------------------
# custom ops: one opaque forward node and its envelope-theorem backward
# --------------------------------------------------------------------------------------


@torch.library.custom_op("cma_kernels::sinkhorn_forward", mutates_args=())
def _sinkhorn_forward(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    blur: float,
    scaling: float,
    tol: float,
    max_iter: int,
    debias: bool,
    backend: str,
    strategy: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(value, f, g, p, q): S_ε (or OT_ε) and the converged potentials."""
    with torch.no_grad():
        pot = solve(
            x,
            y,
            a,
            b,
            shift,
            blur=blur,
            scaling=scaling,
            tol=tol,
            max_iter=max_iter,
            debias=debias,
            backend=backend,
            strategy=strategy,
        )
        value = a @ pot.f + b @ pot.g
        if debias:
            value = value - a @ pot.p - b @ pot.q
    return value, pot.f, pot.g, pot.p, pot.q


@_sinkhorn_forward.register_fake
def _(x, y, a, b, shift, blur, scaling, tol, max_iter, debias, backend, strategy):
    n_self = x.shape[0] if debias else 0
    m_self = y.shape[0] if debias else 0
    return (
        x.new_empty(()),
        x.new_empty(x.shape[0]),
        x.new_empty(y.shape[0]),
        x.new_empty(n_self),
        x.new_empty(m_self),
    )


@torch.library.custom_op("cma_kernels::sinkhorn_backward", mutates_args=())
def _sinkhorn_backward(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    f: Tensor,
    g: Tensor,
    p: Tensor,
    q: Tensor,
    eps: float,
    debias: bool,
    backend: str,
    strategy: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(∂/∂x, ∂/∂y, ∂/∂shift) of the value, from the plans' barycenters at the potentials.

    ∂OT(x, ỹ)/∂x_i = 2a_i(x_i − B_i) with B_i = Σ_j softmax_j(log b_j + (g_j − C_ij)/ε)·ỹ_j the
    barycentric projection (the plan's row i normalised to its exact marginal a_i); the
    self terms give ∂(−½OT(x, x))/∂x_i = −2a_i(x_i − B^xx_i). ỹ = y + shift.
    """
    ops = _backend_ops(backend)
    log_a, log_b = a.log(), b.log()
    cost_xy = ops.make_cost(x, y, shift, strategy)
    bary_x = cost_xy.barycenter_rows(log_b + g / eps, eps)  # images of the x_i in ỹ
    bary_y = cost_xy.barycenter_cols(log_a + f / eps, eps)  # images of the ỹ_j in x
    del cost_xy
    # The (N, d) and (M, d) buffers are reused in place: the chunked strategy's backward holds
    # at most four of them (two barycenters, one self barycenter and its block workspace).
    scale_a, scale_b = (2.0 * grad) * a.unsqueeze(1), (2.0 * grad) * b.unsqueeze(1)
    if shift is not None:  # Σ_j 2b_j(ỹ_j − B^y_j), without an (M, d) temporary
        grad_shift = 2.0 * grad * (b @ y - b @ bary_y + b.sum() * shift)
    else:
        grad_shift = x.new_zeros(x.shape[1])
    if debias:
        grad_x = ops.make_cost(x, x, None, strategy).barycenter_rows(log_a + p / eps, eps)
        grad_x.sub_(bary_x).mul_(scale_a)  # 2a(B^xx − B^x)
        del bary_x
        grad_y = ops.make_cost(y, y, None, strategy).barycenter_rows(log_b + q / eps, eps)
        grad_y.sub_(bary_y)  # 2b(ỹ − y + B^yy − B^y) = 2b(shift + B^yy − B^y)
    else:
        grad_x = bary_x.neg_().add_(x).mul_(scale_a)  # 2a(x − B^x)
        grad_y = bary_y.neg_().add_(y)  # 2b(ỹ − B^y)
    if shift is not None:
        grad_y.add_(shift)
    return grad_x, grad_y.mul_(scale_b), grad_shift


@_sinkhorn_backward.register_fake
def _(grad, x, y, a, b, shift, f, g, p, q, eps, debias, backend, strategy):
    return torch.empty_like(x), torch.empty_like(y), x.new_empty(x.shape[1])


def _setup_context(ctx, inputs, output) -> None:
    x, y, a, b, shift, blur, _scaling, _tol, _max_iter, debias, backend, strategy = inputs
    _value, f, g, p, q = output
    ctx.save_for_backward(x, y, a, b, shift, f, g, p, q)
    ctx.eps = blur * blur
    ctx.debias, ctx.backend, ctx.strategy = debias, backend, strategy
    ctx.has_shift = shift is not None


def _backward(ctx, grad_value, *_unused):
    x, y, a, b, shift, f, g, p, q = ctx.saved_tensors
    gx, gy, gs = _sinkhorn_backward(
        grad_value, x, y, a, b, shift, f, g, p, q, ctx.eps, ctx.debias, ctx.backend, ctx.strategy
    )
    return (
        gx,
        gy,
        None,
        None,
        (gs if ctx.has_shift else None),
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_sinkhorn_forward.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 1000


def sinkhorn_divergence(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    blur: float = 0.05,
    scaling: float = 0.5,
    debias: bool = True,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    backend: str = "auto",
    strategy: str = "auto",
    shift: Tensor | None = None,
) -> Tensor:
    r"""Debiased Sinkhorn divergence S_ε(x, y) (or OT_ε(x, y) with ``debias=False``).

    S_ε(x, y) = OT_ε(x, y) − ½·OT_ε(x, x) − ½·OT_ε(y, y),   C_ij = ‖x_i − y_j‖²,   ε = blur².

    Args:
        x: (N, d) points; y: (M, d) points (fp16/bf16 are computed in float32).
        a, b: optional non-negative weights summing to 1 (default uniform); constants.
        blur: length scale of the entropic blur, ε = blur².
        scaling: ε-scaling factor on the blur per annealing step, in (0, 1).
        debias: subtract the self terms (S_ε ≥ 0, S_ε(x, x) = 0); else return OT_ε.
        tol: stop at the final ε when the plan's marginal error Σ_i |Σ_j P_ij − a_i| ≤ tol.
        max_iter: cap on iterations at the final ε.
        backend: "auto" (Triton on CUDA, else reference), "triton" or "reference".
        strategy: reference path only: "tensorized", "chunked" or "auto" (by size).
        shift: optional (d,) translation of y, differentiable: S_ε(x, y + shift).

    Returns:
        A 0-dim tensor, float64 for float64 inputs, else float32; differentiable in x, y
        (and ``shift``) through the envelope theorem. Second derivatives are not supported.
    """
    x, y = _checks.check_pair(x, y)
    blur = _checks.check_positive("blur", blur)
    scaling = _checks.check_scaling(scaling)
    tol = _checks.check_positive("tol", tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be a positive integer, got {max_iter!r}")
    resolved = resolve_backend(backend, x, y)
    dtype = _checks.compute_dtype(x, y)
    a = _checks.check_weights("a", a, x.shape[0], x, y)
    b = _checks.check_weights("b", b, y.shape[0], x, y)
    if shift is not None:
        if not isinstance(shift, Tensor) or shift.shape != (x.shape[1],):
            raise ValueError(f"shift: expected a tensor of shape ({x.shape[1]},)")
        shift = shift.to(dtype)
    value, *_ = _sinkhorn_forward(
        x.to(dtype),
        y.to(dtype),
        a,
        b,
        shift,
        blur,
        scaling,
        tol,
        max_iter,
        debias,
        resolved,
        strategy,
    )
    return value
