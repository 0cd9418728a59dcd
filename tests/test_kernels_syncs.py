"""Host syncs of a solve (issue #12): every tensor→Python conversion is counted.

On CUDA each conversion (``float(t)``, ``bool(t)``, ``t.item()``, ``t.tolist()`` …) is a
device→host sync that drains the GPU's queue. The solver may read the host once before its loop
(the ε-schedule's diameter, read together with every data check of the inputs) and once per
stopping test, every ``check_every`` iterations; the backward and the input validation read
nothing. The same code runs on CPU tensors, so counting the conversions here counts the syncs
a CUDA run makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import cma_kernels as ck
from cma_kernels import sinkhorn

CONVERSIONS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Record every tensor→Python conversion made inside the block."""
    seen: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            seen.append(name)
            return original(self, *args, **kwargs)

        return counted

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _clouds(n: int = 60, m: int = 50, d: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, d, generator=g) + 0.5, dim=1)
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("check_every", [1, 3, 8])
@pytest.mark.parametrize("same_size", [True, False])
def test_syncs_per_solve_are_one_plus_one_per_check(
    check_every: int, same_size: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _clouds(40, 40 if same_size else 30)
    iterations = []
    solve = sinkhorn.solve

    def recorded(*args, **kwargs):
        pot = solve(*args, **kwargs)
        iterations.append(pot.iterations)
        return pot

    monkeypatch.setattr(sinkhorn, "solve", recorded)
    kw = {"blur": 0.1, "tol": 1e-5, "check_every": check_every, "backend": "reference"}
    with count_host_reads() as seen:
        value = ck.distribution_gap_loss(x, y, **kw)
        value.backward()
    (iters,) = iterations
    assert iters > 2 * check_every  # the loop really ran several checks
    checks = iters // check_every + 1  # the test that stopped it included
    # the centroid's data checks on CPU tensors cost one read (none on CUDA); the solve one read
    # before the loop and one per stopping test; the backward none
    assert checks <= len(seen) <= 1 + 1 + checks, seen


def test_backward_reads_nothing_from_the_host() -> None:
    x, y = _clouds()
    value = ck.sinkhorn_divergence(x, y, blur=0.1, backend="reference")
    with count_host_reads() as seen:
        value.backward()
    assert seen == []
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_input_still_named_without_an_extra_read() -> None:
    """NaN input: the error names the tensor (found in the one pre-loop read)."""
    x, y = _clouds()
    bad = y.detach().clone()
    bad[3, 1] = float("nan")
    with count_host_reads() as seen, pytest.raises(ValueError, match=r"^y: contains NaN"):
        ck.sinkhorn_divergence(x.detach(), bad, blur=0.1, backend="reference")
    # the one pre-loop read, then the error path may count the bad rows
    assert seen[0] == "tolist" and len(seen) <= 3, seen
