"""The reproduction study (cma.study): aggregation math, resumability, outputs, a tiny run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

import cma.train.runner as train_runner
from cma.study import aggregate as agg
from cma.study import execute as ex
from cma.study.cli import build_parser, config_from_args, main
from cma.study.plan import StudyConfig, Variant, build_plan, train_config
from cma.study.report import build_summary, fmt_pm, write_outputs

TASKS = ("zeroshot_top1", "retrieval_i2t_r1", "retrieval_t2i_r1", "ari", "cider")


def metrics(gd: float, gc: float, *, task: float | None = None, noise: float = 0.0) -> dict:
    """Synthetic METRICS: tasks decrease linearly with the distribution gap G_D."""
    quality = (1.0 - gd) if task is None else task
    gt = math.sqrt(gc**2 + gd**2)
    out = {
        "gap_raw": 1.2 * gt + 0.3 * gc,
        "gap_centroid": gc,
        "gap_distribution": gd,
        "gap_total": gt,
        "ari_std": 0.01,
    }
    out.update({t: quality * (0.9 if t != "cider" else 2.0) + noise for t in TASKS})
    return out


def record(v: Variant, m: dict, ref: dict, seconds: float = 1.0) -> dict:
    return ex._record(v, m, ref, seconds, False)


def synthetic_records() -> list[dict]:
    base = metrics(0.5, 0.8)
    recs = [record(Variant("base", s), base, base) for s in range(3)]
    cent = metrics(0.5, 0.0, task=0.52)
    recs.append(record(Variant("baseline", 0, baseline="centering"), cent, base))
    for i, a in enumerate((0.05, 0.1, 0.5, 1.0)):
        seeds = range(3) if a in (0.05, 0.5) else range(1)
        for s in seeds:
            m = metrics(0.5 - 0.1 * (i + 1), 0.8 / (i + 2), noise=0.002 * s)
            recs.append(record(Variant("tpc", s, alpha=a), m, base))
    recs.append(record(Variant("constant", 0, alpha=0.5), metrics(0.2, 0.3), base))
    return recs


# ------------------------------------------------------------------------------- aggregation
def test_mean_std_is_the_sample_std_and_skips_nan() -> None:
    assert agg.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    mean, std = agg.mean_std([4.0, None, math.nan])
    assert mean == 4.0 and math.isnan(std)
    assert all(math.isnan(v) for v in agg.mean_std([]))


def test_summary_changes_are_per_seed_then_averaged() -> None:
    base = {"gap_total": 2.0, "zeroshot_top1": 0.8, "cider": 1.0}
    after = [
        {"gap_total": 1.0, "zeroshot_top1": 0.7, "cider": 1.5},
        {"gap_total": 0.5, "zeroshot_top1": 0.6, "cider": 2.0},
    ]
    recs = [record(Variant("tpc", s, alpha=0.5), after[s], base) for s in range(2)]
    g = agg.summarize(recs)["tpc-a0.5"]
    assert g["n"] == 2 and g["seeds"] == [0, 1]
    assert g["metrics"]["gap_total"] == pytest.approx(0.75)
    assert g["metrics_std"]["gap_total"] == pytest.approx(math.sqrt(0.125))
    assert g["change"]["gap_reduction_pct"] == pytest.approx((50 + 75) / 2)
    assert g["change_std"]["gap_reduction_pct"] == pytest.approx(math.sqrt(2 * 12.5**2))
    assert g["change"]["zeroshot_top1_drop_points"] == pytest.approx(15.0)
    assert g["change"]["zeroshot_top1_drop_rel_pct"] == pytest.approx(100 * 0.15 / 0.8)
    assert g["change"]["cider_drop_rel_pct"] == pytest.approx(-75.0)


def test_claims_on_synthetic_variants() -> None:
    groups = agg.summarize(synthetic_records())
    assert list(groups)[:2] == ["base", "centering"]
    assert agg.strongest(groups) == "tpc-a1"
    geo = agg.geometric_claim(groups)
    assert geo["available"] and geo["gd_unchanged"]
    assert geo["centering_gc_reduction_pct"] == pytest.approx(100.0)
    assert geo["tasks_less_than_tpc"]
    r2 = agg.r2_tables(groups)
    claim = agg.r2_claim(r2["all"])
    assert claim["holds"] and claim["wins"] == claim["of"] == len(TASKS)
    assert claim["mean_distribution"] > 0.99 > claim["mean_raw"]
    rows = {r["quantity"]: r for r in agg.paper_comparison(groups, r2["all"])}
    assert rows["gap reduction at α=0.5"]["paper"] == 82.3
    assert math.isfinite(rows["gap reduction at α=0.5"]["ours"])
    assert math.isfinite(rows["gap reduction at α=0.5"]["ours_std"])


def test_plan_seeds_and_names() -> None:
    cfg = StudyConfig(output="x", quick=True)
    plan = build_plan(cfg)
    names = [v.name for v in plan]
    # α runs + multi-seed runs + constant + one control per (schedule, seed) + base + baselines
    assert len(names) == len(set(names)) == 5 + 2 * 2 + 2 + (3 + 1) + 3 + 3
    assert {"tpc-a0.05-s2", "tpc-a0.5-s2", "constant-a0.05-s0", "base-s2"} <= set(names)
    assert {"tpc-control-s0", "tpc-control-s1", "tpc-control-s2", "constant-control-s0"} <= set(
        names
    )
    assert "tpc-a0.1-s1" not in names and "constant-control-s1" not in names
    assert names.index("tpc-a0.5-s0") < names.index("base-s0") < names.index("centering-s0")
    # each control runs before the runs it is the control of
    assert names.index("tpc-control-s1") < names.index("tpc-a0.05-s1")
    assert names.index("constant-control-s0") < names.index("constant-a0.05-s0")
    assert len(build_plan(StudyConfig(output="x", controls=False))) == len(names) - 4
    control = train_config(cfg, Variant("tpc", 2, alpha=0.0))
    assert control.run_name == "tpc-control-s2" and control.alpha_target == 0
    assert Path(control.output) == Path("x/runs/tpc-control-s2")
    tc = train_config(cfg, Variant("tpc", 1, alpha=0.5))
    assert tc.run_name == "tpc-a0.5-s1" and tc.model == "cma-micro" and tc.resume == "auto"
    assert Path(tc.output) == Path("x/runs/tpc-a0.5-s1")
    with pytest.raises(ValueError, match="set by the study"):
        StudyConfig(train={"seed": 3})


def test_cli_pass_through() -> None:
    args = build_parser().parse_args(
        [
            "--steps",
            "50",
            "--model",
            "cma-tiny",
            "--set",
            "lr=2e-4",
            "--set",
            "anchor_frac=0.2",
            "--no-captioning",
            "--seeds",
            "2",
            "--alphas",
            "0.1",
            "0.5",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.train == {
        "steps": 50,
        "model": "cma-tiny",
        "lr": 2e-4,
        "anchor_frac": 0.2,
        "captioning": False,
    }
    assert cfg.seeds == 2 and cfg.alphas == (0.1, 0.5)
    assert main(["--set", "nonsense=1", "--output", "/nonexistent/x"]) == 2


# --------------------------------------------------------------------------------- outputs
def test_markdown_and_json_outputs(tmp_path: Path) -> None:
    cfg = StudyConfig(
        output=str(tmp_path),
        alphas=(0.05, 0.1, 0.5, 1.0),
        constant_alphas=(0.5,),
        baselines=("centering",),
    )
    summary = build_summary(
        cfg, synthetic_records(), command="python -m cma.study --x", wall_seconds=12.0
    )
    paths = write_outputs(tmp_path, summary)
    for key in ("json", "md", "tradeoff", "gaps", "scatter", "r2"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    md = paths["md"].read_text()
    assert "python -m cma.study --x" in md
    assert "| TPC-CMA α=0.5 | 0,1,2 |" in md
    assert "| centering | 0 |" in md
    assert " ± " in md and "**holds**" in md and "| R² |" in md
    assert "![tradeoff](tradeoff.png)" in md and "82.3 %" in md
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert data["groups"]["tpc-a0.05"]["n"] == 3
    assert data["claims"]["geometric"]["gd_unchanged"] is True
    assert data["claims"]["r2"]["holds"] is True
    assert data["groups"]["centering"]["metrics_std"]["gap_total"] is None
    assert fmt_pm(0.5, math.nan) == "0.500" and fmt_pm(None) == "—"


# ---------------------------------------------------------------------------- resumability
def fake_train_run(calls: list[str]):
    def run(cfg):
        calls.append(cfg.run_name)
        base = metrics(0.5, 0.8)
        after = metrics(0.5 - 0.3 * cfg.alpha_target, 0.8 * (1 - cfg.alpha_target))
        data = {
            "backend": "reference",
            "alpha_target": cfg.alpha_target,
            "schedule": cfg.schedule,
            "before": base,
            "after": after,
            "seconds": 1.0,
            "config": cfg.as_dict(),
        }
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output) / "metrics.json").write_text(json.dumps(data))
        return data

    return run


def test_finished_variants_are_reused(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(train_runner, "run", fake_train_run(calls))
    cfg = StudyConfig(
        output=str(tmp_path / "study"),
        alphas=(0.05, 0.5),
        constant_alphas=(0.5,),
        seeds=2,
        baselines=(),
        progress=False,
        train={"steps": 7},
    )
    # one variant finished earlier (e.g. before an interruption)
    fake_train_run([])(train_config(cfg, Variant("tpc", 0, alpha=0.05)))
    records, failures, _ = ex.execute(cfg, say=lambda _: None)
    assert not failures
    assert sorted(calls) == [
        "constant-a0.5-s0",
        "constant-control-s0",
        "tpc-a0.05-s1",
        "tpc-a0.5-s0",
        "tpc-a0.5-s1",
        "tpc-control-s0",
        "tpc-control-s1",
    ]
    by_name = {r["variant"]: r for r in records}
    assert by_name["tpc-a0.05-s0"]["reused"] and not by_name["tpc-a0.5-s0"]["reused"]
    # every run is given the metrics of its control (same schedule and seed)
    assert by_name["tpc-a0.5-s1"]["control"] == by_name["tpc-control-s1"]["metrics"]
    assert by_name["constant-a0.5-s0"]["control"] == by_name["constant-control-s0"]["metrics"]
    # the base model's metrics are the runs' `before`, written as variants of their own
    assert by_name["base-s1"]["metrics"] == pytest.approx(metrics(0.5, 0.8))
    assert (tmp_path / "study" / "runs" / "base-s1" / "metrics.json").is_file()

    calls.clear()
    records2, _, _ = ex.execute(cfg, say=lambda _: None)
    assert calls == [] and all(r["reused"] for r in records2)
    assert len(records2) == len(records) == 10

    changed = StudyConfig(**{**cfg.__dict__, "train": {"steps": 8}})
    with pytest.raises(ex.StudyError, match=r"other settings.*steps"):
        ex.execute(changed, say=lambda _: None)


def test_parallel_runs_wait_for_their_control(tmp_path: Path, monkeypatch) -> None:
    """--jobs 2: at most two runs at a time, each run starts after its control has finished,
    and a diverged run is reported while the others go on (threads stand in for processes)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from cma.study import parallel
    from cma.train.loop import TrainingDiverged

    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    live = [0, 0]  # running now, most at once

    def fake_train(study: StudyConfig, v: Variant) -> dict:
        assert study.progress is False  # workers' progress bars are off
        with lock:
            events.append(("start", v.name))
            live[0] += 1
            live[1] = max(live)
        time.sleep(0.02)
        with lock:
            live[0] -= 1
            events.append(("end", v.name))
        if v.name == "tpc-a0.05-s1":
            raise TrainingDiverged("too many non-finite steps")
        return {"variant": v.name}

    def pool(n: int, **_kw) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(n)

    monkeypatch.setattr(parallel, "_train", fake_train)
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(parallel, "_init_worker", lambda threads: None)
    cfg = StudyConfig(
        output=str(tmp_path), alphas=(0.05, 0.5), constant_alphas=(0.5,), seeds=2, baselines=()
    )
    runs = [v for v in build_plan(cfg) if v.trains]
    done: dict[str, str | None] = {}
    parallel.train_parallel(cfg, runs, 2, lambda v: None, lambda v, r, e: done.update({v.name: e}))
    assert set(done) == {v.name for v in runs} and len(runs) == 8
    assert done["tpc-a0.05-s1"] == "too many non-finite steps"
    assert [k for k, e in done.items() if e] == ["tpc-a0.05-s1"]
    assert live[1] == 2
    for v in runs:
        if not v.is_control:
            control = parallel.control_of(v).name
            assert events.index(("end", control)) < events.index(("start", v.name)), v.name
    with pytest.raises(ValueError, match="jobs"):
        parallel.resolve_jobs(0, None)
    assert parallel.resolve_jobs("auto", "cuda") == 1


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ex, "QUICK_PRETRAIN", replace(ex.QUICK_PRETRAIN, steps=4))
    out = tmp_path / "study"
    argv = [
        "--quick",
        "--quiet",
        "--output",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--alphas",
        "0.5",
        "--constant-alphas",
        "0.5",
        "--seeds",
        "1",
        "--jobs",
        "2",
        "--baselines",
        "centering",
        "--steps",
        "3",
        "--eval-test-images",
        "32",
        "--eval-train-images",
        "32",
        "--no-captioning",
        "--set",
        "train_size=64",
        "--set",
        "batch_size=16",
    ]
    assert main(argv) == 0
    data = json.loads((out / "study.json").read_text())
    assert list(data["groups"]) == [
        "base",
        "centering",
        "tpc-control",
        "tpc-a0.5",
        "constant-control",
        "constant-a0.5",
    ]
    assert data["groups"]["tpc-a0.5"]["effect"]  # against the control
    assert data["groups"]["constant-a0.5"]["effect"]  # trained in a worker process
    report = (out / "runs" / "tpc-a0.5-s0" / "report.md").read_text()
    assert "control" in report  # the run found its control, trained before it
    assert data["claims"]["compromise"]["available"]
    assert data["r2"]["all"] and data["claims"]["geometric"]["gd_unchanged"]
    for name in ("study.md", "tradeoff.png", "compromise.png", "pca.png", "gap_task_scatter.png"):
        assert (out / name).is_file(), name
    assert main([*argv, "--report-only"]) == 0
