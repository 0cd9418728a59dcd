"""Contrastive pretraining of the embedded-world base model: shipped with the package, or
pretrained once and cached on disk by its config.

Plain CLIP training (open_clip's ``ClipLoss``, learnable temperature, AdamW with warmup and
cosine decay) of a small open_clip ``CLIP`` on ``EmbeddedWorld("train")``; each step pairs every
image with one of its reference captions drawn at random. Images are rendered once into a uint8
tensor and normalised per batch exactly as the inference ``preprocess`` does (the world's images
already have the model's input size), and captions are tokenised once.

The base model of the default :class:`PretrainConfig` is shipped as package data
(``weights/cma-tiny-base.pt``, float16, with its SHA-256 and convergence curve in
``weights/cma-tiny-base.json``) and loaded offline; ``python -m cma.models.release`` regenerates
both. Any other config is pretrained on first use and cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.loss import ClipLoss
from torch import nn
from tqdm.auto import tqdm

from cma.data.world import WORLD_VERSION, EmbeddedWorld
from cma.models.batching import CaptionBank, param_groups, uint8_normalizer
from cma.models.embed import default_cache_dir
from cma.models.factory import PretrainedUnavailableError, create_model, model_config

__all__ = [
    "PACKAGED_BASE", "PACKAGED_BASE_INFO", "PretrainConfig", "base_model", "base_model_path",
    "file_sha256", "packaged_base", "pretrain", "save_checkpoint",
]  # fmt: skip

PRETRAIN_VERSION = 1
#: The shipped base model (the default config's) and its info json (sha256, config, curve).
PACKAGED_BASE = Path(__file__).parent / "weights" / "cma-tiny-base.pt"
PACKAGED_BASE_INFO = PACKAGED_BASE.with_suffix(".json")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the base model (its hash names the cache file)."""

    arch: str = "cma-tiny"
    world_seed: int = 0
    world_size: int = 20000
    image_size: int = 64
    steps: int = 2000  # converged: see docs/base_curve.png and weights/cma-tiny-base.json
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 40
    weight_decay: float = 0.1
    init_logit_scale: float = math.log(1 / 0.03)  # a low temperature keeps a clear gap
    seed: int = 0

    def key(self) -> str:
        """Hash of this config, the architecture's json and the world/trainer versions."""
        payload = {
            "config": dataclasses.asdict(self),
            "arch": model_config(self.arch),
            "world_version": WORLD_VERSION,
            "pretrain_version": PRETRAIN_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pretrain(
    config: PretrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    world: EmbeddedWorld | None = None,
    threads: int | None = None,
    callback: Callable[[int, nn.Module, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the base model from random init; returns ``(model in eval mode, stats)``.

    ``stats`` holds ``seconds`` (wall), ``cpu_seconds`` (process CPU time, all threads),
    ``data_seconds`` (world generation and tokenisation), ``losses`` (per step) and
    ``logit_scale`` (final). ``threads`` sets torch's intra-op threads for the run (restored
    afterwards); None keeps the current setting. ``callback(step, model, loss)`` runs after
    every step (e.g. to evaluate; put the model back in train mode if you change it).
    """
    config = config or PretrainConfig()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _pretrain(config, device, progress, world, callback)
    finally:
        torch.set_num_threads(previous_threads)


def _pretrain(
    config: PretrainConfig,
    device: str | torch.device,
    progress: bool,
    world: EmbeddedWorld | None,
    callback: Callable[[int, nn.Module, float], None] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    model, _, tokenizer = create_model(config.arch, None, device=device)
    if world is None:
        world = EmbeddedWorld("train", config.world_size, config.world_seed, config.image_size)
    images = torch.from_numpy(world.images)
    bank = CaptionBank(world, tokenizer)
    data_seconds = time.perf_counter() - t0
    normalize = uint8_normalizer(model)
    with torch.no_grad():
        model.logit_scale.fill_(config.init_logit_scale)
    model.train()
    opt = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * config.lr * (1 + math.cos(math.pi * done))

    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(world), generator=gen)
    pos, losses = 0, []
    bar = tqdm(range(config.steps), disable=not progress, desc="pretrain base model", unit="step")
    for step in bar:
        if pos + config.batch_size > len(order):
            order, pos = torch.randperm(len(world), generator=gen), 0
        idx = order[pos : pos + config.batch_size]
        pos += config.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        img_f, txt_f, scale = model(
            normalize(images[idx]).to(device), bank.sample(idx, gen).to(device)
        )[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{1 / scale.item():.3f}")
        if callback is not None:
            callback(step, model, losses[-1])
    model.eval()
    stats = {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "data_seconds": data_seconds,
        "losses": losses,
        "logit_scale": model.logit_scale.item(),
    }
    return model, stats


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> None:
    """Write ``{"model": state_dict, **extra}`` atomically (``extra`` must be plain data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": model.state_dict(), **extra}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def base_model_path(
    config: PretrainConfig | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where the base model of ``config`` (default: the default config) is cached."""
    config = config or PretrainConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "base" / f"{config.arch}-{config.key()}.pt"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def packaged_base(
    config: PretrainConfig | None = None, info: str | os.PathLike | None = None
) -> Path | None:
    """The shipped weights file when it holds the base model of ``config``, else None.

    The info json names the file, its SHA-256 and the config key it was trained with; a key
    that differs (another config, world or architecture version) gives None. A missing or
    altered file (a partial copy, a Git LFS pointer) raises PretrainedUnavailableError.
    """
    config = config or PretrainConfig()
    info = Path(info if info is not None else PACKAGED_BASE_INFO)
    if not info.is_file():
        return None
    meta = json.loads(info.read_text())
    if meta.get("pretrain_key") != config.key():
        return None
    path = info.parent / meta["file"]
    fix = (
        "reinstall the package, or regenerate the file with `python -m cma.models.release` "
        "(about 40 min on 2 CPU cores)"
    )
    if not path.is_file():
        raise PretrainedUnavailableError(f"shipped base model {path} is missing: {fix}")
    digest = file_sha256(path)
    if digest != meta["sha256"]:
        raise PretrainedUnavailableError(
            f"shipped base model {path} has SHA-256 {digest[:12]}…, expected "
            f"{meta['sha256'][:12]}… (truncated copy or Git LFS pointer?): {fix}"
        )
    return path


def base_model(
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: PretrainConfig | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """The pretrained embedded-world base model ``(model, preprocess, tokenizer)``.

    The shipped weights when they match ``config`` (the default config: :func:`packaged_base`),
    else ``<cache_dir>/base/<arch>-<hash>.pt`` (cache_dir default ``$CMA_CACHE`` or
    ``~/.cache/cma``) when present, else pretrained now and saved there.
    """
    config = config or PretrainConfig()
    path = packaged_base(config) or base_model_path(config, cache_dir)
    if not path.is_file():
        model, stats = pretrain(config, device=device, progress=progress)
        save_checkpoint(
            path,
            model,
            arch=config.arch,
            pretrain_config=dataclasses.asdict(config),
            seconds=stats["seconds"],
            final_loss=float(np.mean(stats["losses"][-20:])),
        )
    return create_model(config.arch, str(path), device=device)
