r"""Tiled pairwise squared distances with the centring fused in.

    C_ij = ‖x̃_i‖² + ‖ỹ_j‖² − 2⟨x̃_i, ỹ_j⟩ clamped at 0,   x̃ = x − x_shift,  ỹ = y − y_shift.

Program (i-block, j-block) walks the feature axis in BLOCK_K chunks: it loads a (BLOCK_N,
BLOCK_K) chunk of x and a (BLOCK_K, BLOCK_M) chunk of yᵀ, subtracts the shift chunks in
registers (no centred copy in memory), accumulates ``tl.dot`` in fp32 and the two squared norms
alongside, and writes the clamped tile once. Offsets are int64 (N·M passes 2³¹ at N ≈ 46k).
The clouds and shifts are packed (:func:`._common.pack`: 16-element-aligned rows, zero-padded
features) so that every load is a vector load.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _config
from ._common import _mma, pack


@triton.jit
def _sqdist_kernel(
    x_ptr,
    y_ptr,
    xs_ptr,
    ys_ptr,
    out_ptr,
    N,
    M,
    D,
    stride_x,
    stride_y,
    stride_o,
    HAS_XS: tl.constexpr,
    HAS_YS: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[i, j] = max(‖x_i − xs‖² + ‖y_j − ys‖² − 2⟨x_i − xs, y_j − ys⟩, 0)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    xn = tl.zeros((BLOCK_N,), dtype=tl.float32)
    yn = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        xm = mask_n[:, None] & mask_k[None, :]
        ym = mask_k[:, None] & mask_m[None, :]
        a = tl.load(x_ptr + offs_n[:, None] * stride_x + offs_k[None, :], mask=xm, other=0.0)
        b = tl.load(y_ptr + offs_m[None, :] * stride_y + offs_k[:, None], mask=ym, other=0.0)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        if HAS_XS:
            xs = tl.load(xs_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            a = tl.where(xm, a - xs[None, :], 0.0)
        if HAS_YS:
            ys = tl.load(ys_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            b = tl.where(ym, b - ys[:, None], 0.0)
        acc = _mma(a, b, acc, PREC)
        xn += tl.sum(a * a, axis=1)
        yn += tl.sum(b * b, axis=0)
    c = tl.maximum(xn[:, None] + yn[None, :] - 2.0 * acc, 0.0)
    tl.store(
        out_ptr + offs_n[:, None] * stride_o + offs_m[None, :],
        c,
        mask=mask_n[:, None] & mask_m[None, :],
    )


def sqdist_launch(
    x: Tensor, y: Tensor, x_shift: Tensor | None = None, y_shift: Tensor | None = None
) -> Tensor:
    """The (N, M) matrix ‖(x_i − x_shift) − (y_j − y_shift)‖², fp32 (float64 for float64 x)."""
    dtype = _config.out_dtype(x)
    if x.dtype != y.dtype:
        x, y = (z.to(torch.promote_types(x.dtype, y.dtype)) for z in (x, y))
    (x, _), (y, _) = pack(x, "tf32"), pack(y, "tf32")  # aligned, padded; no split, no rounding
    n, width = x.shape
    m = y.shape[0]
    out = torch.empty((n, m), dtype=torch.float32, device=x.device)
    xs = pack(x_shift.reshape(1, -1), "tf32")[0] if x_shift is not None else x
    ys = pack(y_shift.reshape(1, -1), "tf32")[0] if y_shift is not None else y
    prec = _config.dot_precision()
    args = (x, y, xs, ys, out, n, m, width, x.stride(0), y.stride(0), out.stride(0))
    flags = {"HAS_XS": x_shift is not None, "HAS_YS": y_shift is not None, "PREC": prec}
    block = _config.INTERPRET_BLOCK
    _config.launch(
        _sqdist_kernel, "sqdist", ("N", "M", "D", "PREC"),
        lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"])),
        args, {"BLOCK_N": block, "BLOCK_M": block, "BLOCK_K": _config.interpret_block_k(width)},
        **flags,
    )  # fmt: skip
    return out.to(dtype)
