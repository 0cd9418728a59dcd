"""The TPC-CMA training loop: one step = L_CLIP + α(t)·w(t)·L_align, robust to bad steps and kills.

Per step: forward both towers and the loss terms (:class:`cma.losses.CMALoss`) under the run's
autocast (:mod:`cma.train.precision`; L_align itself is float32), on refresh steps the gradient
norms of both terms on the shared projections (for w(t)), then AdamW on the total. A step whose
features, loss or gradients are not finite is skipped (no update) and counted; too many in a row
stop the run. With a GradScaler (fp16 autocast) the total is scaled before ``backward``, the
gradients unscaled before clipping, and a step whose gradients overflowed is skipped and
counted the same way (GradScaler skips it and lowers the scale); the w(t) gradient norms are
taken on the scaled terms and divided by the scale. SIGTERM/SIGINT finish the current step,
write a checkpoint and raise :class:`Interrupted`; ``--resume`` continues from it with the same
data, schedule, RNG and GradScaler state.
"""

from __future__ import annotations

import csv
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cma.curriculum import Curriculum
from cma.losses import CMALoss, LossTerms, grad_norm
from cma.train.checkpoint import FORMAT, LAST, save_atomic
from cma.train.precision import Precision, precision_spec

LOG_FIELDS = (
    "step", "phase", "alpha", "w", "weight", "lr", "loss_total", "loss_contrastive",
    "loss_align", "centroid_gap_sq", "distribution_gap_sq", "logit_scale", "ema_clip_grad",
    "ema_align_grad", "skipped", "grad_scale", "gap_centroid", "gap_distribution", "gap_total",
    "seconds",
)  # fmt: skip


class Interrupted(RuntimeError):
    """The run was stopped by a signal after saving a checkpoint."""


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under ``torch.compile`` and/or DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return getattr(model, "module", model)


