"""Training helpers shared by pretraining and the trainer: fast embedded-world batches
(uint8 images normalised per batch, captions tokenised once) and open_clip's decay split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cma.data.world import EmbeddedWorld


class CaptionBank:
    """Every caption of a world tokenised once; ``sample`` draws one caption per image."""

    def __init__(self, world: EmbeddedWorld, tokenizer: Callable) -> None:
        per_image = [world.captions_of(i) for i in range(len(world))]
        unique = sorted({c for caps in per_image for c in caps})
        index = {c: j for j, c in enumerate(unique)}
        self.tokens = torch.cat(
            [tokenizer(unique[i : i + 4096]) for i in range(0, len(unique), 4096)]
        )
        counts = np.array([len(c) for c in per_image])
        self.start = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self.count = torch.from_numpy(counts)
        self.flat = torch.tensor([index[c] for caps in per_image for c in caps])

    def sample(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Tokens of one uniformly drawn reference caption for each image index."""
        pick = (torch.rand(len(images), generator=generator) * self.count[images]).long()
        return self.tokens[self.flat[self.start[images] + pick]]


def uint8_normalizer(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), as the inference transform does."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return lambda x: (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no weight decay on gains, biases, norms and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit" in name
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
