r"""Issue #15: batched and unbalanced Sinkhorn — ``cma_kernels.SamplesLoss`` against GeomLoss.

    python -m benchmarks.ot_parity                                    # both cases
    python -m benchmarks.ot_parity --unbalanced-n 2048 --out parity.md  # a smaller case

Both libraries are called with the *same* arguments — ``SamplesLoss("sinkhorn", p=2,
blur=0.05/√2, reach=…, scaling=0.5, backend="tensorized")``, the one-import switch (pykeops,
which GeomLoss's other backends need, is not installed; ours then holds the dense cost too) —
so both compute in GeomLoss's convention (C = ½‖x − y‖²), i.e. half of our S_ε at blur 0.05
(ε = 0.0025), the setting of the other benchmarks. Values and gradients are doubled before
they are compared with the float64 references (our convention).

* **batched**: B = 64 independent CLIP-like pairs (``_config.make_clouds`` with seeds 0…63),
  N = M = 256, d = 512: our one batched solve, GeomLoss's batched tensorized call, and our
  own loop over the 64 items. Reference: the independent float64 oracle of
  :mod:`benchmarks._reference` (ε-scaled Sinkhorn, then Newton), per item.
* **unbalanced**: one pair, N = M = 4096 by default (``--unbalanced-n``), ``reach`` 0.5 (ρ =
  0.25 in our units), at several of our stopping tolerances so that "equal accuracy" can be
  read off. Reference: our own float64 solve at tol 1e-7 (no independent oracle at this size;
  ``tests/test_unbalanced.py`` checks the solver against one on small clouds to 1e-12).

Each measurement is one forward + backward, in a fresh interpreter (so that no case's allocator
state hides another's peak), after a warm-up call on small clouds; every case runs once, the
cases interleaved (ours, GeomLoss, ours, …) so that a change in the load of a shared machine
hits both sides. Peak memory as in the other benchmarks (:mod:`benchmarks._memory`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import _config as cfg

#: GeomLoss-convention blur of every case: our blur 0.05 (ε = 0.0025) in C = ‖x − y‖².
GL_BLUR = cfg.BLUR / math.sqrt(2.0)
#: Reach of the unbalanced case, in our convention (GeomLoss gets reach/√2).
REACH = 0.5
#: Stopping tolerance of the unbalanced case's float64 reference (our solver).
REF_TOL = 1e-7
BATCH, BATCH_N = 64, 256
#: (case, backend, tol) in the order they run: interleaved ours / GeomLoss.
PLAN: tuple[tuple[str, str, float | None], ...] = (
    ("batched", "cma", cfg.TOL),
    ("batched", "geomloss", None),
    ("batched", "cma-loop", cfg.TOL),
    ("batched", "cma", 1e-3),
    ("unbalanced", "cma", 0.3),
    ("unbalanced", "geomloss", None),
    ("unbalanced", "cma", 0.1),
    ("unbalanced", "cma", 0.01),
)


def clouds(case: str, n: int, d: int, batch: int) -> tuple[Tensor, Tensor]:
    """The case's float32 clouds: (B, N, d) stacked pairs (batched) or one (N, d) pair."""
    if case == "batched":
        pairs = [cfg.make_clouds(n, d, seed=cfg.SEED + i) for i in range(batch)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    return cfg.make_clouds(n, d, seed=cfg.SEED)


def loss_fn(case: str, backend: str, tol: float | None):
    """The callable (x, y) → value(s) in GeomLoss's convention, for one backend."""
    reach = None if case == "batched" else REACH / math.sqrt(2.0)
    kwargs = {"p": 2, "blur": GL_BLUR, "reach": reach, "scaling": cfg.SCALING}
    kwargs["backend"] = "tensorized"  # GeomLoss's (no pykeops); ours: the dense reference path
    if backend == "geomloss":
        import geomloss

        return geomloss.SamplesLoss("sinkhorn", **kwargs)
    import cma_kernels

    loss = cma_kernels.SamplesLoss("sinkhorn", tol=tol, max_iter=cfg.MAX_ITER, **kwargs)
    if backend == "cma-loop":
        return lambda x, y: torch.stack([loss(xi, yi) for xi, yi in zip(x, y, strict=True)])
    return loss


def measure(
    case: str, backend: str, tol: float | None, n: int, d: int, batch: int, out: str
) -> dict:
    """One forward + backward, timed, with its peak memory; value and gradients go to ``out``."""
    from . import _backends
    from ._memory import PeakMemory, pin_malloc

    pin_malloc()
    fn = loss_fn(case, backend, tol)
    wx, wy = clouds(case, 32, d, 2)
    fn(wx.requires_grad_(True), wy.requires_grad_(True)).sum().backward()  # warm-up
    x, y = clouds(case, n, d, batch)
    x.requires_grad_(True)
    y.requires_grad_(True)
    info: dict[str, Any] = {}
    with _backends.count_iterations(info), PeakMemory("cpu") as mem:
        t0 = time.perf_counter()
        value = fn(x, y)
        value.sum().backward()
        seconds = time.perf_counter() - t0
    torch.save({"value": value.detach(), "gx": x.grad, "gy": y.grad}, out)
    return {
        "case": case,
        "backend": backend,
        "tol": tol,
        "n": n,
        "d": d,
        "batch": batch,
        "seconds": seconds,
        "peak_mb": mem.peak_mb,
        "iters": info.get("iters") if backend == "cma" else None,
        "threads": torch.get_num_threads(),
        "mem_method": mem.method,
    }


def reference(case: str, n: int, d: int, batch: int) -> dict[str, Tensor]:
    """Float64 values (B,) or (1,) and gradients in our convention, cached in ``.cache``."""
    path = cfg.CACHE_DIR / f"ot_parity_{case}_{batch}x{n}_{d}_{cfg.SEED}_{REACH}.pt"
    if cfg.cache_enabled() and path.is_file():
        return torch.load(path)
    x, y = clouds(case, n, d, batch)
    if case == "batched":
        from ._reference import sinkhorn_reference

        items = [sinkhorn_reference(xi, yi, blur=cfg.BLUR) for xi, yi in zip(x, y, strict=True)]
        ref = {
            "value": torch.tensor([it[0] for it in items], dtype=torch.float64),
            "gx": torch.stack([it[1] for it in items]),
            "gy": torch.stack([it[2] for it in items]),
        }
    else:
        import cma_kernels

        xg = x.double().requires_grad_(True)
        yg = y.double().requires_grad_(True)
        value = cma_kernels.sinkhorn_divergence(
            xg, yg, blur=cfg.BLUR, reach=REACH, tol=REF_TOL, max_iter=100_000, strategy="tensorized"
        )
        value.backward()
        ref = {"value": value.detach().reshape(1), "gx": xg.grad, "gy": yg.grad}
    if cfg.cache_enabled():
        cfg.CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(ref, path)
    return ref


def errors(out: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float]:
    """Worst relative errors over the batch: value and gradient (‖∇ − ∇_ref‖ / ‖∇_ref‖)."""
    lead = ref["value"].shape[0]
    value = 2.0 * out["value"].double().reshape(lead)  # GeomLoss's convention → ours
    grad = 2.0 * torch.cat([out["gx"], out["gy"]], dim=-2).double().reshape(lead, -1)
    grad_ref = torch.cat([ref["gx"], ref["gy"]], dim=-2).double().reshape(lead, -1)
    value_err = ((value - ref["value"]) / ref["value"]).abs()
    grad_err = (grad - grad_ref).norm(dim=-1) / grad_ref.norm(dim=-1)
    return {"value_err": float(value_err.max()), "grad_err": float(grad_err.max())}


def run_one(spec: list[Any]) -> dict:
    """:func:`measure` (arguments ``spec``) in a fresh interpreter; returns its JSON line."""
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    spec = json.dumps(spec)
    cmd = [sys.executable, "-m", "benchmarks.ot_parity", "--one", spec]
    res = subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the measured cases."""
    lines = [
        "| case | backend | our tol | fwd + bwd (s) | peak memory (MiB) | iterations at final ε "
        "| value rel. err (max) | gradient rel. err (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = f"B = {r['batch']} × N = {r['n']}" if r["case"] == "batched" else f"N = {r['n']}"
        name = f"{r['case']} ({shape}, d = {r['d']})"
        tol = "—" if r["tol"] is None else f"{r['tol']:g}"
        iters = "—" if r["iters"] is None else str(r["iters"])
        lines.append(
            f"| {name} | {r['backend']} | {tol} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
            f"{iters} | {r['value_err']:.1e} | {r['grad_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unbalanced-n", type=int, default=4096, help="N = M of the unbalanced case")
    p.add_argument("--dim", type=int, default=cfg.dim())
    p.add_argument("--cases", default="batched,unbalanced", help="comma-separated cases")
    p.add_argument("--batch", type=int, default=BATCH, help="B of the batched case")
    p.add_argument("--batch-n", type=int, default=BATCH_N, help="N = M of the batched case")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    wanted = set(args.cases.split(","))
    sizes = {"batched": args.batch_n, "unbalanced": args.unbalanced_n}
    refs = {case: reference(case, sizes[case], args.dim, args.batch) for case in sorted(wanted)}
    load_start, started = os.getloadavg(), datetime.datetime.now()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (case, backend, tol) in enumerate(PLAN):
            if case not in wanted:
                continue
            out = str(Path(tmp) / f"{i}.pt")
            row = run_one([case, backend, tol, sizes[case], args.dim, args.batch, out])
            row.update(errors(torch.load(out), refs[case]))
            rows.append(row)
            print(
                f"{case} {backend} tol={tol}: {row['seconds']:.2f} s, {row['peak_mb']:.0f} MiB, "
                f"value err {row['value_err']:.1e}, grad err {row['grad_err']:.1e}",
                flush=True,
            )
    load_end = os.getloadavg()
    text = (
        table(rows) + f"\n\n{started:%Y-%m-%d}, {rows[0]['threads']} torch threads, load average "
        f"{load_start[0]:.1f} at the start and {load_end[0]:.1f} at the end (shared machine); "
        f"blur {cfg.BLUR} in our convention (GeomLoss: {GL_BLUR:.4f}), scaling {cfg.SCALING}, "
        f"unbalanced reach {REACH} (GeomLoss: {REACH / math.sqrt(2):.4f}); memory: "
        f"{rows[0]['mem_method']}.\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
