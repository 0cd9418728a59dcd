"""The TPC-CMA objective as a drop-in open_clip loss (SPEC §4).

    L = L_CLIP + β·L_align,   L_align = λ_C·‖μ_x − μ_y‖² + λ_D·S_ε(x − μ_x, y − μ_y)

L_CLIP is open_clip's symmetric InfoNCE (``open_clip.loss.ClipLoss``), unchanged; β = α(t)·w(t)
is set by the curriculum each step (``CMALoss.weight``) or passed per call. Under DDP the
centroid and Sinkhorn terms see the global batch: by default the solve is sharded across the
ranks (``cma_kernels``' ``group=``: each rank passes its local features and solves for its own
points only, per-rank work O(N²·d / W); see docs/sharding.md); with ``shard_alignment=False``
the features are instead gathered *with* gradients (open_clip's ``gather_features``) and every
rank solves the whole problem. Both give the same value and the same DDP-averaged gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from open_clip.loss import ClipLoss, gather_features
from torch import Tensor, nn

from cma_kernels import gap_terms


def _float32(t: Tensor) -> Tensor:
    """``t`` in float32 (float64 kept for gradient checks)."""
    return t if t.dtype == torch.float64 else t.float()


class LossTerms(NamedTuple):
    """Unweighted parts of one batch's objective."""

    contrastive: Tensor  # L_CLIP
    align: Tensor  # L_align = λ_C·centroid_sq + λ_D·distribution_sq
    centroid_sq: Tensor  # ‖μ_x − μ_y‖²
    distribution_sq: Tensor  # S_ε(x − μ_x, y − μ_y)


class CMALoss(nn.Module):
    """open_clip's ClipLoss plus the weighted alignment term.

    ``forward(image_features, text_features, logit_scale, output_dict=True)`` returns
    ``{"contrastive_loss", "alignment_loss", "total"}`` where ``alignment_loss`` is already
    weighted (β·L_align), so the two terms add up to ``total``. In open_clip's own training
    loop (which sums the dict's values) build it with ``with_total=False``.
    The unweighted parts of the last call are kept in ``last_terms`` (floats) for logging.

    Under DDP (``world_size > 1``, default process group) ``shard_alignment=True`` (default)
    shards the alignment solve across the ranks instead of gathering the features; its
    gradients follow the DDP convention of ``gather_with_grad=True`` (each rank W × the
    whole-batch gradient of its own features, averaged by DDP), whatever ``gather_with_grad``.
    """

    def __init__(
        self,
        weight: float = 0.5,
        *,
        lambda_centroid: float = 1.0,
        lambda_distribution: float = 1.0,
        blur: float = 0.05,
        scaling: float = 0.5,
        tol: float = 1e-2,
        max_iter: int = 500,
        backend: str = "auto",
        with_total: bool = True,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        cache_labels: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shard_alignment: bool = True,
    ) -> None:
        super().__init__()
        self.weight = float(weight)
        self.lambda_centroid = lambda_centroid
        self.lambda_distribution = lambda_distribution
        self.solver = {
            "blur": blur,
            "scaling": scaling,
            "tol": tol,
            "max_iter": max_iter,
            "backend": backend,
        }
        self.with_total = with_total
        self.gather_with_grad = gather_with_grad
        self.rank, self.world_size = rank, world_size
        self.shard_alignment = shard_alignment and world_size > 1
        if self.shard_alignment:
            self.solver["group"] = True  # the default process group, as ClipLoss's gathers
        self.clip = ClipLoss(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
        )
        self.last_terms: dict[str, float] = {}

    def terms(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor
    ) -> LossTerms:
        """L_CLIP and the unweighted L_align (on the globally gathered batch under DDP).

        L_CLIP runs as open_clip runs it (under the caller's autocast, if any); L_align and its
        parts are computed with autocast disabled on float32 features (float64 kept) and are
        float32 tensors whatever the feature dtype.
        """
        contrastive = self.clip(image_features, text_features, logit_scale)
        if self.world_size > 1 and not self.shard_alignment:
            image_features, text_features = gather_features(
                image_features,
                text_features,
                gather_with_grad=self.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )
        # L_align in float32 whatever the autocast around us (SPEC §4): the solver's matmuls in
        # bf16 would move S_ε by ~1e-3 relative, and the custom ops have no autocast rule.
        with torch.autocast(image_features.device.type, enabled=False):
            gaps = gap_terms(_float32(image_features), _float32(text_features), **self.solver)
            align = (
                self.lambda_centroid * gaps.centroid + self.lambda_distribution * gaps.distribution
            )
        return LossTerms(contrastive, align, gaps.centroid, gaps.distribution)

    def combine(self, terms: LossTerms, weight: float | None = None) -> dict[str, Tensor]:
        """The output dict for ``terms`` with β = ``weight`` (default ``self.weight``)."""
        beta = self.weight if weight is None else float(weight)
        weighted = beta * terms.align
        self.last_terms = {
            "align": float(terms.align.detach()),
            "weight": beta,
            "centroid_gap_sq": float(terms.centroid_sq.detach()),
            "distribution_gap_sq": float(terms.distribution_sq.detach()),
        }
        out = {"contrastive_loss": terms.contrastive, "alignment_loss": weighted}
        if self.with_total:
            out["total"] = terms.contrastive + weighted
        return out

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        output_dict: bool = True,
        *,
        weight: float | None = None,
    ) -> dict[str, Tensor] | Tensor:
        """The loss terms for one batch; ``weight`` overrides β for this call."""
        out = self.combine(self.terms(image_features, text_features, logit_scale), weight)
        if not output_dict:
            return out["contrastive_loss"] + out["alignment_loss"]
        return out


def grad_norm(loss: Tensor, params: list[nn.Parameter]) -> float:
    """‖∇_θ loss‖₂ over ``params`` without touching ``.grad`` (graph kept for the real step)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    total = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    return total**0.5
