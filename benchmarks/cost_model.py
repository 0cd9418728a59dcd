r"""Cost model of the alignment term per rank: sharded vs gathered, next to ViT-B/32's own step.

    python -m benchmarks.cost_model          # measures the sweeps at N = 8192 first (slow on CPU)
    python -m benchmarks.cost_model --sweeps 133 --passes 122 --iterations 46   # no measurement

For a global batch of N image–text pairs (M = N), W data-parallel ranks and d = 512:

* **Sweeps** S: cost entries computed by one forward solve over N·M (measured: one
  ``sinkhorn.solve`` of ``CMALoss``'s problem — blur 0.05, tol 1e-2 — on the CLIP-like unit
  clouds of :func:`benchmarks._config.make_clouds`, read from ``Potentials.cost_entries``; the
  x↔y rows and columns count one sweep each per iteration, the stacked self problems two). The
  backward adds 4 sweeps (the x↔y barycenters of rows and columns, and of both self problems).
* **FLOPs** (2 per multiply-add): a soft-min sweep costs 2·d per cost entry (the ⟨x_i, y_j⟩
  tile) plus ``ELEMENTWISE`` for the log-sum-exp (scale, add h, max, subtract, exp, add); a
  barycenter sweep 4·d (the tile and P·Y) plus the same. Gathered: every rank does the whole
  problem; sharded: each rank 1/W of every sweep (its own rows and columns).
* **Bytes received per rank** (fp32 features; ring collectives: an all-gather or
  reduce-scatter of a tensor of T bytes in all moves (W − 1)/W·T into each rank). Gathered
  (``CMALoss(shard_alignment=False)``, open_clip's ``gather_features``): the all-gather of
  both clouds, 2N·d·4 bytes, in the forward and the reduce-scatter of their gradients in the
  backward. Sharded, as implemented: the clouds are all-gathered (without gradient) once in the
  forward and once in the backward (the self problems reuse the x↔y operator's copies), and
  every sweep all-gathers one N-vector of potentials (4·N bytes).
* **Collectives per rank** (≈): sharded, one all-gather per pass, ≈ 2 all-reduces per stopping
  test (every ``check_every`` = 4 iterations on GPUs) and ``OTHER_COLLECTIVES``; gathered, 4
  (two all-gathers, two reduce-scatters). The sharded ones carry O(N) numbers each: latency,
  not bandwidth, is their cost.
* **Model** FLOPs per rank: N/W pairs × (image + text tower, forward + backward), counted by
  ``torch.utils.flop_counter`` on open_clip's ViT-B-32 (224², 77 tokens): ``MODEL_FLOPS``
  (``--measure-model`` recounts). open_clip's profile lists 4.4 and 2.9 "GFLOPs" for the
  towers: multiply-adds (fvcore's convention), i.e. 8.7 and 5.8 GFLOPs here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: Embedding dimension of ViT-B/32.
DIM = 512
#: Elementwise FLOPs per cost entry of a soft-min / barycenter sweep beyond the dot products.
ELEMENTWISE = 6
#: Sweeps added by the backward (x↔y rows and columns, x↔x and y↔y barycenters).
BACKWARD_SWEEPS = 4
#: All-gathers of both clouds per step: one in the forward solve, one in the backward (each
#: shared by the x↔y problem and the self problems).
CLOUD_GATHERS = 2
#: FLOPs per image–text pair of open_clip's ViT-B-32 (torch.utils.flop_counter, train mode):
#: image tower forward / backward, text tower forward / backward.
MODEL_FLOPS = {"image_fwd": 8.725e9, "image_bwd": 17.220e9, "text_fwd": 5.814e9,
               "text_bwd": 11.628e9}  # fmt: skip
BATCHES = (4096, 32768, 65536)
WORLDS = (8, 64)
#: Stopping tests per iteration on GPUs (cma_kernels.sinkhorn.DEFAULT_CHECK_EVERY = 4), each
#: ≈ 2 all-reduces (x↔y's residual, the self problems' until they are frozen).
CHECKS_PER_ITERATION = 0.25
#: Collectives of a sharded step besides the forward passes and the stopping tests, counted in
#: the code: shard sizes, the cloud all-gathers, weight sums, diameter, dual values, the
#: centroid means and the 3 backward passes (forward and backward together).
OTHER_COLLECTIVES = 34


def measure_sweeps(n: int, d: int, blur: float, tol: float) -> dict[str, Any]:
    """One forward solve of CMALoss's problem on the benchmark clouds: sweeps and passes."""
    import torch

    from cma_kernels import sinkhorn

    from . import _config as cfg

    x, y = cfg.make_clouds(n, d)
    prob = sinkhorn.prepare(x, y, None, None, None, "auto")
    mu = (x.mean(0) - y.mean(0)).reshape(1, -1)  # the centring of distribution_gap_loss
    with torch.no_grad():
        pot = sinkhorn.solve(
            prob.x, prob.y, prob.a, prob.b, mu, blur=blur, scaling=0.5, reach=None, tol=tol,
            max_iter=sinkhorn.DEFAULT_MAX_ITER, check_every=1, debias=True,
            backend=prob.backend,
        )  # fmt: skip
    return {
        "n": n, "d": d, "blur": blur, "tol": tol, "iterations": pot.iterations,
        "passes": pot.passes, "sweeps": pot.cost_entries / (n * n),
    }  # fmt: skip


