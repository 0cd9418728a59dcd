"""Class-labelled image folders (``root/<class folder>/<image>``) for zero-shot evaluation.

Classes are the sub-folders in sorted order. Their names are the folder names with ``_`` as
spaces, or come from ``classnames``: a list, or a file — plain text with one name per line (in
sorted-folder order), or JSON (a list, or an object mapping folder name to class name). Each
image's captions are the class prompts (``templates``), the first being its item caption.
If ``root/<split>`` is a folder (ImageNet-style train/val layout), it is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cma.data.base import GENERIC_TEMPLATES, FileCaptionDataset, ImageRecord, read_names

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderCaptions"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_classnames(spec: Sequence[str] | str | os.PathLike, folders: list[str]) -> list[str]:
    if isinstance(spec, (str, os.PathLike)):
        read = read_names(spec)
        if isinstance(read, dict):
            missing = [f for f in folders if f not in read]
            if missing:
                raise ValueError(f"{spec}: no class name for folders {missing[:5]}")
            return [read[f] for f in folders]
        spec = read
    names = [str(s) for s in spec]
    if len(names) != len(folders):
        raise ValueError(f"{len(names)} class names given for {len(folders)} class folders")
    return names


class ImageFolderCaptions(FileCaptionDataset):
    """Images labelled by their folder; captions are prompt templates (see module doc)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = None,
        classnames: Sequence[str] | str | os.PathLike | None = None,
        templates: Sequence[str] | None = None,
        verify: bool = True,
        on_error: str = "skip",
    ) -> None:
        root = Path(root)
        if split is not None and (root / split).is_dir():
            root = root / split
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
        names = (
            _read_classnames(classnames, folders)
            if classnames is not None
            else [f.replace("_", " ") for f in folders]
        )
        self.templates = list(templates or GENERIC_TEMPLATES)
        if any("{}" not in t for t in self.templates):
            raise ValueError("every template must contain '{}'")
        records = [
            ImageRecord(p, tuple(t.format(name) for t in self.templates), label)
            for label, (folder, name) in enumerate(zip(folders, names, strict=True))
            for p in sorted((root / folder).iterdir())
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        super().__init__(
            records,
            source=f"image folder {root}",
            classnames=names,
            verify=verify,
            on_error=on_error,
        )
