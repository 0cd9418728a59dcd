"""The cost operator: the one object a backend implements for the Sinkhorn solver.

For a batch of B problems — clouds x (B, N, d), y (B, M, d) and an optional translation
``shift`` (B, d) of the second cloud — the cost is C_bij = ‖x_bi − (y_bj + shift_b)‖². A
translation is how centring is fused in: ‖(x_i − μ_x) − (y_j − μ_y)‖² = ‖x_i − (y_j + μ_x − μ_y)‖².
Unbatched (N, d) problems are the case B = 1.

A backend provides four reductions over C, each O(B·N·M·d) work and O(B·(N + M)·d) output:

* ``softmin_rows(h, ε)_bi = −ε · log Σ_j exp(h_bj − C_bij/ε)``      (B, N)
* ``softmin_cols(h, ε)_bj = −ε · log Σ_i exp(h_bi − C_bij/ε)``      (B, M)
* ``barycenter_rows(h, ε)_bi = Σ_j softmax_j(h_bj − C_bij/ε) (y_bj + shift_b)``   (B, N, d)
* ``barycenter_cols(h, ε)_bj = Σ_i softmax_i(h_bi − C_bij/ε) x_bi``               (B, M, d)

The barycenters are the rows (columns) of the transport plan P_ij = a_i b_j e^{(f_i+g_j−C_ij)/ε}
normalised to exact marginals — attention's softmax(QKᵀ)·V with the cost as the score — and
give the envelope-theorem gradient. The solver loop, ε-scaling, tolerance stop and gradients
(``cma_kernels.sinkhorn``) are written once against this interface; a sharded operator
(``cma_kernels.sharded``) runs the same loop across processes by overriding :meth:`total`.

Every reduction is counted: ``passes`` (reductions run) and ``cost_entries`` (cost entries
computed, B·rows·cols per reduction) — how the benchmarks and tests count the solver's work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from torch import Tensor


class CentroidStats(NamedTuple):
    """Weighted means of both clouds and the squared centroid gap ‖μ_x − μ_y‖²."""

    mu_x: Tensor
    mu_y: Tensor
    gap2: Tensor


class CostOperator(ABC):
    """Reductions over C_bij = ‖x_bi − (y_bj + shift_b)‖² without exposing C itself.

    Subclasses implement the ``_softmin_rows`` … ``_barycenter_cols`` hooks and ``diameter``;
    the public methods count the work and delegate.
    """

    #: Whether the solver may stack OT_ε(x, x) and OT_ε(y, y) into one operator of batch 2B
    #: (one launch per update, at the price of one copy of both clouds).
    stacks_self_problems: bool = True

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        self.x = x  # (B, N, d)
        self.y = y  # (B, M, d)
        self.shift = shift  # (B, d) or None
        self._passes = 0
        self._entries = 0

    @property
    def y_shifted(self) -> Tensor:
        """y + shift (B, M, d), built on demand."""
        return self.y if self.shift is None else self.y + self.shift.unsqueeze(-2)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        return self.x.shape[-2]

    @property
    def m(self) -> int:
        return self.y.shape[-2]

    @property
    def passes(self) -> int:
        """Reductions run so far (one kernel launch each on the Triton path)."""
        return self._passes

    @property
    def cost_entries(self) -> int:
        """Cost entries computed so far (B·N·M per reduction)."""
        return self._entries

    def _count(self) -> None:
        self._passes += 1
        self._entries += self.batch * self.n * self.m

    def softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        """f_bi = −ε·LSE_j(h_bj − C_bij/ε), shape (B, N); h has shape (B, M)."""
        self._count()
        return self._softmin_rows(h, eps)

    def softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        """g_bj = −ε·LSE_i(h_bi − C_bij/ε), shape (B, M); h has shape (B, N)."""
        self._count()
        return self._softmin_cols(h, eps)

    def barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        """Σ_j softmax_j(h_bj − C_bij/ε)·(y_bj + shift_b), shape (B, N, d)."""
        self._count()
        return self._barycenter_rows(h, eps)

    def barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        """Σ_i softmax_i(h_bi − C_bij/ε)·x_bi, shape (B, M, d)."""
        self._count()
        return self._barycenter_cols(h, eps)

    def total(self, t: Tensor) -> Tensor:
        """Sum of a per-process partial result over every process holding part of the problem.

        Identity here; a sharded operator all-reduces (the solver's dual values and stopping
        errors go through this, so the one loop serves both).
        """
        return t

    def reduce_max(self, t: Tensor) -> Tensor:
        """Elementwise maximum of a per-process tensor over every process (identity here)."""
        return t

    @abstractmethod
    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor: ...

    @abstractmethod
    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor: ...

    @abstractmethod
    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor: ...

    @abstractmethod
    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor: ...

    @abstractmethod
    def diameter(self) -> Tensor:
        """0-dim tensor on the clouds' device (no host sync): an upper bound of
        max_bij ‖x_bi − (y_bj + shift_b)‖ (the largest bounding-box diagonal of the batch)."""
