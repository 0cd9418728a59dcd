"""Modality-gap metrics (SPEC §2): raw, centroid, distribution and total gap.

For image embeddings x (N, d) and text embeddings y (M, d), L2-normalised by default:

* raw gap          G_R = mean_i ‖x_i − y_i‖₂                    (paired data only)
* centroid gap     G_C = ‖μ_x − μ_y‖₂                           (Liang et al. 2022)
* distribution gap G_D = sqrt(S_ε(x − μ_x, y − μ_y))            (shape after aligning means)
* total gap        G_T = sqrt(S_ε(x, y))

with S_ε the debiased Sinkhorn divergence, ε = blur². The decomposition G_T² = G_C² + G_D²
is exact for every ε. "The gap" unqualified (as in "gap reduction %") is G_T.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from cma_kernels import centroid_stats, sinkhorn_divergence

#: Solver settings for metrics (float64). The dual value converges much faster than the plan's
#: marginals: on 1000 CLIP-like pairs (d = 128, blur 0.05) an L1 marginal error of 1e-2 (77
#: iterations) leaves a relative value error of 6e-5, against 1.3e-5 at 1e-3 (1063 iterations,
#: 14× slower) — measured against a 1e-4 solve.
METRIC_TOL = 1e-2
METRIC_MAX_ITER = 2000


@dataclass(frozen=True)
class GapReport(Mapping[str, float]):
    """The four gaps in embedding units; behaves as a read-only dict."""

    raw: float
    centroid: float
    distribution: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __getitem__(self, key: str) -> float:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return 4


def as_tensor(name: str, value: Tensor | np.ndarray) -> Tensor:
    """A float64 CPU tensor from a tensor or numpy array (no gradient)."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{name}: expected floating-point values, got dtype {value.dtype}")
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}"
        )
    return value.detach().to("cpu", torch.float64)


def gap_report(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    blur: float = 0.05,
    paired: bool = True,
    normalize: bool = True,
    backend: str = "reference",
) -> GapReport:
    """Raw, centroid, distribution and total gap between two embedding clouds.

    Args:
        x: image embeddings (N, d); y: text embeddings (M, d) — tensors or numpy arrays.
        blur: entropic blur, ε = blur².
        paired: x[i] belongs with y[i] (N == M required); gives the raw gap, else it is NaN.
        normalize: L2-normalise rows first (CLIP's convention). Default True.
        backend: solver backend (metrics run in float64 on the CPU reference by default).
    """
    x, y = as_tensor("x", x), as_tensor("y", y)
    if paired and (x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]):
        raise ValueError(
            "y: paired=True needs as many texts as images, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.nn.functional.normalize(y, dim=-1)
    solver = {"blur": blur, "tol": METRIC_TOL, "max_iter": METRIC_MAX_ITER, "backend": backend}
    stats = centroid_stats(x, y, backend=backend)
    total2 = sinkhorn_divergence(x, y, **solver)
    dist2 = sinkhorn_divergence(x, y, shift=stats.mu_x - stats.mu_y, **solver)
    raw = float((x - y).norm(dim=1).mean()) if paired else math.nan
    return GapReport(
        raw=raw,
        centroid=math.sqrt(max(float(stats.gap2), 0.0)),
        distribution=math.sqrt(max(float(dist2), 0.0)),
        total=math.sqrt(max(float(total2), 0.0)),
    )
