"""Running the study: each variant once, finished ones reused, interrupted runs resumed.

Layout of ``<output>``::

    runs/<variant>/metrics.json   one per variant (training runs: the trainer's outputs;
                                  base/baselines: METRICS at top level, as ``python -m cma.eval``)
    study.json, study.md, *.png   written by :mod:`cma.study.report`

A variant is done when its ``metrics.json`` exists and was made with the same settings (else a
:class:`StudyError` says so). A training run without one is started with ``resume="auto"``, so an
interrupted run continues from its ``checkpoint_last.pt``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cma.eval import baselines as bl
from cma.eval.report import write_run_report
from cma.eval.suite import evaluate_detailed
from cma.models.pretraining import PretrainConfig
from cma.study.parallel import train_parallel
from cma.study.plan import (
    EVAL_KEYS,
    StudyConfig,
    Variant,
    build_plan,
    train_config,
)
from cma.train import runner as train_runner
from cma.train.checkpoint import LAST, load_checkpoint
from cma.train.config import TrainConfig, config_diff
from cma.train.distributed import DistInfo
from cma.train.loop import TrainingDiverged

#: The ``--quick`` base model: cma-micro briefly pretrained on a small embedded world.
QUICK_PRETRAIN = PretrainConfig(
    arch="cma-micro",
    world_size=512,
    image_size=32,
    steps=60,
    batch_size=64,
    warmup_steps=6,
    lr=2e-3,
)


class StudyError(ValueError):
    """The output folder holds results the study cannot reuse (different settings, bad files)."""


def _metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """Numeric entries of a METRICS dict (JSON ``null`` back to NaN)."""
    out = {}
    for k, v in d.items():
        if v is None:
            out[k] = math.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StudyError(f"{path}: unreadable ({err}); delete it to redo that variant") from err


def _check(
    path: Path,
    saved: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    keys: Sequence[str] | None = None,
) -> None:
    if saved is None:
        raise StudyError(f"{path}: holds no 'config'; delete it or use another --output")
    diff = config_diff(saved, expected, keys)
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
        raise StudyError(
            f"{path} was made with other settings ({shown}); use another --output "
            f"or delete {path.parent} to redo that variant"
        )


def _record(
    v: Variant,
    metrics: Mapping[str, Any],
    reference: Mapping[str, Any],
    seconds: float,
    reused: bool,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "variant": v.name,
        "group": v.group,
        "kind": v.kind,
        "seed": v.seed,
        "alpha": v.alpha,
        "label": v.label,
        "metrics": _metrics(metrics),
        "reference": _metrics(reference),
        "seconds": float(seconds),
        "reused": reused,
        **extra,
    }


class Progress:
    """``[i/N] variant … elapsed, ETA`` lines; the ETA uses this session's measured durations."""

    def __init__(
        self, plan: Sequence[Variant], say: Callable[[str], None] = print, workers: int = 1
    ) -> None:
        self.plan, self.say, self.t0 = list(plan), say, time.perf_counter()
        self.workers = workers  # training runs at a time
        self.spent: dict[bool, list[float]] = {True: [], False: []}  # trains? -> seconds

    @staticmethod
    def clock(s: float) -> str:
        s = round(s)
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

    def eta(self, remaining: Sequence[Variant]) -> str:
        train, ev = self.spent[True], self.spent[False]
        if not train and not ev:
            return "ETA: after the first variant"
        t = sum(train) / len(train) if train else None
        e = sum(ev) / len(ev) if ev else (0.5 * t if t is not None else None)
        if t is None and any(v.trains for v in remaining):
            return "ETA: after the first training run"
        trains = sum(t or 0.0 for v in remaining if v.trains) / self.workers
        total = trains + sum(e or 0.0 for v in remaining if not v.trains)
        return f"ETA ~{self.clock(total)}"

    def start(self, i: int, v: Variant, what: str) -> None:
        elapsed = self.clock(time.perf_counter() - self.t0)
        self.say(
            f"\n[study {i + 1}/{len(self.plan)}] {v.name} ({v.label}, seed {v.seed}): "
            f"{what} | elapsed {elapsed} | {self.eta(self.plan[i:])}"
        )

    def done(self, v: Variant, seconds: float) -> None:
        self.spent[v.trains].append(seconds)


