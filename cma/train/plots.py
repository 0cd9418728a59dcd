"""Training curves: α(t), w(t), the loss terms and the gaps over training (PNG)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PHASE_COLOURS = {"anchor": "#dddddd", "ramp": "#fde9c9", "consolidate": "#d8ecd8"}


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(int(row["step"]))
            ys.append(float(value))
    return xs, ys


def _shade_phases(ax: plt.Axes, history: Sequence[dict[str, Any]]) -> None:
    spans: list[tuple[str, int, int]] = []
    for row in history:
        phase = row.get("phase")
        if phase not in PHASE_COLOURS:
            continue
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], row["step"] + 1)
        else:
            spans.append((phase, row["step"], row["step"] + 1))
    for phase, start, stop in spans:
        ax.axvspan(start, stop, color=PHASE_COLOURS[phase], alpha=0.6, lw=0, label=phase)


def plot_training(history: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Four panels: α and β = α·w; w; loss terms; gaps on held-out pairs."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    (ax_a, ax_w), (ax_l, ax_g) = axes
    for ax in axes.flat:
        _shade_phases(ax, history)
    ax_a.plot(*_series(history, "alpha"), label="α(t)", color="C0")
    ax_a.plot(*_series(history, "weight"), label="β = α·w", color="C1", lw=0.8)
    ax_a.set_yscale("symlog", linthresh=1e-3)
    ax_a.set_title("alignment weight")
    ax_w.plot(*_series(history, "w"), color="C2", label="w(t)")
    ax_w.set_yscale("log")
    ax_w.set_title("gradient-aware scale w = EMA‖∇L_CLIP‖ / EMA‖∇L_align‖")
    ax_l.plot(*_series(history, "loss_contrastive"), label="L_CLIP", color="C0", lw=0.8)
    ax_l.plot(*_series(history, "loss_align"), label="L_align (unweighted)", color="C3", lw=0.8)
    ax_l.set_yscale("log")
    ax_l.set_title("loss terms")
    for key, colour in (("gap_total", "k"), ("gap_centroid", "C4"), ("gap_distribution", "C5")):
        xs, ys = _series(history, key)
        if xs:
            ax_g.plot(xs, ys, "o-", ms=3, color=colour, label=key.removeprefix("gap_"))
    ax_g.set_title("gaps on held-out pairs")
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
