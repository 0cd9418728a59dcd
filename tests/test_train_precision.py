"""Mixed precision and torch.compile in the trainer (issue #12 item 2), on a tiny CPU world.

The runs use ``cma-micro`` (random init) for a few steps; ``--torchcompile`` is tested with the
``aot_eager`` backend (``CMA_COMPILE_BACKEND``): inductor's C++ build takes minutes on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import torch
from open_clip.loss import ClipLoss
from open_clip_train.precision import get_autocast
from torch.utils._python_dispatch import TorchDispatchMode

import cma.train.precision as precision_mod
import cma.train.runner as runner
from cma.curriculum import Curriculum, CurriculumConfig
from cma.losses import CMALoss, grad_norm
from cma.models import create_model
from cma.train.batches import EmbeddedBatches
from cma.train.checkpoint import LAST, load_checkpoint
from cma.train.config import TrainConfig, parse_config
from cma.train.loop import Interrupted, Trainer, unwrap
from cma.train.precision import PRECISIONS, precision_spec, resolve_precision

#: |gap reduction(amp_bf16) − gap reduction(fp32)| after the same 8 steps (fractions of the
#: initial total gap; measured: 0.4992 vs 0.4999, a difference of 0.0007).
GAP_REDUCTION_TOL = 0.03


def config(out: Path, **kw) -> TrainConfig:
    base = dict(
        model="cma-micro", train_size=64, batch_size=16, steps=8, eval=False, output=str(out),
        checkpoint_every=50, probe_every=8, eval_test_images=32, eval_train_images=16,
        progress=False, cache_dir=str(out.parent / "cache"), blur=0.1, warmup=2,
        schedule="constant", alpha_target=1.0, lr=1e-3,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def history(out: Path) -> list[dict]:
    """The step records of a run's last checkpoint (without the step-0 probe record)."""
    return [r for r in load_checkpoint(out / LAST)["history"] if "skipped" in r]


def gap_reduction(out: Path) -> float:
    """1 − G_T(end) / G_T(start) on the held-out probe pairs."""
    gaps = [r["gap_total"] for r in load_checkpoint(out / LAST)["history"] if "gap_total" in r]
    return 1.0 - gaps[-1] / gaps[0]


