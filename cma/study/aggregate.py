"""Aggregation: per-variant changes, mean ± std over seeds, gap ↔ task R², the targets.

A *record* is one finished variant::

    {"variant": name, "group": str, "kind": str, "seed": int, "alpha": float | None,
     "label": str, "metrics": METRICS, "reference": METRICS (the base model, same seed),
     "seconds": float, "reused": bool, ...}

Changes (``gap_reduction_pct``, ``zeroshot_top1_drop_points``, …) are computed per seed against
that seed's base metrics, then averaged: for training runs the reference is the run's own
``before``, for baselines the base model evaluated with the same seed. Training records may also
hold ``"control"``: the METRICS of their α = 0 control (same schedule and seed); the *alignment
effect* (``effect``) is the change against it, computed per seed in the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cma.eval.analysis import gap_task_r2
from cma.eval.suite import excess_gap, gap_reduction
from cma.study.plan import PAPER, same_alpha

HEADLINE_TASKS: tuple[str, ...] = (
    "zeroshot_top1",
    "retrieval_i2t_r1",
    "retrieval_t2i_r1",
    "ari",
    "cider",
)
NAN = math.nan


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of the finite values.

    NaN/None values are skipped; the std is NaN with fewer than two values, the mean with none.
    """
    vals = _finite(values)
    if not vals:
        return NAN, NAN
    mean = math.fsum(vals) / len(vals)
    return mean, (statistics.stdev(vals) if len(vals) > 1 else NAN)


def change_of(record: Mapping[str, Any]) -> dict[str, float]:
    """Gap reductions (%) and task drops (points, relative %) of a record against its reference."""
    return gap_reduction(dict(record["reference"]), dict(record["metrics"]))


def effect_of(record: Mapping[str, Any]) -> dict[str, float] | None:
    """The alignment effect: :func:`change_of` against the record's α = 0 control (or None)."""
    control = record.get("control")
    return None if control is None else gap_reduction(dict(control), dict(record["metrics"]))


def with_excess(metrics: Mapping[str, float]) -> dict[str, float]:
    """METRICS plus ``gap_excess`` = G_T − gap_paraphrase (the gap above the paraphrase floor)."""
    out = dict(metrics)
    if math.isfinite(excess_gap(out)):
        out["gap_excess"] = excess_gap(out)
    return out