class BaseEmbeddings:
    """The base model and its (train, test) embeddings, loaded once, on first use (and those
    of the ``--zeroshot-data`` folder, when one is given)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self._sets: tuple[Any, Any] | None = None
        self.zeroshot: Any = None

    def device(self) -> torch.device:
        return train_runner.resolve_device(self.cfg.device, DistInfo())

    def sets(self) -> tuple[Any, Any]:
        """(train set or None, test set), as the trainer's ``before`` evaluation has them."""
        if self._sets is None:
            cfg, device = self.cfg, self.device()
            torch.manual_seed(cfg.seed)
            model, preprocess, tokenizer = train_runner.load_model(cfg, device)
            _, eval_train, test = train_runner.open_datasets(cfg, model)
            train_set = None
            if eval_train is not None:
                train_set = embed(model, preprocess, tokenizer, eval_train, cfg, device)
            zeroshot = train_runner.open_zeroshot(cfg)
            if zeroshot is not None:
                self.zeroshot = embed(model, preprocess, tokenizer, zeroshot, cfg, device)
            self._sets = (train_set, embed(model, preprocess, tokenizer, test, cfg, device))
        return self._sets


def embed(
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    dataset: Any,
    cfg: TrainConfig,
    device: torch.device,
) -> Any:
    """``embed_dataset`` with the trainer's cache settings (so cached embeddings are shared)."""
    from cma.models import embed_dataset

    return embed_dataset(
        model,
        preprocess,
        tokenizer,
        dataset,
        device=device,
        cache_dir=cfg.cache_dir,
        cache_key="auto",
        progress=cfg.progress,
    )


def evaluate_sets(
    train_set: Any, test_set: Any, cfg: TrainConfig, seed: int, zeroshot: Any = None
) -> Any:
    """The trainer's evaluation call (``evaluate_detailed``) for a pair of EmbeddingSets (and
    the zero-shot set, when there is one)."""
    return evaluate_detailed(
        train_set if train_set is not None else test_set,
        test_set,
        blur=cfg.blur,
        captioning=cfg.captioning and train_set is not None,
        seed=seed,
        progress=cfg.progress,
        zeroshot=zeroshot,
    )


def run_training(study: StudyConfig, v: Variant) -> dict[str, Any]:
    """Train variant ``v`` (resuming a checkpoint), or reuse its finished ``metrics.json``."""
    cfg = train_config(study, v)
    out = study.run_dir(v)
    expected = cfg.as_dict()
    path = out / "metrics.json"
    reused = path.is_file()
    if reused:
        data = _read_json(path)
        _check(path, data.get("config"), expected)
    else:
        if (out / LAST).is_file():
            _check(out / LAST, load_checkpoint(out / LAST).get("config"), expected)
        data = train_runner.run(cfg)
    if "before" not in data or "after" not in data:
        raise StudyError(f"{path}: has no before/after evaluation (was it run with --no-eval?)")
    return _record(
        v,
        data["after"],
        data["before"],
        float(data.get("seconds") or 0.0),
        reused,
        train_seconds=data.get("train_seconds"),
        steps=data.get("steps"),
        backend=data.get("backend"),
    )


def _write_eval(
    study: StudyConfig,
    v: Variant,
    metrics: Mapping[str, float],
    cfg: TrainConfig,
    seconds: float,
    source: str,
    details: Any,
) -> None:
    """``runs/<variant>/metrics.json`` (+ report.md and bar plots) for an evaluated variant."""
    payload = {
        "variant": v.name,
        "model": v.label,
        "kind": v.kind,
        "seed": v.seed,
        "source": source,
        **metrics,
        "seconds": round(seconds, 2),
        "config": cfg.as_dict(),
    }
    write_run_report(study.run_dir(v), payload, details=details, title=f"Study variant {v.name}")


