"""Regenerate the shipped base model: ``python -m cma.models.release``.

Pretrains the embedded-world base model (:class:`~cma.models.pretraining.PretrainConfig`
defaults) while measuring its *convergence curve* — zero-shot top-1 and retrieval R@1 (both
ways) on the world's ``val`` split every ``--eval-every`` steps — then writes

* ``cma/models/weights/cma-tiny-base.pt``: the weights in float16 (``{"model": state_dict,
  "arch", "pretrain_config", "pretrain_key"}``; loaded into float32 by
  :func:`cma.models.base_model`, offline);
* ``cma/models/weights/cma-tiny-base.json``: the file's SHA-256, the config, the curve and the
  convergence verdict;
* ``docs/base_curve.png``: the curve.

**Convergence criterion** (issue #14: "zero-shot top-1 and R@1 change < 1 point over the last
20 % of pretraining"): every curve metric changes by less than ``tol`` = 1 point between the
first curve point of the last ``tail`` = 20 % of pretraining (step 0.8·S) and the last (step S).
The spread (max − min) and the least-squares trend over that tail are reported beside it. The
curve is measured on ``val`` so that the test split that every report uses plays no part in
choosing the model. ``--report-only`` recomputes the verdict and redraws the PNG from the json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cma.data.world import EmbeddedWorld
from cma.eval.retrieval import retrieval_recall
from cma.eval.zeroshot import zeroshot_accuracy
from cma.models.embed import embed_dataset
from cma.models.factory import create_model
from cma.models.pretraining import (
    PACKAGED_BASE,
    PACKAGED_BASE_INFO,
    PretrainConfig,
    file_sha256,
    pretrain,
)

__all__ = [
    "CURVE_KEYS",
    "converged",
    "curve_point",
    "main",
    "plot_curve",
    "release",
    "report_only",
]

#: Metrics of the convergence curve (fractions in [0, 1]).
CURVE_KEYS: tuple[str, ...] = ("zeroshot_top1", "retrieval_i2t_r1", "retrieval_t2i_r1")
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "base_curve.png"
CRITERION = (
    "every curve metric (zero-shot top-1, R@1 i2t, R@1 t2i on the val split) changes by < 1 "
    "point between step 0.8·S and step S (the last 20 % of pretraining)"
)


@torch.no_grad()
def curve_point(model: nn.Module, world: EmbeddedWorld, preprocess: Any, tokenizer: Any) -> dict:
    """Zero-shot top-1 and R@1 both ways of ``model`` on ``world`` (restores its train mode)."""
    es = embed_dataset(model, preprocess, tokenizer, world, progress=False)
    rec = retrieval_recall(es.image, es.text, es.text_to_image, ks=(1,))
    acc = zeroshot_accuracy(es.image, es.class_text, es.labels, topk=(1,))
    return {
        "zeroshot_top1": acc[1],
        "retrieval_i2t_r1": rec["i2t_r1"],
        "retrieval_t2i_r1": rec["t2i_r1"],
    }


def converged(
    curve: Sequence[Mapping[str, float]],
    total_steps: int,
    *,
    tail: float = 0.2,
    tol: float = 0.01,
    keys: Sequence[str] = CURVE_KEYS,
) -> dict[str, Any]:
    """The criterion of the module doc on ``curve`` (points ``{"step", key: value}``).

    ``change``: per key, the value at the last point minus the value at the first point of the
    tail (steps ≥ (1 − tail)·S) — the criterion, ``holds`` when every ``|change| < tol`` (False
    with fewer than 2 tail points). Reported beside it, to judge the noise of single points:
    ``range`` (max − min over the tail points) and ``trend`` (least-squares slope over the tail
    times its length, tail·S steps); None where there are too few points.
    """
    start = (1.0 - tail) * total_steps
    pts = sorted((p for p in curve if p["step"] >= start), key=lambda p: p["step"])
    change: dict[str, float | None] = {}
    spread: dict[str, float | None] = {}
    trend: dict[str, float | None] = {}
    for k in keys:
        ys = [float(p[k]) for p in pts]
        xs = [float(p["step"]) for p in pts]
        change[k] = ys[-1] - ys[0] if len(ys) >= 2 else None
        spread[k] = max(ys) - min(ys) if ys else None
        if len(ys) >= 2:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
            trend[k] = slope * tail * total_steps
        else:
            trend[k] = None
    ok = len(pts) >= 2 and all(c is not None and abs(c) < tol for c in change.values())
    return {
        "holds": ok,
        "tail_from": start,
        "points": len(pts),
        "tol": tol,
        "change": change,
        "range": spread,
        "trend": trend,
    }


def plot_curve(
    curve: Sequence[Mapping[str, float]],
    path: str | os.PathLike,
    total_steps: int,
    tail: float = 0.2,
    title: str = "",
) -> Path:
    """Curve metrics (left axis, %) and the training loss (right axis) over pretraining steps."""
    from cma.eval.report import plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    steps = [p["step"] for p in curve]
    for k, color in zip(CURVE_KEYS, ("tab:blue", "tab:green", "tab:orange"), strict=True):
        ax.plot(steps, [100 * p[k] for p in curve], marker="o", ms=3, color=color, label=k)
    ax.axvspan((1 - tail) * total_steps, total_steps, color="0.9", label=f"last {tail:.0%}")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("val metric (%)")
    ax.grid(alpha=0.3)
    if any("loss" in p for p in curve):
        ax2 = ax.twinx()
        ax2.plot(
            steps,
            [p.get("loss", float("nan")) for p in curve],
            color="0.4",
            ls="--",
            lw=1,
            label="CLIP loss (mean of the last 20 steps)",
        )
        ax2.set_ylabel("CLIP loss")
        ax2.legend(fontsize=7, loc="center right")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "embedded base model: convergence on the val split", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save_fp16(path: Path, model: nn.Module, **extra: Any) -> None:
    """``{"model": float16 state dict, **extra}`` written atomically."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": state, **extra}, tmp)
        os.chmod(tmp, 0o644)  # package data: readable by all (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def release(
    config: PretrainConfig | None = None,
    *,
    eval_every: int = 100,
    weights: str | os.PathLike = PACKAGED_BASE,
    info: str | os.PathLike = PACKAGED_BASE_INFO,
    png: str | os.PathLike | None = DOCS_PNG,
    threads: int | None = None,
    progress: bool = True,
    curve_images: int = 1000,
    command: str = "python -m cma.models.release",
) -> dict[str, Any]:
    """Pretrain with the curve, write the weights, their info json and the PNG; return the info.

    The curve is measured on the first ``curve_images`` images of the world's val split.
    """
    config = config or PretrainConfig()
    if eval_every < 1:
        raise ValueError(f"eval_every: must be ≥ 1, got {eval_every}")
    _, preprocess, tokenizer = create_model(config.arch)
    world = EmbeddedWorld(
        "val", size=curve_images, image_size=config.image_size, seed=config.world_seed
    )
    curve: list[dict[str, float]] = []
    losses: list[float] = []
    t0 = time.perf_counter()

    def callback(step: int, model: nn.Module, loss: float) -> None:
        losses.append(loss)
        done = step + 1
        if done % eval_every and done != config.steps and step != 0:
            return
        point = {"step": done, **curve_point(model, world, preprocess, tokenizer)}
        point["loss"] = sum(losses[-20:]) / len(losses[-20:])
        point["seconds"] = round(time.perf_counter() - t0, 1)
        curve.append(point)
        model.train()
        if progress:
            shown = ", ".join(f"{k} {100 * point[k]:.1f}" for k in CURVE_KEYS)
            print(f"  step {done}: {shown}, loss {point['loss']:.3f}", flush=True)

    model, stats = pretrain(config, progress=progress, threads=threads, callback=callback)
    weights, info = Path(weights), Path(info)
    _save_fp16(
        weights,
        model,
        arch=config.arch,
        pretrain_config=dataclasses.asdict(config),
        pretrain_key=config.key(),
    )
    verdict = converged(curve, config.steps)
    payload = {
        "file": os.path.relpath(weights.resolve(), info.resolve().parent),
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "dtype": "float16",
        "arch": config.arch,
        "pretrain_config": dataclasses.asdict(config),
        "pretrain_key": config.key(),
        "seconds": round(stats["seconds"], 1),
        "threads": threads or torch.get_num_threads(),
        "logit_scale": stats["logit_scale"],
        "criterion": CRITERION,
        "converged": verdict,
        "curve": curve,
        "command": command,
    }
    info.write_text(json.dumps(payload, indent=2) + "\n")
    if png is not None:
        plot_curve(curve, png, config.steps, title=_title(payload))
    return payload


