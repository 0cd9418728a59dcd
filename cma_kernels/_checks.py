"""Input validation shared by every public function.

Every problem raises a ``ValueError`` whose message starts with the argument's name, so a
user reading a traceback from deep inside a training loop knows which tensor was wrong.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Relative tolerance on ``sum(weights) == 1``.
WEIGHT_SUM_RTOL = 1e-3


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_cloud(name: str, x: object) -> Tensor:
    """A point cloud: a finite, floating-point, non-empty (n, d) tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D tensor of shape (n, d), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point dtype, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: empty point cloud, shape {tuple(x.shape)}")
    # Data-dependent checks would break torch.compile's graph: they run in eager mode only.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name}: contains NaN or Inf values (in {bad} of {x.shape[0]} rows)")
    return x


def check_pair(x: object, y: object, names: tuple[str, str] = ("x", "y")) -> tuple[Tensor, Tensor]:
    """Two clouds in the same space, on the same device."""
    x = check_cloud(names[0], x)
    y = check_cloud(names[1], y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[1]}: feature dimension {y.shape[1]} does not match {names[0]}'s {x.shape[1]}"
        )
    if x.device != y.device:
        raise ValueError(f"{names[1]}: on device {y.device}, but {names[0]} is on {x.device}")
    return x, y


def check_weights(name: str, w: Tensor | None, n: int, like: Tensor, *also: Tensor) -> Tensor:
    """Non-negative weights of length n summing to 1, in ``like``'s compute dtype.

    ``None`` gives the uniform weights 1/n.
    """
    dtype = compute_dtype(like, *also)  # both clouds: float32 x with float64 y computes in f64
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=dtype, device=like.device)
    if not isinstance(w, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape ({n},), got {type(w).__name__}")
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point dtype, got {w.dtype}")
    if w.device != like.device:
        raise ValueError(f"{name}: on device {w.device}, but the points are on {like.device}")
    w = w.detach().to(dtype)
    if torch.compiler.is_compiling():
        return w
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    if bool((w < 0).any()):
        raise ValueError(f"{name}: weights must be non-negative (min {float(w.min()):.3g})")
    total = float(w.sum())
    if not math.isclose(total, 1.0, rel_tol=WEIGHT_SUM_RTOL):
        raise ValueError(f"{name}: weights must sum to 1, they sum to {total:.6g}")
    # Renormalise what the tolerance let through (e.g. float32 weights with float64 points):
    # with Σa ≠ Σb the balanced problem has no solution and the solver never meets ``tol``.
    return w / w.sum()


def check_positive(name: str, value: float) -> float:
    """A finite, strictly positive number (blur, tolerances)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def check_scaling(scaling: float) -> float:
    """The ε-scaling factor lies in (0, 1)."""
    scaling = check_positive("scaling", scaling)
    if scaling >= 1:
        raise ValueError(f"scaling: must lie in (0, 1), got {scaling!r}")
    return scaling