def run_evaluation(
    study: StudyConfig,
    v: Variant,
    base: BaseEmbeddings,
    base_records: Mapping[int, Mapping[str, Any]],
    run_records: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The base model (seed = evaluation seed) or a post-hoc baseline, evaluated or reused.

    The base model's metrics for seed s are the ``before`` of a finished run with seed s when
    there is one (same model, same data, same evaluation seed), else evaluated here.
    """
    cfg = train_config(study, v)
    path = study.run_dir(v) / "metrics.json"
    expected = cfg.as_dict()
    if v.kind == "baseline" and v.seed not in base_records:
        raise StudyError(f"{v.name}: the base model with seed {v.seed} is not evaluated")
    reference = base_records[v.seed]["metrics"] if v.kind == "baseline" else None
    if path.is_file():
        data = _read_json(path)
        _check(path, data.get("config"), expected, EVAL_KEYS)
        m = _metrics(data)
        return _record(
            v,
            m,
            reference if reference is not None else m,
            float(data.get("seconds") or 0.0),
            True,
            source=data.get("source"),
        )
    t0 = time.perf_counter()
    details: Any = None
    if v.kind == "base":
        donor = next((r for r in run_records if r["seed"] == v.seed), None)
        if donor is not None:
            metrics, source = dict(donor["reference"]), f"before of runs/{donor['variant']}"
        else:
            train_set, test_set = base.sets()
            result = evaluate_sets(train_set, test_set, cfg, v.seed, base.zeroshot)
            metrics, source, details = result.metrics, "evaluated", result.details
    else:
        train_set, test_set = base.sets()
        reference_set = train_set if train_set is not None else test_set
        tr, te = bl.apply(str(v.baseline), reference_set, test_set, seed=v.seed)
        zs = base.zeroshot  # the zero-shot set moves with the test set
        if zs is not None:
            zs = bl.apply(str(v.baseline), reference_set, zs, seed=v.seed)[1]
        result = evaluate_sets(tr if train_set is not None else None, te, cfg, v.seed, zs)
        metrics, source, details = result.metrics, f"post-hoc {v.baseline}", result.details
    seconds = time.perf_counter() - t0
    _write_eval(study, v, metrics, cfg, seconds, source, details)
    m = _metrics(metrics)
    return _record(v, m, reference if reference is not None else m, seconds, False, source=source)


def pca_sets(
    study: StudyConfig,
    groups: Mapping[str, Mapping[str, Any]],
    base: BaseEmbeddings,
    strongest: str | None,
) -> dict[str, Any]:
    """Test EmbeddingSets for the PCA picture: base, centring, TPC-CMA α=0.5 and the strongest.

    Trained models are re-embedded from their ``checkpoint_last.pt`` (the runs keep no
    embeddings); the embedding cache makes this free on a second call.
    """
    from cma.models import create_model

    train_set, test_set = base.sets()
    sets: dict[str, Any] = {"base": test_set}
    if "centering" in groups:
        ref = train_set if train_set is not None else test_set
        sets["centering (post-hoc)"] = bl.apply("centering", ref, test_set)[1]
    names = [n for n in ("tpc-a0.5", strongest) if n is not None and n in groups]
    cfg = base.cfg
    arch = cfg.model or PretrainConfig().arch
    device = base.device()
    for name in dict.fromkeys(names):
        g = groups[name]
        ckpt = study.root / "runs" / f"{name}-s{g['seeds'][0]}" / LAST
        if not ckpt.is_file():
            continue
        model, preprocess, tokenizer = create_model(arch, str(ckpt), device=device)
        _, _, test = train_runner.open_datasets(cfg, model)
        sets[str(g["label"])] = embed(model, preprocess, tokenizer, test, cfg, device)
    return sets


def prepare_quick_base(study: StudyConfig, *, create: bool = True) -> None:
    """``--quick`` without ``--pretrained``: pretrain (once, cached) a tiny cma-micro base model.

    A random-weights base would make the comparisons meaningless, and each seed would get a
    different one; this gives every variant the same, somewhat trained, base. ``create=False``
    only fills in its path.
    """
    from cma.models.pretraining import base_model, base_model_path

    settings = study.train_settings()
    if not study.quick or settings.get("pretrained") or settings.get("model") != "cma-micro":
        return
    pc = QUICK_PRETRAIN
    cache = settings.get("cache_dir")
    if create:
        base_model(cache_dir=cache, config=pc, progress=study.progress)
    study.train["pretrained"] = str(base_model_path(pc, cache))
    study.train.setdefault("model", "cma-micro")


def execute(
    study: StudyConfig,
    *,
    report_only: bool = False,
    say: Callable[[str], None] = print,
    jobs: int = 1,
) -> tuple[list[dict[str, Any]], list[str], BaseEmbeddings]:
    """Run (or reuse) every variant of the plan; returns ``(records, failures, base)``.

    ``report_only``: run nothing, collect the finished variants. A training run that diverges
    is reported in ``failures`` and the study goes on; an interruption propagates (the trainer's
    ``Interrupted``), leaving a checkpoint to resume from. ``jobs`` > 1 trains that many runs at
    a time in worker processes (:mod:`cma.study.parallel`); the records keep the plan's order.
    """
    plan = build_plan(study)
    progress = Progress(plan, say, workers=jobs)
    base = BaseEmbeddings(train_config(study, Variant("base", 0)))
    records: list[dict[str, Any]] = []
    base_records: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    trained: dict[str, dict[str, Any]] = {}
    diverged: set[str] = set()
    if jobs > 1 and not report_only:
        todo = [v for v in plan if v.trains and not (study.run_dir(v) / "metrics.json").is_file()]
        started: dict[str, float] = {}

        def on_start(v: Variant) -> None:
            progress.start(plan.index(v), v, "training")
            started[v.name] = time.perf_counter()

        def on_done(v: Variant, rec: dict[str, Any] | None, error: str | None) -> None:
            seconds = time.perf_counter() - started[v.name]
            if rec is None:
                failures.append(f"{v.name}: {error}")
                diverged.add(v.name)
                say(f"  {v.name} diverged: {error}")
                return
            progress.done(v, seconds)
            say(f"  {v.name} done in {progress.clock(seconds)}")
            trained[v.name] = rec

        train_parallel(study, todo, jobs, on_start, on_done)
    for i, v in enumerate(plan):
        if v.name in diverged:
            continue
        if v.name in trained:
            records.append(trained[v.name])
            continue
        done = (study.run_dir(v) / "metrics.json").is_file()
        if report_only and not done:
            say(f"[study {i + 1}/{len(plan)}] {v.name}: not done, left out")
            continue
        if v.kind == "baseline" and v.seed not in base_records:
            failures.append(f"{v.name}: no base model evaluation with seed {v.seed}")
            continue
        progress.start(i, v, "reusing" if done else ("training" if v.trains else "evaluating"))
        t0 = time.perf_counter()
        try:
            if v.trains:
                rec = run_training(study, v)
            else:
                runs = [r for r in records if r["kind"] in ("tpc", "constant")]
                rec = run_evaluation(study, v, base, base_records, runs)
        except TrainingDiverged as err:
            failures.append(f"{v.name}: {err}")
            say(f"  {v.name} diverged: {err}")
            continue
        if not rec["reused"] and not str(rec.get("source", "")).startswith("before of"):
            progress.done(v, time.perf_counter() - t0)  # copies of a run's `before` cost nothing
        if v.kind == "base":
            base_records[v.seed] = rec
        records.append(rec)
    say(
        f"\n[study] {len(records)}/{len(plan)} variants done in "
        f"{progress.clock(time.perf_counter() - progress.t0)}"
    )
    attach_controls(records)
    return records, failures, base


def attach_controls(records: Sequence[dict[str, Any]]) -> None:
    """Give every training record the METRICS of its α = 0 control (same schedule and seed)
    as ``record["control"]``, when that control is among the records."""
    controls = {
        (r["kind"], r["seed"]): r["metrics"]
        for r in records
        if r["kind"] in ("tpc", "constant") and r.get("alpha") == 0
    }
    for r in records:
        found = controls.get((r["kind"], r["seed"]))
        if found is not None:
            r["control"] = found
