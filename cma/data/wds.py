"""webdataset tar shards, read with the ``webdataset`` package as open_clip does.

Each sample is a group of tar members sharing a key: an image (``jpg``/``jpeg``/``png``/
``webp``), its caption(s) in ``txt`` (one caption per line) or in ``json`` (``"caption"`` or
``"captions"``), and optionally a class id in ``cls`` (or ``json["label"]``). ``urls`` is a
brace pattern (``shards/{000000..000009}.tar``), a list, or a folder (all its ``*.tar``).

This is an ``IterableDataset`` (no ``len``, no indexing): it yields ``(image, caption, label)``
with the first caption, and :meth:`iter_records` yields ``(image, all captions, label)``, which
``cma.models.embed_dataset`` uses. Samples without an image or a caption, undecodable images
and unreadable tar members are skipped and counted in ``skipped`` (per process: each DataLoader
worker reads its own shards and counts its own), with one warning at the end of a pass.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

__all__ = ["WebDatasetCaptions"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _expand(urls: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(urls, (str, os.PathLike)) and Path(urls).is_dir():
        found = sorted(str(p) for p in Path(urls).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in folder {urls}")
        return found
    if isinstance(urls, (str, os.PathLike)):
        return list(wds.shardlists.expand_urls(str(urls)))
    return [str(u) for u in urls]


class WebDatasetCaptions(IterableDataset):
    """Image-caption samples streamed from webdataset shards (see module doc)."""

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str],
        *,
        classnames: Sequence[str] | None = None,
        on_error: str = "skip",
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.urls = _expand(urls)
        if not self.urls:
            raise ValueError("no shard urls given")
        local = [u for u in self.urls if "://" not in u and not u.startswith("pipe:")]
        missing = [u for u in local if not os.path.isfile(u)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[:3]}")
        self.classnames = list(classnames) if classnames is not None else None
        self.on_error = on_error
        self.skipped: Counter = Counter()

    def _handler(self, exn: Exception) -> bool:
        if self.on_error == "raise":
            raise RuntimeError(f"webdataset {self.urls[0]}...: {exn}") from exn
        self.skipped["unreadable tar member"] += 1
        return True

    def _parse(self, sample: dict[str, Any]) -> tuple[Image.Image, list[str], int] | None:
        """Decode one raw sample; None (counted) when it is unusable."""
        problem = None
        meta: dict[str, Any] = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError):
                problem = "unreadable json"
        captions: list[str] = []
        if "txt" in sample:
            captions = sample["txt"].decode("utf-8", "replace").splitlines()
        elif isinstance(meta.get("captions"), list):
            captions = [str(c) for c in meta["captions"]]
        elif isinstance(meta.get("caption"), str):
            captions = [meta["caption"]]
        captions = [c.strip() for c in captions if c.strip()]
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        image = None
        if problem is None and not captions:
            problem = "sample without caption"
        elif problem is None and key is None:
            problem = "sample without image"
        elif problem is None:
            try:
                with Image.open(io.BytesIO(sample[key])) as im:
                    image = im.convert("RGB")
            except Exception:  # PIL raises many types for broken files
                problem = "unreadable image"
        if problem is not None:
            if self.on_error == "raise":
                raise ValueError(f"webdataset sample {sample.get('__key__')!r}: {problem}")
            self.skipped[problem] += 1
            return None
        try:
            label = int(sample["cls"]) if "cls" in sample else int(meta.get("label", -1))
        except (TypeError, ValueError):
            label = -1
            self.skipped["unreadable label (kept as -1)"] += 1
        return image, captions, label

    def iter_records(self) -> Iterator[tuple[Image.Image, list[str], int]]:
        """Yield ``(image, all captions, label)`` for every usable sample of one pass."""
        self.skipped.clear()
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=self._handler),
        )
        for sample in pipeline:
            record = self._parse(sample)
            if record is not None:
                yield record
        if self.skipped:
            total = sum(self.skipped.values())
            detail = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common())
            warnings.warn(f"webdataset: skipped {total} samples ({detail})", stacklevel=2)

    def __iter__(self) -> Iterator[tuple[Image.Image, str, int]]:
        for image, captions, label in self.iter_records():
            yield image, captions[0], label
