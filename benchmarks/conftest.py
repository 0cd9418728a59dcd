"""pytest-benchmark hooks for ``pytest benchmarks/ --benchmark-only`` (see ``_harness.py``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from . import _config as cfg
from ._harness import BenchContext
from ._memory import pin_malloc

_KEY = pytest.StashKey[BenchContext]()


def pytest_configure(config: pytest.Config) -> None:
    pin_malloc()  # RSS follows live memory (see benchmarks/_memory.py)
    if cfg.threads():
        torch.set_num_threads(cfg.threads())
    config.stash[_KEY] = BenchContext()


def pytest_unconfigure(config: pytest.Config) -> None:
    ctx = config.stash.get(_KEY, None)
    if ctx is not None:
        ctx.client.close()


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict[str, Any]
) -> None:
    ctx = config.stash.get(_KEY, None)
    if ctx is not None:
        output_json["cma"] = ctx.summary()


@pytest.fixture(scope="session")
def bench_ctx(request: pytest.FixtureRequest) -> BenchContext:
    """The session's :class:`BenchContext`."""
    return request.config.stash[_KEY]
