"""create_model: names, registered configs, checkpoints in both formats, the offline error."""

from __future__ import annotations

import time
from pathlib import Path

import open_clip
import pytest
import torch

import cma.models.factory as factory
from cma.models import PretrainedUnavailableError, create_model, list_models


@pytest.fixture(scope="module")
def micro() -> tuple:
    torch.manual_seed(0)
    return create_model("cma-micro")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registered_configs_build_a_real_clip(micro: tuple) -> None:
    assert {"cma-tiny", "cma-micro"} <= set(open_clip.list_models()) & set(list_models())
    model, preprocess, tokenizer = micro
    assert isinstance(model, open_clip.CLIP) and not model.training
    assert isinstance(model.visual, open_clip.transformer.VisionTransformer)
    from PIL import Image

    x = preprocess(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    tokens = tokenizer(["a red star", "a blue ring"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        img, txt = model.encode_image(x[None]), model.encode_text(tokens)
    assert img.shape == (1, 32) and txt.shape == (2, 32)


def test_unknown_names_and_tags_list_alternatives() -> None:
    with pytest.raises(ValueError, match="ViT-B-32"):
        create_model("ViT-B-33")
    with pytest.raises(ValueError, match="cma-tiny"):
        create_model("cma-tiyn")
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        create_model("ViT-B-32", "no_such_tag")


def test_uncached_tag_offline_fails_fast_with_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError) as err:
        create_model("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "pretrained='/path/to/checkpoint.bin'" in msg and "cache" in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert isinstance(err.value, RuntimeError)
    # not flagged offline, but the hub does not answer: same error
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(factory, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(PretrainedUnavailableError, match="cannot be reached"):
        create_model("ViT-B-32", "openai", cache_dir=str(tmp_path))


def test_checkpoints_ours_and_open_clip(micro: tuple, tmp_path: Path) -> None:
    model = micro[0]
    state = model.state_dict()
    ours, plain, wrapped = tmp_path / "ours.pt", tmp_path / "plain.bin", tmp_path / "w.pth"
    torch.save({"model": state, "step": 3, "arch": "cma-micro"}, ours)
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    for path in (ours, plain, wrapped):
        loaded = create_model("cma-micro", str(path))[0]
        assert _same_weights(loaded, model), path
    assert not _same_weights(create_model("cma-micro")[0], model)  # random init differs
    with pytest.raises(FileNotFoundError):
        create_model("cma-micro", str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot load checkpoint"):
        create_model("cma-micro", str(junk))
    with pytest.raises(RuntimeError):  # an architecture mismatch is reported by torch
        create_model("cma-tiny", str(ours))
