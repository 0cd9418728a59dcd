"""Launch configuration shared by the Triton kernels.

Two regimes:

* **GPU** (``TRITON_INTERPRET`` unset): block shapes come from a short ``triton.autotune`` list
  per kernel role and dot precision (:func:`gpu_configs`), for Hopper/Ampere and d ≈ 512
  embeddings (``CMA_TRITON_AUTOTUNE=0`` pins the first config, useful for quick checks); the
  feature dimension is walked in ``BLOCK_K`` chunks. Every config compiles for sm_90 and sm_80
  without register spills (tests/test_triton_compile.py; the table is docs/kernels.md).
* **Interpreter** (``TRITON_INTERPRET=1``, CPU tensors): one fixed config with small but
  GPU-legal blocks (every ``tl.dot`` operand dim ≥ 16, powers of two), because autotuning
  several configs does not work there and interpreted tiles are slow.

The precision of the ``tl.dot`` products (accumulation is always fp32) follows PyTorch's own
knob, ``torch.get_float32_matmul_precision()``: ``"highest"`` (PyTorch's default) gives
``"tf32x3"`` (three TF32 products, ≈ fp32 accuracy at tensor-core speed); ``"high"`` or
``"medium"`` (e.g. ``torch.backends.cuda.matmul.allow_tf32 = True``, as open_clip's trainer
sets) give plain ``"tf32"`` (≈ 3× faster). The environment variable ``CMA_TRITON_DOT_PRECISION``
overrides both: ``ieee`` (exact fp32 FMA, slow), ``tf32x3``, ``tf32``, or — opt-in, ≈ 2× faster
than tf32 again — ``fp16`` / ``bf16`` (operands rounded to half precision). Rounding
the operands only perturbs the cost by ~1e-5 on unit-norm embeddings, and the errors average
out: emulating round-to-nearest tf32 (bf16) operands in S_ε at N = 1024, d = 512, blur = 0.05
moved the value by 2.6e-5 (2e-4) relative (benchmarks/gpu.py measures the real kernels). How
each precision reaches the tensor cores (pre-split 3xTF32 operands, native fp16/bf16 products
for half inputs) is in :mod:`._common`. The interpreter always computes exact fp32 products.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import triton
from triton.runtime import Autotuner

#: Rows and columns per tile under the interpreter (small problems, GPU-legal dot shapes).
INTERPRET_BLOCK = 32
#: Largest feature chunk under the interpreter (d > 32 then exercises the chunk loop).
INTERPRET_BLOCK_K = 32
#: Column splits of the soft-min under the interpreter (tests set 2 to cover the merge).
INTERPRET_SPLIT = 1

DOT_PRECISIONS = ("ieee", "tf32x3", "tf32", "fp16", "bf16")

LOG2E = 1.4426950408889634  # log2(e)
LN2 = 0.6931471805599453  # ln(2)


def interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1`` runs the kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Autotuning runs on a GPU unless ``CMA_TRITON_AUTOTUNE=0``."""
    return os.environ.get("CMA_TRITON_AUTOTUNE", "1") != "0"


def dot_precision() -> str:
    """``input_precision`` of every fp32 ``tl.dot`` (see the module docstring)."""
    if interpreted():
        return "ieee"
    env = os.environ.get("CMA_TRITON_DOT_PRECISION", "").strip().lower()
    if env:
        if env not in DOT_PRECISIONS:
            raise ValueError(
                f"CMA_TRITON_DOT_PRECISION: expected one of {DOT_PRECISIONS}, got {env!r}"
            )
        return env
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def next_pow2(n: int) -> int:
    """Smallest power of two ≥ n (≥ 1)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def interpret_block_k(d: int) -> int:
    """Feature chunk under the interpreter: next power of two of d, in [16, INTERPRET_BLOCK_K]."""
    return min(INTERPRET_BLOCK_K, max(16, next_pow2(d)))


@functools.cache
def num_sms(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (sizes the column split of the soft-min)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def out_dtype(t: torch.Tensor) -> torch.dtype:
    """Kernels compute in fp32; results are float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def cfg(num_warps: int, num_stages: int, maxnreg: int = 255, **blocks: int) -> triton.Config:
    """A ``triton.Config`` from block sizes given as keywords.

    ``maxnreg`` is passed to ptxas (``.maxnreg``): without it ptxas may cap registers by its own
    occupancy heuristic and spill (it does on sm_80); with it the register budget, hence the
    occupancy, is the config's.
    """
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)


# GPU configs, one list per dot precision (``ieee``, a debugging mode, reuses the tf32x3 lists).
# Every config compiles for sm_90 and sm_80 without register spills, at every precision and for
# fp32/fp16/bf16 inputs (tests/test_triton_compile.py; figures in docs/kernels.md). All dot dims
# are powers of two ≥ 16. Shared memory per stage of the cost loop: (BLOCK_R + BLOCK_C)·BLOCK_K
# elements of the input type, twice that for the hi/lo parts of tf32x3.
SOFTMIN_CONFIGS = {
    "tf32x3": [
        cfg(8, 3, BLOCK_R=128, BLOCK_C=64, BLOCK_K=16),
        cfg(4, 3, BLOCK_R=64, BLOCK_C=64, BLOCK_K=16),
        cfg(8, 3, BLOCK_R=128, BLOCK_C=128, BLOCK_K=16),
    ],
    "tf32": [
        cfg(8, 3, BLOCK_R=128, BLOCK_C=64, BLOCK_K=32),
        cfg(4, 3, BLOCK_R=64, BLOCK_C=64, BLOCK_K=32),
        cfg(8, 3, BLOCK_R=128, BLOCK_C=128, BLOCK_K=32),
    ],
    "fp16": [
        cfg(8, 3, BLOCK_R=128, BLOCK_C=64, BLOCK_K=64),
        cfg(4, 3, BLOCK_R=64, BLOCK_C=64, BLOCK_K=64),
        cfg(8, 3, BLOCK_R=128, BLOCK_C=128, BLOCK_K=32),
        cfg(8, 3, BLOCK_R=128, BLOCK_C=128, BLOCK_K=64),
    ],
}
SOFTMIN_CONFIGS["bf16"] = SOFTMIN_CONFIGS["fp16"]
#: Column-split chunks are multiples of this (the largest BLOCK_C above).
SOFTMIN_SPLIT_ALIGN = 128

