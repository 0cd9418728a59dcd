"""Backend choice: ``"auto"`` runs Triton on CUDA tensors and the PyTorch reference elsewhere.

The environment variable ``CMA_BACKEND`` (``triton`` or ``reference``) replaces ``"auto"``;
an explicit ``backend=`` argument always wins. With ``TRITON_INTERPRET=1`` the Triton kernels
also run on CPU tensors (slowly), which is how the test-suite checks them without a GPU.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

from torch import Tensor

Backend = Literal["auto", "triton", "reference"]
BACKENDS = ("auto", "triton", "reference")


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def triton_interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1`` makes Triton kernels run on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, *tensors: Tensor) -> Literal["triton", "reference"]:
    """The concrete backend for ``tensors``.

    ``"auto"`` (or ``CMA_BACKEND``) gives ``"triton"`` when every tensor is on CUDA and Triton
    imports, else ``"reference"``. Asking for ``"triton"`` where it cannot run is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("CMA_BACKEND", "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"CMA_BACKEND: expected one of {BACKENDS}, got {env!r}")
        backend = env
    if backend == "auto":
        on_cuda = all(t.is_cuda for t in tensors)
        return "triton" if on_cuda and triton_available() else "reference"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend: 'triton' requested but the triton package is not installed")
        if not triton_interpreted() and not all(t.is_cuda for t in tensors):
            raise ValueError(
                "backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the "
                "kernels on the CPU); use backend='reference' or 'auto' for CPU tensors"
            )
    return backend  # type: ignore[return-value]
