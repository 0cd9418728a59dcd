"""The study's outputs: ``study.json`` (everything), ``study.md`` (tables, verdicts, plots), PNGs.

Everything here works from the summary dict that :func:`build_summary` makes (and study.json
stores), so a report can be rebuilt without the models.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cma.eval._common import FLOOR_KEY, GAP_KEYS
from cma.eval.analysis import r2_matrix_markdown
from cma.eval.report import plot_bars, plot_pca, plt
from cma.study.aggregate import (
    HEADLINE_TASKS,
    compromise,
    geometric_claim,
    paper_comparison,
    r2_claim,
    r2_tables,
    strongest,
    summarize,
)
from cma.study.plan import PAPER, StudyConfig

STUDY_VERSION = 1
TIME_TARGET_S = 3600.0


def clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(v, Mapping):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def fmt_pm(mean: Any, std: Any = None, digits: int = 3, sign: bool = False) -> str:
    """``"0.512 ± 0.013"`` (std shown when finite), ``"—"`` for a missing value."""
    m, s = _f(mean), _f(std)
    if not math.isfinite(m):
        return "—"
    if abs(m) < 0.5 * 10**-digits:
        m = 0.0  # no "-0.0"
    text = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
    return f"{text} ± {s:.{digits}f}" if math.isfinite(s) else text


def build_summary(
    study: StudyConfig,
    records: Sequence[Mapping[str, Any]],
    *,
    command: str = "",
    wall_seconds: float = math.nan,
    failures: Sequence[str] = (),
    jobs: int = 1,
    elapsed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The study.json content from finished variant records.

    The study's time (target ≤ 60 min) is the wall-clock of this call when it ran every
    variant itself; when it reused some, the estimate Σ training time / ``jobs`` + Σ evaluation
    time; ``elapsed`` (``{"seconds", "basis"}``) keeps an earlier call's figure (--report-only).
    """
    groups = summarize(records)
    r2 = r2_tables(groups) if groups else {"all": [], "trained": []}
    settings = study.train_settings()
    compute = math.fsum(float(r.get("seconds") or 0.0) for r in records)
    if elapsed is None:
        if records and not any(r.get("reused") for r in records) and math.isfinite(wall_seconds):
            elapsed = {
                "seconds": wall_seconds,
                "basis": f"wall-clock, {jobs} training run(s) at a time",
            }
        else:
            train = math.fsum(
                float(r.get("seconds") or 0.0)
                for r in records
                if r.get("kind") in ("tpc", "constant")
            )
            elapsed = {
                "seconds": train / jobs + (compute - train),
                "basis": f"estimated: training time / {jobs} + evaluation time (variants reused)",
            }
    return {
        "study_version": STUDY_VERSION,
        "command": command,
        "config": dataclasses.asdict(study),
        "train_settings": settings,
        "model": settings.get("model") or "cma-tiny (embedded base)",
        "dataset": settings.get("dataset_type", "embedded"),
        "variants": {str(r["variant"]): dict(r) for r in records},
        "groups": groups,
        "r2": r2,
        "claims": {
            "compromise": compromise(groups),
            "geometric": geometric_claim(groups),
            "r2": r2_claim(r2["all"]) if r2["all"] else None,
            "r2_trained": r2_claim(r2["trained"]) if r2["trained"] else None,
            "time": {
                "compute_seconds": compute,
                "elapsed_seconds": float(elapsed["seconds"]),
                "basis": str(elapsed["basis"]),
                "target_seconds": TIME_TARGET_S,
                "holds": float(elapsed["seconds"]) <= TIME_TARGET_S,
            },
        },
        "paper": paper_comparison(groups, r2["all"]),
        "timing": {
            "compute_seconds": compute,
            "wall_seconds_this_call": wall_seconds,
            "per_variant": {str(r["variant"]): r.get("seconds") for r in records},
        },
        "strongest": strongest(groups),
        "failures": list(failures),
    }


