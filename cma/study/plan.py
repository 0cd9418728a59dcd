"""What the study runs: the variants, their trainer configurations, and the paper's figures.

A :class:`Variant` is one (method, α_target, seed) point. Training variants (``tpc``,
``constant``) are one ``cma.train`` run each — α_target = 0 is the schedule's α = 0 *control*
(the same run with the alignment weight held at 0, SPEC §4); ``base`` and the post-hoc
``baseline`` variants are evaluations of the base model's embeddings (see
:mod:`cma.study.execute`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cma.eval.baselines import BASELINES
from cma.train.config import TrainConfig

#: α 0.01 (a near-control before issue #14) gave way to the real α = 0 control.
DEFAULT_ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
DEFAULT_CONSTANT_ALPHAS: tuple[float, ...] = (0.05, 0.5)
DEFAULT_MULTI_SEED_ALPHAS: tuple[float, ...] = (0.05, 0.5)
KINDS: tuple[str, ...] = ("base", "baseline", "tpc", "constant")

#: ``--quick``: a tiny configuration for smoke tests (a briefly pretrained cma-micro base).
QUICK_TRAIN: dict[str, Any] = {
    "model": "cma-micro",
    "train_size": 256,
    "batch_size": 32,
    "steps": 12,
    "lr": 5e-4,
    "warmup": 2,
    "eval_train_images": 64,
    "eval_test_images": 64,
    "probe_every": 4,
    "checkpoint_every": 50,
}

#: Trainer fields an evaluation of the base model depends on (base and baseline variants).
EVAL_KEYS: tuple[str, ...] = (
    "model",
    "pretrained",
    "dataset_type",
    "train_data",
    "val_data",
    "csv_separator",
    "csv_img_key",
    "csv_caption_key",
    "csv_label_key",
    "coco_root",
    "zeroshot_data",
    "classnames",
    "zeroshot_templates",
    "train_size",
    "blur",
    "eval_train_images",
    "eval_test_images",
    "captioning",
    "seed",
)

#: The paper's figures (arXiv 2604.00279) that study.md compares against.
PAPER: dict[str, float] = {
    "gap_reduction_pct@0.05": 66.6,
    "zeroshot_drop_pct@0.05": 4.84,
    "gap_reduction_pct@0.5": 82.3,
    "ari_base": 0.318,
    "ari@0.5": 0.516,
    "cider_gain_pct@0.5": 57.1,
    "r2_distribution": 0.986,
    "r2_raw": 0.691,
}


def same_alpha(a: float, b: float) -> bool:
    """α values compare with a relative tolerance (they come from the command line)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def alpha_in(a: float, values: Iterable[float]) -> bool:
    return any(same_alpha(a, v) for v in values)


@dataclass(frozen=True)
class Variant:
    """One point of the study: ``kind`` in :data:`KINDS`, a seed, and α or a baseline name."""

    kind: str
    seed: int = 0
    alpha: float | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.trains and self.alpha is None:
            raise ValueError(f"alpha: a {self.kind} variant needs α_target")
        if self.kind == "baseline" and self.baseline not in BASELINES:
            raise ValueError(f"baseline: expected one of {BASELINES}, got {self.baseline!r}")

    @property
    def trains(self) -> bool:
        """Whether this variant is a training run."""
        return self.kind in ("tpc", "constant")

    @property
    def is_control(self) -> bool:
        """The α = 0 control of its schedule."""
        return self.trains and self.alpha == 0

    @property
    def group(self) -> str:
        """The variant without its seed (what is averaged over seeds)."""
        if self.kind == "base":
            return "base"
        if self.kind == "baseline":
            return str(self.baseline)
        if self.is_control:
            return f"{self.kind}-control"
        return f"{self.kind}-a{self.alpha:g}"

    @property
    def name(self) -> str:
        """Folder name under ``<output>/runs`` (equals the trainer's ``run_name``)."""
        return f"{self.group}-s{self.seed}"

    @property
    def label(self) -> str:
        """Human-readable name for tables and plots."""
        if self.is_control:
            return "α=0 control" + (" (constant schedule)" if self.kind == "constant" else "")
        if self.kind == "tpc":
            return f"TPC-CMA α={self.alpha:g}"
        if self.kind == "constant":
            return f"constant α={self.alpha:g}"
        return self.group


