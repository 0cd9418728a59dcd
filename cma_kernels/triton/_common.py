r"""Building blocks shared by the soft-min and barycenter kernels.

The cost of a (rows, cols) pair is written with one row term and one column term,

    C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

so one kernel serves every role. For x (N, d), y (M, d) and a translation s of y,
C_ij = ‖x_i − (y_j + s)‖² = ‖x_i‖² − 2⟨x_i, s⟩ + ‖y_j + s‖² − 2⟨x_i, y_j⟩, i.e.

    u_i = ‖x_i‖² − 2⟨x_i, s⟩ = Σ_k x_ik (x_ik − 2 s_k),      v_j = ‖y_j + s‖²,

and the x→y problem uses (R, t, K, t') = (x, u, y, v) while the y→x problem swaps them:
(y, v, x, u). The shift lives only in the two O((N + M)·d) prologue vectors: no shifted copy
of y is ever written and the inner ``tl.dot`` works on the raw embeddings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _config

#: Row-term modes of :func:`_rowterm_kernel`.
MODE_PLAIN, MODE_PLUS_SHIFT, MODE_MINUS_TWO_SHIFT = 0, 1, 2


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation; operands rounded as ``PREC`` says (see _config)."""
    if PREC == "fp16":
        out = tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    elif PREC == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    return out


@triton.jit
def _cost_tile(
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
    PREC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (BLOCK_R, BLOCK_C) fp32 tile max(rt_r + ct_c − 2⟨R_r, K_c⟩, 0).

    ``offs_r``/``offs_c`` are int64 row indices; the feature axis is walked in BLOCK_K chunks
    with fp32 accumulation (inputs of any float dtype are cast to fp32 before the dot).
    """
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    r_base = r_ptr + offs_r[:, None] * stride_r
    c_base = c_ptr + offs_c[None, :] * stride_c
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        r = tl.load(r_base + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        c = tl.load(c_base + offs_k[:, None], mask=mask_k[:, None] & mask_c[None, :], other=0.0)
        acc = _mma(r, c, acc, PREC)
    return tl.maximum(rt[:, None] + ct[None, :] - 2.0 * acc, 0.0)


@triton.jit
def _rowterm_kernel(
    z_ptr,
    s_ptr,
    out_ptr,
    N,
    D,
    stride_z,
    MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out_i = ‖z_i‖² (MODE 0), ‖z_i + s‖² (MODE 1) or Σ_k z_ik (z_ik − 2 s_k) (MODE 2)."""
    pid = tl.program_id(0)
    offs_r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < N
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        z = tl.load(
            z_ptr + offs_r[:, None] * stride_z + offs_k[None, :],
            mask=mask_r[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        if MODE == 0:
            acc += tl.sum(z * z, axis=1)
        else:
            s = tl.load(s_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            if MODE == 1:
                t = z + s[None, :]
                t = tl.where(mask_k[None, :], t, 0.0)
                acc += tl.sum(t * t, axis=1)
            else:
                acc += tl.sum(z * (z - 2.0 * s[None, :]), axis=1)
    tl.store(out_ptr + offs_r, acc, mask=mask_r)


def rowterm(z: Tensor, shift: Tensor | None, mode: int) -> Tensor:
    """Per-row fp32 term of :func:`_rowterm_kernel` for a contiguous (n, d) cloud, shape (n,)."""
    n, d = z.shape
    out = torch.empty(n, dtype=torch.float32, device=z.device)
    if shift is None:
        mode = MODE_PLAIN
    block_k = _config.interpret_block_k(d) if _config.interpreted() else _config.FEATURES_BLOCK
    block_r = _config.INTERPRET_BLOCK if _config.interpreted() else _config.ROWS_BLOCK
    s = shift if shift is not None else z  # dummy pointer when unused
    grid = (triton.cdiv(n, block_r),)
    _rowterm_kernel[grid](z, s, out, n, d, z.stride(0), MODE=mode, BLOCK_R=block_r, BLOCK_K=block_k)
    return out
