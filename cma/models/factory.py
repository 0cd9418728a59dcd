"""Create open_clip models by name, with a pretrained tag, a local checkpoint, or random weights.

``pretrained`` may be

* ``None``: random initialisation;
* an open_clip tag (``"laion2b_s34b_b79k"``): taken from the open_clip / Hugging Face cache;
  when it is not cached and the machine is offline (``HF_HUB_OFFLINE=1``, or the hub does not
  answer within a few seconds) a :class:`PretrainedUnavailableError` says how to provide it;
* a local file: an open_clip checkpoint (a state dict, ``{"state_dict": ...}``, ``.safetensors``)
  or our training checkpoint (a dict with key ``"model"``), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

__all__ = [
    "PretrainedUnavailableError",
    "create_model",
    "list_models",
    "load_weights",
    "model_config",
]

_CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")
_HF_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
_PROBE_HOST = ("huggingface.co", 443)
_PROBE_TIMEOUT_S = 3.0


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights were asked for by tag but are neither cached nor downloadable."""


def list_models() -> list[str]:
    """All architecture names create_model knows (open_clip's and ours)."""
    return open_clip.list_models()


def model_config(name: str) -> dict[str, Any]:
    """The architecture config of ``name`` (a copy); ValueError with suggestions if unknown."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model architecture {name!r}.{hint} "
            f"See cma.models.list_models() for all {len(list_models())} names."
        )
    return cfg


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "CMA_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (DNS included)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(_PROBE_HOST, timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _cached_tag_file(cfg: dict[str, Any], cache_dir: str | None) -> tuple[str | None, str]:
    """(cached file or None, a description of where the weights are expected)."""
    if cfg.get("file"):
        return (cfg["file"] if os.path.isfile(cfg["file"]) else None), cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = [filename] if filename else list(_HF_WEIGHTS)
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip then downloads from the url
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for name in names:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return found, f"Hugging Face repo {repo} ({names[0]})"
            return None, f"Hugging Face repo {repo} (file {names[0]}), Hugging Face cache"
    url = cfg.get("url", "")
    target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return (target if url and os.path.isfile(target) else None), f"{url} -> {target}"


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> None:
    """Raise PretrainedUnavailableError, fast, if ``tag`` can be neither found nor downloaded."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    cached, where = _cached_tag_file(cfg, cache_dir)
    if cached:
        return
    offline = _env_offline()
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE/CMA_OFFLINE is set" if offline else "the hub cannot be reached"
        raise PretrainedUnavailableError(_how_to_provide(name, tag, where, why))


def _how_to_provide(name: str, tag: str, where: str, why: str) -> str:
    return (
        f"pretrained weights {tag!r} for {name!r} are not cached and {why}. Provide them either "
        f"(1) as a local file: create_model({name!r}, pretrained='/path/to/checkpoint.bin') "
        f"(an open_clip state dict or .safetensors, or a cma checkpoint with a 'model' key), or "
        f"(2) in the open_clip cache: on a connected machine run "
        f"open_clip.create_model({name!r}, pretrained={tag!r}) and copy the cache "
        f"(~/.cache/huggingface/hub, or ~/.cache/clip for url downloads) here; "
        f"expected source: {where}."
    )


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint file into ``model`` (open_clip formats or ours, ``{"model": sd}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix in (".safetensors", ".npz", ".npy"):
        open_clip.load_checkpoint(model, str(path))
        return
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise RuntimeError(
            f"cannot load checkpoint {path}: {e}. Expected a torch state dict, "
            "{'state_dict': ...}, {'model': ...} or a .safetensors file."
        ) from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
        model.load_state_dict(state, strict=True)
    else:
        open_clip.load_checkpoint(model, str(path))


def _classify_pretrained(
    name: str, pretrained: str | os.PathLike | None
) -> tuple[str | None, Path | None]:
    """Split ``pretrained`` into (open_clip tag, None) or (None, checkpoint path)."""
    if pretrained is None:
        return None, None
    text = str(pretrained)
    if open_clip.get_pretrained_cfg(name, text):
        return text, None
    if os.path.exists(text) or os.sep in text or Path(text).suffix in _CKPT_SUFFIXES:
        return None, Path(text)
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise ValueError(
        f"{text!r} is neither a pretrained tag of {name!r} nor an existing file. "
        f"Tags of {name!r}: {tags or 'none'}."
    )


def create_model(
    name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """Create ``(model, preprocess, tokenizer)`` for an open_clip or cma architecture name.

    ``pretrained`` is None (random init), an open_clip tag or a checkpoint path (see module doc).
    The model is returned in eval mode on ``device``; ``preprocess`` is the inference transform.
    """
    model_config(name)  # validates the name
    tag, path = _classify_pretrained(name, pretrained)
    if tag is not None:
        _resolve_tag(name, tag, cache_dir)
    quiet = _DropRandomInitNotice()
    logging.getLogger().addFilter(quiet)  # open_clip warns on random init, even before a load
    try:
        model = open_clip.create_model(name, pretrained=tag, device="cpu", cache_dir=cache_dir)
    except Exception as e:
        if tag is None:
            raise
        where = open_clip.get_pretrained_cfg(name, tag)
        raise PretrainedUnavailableError(
            _how_to_provide(name, tag, str(where), f"loading failed ({e})")
        ) from e
    finally:
        logging.getLogger().removeFilter(quiet)
    if path is not None:
        load_weights(model, path)
    model = model.to(device).eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model, preprocess, open_clip.get_tokenizer(name)
