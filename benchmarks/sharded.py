"""The alignment loss sharded across W gloo processes: per-rank time, work and bytes vs one process.

    python -m benchmarks.sharded                          # N = 2048, d = 512, W ∈ {1, 2, 4}
    python -m benchmarks.sharded --n 1024 --worlds 1,2 --out sharded.md

For each W, ``torch.distributed.run`` starts W processes (gloo, CPU, one torch thread each);
every process builds the same CLIP-like clouds (:func:`benchmarks._config.make_clouds`), takes
its contiguous N/W points of each and runs one ``distribution_gap_loss`` forward + backward at
blur 0.05 and ``CMALoss``'s tolerance (1e-2):

* ``sharded``: ``group=True`` on the local points (:mod:`cma_kernels.sharded`);
* ``gathered``: the features all-gathered with gradients (``torch.distributed.nn.all_gather``,
  as ``CMALoss(shard_alignment=False)`` / open_clip's ``gather_features``), then every process
  solves the whole problem (W > 1 only).

Per rank it records the wall time and the process CPU time of the step (the fastest of
``--rounds`` rounds, after a warm-up call on small clouds), the cost entries computed by every
cost operator the step built (forward solve and backward, counted by the operators) and the
bytes this process received through collectives (:func:`counted_traffic`: the others' parts of
every all-gather and all-to-all, 2·(W − 1)/W of every all-reduced tensor — a ring), for both
modes alike. W processes on fewer cores than W cannot show the wall-time speedup: the per-rank
cost entries and CPU time are the machine-independent measure of the split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: CMALoss's default stopping tolerance (L1 marginal error), the training configuration.
CMALOSS_TOL = 1e-2


@contextlib.contextmanager
def counted_traffic(stats: dict[str, int]) -> Iterator[None]:
    """Within the block, the bytes this process receives through ``torch.distributed``'s
    all-gathers (the other processes' inputs), all-to-alls and scatters (the others' parts for
    it) and all-reduces (2·(W − 1)/W × the tensor: a ring), in ``stats["bytes"]``, and their
    count."""
    import torch.distributed as dist

    names = ("all_gather", "all_reduce", "all_to_all", "scatter")
    originals = {name: getattr(dist, name) for name in names}

    def nbytes(t: Any) -> int:
        return t.numel() * t.element_size()

    def received(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        world, rank = dist.get_world_size(kwargs.get("group")), dist.get_rank(kwargs.get("group"))
        if name == "all_reduce":
            return 2 * (world - 1) * nbytes(args[0]) // world
        if name == "scatter":  # gloo's all-to-all in torch.distributed.nn: W scatters
            src = args[2] if len(args) > 2 else kwargs["src"]
            return 0 if src == rank else nbytes(args[0])
        parts = args[0] if name == "all_gather" else args[1]  # outputs / inputs
        return sum(nbytes(t) for i, t in enumerate(parts) if i != rank)

    def wrap(name: str) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            stats["bytes"] += received(name, args, kwargs)
            stats["collectives"] += 1
            return originals[name](*args, **kwargs)

        return counted

    for name in originals:
        setattr(dist, name, wrap(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


@contextlib.contextmanager
def counted_operators(backend: str, made: list[Any]) -> Iterator[None]:
    """Within the block, every cost operator the backend builds is appended to ``made``."""
    from cma_kernels import sinkhorn

    ops = sinkhorn._backend_ops(backend)
    original = ops.make_cost

    def make(*args: Any, **kwargs: Any) -> Any:
        op = original(*args, **kwargs)
        made.append(op)
        return op

    ops.make_cost = make
    try:
        yield
    finally:
        ops.make_cost = original


def step(mode: str, x: Any, y: Any, blur: float, tol: float) -> float:
    """One loss forward + backward in ``mode``; the loss value."""
    import torch
    import torch.distributed.nn.functional as dist_nn

    import cma_kernels as ck

    x = x.clone().requires_grad_()
    y = y.clone().requires_grad_()
    if mode == "gathered":
        xs, ys = torch.cat(dist_nn.all_gather(x)), torch.cat(dist_nn.all_gather(y))
        loss = ck.distribution_gap_loss(xs, ys, blur=blur, tol=tol, backend="reference")
    else:
        loss = ck.distribution_gap_loss(x, y, blur=blur, tol=tol, backend="reference", group=True)
    loss.backward()
    return float(loss.detach())


def worker(n: int, d: int, blur: float, tol: float, mode: str, rounds: int) -> None:
    """One rank of one W (under torchrun): rank 0 prints every rank's record as a JSON line."""
    import torch
    import torch.distributed as dist

    from . import _config as cfg

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    wx, wy = cfg.make_clouds(64 * world, d, seed=1)  # warm-up: imports, first-call work
    step(mode, wx.tensor_split(world)[rank], wy.tensor_split(world)[rank], blur, tol)
    x, y = (t.tensor_split(world)[rank] for t in cfg.make_clouds(n, d))
    best: dict[str, Any] | None = None
    for _ in range(rounds):
        made: list[Any] = []
        traffic = {"bytes": 0, "collectives": 0}
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        with counted_operators("reference", made), counted_traffic(traffic):
            value = step(mode, x, y, blur, tol)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        record = {
            "rank": rank, "wall_s": wall, "cpu_s": cpu, "value": value,
            "cost_entries": sum(op.cost_entries for op in made),
            "passes": sum(op.passes for op in made), **traffic,
        }  # fmt: skip
        if best is None or record["wall_s"] < best["wall_s"]:
            best = record
    records: list[Any] = [None] * world
    dist.all_gather_object(records, best)
    if rank == 0:
        print(json.dumps({"world": world, "mode": mode, "n": n, "d": d, "ranks": records}))
    dist.destroy_process_group()


