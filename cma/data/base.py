"""The dataset protocol shared by all formats, and a validated map-style base for image files.

A caption dataset has ``__len__``, ``__getitem__(i) -> (PIL.Image RGB, caption, label)`` (label
-1 when unlabelled), ``classnames`` (list, or None when unlabelled) and ``captions_of(i)`` (all
reference captions of image i; the item's caption is the first). Streaming datasets
(webdataset) instead offer ``iter_records()``; :func:`iter_records` walks either kind.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "GENERIC_TEMPLATES",
    "CaptionDataset",
    "FileCaptionDataset",
    "ImageRecord",
    "iter_records",
    "open_rgb",
    "read_names",
]

#: Default zero-shot prompts for real photographs (CLIP-style).
GENERIC_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
]

ON_ERROR = ("skip", "raise")


@runtime_checkable
class CaptionDataset(Protocol):
    """What every map-style dataset of cma.data provides."""

    classnames: list[str] | None

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> tuple[Image.Image, str, int]: ...
    def captions_of(self, i: int) -> list[str]: ...


@dataclass(frozen=True)
class ImageRecord:
    """One image file with its reference captions and label (-1 if unlabelled)."""

    path: Path
    captions: tuple[str, ...]
    label: int = -1


def read_names(path: str | os.PathLike) -> list[str] | dict[str, str]:
    """Names from a file: JSON (a list, or an object mapping keys to names), else plain text
    with one name per non-empty line. FileNotFoundError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list or object of names")
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; RuntimeError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise RuntimeError(f"cannot read image {path}: {e}") from e


def _probe(path: Path, verify: bool) -> str | None:
    """Why ``path`` is unusable ("missing image", "unreadable image"), or None if fine."""
    if not path.is_file():
        return "missing image"
    if verify:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception:  # PIL raises many types for broken files
            return "unreadable image"
    return None


class FileCaptionDataset(Dataset):
    """Map-style dataset over image files with captions, validated when constructed.

    Empty captions, records left with no caption, a missing image file or (``verify=True``) an
    image PIL cannot parse are skipped and counted in ``skipped`` (a Counter by reason) with one
    warning, or raise ValueError when ``on_error="raise"``. So a DataLoader worker never meets a
    bad file it could have known about; an image that breaks later raises a RuntimeError naming
    it.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        *,
        source: str,
        classnames: Sequence[str] | None = None,
        verify: bool = True,
        on_error: str = "skip",
        skipped: Counter | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.source = source
        self.classnames = list(classnames) if classnames is not None else None
        self.skipped: Counter = Counter(skipped or {})
        kept: list[ImageRecord] = []
        for rec in records:
            captions = tuple(c.strip() for c in rec.captions if c and c.strip())
            problems = ["empty caption"] * (len(rec.captions) - len(captions))
            if captions:
                problem = _probe(rec.path, verify)
                if problem is None:
                    kept.append(ImageRecord(rec.path, captions, rec.label))
                else:
                    problems.append(problem)
            elif not rec.captions:
                problems.append("image without caption")
            if problems and on_error == "raise":
                raise ValueError(f"{source}: {problems[0]} for {rec.path}")
            self.skipped.update(problems)
        if self.skipped:
            if on_error == "raise":
                raise ValueError(f"{source}: {_describe(self.skipped)}")
            warnings.warn(
                f"{source}: skipped {sum(self.skipped.values())} entries "
                f"({_describe(self.skipped)}); kept {len(kept)}",
                stacklevel=3,
            )
        if not kept:
            raise ValueError(f"{source}: no usable image-caption pairs ({_describe(self.skipped)})")
        self.records = kept
        self.labels = [r.label for r in kept]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Image.Image, str, int]:
        rec = self.records[i]
        try:
            image = open_rgb(rec.path)
        except RuntimeError as e:
            raise RuntimeError(f"{self.source}, item {i}: {e}") from e
        return image, rec.captions[0], rec.label

    def captions_of(self, i: int) -> list[str]:
        """All reference captions of image ``i``."""
        return list(self.records[i].captions)


def _describe(counts: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common()) or "nothing skipped"


def iter_records(dataset: Any) -> Iterator[tuple[Image.Image, list[str], int]]:
    """Yield ``(image, all captions, label)`` for every image of a map-style or streaming set."""
    if hasattr(dataset, "iter_records"):
        yield from dataset.iter_records()
        return
    for i in range(len(dataset)):
        image, _, label = dataset[i]
        yield image, dataset.captions_of(i), int(label)
