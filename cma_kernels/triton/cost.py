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
    """Reductions over C_bij = ‖x_bi − (y_bj + shift_b)‖² by fused Triton kernels, no (N, M) buffer.

    Batched clouds (B, N, d) run one streaming launch per batch item (B = 1 for a CLIP batch;
    the stacked self problems are B = 2).
    """

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        if x.dtype != y.dtype:  # one operand type for both clouds
            dt = torch.promote_types(x.dtype, y.dtype)
            x, y = x.to(dt), y.to(dt)
        x = x.contiguous()
        y = x if y is x else y.contiguous()
        super().__init__(x, y, None if shift is None else shift.contiguous())
        self.d = x.shape[-1]
        self.dtype = _config.out_dtype(x)
        self.prec = _config.dot_precision()
        self._xk = _common.pack(x, self.prec)
        self._yk = self._xk if y is x else _common.pack(y, self.prec)
        width = self._xk[0].shape[-1]
        s = None if self.shift is None else _common.pad_shift(self.shift, width)
        self.u, self.v = [], []
        for b in range(self.batch):
            sb = None if s is None else s[b]
            u = _common.rowterm(self._item(self._xk, b), sb, _common.MODE_MINUS_TWO_SHIFT)
            self_problem = self.y is self.x and sb is None
            v = (
                u
                if self_problem
                else _common.rowterm(self._item(self._yk, b), sb, _common.MODE_PLUS_SHIFT)
            )
            self.u.append(u)
            self.v.append(v)

    @staticmethod
    def _item(op: _common.Operand, b: int) -> _common.Operand:
        return op[0][b], None if op[1] is None else op[1][b]

    def _each(self, fn, h: Tensor) -> Tensor:
        return torch.stack([fn(b, h[b]) for b in range(self.batch)])

    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        """f_bi = −ε·log Σ_j exp(h_bj − C_bij/ε), shape (B, N)."""
        return self._each(
            lambda b, hb: softmin(
                self._item(self._xk, b), self._item(self._yk, b), self.u[b], self.v[b], hb, eps,
                self.dtype, self.prec,
            ),
            h,
        )  # fmt: skip

    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        """g_bj = −ε·log Σ_i exp(h_bi − C_bij/ε), shape (B, M)."""
        return self._each(
            lambda b, hb: softmin(
                self._item(self._yk, b), self._item(self._xk, b), self.v[b], self.u[b], hb, eps,
                self.dtype, self.prec,
            ),
            h,
        )  # fmt: skip

    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        """Σ_j softmax_j(h_bj − C_bij/ε)·(y_bj + shift_b), shape (B, N, d)."""
        out = self._each(
            lambda b, hb: barycenter(
                self._item(self._xk, b), self._item(self._yk, b), self.u[b], self.v[b], hb, eps,
                self.d, self.dtype, self.prec,
            ),
            h,
        )  # fmt: skip
        return out if self.shift is None else out.add_(self.shift.unsqueeze(-2))

    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        """Σ_i softmax_i(h_bi − C_bij/ε)·x_bi, shape (B, M, d)."""
        return self._each(
            lambda b, hb: barycenter(
                self._item(self._yk, b), self._item(self._xk, b), self.v[b], self.u[b], hb, eps,
                self.d, self.dtype, self.prec,
            ),
            h,
        )  # fmt: skip

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
