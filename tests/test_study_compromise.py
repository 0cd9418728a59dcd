"""The study's α = 0 controls: alignment effect per seed, where the compromise appears, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cma.study import aggregate as agg
from cma.study import execute as ex
from cma.study.plan import StudyConfig, Variant
from cma.study.report import build_summary, compromise_markdown, write_outputs

ALPHAS = (0.05, 0.1, 0.5, 1.0)


def metrics(gt: float, zs: float, *, floor: float = 0.3, ari: float = 0.8) -> dict[str, float]:
    return {
        "gap_raw": gt * 1.1,
        "gap_centroid": 0.5 * gt,
        "gap_distribution": 0.8 * gt,
        "gap_total": gt,
        "gap_paraphrase": floor,
        "zeroshot_top1": zs,
        "retrieval_i2t_r1": zs - 0.1,
        "retrieval_t2i_r1": zs - 0.4,
        "ari": ari,
        "ari_std": 0.01,
        "cider": 1.5 * ari,
    }


def records(drops: dict[float, float]) -> list[dict]:
    """Base (gap 0.8), a control per seed that fine-tuned (gap 0.7, zero-shot 0.95) and runs
    that close the gap with α and lose ``drops[α]`` zero-shot points against the control."""
    base = metrics(0.8, 0.90, ari=0.70)
    recs = [ex._record(Variant("base", s), base, base, 1.0, False) for s in range(3)]
    for s in range(3):
        control = metrics(0.7 + 0.01 * s, 0.95)
        recs.append(ex._record(Variant("tpc", s, alpha=0.0), control, base, 1.0, False))
        for a in ALPHAS if s == 0 else (0.5,):
            gt = 0.3 + 0.4 / (1 + 10 * a) + 0.01 * s
            zs = 0.95 - drops[a] / 100
            run = metrics(gt, zs, ari=0.9)
            recs.append(ex._record(Variant("tpc", s, alpha=a), run, base, 1.0, False))
    ex.attach_controls(recs)
    return recs


def test_effect_is_per_seed_against_the_control() -> None:
    groups = agg.summarize(records({0.05: 0.2, 0.1: 0.5, 0.5: 2.0, 1.0: 4.0}))
    g = groups["tpc-a0.5"]
    assert g["control_seeds"] == [0, 1, 2] and g["label"] == "TPC-CMA α=0.5"
    assert groups["tpc-control"]["label"] == "α=0 control"
    gt = 0.3 + 0.4 / 6
    per_seed = [100 * ((0.7 + 0.01 * s) - (gt + 0.01 * s)) / (0.7 + 0.01 * s) for s in range(3)]
    assert g["effect"]["gap_reduction_pct"] == pytest.approx(sum(per_seed) / 3)
    excess = [100 * (0.4 + 0.01 * s - (gt - 0.3 + 0.01 * s)) / (0.4 + 0.01 * s) for s in range(3)]
    assert g["effect"]["gap_excess_reduction_pct"] == pytest.approx(sum(excess) / 3)
    assert g["effect"]["zeroshot_top1_drop_points"] == pytest.approx(2.0)
    # against the base model the same run *gains* zero-shot: the fine-tune's doing
    assert g["change"]["zeroshot_top1_drop_points"] == pytest.approx(-3.0)
    assert g["metrics"]["gap_excess"] == pytest.approx(gt + 0.01 - 0.3)
    assert groups["base"]["effect"] == {}


def test_compromise_found_at_the_first_alpha_that_costs_a_point() -> None:
    groups = agg.summarize(records({0.05: 0.2, 0.1: 0.5, 0.5: 2.0, 1.0: 4.0}))
    comp = agg.compromise(groups)
    assert [r["alpha"] for r in comp["rows"]] == list(ALPHAS)
    assert comp["first"]["alpha"] == 0.5 and comp["first"]["task"] == "zeroshot_top1"
    assert comp["first"]["drop_points"] == pytest.approx(2.0)
    text = compromise_markdown(comp)
    assert "The compromise appears at α = 0.5" in text and "zeroshot_top1 falls 2.00" in text
    none = agg.compromise(agg.summarize(records(dict.fromkeys(ALPHAS, 0.5))))
    assert none["first"] is None and "No compromise within the α range" in compromise_markdown(none)
    assert not agg.compromise({})["available"]
    noisy = {"kind": "tpc", "alpha": 0.5, "effect": {"zeroshot_top1_drop_points": 1.5},
             "effect_std": {"zeroshot_top1_drop_points": 2.0}}  # fmt: skip
    assert agg.compromise({"tpc-a0.5": noisy})["first"] is None  # within the seed noise
    noisy["effect_std"]["zeroshot_top1_drop_points"] = 0.5
    assert agg.compromise({"tpc-a0.5": noisy})["first"]["alpha"] == 0.5


def test_study_outputs_with_controls(tmp_path: Path) -> None:
    cfg = StudyConfig(output=str(tmp_path), alphas=ALPHAS, constant_alphas=(), baselines=())
    summary = build_summary(cfg, records({0.05: 0.2, 0.1: 0.5, 0.5: 2.0, 1.0: 4.0}))
    paths = write_outputs(tmp_path, summary)
    for key in ("compromise", "tradeoff", "gaps", "md", "json"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    md = paths["md"].read_text()
    assert "### The alignment effect: against the α = 0 control" in md
    assert "| TPC-CMA α=0.5 | 0,1,2 |" in md and "![compromise](compromise.png)" in md
    assert "4. **The compromise appears at α = 0.5**" in md
    assert "| ours (vs base) | ours (vs α=0 control) |" in md
    data = json.loads(paths["json"].read_text())
    rows = {r["quantity"]: r for r in data["paper"]}
    g = data["groups"]["tpc-a0.5"]
    row = rows["gap reduction at α=0.5"]
    assert row["vs_control"] == pytest.approx(g["effect"]["gap_reduction_pct"])
    assert row["ours"] == pytest.approx(g["change"]["gap_reduction_pct"])
    ari = rows["ARI of the base model (vs control: of the control)"]
    assert ari["ours"] == pytest.approx(0.7) and ari["vs_control"] == pytest.approx(0.8)
    assert rows["excess gap closed at α=0.5 (G_T − paraphrase floor)"]["vs_control"] > 0


def test_geometric_claim_compares_the_alignment_effect_with_centring() -> None:
    recs = records({0.05: 0.2, 0.1: 0.5, 0.5: 2.0, 1.0: 4.0})
    base = recs[0]["metrics"]
    cent = dict(base, gap_centroid=0.0, gap_total=0.64, cider=1.5 * 0.75)
    recs.append(ex._record(Variant("baseline", 0, baseline="centering"), cent, base, 1.0, False))
    geo = agg.geometric_claim(agg.summarize(recs))
    effect = agg.summarize(recs)["tpc-a0.5"]["effect"]
    assert geo["tpc_against"] == "control"
    assert geo["gains"]["zeroshot_top1"]["tpc"] == pytest.approx(-2.0)  # vs control, not +3
    assert geo["gains"]["ari"]["tpc"] == pytest.approx(-effect["ari_drop_points"])
    assert geo["gains"]["ari"]["centering"] == pytest.approx(0.0)
