"""``python -m cma.train`` options: one dataclass, flags in open_clip's spelling."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cma.curriculum import SCHEDULES
from cma.train.precision import PRECISIONS

DATASET_TYPES = ("embedded", "csv", "coco", "imagefolder", "webdataset")
#: Default learning rates: the small embedded-world base model moves at 1e-3 (at 1e-4 the
#: gap had fallen 39 % after 300 steps, at 1e-3 50 %, zero-shot unharmed); a real pretrained
#: CLIP (``--model``) is fine-tuned at the usual 1e-5.
EMBEDDED_LR = 1e-3
MODEL_LR = 1e-5


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in checkpoints and metrics.json)."""

    # model
    model: str | None = None  # None: the embedded world's pretrained base model
    pretrained: str | None = None  # open_clip tag or checkpoint path
    # data
    dataset_type: str = "embedded"
    train_data: str | None = None
    val_data: str | None = None
    csv_separator: str = "\t"
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    coco_root: str | None = None
    train_size: int | None = None  # embedded world: number of training images (default 20000)
    workers: int = 0
    # optimisation
    batch_size: int = 256
    lr: float | None = None  # None: EMBEDDED_LR for the base model, else MODEL_LR
    wd: float = 0.1
    warmup: int = 10
    steps: int | None = 300
    epochs: float | None = None
    grad_clip_norm: float | None = 1.0
    precision: str = "auto"  # open_clip's names; auto: amp on CUDA, fp32 elsewhere
    torchcompile: bool = False
    # alignment
    alpha_target: float = 0.5
    schedule: str = "tpc"
    blur: float = 0.05
    lambda_centroid: float = 1.0
    lambda_distribution: float = 1.0
    anchor_frac: float = 0.15
    ramp_frac: float = 0.35
    refresh_every: int = 10
    fused: bool = False
    shard_alignment: bool = True  # under torchrun: the alignment solve sharded across ranks
    # run
    output: str | None = None
    seed: int = 0
    resume: str | None = None
    device: str = "auto"
    checkpoint_every: int = 50
    probe_every: int = 25
    max_bad_steps: int = 10
    eval: bool = True
    eval_train_images: int = 5000
    eval_test_images: int | None = None
    captioning: bool = True
    progress: bool = True
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = EMBEDDED_LR if self.model is None else MODEL_LR
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset_type: expected one of {DATASET_TYPES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.dataset_type != "embedded" and not self.train_data:
            raise ValueError(f"train_data: --dataset-type {self.dataset_type} needs --train-data")
        if self.batch_size < 2:
            raise ValueError("batch_size: must be at least 2 (the contrastive loss needs pairs)")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps: must be ≥ 1")
        if self.alpha_target < 0:
            raise ValueError("alpha_target: must be ≥ 0")

    @property
    def run_name(self) -> str:
        return f"{self.schedule}-a{self.alpha_target:g}-s{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cma.train",
        description="Fine-tune an open_clip model with TPC-CMA and report before/after metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=d.model,
        help="open_clip name or cma-tiny; default: the "
        "embedded world's base model (pretrained and cached on first use)",
    )
    g.add_argument("--pretrained", default=d.pretrained, help="open_clip tag or checkpoint path")
    g = p.add_argument_group("data")
    g.add_argument("--dataset-type", default=d.dataset_type, choices=DATASET_TYPES)
    g.add_argument("--train-data", default=d.train_data, help="csv/json/tar path (or folder)")
    g.add_argument("--val-data", default=d.val_data, help="evaluation data (same format)")
    g.add_argument("--csv-separator", default=d.csv_separator)
    g.add_argument("--csv-img-key", default=d.csv_img_key)
    g.add_argument("--csv-caption-key", default=d.csv_caption_key)
    g.add_argument("--coco-root", default=d.coco_root, help="COCO image folder")
    g.add_argument(
        "--train-size",
        type=int,
        default=d.train_size,
        help="embedded world: training images (default: the full split)",
    )
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default: {EMBEDDED_LR:g} for the embedded base model, "
        f"{MODEL_LR:g} with --model)",
    )
    g.add_argument("--wd", type=float, default=d.wd)
    g.add_argument("--warmup", type=int, default=d.warmup)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--epochs", type=float, default=d.epochs, help="overrides --steps")
    g.add_argument("--grad-clip-norm", type=float, default=d.grad_clip_norm)
    g.add_argument(
        "--precision",
        default=d.precision,
        choices=PRECISIONS,
        help="open_clip's names: amp = fp16 autocast + GradScaler (bf16 autocast on the CPU), "
        "amp_bf16 = bf16 autocast, bf16/fp16/pure_* = low-precision weights, amp_fp16 = fp16 "
        "autocast + GradScaler on any device; auto = amp on CUDA, fp32 elsewhere. The "
        "alignment term is always float32",
    )
    g.add_argument(
        "--torchcompile",
        action="store_true",
        help="torch.compile the model (default backend; env CMA_COMPILE_BACKEND overrides)",
    )
    g = p.add_argument_group("alignment")
    g.add_argument("--alpha-target", type=float, default=d.alpha_target)
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    g.add_argument("--blur", type=float, default=d.blur, help="entropic blur, ε = blur²")
    g.add_argument("--lambda-centroid", type=float, default=d.lambda_centroid)
    g.add_argument("--lambda-distribution", type=float, default=d.lambda_distribution)
    g.add_argument("--anchor-frac", type=float, default=d.anchor_frac)
    g.add_argument("--ramp-frac", type=float, default=d.ramp_frac)
    g.add_argument("--refresh-every", type=int, default=d.refresh_every)
    g.add_argument("--fused", action="store_true", help="fused Triton kernels (CUDA)")
    g.add_argument(
        "--no-shard-alignment",
        dest="shard_alignment",
        action="store_false",
        help="under torchrun: gather every rank's features and solve the whole alignment "
        "problem on each rank (the reference) instead of sharding the solve across ranks",
    )
    g = p.add_argument_group("run")
    g.add_argument("--output", default=d.output, help="default: runs/<schedule>-a<α>-s<seed>")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--resume", default=d.resume, help="checkpoint path, or 'auto'")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 …")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument(
        "--probe-every",
        type=int,
        default=d.probe_every,
        help="steps between gap measurements on held-out pairs",
    )
    g.add_argument(
        "--max-bad-steps",
        type=int,
        default=d.max_bad_steps,
        help="stop after this many non-finite steps in a row",
    )
    g.add_argument("--no-eval", dest="eval", action="store_false")
    g.add_argument(
        "--eval-train-images",
        type=int,
        default=d.eval_train_images,
        help="training images whose captions train the captioning decoder",
    )
    g.add_argument("--eval-test-images", type=int, default=d.eval_test_images)
    g.add_argument("--no-captioning", dest="captioning", action="store_false")
    g.add_argument("--quiet", dest="progress", action="store_false")
    g.add_argument("--cache-dir", default=d.cache_dir)
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    return TrainConfig(**vars(args))