#: Where open_clip towers keep their projection into the joint space, per tower, in order.
PROJECTIONS = (
    ("visual.proj", "visual.attnpool.c_proj.weight", "visual.head.proj.weight"),
    ("text_projection", "text.proj.weight", "text.proj.0.weight"),
)


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The two projections into the joint space (ViT: ``visual.proj``; ResNet: the attention
    pool's output projection; text: ``text_projection``) — the parameters both loss terms act
    on, where w(t) compares their gradient norms."""
    named = dict(unwrap(model).named_parameters())
    picked = []
    for candidates in PROJECTIONS:
        found = next((named[k] for k in candidates if k in named), None)
        if found is None:
            raise ValueError(f"model: none of {candidates} found to measure gradient norms on")
        picked.append(found)
    return picked


def _features(out: Any) -> tuple[Tensor, Tensor, Tensor]:
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _all_finite(*tensors: Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


class Trainer:
    """Owns the model, optimiser, curriculum and logs of one run."""

    def __init__(
        self,
        model: nn.Module,
        loss: CMALoss,
        curriculum: Curriculum,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        warmup: int,
        device: torch.device,
        output: Path,
        grad_clip_norm: float | None = 1.0,
        checkpoint_every: int = 50,
        probe: Callable[[nn.Module], dict[str, float]] | None = None,
        probe_every: int = 25,
        max_bad_steps: int = 10,
        is_main: bool = True,
        config: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
        progress: bool = True,
        sync_flag: Callable[[bool], bool] = lambda flag: flag,
        precision: Precision | None = None,
    ) -> None:
        self.model, self.loss, self.curriculum, self.optimizer = model, loss, curriculum, optimizer
        self.base_lr, self.warmup, self.device = base_lr, warmup, device
        self.output = output
        self.grad_clip_norm = grad_clip_norm
        self.checkpoint_every = checkpoint_every
        self.probe, self.probe_every = probe, probe_every
        self.max_bad_steps = max_bad_steps
        self.is_main, self.progress = is_main, progress
        self.config = config or {}
        self.extra_state = extra_state or {}
        self.sync_flag = sync_flag  # all-reduce of "this step is bad" under DDP
        self.shared = shared_parameters(model)
        self.precision = precision or precision_spec("fp32", device.type)
        self.scaler = self.precision.make_scaler()
        self.history: list[dict[str, Any]] = []
        self.skipped_total = 0
        self.bad_in_a_row = 0
        self.seconds = 0.0
        self._stop_signal: int | None = None

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "step": self.curriculum.step,
            "rng": torch.get_rng_state(),
            "config": self.config,
            "history": self.history,
            "skipped_total": self.skipped_total,
            "bad_in_a_row": self.bad_in_a_row,
            "seconds": self.seconds,
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.curriculum.load_state_dict(state["curriculum"])
        torch.set_rng_state(state["rng"])
        self.history = list(state.get("history", []))
        self.skipped_total = int(state.get("skipped_total", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        self.seconds = float(state.get("seconds", 0.0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save(self) -> Path | None:
        """Write ``checkpoint_last.pt`` atomically (main process only)."""
        if not self.is_main:
            return None
        return save_atomic(self.state_dict(), self.output / LAST)

    # ---------------------------------------------------------------- one step
    def _set_lr(self) -> float:
        step = self.curriculum.step
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        lr = self.base_lr * warm * self.curriculum.lr_factor()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _grad_norms(self, terms: LossTerms) -> tuple[float, float]:
        """‖∇L_CLIP‖, ‖∇L_align‖ on the shared parameters, unscaled: under a GradScaler both
        terms are multiplied by the scale s before ``autograd.grad`` (no fp16 underflow) and
        the norms divided by s; an overflow gives inf, which the curriculum ignores."""
        s = self.scaler.get_scale() if self.scaler is not None else 1.0
        return (
            grad_norm(terms.contrastive * s, self.shared) / s,
            grad_norm(terms.align * s, self.shared) / s,
        )

    def step(self, images: Tensor, tokens: Tensor) -> dict[str, Any]:
        """One optimisation step (or a counted skip); returns its log record."""
        self.model.train()
        lr = self._set_lr()
        cur = self.curriculum
        record: dict[str, Any] = {"step": cur.step, "phase": cur.phase(), "lr": lr}
        images = images.to(self.device, dtype=self.precision.input_dtype, non_blocking=True)
        terms = None
        with self.precision.autocast():
            image_f, text_f, scale = _features(self.model(images, tokens.to(self.device)))
            bad = not _all_finite(image_f, text_f, scale)
            if not self.sync_flag(bad):
                terms = self.loss.terms(image_f, text_f, scale)
        out = None
        if terms is not None:
            if cur.wants_grad_norms() and _all_finite(terms.contrastive, terms.align):
                cur.observe(*self._grad_norms(terms))
            out = self.loss.combine(terms, cur.weight)
            bad = not _all_finite(out["total"])
        unscaled = False  # whether the scaler recorded this step's inf check (then update it)
        if not self.sync_flag(bad) and out is not None:
            self.optimizer.zero_grad(set_to_none=True)
            total = out["total"]
            (self.scaler.scale(total) if self.scaler is not None else total).backward()
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
                unscaled = True
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if self.grad_clip_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
            else:
                norm = torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()
            bad = not _all_finite(norm)
        if self.sync_flag(bad) or out is None:
            if unscaled:  # as GradScaler.step on inf: no update, and a lower scale next step
                self.scaler.update()
                record["grad_scale"] = self.scaler.get_scale()
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_total += 1
            self.bad_in_a_row += 1
            record.update(skipped=1, alpha=cur.alpha(), w=cur.w, weight=cur.weight)
            if self.bad_in_a_row >= self.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad_in_a_row} non-finite steps in a row (at step {cur.step}); "
                    "lower --lr, check the data for corrupt images, or raise --max-bad-steps"
                )
        else:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)  # gradients already unscaled and finite
                self.scaler.update()
                record["grad_scale"] = self.scaler.get_scale()
            else:
                self.optimizer.step()
            with torch.no_grad():
                unwrap(self.model).logit_scale.clamp_(0, math.log(100))
            self.bad_in_a_row = 0
            record.update(
                skipped=0,
                loss_total=float(out["total"].detach()),
                loss_contrastive=float(out["contrastive_loss"].detach()),
                loss_align=self.loss.last_terms["align"],
                centroid_gap_sq=self.loss.last_terms["centroid_gap_sq"],
                distribution_gap_sq=self.loss.last_terms["distribution_gap_sq"],
                logit_scale=float(unwrap(self.model).logit_scale.detach().exp()),
            )
        state = cur.log_state()
        record.update(
            alpha=state["alpha"], w=state["w"], weight=state["weight"],
            ema_clip_grad=state["ema_clip_grad"], ema_align_grad=state["ema_align_grad"],
        )  # fmt: skip
        cur.advance()
        return record

    # ---------------------------------------------------------------- the run
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signum

    def fit(self, batches: Iterator[tuple[int, Tensor, Tensor]], total_steps: int) -> None:
        """Run the remaining steps; checkpoint every ``checkpoint_every`` and at the end."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        start = self.curriculum.step
        bar = tqdm(
            total=total_steps, initial=start, disable=not (self.progress and self.is_main),
            desc="TPC-CMA", unit="step", dynamic_ncols=True,
        )  # fmt: skip
        if start > 0:
            self._rewrite_log()
        try:
            if self.probe is not None and self.is_main and start == 0:
                self._log({"step": 0, **self.probe(unwrap(self.model))})
            for step, images, tokens in batches:
                if step != self.curriculum.step:
                    raise RuntimeError(f"batch for step {step} at step {self.curriculum.step}")
                t0 = time.perf_counter()
                record = self.step(images, tokens)
                self.seconds += time.perf_counter() - t0
                done = self.curriculum.step
                if self.probe is not None and self.is_main and done % self.probe_every == 0:
                    record.update(self.probe(unwrap(self.model)))
                record["seconds"] = round(self.seconds, 3)
                self._log(record)
                bar.update(1)
                if "loss_total" in record:
                    bar.set_postfix(
                        loss=f"{record['loss_total']:.3f}", phase=record["phase"],
                        alpha=f"{record['alpha']:.3f}", w=f"{record['w']:.3g}",
                    )  # fmt: skip
                if done % self.checkpoint_every == 0 or done == total_steps:
                    self.save()
                if self._stop_signal is not None:
                    self.save()
                    name = signal.Signals(self._stop_signal).name
                    raise Interrupted(
                        f"stopped by {name} after step {done}; checkpoint written to "
                        f"{self.output / LAST} — rerun with --resume auto to continue"
                    )
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.is_main:
            self._write_rows([record], append=True)

    def _rewrite_log(self) -> None:
        """After a resume: the CSV holds exactly the checkpoint's history (drops later rows)."""
        if self.is_main:
            self._write_rows(self.history, append=False)

    def _write_rows(self, rows: list[dict[str, Any]], append: bool) -> None:
        path = self.output / "train_log.csv"
        new = not append or not path.exists()
        with path.open("a" if append else "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
