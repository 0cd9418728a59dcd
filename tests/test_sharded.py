"""The sharded solver (``group=``) under 2 and 4 gloo processes equals one process.

One ``torch.distributed.run`` launch per world size runs every case of
``tests/scripts/sharded_solver.py``; the tests compare each rank's results with the same
computation on the whole clouds in this process: the value on every rank, the gradients
(each rank's own points, ÷ W) to rtol 1e-6 in float64 (1e-4 for the fp32 Triton case), the
work per rank (cost entries ÷ W, passes unchanged), uneven shards (N = 13, M = 10 points), and
a NaN on one rank raising the same ValueError on every rank instead of a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from sharded_solver import compute, problem

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "scripts" / "sharded_solver.py"
#: Seconds before a launch counts as hung (4 processes on 2 busy cores take ~1 min).
TIMEOUT = 300
#: (rtol, atol) of the comparisons per case: float64 reference cases, fp32 Triton.
TOLERANCES = {"even": (1e-6, 1e-9), "uneven": (1e-6, 1e-9), "triton": (1e-4, 1e-6)}


def launch(world: int, out_dir: Path) -> list[dict[str, Any]]:
    """Run the worker on ``world`` gloo processes; every rank's results, in rank order."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OUT_DIR": str(out_dir), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", str(WORKER)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a hang is killed with every worker (its own process group)
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{world} processes did not finish in {TIMEOUT} s (a rank hung?)")
    assert proc.returncode == 0, err[-4000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=["W2", "W4"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(W, the W ranks' results)."""
    world = request.param
    return world, launch(world, tmp_path_factory.mktemp(f"sharded{world}"))


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, Any]]:
    """Every case computed by one process on the whole clouds (lazily: Triton is slow)."""
    cache: dict[str, dict[str, Any]] = {}

    class Lazy(dict):
        def __missing__(self, case: str) -> dict[str, Any]:
            cache[case] = compute(case, problem(case), None, 1)
            return cache[case]

    return Lazy()


def result(results: list[dict[str, Any]], case: str, rank: int) -> dict[str, Any]:
    out = results[rank][case]
    if "failure" in out:
        pytest.fail(f"rank {rank} failed in case {case!r}:\n{out['failure']}")
    return out


@pytest.mark.parametrize("case", ["even", "uneven", "triton"])
def test_value_and_gradients_match_one_process(ranks, single, case: str) -> None:
    world, results = ranks
    rtol, atol = TOLERANCES[case]
    got = [result(results, case, r) for r in range(world)]
    ref = single[case]
    for r in range(world):  # every rank holds the whole problem's value
        torch.testing.assert_close(got[r]["values"], ref["values"], rtol=rtol, atol=atol)
    for name in ("grad_x", "grad_y"):  # each rank: W × the whole-batch gradient of its points
        whole = torch.cat([g[name] for g in got], dim=-2)
        assert whole.shape == ref[name].shape
        torch.testing.assert_close(whole, ref[name], rtol=rtol, atol=atol)


def test_shards_are_uneven(ranks) -> None:
    """The ``uneven`` case really splits N = 13 and M = 10 unevenly (sizes differ by one)."""
    world, results = ranks
    sizes = [result(results, "uneven", r)["grad_x"].shape[-2] for r in range(world)]
    assert sum(sizes) == 13 and len(set(sizes)) == 2


@pytest.mark.parametrize("case", ["even", "uneven", "triton"])
def test_cost_entries_per_rank_fall_as_one_over_w(ranks, single, case: str) -> None:
    """Same passes as one process; the ranks' cost entries add up to one process's, and with
    even shards (N = M = 16) each rank computes exactly 1/W of them."""
    world, results = ranks
    got = [result(results, case, r) for r in range(world)]
    ref = single[case]
    assert [g["passes"] for g in got] == [ref["passes"]] * world
    assert sum(g["cost_entries"] for g in got) == ref["cost_entries"]
    if case == "even":
        assert [g["cost_entries"] * world for g in got] == [ref["cost_entries"]] * world
    assert all(g["collectives"] > 0 and g["bytes"] > 0 for g in got)
    # each cloud is gathered once per solve: the self problems (stacked or not) reuse the copies
    assert [g["cloud_gathers"] for g in got] == [2] * world


def test_nan_on_one_rank_raises_everywhere(ranks) -> None:
    """The last rank's x holds a NaN: every rank raises the same ValueError (no hang)."""
    world, results = ranks
    errors = [results[r]["nan"]["error"] for r in range(world)]
    assert errors[0] is not None
    assert errors == [errors[0]] * world
    assert errors[0].startswith("x: contains NaN or Inf values on at least one rank")


def test_cmaloss_and_trainer_shard_by_default() -> None:
    """``CMALoss`` shards when there is more than one process unless told not to, and
    ``python -m cma.train`` passes ``--no-shard-alignment`` through its config."""
    from cma.losses import CMALoss
    from cma.train.config import parse_config

    assert CMALoss(rank=1, world_size=2).shard_alignment
    assert not CMALoss(rank=1, world_size=2, shard_alignment=False).shard_alignment
    assert not CMALoss().shard_alignment  # one process: nothing to shard
    assert parse_config([]).shard_alignment
    assert not parse_config(["--no-shard-alignment"]).shard_alignment
