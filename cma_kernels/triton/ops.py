r"""``torch.library`` custom ops for the Triton ``sqdist`` and ``centroid`` kernels.

Each op has a fake (meta) implementation, so ``torch.compile`` traces through a model that
calls them without running a kernel, and an exact backward written with PyTorch ops:

* sqdist, C_ij = ‖x̃_i − ỹ_j‖² (x̃ = x − x_shift, ỹ = y − y_shift), given G = ∂L/∂C:
  ∂L/∂x_i = 2(Σ_j G_ij · x̃_i − Σ_j G_ij ỹ_j),   ∂L/∂y_j = 2(Σ_i G_ij · ỹ_j − Σ_i G_ij x̃_i),
  ∂L/∂x_shift = −Σ_i ∂L/∂x_i,   ∂L/∂y_shift = −Σ_j ∂L/∂y_j
  (the true gradient of ‖x̃_i − ỹ_j‖²; at the clamp, C = 0 only where x̃_i = ỹ_j, where it is 0).
* centroid, μ_x = Σ a_i x_i, μ_y = Σ b_j y_j, G_C² = ‖μ_x − μ_y‖² (per batch item):
  ∂L/∂x_i = a_i (ḡ_μx + 2 ḡ_gap (μ_x − μ_y)),   ∂L/∂y_j = b_j (ḡ_μy − 2 ḡ_gap (μ_x − μ_y)).
  The weights a, b are constants (no gradient), as in the reference.

The Sinkhorn solver itself is one custom op in :mod:`cma_kernels.sinkhorn`, whose forward and
backward call :class:`~cma_kernels.triton.cost.TritonCost`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..cost import CentroidStats
from . import _config
from ._centroid import centroid_launch
from ._sqdist import sqdist_launch

# ----------------------------------------------------------------------------- sqdist


@torch.library.custom_op("cma_kernels::triton_sqdist", mutates_args=())
def _sqdist_op(x: Tensor, y: Tensor, x_shift: Tensor | None, y_shift: Tensor | None) -> Tensor:
    """C_ij = ‖(x_i − x_shift) − (y_j − y_shift)‖², clamped at 0, (N, M)."""
    return sqdist_launch(x, y, x_shift, y_shift)


@_sqdist_op.register_fake
def _(x: Tensor, y: Tensor, x_shift: Tensor | None, y_shift: Tensor | None) -> Tensor:
    return x.new_empty((x.shape[0], y.shape[0]), dtype=_config.out_dtype(x))


def _sqdist_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, y, x_shift, y_shift = inputs
    ctx.save_for_backward(x, y, x_shift, y_shift)
    ctx.has_xs, ctx.has_ys = x_shift is not None, y_shift is not None


def _sqdist_backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    x, y, x_shift, y_shift = ctx.saved_tensors
    g = grad.to(_config.out_dtype(x))
    xt = x.to(g.dtype)
    yt = y.to(g.dtype)
    if ctx.has_xs:
        xt = xt - x_shift.to(g.dtype)
    if ctx.has_ys:
        yt = yt - y_shift.to(g.dtype)
    grad_x = 2.0 * (g.sum(1, keepdim=True) * xt - g @ yt)
    grad_y = 2.0 * (g.sum(0).unsqueeze(1) * yt - g.T @ xt)
    grad_xs = -grad_x.sum(0).to(x_shift.dtype) if ctx.has_xs else None
    grad_ys = -grad_y.sum(0).to(y_shift.dtype) if ctx.has_ys else None
    return grad_x.to(x.dtype), grad_y.to(y.dtype), grad_xs, grad_ys


_sqdist_op.register_autograd(_sqdist_backward, setup_context=_sqdist_setup)


def sqdist(
    x: Tensor, y: Tensor, x_shift: Tensor | None = None, y_shift: Tensor | None = None
) -> Tensor:
    """C_ij = ‖(x_i − x_shift) − (y_j − y_shift)‖² clamped at 0, (N, M) fp32 (fp64 for fp64).

    One tiled ``tl.dot`` kernel (fp32 accumulation, centring fused, no centred copy);
    differentiable in x, y and the shifts.
    """
    return _sqdist_op(x, y, x_shift, y_shift)


# ----------------------------------------------------------------------------- centroid


@torch.library.custom_op("cma_kernels::triton_centroid", mutates_args=())
def _centroid_op(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(μ_x (B, d), μ_y (B, d), ‖μ_x − μ_y‖² (B,)) of (B, n, d) clouds in one launch."""
    return centroid_launch(x, y, a, b)


@_centroid_op.register_fake
def _(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dt = _config.out_dtype(x)
    batch, _, d = x.shape
    return (
        x.new_empty((batch, d), dtype=dt),
        x.new_empty((batch, d), dtype=dt),
        x.new_empty(batch, dtype=dt),
    )


def _centroid_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, y, a, b = inputs
    mu_x, mu_y, _gap = output
    ctx.save_for_backward(a, b, mu_x, mu_y)
    ctx.x_dtype, ctx.y_dtype = x.dtype, y.dtype


def _centroid_backward(
    ctx: Any, g_mu_x: Tensor, g_mu_y: Tensor, g_gap: Tensor
) -> tuple[Tensor, Tensor, None, None]:
    a, b, mu_x, mu_y = ctx.saved_tensors
    g_gap = g_gap.unsqueeze(-1)
    diff2 = 2.0 * (mu_x - mu_y)
    vx = g_mu_x + g_gap * diff2
    vy = g_mu_y - g_gap * diff2
    grad_x = a.to(vx.dtype).unsqueeze(-1) * vx.unsqueeze(-2)
    grad_y = b.to(vy.dtype).unsqueeze(-1) * vy.unsqueeze(-2)
    return grad_x.to(ctx.x_dtype), grad_y.to(ctx.y_dtype), None, None


_centroid_op.register_autograd(_centroid_backward, setup_context=_centroid_setup)


def centroid(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> CentroidStats:
    """μ_x = Σ a_i x_i, μ_y = Σ b_j y_j and ‖μ_x − μ_y‖², one kernel launch, exact backward.

    Batched (B, n, d) clouds with (B, n) weights give (B, d) means and (B,) gaps (one launch for
    the batch); (n, d) clouds with (n,) weights give (d,) means and a 0-dim gap.
    """
    if x.dim() == 2:
        mu_x, mu_y, gap2 = _centroid_op(x[None], y[None], a[None], b[None])
        return CentroidStats(mu_x[0], mu_y[0], gap2[0])
    return CentroidStats(*_centroid_op(x, y, a, b))
