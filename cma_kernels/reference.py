"""PyTorch reference twins of every kernel: the test oracle and the CPU path.

Two strategies implement the same batched cost operator (see
:class:`cma_kernels.cost.CostOperator`), for clouds x (B, N, d), y (B, M, d):

* :class:`TensorizedCost` materialises the (B, N, M) cost once, memory O(B·N·M);
* :class:`ChunkedCost` recomputes the cost block by block with an online log-sum-exp,
  memory O(B·(N + M)·block), the CPU analogue of the fused Triton kernels.

All arithmetic happens in the dtype of the (already upcast) inputs: float32, or float64 for
gradient checks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import CentroidStats, CostOperator

#: Below this many cost entries the ``auto`` strategy materialises the cost matrix.
TENSORIZED_MAX_ELEMENTS = 1 << 22
#: Cost entries held at once by one block of the chunked strategy (8 MiB in float32: few enough
#: blocks per pass that the per-op threading overhead stays small on a busy CPU).
CHUNK_ELEMENTS = 1 << 21


#: Scores more than 46 below their row's largest (e^{−46} ≈ 1e−20) are raised to it before the
#: exponential: no float32 sum or product changes (M·1e−20 ≪ 2⁻²⁴), while arguments that
#: underflow make the CPU's exp ~8× slower and its subnormal results make GEMMs ~6× slower.
EXP_FLOOR = -46.0


def exp_from_peak_(scores: Tensor, dim: int) -> Tensor:
    """scores ← exp(max(scores − peak, EXP_FLOOR)) in place, peak = max along ``dim``; returns
    the peak (kept dim): Σ exp(scores) = exp(peak)·Σ(result) to float32 precision."""
    peak = scores.amax(dim=dim, keepdim=True)
    scores.sub_(peak).clamp_min_(EXP_FLOOR).exp_()
    return peak


def sqdist(
    x: Tensor, y: Tensor, x_shift: Tensor | None = None, y_shift: Tensor | None = None
) -> Tensor:
    """C_ij = ‖(x_i − x_shift) − (y_j − y_shift)‖², via ‖x‖² + ‖y‖² − 2⟨x, y⟩, clamped at 0."""
    if x_shift is not None:
        x = x - x_shift
    if y_shift is not None:
        y = y - y_shift
    return _sqdist(x, y)


def _sqdist(x: Tensor, y: Tensor) -> Tensor:
    """(…, N, M) squared distances of (…, N, d) and (…, M, d) clouds."""
    xx = (x * x).sum(dim=-1, keepdim=True)
    yy = (y * y).sum(dim=-1).unsqueeze(-2)
    mm = torch.baddbmm if x.dim() == 3 else torch.addmm
    return mm(xx + yy, x, y.mT, alpha=-2.0).clamp_min_(0.0)


def centroid(x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None) -> CentroidStats:
    """μ_x = Σ a_i x_i, μ_y = Σ b_j y_j and ‖μ_x − μ_y‖², over the last-but-one axis.

    ``None`` weights are uniform (a plain mean: no weight vector is built).
    """
    mu_x = x.mean(dim=-2) if a is None else (a.unsqueeze(-2) @ x).squeeze(-2)
    mu_y = y.mean(dim=-2) if b is None else (b.unsqueeze(-2) @ y).squeeze(-2)
    diff = mu_x - mu_y
    return CentroidStats(mu_x, mu_y, (diff * diff).sum(dim=-1))


def bounding_diameter(x: Tensor, y: Tensor) -> Tensor:
    """Largest bounding-box diagonal of x_b ∪ y_b over the batch, a 0-dim tensor (no sync)."""
    upper = torch.maximum(x.amax(-2), y.amax(-2))
    lower = torch.minimum(x.amin(-2), y.amin(-2))
    return (upper - lower).norm(dim=-1).amax()


class TensorizedCost(CostOperator):
    """Cost operator holding the dense (B, N, M) tensor C_bij = ‖x_bi − (y_bj + shift_b)‖²."""

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        super().__init__(x, y, shift)
        self._y_shifted = self.y_shifted
        self.cost = _sqdist(self.x, self._y_shifted)

    def _scores(self, h: Tensor, eps: float, dim: int) -> Tensor:
        """h − C/ε with h broadcast along the reduced axis ``dim`` (a new (B, N, M) tensor)."""
        return torch.sub(
            h.unsqueeze(-2) if dim == -1 else h.unsqueeze(-1), self.cost, alpha=1.0 / eps
        )

    def _softmin(self, h: Tensor, eps: float, dim: int) -> Tensor:
        scores = self._scores(h, eps, dim)
        peak = exp_from_peak_(scores, dim)
        return -eps * (peak + scores.sum(dim=dim, keepdim=True).log_()).squeeze(dim)

    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        return self._softmin(h, eps, -1)

    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        return self._softmin(h, eps, -2)

    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        plan = self._scores(h, eps, -1)
        exp_from_peak_(plan, -1)
        return (plan @ self._y_shifted).div_(plan.sum(dim=-1, keepdim=True))

    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        plan = self._scores(h, eps, -2)
        exp_from_peak_(plan, -2)
        return (plan.mT @ self.x).div_(plan.sum(dim=-2).unsqueeze(-1))

    def diameter(self) -> Tensor:
        return bounding_diameter(self.x, self._y_shifted)


class ChunkedCost(CostOperator):
    """Cost operator that never holds more than ``B × block × (N or M)`` cost entries.

    Each call walks row (or column) blocks, recomputes the block from the embeddings and reduces
    it at once: memory O(B·(N + M)·block) instead of O(B·N·M). A block of scores is one
    ``baddbmm``:

        h_j − C_ij/ε = [h_j − ‖c_j‖²/ε] + (2/ε)·⟨r_i, c_j⟩ − ‖r_i‖²/ε,

    where the row term ‖r_i‖²/ε is constant along the reduction, so it is added after the
    log-sum-exp (and cancels in the softmax); the max-shift and exp then run in place on the
    block. The squared norms are computed once per operator. The self problems are not
    stacked: that would copy both clouds, more memory than the blocks themselves.
    """

    stacks_self_problems = False

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        shift: Tensor | None = None,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        super().__init__(x, y, shift)
        self.chunk_elements = chunk_elements
        self._y_shifted = self.y_shifted
        self._x_sq = (self.x * self.x).sum(dim=-1)
        self._y_sq = (self._y_shifted * self._y_shifted).sum(dim=-1)

    def _blocks(self, length: int, other: int) -> range:
        step = max(1, self.chunk_elements // max(other * self.batch, 1))
        return range(0, length, step)

    def _scores(self, col_term: Tensor, rows: Tensor, cols: Tensor, eps: float) -> Tensor:
        """The block [h_j − ‖c_j‖²/ε] + (2/ε)·⟨r_i, c_j⟩, (B, rows, cols)."""
        return torch.baddbmm(col_term.unsqueeze(-2), rows, cols.mT, alpha=2.0 / eps)

    def _reduce_rows(
        self, h: Tensor, eps: float, rows: Tensor, cols: Tensor, rows_sq: Tensor, cols_sq: Tensor
    ) -> Tensor:
        """−ε·LSE over ``cols`` of h_j − C(rows_i, cols_j)/ε, for every row, in blocks."""
        lse = torch.empty(rows.shape[:-1], dtype=rows.dtype, device=rows.device)
        col_term = h - cols_sq / eps
        starts = self._blocks(rows.shape[-2], cols.shape[-2])
        step = starts.step
        for s in starts:
            block = self._scores(col_term, rows[:, s : s + step], cols, eps)
            peak = exp_from_peak_(block, -1)
            lse[:, s : s + step] = peak.squeeze(-1) + block.sum(dim=-1).log_()
            del block  # free it before the next baddbmm allocates: one block alive at a time
        return rows_sq - eps * lse  # −ε·(lse − ‖r_i‖²/ε)

    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        return self._reduce_rows(h, eps, self.x, self._y_shifted, self._x_sq, self._y_sq)

    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        return self._reduce_rows(h, eps, self._y_shifted, self.x, self._y_sq, self._x_sq)

    def _barycenter(
        self, h: Tensor, eps: float, rows: Tensor, cols: Tensor, cols_sq: Tensor
    ) -> Tensor:
        """Σ over ``cols`` of softmax(h_j − C(rows_i, cols_j)/ε)·cols_j, in row blocks."""
        out = torch.empty(rows.shape[:-1] + cols.shape[-1:], dtype=rows.dtype, device=rows.device)
        col_term = h - cols_sq / eps
        starts = self._blocks(rows.shape[-2], cols.shape[-2])
        step = starts.step
        for s in starts:
            block = self._scores(col_term, rows[:, s : s + step], cols, eps)
            exp_from_peak_(block, -1)
            out[:, s : s + step] = (block @ cols).div_(block.sum(dim=-1, keepdim=True))
            del block
        return out

    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        return self._barycenter(h, eps, self.x, self._y_shifted, self._y_sq)

    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        return self._barycenter(h, eps, self._y_shifted, self.x, self._x_sq)

    def diameter(self) -> Tensor:
        return bounding_diameter(self.x, self._y_shifted)


STRATEGIES = ("auto", "tensorized", "chunked")


def make_cost(
    x: Tensor, y: Tensor, shift: Tensor | None = None, strategy: str = "auto"
) -> CostOperator:
    """The reference cost operator for (B, N, d), (B, M, d) clouds: tensorized for small
    problems, chunked for large ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        small = x.shape[0] * x.shape[-2] * y.shape[-2] <= TENSORIZED_MAX_ELEMENTS
        strategy = "tensorized" if small else "chunked"
    return TensorizedCost(x, y, shift) if strategy == "tensorized" else ChunkedCost(x, y, shift)