# The barycenter keeps a (BLOCK_R, BLOCK_V) fp32 accumulator: the output dimension is tiled.
BARYCENTER_CONFIGS = {
    "tf32x3": [
        cfg(8, 2, BLOCK_R=64, BLOCK_C=64, BLOCK_K=16, BLOCK_V=128),
        cfg(8, 2, BLOCK_R=64, BLOCK_C=32, BLOCK_K=32, BLOCK_V=128),
        cfg(8, 2, BLOCK_R=128, BLOCK_C=32, BLOCK_K=16, BLOCK_V=64),
    ],
    "tf32": [
        cfg(8, 2, BLOCK_R=64, BLOCK_C=64, BLOCK_K=32, BLOCK_V=128),
        cfg(4, 2, BLOCK_R=64, BLOCK_C=32, BLOCK_K=32, BLOCK_V=128),
    ],
    "fp16": [
        cfg(8, 2, BLOCK_R=64, BLOCK_C=64, BLOCK_K=64, BLOCK_V=128),
        cfg(8, 2, BLOCK_R=64, BLOCK_C=64, BLOCK_K=32, BLOCK_V=256),
        cfg(8, 2, BLOCK_R=128, BLOCK_C=32, BLOCK_K=32, BLOCK_V=128),
    ],
}
BARYCENTER_CONFIGS["bf16"] = BARYCENTER_CONFIGS["fp16"]

SQDIST_CONFIGS = {
    "tf32x3": [
        cfg(8, 3, BLOCK_N=128, BLOCK_M=64, BLOCK_K=16),
        cfg(4, 3, 168, BLOCK_N=64, BLOCK_M=64, BLOCK_K=16),
        cfg(4, 3, BLOCK_N=64, BLOCK_M=128, BLOCK_K=16),
    ],
    "tf32": [
        cfg(8, 3, BLOCK_N=128, BLOCK_M=64, BLOCK_K=32),
        cfg(4, 3, BLOCK_N=64, BLOCK_M=64, BLOCK_K=32),
    ],
    "fp16": [
        cfg(8, 3, BLOCK_N=128, BLOCK_M=64, BLOCK_K=32),
        cfg(4, 3, BLOCK_N=64, BLOCK_M=128, BLOCK_K=32),
    ],
}
SQDIST_CONFIGS["bf16"] = SQDIST_CONFIGS["fp16"]

#: Config tables of the autotuned kernels, by role.
CONFIGS = {
    "softmin": SOFTMIN_CONFIGS,
    "barycenter": BARYCENTER_CONFIGS,
    "sqdist": SQDIST_CONFIGS,
}

#: Rows per step and features per program of the one-pass kernels (centroid, row norms).
ROWS_BLOCK = 64
FEATURES_BLOCK = 64


def config_lists() -> dict[str, list[triton.Config]]:
    """Every autotuning list by name ``"role/prec"`` (``softmin/tf32x3`` …), for tools that
    report or pin configs (benchmarks/gpu.py)."""
    return {f"{role}/{prec}": table[prec] for role, table in CONFIGS.items() for prec in table}


def set_configs(name: str, configs: list[triton.Config]) -> None:
    """Replace the list ``name`` of :func:`config_lists` (with ``CMA_TRITON_AUTOTUNE=0`` a
    one-config list pins that config)."""
    role, prec = name.split("/")
    CONFIGS[role][prec] = configs


def one_pass_config(gpu: triton.Config, **interpret: int) -> triton.Config:
    """Launch config of a one-pass kernel: ``gpu``, or the blocks ``interpret`` if interpreted."""
    return cfg(1, 1, **interpret) if interpreted() else gpu


def gpu_configs(role: str, prec: str) -> list[triton.Config]:
    """The autotuning list of ``role`` (softmin, barycenter, sqdist) at dot precision ``prec``."""
    return CONFIGS[role]["tf32x3" if prec == "ieee" else prec]


@functools.cache
def _autotuner(kernel: triton.JITFunction, role: str, prec: str, key: tuple[str, ...]) -> Autotuner:
    return triton.autotune(configs=gpu_configs(role, prec), key=list(key))(kernel)


def launch(
    kernel: triton.JITFunction,
    role: str,
    key: tuple[str, ...],
    grid: Callable[[dict[str, Any]], tuple[int, ...]],
    args: tuple[Any, ...],
    interpret: dict[str, int],
    **const: Any,
) -> None:
    """Run ``kernel[grid](*args, **const)`` with the block sizes of the current regime.

    Interpreter: the fixed blocks ``interpret``. GPU: the autotuner over
    ``gpu_configs(role, const["PREC"])`` (keyed by the argument names ``key``), or its first
    config with ``CMA_TRITON_AUTOTUNE=0``. ``grid`` maps the block sizes to the launch grid.
    """
    if interpreted():
        kernel[grid(interpret)](*args, **interpret, **const)
    elif autotune_enabled():
        _autotuner(kernel, role, const["PREC"], key)[grid](*args, **const)
    else:
        conf = gpu_configs(role, const["PREC"])[0]
        kernel[grid(conf.kwargs)](*args, **conf.all_kwargs(), **const)