def _stats(dicts: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    mean, std = {}, {}
    for k in keys:
        mean[k], std[k] = mean_std(d.get(k) for d in dicts)
    return mean, std


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group records by variant (seeds pooled): base, baselines, TPC-CMA and constant by α.

    Each group: ``kind, alpha, baseline, label, seeds, n, metrics / metrics_std`` (mean and std
    of METRICS and ``gap_excess``), ``reference`` (mean base METRICS), ``change / change_std``
    (of :func:`change_of`), ``effect / effect_std`` (of :func:`effect_of`, over the seeds that
    have a control; empty without), ``seconds`` (summed over seeds).
    """
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        grouped.setdefault(str(r["group"]), []).append(r)
    order = {"base": 0, "baseline": 1, "tpc": 2, "constant": 3}

    def key(item: tuple[str, list[Mapping[str, Any]]]) -> tuple[int, float]:
        first = item[1][0]
        return order.get(str(first["kind"]), 9), float(first.get("alpha") or 0.0)

    out: dict[str, dict[str, Any]] = {}
    for name, recs in sorted(grouped.items(), key=key):
        recs = sorted(recs, key=lambda r: int(r["seed"]))
        metrics, metrics_std = _stats([with_excess(r["metrics"]) for r in recs])
        change, change_std = _stats([change_of(r) for r in recs])
        effects = [e for e in map(effect_of, recs) if e is not None]
        effect, effect_std = _stats(effects)
        reference, _ = _stats([r["reference"] for r in recs])
        first = recs[0]
        out[name] = {
            "kind": first["kind"],
            "alpha": first.get("alpha"),
            "label": first.get("label", name),
            "seeds": [int(r["seed"]) for r in recs],
            "n": len(recs),
            "metrics": metrics,
            "metrics_std": metrics_std,
            "reference": reference,
            "change": change,
            "change_std": change_std,
            "effect": effect,
            "effect_std": effect_std,
            "control_seeds": [int(r["seed"]) for r in recs if r.get("control") is not None],
            "seconds": math.fsum(float(r.get("seconds") or 0.0) for r in recs),
        }
    return out


def find_group(
    groups: Mapping[str, Mapping[str, Any]], kind: str, alpha: float | None = None
) -> Mapping[str, Any] | None:
    """The group of ``kind`` (and α), or None."""
    for g in groups.values():
        if g["kind"] != kind:
            continue
        if alpha is None or (g.get("alpha") is not None and same_alpha(float(g["alpha"]), alpha)):
            return g
    return None


def strongest(groups: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Name of the TPC-CMA group with the largest α_target (else any training group)."""
    for kind in ("tpc", "constant"):
        cands = [(float(g["alpha"]), n) for n, g in groups.items() if g["kind"] == kind]
        if cands:
            return max(cands)[1]
    return None


def r2_tables(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """R² rows of :func:`cma.eval.analysis.gap_task_r2`, one point per variant (seed means).

    ``all``: every variant; ``trained``: the base model and the training runs only (no post-hoc
    baselines). A table is empty when it has fewer than 3 variants.
    """
    subsets = {
        "all": {n: g["metrics"] for n, g in groups.items()},
        "trained": {
            n: g["metrics"] for n, g in groups.items() if g["kind"] in ("base", "tpc", "constant")
        },
    }
    return {k: (gap_task_r2(v) if len(v) >= 3 else []) for k, v in subsets.items()}


def r2_lookup(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    return {(str(r["gap"]), str(r["task"])): float(r["r2"]) for r in rows}


def r2_claim(
    rows: Sequence[Mapping[str, Any]], tasks: Sequence[str] = HEADLINE_TASKS
) -> dict[str, Any]:
    """R² on the distribution gap vs on the raw gap, per task and averaged over ``tasks``."""
    cell = r2_lookup(rows)
    per_task = {
        t: {"distribution": cell[("gap_distribution", t)], "raw": cell[("gap_raw", t)]}
        for t in tasks
        if ("gap_distribution", t) in cell and ("gap_raw", t) in cell
    }
    pairs = [
        (v["distribution"], v["raw"])
        for v in per_task.values()
        if math.isfinite(v["distribution"]) and math.isfinite(v["raw"])
    ]
    mean_d = mean_std(d for d, _ in pairs)[0]
    mean_r = mean_std(r for _, r in pairs)[0]
    wins = sum(d > r for d, r in pairs)
    return {
        "per_task": per_task,
        "wins": wins,
        "of": len(pairs),
        "mean_distribution": mean_d,
        "mean_raw": mean_r,
        "holds": bool(pairs) and mean_d > mean_r,
    }


def _get(g: Mapping[str, Any] | None, part: str, key: str) -> float:
    if g is None:
        return NAN
    v = g[part].get(key)
    return NAN if v is None else float(v)


def geometric_claim(
    groups: Mapping[str, Mapping[str, Any]], alpha: float = 0.5, tolerance_pct: float = 1.0
) -> dict[str, Any]:
    """Post-hoc centring leaves G_D unchanged (|Δ| ≤ ``tolerance_pct`` %) and helps the tasks less
    than TPC-CMA at ``alpha``: ARI gain, CIDEr gain (%) and retrieval R@1 gains compared.

    Centring acts on the base model's embeddings, so its gains are against the base model;
    TPC-CMA's are its alignment effect — against its α = 0 control — when the study has the
    control (``tpc_against``: "control"), else against the base model ("base").
    """
    cent, tpc = groups.get("centering"), find_group(groups, "tpc", alpha)
    part = "effect" if tpc is not None and tpc.get("effect") else "change"
    gd = _get(cent, "change", "gap_distribution_reduction_pct")
    gains = {}
    for key, label in (
        ("ari", "ARI gain (points)"),
        ("cider", "CIDEr gain (%)"),
        ("retrieval_i2t_r1", "R@1 i2t gain (points)"),
        ("retrieval_t2i_r1", "R@1 t2i gain (points)"),
        ("zeroshot_top1", "zero-shot gain (points)"),
    ):
        suffix = "_drop_rel_pct" if key == "cider" else "_drop_points"
        c, t = -_get(cent, "change", key + suffix), -_get(tpc, part, key + suffix)
        if math.isfinite(c) and math.isfinite(t):
            gains[key] = {"label": label, "centering": c, "tpc": t}
    headline = [gains[k] for k in ("ari", "cider") if k in gains]
    return {
        "alpha": alpha,
        "centering_gd_reduction_pct": gd,
        "centering_gc_reduction_pct": _get(cent, "change", "gap_centroid_reduction_pct"),
        "tpc_gd_reduction_pct": _get(tpc, part, "gap_distribution_reduction_pct"),
        "tpc_against": "control" if part == "effect" else "base",
        "gd_unchanged": math.isfinite(gd) and abs(gd) <= tolerance_pct,
        "gains": gains,
        "tasks_less_than_tpc": bool(headline) and all(g["centering"] < g["tpc"] for g in headline),
        "available": cent is not None and tpc is not None,
    }


def paper_comparison(
    groups: Mapping[str, Mapping[str, Any]], r2_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Rows ``{quantity, paper, ours, ours_std}`` against the paper's published figures."""
    a05, a5 = find_group(groups, "tpc", 0.05), find_group(groups, "tpc", 0.5)
    base = groups.get("base")
    control = find_group(groups, "tpc", 0.0)
    claim = r2_claim(r2_rows) if r2_rows else {"mean_distribution": NAN, "mean_raw": NAN}

    def row(
        q: str,
        paper: float,
        g: Mapping[str, Any] | None,
        part: str,
        key: str,
        sign: float = 1.0,
        unit: str = "",
    ) -> dict[str, Any]:
        std_part = part + "_std" if part in ("change", "metrics") else part
        ours = sign * _get(g, part, key)
        std = _get(g, std_part, key) if std_part != part else NAN
        # against the α = 0 control: the alignment effect, or the control's own value
        if part == "change":
            vs, vs_std = sign * _get(g, "effect", key), _get(g, "effect_std", key)
        elif g is base:
            vs, vs_std = _get(control, "metrics", key), _get(control, "metrics_std", key)
        else:
            vs, vs_std = ours, std
        return {
            "quantity": q,
            "paper": paper,
            "ours": ours,
            "ours_std": std,
            "unit": unit,
            "vs_control": vs,
            "vs_control_std": vs_std,
        }

    return [
        row(
            "gap reduction at α=0.05",
            PAPER["gap_reduction_pct@0.05"],
            a05,
            "change",
            "gap_reduction_pct",
            unit="%",
        ),
        row(
            "zero-shot drop at α=0.05 (relative)",
            PAPER["zeroshot_drop_pct@0.05"],
            a05,
            "change",
            "zeroshot_top1_drop_rel_pct",
            unit="%",
        ),
        row(
            "zero-shot drop at α=0.05 (points)",
            PAPER["zeroshot_drop_pct@0.05"],
            a05,
            "change",
            "zeroshot_top1_drop_points",
            unit="pts",
        ),
        row(
            "gap reduction at α=0.5",
            PAPER["gap_reduction_pct@0.5"],
            a5,
            "change",
            "gap_reduction_pct",
            unit="%",
        ),
        row(
            "excess gap closed at α=0.5 (G_T − paraphrase floor)",
            PAPER["gap_reduction_pct@0.5"],
            a5,
            "change",
            "gap_excess_reduction_pct",
            unit="%",
        ),
        row(
            "ARI of the base model (vs control: of the control)",
            PAPER["ari_base"],
            base,
            "metrics",
            "ari",
        ),
        row("ARI at α=0.5", PAPER["ari@0.5"], a5, "metrics", "ari"),
        row(
            "CIDEr change at α=0.5",
            PAPER["cider_gain_pct@0.5"],
            a5,
            "change",
            "cider_drop_rel_pct",
            sign=-1.0,
            unit="%",
        ),
        {
            "quantity": "R² on the distribution gap (mean over tasks)",
            "paper": PAPER["r2_distribution"],
            "ours": claim["mean_distribution"],
            "ours_std": NAN,
            "unit": "",
            "vs_control": NAN,
            "vs_control_std": NAN,
        },
        {
            "quantity": "R² on the raw gap (mean over tasks)",
            "paper": PAPER["r2_raw"],
            "ours": claim["mean_raw"],
            "ours_std": NAN,
            "unit": "",
            "vs_control": NAN,
            "vs_control_std": NAN,
        },
    ]


#: Task metrics whose drop against the control marks the compromise (accuracy, retrieval).
COMPROMISE_TASKS: tuple[str, ...] = ("zeroshot_top1", "retrieval_i2t_r1", "retrieval_t2i_r1")


def compromise(
    groups: Mapping[str, Mapping[str, Any]],
    *,
    kind: str = "tpc",
    tasks: Sequence[str] = COMPROMISE_TASKS,
    threshold: float = 1.0,
) -> dict[str, Any]:
    """Where aligning starts to cost accuracy, from the alignment effect (vs the α = 0 control).

    ``rows``: one per α > 0 of ``kind`` with a control, in increasing α: the gap reduction and
    the excess-gap closure against the control (%), and each task's drop against it (points,
    positive = worse). ``first``: the smallest α whose drop in some task exceeds ``threshold``
    points and, where several seeds measured it, its std over seeds (that task and drop, with the
    gap reduction there), or None — no compromise within the α range. ``available``: some α has
    a control.
    """
    rows = []
    for g in sorted(
        (g for g in groups.values() if g["kind"] == kind and float(g.get("alpha") or 0) > 0),
        key=lambda g: float(g["alpha"]),
    ):
        e, es = g.get("effect") or {}, g.get("effect_std") or {}
        if not e:
            continue
        drops = {t: _num(e.get(f"{t}_drop_points")) for t in tasks}
        rows.append(
            {
                "alpha": float(g["alpha"]),
                "gap_reduction_pct": _num(e.get("gap_reduction_pct")),
                "gap_excess_reduction_pct": _num(e.get("gap_excess_reduction_pct")),
                "drops": drops,
                "drops_std": {t: _num(es.get(f"{t}_drop_points")) for t in tasks},
            }
        )
    first = None
    for r in rows:
        std = r["drops_std"]
        costs = [
            (t, d)
            for t, d in r["drops"].items()
            if math.isfinite(d) and d > threshold and not (math.isfinite(std[t]) and d <= std[t])
        ]
        worst = max(costs, key=lambda td: td[1], default=None)
        if worst is not None:
            first = {
                "alpha": r["alpha"],
                "task": worst[0],
                "drop_points": worst[1],
                "gap_reduction_pct": r["gap_reduction_pct"],
                "gap_excess_reduction_pct": r["gap_excess_reduction_pct"],
            }
            break
    return {"rows": rows, "first": first, "threshold_points": threshold, "available": bool(rows)}


def _num(v: Any) -> float:
    return NAN if v is None else float(v)
