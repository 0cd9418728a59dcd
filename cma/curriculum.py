"""Three-phase curriculum with gradient-aware scheduling (SPEC §4).

The alignment weight at step t is β(t) = α(t)·w(t):

1. **anchor**   (t < T_a):            α = 0, contrastive only; the gradient-norm EMAs warm up.
2. **ramp**     (T_a ≤ t < T_a + T_r): α = α_target·½(1 − cos(π(t − T_a)/T_r)).
3. **consolidate** (rest):             α = α_target; the learning rate decays (cosine) to its floor.

w(t) = clip(EMA‖∇_θ L_CLIP‖ / EMA‖∇_θ L_align‖, w_min, w_max) on the shared parameters (the two
projections), refreshed every ``refresh_every`` steps, so α is the ratio of the two gradient
magnitudes. Phase 1 may end early once the contrastive EMA has settled (relative change below
``settle_tol`` between refreshes). ``schedule="constant"`` is the ablation: β = α_target from
step 0 and no w. Phase fractions, EMA decay, clip range and refresh period are *ours*: the paper
does not publish them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SCHEDULES = ("tpc", "constant")
PHASES = ("anchor", "ramp", "consolidate")


@dataclass
class CurriculumConfig:
    """Hyper-parameters of the schedule (fractions are of the whole run)."""

    alpha_target: float = 0.5
    schedule: str = "tpc"
    anchor_frac: float = 0.15
    ramp_frac: float = 0.35
    early_anchor_exit: bool = True
    settle_tol: float = 0.02
    min_anchor_frac: float = 0.05
    ema_decay: float = 0.9
    refresh_every: int = 10
    w_min: float = 1e-2
    w_max: float = 1e4
    lr_floor: float = 0.1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if not self.alpha_target >= 0:
            raise ValueError(f"alpha_target: must be ≥ 0, got {self.alpha_target}")
        if not (
            self.anchor_frac >= 0 and self.ramp_frac >= 0 and self.anchor_frac + self.ramp_frac <= 1
        ):
            raise ValueError("anchor_frac, ramp_frac: need 0 ≤ anchor_frac + ramp_frac ≤ 1")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every: must be ≥ 1, got {self.refresh_every}")
        if not 0 < self.w_min <= self.w_max:
            raise ValueError("w_min, w_max: need 0 < w_min ≤ w_max")


class Curriculum:
    """Stateful schedule: call :meth:`observe` with gradient norms, then :meth:`advance`."""

    def __init__(self, config: CurriculumConfig, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps: must be ≥ 1, got {total_steps}")
        self.config = config
        self.total_steps = total_steps
        self.step = 0
        self.anchor_end = round(config.anchor_frac * total_steps) if self.is_tpc else 0
        self.ramp_steps = round(config.ramp_frac * total_steps) if self.is_tpc else 0
        self.ema_clip: float | None = None
        self.ema_align: float | None = None
        self.w = 1.0
        self._settle_ref: float | None = None

    @property
    def is_tpc(self) -> bool:
        return self.config.schedule == "tpc"

    @property
    def consolidate_start(self) -> int:
        """First step of phase 3 (also where the LR decay starts for both schedules)."""
        if self.is_tpc:
            return self.anchor_end + self.ramp_steps
        c = self.config
        return round((c.anchor_frac + c.ramp_frac) * self.total_steps)

    def phase(self, step: int | None = None) -> str:
        t = self.step if step is None else step
        if not self.is_tpc:
            return "constant"
        if t < self.anchor_end:
            return "anchor"
        return "ramp" if t < self.consolidate_start else "consolidate"

    def alpha(self, step: int | None = None) -> float:
        """α(t): 0 in the anchor, cosine ramp, then α_target."""
        t = self.step if step is None else step
        target = self.config.alpha_target
        if not self.is_tpc or t >= self.consolidate_start:
            return target
        if t < self.anchor_end:
            return 0.0
        progress = (t - self.anchor_end) / max(self.ramp_steps, 1)
        return target * 0.5 * (1.0 - math.cos(math.pi * progress))

    @property
    def weight(self) -> float:
        """β = α(t)·w(t) for the current step (no w for the constant ablation)."""
        return self.alpha() * (self.w if self.is_tpc else 1.0)

    def lr_factor(self, step: int | None = None) -> float:
        """1 until phase 3, then a cosine decay to ``lr_floor`` at the last step."""
        t = self.step if step is None else step
        start = self.consolidate_start
        if t < start:
            return 1.0
        progress = min(1.0, (t - start) / max(self.total_steps - 1 - start, 1))
        floor = self.config.lr_floor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def wants_grad_norms(self) -> bool:
        """True on steps where :meth:`observe` should be given fresh gradient norms."""
        if not self.is_tpc:
            return False
        return self.phase() == "anchor" or self.step % self.config.refresh_every == 0

    def observe(self, clip_norm: float, align_norm: float) -> None:
        """Update the EMAs with ‖∇L_CLIP‖ and ‖∇L_align‖; refresh w on refresh steps."""
        d = self.config.ema_decay
        if not (math.isfinite(clip_norm) and math.isfinite(align_norm)):
            return
        self.ema_clip = (
            clip_norm if self.ema_clip is None else d * self.ema_clip + (1 - d) * clip_norm
        )
        self.ema_align = (
            align_norm if self.ema_align is None else d * self.ema_align + (1 - d) * align_norm
        )
        if self.step % self.config.refresh_every == 0 or self.phase() == "anchor":
            self._refresh_w()

    def _refresh_w(self) -> None:
        c = self.config
        if self.ema_clip is None or self.ema_align is None:
            return
        ratio = self.ema_clip / max(self.ema_align, 1e-12)
        self.w = min(max(ratio, c.w_min), c.w_max)

    def advance(self) -> None:
        """Next step; the anchor phase may end early once the contrastive EMA settles."""
        c = self.config
        if (
            self.is_tpc
            and c.early_anchor_exit
            and self.phase() == "anchor"
            and self.step >= round(c.min_anchor_frac * self.total_steps)
            and self.step % c.refresh_every == 0
            and self.ema_clip is not None
        ):
            ref = self._settle_ref
            if ref is not None and abs(self.ema_clip - ref) <= c.settle_tol * ref:
                self.anchor_end = self.step + 1
            self._settle_ref = self.ema_clip
        self.step += 1

    def log_state(self) -> dict[str, Any]:
        """What is logged every step."""
        return {
            "step": self.step,
            "phase": self.phase(),
            "alpha": self.alpha(),
            "w": self.w if self.is_tpc else 1.0,
            "weight": self.weight,
            "lr_factor": self.lr_factor(),
            "ema_clip_grad": self.ema_clip,
            "ema_align_grad": self.ema_align,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "total_steps": self.total_steps,
            "step": self.step,
            "anchor_end": self.anchor_end,
            "ema_clip": self.ema_clip,
            "ema_align": self.ema_align,
            "w": self.w,
            "settle_ref": self._settle_ref,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = CurriculumConfig(**state["config"])
        self.total_steps = state["total_steps"]
        self.step = state["step"]
        self.anchor_end = state["anchor_end"]
        self.ramp_steps = round(self.config.ramp_frac * self.total_steps) if self.is_tpc else 0
        self.ema_clip = state["ema_clip"]
        self.ema_align = state["ema_align"]
        self.w = state["w"]
        self._settle_ref = state["settle_ref"]
