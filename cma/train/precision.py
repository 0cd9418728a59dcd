"""Training precision in open_clip's spelling: autocast, GradScaler, low-precision weights.

``--precision`` takes open_clip's names with open_clip's meaning (``open_clip_train.precision.
get_autocast``, ``open_clip.get_input_dtype``, ``open_clip.factory``), plus ``auto`` and
``amp_fp16``:

==================  ===========================  ===============  ===========  ===========
``--precision``     model weights                autocast         GradScaler   inputs
==================  ===========================  ===============  ===========  ===========
``fp32``            float32                      –                –            float32
``amp``             float32                      fp16 (CPU: bf16) yes (CPU: no) float32
``amp_bf16``,       float32                      bf16             –            float32
``amp_bfloat16``
``amp_fp16`` (ours) float32                      fp16, any device yes          float32
``bf16``, ``fp16``  Linear/Conv/attention/       –                –            bf16 / fp16
                    projections in bf16/fp16
                    (``convert_weights_to_lp``),
                    norms float32
``pure_bf16``,      every parameter and buffer   –                –            bf16 / fp16
``pure_fp16``
``auto``            ``amp`` on CUDA (open_clip's default), ``fp32`` elsewhere
==================  ===========================  ===============  ===========  ===========

*ours*: ``amp`` on the CPU means bf16 autocast without a GradScaler — CPU fp16 matmuls have no
fast path (on the development machine a 512² fp16 matmul took as long as fp32 and 8× longer
than bf16) and bf16 needs no loss scaling. ``amp_fp16`` forces fp16 autocast with a GradScaler
on any device (the CPU path exists for testing the scaler logic).

Autocast covers the model forward and ``CMALoss.terms``; inside it the alignment term turns
autocast off and computes in float32 (SPEC §4), so only L_CLIP runs as open_clip runs it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from open_clip import get_input_dtype
from open_clip.model import convert_weights_to_lp
from torch import nn
from torch.amp import GradScaler

PRECISIONS = (
    "auto", "amp", "amp_bf16", "amp_bfloat16", "amp_fp16", "bf16", "fp16", "fp32", "pure_bf16",
    "pure_fp16",
)  # fmt: skip
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class Precision:
    """How one run computes: autocast dtype, weight dtype, loss scaling (see module doc)."""

    name: str  # the resolved ``--precision`` (never "auto")
    device_type: str
    autocast_dtype: torch.dtype | None = None
    weights_dtype: torch.dtype | None = None  # None: float32 weights
    pure: bool = False  # cast every parameter and buffer, else open_clip's convert_weights_to_lp
    grad_scaler: bool = False

    @property
    def input_dtype(self) -> torch.dtype | None:
        """dtype of the image batch fed to the model (None: leave float32), open_clip's rule."""
        return get_input_dtype(self.name)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to ``autocast_dtype`` on ``device_type``; a no-op without one."""
        if self.autocast_dtype is None:
            yield
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                yield

    def make_scaler(self) -> GradScaler | None:
        """A GradScaler for fp16 autocast (``amp`` on CUDA, ``amp_fp16``), else None."""
        if not self.grad_scaler:
            return None
        try:
            return GradScaler(self.device_type)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"precision: {self.name} needs a GradScaler on {self.device_type}, which this "
                f"torch {torch.__version__} cannot build ({err}); use amp_bf16 or fp32"
            ) from err

    def cast_model(self, model: nn.Module) -> nn.Module:
        """Cast the weights in place as open_clip does for ``bf16``/``fp16``/``pure_*``."""
        if self.weights_dtype is not None:
            if self.pure:
                model.to(dtype=self.weights_dtype)
            else:
                convert_weights_to_lp(model, dtype=self.weights_dtype)
        return model

    def as_dict(self) -> dict[str, Any]:
        """The run-record fields: ``precision``, ``autocast_dtype``, ``weights_dtype``, …"""
        return {
            "precision": self.name,
            "autocast_dtype": _DTYPE_NAMES.get(self.autocast_dtype),  # type: ignore[arg-type]
            "weights_dtype": _DTYPE_NAMES.get(self.weights_dtype, "float32"),  # type: ignore[arg-type]
            "grad_scaler": self.grad_scaler,
        }


def precision_spec(name: str, device_type: str) -> Precision:
    """The :class:`Precision` that ``--precision name`` means on ``device_type`` (no checks)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        name = "amp" if device_type == "cuda" else "fp32"
    half = torch.bfloat16 if "bf16" in name or "bfloat16" in name else torch.float16
    if name == "fp32":
        return Precision(name, device_type)
    if name == "amp" and device_type == "cpu":
        return Precision(name, device_type, autocast_dtype=torch.bfloat16)
    if name.startswith("amp"):
        return Precision(name, device_type, autocast_dtype=half, grad_scaler=half == torch.float16)
    return Precision(name, device_type, weights_dtype=half, pure=name.startswith("pure_"))


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype)`` really autocasts to ``dtype`` here (torch
    disables some combinations with only a warning, or raises for bf16 on old GPUs)."""
    if not torch.amp.is_autocast_available(device_type):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type) and (
                    torch.get_autocast_dtype(device_type) == dtype
                )
    except RuntimeError:
        return False


def resolve_precision(name: str, device: torch.device) -> Precision:
    """:func:`precision_spec` for ``device``, with a clear error where it cannot run."""
    spec = precision_spec(name, device.type)
    dtype = spec.autocast_dtype
    if dtype is not None and not autocast_supported(device.type, dtype):
        other = "amp_bf16" if dtype == torch.float16 else "fp32"
        raise ValueError(
            f"precision: {spec.name} needs {_DTYPE_NAMES[dtype]} autocast on {device.type}, "
            f"which this torch {torch.__version__} / device does not support; use {other}"
        )
    return spec
