"""The three-phase curriculum: phases, α values, w refresh, early anchor exit, state."""

import itertools
import math

import pytest

from cma.curriculum import Curriculum, CurriculumConfig


def make(total: int = 100, **kw) -> Curriculum:
    kw.setdefault("early_anchor_exit", False)
    return Curriculum(
        CurriculumConfig(alpha_target=0.5, anchor_frac=0.2, ramp_frac=0.4, **kw), total
    )


def test_phases_and_alpha_at_given_steps() -> None:
    c = make()
    assert [c.phase(t) for t in (0, 19, 20, 59, 60, 99)] == [
        "anchor",
        "anchor",
        "ramp",
        "ramp",
        "consolidate",
        "consolidate",
    ]
    assert c.alpha(0) == 0.0 and c.alpha(19) == 0.0
    assert c.alpha(20) == pytest.approx(0.0)
    assert c.alpha(40) == pytest.approx(0.25)  # half-way up the cosine ramp
    assert c.alpha(30) == pytest.approx(0.5 * 0.5 * (1 - math.cos(math.pi * 0.25)))
    assert c.alpha(60) == 0.5 and c.alpha(99) == 0.5
    ramp = [c.alpha(t) for t in range(20, 61)]
    assert all(b >= a for a, b in itertools.pairwise(ramp))


def test_lr_decays_only_in_consolidation() -> None:
    c = make()
    assert c.lr_factor(0) == 1.0 and c.lr_factor(59) == 1.0
    assert c.lr_factor(99) == pytest.approx(c.config.lr_floor)
    assert 0.1 < c.lr_factor(80) < 1.0


def test_weight_is_alpha_times_gradient_ratio() -> None:
    c = make(refresh_every=5)
    for _ in range(25):
        c.observe(clip_norm=2.0, align_norm=0.5)  # ratio 4
        c.advance()
    assert c.phase() == "ramp"
    assert c.w == pytest.approx(4.0)
    assert c.weight == pytest.approx(c.alpha() * 4.0)


def test_w_is_clipped() -> None:
    c = make(w_max=10.0)
    c.observe(clip_norm=1.0, align_norm=1e-9)
    assert c.w == 10.0


def test_constant_schedule_is_the_ablation() -> None:
    c = Curriculum(CurriculumConfig(alpha_target=0.05, schedule="constant"), 50)
    assert c.phase(0) == "constant" and c.alpha(0) == 0.05
    c.observe(3.0, 1.0)
    assert c.weight == 0.05  # no gradient-aware scale
    assert not c.wants_grad_norms()


def test_anchor_ends_early_once_the_contrastive_ema_settles() -> None:
    c = make(total=200, early_anchor_exit=True, refresh_every=5, min_anchor_frac=0.05)
    planned = c.anchor_end
    while c.phase() == "anchor":
        c.observe(clip_norm=1.0, align_norm=1.0)  # perfectly settled
        c.advance()
    assert c.step < planned
    assert c.alpha(c.anchor_end) == 0.0 and c.alpha(c.consolidate_start) == 0.5


def test_anchor_does_not_end_early_while_the_ema_moves() -> None:
    c = make(total=200, early_anchor_exit=True, refresh_every=5)
    planned = c.anchor_end
    norm = 1.0
    while c.phase() == "anchor":
        norm *= 1.5
        c.observe(clip_norm=norm, align_norm=1.0)
        c.advance()
    assert c.step == planned


def test_state_roundtrip() -> None:
    c = make(refresh_every=3)
    for _ in range(33):
        c.observe(1.5, 0.3)
        c.advance()
    d = make()
    d.load_state_dict(c.state_dict())
    assert (d.step, d.w, d.phase(), d.alpha(), d.ema_clip) == (
        c.step,
        c.w,
        c.phase(),
        c.alpha(),
        c.ema_clip,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"schedule": "linear"},
        {"alpha_target": -1.0},
        {"anchor_frac": 0.8, "ramp_frac": 0.5},
        {"refresh_every": 0},
    ],
)
def test_bad_config_is_rejected(bad) -> None:
    with pytest.raises(ValueError):
        CurriculumConfig(**bad)
