"""open_clip's CSV format: one row per (image path, caption), columns named in a header.

As in ``open_clip_train`` the defaults are tab-separated with columns ``filepath`` and ``title``
(``--csv-separator``, ``--csv-img-key``, ``--csv-caption-key``). Rows naming the same image are
merged into one image with several captions. Relative paths are resolved against ``root``
(default: the CSV file's folder). An optional ``label_key`` column holds class names or integer
ids; class names become ``classnames`` (sorted) unless ``classnames`` is given (a list, or a text
file with one name per line, or a JSON list). ``templates`` are the zero-shot prompts of a
labelled set (default :data:`~cma.data.base.GENERIC_TEMPLATES`).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cma.data.base import GENERIC_TEMPLATES, FileCaptionDataset, ImageRecord, read_names

__all__ = ["CsvCaptions"]


class CsvCaptions(FileCaptionDataset):
    """Image-caption pairs from an open_clip-style CSV/TSV file (see module doc)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sep: str = "\t",
        img_key: str = "filepath",
        caption_key: str = "title",
        label_key: str | None = None,
        classnames: Sequence[str] | str | os.PathLike | None = None,
        templates: Sequence[str] | None = None,
        root: str | os.PathLike | None = None,
        verify: bool = True,
        on_error: str = "skip",
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CSV file not found: {path}")
        if isinstance(classnames, (str, os.PathLike)):
            listed = read_names(classnames)
            if isinstance(listed, dict):
                raise ValueError(f"classnames: {classnames} maps names; a CSV needs a list")
            classnames = listed
        self.templates = _check_templates(templates or GENERIC_TEMPLATES)
        root = Path(root) if root is not None else path.parent
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            header = reader.fieldnames or []
            wanted = [k for k in (img_key, caption_key, label_key) if k is not None]
            absent = [k for k in wanted if k not in header]
            if absent:
                hint = ""
                if len(header) == 1 and any(s in header[0] for s in (",", "\t", ";")):
                    hint = f" (one column only: is the separator {sep!r} right?)"
                raise ValueError(
                    f"{path}: columns {absent} not in header {header}{hint}; "
                    "set img_key / caption_key / label_key / sep"
                )
            skipped: Counter = Counter()
            grouped: dict[str, tuple[list[str], str | None]] = {}
            for row in reader:
                image, caption = row.get(img_key), row.get(caption_key)
                label = row.get(label_key) if label_key else ""
                if None in row or image is None or caption is None or label is None:
                    skipped["malformed row"] += 1
                    continue
                caps, _ = grouped.setdefault(image.strip(), ([], label.strip() or None))
                caps.append(caption)
        names, labels = _labels([lab for _, lab in grouped.values()], classnames, path)
        records = [
            ImageRecord(root / image, tuple(caps), label)
            for (image, (caps, _)), label in zip(grouped.items(), labels, strict=True)
        ]
        super().__init__(
            records,
            source=f"CSV {path}",
            classnames=names,
            verify=verify,
            on_error=on_error,
            skipped=skipped,
        )


def _check_templates(templates: Sequence[str]) -> list[str]:
    if any("{}" not in t for t in templates):
        raise ValueError("templates: every template must contain '{}'")
    return list(templates)


def _labels(
    raw: list[str | None], classnames: Sequence[str] | None, path: Path
) -> tuple[list[str] | None, list[int]]:
    """Turn label cells (names, int ids or empty) into (classnames, int labels, -1 = none)."""
    present = [r for r in raw if r is not None]
    if not present:
        return (list(classnames) if classnames else None), [-1] * len(raw)
    if all(r.lstrip("-").isdigit() for r in present):
        ids = [int(r) if r is not None else -1 for r in raw]
        names = list(classnames) if classnames else [str(i) for i in range(max(ids) + 1)]
        if max(ids) >= len(names):
            raise ValueError(f"{path}: label {max(ids)} but only {len(names)} class names")
        return names, ids
    names = list(classnames) if classnames else sorted(set(present))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(present) - set(index))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the class names")
    return names, [index[r] if r is not None else -1 for r in raw]