def measure_model() -> dict[str, float]:
    """FLOPs of ViT-B-32's towers for one pair, forward and backward (random weights)."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = open_clip.create_model("ViT-B-32")
    model.train()
    out = {}
    inputs = {
        "image": (model.encode_image, torch.randn(1, 3, 224, 224)),
        "text": (model.encode_text, torch.zeros(1, 77, dtype=torch.long)),
    }
    for name, (fn, inp) in inputs.items():
        with FlopCounterMode(display=False) as counter:
            features = fn(inp)
        out[f"{name}_fwd"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            features.sum().backward()
        out[f"{name}_bwd"] = float(counter.get_total_flops())
    return out


def row(n: int, world: int, sharded: bool, sweeps: float, passes: float, iters: float,
        model: dict[str, float], d: int = DIM) -> dict[str, Any]:  # fmt: skip
    """Per-rank figures of one step."""
    entries = n * n
    flops = (sweeps * (2 * d + ELEMENTWISE) + BACKWARD_SWEEPS * (4 * d + ELEMENTWISE)) * entries
    share = (world - 1) / world
    clouds = 2 * n * d * 4  # both clouds, fp32
    if sharded:
        flops /= world
        received = share * (CLOUD_GATHERS * clouds + (sweeps + BACKWARD_SWEEPS) * n * 4)
        collectives = passes + OTHER_COLLECTIVES + 2 * iters * CHECKS_PER_ITERATION
    else:
        received = share * 2 * clouds  # forward all-gather, backward reduce-scatter
        collectives = 4
    model_flops = n / world * sum(model.values())
    return {
        "n": n, "world": world, "mode": "sharded" if sharded else "gathered",
        "model_gflop": model_flops / 1e9, "align_gflop": flops / 1e9,
        "ratio": flops / model_flops, "received_mib": received / 2**20,
        "collectives": collectives,
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| global batch N | GPUs W | N / W | model GFLOP / rank | alignment | "
        "alignment GFLOP / rank | alignment ÷ model | received / rank (MiB) | collectives |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['world']} | {r['n'] // r['world']} | {r['model_gflop']:,.0f} "
            f"| {r['mode']} | {r['align_gflop']:,.0f} | {r['ratio']:.1%} "
            f"| {r['received_mib']:,.1f} | {r['collectives']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweeps", type=float, default=None, help="skip the measurement")
    p.add_argument("--passes", type=float, default=None, help="with --sweeps")
    p.add_argument("--iterations", type=float, default=None, help="with --sweeps")
    p.add_argument("--measure-n", type=int, default=8192, help="N of the measured solve")
    p.add_argument("--blur", type=float, default=0.05)
    p.add_argument("--tol", type=float, default=1e-2, help="CMALoss's default")
    p.add_argument("--measure-model", action="store_true", help="recount ViT-B-32's FLOPs")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    if args.sweeps is None:
        solve = measure_sweeps(args.measure_n, DIM, args.blur, args.tol)
        print(json.dumps(solve), flush=True)
    else:
        solve = {"sweeps": args.sweeps, "passes": args.passes or args.sweeps,
                 "iterations": args.iterations or args.sweeps / 4}  # fmt: skip
    model = measure_model() if args.measure_model else MODEL_FLOPS
    rows = [
        row(n, w, sharded, solve["sweeps"], solve["passes"], solve["iterations"], model)
        for n in BATCHES
        for w in WORLDS
        for sharded in (False, True)
    ]
    pair = sum(model.values())
    source = f"measured at N = {solve['n']}" if "n" in solve else "given"
    text = (
        table(rows)
        + f"\n\nd = {DIM}, fp32 features; one forward solve = {solve['sweeps']:.1f} sweeps, "
        f"{solve['passes']:g} passes, {solve['iterations']:g} iterations at the final ε ({source}, "
        f"blur {args.blur}, tol {args.tol}) + {BACKWARD_SWEEPS} backward sweeps; model "
        f"{pair / 1e9:.1f} GFLOP per pair (fwd + bwd).\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