@pytest.fixture(scope="module")
def fp32_and_bf16(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    root = tmp_path_factory.mktemp("precision")
    runs = {}
    for name in ("fp32", "amp_bf16"):
        runs[name] = (runner.run(config(root / name, precision=name)), root / name)
    return runs


# ---------------------------------------------------------------- flags and their meaning


def test_cli_parses_precision_and_torchcompile() -> None:
    default = parse_config([])
    assert (default.precision, default.torchcompile) == ("auto", False)
    cfg = parse_config(["--precision", "amp_bfloat16", "--torchcompile"])
    assert (cfg.precision, cfg.torchcompile) == ("amp_bfloat16", True)
    with pytest.raises(SystemExit):
        parse_config(["--precision", "fp8"])
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")


@pytest.mark.parametrize("name", [p for p in PRECISIONS if p not in ("auto", "amp_fp16")])
def test_precision_names_mean_what_open_clip_means_on_cuda(name: str) -> None:
    spec = precision_spec(name, "cuda")
    autocast = get_autocast(name, device_type="cuda")
    want = autocast.keywords["dtype"] if isinstance(autocast, partial) else None
    assert spec.autocast_dtype == want
    assert spec.grad_scaler == (name == "amp")  # open_clip builds a GradScaler for amp only
    half = torch.bfloat16 if "bf16" in name else torch.float16
    assert spec.weights_dtype == (
        half if name in ("bf16", "fp16", "pure_bf16", "pure_fp16") else None
    )
    assert spec.pure == name.startswith("pure_")


def test_device_dependent_choices() -> None:
    assert precision_spec("auto", "cuda") == precision_spec("amp", "cuda")
    assert precision_spec("auto", "cpu").name == "fp32"
    cpu_amp = precision_spec("amp", "cpu")  # ours: bf16 autocast, no scaler, on the CPU
    assert (cpu_amp.autocast_dtype, cpu_amp.grad_scaler) == (torch.bfloat16, False)
    fp16 = precision_spec("amp_fp16", "cpu")
    assert (fp16.autocast_dtype, fp16.grad_scaler) == (torch.float16, True)
    assert isinstance(fp16.make_scaler(), torch.amp.GradScaler)
    assert precision_spec("amp_bf16", "cpu").make_scaler() is None


def test_cast_model_follows_open_clip() -> None:
    model, _, _ = create_model("cma-micro")
    precision_spec("bf16", "cpu").cast_model(model)  # open_clip's convert_weights_to_lp
    assert model.text_projection.dtype == torch.bfloat16
    assert model.visual.conv1.weight.dtype == torch.bfloat16
    assert model.ln_final.weight.dtype == torch.float32
    precision_spec("pure_fp16", "cpu").cast_model(model)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_unsupported_fp16_autocast_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(precision_mod, "autocast_supported", lambda device_type, dtype: False)
    with pytest.raises(ValueError, match="precision: amp_fp16 needs float16 autocast on cpu"):
        resolve_precision("amp_fp16", torch.device("cpu"))
    argv = ["--model", "cma-micro", "--precision", "amp_fp16", "--no-eval", "--quiet",
            "--output", str(tmp_path / "run")]  # fmt: skip
    assert runner.main(argv) == 2
    assert "use amp_bf16" in capsys.readouterr().err


# ---------------------------------------------------------------- the float32 alignment term


class _SolverDtypes(TorchDispatchMode):
    """Records, for each Sinkhorn solve, its input dtypes and whether autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith("cma_kernels.sinkhorn_forward"):
            self.seen.append((args[0].dtype, args[1].dtype, torch.is_autocast_enabled("cpu")))
        return func(*args, **(kwargs or {}))


def test_alignment_term_is_float32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(48, 32, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(48, 32, generator=gen) + 0.5, dim=-1)
    scale = torch.tensor(10.0)
    loss = CMALoss(blur=0.1)
    want = loss.terms(x, y, scale)
    with torch.autocast("cpu", dtype=torch.bfloat16), _SolverDtypes() as mode:
        got = loss.terms(x, y, scale)
        clip = ClipLoss()(x, y, scale)
        half = loss.terms(x.bfloat16(), y.bfloat16(), scale)
    assert mode.seen == [(torch.float32, torch.float32, False)] * 2
    for terms in (got, half):
        assert [t.dtype for t in terms[1:]] == [torch.float32] * 3
    # float32 solver: equal to the no-autocast value (bf16 matmuls move it by ~1e-3)
    for name in ("align", "centroid_sq", "distribution_sq"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-6, atol=1e-7)
    assert torch.equal(got.contrastive, clip)  # L_CLIP runs as open_clip runs it, autocast on
    assert not torch.allclose(got.contrastive, want.contrastive, rtol=1e-6, atol=0)


def test_grad_norms_for_w_are_unscaled_under_a_grad_scaler(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _, tokenizer = create_model("cma-micro")
    model.train()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = tokenizer([f"a {c} shape" for c in ("red", "blue", "green", "pink")] * 4)
    loss = CMALoss(weight=0.0, blur=0.1)
    trainer = Trainer(
        model, loss, Curriculum(CurriculumConfig(), 10), torch.optim.AdamW(model.parameters()),
        base_lr=1e-3, warmup=1, device=torch.device("cpu"), output=tmp_path,
        precision=precision_spec("amp_fp16", "cpu"),
    )  # fmt: skip
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    out = model(images, tokens)
    terms = loss.terms(out[0], out[1], out[2])
    want = [grad_norm(t, trainer.shared) for t in (terms.contrastive, terms.align)]
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 1024.0})
    with trainer.precision.autocast():
        out = model(images, tokens)
        terms = loss.terms(out[0], out[1], out[2])
    assert out[0].dtype == torch.float16
    got = trainer._grad_norms(terms)
    assert got == pytest.approx(want, rel=2e-2)


# ---------------------------------------------------------------- runs


def test_bf16_run_closes_the_gap_like_fp32(fp32_and_bf16) -> None:
    (fp32, fp32_out), (bf16, bf16_out) = fp32_and_bf16["fp32"], fp32_and_bf16["amp_bf16"]
    assert bf16["precision"] == "amp_bf16" and bf16["autocast_dtype"] == "bfloat16"
    assert fp32["precision"] == "fp32" and fp32["autocast_dtype"] is None
    saved = json.loads((bf16_out / "metrics.json").read_text())
    assert (saved["precision"], saved["torchcompile"], saved["grad_scaler"]) == (
        "amp_bf16", False, False,
    )  # fmt: skip
    assert bf16["skipped_steps"] == 0
    losses = [r["loss_total"] for r in history(bf16_out) if "loss_total" in r]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    reference = gap_reduction(fp32_out)
    assert reference > 0.3  # the comparison means something: fp32 closes the gap
    assert abs(gap_reduction(bf16_out) - reference) < GAP_REDUCTION_TOL


def test_torchcompile_run_matches_eager_first_step(fp32_and_bf16, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(runner.COMPILE_BACKEND_ENV, "aot_eager")
    out = tmp_path / "compiled"
    metrics = runner.run(config(out, precision="fp32", torchcompile=True, steps=2))
    assert (metrics["torchcompile"], metrics["torchcompile_backend"]) == (True, "aot_eager")
    compiled = [r["loss_total"] for r in history(out)]
    eager = [r["loss_total"] for r in history(fp32_and_bf16["fp32"][1])]
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert len(compiled) == 2 and all(map(torch.isfinite, torch.tensor(compiled)))
    keys = load_checkpoint(out / LAST)["model"].keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)  # the bare model was saved


def test_compiled_model_unwraps_to_the_bare_model() -> None:
    model, _, _ = create_model("cma-micro")
    assert unwrap(torch.compile(model, backend="eager")) is model


def test_low_precision_weights_run_with_probe(tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    metrics = runner.run(config(out, precision="bf16", steps=2, probe_every=2))
    assert metrics["weights_dtype"] == "bfloat16" and metrics["skipped_steps"] == 0
    state = load_checkpoint(out / LAST)
    assert state["model"]["text_projection"].dtype == torch.bfloat16
    gaps = [r["gap_total"] for r in state["history"] if "gap_total" in r]  # steps 0 and 2
    assert len(gaps) == 2 and all(map(torch.isfinite, torch.tensor(gaps)))


class _EagerScaler(torch.amp.GradScaler):
    """A GradScaler whose scale moves every step (doubling; halving on overflow), so that its
    state after a few steps differs from a fresh one."""

    def __init__(self, device: str = "cpu") -> None:
        super().__init__(device, init_scale=2.0**14, growth_interval=1)


def test_fp16_scaler_skips_overflows_and_resumes_its_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(precision_mod, "GradScaler", _EagerScaler)
    original = EmbeddedBatches.iterate

    def killed_at_step_3(self, start, stop):
        for item in original(self, start, stop):
            if item[0] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    monkeypatch.setattr(EmbeddedBatches, "iterate", killed_at_step_3)
    out = tmp_path / "fp16"
    cfg = config(out, precision="amp_fp16", steps=6, probe_every=50, max_bad_steps=6)
    with pytest.raises(Interrupted):
        runner.run(cfg)
    saved = load_checkpoint(out / LAST)
    assert saved["step"] == 4
    saved_scale = saved["scaler"]["scale"]
    assert saved_scale != 2.0**14  # the state moved: a fresh scaler would differ
    monkeypatch.setattr(EmbeddedBatches, "iterate", original)

    metrics = runner.run(config(out, precision="amp_fp16", steps=6, probe_every=50,
                                max_bad_steps=6, resume="auto"))  # fmt: skip
    assert metrics["grad_scaler"] is True
    rows = history(out)
    assert [r["step"] for r in rows] == list(range(6))
    scales = [r["grad_scale"] for r in rows]
    # every step doubles the scale, every overflow halves it and is skipped and counted
    previous = [2.0**14, *scales[:-1]]
    for row, before, after in zip(rows, previous, scales, strict=True):
        assert after == (before / 2 if row["skipped"] else before * 2), row
    # (the chain runs through step 4, the first resumed one: a fresh scaler would break it)
    assert any(r["skipped"] for r in rows)  # at least one overflow happened
    assert metrics["skipped_steps"] == sum(r["skipped"] for r in rows)
    assert all(torch.isfinite(t).all() for t in load_checkpoint(out / LAST)["model"].values())
