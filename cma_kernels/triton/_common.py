r"""Building blocks shared by the soft-min and barycenter kernels.

The cost of a (rows, cols) pair is written with one row term and one column term,

    C_rc = max(t_r + t'_c − 2⟨R_r, K_c⟩, 0),

so one kernel serves every role. For x (N, d), y (M, d) and a translation s of y,
C_ij = ‖x_i − (y_j + s)‖² = ‖x_i‖² − 2⟨x_i, s⟩ + ‖y_j + s‖² − 2⟨x_i, y_j⟩, i.e.

    u_i = ‖x_i‖² − 2⟨x_i, s⟩ = Σ_k x_ik (x_ik − 2 s_k),      v_j = ‖y_j + s‖²,

and the x→y problem uses (R, t, K, t') = (x, u, y, v) while the y→x problem swaps them:
(y, v, x, u). The shift lives only in the two O((N + M)·d) prologue vectors: no shifted copy
of y is ever written and the inner ``tl.dot`` works on the raw embeddings.

**Operands** (:func:`pack`). The streaming kernels read clouds whose rows start on 16-element
boundaries: contiguous, 16-byte-aligned, the feature axis zero-padded to a multiple of 16 (zeros
change no inner product). A d = 512/768/1024 cloud is used as is; any other d, a misaligned
view or float64 data is copied once per cost operator. Every load is then a 16-byte vector load
(Triton specialises on it), which is what keeps the tiles out of register spills.

**3xTF32** (``tf32x3``, the default dot precision). A product ⟨a, b⟩ in fp32 accuracy from TF32
tensor cores is ⟨a_hi, b_hi⟩ + ⟨a_hi, b_lo⟩ + ⟨a_lo, b_hi⟩ with a_hi = tf32(a), a_lo = a − a_hi.
Triton's own ``input_precision="tf32x3"`` splits both operands in registers on every tile, which
costs registers (spills) and serialises the three products. Here a cloud is split once in
:func:`pack` (hi and lo in memory, 2 extra copies of the cloud in fp32), and the kernels issue
three plain TF32 products with both operands straight from shared memory. Only the barycenter's
probability tile p (already in registers) is split in the kernel (:func:`_tf32_hi`). Half-precision
inputs need no split at all: fp16/bf16 values are exact in TF32, so their products are taken on
the fp16/bf16 tensor cores directly (exact products, fp32 accumulation) at every fp32 precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _config

#: Row-term modes of :func:`_rowterm_kernel`.
MODE_PLAIN, MODE_PLUS_SHIFT, MODE_MINUS_TWO_SHIFT = 0, 1, 2
#: Feature axis, row strides and base addresses of packed clouds are multiples of this (elements).
ALIGN = 16
#: A packed cloud: (values or TF32 hi part, TF32 lo part or None); see :func:`pack`.
Operand = tuple[Tensor, Tensor | None]


@triton.jit
def _tf32_hi(x):
    """x rounded to TF32 (10 mantissa bits, round to nearest, ties away: ``cvt.rna.tf32.f32``)."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x1000) >> 13 << 13).to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation; operands rounded as ``PREC`` says (see _config).

    Two fp16 (bf16) operands at an fp32 precision (``tf32x3``/``tf32``) are multiplied on the
    fp16 (bf16) tensor cores: their products are exact either way.
    """
    if PREC == "fp16":
        out = tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    elif PREC == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PREC != "ieee" and a.dtype == b.dtype and (a.dtype.is_fp16() or a.dtype.is_bf16()):
        out = tl.dot(a, b, acc)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    return out


@triton.jit
def _cost_tile(
    r_ptr,
    c_ptr,
    rlo_ptr,
    clo_ptr,
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
    SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (BLOCK_R, BLOCK_C) fp32 tile max(rt_r + ct_c − 2⟨R_r, K_c⟩, 0).

    ``offs_r``/``offs_c`` are int64 row indices; the feature axis is walked in BLOCK_K chunks
    with fp32 accumulation. ``SPLIT``: the clouds are TF32 hi parts and ``rlo_ptr``/``clo_ptr``
    their lo parts (3xTF32, see the module docstring); otherwise ``_mma`` at ``PREC``.
    """
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    r_off = offs_r[:, None] * stride_r
    c_off = offs_c[None, :] * stride_c
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        r_mask = mask_r[:, None] & mask_k[None, :]
        c_mask = mask_k[:, None] & mask_c[None, :]
        r = tl.load(r_ptr + r_off + offs_k[None, :], mask=r_mask, other=0.0)
        c = tl.load(c_ptr + c_off + offs_k[:, None], mask=c_mask, other=0.0)
        if SPLIT:
            r_lo = tl.load(rlo_ptr + r_off + offs_k[None, :], mask=r_mask, other=0.0)
            c_lo = tl.load(clo_ptr + c_off + offs_k[:, None], mask=c_mask, other=0.0)
            acc = tl.dot(r_lo, c, acc, input_precision="tf32")  # small terms first
            acc = tl.dot(r, c_lo, acc, input_precision="tf32")
            acc = tl.dot(r, c, acc, input_precision="tf32")
        else:
            acc = _mma(r, c, acc, PREC)
    return tl.maximum(rt[:, None] + ct[None, :] - 2.0 * acc, 0.0)


