"""One training step of a small CLIP with open_clip's ClipLoss and with CMALoss.

CPU: ``cma-tiny`` at batch 256; CUDA: ViT-B/32 at batch 1024 (bf16 autocast). The report gives
the overhead of CMALoss over ClipLoss (target ≤ 15 % on CPU, ≤ 5 % on GPU).
"""

from __future__ import annotations

from typing import Any

import pytest

from . import _config as cfg
from ._harness import BenchContext, run_case


@pytest.mark.parametrize("backend", ["clip", "cma"], ids=["ClipLoss", "CMALoss"])
def test_training_step(benchmark: Any, bench_ctx: BenchContext, backend: str) -> None:
    """Forward, loss, backward and an AdamW step on random images and tokens."""
    _, batch = cfg.train_setup(bench_ctx.dev)
    run_case(benchmark, bench_ctx, "train", backend, batch)
