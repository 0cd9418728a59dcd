"""``python -m cma.study``: the reproduction study of issue #7 (see docs/study.md)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from cma.eval.baselines import BASELINES
from cma.study.aggregate import strongest, summarize
from cma.study.execute import StudyError, execute, pca_sets, prepare_quick_base
from cma.study.parallel import resolve_jobs
from cma.study.plan import (
    DEFAULT_ALPHAS,
    DEFAULT_CONSTANT_ALPHAS,
    DEFAULT_MULTI_SEED_ALPHAS,
    StudyConfig,
)
from cma.study.report import build_summary, write_outputs
from cma.train.checkpoint import CheckpointError
from cma.train.config import DATASET_TYPES
from cma.train.loop import Interrupted

#: Trainer flags passed through unchanged (flag -> TrainConfig field, type).
PASS_THROUGH: dict[str, tuple[str, Any]] = {
    "--model": ("model", str),
    "--pretrained": ("pretrained", str),
    "--train-data": ("train_data", str),
    "--val-data": ("val_data", str),
    "--csv-separator": ("csv_separator", str),
    "--csv-img-key": ("csv_img_key", str),
    "--csv-caption-key": ("csv_caption_key", str),
    "--csv-label-key": ("csv_label_key", str),
    "--coco-root": ("coco_root", str),
    "--zeroshot-data": ("zeroshot_data", str),
    "--classnames": ("classnames", str),
    "--train-size": ("train_size", int),
    "--batch-size": ("batch_size", int),
    "--lr": ("lr", float),
    "--steps": ("steps", int),
    "--eval-train-images": ("eval_train_images", int),
    "--eval-test-images": ("eval_test_images", int),
    "--device": ("device", str),
    "--cache-dir": ("cache_dir", str),
}


def _jobs(value: str) -> int | str:
    """``--jobs``: a count ≥ 1 or ``auto``."""
    if value == "auto":
        return value
    try:
        return resolve_jobs(int(value), None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count ≥ 1 or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cma.study",
        description="Reproduction study: base model, post-hoc baselines, TPC-CMA over α_target "
        "and the constant-schedule ablation, all evaluated with the full suite; writes "
        "study.json, study.md and plots. Rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("study")
    g.add_argument("--output", default="runs/study", help="study folder (runs/<variant>/ inside)")
    g.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHAS),
        help="α_target values of TPC-CMA",
    )
    g.add_argument(
        "--constant-alphas",
        type=float,
        nargs="*",
        default=list(DEFAULT_CONSTANT_ALPHAS),
        help="constant-schedule ablation",
    )
    g.add_argument(
        "--multi-seed-alphas",
        type=float,
        nargs="*",
        default=list(DEFAULT_MULTI_SEED_ALPHAS),
        help="TPC-CMA α values run with --seeds seeds (others: seed 0 only)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds 0..n-1 for the base model and the multi-seed α values",
    )
    g.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        choices=BASELINES,
        help="post-hoc baselines",
    )
    g.add_argument("--baseline-seeds", type=int, default=1)
    g.add_argument(
        "--no-controls",
        dest="controls",
        action="store_false",
        help="skip the α = 0 controls (then no alignment effect, no compromise plot)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke configuration: a briefly pretrained cma-micro base, "
        "256 training images, batch 32, 12 steps at lr 5e-4, 64 evaluation images",
    )
    g.add_argument(
        "--no-pca",
        dest="pca",
        action="store_false",
        help="skip the PCA picture (it re-embeds the test set with 1-2 checkpoints)",
    )
    g.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing; rebuild study.md/json from the finished variants",
    )
    g.add_argument("--quiet", action="store_true", help="only the study's progress lines")
    g.add_argument(
        "--jobs",
        type=_jobs,
        default="auto",
        help="training runs at a time, in worker processes (auto: 2 on a CPU with ≥ 2 cores, "
        "else 1); each gets cores/jobs torch threads",
    )
    t = p.add_argument_group("trainer (passed to every run; default: the trainer's defaults)")
    t.add_argument("--dataset-type", choices=DATASET_TYPES, default=None)
    for flag, (_, typ) in PASS_THROUGH.items():
        t.add_argument(flag, type=typ, default=None)
    t.add_argument("--zeroshot-templates", nargs="+", default=None)
    t.add_argument("--no-captioning", action="store_true")
    t.add_argument("--fused", action="store_true", help="fused Triton kernels (CUDA)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other TrainConfig field, e.g. --set warmup=20 (JSON values)",
    )
    return p


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig the parsed flags describe."""
    train: dict[str, Any] = {}
    for flag, (field, _) in PASS_THROUGH.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            train[field] = value
    if args.dataset_type is not None:
        train["dataset_type"] = args.dataset_type
    if args.zeroshot_templates is not None:
        train["zeroshot_templates"] = list(args.zeroshot_templates)
    if args.no_captioning:
        train["captioning"] = False
    if args.fused:
        train["fused"] = True
    train.update(_parse_set(args.set))
    return StudyConfig(
        output=args.output,
        alphas=tuple(args.alphas),
        constant_alphas=tuple(args.constant_alphas),
        multi_seed_alphas=tuple(args.multi_seed_alphas),
        seeds=args.seeds,
        baselines=tuple(args.baselines),
        baseline_seeds=args.baseline_seeds,
        quick=args.quick,
        train=train,
        progress=not args.quiet,
        pca=args.pca,
        controls=args.controls,
        jobs=args.jobs,
    )


def run_study(study: StudyConfig, *, report_only: bool = False, command: str = "") -> dict:
    """Run/reuse every variant, then write study.json, study.md and the plots; return the summary.

    ``report_only``: train and evaluate nothing new, tabulate the finished variants.
    """
    t0 = time.perf_counter()
    prepare_quick_base(study, create=not report_only)  # --quick only; cached
    jobs = resolve_jobs(study.jobs, study.train_settings().get("device"))
    records, failures, base = execute(study, report_only=report_only, jobs=jobs)
    groups = summarize(records)
    pca = None
    if study.pca and "base" in groups:
        print(
            "\n[study] PCA picture: test embeddings of the base model and the strongest alignment",
            flush=True,
        )
        pca = pca_sets(study, groups, base, strongest(groups))
    wall = time.perf_counter() - t0
    previous = study.root / "study.json"
    elapsed = None
    if report_only and previous.is_file():  # keep the command (and time) that made the results
        try:
            old = json.loads(previous.read_text())
            command = old.get("command") or command
            wall = old.get("timing", {}).get("wall_seconds_this_call") or wall
            t = old.get("claims", {}).get("time", {})
            if "elapsed_seconds" in t:
                elapsed = {"seconds": t["elapsed_seconds"], "basis": t.get("basis", "")}
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    summary = build_summary(
        study,
        records,
        command=command,
        wall_seconds=wall,
        failures=failures,
        jobs=jobs,
        elapsed=elapsed,
    )
    paths = write_outputs(study.root, summary, pca)
    print(f"\n[study] wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 done, 1 some variant failed, 2 bad input, 130/143 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        study = config_from_args(args)
        command = shlex.join(["python", "-m", "cma.study", *argv])
        summary = run_study(study, report_only=args.report_only, command=command)
    except Interrupted as err:
        print(f"\n{err}\nstudy interrupted: rerun the same command to resume.", file=sys.stderr)
        return 143 if "SIGTERM" in str(err) else 130
    except KeyboardInterrupt:
        print("\nstudy interrupted: rerun the same command to resume.", file=sys.stderr)
        return 130
    except (StudyError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary["failures"] else 0
