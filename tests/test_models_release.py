"""The shipped base model: regeneration (cma.models.release), checksum, convergence criterion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import cma.models.pretraining as pretrain_mod
from cma.models import PretrainConfig, PretrainedUnavailableError, base_model
from cma.models.pretraining import PACKAGED_BASE_INFO, file_sha256, packaged_base
from cma.models.release import CURVE_KEYS, converged, release, report_only

TINY = PretrainConfig(
    arch="cma-micro", world_size=64, image_size=32, steps=6, batch_size=16, lr=5e-3,
    warmup_steps=2, init_logit_scale=math.log(1 / 0.07),
)  # fmt: skip


def curve(values: list[float], steps: list[int]) -> list[dict]:
    return [{"step": s, **dict.fromkeys(CURVE_KEYS, v)} for s, v in zip(steps, values, strict=True)]


def test_convergence_criterion() -> None:
    steps = [100, 200, 300, 400, 500]
    flat = converged(curve([0.5, 0.8, 0.9, 0.905, 0.909], steps), 500)
    assert flat["holds"] and flat["points"] == 2 and flat["tail_from"] == 400
    assert flat["change"]["zeroshot_top1"] == pytest.approx(0.004)
    assert flat["trend"]["zeroshot_top1"] == pytest.approx(0.004)  # slope × 100 steps
    rising = converged(curve([0.5, 0.8, 0.9, 0.90, 0.915], steps), 500)
    assert not rising["holds"] and rising["change"]["retrieval_t2i_r1"] == pytest.approx(0.015)
    assert not converged(curve([0.9], [500]), 500)["holds"]  # one point cannot show a plateau
    # the criterion is the change over the tail; a noisy point inside it shows in "range"
    steps = list(range(100, 1100, 100))
    noisy = converged(curve([0.5] * 7 + [0.80, 0.79, 0.806], steps), 1000)
    assert noisy["holds"] and noisy["points"] == 3
    assert noisy["range"]["zeroshot_top1"] == pytest.approx(0.016)


def test_release_writes_float16_weights_checksum_and_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, info = tmp_path / "w" / "base.pt", tmp_path / "w" / "base.json"
    out = release(TINY, eval_every=3, weights=weights, info=info, png=tmp_path / "c.png",
                  threads=1, progress=False, curve_images=20)  # fmt: skip
    saved = json.loads(info.read_text())
    assert saved == json.loads(json.dumps(out))
    assert saved["sha256"] == file_sha256(weights) and saved["file"] == "base.pt"
    assert [p["step"] for p in saved["curve"]] == [1, 3, 6]
    assert all(0.0 <= p[k] <= 1.0 for p in saved["curve"] for k in CURVE_KEYS)
    assert (tmp_path / "c.png").stat().st_size > 0
    redone = report_only(info, tmp_path / "c2.png")  # the verdict again, from the stored curve
    assert redone["converged"] == saved["converged"] and (tmp_path / "c2.png").is_file()
    state = torch.load(weights, weights_only=True)["model"]
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}

    assert packaged_base(TINY, info) == weights
    assert packaged_base(PretrainConfig(), info) is None  # another config: not this file
    # base_model loads the shipped file (no pretraining), float16 values in a float32 model
    monkeypatch.setattr(pretrain_mod, "PACKAGED_BASE_INFO", info)
    monkeypatch.setattr(pretrain_mod, "pretrain", lambda *a, **k: pytest.fail("pretrained"))
    model = base_model(config=TINY, cache_dir=tmp_path / "cache", progress=False)[0]
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name].to(t.dtype)), name
    weights.write_bytes(weights.read_bytes()[:-10])  # a truncated copy
    with pytest.raises(PretrainedUnavailableError, match="SHA-256"):
        packaged_base(TINY, info)
    weights.unlink()
    with pytest.raises(PretrainedUnavailableError, match="missing"):
        base_model(config=TINY, cache_dir=tmp_path / "cache", progress=False)


def test_the_shipped_base_model_matches_the_default_config() -> None:
    """The package ships the default config's weights, intact and converged (issue #14)."""
    path = packaged_base()
    assert path is not None, "weights/cma-tiny-base.json was made for another PretrainConfig"
    meta = json.loads(PACKAGED_BASE_INFO.read_text())
    assert meta["bytes"] == path.stat().st_size <= 20_000_000
    assert meta["converged"]["holds"], meta["converged"]
