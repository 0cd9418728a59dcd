r"""Online soft-min (FlashAttention-style log-sum-exp) over the implicit cost matrix.

For a batch of row clouds R (B, n_r, d), column clouds K (B, n_c, d), their cost terms t, t'
(see :mod:`._common`) and column vectors h (B, n_c), the kernel computes, per batch item

    out_r = −ε · log Σ_c exp(h_c − C_rc/ε),     C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

with the streaming pass of :mod:`._streaming` (online base-2 log-sum-exp over cost tiles
recomputed from the embeddings). Only O(n_r + n_c) numbers ever reach memory: never the
(n_r, n_c) matrix. Offsets are int64, so n_r·d and n_c·d may exceed 2³¹.

The whole batch is one launch (grid axis 2). When there are too few row blocks × batch items
to fill the GPU, the columns are split into chunks over grid axis 1; each program then writes
its partial base-2 LSE and the chunks are merged by a (B, split, n_r) log-sum-exp in PyTorch.

The same kernel serves f = softmin_rows (R = x, K = y), g = softmin_cols (R = y, K = x) and the
self problems x↔x, y↔y of the debiased divergence.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from . import _config
from ._common import Operand
from ._streaming import stream


def _gpu_split(n_rows: int, n_cols: int, batch: int, device: torch.device) -> int:
    """Column chunks so that (row blocks × batch × chunks) ≥ 2 waves on the GPU (1 when the
    batch's row blocks alone fill it)."""
    row_blocks = triton.cdiv(n_rows, 128) * batch
    target = 2 * _config.num_sms(device.index if device.index is not None else 0)
    split = max(1, triton.cdiv(target, row_blocks))
    return min(split, triton.cdiv(n_cols, 4 * _config.SOFTMIN_SPLIT_ALIGN))


def softmin(
    rows: Operand,
    cols: Operand,
    rt: Tensor,
    ct: Tensor,
    h: Tensor,
    eps: float,
    dtype: torch.dtype,
    prec: str,
) -> Tensor:
    """out_br = −ε·log Σ_c exp(h_bc − C_brc/ε) for packed (B, n_r, d), (B, n_c, d) clouds.

    Returns a (B, n_r) tensor of ``dtype`` (computed in fp32), from one launch.
    """
    batch, n_r, width = rows[0].shape
    n_c = cols[0].shape[1]
    block = _config.INTERPRET_BLOCK
    if _config.interpreted():
        split = max(1, min(_config.INTERPRET_SPLIT, triton.cdiv(n_c, block)))
        align = block
    else:
        split = _gpu_split(n_r, n_c, batch, rt.device)
        align = _config.SOFTMIN_SPLIT_ALIGN
    cols_per_split = triton.cdiv(triton.cdiv(n_c, split), align) * align
    split = triton.cdiv(n_c, cols_per_split)
    out_scale = -eps * _config.LN2 if split == 1 else 1.0
    out = torch.empty((batch, split, n_r), dtype=torch.float32, device=rt.device)
    stream(
        rows, cols, rt, ct, h, out, eps=eps, bary=False, prec=prec, cols_per_split=cols_per_split,
        out_scale=out_scale, grid=lambda meta: (triton.cdiv(n_r, meta["BLOCK_R"]), split),
        interpret={"BLOCK_R": block, "BLOCK_C": block, "BLOCK_K": _config.interpret_block_k(width)},
    )  # fmt: skip
    # One chunk: the kernel wrote f. Several: merge base-2 LSEs, f = −ε · ln Σ_s 2^{lse2_s}.
    res = out[:, 0] if split == 1 else torch.logsumexp(out * _config.LN2, dim=1).mul_(-eps)
    return res.to(dtype)
