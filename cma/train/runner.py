"""``python -m cma.train``: evaluate, fine-tune with TPC-CMA, evaluate again, report.

Outputs (SPEC §6) in ``--output``: ``metrics.json`` (backend, alpha_target, schedule, precision,
torchcompile, before, after, seconds, …), ``report.md`` with the before/after table, PNGs
(gaps, tasks, PCA of both modalities before/after, training curves), ``train_log.csv`` and
``checkpoint_last.pt``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cma.curriculum import Curriculum, CurriculumConfig
from cma.data import EmbeddedWorld, EmbeddingSet, load_dataset
from cma.eval import evaluate_detailed, gap_reduction, protocol
from cma.eval.report import format_table, write_run_report
from cma.gaps import gap_report
from cma.losses import CMALoss
from cma.models import (
    PretrainedUnavailableError,
    base_model,
    create_model,
    default_cache_dir,
    embed_dataset,
    fingerprint,
)
from cma.models.batching import param_groups
from cma.train.batches import EmbeddedBatches, FileBatches, StepPlan, StreamBatches
from cma.train.checkpoint import CheckpointError, find_resume, load_checkpoint
from cma.train.config import TrainConfig, parse_config
from cma.train.distributed import DistInfo, any_rank, barrier, init_distributed
from cma.train.loop import Interrupted, Trainer, TrainingDiverged
from cma.train.plots import plot_training
from cma.train.precision import resolve_precision

PROBE_PAIRS = 512
#: ``torch.compile`` backend for ``--torchcompile``: torch's default (inductor) unless this
#: environment variable names another (the tests use ``aot_eager``: no C++ build on the CPU).
COMPILE_BACKEND_ENV = "CMA_COMPILE_BACKEND"


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: CUDA requested but torch sees no GPU")
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def pick_backend(fused: bool, device: torch.device, say: bool = True) -> str:
    """Triton for ``--fused`` on CUDA; otherwise (or without a GPU) the PyTorch reference."""
    if fused and device.type == "cuda":
        return "triton"
    if fused and say:
        print("--fused: no CUDA device, falling back to the PyTorch reference path", flush=True)
    return "reference"


def load_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, Any, Any]:
    if cfg.model is None:
        if cfg.pretrained is not None:
            raise ValueError("pretrained: give --model too (the default base model has its own)")
        return base_model(cache_dir=cfg.cache_dir, device=device, progress=cfg.progress)
    return create_model(cfg.model, cfg.pretrained, device=device)


class _Head:
    """The first ``n`` images of a caption dataset (keeps ``classnames``/``captions_of``)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.classnames = getattr(dataset, "classnames", None)
        self.templates = getattr(dataset, "templates", None)

    @property
    def config(self) -> dict[str, Any]:
        """Identifies the subset for embedding caches."""
        return {"head_of": fingerprint(self.dataset), "n": self.n}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def captions_of(self, i: int) -> list[str]:
        return self.dataset.captions_of(i)


def _image_size(model: nn.Module) -> int:
    size = getattr(model.visual, "image_size", 64)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def open_datasets(cfg: TrainConfig, model: nn.Module) -> tuple[Any, Any, Any]:
    """(training data, captions for the evaluation decoder, evaluation test set)."""
    if cfg.dataset_type == "embedded":
        size = _image_size(model)
        train = EmbeddedWorld("train", size=cfg.train_size, image_size=size)
        test = EmbeddedWorld("test", size=cfg.eval_test_images, image_size=size)
        return train, _Head(train, cfg.eval_train_images), test
    options: dict[str, Any] = {}
    if cfg.dataset_type == "csv":
        options = {"sep": cfg.csv_separator, "img_key": cfg.csv_img_key,
                   "caption_key": cfg.csv_caption_key}  # fmt: skip
    elif cfg.dataset_type == "coco" and cfg.coco_root:
        options = {"root": cfg.coco_root}
    train = load_dataset(cfg.dataset_type, cfg.train_data, split="train", **options)
    if cfg.val_data is None and cfg.eval:
        raise ValueError("val_data: give --val-data to evaluate on real data (or --no-eval)")
    test = (
        load_dataset(cfg.dataset_type, cfg.val_data, split="val", **options) if cfg.eval else None
    )
    if test is not None and cfg.eval_test_images:
        test = _Head(test, cfg.eval_test_images)
    eval_train = _Head(train, cfg.eval_train_images) if hasattr(train, "__len__") else None
    return train, eval_train, test


