"""The trainer end to end on a tiny world: resume after a kill, NaN steps, checkpoints, outputs."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import cma.train.runner as runner
from cma.train.batches import EmbeddedBatches
from cma.train.checkpoint import LAST, CheckpointError, load_checkpoint, save_atomic
from cma.train.config import TrainConfig
from cma.train.loop import Interrupted, TrainingDiverged


def config(out: Path, **kw) -> TrainConfig:
    base = dict(
        model="cma-micro", train_size=96, batch_size=16, steps=8, eval=False, output=str(out),
        checkpoint_every=3, probe_every=4, eval_test_images=24, eval_train_images=24,
        progress=False, cache_dir=str(out.parent / "cache"), blur=0.1, warmup=2,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def final_state(out: Path) -> dict:
    return load_checkpoint(out / LAST)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    runner.run(config(tmp_path / "a"))
    reference = final_state(tmp_path / "a")

    original = EmbeddedBatches.iterate

    def killed_at_step_5(self, start, stop):
        for item in original(self, start, stop):
            if item[0] == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    monkeypatch.setattr(EmbeddedBatches, "iterate", killed_at_step_5)
    with pytest.raises(Interrupted, match="SIGTERM"):
        runner.run(config(tmp_path / "b"))
    assert final_state(tmp_path / "b")["step"] == 6
    monkeypatch.setattr(EmbeddedBatches, "iterate", original)

    runner.run(config(tmp_path / "b", resume="auto"))
    resumed = final_state(tmp_path / "b")
    assert resumed["step"] == reference["step"] == 8
    for name, tensor in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=1e-5, atol=1e-6)
    losses = lambda s: [r["loss_total"] for r in s["history"] if "loss_total" in r]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(reference), rel=1e-5)
    rows = (tmp_path / "b" / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(reference["history"])  # header + one row per record, no repeats


def test_nan_batch_is_skipped_and_counted(tmp_path: Path, monkeypatch) -> None:
    original = EmbeddedBatches.batch

    def poisoned(self, step):
        images, tokens = original(self, step)
        if step == 3:
            images = images.clone()
            images[0, 0, 0, 0] = float("nan")
        return images, tokens

    monkeypatch.setattr(EmbeddedBatches, "batch", poisoned)
    metrics = runner.run(config(tmp_path / "run", steps=6))
    assert metrics["skipped_steps"] == 1
    state = final_state(tmp_path / "run")
    skipped = [r["step"] for r in state["history"] if r.get("skipped") == 1]
    assert skipped == [3]
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_run_stops_after_too_many_bad_steps(tmp_path: Path, monkeypatch) -> None:
    original = EmbeddedBatches.batch

    def all_nan(self, step):
        images, tokens = original(self, step)
        return torch.full_like(images, float("nan")), tokens

    monkeypatch.setattr(EmbeddedBatches, "batch", all_nan)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        runner.run(config(tmp_path / "run", max_bad_steps=3))


def test_fused_without_gpu_falls_back_and_records_backend(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert runner.main(["--model", "cma-micro", "--train-size", "64", "--batch-size", "16",
                        "--steps", "2", "--no-eval", "--fused", "--quiet", "--output", str(out),
                        "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert "falling back to the PyTorch reference path" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["backend"] == "reference"


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LAST).write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a cma training checkpoint"):
        runner.run(config(out, resume="auto"))
    assert runner.main(["--model", "cma-micro", "--output", str(out), "--resume", "auto",
                        "--no-eval", "--quiet"]) == 2  # fmt: skip
    assert "checkpoint" in capsys.readouterr().err


def test_atomic_write_keeps_the_old_checkpoint_when_saving_fails(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / LAST
    save_atomic({"value": torch.ones(3)}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temp file left behind


def test_full_run_writes_the_spec_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = runner.run(config(out, eval=True, steps=6))
    saved = json.loads((out / "metrics.json").read_text())
    assert {"backend", "alpha_target", "schedule", "before", "after", "seconds"} <= set(saved)
    keys = {"gap_raw", "gap_centroid", "gap_distribution", "gap_total", "zeroshot_top1",
            "retrieval_i2t_r1", "retrieval_t2i_r1", "ari", "ari_std", "cider", "bleu4"}  # fmt: skip
    for when in ("before", "after"):
        assert keys <= set(saved[when]), keys - set(saved[when])
        assert 0.0 <= saved[when]["zeroshot_top1"] <= 1.0
    assert saved["after"] == pytest.approx(metrics["after"])
    for name in ("report.md", "training.png", "train_log.csv", "gaps.png"):
        assert (out / name).is_file(), name
    assert "| gap_total" in (out / "report.md").read_text()
