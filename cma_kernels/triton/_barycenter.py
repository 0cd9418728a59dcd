r"""Streaming barycenters: softmax(scores)·V without the transport plan (attention's P·V).

For a row cloud R (n_r, d), a column cloud K (n_c, d) and a column vector h (n_c,),

    out_r = Σ_c softmax_c(h_c − C_rc/ε) · K_c,     C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

i.e. the rows of the plan P_rc ∝ exp(h_c − C_rc/ε) normalised to their exact marginal and
applied to the column points — the barycentric projection behind the envelope gradient
∂OT_ε/∂x_i = 2a_i(x_i − out_i). Program (row block, feature block) streams over BLOCK_C column
tiles: it recomputes the cost tile from the embeddings (``tl.dot`` over all d in BLOCK_K chunks,
fp32 accumulation), forms base-2 scores, keeps a running max m and sum l, and rescales its
(BLOCK_R, BLOCK_V) fp32 accumulator by 2^(m−m') before adding ``tl.dot(p, K_tile)``; the output
is acc / l. The feature axis of the output is tiled (BLOCK_V) because a d = 512 fp32
accumulator does not fit in registers; each feature block recomputes the scores, which costs
one extra score pass per block — small next to the solver, which makes ~100 soft-min passes.
No (n_r, n_c) buffer exists; offsets are int64.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime import Autotuner

from . import _config
from ._common import _cost_tile, _mma


@triton.jit
def _barycenter_kernel(
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
    stride_o,
    scale2,
    PREC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """out[r, v-block] = Σ_c softmax_c(h_c·log2e − C_rc·scale2 in base 2) · K[c, v-block]."""
    pid_r = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < NR
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < D
    rt = tl.load(rt_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
    m_i = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
    for c0 in range(0, NC, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
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
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            c_ptr + offs_c[:, None] * stride_c + offs_v[None, :],
            mask=mask_c[:, None] & mask_v[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = acc * alpha[:, None]
        acc = _mma(p, v, acc, PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + offs_r[:, None] * stride_o + offs_v[None, :],
        out,
        mask=mask_r[:, None] & mask_v[None, :],
    )


@functools.cache
def _tuned_kernel() -> Autotuner:
    return triton.autotune(configs=_config.BARYCENTER_CONFIGS, key=["NR", "NC", "D", "PREC"])(
        _barycenter_kernel
    )


def barycenter(rows: Tensor, cols: Tensor, rt: Tensor, ct: Tensor, h: Tensor, eps: float) -> Tensor:
    """out_r = Σ_c softmax_c(h_c − C_rc/ε)·cols_c for contiguous clouds, shape (n_r, d).

    float64 for float64 ``rows`` (computed in fp32), else float32.
    """
    n_r, d = rows.shape
    n_c = cols.shape[0]
    h = h.contiguous()
    out = torch.empty((n_r, d), dtype=torch.float32, device=rows.device)
    prec = _config.dot_precision()
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
        out.stride(0),
        _config.LOG2E / eps,
    )
    if _config.interpreted():
        block, block_k = _config.INTERPRET_BLOCK, _config.interpret_block_k(d)
        grid = (triton.cdiv(n_r, block), triton.cdiv(d, block_k))
        _barycenter_kernel[grid](
            *args, PREC=prec, BLOCK_R=block, BLOCK_C=block, BLOCK_K=block_k, BLOCK_V=block_k
        )
    elif _config.autotune_enabled():
        _tuned_kernel()[
            lambda meta: (triton.cdiv(n_r, meta["BLOCK_R"]), triton.cdiv(d, meta["BLOCK_V"]))
        ](*args, PREC=prec)
    else:
        conf = _config.BARYCENTER_CONFIGS[0]
        grid = (triton.cdiv(n_r, conf.kwargs["BLOCK_R"]), triton.cdiv(d, conf.kwargs["BLOCK_V"]))
        _barycenter_kernel[grid](
            *args, PREC=prec, num_warps=conf.num_warps, num_stages=conf.num_stages, **conf.kwargs
        )
    return out.to(_config.out_dtype(rows))
