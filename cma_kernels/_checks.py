"""Input validation shared by every public function.

Every problem raises a ``ValueError`` whose message starts with the argument's name, so a
user reading a traceback from deep inside a training loop knows which tensor was wrong.

Two kinds of checks:

* **structural** (type, shape, dtype, device) — free, run eagerly on every call;
* **data** (NaN/Inf values, negative weights, weight sums) — they need the values on the host,
  i.e. a device→host sync on CUDA. They are never run alone: :func:`data_problems` builds one
  small device vector of findings that the caller reads together with a value it has to read
  anyway (the solver's diameter), or that it checks only after a result came out non-finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: Relative tolerance on ``sum(weights) == 1``.
WEIGHT_SUM_RTOL = 1e-3


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_cloud(name: str, x: object, batched: bool = True) -> Tensor:
    """A point cloud: a floating-point, non-empty (n, d) tensor — or (B, n, d) if ``batched``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    dims = (2, 3) if batched else (2,)
    if x.dim() not in dims:
        want = "(n, d) or (B, n, d)" if batched else "(n, d)"
        raise ValueError(
            f"{name}: expected a tensor of shape {want}, got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point dtype, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty point cloud, shape {tuple(x.shape)}")
    return x


def check_pair(
    x: object, y: object, names: tuple[str, str] = ("x", "y"), batched: bool = True
) -> tuple[Tensor, Tensor]:
    """Two clouds in the same space, on the same device, with the same batch size."""
    x = check_cloud(names[0], x, batched)
    y = check_cloud(names[1], y, batched)
    if x.dim() != y.dim():
        raise ValueError(
            f"{names[1]}: {y.dim()}-D shape {tuple(y.shape)}, but {names[0]} is {x.dim()}-D "
            f"{tuple(x.shape)} (batch both or neither)"
        )
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{names[1]}: feature dimension {y.shape[-1]} does not match {names[0]}'s {x.shape[-1]}"
        )
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[1]}: batch size {y.shape[0]} does not match {names[0]}'s {x.shape[0]}"
        )
    if x.device != y.device:
        raise ValueError(f"{names[1]}: on device {y.device}, but {names[0]} is on {x.device}")
    return x, y


def check_weights(name: str, w: Tensor | None, cloud: Tensor, dtype: torch.dtype) -> Tensor | None:
    """Weights shaped like ``cloud``'s leading axes ((n,) or (B, n)), detached, in ``dtype``.

    ``None`` stays ``None`` (uniform). Only the structure is checked here; the values (finite,
    non-negative, summing to 1) are checked by :func:`data_problems` / :func:`raise_problems`.
    """
    if w is None:
        return None
    shape = tuple(cloud.shape[:-1])
    if not isinstance(w, Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor of shape {shape}, got {type(w).__name__}"
        )
    if tuple(w.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point dtype, got {w.dtype}")
    if w.device != cloud.device:
        raise ValueError(f"{name}: on device {w.device}, but the points are on {cloud.device}")
    return w.detach().to(dtype)


def uniform(cloud: Tensor, dtype: torch.dtype, count: int | None = None) -> Tensor:
    """Uniform weights 1/count (default: the cloud's own n) shaped like its leading axes."""
    n = cloud.shape[-2] if count is None else count
    return torch.full(cloud.shape[:-1], 1.0 / n, dtype=dtype, device=cloud.device)


def normalized(w: Tensor, total: Callable[[Tensor], Tensor] = lambda t: t) -> Tensor:
    """w / Σw along the last axis — what the sum tolerance let through (e.g. float32 weights with
    float64 points) becomes exact; with Σa ≠ Σb the balanced problem has no solution.
    ``total`` completes the sum over the processes of a sharded problem."""
    return w / total(w.sum(dim=-1, keepdim=True))


#: The findings of :func:`data_problems`, in order.
_FINDINGS = ("nonfinite", "negative", "sum_error")


def data_problems(
    clouds: dict[str, Tensor],
    weights: dict[str, Tensor],
    total: Callable[[Tensor], Tensor] = lambda t: t,
) -> Tensor:
    """One small device vector of data findings, read later with a single host sync.

    For each cloud: 1 if its sum is not finite — the case for every cloud holding a NaN/Inf, at
    the cost of one fast reduction (an elementwise ``isfinite`` pass costs ~100× more on the
    CPU). For each weight vector: NaN/Inf, −min (> 0 if a weight is negative) and the largest
    deviation of a sum from 1 (``total`` completes a sum over the processes of a sharded
    problem).
    """
    rows = [(~torch.isfinite(c.sum())).to(torch.float64) for c in clouds.values()]
    for w in weights.values():
        total_w = total(w.sum(dim=-1))
        rows += [
            (~torch.isfinite(w)).any().to(torch.float64),
            (-w.amin()).to(torch.float64),
            (total_w - 1).abs().amax().to(torch.float64),
        ]
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(rows)


def raise_problems(
    found: Sequence[float],
    clouds: dict[str, Tensor],
    weights: dict[str, Tensor],
    where: str = "",
) -> None:
    """Raise the first problem :func:`data_problems` found (``found`` is its host copy).

    ``where`` (e.g. " on at least one rank") replaces the local row count of a sharded problem,
    so that every process raises the same message.
    """
    found = list(found)
    for name, c in clouds.items():
        if found.pop(0) > 0:
            if where:
                raise ValueError(f"{name}: contains NaN or Inf values{where}")
            rows = c.reshape(-1, c.shape[-1])
            bad = int((~torch.isfinite(rows)).any(dim=1).sum())
            if bad == 0:
                raise ValueError(f"{name}: values too large (their sum overflows {c.dtype})")
            raise ValueError(
                f"{name}: contains NaN or Inf values (in {bad} of {rows.shape[0]} rows)"
            )
    for name, w in weights.items():
        nonfinite, negative, sum_error = (found.pop(0) for _ in _FINDINGS)
        if nonfinite > 0 or math.isnan(negative) or math.isnan(sum_error):
            raise ValueError(f"{name}: contains NaN or Inf values{where}")
        if negative > 0:
            raise ValueError(f"{name}: weights must be non-negative (min {-negative:.3g}){where}")
        if not sum_error <= WEIGHT_SUM_RTOL:
            if where:
                raise ValueError(f"{name}: weights must sum to 1 over all ranks{where}")
            sums = w.sum(dim=-1).reshape(-1).tolist()
            shown = ", ".join(f"{s:.6g}" for s in sums[:4]) + (" …" if len(sums) > 4 else "")
            raise ValueError(f"{name}: weights must sum to 1, they sum to {shown}")


def check_data(clouds: dict[str, Tensor], weights: dict[str, Tensor]) -> None:
    """The data checks with their own host read — for CPU tensors, where a read costs no sync."""
    if torch.compiler.is_compiling():
        return  # data-dependent checks would break the graph
    raise_problems(data_problems(clouds, weights).tolist(), clouds, weights)


def check_positive(name: str, value: float) -> float:
    """A finite, strictly positive number (blur, tolerances)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value: int) -> int:
    """A positive integer (iteration counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def check_scaling(scaling: float) -> float:
    """The ε-scaling factor lies in (0, 1)."""
    scaling = check_positive("scaling", scaling)
    if scaling >= 1:
        raise ValueError(f"scaling: must lie in (0, 1), got {scaling!r}")
    return scaling
