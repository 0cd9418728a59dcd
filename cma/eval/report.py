"""Run reports: ``metrics.json``, ``report.md`` (tables) and PNG plots.

Two layouts of ``metrics_json`` are understood:
- a training run (SPEC section 6): ``{"backend", "alpha_target", "schedule", "before": METRICS,
  "after": METRICS, "seconds", ...}`` -> columns ``before`` / ``after`` and a delta column; with
  its α = 0 control (``"control": METRICS``) a ``control`` column between them and the alignment
  effect (run − control);
- an evaluation (``python -m cma.eval``): METRICS at top level for the evaluated model, plus
  optionally ``"baselines": {name: METRICS}`` -> one column per variant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cma.eval._common import CAPTION_KEYS, FRACTION_KEYS, GAP_KEYS, METRIC_KEYS

HEADLINE: tuple[str, ...] = (
    "zeroshot_top1",
    "retrieval_i2t_r1",
    "retrieval_t2i_r1",
    "ari",
    "cider",
    "bleu4",
)
"""Task metrics whose changes report.md lists (metrics.json keeps all of them)."""
CONTROL = "control (α=0)"
"""Column name of a run's α = 0 control."""

__all__ = ["format_table", "metric_columns", "plot_bars", "plot_pca", "plt", "write_run_report"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4f}"
    return "—" if v is None else str(v)


def format_table(
    columns: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] | None = None,
    *,
    delta: bool = True,
    markdown: bool = True,
) -> str:
    """Metrics (rows) by variant (columns), plus ``Δ = last - first`` when there are 2 columns.

    ``markdown=False`` gives an aligned plain-text table for the terminal.
    """
    if not columns:
        raise ValueError("columns is empty")
    names = list(columns)
    if keys is None:
        present = {k for m in columns.values() for k in m}
        keys = [k for k in METRIC_KEYS if k in present]
    show_delta = delta and len(names) == 2
    header = ["metric", *names] + (["Δ"] if show_delta else [])
    body = []
    for k in keys:
        vals = [columns[n].get(k, math.nan) for n in names]
        row = [k, *(_fmt(float(v)) for v in vals)]
        if show_delta:
            row.append(_fmt(float(vals[1]) - float(vals[0])))
        body.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt_row(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt_row(header), "  ".join("-" * w for w in widths), *map(fmt_row, body)])


