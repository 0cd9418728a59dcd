"""Training checkpoints: written atomically, loaded safely, checked before use.

A checkpoint is a plain dict — ``{"format": "cma-train/1", "model": state_dict, "optimizer": …,
"curriculum": …, "step": int, "rng": ByteTensor, "config": dict, "history": list, …}`` — saved
with ``torch.save`` to a temporary file in the same folder and moved over the target with
``os.replace`` (atomic on POSIX), so a run killed mid-write never leaves a truncated file.
Loading uses ``weights_only=True``: no pickled code runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "cma-train/1"
LAST = "checkpoint_last.pt"
REQUIRED_KEYS = ("format", "model", "optimizer", "curriculum", "step", "config")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, truncated, or not ours)."""


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a training checkpoint; :class:`CheckpointError` names the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path}: corrupt or not a cma training checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a cma training checkpoint (format {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing entries {missing}")
    return state


def find_resume(resume: str | None, output: Path) -> Path | None:
    """The checkpoint to resume: a path, ``"auto"`` (the output's last one, if any), or None."""
    if resume is None:
        return None
    if resume == "auto":
        candidate = output / LAST
        return candidate if candidate.is_file() else None
    return Path(resume)
