"""COCO captions: the official ``captions_*.json`` and Karpathy's ``dataset_coco.json`` splits.

* Official (``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``):
  one file per split; images live in ``root`` (default: a folder named like the file's split,
  e.g. ``val2017`` for ``captions_val2017.json``, next to the json or one level up; else the
  json's folder). ``split`` is ignored when a file is given.
* Karpathy (``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``):
  ``split`` selects "train" (with "restval" unless ``restval=False``), "val" or "test"; paths are
  ``root/filepath/filename`` (root default: the json's folder).

``path`` may also be a folder holding ``dataset_coco.json`` or ``annotations/captions_<split>
<year>.json``. Every image keeps all its captions (5 or so); there are no class labels.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from cma.data.base import FileCaptionDataset, ImageRecord

__all__ = ["CocoCaptions"]

KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def _find_json(folder: Path, split: str) -> Path:
    candidates = [folder / "dataset_coco.json"] + [
        folder / sub / f"captions_{split}{year}.json"
        for year in (2017, 2014)
        for sub in ("annotations", ".")
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no COCO caption file in {folder}; looked for {[str(c) for c in candidates]}"
    )


def _official_root(path: Path) -> Path:
    match = re.match(r"captions_(\w+?\d{4})$", path.stem)
    if match:
        for folder in (path.parent, path.parent.parent):
            if (folder / match.group(1)).is_dir():
                return folder / match.group(1)
    return path.parent


class CocoCaptions(FileCaptionDataset):
    """COCO image-caption data, official or Karpathy json (see module doc)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str = "train",
        root: str | os.PathLike | None = None,
        restval: bool = True,
        verify: bool = True,
        on_error: str = "skip",
    ) -> None:
        path = Path(path)
        if path.is_dir():
            path = _find_json(path, split)
        if not path.is_file():
            raise FileNotFoundError(f"COCO caption file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"{path}: expected a JSON object with an 'images' list")
        skipped: Counter = Counter()
        if "annotations" in data:
            records = self._official(data, Path(root) if root else _official_root(path), skipped)
        elif all("sentences" in im for im in images[:1]):
            if split not in KARPATHY_SPLITS:
                raise ValueError(f"split must be one of {sorted(KARPATHY_SPLITS)}, got {split!r}")
            wanted = KARPATHY_SPLITS[split] if restval else (split,)
            records = self._karpathy(images, Path(root) if root else path.parent, wanted, skipped)
        else:
            raise ValueError(
                f"{path}: neither official COCO captions ('annotations') nor Karpathy "
                "format ('sentences' in images)"
            )
        super().__init__(
            records,
            source=f"COCO {path.name}",
            verify=verify,
            on_error=on_error,
            skipped=skipped,
        )

    @staticmethod
    def _official(data: dict[str, Any], root: Path, skipped: Counter) -> list[ImageRecord]:
        captions: dict[Any, list[str]] = {}
        for ann in data["annotations"]:
            if "image_id" not in ann or not isinstance(ann.get("caption"), str):
                skipped["malformed annotation"] += 1
                continue
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        records = []
        for im in data["images"]:
            if "id" not in im or "file_name" not in im:
                skipped["malformed image entry"] += 1
            elif im["id"] not in captions:
                skipped["image without caption"] += 1
            else:
                records.append(ImageRecord(root / im["file_name"], tuple(captions[im["id"]])))
        return records

    @staticmethod
    def _karpathy(
        images: list[dict[str, Any]], root: Path, wanted: tuple[str, ...], skipped: Counter
    ) -> list[ImageRecord]:
        records = []
        for im in images:
            if im.get("split") not in wanted:
                continue
            if "filename" not in im:
                skipped["malformed image entry"] += 1
                continue
            caps = tuple(s.get("raw", "") for s in im.get("sentences", []) if isinstance(s, dict))
            records.append(ImageRecord(root / im.get("filepath", "") / im["filename"], caps))
        return records
