"""Gap <-> task analysis: does a gap metric predict task performance across model variants?

For every (gap metric g, task metric t) the least-squares line ``t = a + b g`` is fitted over
the variants and reported with ``R^2 = 1 - SS_res / SS_tot`` (the squared Pearson correlation).
The paper's claim to test: the distribution gap predicts tasks well (R^2 0.986), the raw gap
less so (0.691).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cma.eval._common import GAP_KEYS, TASK_KEYS


def linear_fit(g: Sequence[float], t: Sequence[float]) -> tuple[float, float, float]:
    """``(slope, intercept, r2)`` of the least-squares line ``t = intercept + slope g``.

    R^2 is NaN when either variable is constant (no variance to explain or to explain it).
    """
    g_arr, t_arr = np.asarray(g, dtype=float), np.asarray(t, dtype=float)
    if g_arr.shape != t_arr.shape or g_arr.ndim != 1 or g_arr.size < 2:
        raise ValueError(
            f"need two equal-length 1-D sequences of >= 2 values, got {g_arr.shape} "
            f"and {t_arr.shape}"
        )
    gc, tc = g_arr - g_arr.mean(), t_arr - t_arr.mean()
    sgg, stt = float(gc @ gc), float(tc @ tc)
    if sgg == 0 or stt == 0:
        return math.nan, math.nan, math.nan
    slope = float(gc @ tc) / sgg
    intercept = float(t_arr.mean() - slope * g_arr.mean())
    ss_res = float(((t_arr - intercept - slope * g_arr) ** 2).sum())
    return slope, intercept, 1.0 - ss_res / stt


def gap_task_r2(
    variants: Mapping[str, Mapping[str, float]],
    *,
    gaps: Sequence[str] = GAP_KEYS,
    tasks: Sequence[str] = TASK_KEYS,
) -> list[dict[str, float | str | int]]:
    """One row ``{gap, task, r2, slope, intercept, n}`` per pair present in every variant.

    ``variants`` maps a variant name to its METRICS; at least 3 variants are needed (two points
    always fit a line exactly).
    """
    if len(variants) < 3:
        raise ValueError(f"need >= 3 evaluated variants for a regression, got {len(variants)}")
    rows: list[dict[str, float | str | int]] = []
    for g in gaps:
        for t in tasks:
            if not all(g in m and t in m for m in variants.values()):
                continue
            xs = [float(m[g]) for m in variants.values()]
            ys = [float(m[t]) for m in variants.values()]
            slope, intercept, r2 = linear_fit(xs, ys)
            rows.append(
                {
                    "gap": g,
                    "task": t,
                    "r2": r2,
                    "slope": slope,
                    "intercept": intercept,
                    "n": len(xs),
                }
            )
    return rows


def r2_matrix_markdown(rows: Sequence[Mapping[str, float | str | int]]) -> str:
    """Markdown table of R^2 with gap metrics as rows and task metrics as columns."""
    gaps = list(dict.fromkeys(str(r["gap"]) for r in rows))
    tasks = list(dict.fromkeys(str(r["task"]) for r in rows))
    cell = {(str(r["gap"]), str(r["task"])): float(r["r2"]) for r in rows}
    lines = ["| R² | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for g in gaps:
        vals = [cell.get((g, t), math.nan) for t in tasks]
        lines.append(
            f"| {g} | " + " | ".join("—" if math.isnan(v) else f"{v:.3f}" for v in vals) + " |"
        )
    return "\n".join(lines)


def plot_gap_task_scatter(
    variants: Mapping[str, Mapping[str, float]],
    path: str | Path,
    *,
    gaps: Sequence[str] = ("gap_raw", "gap_distribution", "gap_total"),
    tasks: Sequence[str] = ("zeroshot_top1", "retrieval_i2t_r1", "ari", "cider"),
) -> Path:
    """Scatter grid (rows: tasks, columns: gaps), one labelled point per variant, fitted line
    and R^2 in each panel title; saved as PNG at ``path``."""
    from cma.eval.report import plt  # Agg backend set up in one place

    gaps = [g for g in gaps if all(g in m for m in variants.values())]
    tasks = [t for t in tasks if all(t in m for m in variants.values())]
    if not gaps or not tasks:
        raise ValueError("no gap/task metric is present in every variant")
    fig, axes = plt.subplots(
        len(tasks), len(gaps), figsize=(3.6 * len(gaps), 2.9 * len(tasks)), squeeze=False
    )
    names = list(variants)
    colors = plt.get_cmap("tab10")
    for r, t in enumerate(tasks):
        for c, g in enumerate(gaps):
            ax = axes[r][c]
            xs = np.array([variants[n][g] for n in names], dtype=float)
            ys = np.array([variants[n][t] for n in names], dtype=float)
            for i, n in enumerate(names):
                ax.scatter(xs[i], ys[i], color=colors(i % 10), label=n, s=28, zorder=3)
            slope, intercept, r2 = linear_fit(xs, ys) if len(xs) >= 2 else (math.nan,) * 3
            if not math.isnan(r2):
                grid = np.linspace(xs.min(), xs.max(), 2)
                ax.plot(grid, intercept + slope * grid, color="0.4", lw=1, ls="--")
            ax.set_title(f"R² = {r2:.3f}" if not math.isnan(r2) else "R² = n/a", fontsize=9)
            ax.set_xlabel(g, fontsize=8)
            ax.set_ylabel(t, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("task metric vs gap metric across variants", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