@dataclass
class StudyConfig:
    """Settings of one study (saved in study.json)."""

    output: str = "runs/study"
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    constant_alphas: tuple[float, ...] = DEFAULT_CONSTANT_ALPHAS
    multi_seed_alphas: tuple[float, ...] = DEFAULT_MULTI_SEED_ALPHAS
    seeds: int = 3  # seeds of the base model and of the multi-seed α values
    baselines: tuple[str, ...] = BASELINES
    baseline_seeds: int = 1
    quick: bool = False
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    progress: bool = True
    pca: bool = True
    controls: bool = True  # the α = 0 control of each schedule and seed that has runs
    jobs: int | str = 1  # training runs at a time ("auto": cma.study.parallel.resolve_jobs)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError("seeds: must be ≥ 1")
        if not 1 <= self.baseline_seeds <= self.seeds:
            raise ValueError("baseline_seeds: must be between 1 and --seeds")
        for a in (*self.alphas, *self.constant_alphas):
            if not a > 0:
                raise ValueError(f"alphas: α_target must be > 0, got {a}")
        for b in self.baselines:
            if b not in BASELINES:
                raise ValueError(f"baselines: expected names from {BASELINES}, got {b!r}")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(f"train: unknown TrainConfig fields {unknown}")
        fixed = sorted(
            {"alpha_target", "schedule", "seed", "output", "resume", "eval"} & set(self.train)
        )
        if fixed:
            raise ValueError(f"train: {fixed} are set by the study for each variant")

    @property
    def root(self) -> Path:
        return Path(self.output)

    def run_dir(self, v: Variant) -> Path:
        return self.root / "runs" / v.name

    def train_settings(self) -> dict[str, Any]:
        """TrainConfig overrides shared by all variants (``--quick`` defaults, then flags)."""
        return {**(QUICK_TRAIN if self.quick else {}), **self.train}


def build_plan(cfg: StudyConfig) -> list[Variant]:
    """All variants, in running order: training runs (seed 0 first), then base and baselines.

    Each seed's runs of a schedule are preceded by that schedule's α = 0 control with the same
    seed (``cfg.controls``), so every run finds its control and reports against it. The base
    model comes after the runs because each run's ``before`` evaluation *is* the base model
    evaluated with that seed; the study reuses it instead of evaluating again.
    """
    plan: list[Variant] = []
    for seed in range(cfg.seeds):
        tpc = [a for a in cfg.alphas if seed == 0 or alpha_in(a, cfg.multi_seed_alphas)]
        if tpc and cfg.controls:
            plan.append(Variant("tpc", seed, alpha=0.0))
        plan += [Variant("tpc", seed, alpha=float(a)) for a in tpc]
        if seed == 0 and cfg.constant_alphas:
            if cfg.controls:
                plan.append(Variant("constant", 0, alpha=0.0))
            plan += [Variant("constant", 0, alpha=float(a)) for a in cfg.constant_alphas]
    plan += [Variant("base", s) for s in range(cfg.seeds)]
    plan += [
        Variant("baseline", s, baseline=b) for b in cfg.baselines for s in range(cfg.baseline_seeds)
    ]
    return list(dict.fromkeys(plan))  # drop duplicates (e.g. repeated α), keep order


def train_config(cfg: StudyConfig, v: Variant) -> TrainConfig:
    """The trainer configuration of variant ``v`` (base/baselines: the one they evaluate with)."""
    kw = cfg.train_settings()
    kw.update(
        seed=v.seed, output=str(cfg.run_dir(v)), resume="auto", eval=True, progress=cfg.progress
    )
    if v.trains:
        kw.update(alpha_target=float(v.alpha or 0.0), schedule=v.kind)
    return TrainConfig(**kw)