def metric_columns(metrics_json: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The variants to tabulate: ``before``/``after`` of a run, or the model + its baselines."""
    if "before" in metrics_json and "after" in metrics_json:
        cols = {"before": dict(metrics_json["before"])}
        if isinstance(metrics_json.get("control"), Mapping):
            cols[CONTROL] = dict(metrics_json["control"])
        return {**cols, "after": dict(metrics_json["after"])}
    top = {k: float(metrics_json[k]) for k in METRIC_KEYS if k in metrics_json}
    if not top:
        raise ValueError("metrics_json has neither 'before'/'after' nor top-level METRICS keys")
    cols = {str(metrics_json.get("model", "model")): top}
    cols.update({n: dict(m) for n, m in metrics_json.get("baselines", {}).items()})
    return cols


def plot_bars(
    columns: Mapping[str, Mapping[str, float]], path: str | Path, keys: Sequence[str], title: str
) -> Path:
    """Grouped bar chart: one group per metric in ``keys``, one bar per variant, values printed."""
    keys = [k for k in keys if any(k in m for m in columns.values())]
    if not keys:
        raise ValueError(f"none of {list(keys)} is in the columns")
    names = list(columns)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(min(14.0, 2 + len(keys) * (0.5 + 0.25 * len(names))), 4.2))
    xs = np.arange(len(keys))
    for i, n in enumerate(names):
        vals = [float(columns[n].get(k, np.nan)) for k in keys]
        bars = ax.bar(xs + (i - (len(names) - 1) / 2) * width, vals, width, label=n)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=6, padding=1, rotation=90)
    ax.set_xticks(xs, keys, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(names)))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pca(
    sets: Mapping[str, Any], path: str | Path, *, max_points: int = 600, seed: int = 0
) -> Path:
    """2-D PCA of the paired embeddings ``[x; y]`` of each EmbeddingSet (one row per set).

    Left: coloured by modality (image ○, text △); right: coloured by class (when labelled).
    PCA is fitted per set on its stacked pairs, so each row shows that set's own geometry.
    """
    if not sets:
        raise ValueError("sets is empty")
    has_labels = all(s.labels is not None for s in sets.values())
    ncols = 2 if has_labels else 1
    size = (4.6 * ncols, 4.0 * len(sets))
    fig, axes = plt.subplots(len(sets), ncols, figsize=size, squeeze=False)
    rng = np.random.default_rng(seed)
    for r, (name, es) in enumerate(sets.items()):
        x, y = (t.float().numpy() for t in es.paired())
        keep = np.sort(rng.permutation(len(x))[:max_points])
        pts = np.concatenate([x[keep], y[keep]])
        centred = pts - pts.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[:2].T
        var = (s[:2] ** 2 / (s**2).sum()) * 100
        n = len(keep)
        ax = axes[r][0]
        ax.scatter(*proj[:n].T, s=6, alpha=0.6, marker="o", label="image", color="tab:blue")
        ax.scatter(*proj[n:].T, s=8, alpha=0.6, marker="^", label="text", color="tab:orange")
        ax.legend(fontsize=7, markerscale=2)
        ax.set_title(f"{name}: by modality", fontsize=9)
        if has_labels:
            lab = es.labels.numpy()[keep]
            ax = axes[r][1]
            k = 10 if int(lab.max()) < 10 else 20
            cmap = plt.get_cmap(f"tab{k}")
            ax.scatter(*proj[:n].T, s=6, alpha=0.7, marker="o", c=cmap(lab % k))
            ax.scatter(*proj[n:].T, s=8, alpha=0.7, marker="^", c=cmap(lab % k))
            ax.set_title(f"{name}: by class (○ image, △ text)", fontsize=9)
        for ax in axes[r]:
            ax.set_xlabel(f"PC1 ({var[0]:.0f}%)", fontsize=8)
            ax.set_ylabel(f"PC2 ({var[1]:.0f}%)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _json_safe(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write_run_report(
    out_dir: str | Path,
    metrics_json: Mapping[str, Any],
    *,
    embeddings: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
    title: str = "Evaluation report",
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and PNGs into ``out_dir``; return their paths.

    ``embeddings`` (name -> EmbeddingSet, e.g. ``{"before": ..., "after": ...}``) adds the PCA
    plot; ``details`` (from :func:`cma.eval.suite.evaluate_detailed`) adds caption samples.
    """
    from cma.eval.analysis import gap_task_r2, plot_gap_task_scatter, r2_matrix_markdown
    from cma.eval.suite import gap_reduction

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = metric_columns(metrics_json)
    names = list(cols)
    paths: dict[str, Path] = {"metrics": out / "metrics.json", "report": out / "report.md"}
    paths["metrics"].write_text(json.dumps(_json_safe(metrics_json), indent=2) + "\n")

    paths["gaps_png"] = plot_bars(cols, out / "gaps.png", GAP_KEYS, "modality gaps (lower: closer)")
    task_keys = [k for k in FRACTION_KEYS if any(k in m for m in cols.values())]
    if task_keys:
        paths["tasks_png"] = plot_bars(cols, out / "tasks.png", task_keys, "task metrics")
    if any(k in m for m in cols.values() for k in CAPTION_KEYS):
        paths["captioning_png"] = plot_bars(
            cols, out / "captioning.png", CAPTION_KEYS, "captioning from image embeddings"
        )
    if embeddings:
        paths["pca_png"] = plot_pca(embeddings, out / "pca.png")

    md = [f"# {title}", ""]
    info = {
        k: v
        for k, v in metrics_json.items()
        if k not in METRIC_KEYS and not isinstance(v, (Mapping, list))
    }
    md += [f"- **{k}**: {_fmt(v)}" for k, v in info.items()]
    md += ["", "## Metrics", "", format_table(cols), ""]
    if len(names) >= 2:
        red = {n: gap_reduction(cols[names[0]], cols[n]) for n in names[1:]}
        rkeys = [
            k
            for k in dict.fromkeys(k for r in red.values() for k in r)
            if (k.endswith("_reduction_pct") and k != "gap_reduction_pct")
            or k.removesuffix("_drop_points").removesuffix("_drop_rel_pct") in HEADLINE
        ]
        md += [
            f"## Change against `{names[0]}`",
            "",
            "Gap reductions in % (positive = smaller gap); drops in accuracy points and "
            "relative % (positive = worse).",
            "",
            format_table(red, rkeys, delta=False),
            "",
        ]
    if CONTROL in cols and "after" in cols:
        effect = gap_reduction(cols[CONTROL], cols["after"])
        ekeys = [
            k
            for k in effect
            if (k.endswith("_reduction_pct") and k != "gap_reduction_pct")
            or k.removesuffix("_drop_points").removesuffix("_drop_rel_pct") in HEADLINE
        ]
        md += [
            "## Alignment effect: this run against its α = 0 control",
            "",
            f"Control: `{metrics_json.get('control_run', '?')}` (the same run with the "
            "alignment weight held at 0). Δ = run − control; below it the changes against "
            "the control (gap and excess-gap reductions in %, drops in points and relative %; "
            "`gap_excess` = G_T − gap_paraphrase).",
            "",
            format_table({"control": cols[CONTROL], "run": cols["after"]}),
            "",
            format_table({"run vs control": effect}, ekeys, delta=False),
            "",
        ]
    if len(names) >= 3:
        rows = gap_task_r2(cols)
        if rows:
            paths["scatter_png"] = plot_gap_task_scatter(cols, out / "gap_task_scatter.png")
            md += [
                "## Gap ↔ task R² across the variants",
                "",
                r2_matrix_markdown(rows),
                "",
                f"({len(names)} points per fit; the paper reports R² 0.986 for the "
                "distribution gap and 0.691 for the raw gap.)",
                "",
            ]
    if details and details.get("captioning"):
        cap = details["captioning"]
        md += [
            "## Captioning through the shared space",
            "",
            f"Decoder trained on TEXT embeddings; METRICS use `image_{cap['decode']}`. "
            "`text_greedy` (the decoder fed the text embedding of each image's first "
            "caption) is the no-gap reference.",
            "",
            format_table(cap["scores"], list(CAPTION_KEYS), delta=False),
            "",
        ]
    if details and details.get("samples"):
        md += ["## Caption samples", ""]
        for i, s in enumerate(details["samples"]):
            md.append(f"{i}. refs: " + " / ".join(f"_{r}_" for r in s["references"]))
            md += [f"   - {k}: {v}" for k, v in s.items() if k != "references"]
        md.append("")
    md += ["## Plots", ""] + [f"![{k}]({p.name})" for k, p in paths.items() if k.endswith("_png")]
    paths["report"].write_text("\n".join(md) + "\n")
    return paths
