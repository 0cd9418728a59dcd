"""Backend selection: ``backend=`` argument, ``CMA_BACKEND`` and ``TRITON_INTERPRET`` (issue #2).

No GPU here: "auto" on CUDA tensors (→ triton) is not exercised.
"""

from __future__ import annotations

import pytest
import torch

import cma_kernels as ck
from cma_kernels import dispatch


def _xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5


PUBLIC = {
    "sinkhorn_divergence": lambda x, y, **kw: ck.sinkhorn_divergence(x, y, blur=0.5, **kw),
    "pairwise_sqdist": lambda x, y, **kw: ck.pairwise_sqdist(x, y, **kw),
    "centroid_stats": lambda x, y, **kw: ck.centroid_stats(x, y, **kw),
    "gap_terms": lambda x, y, **kw: ck.gap_terms(x, y, blur=0.5, **kw),
    "distribution_gap_loss": lambda x, y, **kw: ck.distribution_gap_loss(x, y, blur=0.5, **kw),
}


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CMA_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


def _same(a, b) -> None:
    if isinstance(a, tuple):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_on_cpu_is_the_reference(clean_env) -> None:
    x, y = _xy()
    assert dispatch.resolve_backend("auto", x, y) == "reference"
    assert dispatch.resolve_backend("reference", x, y) == "reference"


@pytest.mark.parametrize("func", PUBLIC)
def test_auto_and_reference_agree_on_cpu(clean_env, func: str) -> None:
    x, y = _xy()
    _same(PUBLIC[func](x, y), PUBLIC[func](x, y, backend="reference"))


@pytest.mark.parametrize("func", PUBLIC)
@pytest.mark.parametrize("backend", ["cuda", "", "torch", "gpu", None, 1])
def test_unknown_backend_raises(clean_env, func: str, backend) -> None:
    x, y = _xy()
    with pytest.raises(ValueError, match=r"^backend:"):
        PUBLIC[func](x, y, backend=backend)
    with pytest.raises(ValueError, match=r"^backend:"):
        dispatch.resolve_backend(backend, x, y)


@pytest.mark.parametrize("func", PUBLIC)
@pytest.mark.parametrize("value", ["bogus", "cuda", "gpu"])
def test_bogus_cma_backend_env_raises(clean_env, func: str, value: str) -> None:
    clean_env.setenv("CMA_BACKEND", value)
    x, y = _xy()
    with pytest.raises(ValueError, match=r"^CMA_BACKEND:") as info:
        PUBLIC[func](x, y)
    assert value in str(info.value)


def test_explicit_backend_wins_over_the_env(clean_env) -> None:
    """``CMA_BACKEND`` only replaces "auto"; an explicit backend= is never overridden."""
    x, y = _xy()
    clean_env.setenv("CMA_BACKEND", "bogus")
    assert dispatch.resolve_backend("reference", x, y) == "reference"
    clean_env.setenv("CMA_BACKEND", "triton")
    assert dispatch.resolve_backend("reference", x, y) == "reference"


@pytest.mark.parametrize("value", ["reference", " Reference ", "REFERENCE", "auto", ""])
def test_cma_backend_env_reference_or_auto(clean_env, value: str) -> None:
    clean_env.setenv("CMA_BACKEND", value)
    x, y = _xy()
    assert dispatch.resolve_backend("auto", x, y) == "reference"
    _same(
        ck.sinkhorn_divergence(x, y, blur=0.5),
        ck.sinkhorn_divergence(x, y, blur=0.5, backend="reference"),
    )


@pytest.mark.parametrize("func", PUBLIC)
@pytest.mark.parametrize("interpret", [None, "0", "false"])
def test_triton_on_cpu_without_interpreter_raises(clean_env, func: str, interpret) -> None:
    if interpret is not None:
        clean_env.setenv("TRITON_INTERPRET", interpret)
    x, y = _xy()
    with pytest.raises(ValueError, match=r"^backend:"):
        PUBLIC[func](x, y, backend="triton")
    # the same through the environment variable
    clean_env.setenv("CMA_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"^backend:"):
        PUBLIC[func](x, y)


def test_triton_on_cpu_with_interpreter_is_allowed(clean_env) -> None:
    if not dispatch.triton_available():
        pytest.skip("triton is not installed")
    clean_env.setenv("TRITON_INTERPRET", "1")
    x, y = _xy()
    assert dispatch.resolve_backend("triton", x, y) == "triton"
    clean_env.setenv("CMA_BACKEND", "triton")
    assert dispatch.resolve_backend("auto", x, y) == "triton"


def test_triton_missing_raises(clean_env) -> None:
    clean_env.setattr(dispatch, "triton_available", lambda: False)
    clean_env.setenv("TRITON_INTERPRET", "1")
    x, y = _xy()
    with pytest.raises(ValueError, match=r"^backend:.*not installed"):
        dispatch.resolve_backend("triton", x, y)
    with pytest.raises(ValueError, match=r"^backend:"):
        ck.sinkhorn_divergence(x, y, blur=0.5, backend="triton")
    # "auto" never needs triton on the CPU
    assert dispatch.resolve_backend("auto", x, y) == "reference"
