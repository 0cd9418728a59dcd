r"""Centroid statistics in one launch: both weighted means and the squared centroid gap.

    μ_x = Σ_i a_i x_i,   μ_y = Σ_j b_j y_j,   G_C² = ‖μ_x − μ_y‖².

For a batch of clouds (B, N, d), (B, M, d) with weights (B, N), (B, M), program (k, b) owns
features [k·BLOCK_D, (k+1)·BLOCK_D) of batch item b: it streams x_b and then y_b once in BLOCK_R
row blocks, accumulating a_i·x_i in a (BLOCK_R, BLOCK_D) fp32 register tile (one reduction at
the end), writes its slice of μ_x and μ_y and atomically adds its slice's Σ (μ_x − μ_y)² to the
gap. Every input element is read exactly once; offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _config


@triton.jit
def _weighted_mean(
    z_ptr, w_ptr, N, stride_z, offs_d, mask_d, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Σ_i w_i z_i over all rows for the feature slice ``offs_d``, fp32 (BLOCK_D,)."""
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask_r = offs_r < N
        w = tl.load(w_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
        z = tl.load(
            z_ptr + offs_r[:, None] * stride_z + offs_d[None, :],
            mask=mask_r[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += w[:, None] * z
    return tl.sum(acc, axis=0)


@triton.jit
def _centroid_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    b_ptr,
    mux_ptr,
    muy_ptr,
    gap_ptr,
    N,
    M,
    D,
    stride_xb,
    stride_x,
    stride_yb,
    stride_y,
    stride_ab,
    stride_bb,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """μ_x[b], μ_y[b] for one feature slice; gap[b] += Σ_slice (μ_x − μ_y)² (atomic).

    Grid: (feature blocks, B).
    """
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x_ptr += pid_b * stride_xb
    y_ptr += pid_b * stride_yb
    mu_x = _weighted_mean(
        x_ptr, a_ptr + pid_b * stride_ab, N, stride_x, offs_d, mask_d, BLOCK_R, BLOCK_D
    )
    mu_y = _weighted_mean(
        y_ptr, b_ptr + pid_b * stride_bb, M, stride_y, offs_d, mask_d, BLOCK_R, BLOCK_D
    )
    tl.store(mux_ptr + pid_b * D + offs_d, mu_x, mask=mask_d)
    tl.store(muy_ptr + pid_b * D + offs_d, mu_y, mask=mask_d)
    diff = mu_x - mu_y
    tl.atomic_add(gap_ptr + pid_b, tl.sum(diff * diff, axis=0))


#: Features per program on a GPU: d = 512 gives 32 programs per batch item, each streaming its
#: column slice.
GPU_BLOCK_D = 16


def gpu_config() -> triton.Config:
    """Blocks, warps and stages of :func:`_centroid_kernel` on a GPU."""
    return _config.cfg(4, 2, BLOCK_R=_config.ROWS_BLOCK, BLOCK_D=GPU_BLOCK_D)


def centroid_launch(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(μ_x (B, d), μ_y (B, d), ‖μ_x − μ_y‖² (B,)) of (B, n, d) clouds and (B, n) weights.

    fp32, or float64 for float64 x; one launch for the batch.
    """
    x, y = x.contiguous(), y.contiguous()
    a, b = a.contiguous(), b.contiguous()
    batch, n, d = x.shape
    m = y.shape[1]
    mu_x = torch.empty((batch, d), dtype=torch.float32, device=x.device)
    mu_y = torch.empty((batch, d), dtype=torch.float32, device=x.device)
    gap = torch.zeros(batch, dtype=torch.float32, device=x.device)
    block_d = _config.interpret_block_k(d)
    conf = _config.one_pass_config(gpu_config(), BLOCK_R=_config.INTERPRET_BLOCK, BLOCK_D=block_d)
    grid = (triton.cdiv(d, conf.kwargs["BLOCK_D"]), batch)
    _centroid_kernel[grid](
        x, y, a, b, mu_x, mu_y, gap, n, m, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        a.stride(0), b.stride(0), **conf.all_kwargs(),
    )  # fmt: skip
    dt = _config.out_dtype(x)
    return mu_x.to(dt), mu_y.to(dt), gap.to(dt)
