"""cma_kernels: Sinkhorn divergences and centroid statistics on point clouds.

Fused Triton kernels on CUDA, PyTorch reference twins everywhere else; no knowledge of CLIP.

>>> import torch, cma_kernels
>>> x, y = torch.randn(128, 16), torch.randn(96, 16) + 1
>>> float(cma_kernels.sinkhorn_divergence(x, y, blur=0.5)) > 0
True
"""

from .cost import CentroidStats, CostOperator
from .dispatch import resolve_backend
from .functional import (
    GapTerms,
    centroid_stats,
    distribution_gap_loss,
    gap_terms,
    pairwise_sqdist,
)
from .samples_loss import SamplesLoss
from .sinkhorn import Potentials, epsilon_schedule, sinkhorn_divergence, sinkhorn_potentials

__all__ = [
    "CentroidStats",
    "CostOperator",
    "GapTerms",
    "Potentials",
    "SamplesLoss",
    "centroid_stats",
    "distribution_gap_loss",
    "epsilon_schedule",
    "gap_terms",
    "pairwise_sqdist",
    "resolve_backend",
    "sinkhorn_divergence",
    "sinkhorn_potentials",
]

__version__ = "0.1.0"
