"""Worker for tests/test_sharded.py: the sharded solver under ``torch.distributed.run`` (gloo).

Every rank takes its contiguous (possibly uneven) shard of each case's global clouds
(:func:`problem`), runs :func:`compute` with ``group=True`` and writes the results to
``$OUT_DIR/rank{r}.pt`` (a case that raised: its traceback). The test runs the same
:func:`compute` in one process on the whole clouds and compares. ``$CASES`` (comma-separated,
default all) picks the cases.

Cases: ``even`` (N = M = 16, the stacked self problems), ``uneven`` (N = 13, M = 10, weights,
a batch of 2, unbalanced transport), ``triton`` (tiny fp32 clouds on the Triton backend under
the interpreter) and ``nan`` (the last rank's x holds a NaN: every rank must raise).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import cma_kernels
from cma_kernels import sharded, sinkhorn

CASES = ("even", "uneven", "triton", "nan")
#: Solver settings of every case: a tolerance far below the comparisons' (float64).
SOLVER = {"blur": 0.5, "scaling": 0.5, "tol": 1e-8, "max_iter": 1000}
TRITON_SOLVER = {"blur": 0.5, "scaling": 0.5, "tol": 1e-5, "max_iter": 200}


def problem(case: str) -> dict[str, Tensor]:
    """The whole problem of ``case``: clouds x, y and (``uneven``) weights a, b."""
    g = torch.Generator().manual_seed(CASES.index(case))
    if case == "triton":
        n, m, d, dtype, batch = 7, 6, 4, torch.float32, ()
    elif case == "uneven":
        n, m, d, dtype, batch = 13, 10, 3, torch.float64, (2,)
    else:
        n, m, d, dtype, batch = 16, 16, 3, torch.float64, ()
    out = {
        "x": torch.randn(*batch, n, d, generator=g, dtype=dtype),
        "y": torch.randn(*batch, m, d, generator=g, dtype=dtype) * 0.7 + 0.5,
    }
    if case == "uneven":
        for name, size in (("a", n), ("b", m)):
            w = torch.rand(*batch, size, generator=g, dtype=dtype) + 0.5
            out[name] = w / w.sum(dim=-1, keepdim=True)
    return out


def shard(data: dict[str, Tensor], rank: int, world: int) -> dict[str, Tensor]:
    """This rank's contiguous part of the points of every tensor (sizes differ by ≤ 1)."""
    axis = {"x": -2, "y": -2, "a": -1, "b": -1}
    return {k: t.tensor_split(world, dim=axis[k])[rank].clone() for k, t in data.items()}


def compute(case: str, data: dict[str, Tensor], group: object, world: int) -> dict[str, Any]:
    """Values, gradients ÷ ``world`` (the whole batch's, for this process's points) and the
    counted work of one solve (passes, cost entries, bytes and collectives sent)."""
    x = data["x"].clone().requires_grad_()
    y = data["y"].clone().requires_grad_()
    a, b = data.get("a"), data.get("b")
    if case == "triton":
        settings, backend = TRITON_SOLVER, "triton"
    else:
        settings, backend = SOLVER, "reference"
    out: dict[str, Any] = {}
    loss = cma_kernels.distribution_gap_loss(
        x, y, a=a, b=b, lambda_centroid=0.5, backend=backend, group=group, **settings
    )
    values = [loss]
    if case == "uneven":  # unbalanced S_ε,ρ without centring, batched: its own path
        values.append(
            cma_kernels.sinkhorn_divergence(x, y, reach=1.0, backend=backend, group=group, **SOLVER)
        )
    total = sum(v.sum() for v in values)
    total.backward()
    out["values"] = torch.stack([v.detach().reshape(-1) for v in values])
    out["grad_x"] = x.grad / world
    out["grad_y"] = y.grad / world
    # the counted work of one plain solve (x↔y and both self problems) of this problem
    prob = sinkhorn.prepare(x.detach(), y.detach(), a, b, None, backend, group)
    before = dict(sharded.COUNTERS)
    pot = sinkhorn.solve(
        prob.x, prob.y, prob.a, prob.b, None, reach=None, check_every=1, debias=True,
        backend=prob.backend, group_id=prob.group_id, **settings,
    )  # fmt: skip
    out["passes"], out["cost_entries"] = pot.passes, pot.cost_entries
    out["bytes"] = sharded.COUNTERS["bytes"] - before["bytes"]
    out["collectives"] = sharded.COUNTERS["collectives"] - before["collectives"]
    out["cloud_gathers"] = sharded.COUNTERS["cloud_gathers"] - before["cloud_gathers"]
    return out


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cases = os.environ.get("CASES", ",".join(CASES)).split(",")
    results: dict[str, Any] = {}
    for case in cases:
        local = shard(problem(case), rank, world)
        if case == "nan":
            if rank == world - 1:
                local["x"][0, 0] = float("nan")
            try:
                compute(case, local, True, world)
                results[case] = {"error": None}
            except ValueError as err:
                results[case] = {"error": str(err)}
        else:  # a failure is recorded (every rank fails alike) so the other cases still run
            try:
                results[case] = compute(case, local, True, world)
            except Exception:
                results[case] = {"failure": traceback.format_exc()}
    torch.save(results, os.path.join(os.environ["OUT_DIR"], f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