def report_only(
    info: str | os.PathLike = PACKAGED_BASE_INFO, png: str | os.PathLike | None = DOCS_PNG
) -> dict[str, Any]:
    """Recompute the verdict of an info json from its stored curve and redraw the PNG."""
    info = Path(info)
    payload = json.loads(info.read_text())
    steps = int(payload["pretrain_config"]["steps"])
    payload["criterion"] = CRITERION
    payload["converged"] = converged(payload["curve"], steps)
    info.write_text(json.dumps(payload, indent=2) + "\n")
    if png is not None:
        plot_curve(payload["curve"], png, steps, title=_title(payload))
    return payload


def _title(payload: Mapping[str, Any]) -> str:
    c = payload["pretrain_config"]
    verdict = payload["converged"]
    changes = ", ".join(
        f"{k.replace('retrieval_', 'R@1 ').replace('_r1', '')} {_points(v)}"
        for k, v in verdict["change"].items()
    )
    return (
        f"embedded base ({c['arch']}, {c['steps']} steps, batch {c['batch_size']}), val split\n"
        f"last 20 %: {changes} points → converged: {verdict['holds']}"
    )


def _points(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    d = PretrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m cma.models.release",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=d.steps, help="pretraining steps")
    p.add_argument("--eval-every", type=int, default=100, help="steps between curve points")
    p.add_argument("--weights", default=str(PACKAGED_BASE), help="output weights file")
    p.add_argument("--info", default=str(PACKAGED_BASE_INFO), help="output info json")
    p.add_argument("--png", default=str(DOCS_PNG), help="output curve PNG ('' for none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: recompute the verdict of --info from its curve, redraw --png",
    )
    args = p.parse_args(argv)
    try:
        if args.report_only:
            info = report_only(args.info, args.png or None)
            print(f"{args.info}: converged: {info['converged']['holds']}")
            return 0
        info = release(
            dataclasses.replace(d, steps=args.steps),
            eval_every=args.eval_every,
            weights=args.weights,
            info=args.info,
            png=args.png or None,
            threads=args.threads,
            progress=not args.quiet,
            command=shlex.join(["python", "-m", "cma.models.release", *(argv or sys.argv[1:])]),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = info["converged"]
    print(
        f"wrote {args.weights} ({info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:12]}…), "
        f"{args.info}; converged: {c['holds']} (last 20 %: "
        + ", ".join(f"{k} {_points(v)} pts" for k, v in c["change"].items())
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