def run(world: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`worker` on ``world`` gloo processes; rank 0's JSON line."""
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", "-m", "benchmarks.sharded", "--worker", str(args.n),
           str(args.dim), str(args.blur), str(args.tol), mode, str(args.rounds)]  # fmt: skip
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"W={world} {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Per-rank figures of one run: the slowest rank's wall time, the mean CPU time, the
    largest per-rank cost entries and bytes."""
    ranks = res["ranks"]
    return {
        "world": res["world"], "mode": res["mode"],
        "wall_s": max(r["wall_s"] for r in ranks),
        "cpu_s": sum(r["cpu_s"] for r in ranks) / len(ranks),
        "cost_entries": max(r["cost_entries"] for r in ranks),
        "passes": max(r["passes"] for r in ranks),
        "bytes": max(r["bytes"] for r in ranks),
        "collectives": max(r["collectives"] for r in ranks),
        "value": ranks[0]["value"],
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, ratios to the one-process run (else to the first row)."""
    one = next((r for r in rows if r["world"] == 1), rows[0])
    lines = [
        "| W | mode | wall / rank (s) | × 1 proc | CPU / rank (s) | × 1 proc | cost entries / rank "
        "| × 1 proc | passes | received / rank (MiB) | collectives | loss |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['mode']} | {r['wall_s']:.2f} | {r['wall_s'] / one['wall_s']:.2f} "
            f"| {r['cpu_s']:.2f} | {r['cpu_s'] / one['cpu_s']:.2f} | {r['cost_entries']:.3e} "
            f"| {r['cost_entries'] / one['cost_entries']:.3f} | {r['passes']} "
            f"| {r['bytes'] / 2**20:.2f} | {r['collectives']} | {r['value']:.6f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="global N = M (all processes)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--blur", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=CMALOSS_TOL)
    p.add_argument("--worlds", default="1,2,4", help="comma-separated process counts")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (the fastest is kept)")
    p.add_argument("--no-gathered", dest="gathered", action="store_false")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        n, d, blur, tol, mode, rounds = args.worker
        worker(int(n), int(d), float(blur), float(tol), mode, int(rounds))
        return
    rows = []
    for world in (int(w) for w in args.worlds.split(",")):
        modes = ["sharded"] + (["gathered"] if args.gathered and world > 1 else [])
        for mode in modes:
            rows.append(summarise(run(world, mode, args)))
            r = rows[-1]
            print(f"W={world} {mode}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU per rank, "
                  f"{r['cost_entries']:.3e} cost entries, {r['bytes'] / 2**20:.2f} MiB received",
                  flush=True)  # fmt: skip
    text = (
        table(rows) + f"\n\nN = M = {args.n}, d = {args.dim}, blur {args.blur}, tol {args.tol} "
        f"(L1 marginal error), one torch thread per process, gloo; {os.cpu_count()} CPU cores; "
        f"fastest of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
