"""Datasets (the embedded world and real formats) and the ``EmbeddingSet`` container.

Every map-style dataset yields ``(PIL.Image RGB, caption, label)`` (label -1 if unlabelled) and
has ``classnames`` (None if unlabelled) and ``captions_of(i)``; see ``docs/data.md``.
"""

from __future__ import annotations

import os
from typing import Any

from cma.data.base import (
    GENERIC_TEMPLATES,
    CaptionDataset,
    FileCaptionDataset,
    ImageRecord,
    iter_records,
)
from cma.data.coco import CocoCaptions
from cma.data.csv import CsvCaptions
from cma.data.embeddings import EmbeddingSet
from cma.data.imagefolder import ImageFolderCaptions
from cma.data.options import format_options, load_zeroshot, parse_classnames, parse_templates
from cma.data.wds import WebDatasetCaptions
from cma.data.world import ZEROSHOT_TEMPLATES, EmbeddedWorld

__all__ = [
    "DATASET_KINDS",
    "GENERIC_TEMPLATES",
    "ZEROSHOT_TEMPLATES",
    "CaptionDataset",
    "CocoCaptions",
    "CsvCaptions",
    "EmbeddedWorld",
    "EmbeddingSet",
    "FileCaptionDataset",
    "ImageFolderCaptions",
    "ImageRecord",
    "WebDatasetCaptions",
    "format_options",
    "iter_records",
    "load_dataset",
    "load_zeroshot",
    "parse_classnames",
    "parse_templates",
]

DATASET_KINDS = ("embedded", "csv", "coco", "imagefolder", "webdataset")


def load_dataset(
    kind: str, path: str | os.PathLike | None = None, *, split: str = "train", **options: Any
) -> Any:
    """Open a dataset of ``kind`` (one of ``DATASET_KINDS``) at ``path`` for ``split``.

    ``options`` go to the format's class (e.g. ``sep``/``img_key``/``caption_key`` for csv,
    ``root`` for coco, ``classnames``/``templates`` for imagefolder). For csv and webdataset a
    ``{split}`` placeholder in ``path`` is filled in. "webdataset" returns an IterableDataset.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASET_KINDS}")
    if kind == "embedded":
        if path is not None:
            raise ValueError("the embedded world takes no path (it is generated)")
        return EmbeddedWorld(split=split, **options)
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    if kind == "coco":
        return CocoCaptions(path, split=split, **options)
    if kind == "imagefolder":
        return ImageFolderCaptions(path, split=split, **options)
    path = str(path).replace("{split}", split)
    if kind == "csv":
        return CsvCaptions(path, **options)
    return WebDatasetCaptions(path, **options)
