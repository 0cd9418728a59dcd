"""Command-line data options shared by ``cma.train``, ``cma.eval`` and ``cma.study``.

Labelled data (issue #14): a CSV set is labelled by a column (``--csv-label-key``); any training
format can be evaluated for zero-shot accuracy and clustering ARI on a class-labelled image
folder (``--zeroshot-data``). ``--classnames`` and ``--zeroshot-templates`` name the classes and
prompts of the labelled set: the zero-shot folder when one is given, else the CSV's label column
(or an ``imagefolder`` dataset).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cma.data.base import read_names
from cma.data.imagefolder import ImageFolderCaptions

__all__ = ["format_options", "load_zeroshot", "parse_classnames", "parse_templates"]


def parse_classnames(value: str | Sequence[str] | None) -> list[str] | str | None:
    """``--classnames``: an existing file (returned as its path; txt one name per line, or
    JSON) or comma-separated names (a list); a list passes through."""
    if value is None or not isinstance(value, str):
        return None if value is None else [str(v) for v in value]
    if Path(value).is_file():
        return value
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError(f"classnames: {value!r} is neither a file nor comma-separated names")
    return names


def parse_templates(values: str | Sequence[str] | None) -> list[str] | None:
    """``--zeroshot-templates``: templates containing ``{}``, or one text file holding one
    template per line. ValueError naming the first template without ``{}``."""
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    if len(values) == 1 and "{}" not in values[0] and Path(values[0]).is_file():
        read = read_names(values[0])
        values = list(read.values()) if isinstance(read, dict) else read
    bad = [t for t in values if "{}" not in t]
    if not values or bad:
        raise ValueError(
            f"zeroshot_templates: each template needs a '{{}}' for the class name, got {bad[:3]} "
            "(or give one text file with a template per line)"
        )
    return values


def format_options(
    kind: str,
    *,
    csv_separator: str = "\t",
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_label_key: str | None = None,
    coco_root: str | None = None,
    classnames: str | Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Keyword options of ``load_dataset(kind, ...)`` from the command-line data flags.

    ``classnames``/``templates`` (already parsed) go to the formats that carry labels: ``csv``
    with ``csv_label_key``, and ``imagefolder``; elsewhere they raise ValueError (use a zero-shot
    folder for them), as does ``csv_label_key`` for a format other than csv.
    """
    if csv_label_key and kind != "csv":
        raise ValueError(f"csv_label_key: only for --dataset-type csv, not {kind!r}")
    labelled = {k: v for k, v in (("classnames", classnames), ("templates", templates)) if v}
    if kind == "csv":
        opts: dict[str, Any] = {
            "sep": csv_separator,
            "img_key": csv_img_key,
            "caption_key": csv_caption_key,
        }
        if csv_label_key:
            opts.update(label_key=csv_label_key, **labelled)
            return opts
    elif kind == "imagefolder":
        return labelled
    else:
        opts = {"root": coco_root} if kind == "coco" and coco_root else {}
    if labelled:
        raise ValueError(
            f"{'/'.join(labelled)}: a {kind} set has no labels to name; give --csv-label-key "
            "(csv) or a class-labelled image folder with --zeroshot-data"
        )
    return opts


def load_zeroshot(
    path: str | os.PathLike,
    *,
    classnames: str | Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    split: str = "val",
) -> ImageFolderCaptions:
    """The ``--zeroshot-data`` image folder (``root/<class>/<image>``; ``root/<split>`` if it
    exists), its captions being the class prompts ``templates``."""
    return ImageFolderCaptions(path, split=split, classnames=classnames, templates=templates)
