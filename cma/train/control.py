"""The α = 0 control of a run (SPEC §4): finding it, and the alignment effect against it.

The control is the same run — schedule, data, steps, learning rate, seed — with the alignment
weight held at 0 (``python -m cma.train --control``, i.e. ``alpha_target = 0``). Fine-tuning
alone moves every metric of an under-trained base model, so the *alignment* effect of a run is
its change against the control: ``gap_reduction(control, run)`` (gap and excess-gap reductions
in %, task drops in points / relative %) and the per-metric difference run − control.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cma.eval.suite import gap_reduction
from cma.train.config import TrainConfig, config_diff

__all__ = ["alignment_effect", "control_config", "find_control"]


def control_config(cfg: TrainConfig) -> TrainConfig:
    """The configuration of ``cfg``'s control (α_target = 0, everything else equal)."""
    return dataclasses.replace(cfg, alpha_target=0.0)


def find_control(cfg: TrainConfig, output: Path) -> tuple[Path, dict[str, float]] | None:
    """``(metrics.json path, the control's "after" METRICS)`` for run ``cfg``, or None.

    ``cfg.control_run``: ``"auto"`` looks at ``<output>/../<schedule>-control-s<seed>`` and
    quietly skips a control that is missing or was made with other settings; a path (folder or
    metrics.json) must exist and match (else FileNotFoundError / ValueError naming the
    differences); ``None``/``"none"`` disables the comparison, as does a run that is itself a
    control.
    """
    choice = cfg.control_run
    if cfg.is_control or choice is None or str(choice).lower() == "none":
        return None
    expected = control_config(cfg)
    auto = str(choice).lower() == "auto"
    path = output.parent / expected.run_name if auto else Path(str(choice))
    if path.is_dir() or path.suffix != ".json":
        path = path / "metrics.json"
    if not path.is_file():
        if auto:
            return None
        raise FileNotFoundError(
            f"control_run: {path} not found (run the control first with "
            "the same flags plus --control)"
        )
    data = json.loads(path.read_text())
    saved = data.get("config") or {}
    diff = config_diff(saved, expected.as_dict())
    if "after" not in data or diff:
        if auto:
            return None
        why = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"control_run: {path} is not this run's control ({why or 'no after'})")
    return path, dict(data["after"])


def alignment_effect(control: dict[str, float], run: dict[str, float]) -> dict[str, Any]:
    """``{"vs_control": gap_reduction(control, run), "delta": {key: run − control}}``."""
    delta = {
        k: float(run[k]) - float(control[k])
        for k in run
        if k in control and all(isinstance(v, (int, float)) for v in (run[k], control[k]))
    }
    return {"vs_control": gap_reduction(control, run), "delta": delta}
