r"""``TritonCost``: the fused-kernel implementation of :class:`cma_kernels.cost.CostOperator`.

C_ij = ‖x_i − (y_j + s)‖² is never stored. Construction packs both clouds for the kernels
(:func:`._common.pack`: aligned rows, features padded to a multiple of 16, TF32 hi/lo parts at
tf32x3 — two extra fp32 copies of each fp32 cloud — or one fp16/bf16 rounding at those
precisions; the precision is fixed at construction) and runs two O((N + M)·d) prologue kernels,

    u_i = ‖x_i‖² − 2⟨x_i, s⟩,     v_j = ‖y_j + s‖²,     so  C_ij = max(u_i + v_j − 2⟨x_i, y_j⟩, 0),

and every reduction then streams over tiles of the raw embeddings (see :mod:`._softmin`,
:mod:`._barycenter`): memory O((N + M)·d). Rows and columns use the same kernels with the
roles of (x, u) and (y, v) swapped; the translation s (the fused centring) appears only in u, v
and — for the barycenter of the rows, whose points are y_j + s — as a final ``+ s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cost import CostOperator
from . import _common, _config
from ._barycenter import barycenter
from ._softmin import softmin


class TritonCost(CostOperator):
    """Reductions over C_ij = ‖x_i − (y_j + shift)‖² by fused Triton kernels, no (N, M) buffer."""

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        # The base class would build y + shift eagerly; the kernels never need that copy.
        if x.dtype != y.dtype:  # one operand type for both clouds
            dt = torch.promote_types(x.dtype, y.dtype)
            x, y = x.to(dt), y.to(dt)
        self.x = x.contiguous()
        self.y = self.x if y is x else y.contiguous()
        self.shift = None if shift is None else shift.contiguous()
        self.d = x.shape[-1]
        self.dtype = _config.out_dtype(self.x)
        self.prec = _config.dot_precision()
        self._xk = _common.pack(self.x, self.prec)
        self._yk = self._xk if self.y is self.x else _common.pack(self.y, self.prec)
        width = self._xk[0].shape[-1]
        s = None if self.shift is None else _common.pad_shift(self.shift, width)
        self.u = _common.rowterm(self._xk, s, _common.MODE_MINUS_TWO_SHIFT)
        if self.y is self.x and self.shift is None:
            self.v = self.u  # self problem x↔x: one prologue
        else:
            self.v = _common.rowterm(self._yk, s, _common.MODE_PLUS_SHIFT)

    @property
    def y_shifted(self) -> Tensor:  # type: ignore[override]
        """y + shift, materialised on demand only (the kernels never use it)."""
        return self.y if self.shift is None else self.y + self.shift

    def softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        """f_i = −ε·log Σ_j exp(h_j − C_ij/ε), shape (N,)."""
        return softmin(self._xk, self._yk, self.u, self.v, h, eps, self.dtype, self.prec)

    def softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        """g_j = −ε·log Σ_i exp(h_i − C_ij/ε), shape (M,)."""
        return softmin(self._yk, self._xk, self.v, self.u, h, eps, self.dtype, self.prec)

    def barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        """Σ_j softmax_j(h_j − C_ij/ε)·(y_j + shift), shape (N, d)."""
        out = barycenter(self._xk, self._yk, self.u, self.v, h, eps, self.d, self.dtype, self.prec)
        return out if self.shift is None else out.add_(self.shift)

    def barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        """Σ_i softmax_i(h_i − C_ij/ε)·x_i, shape (M, d)."""
        return barycenter(self._yk, self._xk, self.v, self.u, h, eps, self.d, self.dtype, self.prec)

    def diameter(self) -> float:
        """Bounding-box diagonal of x ∪ (y + shift), from per-cloud extrema (no concatenation)."""
        dt = torch.promote_types(self.x.dtype, torch.float32)
        hi_y, lo_y = self.y.amax(0).to(dt), self.y.amin(0).to(dt)
        if self.shift is not None:
            hi_y, lo_y = hi_y + self.shift, lo_y + self.shift
        hi = torch.maximum(self.x.amax(0).to(dt), hi_y)
        lo = torch.minimum(self.x.amin(0).to(dt), lo_y)
        return float((hi - lo).norm())


def make_cost(
    x: Tensor, y: Tensor, shift: Tensor | None = None, strategy: str = "auto"
) -> TritonCost:
    """The fused cost operator (``strategy`` is a reference-path option, ignored here)."""
    del strategy
    return TritonCost(x, y, shift)
