r"""Streaming barycenters: softmax(scores)·V without the transport plan (attention's P·V).

For a batch of row clouds R (B, n_r, d), column clouds K (B, n_c, d) and column vectors h
(B, n_c), per batch item (subscript b dropped)

    out_r = Σ_c softmax_c(h_c − C_rc/ε) · K_c,     C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

i.e. the rows of the plan P_rc ∝ exp(h_c − C_rc/ε) normalised to their exact marginal and
applied to the column points — the barycentric projection behind the envelope gradient
∂OT_ε/∂x_i = 2a_i(x_i − out_i). Program (row block, feature block) runs the streaming pass of
:mod:`._streaming` and also rescales its (BLOCK_R, BLOCK_V) fp32 accumulator by 2^(m−m') before
adding ``tl.dot(p, K_tile)``; the output is acc / l. The feature axis of the output is tiled
(BLOCK_V) because a d = 512 fp32 accumulator does not fit in registers; each feature block
recomputes the scores, which costs one extra score pass per block — small next to the solver,
which makes ~100 soft-min passes. No (n_r, n_c) buffer exists; offsets are int64.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from . import _config
from ._common import Operand
from ._streaming import stream


def barycenter(
    rows: Operand,
    cols: Operand,
    rt: Tensor,
    ct: Tensor,
    h: Tensor,
    eps: float,
    d: int,
    dtype: torch.dtype,
    prec: str,
) -> Tensor:
    """out_br = Σ_c softmax_c(h_bc − C_brc/ε)·cols_bc for packed (B, n, ·) clouds of d features.

    (B, n_r, d) of ``dtype``, computed in fp32 (the points' TF32 hi + lo parts when split), from
    one launch.
    """
    batch, n_r, width = rows[0].shape
    out = torch.empty((batch, n_r, d), dtype=torch.float32, device=rt.device)
    block_k = _config.interpret_block_k(width)
    block = _config.INTERPRET_BLOCK
    stream(
        rows, cols, rt, ct, h, out, eps=eps, bary=True, prec=prec, cols_per_split=cols[0].shape[1],
        grid=lambda meta: (triton.cdiv(n_r, meta["BLOCK_R"]), triton.cdiv(d, meta["BLOCK_V"])),
        interpret={"BLOCK_R": block, "BLOCK_C": block, "BLOCK_K": block_k, "BLOCK_V": block_k},
    )  # fmt: skip
    return out.to(dtype)
