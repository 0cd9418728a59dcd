"""Tensorized vs chunked: time and peak memory of one ``sinkhorn_divergence`` forward + backward.

    python -m benchmarks.strategies                       # N = M ∈ {1024, 8192}, d = 512
    python -m benchmarks.strategies --sizes 1024 --tol 1e-3 --out strategies.md

Each (strategy, N) runs in a fresh subprocess (so one case's allocator state cannot hide
another's peak) on the clouds of :func:`benchmarks._config.make_clouds`, at blur 0.05 and the
library's default stopping rule. Peak memory is measured as in the benchmarks
(:mod:`benchmarks._memory`: VmHWM during the call minus the RSS before it, on CPU). The value
of both strategies is printed too: they solve the same problem and must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STRATEGIES = ("tensorized", "chunked")


def measure(strategy: str, n: int, d: int, tol: float, blur: float) -> dict[str, Any]:
    """One forward + backward of S_ε(x, y) with ``strategy``, timed, with its peak memory."""
    import torch

    import cma_kernels as ck

    from . import _config as cfg
    from ._memory import PeakMemory, pin_malloc

    pin_malloc()
    warm_x, warm_y = cfg.make_clouds(64, d, seed=1)  # first-call allocations (thread pools, ops)
    ck.sinkhorn_divergence(warm_x, warm_y, blur=blur, tol=tol, strategy=strategy)
    x, y = cfg.make_clouds(n, d)
    x.requires_grad_(True)
    y.requires_grad_(True)
    with PeakMemory("cpu") as mem:
        t0 = time.perf_counter()
        value = ck.sinkhorn_divergence(x, y, blur=blur, tol=tol, strategy=strategy)
        value.backward()
        seconds = time.perf_counter() - t0
    grad = torch.cat([x.grad.flatten(), y.grad.flatten()])
    return {
        "strategy": strategy,
        "n": n,
        "d": d,
        "tol": tol,
        "blur": blur,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "peak_mb": mem.peak_mb,
        "value": float(value),
        "grad_norm": float(grad.norm()),
        "mem_method": mem.method,
    }


def run_case(strategy: str, n: int, d: int, tol: float, blur: float) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter; returns its JSON line."""
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.strategies",
        "--one",
        strategy,
        str(n),
        str(d),
        str(tol),
        str(blur),
    ]
    out = subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the measured cases."""
    lines = [
        "| N = M | d | strategy | fwd + bwd (s) | peak memory (MiB) | S_ε | ‖∇‖ |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['d']} | {r['strategy']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} "
            f"| {r['value']:.6f} | {r['grad_norm']:.6f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,8192", help="comma-separated N = M")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--blur", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=None, help="default: the library's")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        strategy, n, d, tol, blur = args.one
        print(json.dumps(measure(strategy, int(n), int(d), float(tol), float(blur))))
        return
    from cma_kernels.sinkhorn import DEFAULT_TOL

    tol = DEFAULT_TOL if args.tol is None else args.tol
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for strategy in STRATEGIES:
            rows.append(run_case(strategy, n, args.dim, tol, args.blur))
            r = rows[-1]
            print(f"N={n} {strategy}: {r['seconds']:.2f} s, {r['peak_mb']:.0f} MiB", flush=True)
    text = (
        table(rows) + f"\n\nblur {args.blur}, tol {tol} (L1 marginal error), "
        f"{rows[0]['threads']} threads; memory: {rows[0]['mem_method']}.\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
