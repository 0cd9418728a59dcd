r"""The one streaming pass behind the soft-min and the barycenter: online softmax over cost tiles.

For a row cloud R (n_r, d), a column cloud K (n_c, d), their cost terms t, t' (see
:mod:`._common`) and a column vector h (n_c,), every program takes BLOCK_R rows and streams over
BLOCK_C column tiles. Each tile's cost C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0) is recomputed
from the packed embeddings (``tl.dot`` over BLOCK_K feature chunks, fp32 accumulation; with
``SPLIT`` three TF32 products of their hi/lo parts, see :mod:`._common`) and turned into
base-2 scores s_rc = h_c·log2(e) − C_rc·log2(e)/ε, folded into a running maximum m and sum
l ← l·2^(m−m') + Σ_c 2^(s−m') (FlashAttention's online log-sum-exp). Nothing of size
(n_r, n_c) is ever written; offsets are int64. Grid axis 2 is the batch item: one launch serves
a batch of B problems (B, n_r, d) × (B, n_c, d), every pointer offset by b times its batch
stride.

* ``BARY=False`` (soft-min): writes the base-2 log-sum-exp m + log2 l of the columns of its
  split (grid axis 1), times ``out_scale``; see :mod:`._softmin`.
* ``BARY=True`` (barycenter): also keeps a (BLOCK_R, BLOCK_V) accumulator of Σ_c 2^(s−m)·K_c
  for the feature block of grid axis 1, rescaled by 2^(m−m') at every tile (attention's P·V),
  and writes acc / l (D_OUT features; D is the packed width); see :mod:`._barycenter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _config
from ._common import Operand, _cost_tile, _mma, _tf32_hi


@triton.jit
def _stream_kernel(
    r_ptr,
    c_ptr,
    rlo_ptr,
    clo_ptr,
    rt_ptr,
    ct_ptr,
    h_ptr,
    out_ptr,
    NR,
    NC,
    D,
    D_OUT,
    stride_rb,
    stride_r,
    stride_cb,
    stride_c,
    stride_ob,
    stride_o,
    cols_per_split,
    scale2,
    out_scale,
    PREC: tl.constexpr,
    SPLIT: tl.constexpr,
    BARY: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Soft-min: out[b, split, r] = out_scale·log2 Σ_c 2^(s_brc). Barycenter: out[b, r, v] = P·K."""
    pid_r = tl.program_id(0)
    pid_1 = tl.program_id(1)  # column split (soft-min) or feature block (barycenter)
    pid_b = tl.program_id(2).to(tl.int64)  # batch item
    r_ptr += pid_b * stride_rb
    rlo_ptr += pid_b * stride_rb
    c_ptr += pid_b * stride_cb
    clo_ptr += pid_b * stride_cb
    rt_ptr += pid_b * NR
    ct_ptr += pid_b * NC
    h_ptr += pid_b * NC
    offs_r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < NR
    rt = tl.load(rt_ptr + offs_r, mask=mask_r, other=0.0)
    m_i = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    offs_v = pid_1 * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < D_OUT
    acc = tl.zeros((BLOCK_R, BLOCK_V), dtype=tl.float32)
    col0 = 0 if BARY else pid_1.to(tl.int64) * cols_per_split  # the barycenter sees all columns
    for c0 in range(0, cols_per_split, BLOCK_C):
        offs_c = col0 + c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        mask_c = offs_c < NC
        ct = tl.load(ct_ptr + offs_c, mask=mask_c, other=0.0)
        h = tl.load(h_ptr + offs_c, mask=mask_c, other=float("-inf"))
        cost = _cost_tile(
            r_ptr, c_ptr, rlo_ptr, clo_ptr, offs_r, offs_c, mask_r, mask_c, rt, ct, D,
            stride_r, stride_c, PREC, SPLIT, BLOCK_R, BLOCK_C, BLOCK_K,
        )  # fmt: skip
        s = h[None, :] * 1.4426950408889634 - cost * scale2
        s = tl.where(mask_c[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all −inf so far: no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if BARY:
            v_off = offs_c[:, None] * stride_c + offs_v[None, :]
            v_mask = mask_c[:, None] & mask_v[None, :]
            v = tl.load(c_ptr + v_off, mask=v_mask, other=0.0)
            acc = acc * alpha[:, None]
            if PREC == "tf32x3":  # 3xTF32 P·V: p split here, the points' lo part from memory
                p_hi = _tf32_hi(p)
                v = v.to(tl.float32)
                acc = tl.dot(p - p_hi, v, acc, input_precision="tf32")
                if SPLIT:  # (fp16/bf16 points are exact in TF32: no lo part)
                    v_lo = tl.load(clo_ptr + v_off, mask=v_mask, other=0.0)
                    acc = tl.dot(p_hi, v_lo, acc, input_precision="tf32")
                acc = tl.dot(p_hi, v, acc, input_precision="tf32")
            else:
                acc = _mma(p, v, acc, PREC)
        m_i = m_new
    if BARY:
        tl.store(
            out_ptr + pid_b * stride_ob + offs_r[:, None] * stride_o + offs_v[None, :],
            acc / l_i[:, None],
            mask=mask_r[:, None] & mask_v[None, :],
        )
    else:
        lse2 = m_i + tl.log2(l_i)
        row0 = (pid_b * tl.num_programs(1) + pid_1) * NR
        tl.store(out_ptr + row0 + offs_r, lse2 * out_scale, mask=mask_r)


#: Autotuning key of both roles.
KEY = ("NR", "NC", "D", "PREC", "BARY")
#: The batch is grid axis 2 (at most 65535 programs on CUDA).
MAX_BATCH = 65535


def role_constexprs(bary: bool) -> dict[str, int]:
    """Constexprs a role fixes beyond its config: the soft-min keeps no accumulator."""
    return {} if bary else {"BLOCK_V": 16}


def stream(
    rows: Operand,
    cols: Operand,
    rt: Tensor,
    ct: Tensor,
    h: Tensor,
    out: Tensor,
    *,
    eps: float,
    bary: bool,
    grid: Callable[[dict[str, Any]], tuple[int, int]],
    cols_per_split: int,
    interpret: dict[str, int],
    prec: str,
    out_scale: float = 1.0,
) -> None:
    """Launch :func:`_stream_kernel` in one role on clouds packed at ``prec`` (two callers).

    rows (B, n_r, width), cols (B, n_c, width); rt (B, n_r), ct and h (B, n_c); out (B, split,
    n_r) for the soft-min, (B, n_r, d) for the barycenter. ``grid`` gives the first two grid
    axes; the batch is the third: one launch for the whole batch.
    """
    (r, r_lo), (c, c_lo) = rows, cols
    batch, n_r, width = r.shape
    if batch > MAX_BATCH:
        raise ValueError(f"batch: at most {MAX_BATCH} problems per launch, got {batch}")
    split = r_lo is not None
    h = h.to(torch.float32).contiguous()
    if h.data_ptr() % 16:  # every pointer 16-byte-aligned: the specialisation compiled and checked
        h = h.clone()
    args = (r, c, r_lo if split else r, c_lo if split else c, rt, ct, h, out)
    args += (n_r, c.shape[1], width, out.shape[2] if bary else width)
    args += (r.stride(0), r.stride(1), c.stride(0), c.stride(1))
    args += (out.stride(0), out.stride(1) if bary else 0)
    args += (cols_per_split, _config.LOG2E / eps, out_scale)
    role = "barycenter" if bary else "softmin"
    _config.launch(
        _stream_kernel, role, KEY, lambda meta: (*grid(meta), batch), args, interpret, PREC=prec,
        SPLIT=split, BARY=bary, **role_constexprs(bary),
    )  # fmt: skip