def make_batches(
    cfg: TrainConfig, train: Any, model: nn.Module, preprocess: Any, tokenizer: Any, info: DistInfo
) -> tuple[Any, int]:
    """The batch source and the number of steps of the run."""
    if not hasattr(train, "__len__"):  # streaming webdataset
        steps = cfg.steps
        if steps is None:
            raise ValueError("steps: a streaming dataset needs --steps (its length is unknown)")
        return StreamBatches(train, preprocess, tokenizer, cfg.batch_size), steps
    plan = StepPlan(len(train), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    steps = cfg.steps
    if cfg.epochs is not None:
        steps = max(1, math.ceil(cfg.epochs * plan.steps_per_epoch))
    if steps is None:
        raise ValueError("steps: give --steps or --epochs")
    if isinstance(train, EmbeddedWorld):
        return EmbeddedBatches(train, model, tokenizer, plan), steps
    return FileBatches(train, preprocess, tokenizer, plan, cfg.workers), steps


def make_probe(
    test: Any, preprocess: Any, tokenizer: Any, device: torch.device, blur: float,
    input_dtype: torch.dtype | None = None,
):  # fmt: skip
    """Gaps of a fixed set of held-out (image, first caption) pairs, for the training curves
    (images in ``input_dtype`` for a model with low-precision weights; no autocast)."""
    n = min(PROBE_PAIRS, len(test))
    images = torch.stack([preprocess(test[i][0]) for i in range(n)]).to(dtype=input_dtype)
    tokens = tokenizer([test.captions_of(i)[0] for i in range(n)])

    @torch.no_grad()
    def probe(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        x = model.encode_image(images.to(device), normalize=True).float().cpu()
        y = model.encode_text(tokens.to(device), normalize=True).float().cpu()
        model.train(was_training)
        return {f"gap_{k}": v for k, v in gap_report(x, y, blur=blur).items() if k != "raw"}

    return probe


def evaluate_model(
    model: nn.Module, preprocess: Any, tokenizer: Any, eval_train: Any, test: Any,
    cfg: TrainConfig, device: torch.device, tag: str,
) -> tuple[dict[str, float], EmbeddingSet, dict[str, Any]]:  # fmt: skip
    """Embed the evaluation sets with ``model`` and run the whole protocol (SPEC §5).

    Embeddings and results are cached under the cache dir, keyed by the weights, the data and
    the evaluation settings, so an unchanged base model is evaluated once across runs.
    """
    if cfg.progress:
        print(f"\n== evaluating the {tag} model", flush=True)
    kw = {"device": device, "cache_dir": cfg.cache_dir, "cache_key": "auto",
          "progress": cfg.progress}  # fmt: skip
    test_set = embed_dataset(model, preprocess, tokenizer, test, **kw)
    train_set = None
    if eval_train is not None:
        train_set = embed_dataset(model, preprocess, tokenizer, eval_train, **kw)
    captioning = cfg.captioning and train_set is not None
    settings = [fingerprint(model), fingerprint(test), eval_train and fingerprint(eval_train),
                cfg.blur, cfg.seed, captioning, protocol()]  # fmt: skip
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]
    cached = Path(cfg.cache_dir or default_cache_dir()) / "evals" / f"{key}.json"
    if cached.is_file():
        saved = json.loads(cached.read_text())
        return saved["metrics"], test_set, saved["details"]
    result = evaluate_detailed(
        train_set if train_set is not None else test_set, test_set, blur=cfg.blur,
        captioning=captioning, seed=cfg.seed, progress=cfg.progress,
    )  # fmt: skip
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metrics": result.metrics, "details": result.details}, default=str))
    os.replace(tmp, cached)
    return result.metrics, test_set, result.details


def _default_output(cfg: TrainConfig) -> Path:
    return Path(cfg.output) if cfg.output else Path("runs") / cfg.run_name


def compile_backend() -> str:
    """The ``torch.compile`` backend of ``--torchcompile``: see :data:`COMPILE_BACKEND_ENV`."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The whole job; returns the content of metrics.json."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.device, DistInfo())
    info = init_distributed(device.type)
    device = resolve_device(cfg.device, info)
    precision = resolve_precision(cfg.precision, device)
    backend = pick_backend(cfg.fused, device, say=info.is_main)
    output = _default_output(cfg)
    output.mkdir(parents=True, exist_ok=True)
    resume = find_resume(cfg.resume, output)
    state = load_checkpoint(resume) if resume is not None else None

    torch.manual_seed(cfg.seed)
    model, preprocess, tokenizer = load_model(cfg, device)
    train, eval_train, test = open_datasets(cfg, model)
    batches, total_steps = make_batches(cfg, train, model, preprocess, tokenizer, info)

    before = before_set = None
    if cfg.eval and info.is_main:
        if state is not None and "before" in state:
            before = state["before"]
        else:
            before, before_set, _ = evaluate_model(
                model, preprocess, tokenizer, eval_train, test, cfg, device, "base"
            )
    barrier(info)

    loss = CMALoss(
        weight=0.0, lambda_centroid=cfg.lambda_centroid,
        lambda_distribution=cfg.lambda_distribution, blur=cfg.blur, backend=backend,
        rank=info.rank, world_size=info.world_size, shard_alignment=cfg.shard_alignment,
    )  # fmt: skip
    curriculum = Curriculum(
        CurriculumConfig(
            alpha_target=cfg.alpha_target, schedule=cfg.schedule, anchor_frac=cfg.anchor_frac,
            ramp_frac=cfg.ramp_frac, refresh_every=cfg.refresh_every,
        ),
        total_steps,
    )  # fmt: skip
    precision.cast_model(model)  # after the base evaluation, which stays float32
    train_model: nn.Module = model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.torchcompile:
        # as open_clip's --torchcompile: the model only; the loss stays eager (its solver is an
        # opaque custom op with a fake implementation, so it would not be traced anyway)
        train_model = torch.compile(train_model, backend=compile_backend())
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.wd), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    probe = None
    if test is not None:
        probe = make_probe(test, preprocess, tokenizer, device, cfg.blur, precision.input_dtype)
    trainer = Trainer(
        train_model, loss, curriculum, optimizer, base_lr=cfg.lr, warmup=cfg.warmup,
        device=device, output=output, grad_clip_norm=cfg.grad_clip_norm,
        checkpoint_every=cfg.checkpoint_every, probe=probe, probe_every=cfg.probe_every,
        max_bad_steps=cfg.max_bad_steps, is_main=info.is_main, config=cfg.as_dict(),
        extra_state={"before": before} if before is not None else {}, progress=cfg.progress,
        sync_flag=lambda flag: any_rank(flag, info), precision=precision,
    )  # fmt: skip
    if state is not None:
        trainer.load_state_dict(state)
        if info.is_main:
            print(f"resumed from {resume} at step {trainer.curriculum.step}", flush=True)
    trainer.fit(batches.iterate(trainer.curriculum.step, total_steps), total_steps)
    barrier(info)
    model.float()  # low-precision weights (bf16/fp16/pure_*) are evaluated in float32

    metrics: dict[str, Any] = {
        "backend": backend, "alpha_target": cfg.alpha_target, "schedule": cfg.schedule,
        **precision.as_dict(), "torchcompile": cfg.torchcompile,
        **({"torchcompile_backend": compile_backend()} if cfg.torchcompile else {}),
        "model": cfg.model or "cma-tiny (embedded base)", "dataset": cfg.dataset_type,
        "steps": total_steps, "skipped_steps": trainer.skipped_total,
        "train_seconds": round(trainer.seconds, 2), "world_size": info.world_size,
    }  # fmt: skip
    if info.is_main:
        plot_training(trainer.history, output / "training.png",
                      f"TPC-CMA ({cfg.schedule}, α_target={cfg.alpha_target:g})")  # fmt: skip
        if cfg.eval:
            after, after_set, details = evaluate_model(
                model, preprocess, tokenizer, eval_train, test, cfg, device, "aligned"
            )
            metrics.update(before=before, after=after, change=gap_reduction(before, after))
        metrics["seconds"] = round(time.perf_counter() - t_start, 2)
        metrics["config"] = cfg.as_dict()
        if cfg.eval:
            embeddings = {"before": before_set, "after": after_set} if before_set else None
            write_run_report(output, metrics, embeddings=embeddings, details=details,
                             title=f"TPC-CMA run {output.name}")  # fmt: skip
            print("\n" + format_table({"before": before, "after": after}, markdown=False))
        else:
            (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"\nwrote {output}/metrics.json, report.md and plots "
              f"({metrics['seconds']:.0f} s, backend={backend}, precision={precision.name})",
              flush=True)  # fmt: skip
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit status 0, 2 for bad input, 3 when diverged, 130/143 when interrupted."""
    try:
        cfg = parse_config(argv)
        run(cfg)
    except Interrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 143 if "SIGTERM" in str(err) else 130
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
