"""Embedding extraction: every image once, every reference caption, and zero-shot class weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cma.data.base import iter_records
from cma.data.embeddings import EmbeddingSet
from cma.data.world import ZEROSHOT_TEMPLATES

__all__ = ["default_cache_dir", "embed_dataset", "encode_texts", "fingerprint"]


def default_cache_dir() -> Path:
    """``$CMA_CACHE`` or ``~/.cache/cma``."""
    return Path(os.environ.get("CMA_CACHE") or Path.home() / ".cache" / "cma")


def _l2n(t: Tensor) -> Tensor:
    return torch.nn.functional.normalize(t.float(), dim=-1)


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Tensor:
    """Normalised text embeddings (len(texts), d), float32 on the CPU."""
    starts = range(0, len(texts), batch_size)
    out = [
        _l2n(model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device))).cpu()
        for i in tqdm(starts, disable=not progress, desc="embed captions", unit="batch")
    ]
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def class_embeddings(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Prompt-ensembled zero-shot weights (K, d): normalised mean of normalised prompts."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of strings each containing '{}'")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, prompts, device=device)
    return _l2n(emb.view(len(classnames), len(templates), -1).mean(1))


def fingerprint(obj: Any) -> str:
    """A short content hash of a model (its weights) or a dataset (its config or records)."""
    h = hashlib.sha256()
    if isinstance(obj, nn.Module):
        for name, t in obj.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif hasattr(obj, "config"):
        h.update(json.dumps(obj.config, sort_keys=True).encode())
    elif hasattr(obj, "records"):
        h.update(type(obj).__name__.encode())
        for r in obj.records:
            h.update(repr((str(r.path), r.captions, r.label)).encode())
    else:
        raise ValueError(
            f"cannot fingerprint a {type(obj).__name__}; pass an explicit cache_key instead"
        )
    return h.hexdigest()[:16]


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    dataset: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    templates: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    progress: bool = True,
) -> EmbeddingSet:
    """Embed a caption dataset into an :class:`EmbeddingSet` (normalised, float32, CPU).

    Every image is encoded once and every caption of ``captions_of(i)`` too (so M ≥ N).
    When the dataset has ``classnames``, ``class_text`` is built from ``templates`` (default:
    the dataset's ``templates`` attribute, else ``ZEROSHOT_TEMPLATES``). With ``cache_key`` the
    result is stored as ``<cache_dir>/embeddings/<cache_key>.npz`` and reused;
    ``cache_key="auto"`` derives the key from the model weights, the dataset and the templates.
    """
    classnames = getattr(dataset, "classnames", None)
    templates = list(templates or getattr(dataset, "templates", None) or ZEROSHOT_TEMPLATES)
    cache_path = None
    if cache_key is not None:
        if cache_key == "auto":
            parts = [fingerprint(model), fingerprint(dataset), json.dumps(templates)]
            cache_key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
        cache_path = Path(cache_dir or default_cache_dir()) / "embeddings" / f"{cache_key}.npz"
        if cache_path.is_file():
            return EmbeddingSet.load_npz(cache_path)

    was_training = model.training
    model.eval()
    images: list[Tensor] = []
    pending: list[Tensor] = []
    captions: list[str] = []
    owners: list[int] = []
    labels: list[int] = []

    def flush() -> None:
        batch = torch.stack(pending).to(device)
        images.append(_l2n(model.encode_image(batch)).cpu())
        pending.clear()

    total = len(dataset) if hasattr(dataset, "__len__") else None
    for image, caps, label in tqdm(
        iter_records(dataset), total=total, disable=not progress, desc="embed images", unit="img"
    ):
        if not caps:
            raise ValueError(f"image {len(labels)} of the dataset has no caption")
        pending.append(preprocess(image))
        owners.extend([len(labels)] * len(caps))
        captions.extend(caps)
        labels.append(label)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not labels:
        raise ValueError("the dataset is empty")
    text = encode_texts(
        model, tokenizer, captions, batch_size=batch_size, device=device, progress=progress
    )
    has_labels = classnames is not None and min(labels) >= 0
    result = EmbeddingSet(
        image=torch.cat(images),
        text=text,
        text_to_image=torch.tensor(owners),
        captions=captions,
        labels=torch.tensor(labels) if has_labels else None,
        classnames=list(classnames) if classnames is not None else None,
        class_text=(
            class_embeddings(model, tokenizer, classnames, templates, device=device)
            if classnames
            else None
        ),
    )
    model.train(was_training)
    if cache_path is not None:
        result.save_npz(cache_path)
    return result