def operand_dtype(prec: str, dtype: torch.dtype) -> torch.dtype:
    """Element type of a packed cloud of ``dtype`` at dot precision ``prec`` (see :func:`pack`)."""
    if prec in ("fp16", "bf16"):
        return torch.float16 if prec == "fp16" else torch.bfloat16
    return torch.float32 if dtype == torch.float64 else dtype


def tf32_split(z: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) with hi = z rounded to TF32 (nearest, ties away) and lo = z − hi, both fp32."""
    z = z.to(torch.float32)
    hi = ((z.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)
    return hi, z - hi


def _aligned(z: Tensor) -> bool:
    return (
        z.is_contiguous()
        and z.shape[-1] % ALIGN == 0
        and z.data_ptr() % (ALIGN * z.element_size()) == 0
    )


def pack(z: Tensor, prec: str) -> Operand:
    """The operands the kernels read for a (..., n, d) cloud at dot precision ``prec``.

    (z', None): z in :func:`operand_dtype` (fp16/bf16 precisions round the cloud once here,
    exactly as the kernel would round each tile), contiguous, 16-byte-aligned, the last axis
    zero-padded to a multiple of :data:`ALIGN`; returned as is when already so (no copy).
    (hi, lo) instead for ``tf32x3`` on fp32/fp64 clouds: the TF32 split, both padded.
    """
    pad = -z.shape[-1] % ALIGN
    dtype = operand_dtype(prec, z.dtype)
    if prec == "tf32x3" and dtype == torch.float32:
        hi, lo = tf32_split(z)
        return torch.nn.functional.pad(hi, (0, pad)), torch.nn.functional.pad(lo, (0, pad))
    z = z.to(dtype)
    if not _aligned(z):  # a fresh allocation is aligned
        z = (
            torch.nn.functional.pad(z, (0, pad))
            if pad
            else z.clone(memory_format=torch.contiguous_format)
        )
    return z, None


@triton.jit
def _rowterm_kernel(
    z_ptr,
    zlo_ptr,
    s_ptr,
    out_ptr,
    N,
    D,
    stride_zb,
    stride_z,
    stride_sb,
    MODE: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out_bi = ‖z_bi‖² (MODE 0), ‖z_bi + s_b‖² (MODE 1) or Σ_k z_bik (z_bik − 2 s_bk) (MODE 2).

    z is a packed (B, N, D) cloud (``SPLIT``: its TF32 hi part, ``zlo_ptr`` the lo part, z = hi
    + lo exactly in fp32); s (B, D) has the padded width; out is (B, N). Grid: (row blocks, B).
    """
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    z_ptr += pid_b * stride_zb
    zlo_ptr += pid_b * stride_zb
    s_ptr += pid_b * stride_sb
    out_ptr += pid_b * N
    offs_r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < N
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        z_off = offs_r[:, None] * stride_z + offs_k[None, :]
        z_mask = mask_r[:, None] & mask_k[None, :]
        z = tl.load(z_ptr + z_off, mask=z_mask, other=0.0).to(tl.float32)
        if SPLIT:
            z += tl.load(zlo_ptr + z_off, mask=z_mask, other=0.0)
        if MODE == 0:
            acc += tl.sum(z * z, axis=1)
        else:
            s = tl.load(s_ptr + offs_k, mask=mask_k, other=0.0)
            if MODE == 1:
                t = z + s[None, :]  # (masked rows are never stored)
                acc += tl.sum(t * t, axis=1)
            else:
                acc += tl.sum(z * (z - 2.0 * s[None, :]), axis=1)
    tl.store(out_ptr + offs_r, acc, mask=mask_r)


def rowterm_gpu_config() -> triton.Config:
    """Blocks, warps and stages of :func:`_rowterm_kernel` on a GPU."""
    return _config.cfg(4, 2, 128, BLOCK_R=_config.ROWS_BLOCK, BLOCK_K=_config.FEATURES_BLOCK)


def pad_shift(shift: Tensor, width: int) -> Tensor:
    """An fp32 (B, d) translation zero-padded to (B, width) (the kernels read ``width`` values)."""
    shift = shift.to(torch.float32)
    return torch.nn.functional.pad(shift, (0, width - shift.shape[-1])).contiguous()


def rowterm(z: Operand, shift: Tensor | None, mode: int) -> Tensor:
    """Per-row fp32 term of :func:`_rowterm_kernel` for a packed (B, n, width) cloud, (B, n).

    ``shift`` (B, width) is padded (:func:`pad_shift`); ``None`` gives ‖z_bi‖². One launch.
    """
    (hi, lo) = z
    batch, n, width = hi.shape
    out = torch.empty((batch, n), dtype=torch.float32, device=hi.device)
    if shift is None:
        mode = MODE_PLAIN
    s = shift if shift is not None else out  # dummy pointer when unused
    block_k = _config.interpret_block_k(width)
    conf = _config.one_pass_config(
        rowterm_gpu_config(), BLOCK_R=_config.INTERPRET_BLOCK, BLOCK_K=block_k
    )
    grid = (triton.cdiv(n, conf.kwargs["BLOCK_R"]), batch)
    _rowterm_kernel[grid](
        hi, lo if lo is not None else hi, s, out, n, width, hi.stride(0), hi.stride(1),
        s.stride(0), MODE=mode, SPLIT=lo is not None, **conf.all_kwargs(),
    )  # fmt: skip
    return out
