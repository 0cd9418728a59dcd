"""The TPC-CMA objective as a drop-in open_clip loss (SPEC §4).

    L = L_CLIP + β·L_align,   L_align = λ_C·‖μ_x − μ_y‖² + λ_D·S_ε(x − μ_x, y − μ_y)

L_CLIP is open_clip's symmetric InfoNCE (``open_clip.loss.ClipLoss``), unchanged; β = α(t)·w(t)
is set by the curriculum each step (``CMALoss.weight``) or passed per call. Under DDP the
features are gathered across ranks *with* gradients (open_clip's ``gather_features``) so the
centroid and Sinkhorn terms see the global batch.
"""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss, gather_features
from torch import Tensor, nn

from cma_kernels import gap_terms


class CMALoss(nn.Module):
    """open_clip's ClipLoss plus the weighted alignment term.

    ``forward(image_features, text_features, logit_scale, output_dict=True)`` returns
    ``{"contrastive_loss", "alignment_loss", "total"}`` where ``alignment_loss`` is already
    weighted (β·L_align), so the two terms add up to ``total``. In open_clip's own training
    loop (which sums the dict's values) build it with ``with_total=False``.
    The unweighted parts of the last call are kept in ``last_terms`` (floats) for logging.
    """

    def __init__(
        self,
        weight: float = 0.5,
        *,
        lambda_centroid: float = 1.0,
        lambda_distribution: float = 1.0,
        blur: float = 0.05,
        scaling: float = 0.5,
        tol: float = 1e-3,
        max_iter: int = 1000,
        backend: str = "auto",
        with_total: bool = True,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        cache_labels: bool = True,
        rank: int = 0,
        world_size: int = 1,
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
        self.clip = ClipLoss(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
        )
        self.last_terms: dict[str, float] = {}

    def alignment(self, image_features: Tensor, text_features: Tensor) -> tuple[Tensor, dict]:
        """L_align on the (globally gathered) batch and its unweighted parts."""
        if self.world_size > 1:
            image_features, text_features = gather_features(
                image_features,
                text_features,
                gather_with_grad=self.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )
        terms = gap_terms(image_features, text_features, **self.solver)
        align = (
            self.lambda_centroid * terms.centroid + self.lambda_distribution * terms.distribution
        )
        parts = {
            "centroid_gap_sq": float(terms.centroid.detach()),
            "distribution_gap_sq": float(terms.distribution.detach()),
        }
        return align, parts

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
        beta = self.weight if weight is None else float(weight)
        contrastive = self.clip(image_features, text_features, logit_scale)
        align, parts = self.alignment(image_features, text_features)
        weighted = beta * align.to(contrastive.dtype)
        total = contrastive + weighted
        self.last_terms = {"align": float(align.detach()), "weight": beta, **parts}
        if not output_dict:
            return total
        out = {"contrastive_loss": contrastive, "alignment_loss": weighted}
        if self.with_total:
            out["total"] = total
        return out


def grad_norm(loss: Tensor, params: list[nn.Parameter]) -> float:
    """‖∇_θ loss‖₂ over ``params`` without touching ``.grad`` (graph kept for the real step)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    total = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    return total**0.5