# ------------------------------------------------------------------------------------ tables
def variants_table(groups: Mapping[str, Mapping[str, Any]]) -> str:
    """The main table: one row per variant, mean ± std over its seeds."""
    head = [
        "variant",
        "seeds",
        "G_T",
        "gap red. %",
        "G_D red. %",
        "zero-shot top-1",
        "ZS drop (pts)",
        "ZS drop (rel %)",
        "ARI",
        "CIDEr",
        "CIDEr Δ %",
        "R@1 i2t",
        "R@1 t2i",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * (len(head) - 2) + "|"]
    for g in groups.values():
        m, ms, c, cs = g["metrics"], g["metrics_std"], g["change"], g["change_std"]
        cider = -_f(c.get("cider_drop_rel_pct"))
        cells = [
            str(g["label"]),
            ",".join(map(str, g["seeds"])),
            fmt_pm(m.get("gap_total"), ms.get("gap_total"), 4),
            fmt_pm(c.get("gap_reduction_pct"), cs.get("gap_reduction_pct"), 1),
            fmt_pm(
                c.get("gap_distribution_reduction_pct"), cs.get("gap_distribution_reduction_pct"), 1
            ),
            fmt_pm(m.get("zeroshot_top1"), ms.get("zeroshot_top1")),
            fmt_pm(c.get("zeroshot_top1_drop_points"), cs.get("zeroshot_top1_drop_points"), 2),
            fmt_pm(c.get("zeroshot_top1_drop_rel_pct"), cs.get("zeroshot_top1_drop_rel_pct"), 1),
            fmt_pm(m.get("ari"), ms.get("ari")),
            fmt_pm(m.get("cider"), ms.get("cider")),
            fmt_pm(cider, cs.get("cider_drop_rel_pct"), 1, sign=True),
            fmt_pm(m.get("retrieval_i2t_r1"), ms.get("retrieval_i2t_r1")),
            fmt_pm(m.get("retrieval_t2i_r1"), ms.get("retrieval_t2i_r1")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gaps_table(groups: Mapping[str, Mapping[str, Any]]) -> str:
    """All four gaps per variant (absolute, embedding units) and their reductions in %."""
    short = {"gap_raw": "G_R", "gap_centroid": "G_C", "gap_distribution": "G_D", "gap_total": "G_T"}
    head = [
        "variant",
        *short.values(),
        "floor",
        "excess",
        *(f"{s} red. %" for s in short.values()),
        "excess red. %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for g in groups.values():
        m, ms, c, cs = g["metrics"], g["metrics_std"], g["change"], g["change_std"]
        cells = [str(g["label"])]
        cells += [fmt_pm(m.get(k), ms.get(k), 4) for k in (*GAP_KEYS, FLOOR_KEY, "gap_excess")]
        cells += [
            fmt_pm(c.get(f"{k}_reduction_pct"), cs.get(f"{k}_reduction_pct"), 1)
            for k in (*GAP_KEYS, "gap_excess")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def effect_table(groups: Mapping[str, Mapping[str, Any]]) -> str:
    """The alignment effect: each training variant against its α = 0 control (same seeds)."""
    head = [
        "variant",
        "seeds",
        "G_T red. %",
        "excess gap closed %",
        "G_D red. %",
        "Δ zero-shot (pts)",
        "Δ R@1 i2t (pts)",
        "Δ R@1 t2i (pts)",
        "Δ ARI (pts)",
        "Δ CIDEr %",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---:" + "|---:" * (len(head) - 2) + "|"]
    for g in groups.values():
        e, es = g.get("effect") or {}, g.get("effect_std") or {}
        if not e or g.get("alpha") in (None, 0, 0.0):
            continue

        def gain(key: str, suffix: str = "_drop_points", e=e, es=es) -> str:
            return fmt_pm(-_f(e.get(key + suffix)), es.get(key + suffix), 2, sign=True)

        cells = [
            str(g["label"]),
            ",".join(map(str, g.get("control_seeds", g["seeds"]))),
            fmt_pm(e.get("gap_reduction_pct"), es.get("gap_reduction_pct"), 1),
            fmt_pm(e.get("gap_excess_reduction_pct"), es.get("gap_excess_reduction_pct"), 1),
            fmt_pm(
                e.get("gap_distribution_reduction_pct"), es.get("gap_distribution_reduction_pct"), 1
            ),
            gain("zeroshot_top1"),
            gain("retrieval_i2t_r1"),
            gain("retrieval_t2i_r1"),
            gain("ari"),
            fmt_pm(-_f(e.get("cider_drop_rel_pct")), es.get("cider_drop_rel_pct"), 1, sign=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def paper_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Quantity | the paper's figure (as published) | ours against the base model | ours against
    the α = 0 control (mean ± std where seeded)."""
    lines = [
        "| quantity | paper | ours (vs base) | ours (vs α=0 control) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        unit = r.get("unit") or ""
        digits = {"%": 1, "pts": 2}.get(unit, 3)
        paper = f"{_f(r['paper']):g}" + (" %" if unit else "")
        cells = []
        for key in ("ours", "vs_control"):
            text = fmt_pm(r.get(key), r.get(f"{key}_std" if key != "ours" else "ours_std"), digits)
            cells.append(text + (f" {unit}" if text != "—" and unit else ""))
        lines.append(f"| {r['quantity']} | {paper} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def compromise_markdown(comp: Mapping[str, Any]) -> str:
    """One sentence: at which α aligning starts to cost accuracy (against the control)."""
    if not comp.get("available"):
        return (
            "Where the compromise appears: n/a (no TPC-CMA run has its α = 0 control; "
            "run the study with controls)."
        )
    thr = comp["threshold_points"]
    first = comp["first"]
    steps = "; ".join(
        f"α={r['alpha']:g}: gap −{r['gap_reduction_pct']:.1f} %, excess −"
        f"{r['gap_excess_reduction_pct']:.1f} %, "
        + ", ".join(
            f"{t.replace('retrieval_', 'R@1 ').replace('_r1', '')} {0.0 - d:+.2f}"
            for t, d in r["drops"].items()
        )
        for r in comp["rows"]
    )
    if first is None:
        head = (
            f"**No compromise within the α range**: no α costs more than {thr:g} point (and "
            "more than the seed std) of zero-shot or R@1 against the α = 0 control"
        )
    else:
        head = (
            f"**The compromise appears at α = {first['alpha']:g}**: {first['task']} falls "
            f"{first['drop_points']:.2f} points below the α = 0 control (more than {thr:g} and "
            "than the seed std) "
            f"while the gap is {first['gap_reduction_pct']:.1f} % smaller than the "
            f"control's ({first['gap_excess_reduction_pct']:.1f} % of the excess over the "
            "paraphrase floor closed)"
        )
    return f"{head}. Against the control (points, + = better): {steps}."


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**holds**" if ok else "**missed**")


def _against(geo: Mapping[str, Any]) -> str:
    return "its α = 0 control" if geo.get("tpc_against") == "control" else "the base model"


def claims_markdown(summary: Mapping[str, Any]) -> list[str]:
    """The issue's targets with the measured figures and a verdict each."""
    claims, md = summary["claims"], []
    geo = claims["geometric"]
    if geo["available"]:
        md.append(
            f"1. **Post-hoc centring leaves the distribution gap unchanged** — "
            f"{_verdict(geo['gd_unchanged'])}: centring changes G_D by "
            f"{fmt_pm(geo['centering_gd_reduction_pct'], None, 2)} % (G_C by "
            f"{fmt_pm(geo['centering_gc_reduction_pct'], None, 1)} %), TPC-CMA at "
            f"α={geo['alpha']:g} by {fmt_pm(geo['tpc_gd_reduction_pct'], None, 1)} % (against "
            f"{_against(geo)})."
        )
        gains = "; ".join(
            f"{g['label']}: centring {fmt_pm(g['centering'], None, 2, sign=True)}, "
            f"TPC-CMA {fmt_pm(g['tpc'], None, 2, sign=True)}"
            for g in geo["gains"].values()
        )
        md.append(
            f"   **…and improves the tasks less than TPC-CMA at α={geo['alpha']:g}** — "
            f"{_verdict(geo['tasks_less_than_tpc'])} (ARI and CIDEr; centring against the base "
            f"model, TPC-CMA against {_against(geo)}): {gains}."
        )
    else:
        md.append("1. Geometric claim: n/a (needs the `centering` baseline and TPC-CMA α=0.5).")
    r2 = claims.get("r2")
    if r2:
        per = ", ".join(
            f"{t} {v['distribution']:.3f} vs {v['raw']:.3f}" for t, v in r2["per_task"].items()
        )
        md.append(
            f"2. **R² of task quality on the distribution gap exceeds R² on the raw gap** — "
            f"{_verdict(r2['holds'])}: mean over tasks {fmt_pm(r2['mean_distribution'])} vs "
            f"{fmt_pm(r2['mean_raw'])}; G_D higher for {r2['wins']} of {r2['of']} tasks "
            f"({per})."
        )
        r2t = claims.get("r2_trained")
        if r2t:
            md.append(
                f"   Trained variants only (no post-hoc baselines): mean R² "
                f"{fmt_pm(r2t['mean_distribution'])} vs {fmt_pm(r2t['mean_raw'])} "
                f"({r2t['wins']} of {r2t['of']} tasks) — {_verdict(r2t['holds'])}."
            )
    else:
        md.append("2. R² claim: n/a (fewer than 3 variants).")
    t = claims["time"]
    md.append(
        f"3. **The whole study takes ≤ 60 minutes here** — {_verdict(t['holds'])}: "
        f"{t.get('elapsed_seconds', t['compute_seconds']) / 60:.1f} min "
        f"({t.get('basis', 'variant time')}); {t['compute_seconds'] / 60:.1f} min of variant time "
        f"in all (training runs with their before/after evaluations, plus the evaluations done "
        f"by the study)."
    )
    md.append(f"4. {compromise_markdown(claims.get('compromise') or {})}")
    return md


def render_markdown(summary: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """study.md from the summary (and the names of the PNGs written beside it)."""
    groups = summary["groups"]
    cfg = summary["config"]
    timing = summary["timing"]
    settings = summary["train_settings"]
    n_runs = sum(1 for r in summary["variants"].values() if r["kind"] in ("tpc", "constant"))
    md = [f"# Reproduction study: TPC-CMA on {summary['model']} / {summary['dataset']}", ""]
    if summary.get("command"):
        md += ["Made by:", "", "```", summary["command"], "```", ""]
    md += [
        f"- variants: {len(groups)} ({len(summary['variants'])} runs/evaluations, {n_runs} "
        f"training runs); seeds: {cfg['seeds']} for the base model and α ∈ "
        f"{{{', '.join(f'{a:g}' for a in cfg['multi_seed_alphas'])}}}, one elsewhere",
        f"- trainer settings: {', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'}",
        f"- time: {timing['compute_seconds'] / 60:.1f} min of variant time in total; this call "
        f"{_f(timing['wall_seconds_this_call']) / 60:.1f} min wall-clock (finished variants "
        "are reused)",
    ]
    if summary.get("failures"):
        md += [f"- **failed/missing**: {f}" for f in summary["failures"]]
    md += [
        "",
        "## Results",
        "",
        "Mean ± std over seeds (sample std). Changes are against the base model evaluated "
        'with the same seed: gap reduction % of the total gap G_T ("the gap") and of the '
        "distribution gap G_D (positive = smaller gap); zero-shot drop in accuracy points "
        "and relative % (positive = worse); CIDEr Δ % relative (positive = better). A "
        "one-seed variant is compared with the base model's seed 0, so its absolute values are "
        "best read against the base model's seed-0 metrics in `study.json`.",
        "",
        variants_table(groups),
        "",
        "### All four gaps",
        "",
        "`floor` is `gap_paraphrase` (G_T between two captions of the same images, text against "
        "text); `excess` = G_T − floor, the part of the gap an alignment can close.",
        "",
        gaps_table(groups),
        "",
    ]
    effect = effect_table(groups)
    if effect:
        md += [
            "### The alignment effect: against the α = 0 control",
            "",
            "Each run against the control with the same schedule and seed (the same run with "
            "the alignment weight held at 0), per seed, then mean ± std: what the alignment "
            "did, without the fine-tune. Δ = run − control (points; CIDEr relative %); "
            "+ = better.",
            "",
            effect,
            "",
        ]
    md += ["## Targets", "", *claims_markdown(summary), ""]
    r2 = summary["r2"]
    if r2["all"]:
        md += [
            "## Gap ↔ task R²",
            "",
            f"Least-squares fit of each task metric on each gap metric, one point per variant "
            f"(seed means), n = {r2['all'][0]['n']}.",
            "",
            r2_matrix_markdown(r2["all"]),
            "",
        ]
        if r2["trained"]:
            md += [
                f"Trained variants only (base + training runs, n = {r2['trained'][0]['n']}):",
                "",
                r2_matrix_markdown(r2["trained"]),
                "",
            ]
    md += [
        "## Against the paper",
        "",
        "The paper's figures (arXiv 2604.00279) beside ours, against the base model and "
        "against the α = 0 control (the alignment effect without the fine-tune; for the base "
        "model's ARI: the control's). Its zero-shot drop of 4.84 % is "
        "shown against both our relative drop and our drop in points; its R² values are "
        "compared with our mean over the tasks "
        f"({', '.join(HEADLINE_TASKS)}). See docs/study.md for the discussion.",
        "",
        paper_table(summary["paper"]),
        "",
    ]
    if plots:
        titles = {
            "tradeoff": "Trade-off over α_target",
            "compromise": "The compromise, against the α = 0 control (paper's points: ★)",
            "gaps": "The four gaps per variant",
            "scatter": "Task vs gap across variants",
            "r2": "R² per task and gap metric",
            "pca": "PCA of the test embeddings",
        }
        md += ["## Plots", ""]
        for key, name in plots.items():
            md += [f"### {titles.get(key, key)}", "", f"![{key}]({name})", ""]
    md += [
        "## Notes",
        "",
        '- The base model has one set of weights; its "seeds" are evaluation seeds '
        "(KMeans restarts, caption decoder), i.e. the `before` of the training runs with "
        "those seeds. Baselines use the base embeddings with seed "
        f"{', '.join(str(s) for s in range(cfg['baseline_seeds']))}.",
        "- Per-variant outputs (metrics.json, report.md, plots, training curves) are in "
        "`runs/<variant>/`; `study.json` holds every number of this page.",
        "",
    ]
    return "\n".join(md)


# ------------------------------------------------------------------------------------- plots
def _xy(groups: Sequence[Mapping[str, Any]], x: str, xpart: str, y: str) -> tuple[np.ndarray, ...]:
    def val(g: Mapping[str, Any], part: str, key: str) -> tuple[float, float]:
        if part == "alpha":
            return float(g["alpha"]), 0.0
        return _f(g[part].get(key)), _f(g[part + "_std"].get(key))

    xs = np.array([val(g, xpart, x) for g in groups]).reshape(-1, 2)
    ys = np.array([val(g, "change", y) for g in groups]).reshape(-1, 2)
    return xs[:, 0], np.nan_to_num(xs[:, 1]), ys[:, 0], np.nan_to_num(ys[:, 1])


def plot_tradeoff(groups: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Left: gap reductions vs α_target (log); right: gap reduction vs task drop (the trade-off).

    TPC-CMA: line through α values; constant schedule: squares; post-hoc baselines: crosses;
    the α = 0 controls (the fine-tune alone): plus signs and a dotted line; error bars: std over
    seeds.
    """
    by_kind = {
        k: sorted(
            (g for g in groups.values() if g["kind"] == k and float(g["alpha"]) > 0),
            key=lambda g: float(g["alpha"]),
        )
        for k in ("tpc", "constant")
    }
    controls = [g for g in groups.values() if g["kind"] in by_kind and float(g["alpha"]) == 0]
    posthoc = [g for g in groups.values() if g["kind"] == "baseline"]
    any_g = next(iter(groups.values()))
    drop = next(
        (k for k in ("zeroshot_top1", "retrieval_i2t_r1") if f"{k}_drop_points" in any_g["change"]),
        "zeroshot_top1",
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3))
    style = {
        "tpc": dict(color="tab:blue", marker="o", ls="-", label="TPC-CMA (curriculum)"),
        "constant": dict(color="tab:red", marker="s", ls="none", label="constant schedule"),
    }
    for kind, gs in by_kind.items():
        if not gs:
            continue
        for key, dashed in (("gap_reduction_pct", False), ("gap_distribution_reduction_pct", True)):
            x, _, y, ye = _xy(gs, "", "alpha", key)
            st = dict(style[kind])
            st["label"] = f"{st['label']}: {'G_D' if dashed else 'G_T'}"
            if dashed:
                st.update(ls="--" if kind == "tpc" else "none", mfc="white")
            ax1.errorbar(x, y, yerr=ye, capsize=3, ms=6, **st)
        x, xe, y, ye = _xy(gs, f"{drop}_drop_points", "change", "gap_reduction_pct")
        ax2.errorbar(x, y, xerr=xe, yerr=ye, capsize=3, ms=6, **style[kind])
        for g, xi, yi in zip(gs, x, y, strict=True):
            ax2.annotate(
                f"α={float(g['alpha']):g}",
                (xi, yi),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
                color=style[kind]["color"],
            )
    merged: dict[tuple[float, float], list[str]] = {}  # coincident baselines share a label
    for g in posthoc:
        x, _, y, _ = _xy([g], f"{drop}_drop_points", "change", "gap_reduction_pct")
        if math.isfinite(x[0]) and math.isfinite(y[0]):
            merged.setdefault((round(float(x[0]), 6), round(float(y[0]), 6)), []).append(
                str(g["label"])
            )
    for i, ((x0, y0), labels) in enumerate(merged.items()):
        ax2.scatter([x0], [y0], marker="x", s=50, color="0.3", zorder=3)
        ax2.annotate(
            ", ".join(labels),
            (x0, y0),
            textcoords="offset points",
            xytext=(5, -10 - 8 * (i % 2)),
            fontsize=7,
            color="0.3",
        )
        ax1.axhline(y0, color="0.5", lw=0.9, ls=(0, (1, 2 + i)))
        ax1.annotate(
            f"{', '.join(labels)} (G_T)",
            (0.01, y0),
            xycoords=("axes fraction", "data"),
            xytext=(0, 2 - 10 * (i % 2)),
            textcoords="offset points",
            fontsize=7,
            color="0.4",
        )
    for g in controls:
        x, xe, y, ye = _xy([g], f"{drop}_drop_points", "change", "gap_reduction_pct")
        ax2.errorbar(
            x,
            y,
            xerr=xe,
            yerr=ye,
            marker="P",
            ms=8,
            color="black",
            ls="none",
            capsize=3,
            label=str(g["label"]) + " (fine-tune only)",
        )
        ax1.axhline(float(y[0]), color="black", lw=0.9, ls=":", label=f"{g['label']} (G_T)")
    ax2.scatter([0], [0], marker="*", s=120, color="black", zorder=4, label="base model")
    alphas = sorted({float(g["alpha"]) for gs in by_kind.values() for g in gs})
    ax1.set_xscale("log")
    ax1.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax1.minorticks_off()
    ax1.set_xlabel("α_target")
    ax1.set_ylabel("gap reduction vs base (%)")
    ax1.set_title("gap reduction over α (solid: total gap, dashed: distribution gap)", fontsize=9)
    ax2.set_xlabel(f"{drop} drop vs base (accuracy points; right = worse)")
    ax2.set_ylabel("total gap reduction vs base (%)")
    ax2.set_title("trade-off: gap closed vs accuracy lost", fontsize=9)
    for ax in (ax1, ax2):
        ax.axhline(0, color="0.7", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compromise(groups: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """The trade-off against the α = 0 control, with the paper's two points.

    (a) gap reduction vs control over α (G_T solid, excess over the paraphrase floor dashed);
    (b)–(d) gap reduction vs control against the change vs control of zero-shot top-1, R@1
    (both ways), and ARI (points) / CIDEr (%): one point per α (TPC-CMA: line, constant
    schedule: squares), error bars = std over seeds. Paper (★): α 0.05 gap −66.6 % for a
    4.84 % zero-shot drop (drawn as −4.84 points); α 0.5 gap −82.3 %, ARI 0.318 → 0.516
    (+19.8 points), CIDEr +57.1 %. The grey band marks a loss of more than 1 point.
    """
    by_kind = {
        k: sorted(
            (
                g
                for g in groups.values()
                if g["kind"] == k and float(g.get("alpha") or 0) > 0 and g.get("effect")
            ),
            key=lambda g: float(g["alpha"]),
        )
        for k in ("tpc", "constant")
    }

    def series(gs: Sequence[Mapping[str, Any]], key: str, sign: float = -1.0) -> tuple:
        x = np.array([sign * _f(g["effect"].get(key)) for g in gs])
        xe = np.nan_to_num([_f(g["effect_std"].get(key)) for g in gs])
        return x, xe

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.2))
    (ax_a, ax_b), (ax_c, ax_d) = axes
    style = {
        "tpc": dict(color="tab:blue", marker="o", ls="-", label="TPC-CMA"),
        "constant": dict(color="tab:red", marker="s", ls="none", label="constant schedule"),
    }
    paper = dict(marker="*", s=180, color="gold", edgecolors="black", zorder=5)
    for kind, gs in by_kind.items():
        if not gs:
            continue
        alphas = np.array([float(g["alpha"]) for g in gs])
        y, ye = series(gs, "gap_reduction_pct", 1.0)
        ex, exe = series(gs, "gap_excess_reduction_pct", 1.0)
        st = style[kind]
        ax_a.errorbar(alphas, y, yerr=ye, capsize=3, **{**st, "label": f"{st['label']}: G_T"})
        ax_a.errorbar(
            alphas,
            ex,
            yerr=exe,
            capsize=3,
            mfc="white",
            **{
                **st,
                "ls": "--" if kind == "tpc" else "none",
                "label": f"{st['label']}: excess over the floor",
            },
        )
        panels = (
            (ax_b, (("zeroshot_top1_drop_points", "zero-shot top-1", "o"),)),
            (
                ax_c,
                (
                    ("retrieval_i2t_r1_drop_points", "R@1 i2t", "o"),
                    ("retrieval_t2i_r1_drop_points", "R@1 t2i", "^"),
                ),
            ),
            (
                ax_d,
                (
                    ("ari_drop_points", "ARI (points)", "o"),
                    ("cider_drop_rel_pct", "CIDEr (%)", "D"),
                ),
            ),
        )
        for ax, keys in panels:
            shades = {"tpc": ("tab:blue", "tab:purple"), "constant": ("tab:red", "tab:orange")}
            for (key, name, marker), color in zip(keys, shades[kind], strict=False):
                x, xe = series(gs, key)
                ax.errorbar(
                    x,
                    y,
                    xerr=xe,
                    yerr=ye,
                    capsize=3,
                    ms=6,
                    **{
                        **st,
                        "color": color,
                        "marker": marker if kind == "tpc" else "s",
                        "label": f"{st['label']}: {name}",
                    },
                )
                for g, xi, yi in zip(gs, x, y, strict=True):
                    if math.isfinite(xi) and math.isfinite(yi):
                        ax.annotate(
                            f"α={float(g['alpha']):g}",
                            (xi, yi),
                            textcoords="offset points",
                            xytext=(4, 3),
                            fontsize=6,
                            color=color,
                        )
    g05, g5 = PAPER["gap_reduction_pct@0.05"], PAPER["gap_reduction_pct@0.5"]
    ax_a.scatter([0.05, 0.5], [g05, g5], label="paper (G_T)", **paper)
    ax_b.scatter([-PAPER["zeroshot_drop_pct@0.05"]], [g05], label="paper α=0.05", **paper)
    ax_c.axhline(g5, color="goldenrod", lw=1, ls="--", label="paper α=0.5 gap (no R@1 given)")
    ari = 100 * (PAPER["ari@0.5"] - PAPER["ari_base"])
    ax_d.scatter(
        [ari, PAPER["cider_gain_pct@0.5"]], [g5, g5], label="paper α=0.5: ARI, CIDEr", **paper
    )
    ticks = sorted({0.05, 0.5, *(float(g["alpha"]) for gs in by_kind.values() for g in gs)})
    ax_a.set_xscale("log")
    ax_a.set_xticks(ticks, [f"{a:g}" for a in ticks])
    ax_a.minorticks_off()
    ax_a.set_xlabel("α_target")
    ax_a.set_title("(a) gap closed by the alignment (vs the α = 0 control)", fontsize=9)
    titles = {
        ax_b: ("(b) zero-shot", "points"),
        ax_c: ("(c) retrieval", "points"),
        ax_d: ("(d) ARI and captioning", "ARI points, CIDEr %"),
    }
    for ax, (title, unit) in titles.items():
        ax.axvspan(min(-1.0, ax.get_xlim()[0]), -1.0, color="0.92", zorder=0)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f"change vs α = 0 control ({unit}; right = better; grey: < −1)")
        ax.set_title(f"{title}: gap closed vs task change", fontsize=9)
    for ax in axes.flat:
        ax.set_ylabel("G_T reduction vs control (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(
        "the compromise: what the alignment closes and costs, against the α = 0 control",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _variant_styles(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Marker and colour per variant: base ★, baselines ✕/+/◆ (grey), TPC-CMA ● and constant ■
    coloured by α (viridis, log scale) so that 12+ variants stay distinguishable."""
    alphas = [
        float(g["alpha"])
        for g in groups.values()
        if g["kind"] in ("tpc", "constant") and float(g["alpha"]) > 0
    ]
    lo, hi = (math.log(min(alphas)), math.log(max(alphas))) if alphas else (0.0, 1.0)
    cmap = plt.get_cmap("viridis")
    posthoc_markers = iter(["X", "P", "D", "v", "^", "<", ">"])
    out = {}
    for name, g in groups.items():
        if g["kind"] == "base":
            out[name] = {"marker": "*", "color": "black", "s": 110}
        elif g["kind"] == "baseline":
            out[name] = {"marker": next(posthoc_markers, "o"), "color": "0.45", "s": 45}
        elif float(g["alpha"]) == 0:
            out[name] = {"marker": "P", "color": "0.15", "s": 60}
        else:
            t = 0.5 if hi == lo else (math.log(float(g["alpha"])) - lo) / (hi - lo)
            out[name] = {
                "marker": "o" if g["kind"] == "tpc" else "s",
                "color": cmap(0.9 * t),
                "s": 40,
                "edgecolors": "black" if g["kind"] == "constant" else "none",
            }
    return out


def plot_scatter(
    groups: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    gaps: Sequence[str] = ("gap_raw", "gap_distribution", "gap_total"),
    tasks: Sequence[str] = HEADLINE_TASKS,
) -> Path:
    """Task metric vs gap metric (rows: tasks, columns: gaps), one marker per variant (seed
    mean, error bars = std), the fitted line and R² in each panel."""
    from cma.eval.analysis import linear_fit

    names = list(groups)
    gaps = [k for k in gaps if all(math.isfinite(_f(groups[n]["metrics"].get(k))) for n in names)]
    tasks = [k for k in tasks if all(math.isfinite(_f(groups[n]["metrics"].get(k))) for n in names)]
    if not gaps or not tasks:
        raise ValueError("no gap/task metric is present in every variant")
    styles = _variant_styles(groups)
    fig, axes = plt.subplots(
        len(tasks), len(gaps), figsize=(3.5 * len(gaps) + 2.2, 2.7 * len(tasks)), squeeze=False
    )
    for r, t in enumerate(tasks):
        for c, k in enumerate(gaps):
            ax = axes[r][c]
            xs = np.array([_f(groups[n]["metrics"][k]) for n in names])
            ys = np.array([_f(groups[n]["metrics"][t]) for n in names])
            for i, n in enumerate(names):
                ye = _f(groups[n]["metrics_std"].get(t))
                if math.isfinite(ye):
                    ax.errorbar(xs[i], ys[i], yerr=ye, color="0.6", lw=0.8, capsize=2, zorder=2)
                ax.scatter(xs[i], ys[i], label=groups[n]["label"], zorder=3, **styles[n])
            slope, intercept, r2 = linear_fit(xs, ys)
            if math.isfinite(r2):
                grid = np.linspace(xs.min(), xs.max(), 2)
                ax.plot(grid, intercept + slope * grid, color="0.4", lw=1, ls="--")
            ax.set_title(f"R² = {r2:.3f}" if math.isfinite(r2) else "R² = n/a", fontsize=9)
            ax.set_xlabel(k, fontsize=8)
            ax.set_ylabel(t, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("task metric vs gap metric, one point per variant (seed means)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_gaps(groups: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per gap metric, a horizontal bar per variant (seed mean ± std)."""
    names = list(groups)
    styles = _variant_styles(groups)
    fig, axes = plt.subplots(
        1, len(GAP_KEYS), figsize=(3.2 * len(GAP_KEYS) + 1.5, 0.32 * len(names) + 1.4), sharey=True
    )
    ys = np.arange(len(names))[::-1]
    for ax, k in zip(axes, GAP_KEYS, strict=True):
        vals = [_f(groups[n]["metrics"].get(k)) for n in names]
        errs = np.nan_to_num([_f(groups[n]["metrics_std"].get(k)) for n in names])
        colors = [styles[n]["color"] for n in names]
        ax.barh(ys, vals, xerr=errs, color=colors, alpha=0.85, capsize=2)
        for y, v in zip(ys, vals, strict=True):
            if math.isfinite(v):
                ax.annotate(
                    f"{v:.3g}", (v, y), xytext=(3, -3), textcoords="offset points", fontsize=6
                )
        ax.set_title(k, fontsize=9)
        ax.margins(x=0.22)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(ys, [str(groups[n]["label"]) for n in names])
    fig.suptitle("modality gaps per variant (seed means ± std; lower = closer)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_r2(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Grouped bars: R² of each headline task on each gap metric."""
    cols: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["task"] in HEADLINE_TASKS:
            cols.setdefault(str(r["gap"]), {})[str(r["task"])] = _f(r["r2"])
    tasks = [t for t in HEADLINE_TASKS if any(t in c for c in cols.values())]
    return plot_bars(cols, path, tasks, "R² of task metric on gap metric (across variants)")


def write_outputs(
    out_dir: str | Path, summary: dict[str, Any], pca: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write the PNGs, ``study.md`` and ``study.json`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = summary["groups"]
    plots: dict[str, Path] = {}
    if any(g["kind"] in ("tpc", "constant") for g in groups.values()):
        plots["tradeoff"] = plot_tradeoff(groups, out / "tradeoff.png")
    if (summary["claims"].get("compromise") or {}).get("available"):
        plots["compromise"] = plot_compromise(groups, out / "compromise.png")
    if groups:
        plots["gaps"] = plot_gaps(groups, out / "gaps.png")
    if summary["r2"]["all"]:
        plots["scatter"] = plot_scatter(groups, out / "gap_task_scatter.png")
        plots["r2"] = plot_r2(summary["r2"]["all"], out / "r2.png")
    if pca:
        plots["pca"] = plot_pca(pca, out / "pca.png")
    summary["plots"] = {k: p.name for k, p in plots.items()}
    paths = {"json": out / "study.json", "md": out / "study.md", **plots}
    paths["md"].write_text(render_markdown(summary, summary["plots"]))
    paths["json"].write_text(json.dumps(clean(summary), indent=2) + "\n")
    return paths
