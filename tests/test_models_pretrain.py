"""Pretraining lowers the CLIP loss; base_model caches by config; embed_dataset output and cache."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import cma.models.pretraining as pretrain_mod
from cma.data import EmbeddedWorld, EmbeddingSet
from cma.models import (
    ZEROSHOT_TEMPLATES,
    PretrainConfig,
    base_model,
    base_model_path,
    embed_dataset,
    pretrain,
)

TINY = PretrainConfig(
    arch="cma-micro",
    world_size=64,
    image_size=32,
    steps=60,
    batch_size=64,
    lr=5e-3,
    warmup_steps=10,
    init_logit_scale=math.log(1 / 0.07),
)


torch_threads_before = torch.get_num_threads()


@pytest.fixture(scope="module")
def trained() -> tuple:
    return pretrain(TINY, progress=False, threads=1)


def test_pretraining_lowers_the_contrastive_loss(trained: tuple) -> None:
    model, stats = trained
    losses = stats["losses"]
    assert len(losses) == TINY.steps
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 3.9  # about log(64) at random init
    assert last < 0.9 * first, (first, last)  # a clear drop from chance level
    assert not model.training and stats["seconds"] > 0
    assert torch.get_num_threads() == torch_threads_before


def test_config_key_changes_with_any_field() -> None:
    assert TINY.key() == PretrainConfig(**vars(TINY)).key()
    keys = {
        TINY.key(),
        PretrainConfig().key(),
        PretrainConfig(steps=601).key(),
        PretrainConfig(world_seed=1).key(),
        PretrainConfig(arch="cma-micro").key(),
    }
    assert len(keys) == 5


def test_base_model_is_trained_once_then_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: tuple
) -> None:
    calls = []

    def fake_pretrain(config: PretrainConfig, **kw: object) -> tuple:
        calls.append(config)
        return trained

    monkeypatch.setattr(pretrain_mod, "pretrain", fake_pretrain)
    model = base_model(cache_dir=tmp_path, config=TINY, progress=False)[0]
    path = base_model_path(TINY, tmp_path)
    assert path.is_file() and path.name.startswith("cma-micro-") and len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically
    again = base_model(cache_dir=tmp_path, config=TINY, progress=False)[0]
    assert len(calls) == 1  # reused, not retrained
    for a, b in zip(model.state_dict().values(), trained[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    monkeypatch.setenv("CMA_CACHE", str(tmp_path))
    assert base_model_path(TINY) == path


def test_embed_dataset_shapes_norms_and_cache(trained: tuple, tmp_path: Path) -> None:
    model = trained[0]
    _, preprocess, tokenizer = pretrain_mod.create_model("cma-micro")
    world = EmbeddedWorld("test", size=24, image_size=32)
    es = embed_dataset(
        model,
        preprocess,
        tokenizer,
        world,
        batch_size=10,
        progress=False,
        cache_dir=tmp_path,
        cache_key="auto",
    )
    n = len(world)
    m = sum(len(world.captions_of(i)) for i in range(n))
    assert es.image.shape == (n, 32) and es.text.shape == (m, 32) and m >= 3 * n
    assert torch.allclose(es.image.norm(dim=1), torch.ones(n), atol=1e-5)
    assert torch.allclose(es.text.norm(dim=1), torch.ones(m), atol=1e-5)
    assert es.captions[: len(world.captions_of(0))] == world.captions_of(0)
    assert es.text_to_image.tolist() == [i for i in range(n) for _ in world.captions_of(i)]
    assert torch.equal(es.labels, torch.as_tensor(world.labels))
    assert es.classnames == world.classnames and es.class_text.shape == (10, 32)
    with torch.no_grad():  # images are embedded in eval mode, matching a direct encode
        direct = model.encode_image(preprocess(world[3][0])[None])
    assert torch.allclose(torch.nn.functional.normalize(direct, dim=1)[0], es.image[3], atol=1e-5)
    # class_text is the renormalised mean of the normalised template embeddings
    with torch.no_grad():
        prompts = tokenizer([t.format(world.classnames[2]) for t in ZEROSHOT_TEMPLATES])
        w = torch.nn.functional.normalize(model.encode_text(prompts), dim=1).mean(0)
    assert torch.allclose(torch.nn.functional.normalize(w, dim=0), es.class_text[2], atol=1e-5)
    # the "auto" cache file is reused
    files = list((tmp_path / "embeddings").glob("*.npz"))
    assert len(files) == 1
    cached = EmbeddingSet.load_npz(files[0])
    assert torch.equal(cached.image, es.image)
    again = embed_dataset(
        model, preprocess, tokenizer, world, progress=False, cache_dir=tmp_path, cache_key="auto"
    )
    assert torch.equal(again.text, es.text)
