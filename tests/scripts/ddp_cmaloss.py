"""Worker for tests/test_train_ddp.py: CMALoss + a linear model under DDP (gloo, CPU).

Each rank takes its contiguous half of a fixed batch, computes the loss and back-propagates
through DistributedDataParallel, twice: with the alignment solve sharded across the ranks
(``shard_alignment=True``, the default) and on the gathered features (``False``). Rank r writes
both runs' losses and the model's (all-reduced) gradients to ``$OUT_DIR/rank{r}.pt``.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cma.losses import CMALoss
from cma_kernels import sharded


def batch(seed: int = 0, n: int = 16, d_in: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randn(n, d_in, generator=g) + 0.5


class TwoTowers(nn.Module):
    def __init__(self, d_in: int = 12, d: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(d_in, d)
        self.text = nn.Linear(d_in, d)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return (
            F.normalize(self.image(a), dim=-1),
            F.normalize(self.text(b), dim=-1),
            self.logit_scale.exp(),
        )


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, texts = batch()
    per = images.shape[0] // world
    part = slice(rank * per, (rank + 1) * per)
    runs = {}
    for shard in (True, False):
        model = nn.parallel.DistributedDataParallel(TwoTowers())
        loss = CMALoss(
            weight=0.7, blur=0.3, tol=1e-6, rank=rank, world_size=world, shard_alignment=shard
        )
        before = sharded.COUNTERS["collectives"]
        out = loss(*model(images[part], texts[part]))
        out["total"].backward()
        collectives = sharded.COUNTERS["collectives"] - before  # the sharded solver's own
        grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
        terms = {k: v.detach().clone() for k, v in out.items()}
        runs["sharded" if shard else "gathered"] = {
            "terms": terms,
            "grads": grads,
            "collectives": collectives,
        }
    torch.save(runs, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
