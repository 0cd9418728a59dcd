"""Small shared helpers for :mod:`cma.eval`: input checks, normalisation, metric key lists."""

from __future__ import annotations

import torch
from torch import Tensor

GAP_KEYS: tuple[str, ...] = ("gap_raw", "gap_centroid", "gap_distribution", "gap_total")
"""The four gap metrics of SPEC section 2, in embedding units."""

FLOOR_KEY = "gap_paraphrase"
"""G_T between the first and second captions of the same test images (text against text): how
far paired data can be from itself within one modality, a floor for ``gap_total``."""

FRACTION_KEYS: tuple[str, ...] = (
    "zeroshot_top1",
    "zeroshot_top5",
    "retrieval_i2t_r1",
    "retrieval_i2t_r5",
    "retrieval_i2t_r10",
    "retrieval_t2i_r1",
    "retrieval_t2i_r5",
    "retrieval_t2i_r10",
    "ari",
)
"""Task metrics that are fractions in [0, 1] (higher is better)."""

CAPTION_KEYS: tuple[str, ...] = ("cider", "bleu4", "rougeL")
"""Captioning metrics on pycocoevalcap's scale (higher is better)."""

TASK_KEYS: tuple[str, ...] = FRACTION_KEYS + CAPTION_KEYS
"""All task metrics (everything but the gaps and ``ari_std``)."""

METRIC_KEYS: tuple[str, ...] = (*GAP_KEYS, FLOOR_KEY, *FRACTION_KEYS, "ari_std", *CAPTION_KEYS)
"""Every key :func:`cma.eval.evaluate` can return (SPEC section 6 ``METRICS``; ``gap_paraphrase``
only when test images have two captions or more)."""


def as_matrix(name: str, t: Tensor | object, *, dim: int | None = None) -> Tensor:
    """``t`` as a float32 CPU tensor of shape (n, d); else ``ValueError`` naming ``name``."""
    t = torch.as_tensor(t)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has dimension {t.shape[1]}, expected {dim}")
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def as_index(name: str, t: Tensor | object, *, length: int, upper: int) -> Tensor:
    """Return ``t`` as a LongTensor of shape (length,) with values in [0, upper)."""
    t = torch.as_tensor(t).detach().to("cpu")
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.is_floating_point():
        raise ValueError(f"{name} must hold integers, got {t.dtype}")
    t = t.long()
    if length and (int(t.min()) < 0 or int(t.max()) >= upper):
        raise ValueError(
            f"{name} values must lie in [0, {upper}), got [{int(t.min())}, {int(t.max())}]"
        )
    return t


def l2n(t: Tensor) -> Tensor:
    """Rows divided by their L2 norm (cosine geometry); zero rows stay zero."""
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
