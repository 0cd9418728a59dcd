r"""Online soft-min (FlashAttention-style log-sum-exp) over the implicit cost matrix.

For a row cloud R (n_r, d), a column cloud K (n_c, d), their cost terms t, t' (see
:mod:`._common`) and a column vector h (n_c,), the kernel computes

    out_r = −ε · log Σ_c exp(h_c − C_rc/ε),     C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

one BLOCK_R row block per program, streaming over BLOCK_C column tiles: each tile's cost is
recomputed from the embeddings by a ``tl.dot`` over BLOCK_K feature chunks (fp32 accumulation),
turned into base-2 scores s = h·log2(e) − C·log2(e)/ε, and folded into a running maximum m and
sum l (l ← l·2^(m−m') + Σ 2^(s−m')). Only O(n_r + n_c) numbers ever reach memory: never the
(n_r, n_c) matrix. Offsets are int64, so n_r·d and n_c·d may exceed 2³¹.

When there are too few row blocks to fill the GPU, the columns are split into chunks over a
second grid axis; each program then writes its partial base-2 LSE and the chunks are merged by
a (split, n_r) log-sum-exp in PyTorch.

The same kernel serves f = softmin_rows (R = x, K = y), g = softmin_cols (R = y, K = x) and the
self problems x↔x, y↔y of the debiased divergence.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime import Autotuner

from . import _config
from ._common import _cost_tile


@triton.jit
def _softmin_kernel(
    r_ptr,
    c_ptr,
    rt_ptr,
    ct_ptr,
    h_ptr,
    out_ptr,
    NR,
    NC,
    D,
    stride_r,
    stride_c,
    cols_per_split,
    scale2,
    out_scale,
    PREC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[split, r] = out_scale · log2 Σ_{c in split} 2^(h_c·log2e − C_rc·scale2)."""
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < NR
    rt = tl.load(rt_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    col0 = pid_s.to(tl.int64) * cols_per_split
    for c0 in range(0, cols_per_split, BLOCK_C):
        offs_c = col0 + c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < NC
        ct = tl.load(ct_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offs_c, mask=mask_c, other=float("-inf")).to(tl.float32)
        cost = _cost_tile(
            r_ptr,
            c_ptr,
            offs_r,
            offs_c,
            mask_r,
            mask_c,
            rt,
            ct,
            D,
            stride_r,
            stride_c,
            PREC,
            BLOCK_R,
            BLOCK_C,
            BLOCK_K,
        )
        s = h[None, :] * 1.4426950408889634 - cost * scale2
        s = tl.where(mask_c[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all −inf so far: no NaN
        l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(s - m_use[:, None]), axis=1)
        m_i = m_new
    lse2 = m_i + tl.log2(l_i)
    tl.store(out_ptr + pid_s.to(tl.int64) * NR + offs_r, lse2 * out_scale, mask=mask_r)


@functools.cache
def _tuned_kernel() -> Autotuner:
    return triton.autotune(configs=_config.SOFTMIN_CONFIGS, key=["NR", "NC", "D", "PREC"])(
        _softmin_kernel
    )


def _gpu_split(n_rows: int, n_cols: int, device: torch.device) -> int:
    """Column chunks so that (row blocks × chunks) ≥ 2 waves on the GPU (1 for large n_rows)."""
    row_blocks = triton.cdiv(n_rows, 128)
    target = 2 * _config.num_sms(device.index if device.index is not None else 0)
    split = max(1, triton.cdiv(target, row_blocks))
    return min(split, triton.cdiv(n_cols, 4 * _config.SOFTMIN_SPLIT_ALIGN))


def softmin(rows: Tensor, cols: Tensor, rt: Tensor, ct: Tensor, h: Tensor, eps: float) -> Tensor:
    """out_r = −ε·log Σ_c exp(h_c − C_rc/ε) for contiguous (n_r, d), (n_c, d) clouds.

    Returns an (n_r,) tensor, float64 for float64 ``rows`` (computed in fp32), else float32.
    """
    n_r, d = rows.shape
    n_c = cols.shape[0]
    h = h.contiguous()
    scale2 = _config.LOG2E / eps
    prec = _config.dot_precision()
    if _config.interpreted():
        block = _config.INTERPRET_BLOCK
        split = max(1, min(_config.INTERPRET_SPLIT, triton.cdiv(n_c, block)))
        align = block
    else:
        split, align = _gpu_split(n_r, n_c, rows.device), _config.SOFTMIN_SPLIT_ALIGN
    cols_per_split = triton.cdiv(triton.cdiv(n_c, split), align) * align
    split = triton.cdiv(n_c, cols_per_split)
    out_scale = -eps * _config.LN2 if split == 1 else 1.0
    out = torch.empty((split, n_r), dtype=torch.float32, device=rows.device)
    args = (
        rows,
        cols,
        rt,
        ct,
        h,
        out,
        n_r,
        n_c,
        d,
        rows.stride(0),
        cols.stride(0),
        cols_per_split,
        scale2,
        out_scale,
    )
    if _config.interpreted():
        grid = (triton.cdiv(n_r, block), split)
        _softmin_kernel[grid](
            *args, PREC=prec, BLOCK_R=block, BLOCK_C=block, BLOCK_K=_config.interpret_block_k(d)
        )
    elif _config.autotune_enabled():
        _tuned_kernel()[lambda meta: (triton.cdiv(n_r, meta["BLOCK_R"]), split)](*args, PREC=prec)
    else:
        conf = _config.SOFTMIN_CONFIGS[0]
        grid = (triton.cdiv(n_r, conf.kwargs["BLOCK_R"]), split)
        _softmin_kernel[grid](
            *args, PREC=prec, num_warps=conf.num_warps, num_stages=conf.num_stages, **conf.kwargs
        )
    # One chunk: the kernel wrote f. Several: merge base-2 LSEs, f = −ε · ln Σ_s 2^{lse2_s}.
    res = out[0] if split == 1 else torch.logsumexp(out * _config.LN2, dim=0).mul_(-eps)
    return res.to(_config.out_dtype(rows))
