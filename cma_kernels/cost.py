"""The cost operator: the one object a backend implements for the Sinkhorn solver.

For two clouds x (N, d), y (M, d) and an optional translation ``shift`` of the second cloud,
the cost is C_ij = ‖x_i − (y_j + shift)‖². A translation is how centring is fused in:
‖(x_i − μ_x) − (y_j − μ_y)‖² = ‖x_i − (y_j + μ_x − μ_y)‖².

A backend provides four reductions over C, each O(N·M·d) work and O((N + M)·d) output:

* ``softmin_rows(h, ε)_i = −ε · log Σ_j exp(h_j − C_ij/ε)``      (N,)
* ``softmin_cols(h, ε)_j = −ε · log Σ_i exp(h_i − C_ij/ε)``      (M,)
* ``barycenter_rows(h, ε)_i = Σ_j softmax_j(h_j − C_ij/ε) (y_j + shift)``   (N, d)
* ``barycenter_cols(h, ε)_j = Σ_i softmax_i(h_i − C_ij/ε) x_i``             (M, d)

The barycenters are the rows (columns) of the transport plan P_ij = a_i b_j e^{(f_i+g_j−C_ij)/ε}
normalised to exact marginals — attention's softmax(QKᵀ)·V with the cost as the score — and
give the envelope-theorem gradient. The solver loop, ε-scaling, tolerance stop and gradients
(``cma_kernels.sinkhorn``) are written once against this interface.
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
    """Reductions over C_ij = ‖x_i − (y_j + shift)‖² without exposing C itself."""

    def __init__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> None:
        self.x = x
        self.y = y
        self.shift = shift
        self.y_shifted = y if shift is None else y + shift

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def m(self) -> int:
        return self.y.shape[0]

    @abstractmethod
    def softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        """f_i = −ε·LSE_j(h_j − C_ij/ε), shape (N,)."""

    @abstractmethod
    def softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        """g_j = −ε·LSE_i(h_i − C_ij/ε), shape (M,)."""

    @abstractmethod
    def barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        """Σ_j softmax_j(h_j − C_ij/ε)·(y_j + shift), shape (N, d)."""

    @abstractmethod
    def barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        """Σ_i softmax_i(h_i − C_ij/ε)·x_i, shape (M, d)."""

    @abstractmethod
    def diameter(self) -> float:
        """An upper bound of max_ij ‖x_i − (y_j + shift)‖ (the bounding-box diagonal)."""
