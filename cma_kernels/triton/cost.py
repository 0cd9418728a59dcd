r"""``TritonCost``: the fused-kernel implementation of :class:`cma_kernels.cost.CostOperator`.

C_ij = ‖x_i − (y_j + s)‖² is never stored. Construction runs two O((N + M)·d) prologue kernels,

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
from . import _common
from ._barycenter import barycenter
from ._softmin import softmin


class TritonCost(CostOperator):
    """Reductions over C_bij = ‖x_bi − (y_bj + shift_b)‖² by fused Triton kernels, no (N, M) buffer.

    Batched clouds (B, N, d) run one streaming launch per batch item (B = 1 for a CLIP batch;
    the stacked self problems are B = 2).
    """

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        x = x.contiguous()
        y = x if y is x else y.contiguous()
        super().__init__(x, y, None if shift is None else shift.contiguous())
        self.u, self.v = [], []
        for b in range(self.batch):
            s = None if self.shift is None else self.shift[b]
            u = _common.rowterm(self.x[b], s, _common.MODE_MINUS_TWO_SHIFT)
            self_problem = self.y is self.x and s is None
            v = u if self_problem else _common.rowterm(self.y[b], s, _common.MODE_PLUS_SHIFT)
            self.u.append(u)
            self.v.append(v)

    def _each(self, fn, h: Tensor) -> Tensor:
        return torch.stack([fn(b, h[b]) for b in range(self.batch)])

    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        """f_bi = −ε·log Σ_j exp(h_bj − C_bij/ε), shape (B, N)."""
        return self._each(
            lambda b, hb: softmin(self.x[b], self.y[b], self.u[b], self.v[b], hb, eps), h
        )

    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        """g_bj = −ε·log Σ_i exp(h_bi − C_bij/ε), shape (B, M)."""
        return self._each(
            lambda b, hb: softmin(self.y[b], self.x[b], self.v[b], self.u[b], hb, eps), h
        )

    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        """Σ_j softmax_j(h_bj − C_bij/ε)·(y_bj + shift_b), shape (B, N, d)."""
        out = self._each(
            lambda b, hb: barycenter(self.x[b], self.y[b], self.u[b], self.v[b], hb, eps), h
        )
        return out if self.shift is None else out.add_(self.shift.unsqueeze(-2))

    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        """Σ_i softmax_i(h_bi − C_bij/ε)·x_bi, shape (B, M, d)."""
        return self._each(
            lambda b, hb: barycenter(self.y[b], self.x[b], self.v[b], self.u[b], hb, eps), h
        )

    def diameter(self) -> Tensor:
        """Largest bounding-box diagonal of x_b ∪ (y_b + shift_b), a 0-dim tensor (no sync)."""
        dt = torch.promote_types(self.x.dtype, torch.float32)
        hi_y, lo_y = self.y.amax(-2).to(dt), self.y.amin(-2).to(dt)
        if self.shift is not None:
            hi_y, lo_y = hi_y + self.shift, lo_y + self.shift
        hi = torch.maximum(self.x.amax(-2).to(dt), hi_y)
        lo = torch.minimum(self.x.amin(-2).to(dt), lo_y)
        return (hi - lo).norm(dim=-1).amax()


def make_cost(
    x: Tensor, y: Tensor, shift: Tensor | None = None, strategy: str = "auto"
) -> TritonCost:
    """The fused cost operator (``strategy`` is a reference-path option, ignored here)."""
    del strategy
    return TritonCost(x, y, shift)
