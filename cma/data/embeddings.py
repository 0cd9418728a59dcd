"""``EmbeddingSet``: image and caption embeddings of one dataset, and its ``.npz`` form.

The ``.npz`` file holds the arrays ``image`` (N, d), ``text`` (M, d), ``text_to_image`` (M,),
``captions`` (M,) unicode, and optionally ``labels`` (N,), ``classnames`` (K,) unicode,
``class_text`` (K, d), plus ``format_version``. It is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EmbeddingSet"]

NPZ_FORMAT_VERSION = 1
_REQUIRED = ("image", "text", "text_to_image", "captions")


def _as_float(name: str, value: Any, dim: int | None) -> Tensor:
    t = torch.as_tensor(value)
    if t.ndim != 2 or not t.is_floating_point():
        raise ValueError(f"{name} must be a 2-D float tensor, got shape {tuple(t.shape)} {t.dtype}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has dimension {t.shape[1]}, expected {dim} (as image)")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t.float()


def _as_index(name: str, value: Any, length: int, upper: int) -> Tensor:
    t = torch.as_tensor(value)
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {t.dtype}")
    t = t.long()
    if length and (t.min() < 0 or t.max() >= upper):
        raise ValueError(f"{name} values must lie in [0, {upper}), got [{t.min()}, {t.max()}]")
    return t


@dataclass
class EmbeddingSet:
    """Embeddings of N images and M ≥ 1 captions (each caption describes one image).

    Fields: ``image`` (N, d) and ``text`` (M, d) float32 (L2-normalised as produced by
    ``cma.models.embed_dataset``), ``text_to_image`` (M,) long, ``captions`` (M strings),
    ``labels`` (N,) long or None, ``classnames`` (K) or None, ``class_text`` (K, d) or None
    (prompt-ensembled normalised zero-shot class embeddings). Inputs are validated and converted
    (numpy arrays are accepted); a problem raises ValueError naming the field.
    """

    image: Tensor
    text: Tensor
    text_to_image: Tensor
    captions: list[str]
    labels: Tensor | None = None
    classnames: list[str] | None = None
    class_text: Tensor | None = None

    def __post_init__(self) -> None:
        self.image = _as_float("image", self.image, None)
        n, d = self.image.shape
        self.text = _as_float("text", self.text, d)
        m = self.text.shape[0]
        self.text_to_image = _as_index("text_to_image", self.text_to_image, m, max(n, 1))
        self.captions = [str(c) for c in self.captions]
        if len(self.captions) != m:
            raise ValueError(f"captions has {len(self.captions)} entries, expected {m} (as text)")
        if self.classnames is not None:
            self.classnames = [str(c) for c in self.classnames]
        k = len(self.classnames) if self.classnames is not None else None
        if self.class_text is not None:
            self.class_text = _as_float("class_text", self.class_text, d)
            if k is not None and self.class_text.shape[0] != k:
                raise ValueError(
                    f"class_text has {self.class_text.shape[0]} rows, expected {k} (classnames)"
                )
            k = self.class_text.shape[0]
        if self.labels is not None:
            upper = k if k is not None else np.iinfo(np.int64).max
            self.labels = _as_index("labels", self.labels, n, upper)

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return self.image.shape[1]

    def paired(self) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of shape (N, d): each image with its first caption."""
        n = self.image.shape[0]
        owners = self.text_to_image.numpy()
        _, first = np.unique(owners, return_index=True)
        if len(first) != n:
            missing = sorted(set(range(n)) - set(owners.tolist()))[:5]
            raise ValueError(f"images without a caption (e.g. {missing}); cannot pair")
        return self.image, self.text[torch.from_numpy(first)]

    def caption_pairs(self) -> tuple[Tensor, Tensor]:
        """``(t1, t2)``: the first and second caption of every image that has two or more.

        Both are text, so S_ε(t1, t2) is the gap the text modality has *with itself* between
        paraphrases of the same images: a floor for the image–text gap of paired data.
        """
        owners = self.text_to_image.numpy()
        order = np.argsort(owners, kind="stable")
        starts = np.flatnonzero(np.r_[True, owners[order][1:] != owners[order][:-1]])
        counts = np.diff(np.r_[starts, len(owners)])
        keep = starts[counts >= 2]
        first, second = order[keep], order[keep + 1]
        return self.text[torch.from_numpy(first)], self.text[torch.from_numpy(second)]

    def replace(self, **changes: Any) -> EmbeddingSet:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device) -> EmbeddingSet:
        """A copy with all tensors on ``device``."""
        moved = {
            f.name: v.to(device)
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def save_npz(self, path: str | os.PathLike) -> None:
        """Write the set to ``path`` (.npz), atomically (temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(NPZ_FORMAT_VERSION),
            "image": self.image.detach().cpu().numpy(),
            "text": self.text.detach().cpu().numpy(),
            "text_to_image": self.text_to_image.cpu().numpy(),
            "captions": np.array(self.captions, dtype=str),
        }
        if self.labels is not None:
            arrays["labels"] = self.labels.cpu().numpy()
        if self.classnames is not None:
            arrays["classnames"] = np.array(self.classnames, dtype=str)
        if self.class_text is not None:
            arrays["class_text"] = self.class_text.detach().cpu().numpy()
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> EmbeddingSet:
        """Read a set written by :meth:`save_npz` (or any npz with the same arrays)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable EmbeddingSet .npz file: {e}") from e
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing} (has {sorted(data)})")
        version = int(data.pop("format_version", NPZ_FORMAT_VERSION))
        if version > NPZ_FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {version}, newer than this code")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{path} has unexpected arrays {unknown}")
        try:
            return cls(
                **{
                    k: (v.tolist() if k in ("captions", "classnames") else torch.from_numpy(v))
                    for k, v in data.items()
                }
            )
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
