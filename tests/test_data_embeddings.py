"""EmbeddingSet: validation, pairing, .npz round trip and clear errors on bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cma.data import EmbeddingSet


def _set(n: int = 4, per: int = 2, d: int = 8, labelled: bool = True) -> EmbeddingSet:
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.functional.normalize
    m = n * per
    return EmbeddingSet(
        image=norm(torch.randn(n, d, generator=g), dim=1),
        text=norm(torch.randn(m, d, generator=g), dim=1),
        text_to_image=torch.arange(m) % n,  # caption j describes image j % n
        captions=[f"caption {j}" for j in range(m)],
        labels=torch.tensor([0, 1, 2, 0][:n]) if labelled else None,
        classnames=["a", "b", "c"] if labelled else None,
        class_text=norm(torch.randn(3, d, generator=g), dim=1) if labelled else None,
    )


def test_paired_uses_first_caption_of_each_image() -> None:
    es = _set()
    x, y = es.paired()
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, es.text[:4])
    shuffled = es.replace(
        text=es.text.flip(0),
        text_to_image=es.text_to_image.flip(0),
        captions=es.captions[::-1],
    )
    assert torch.equal(shuffled.paired()[1][0], es.text[4])  # image 0: caption 4 comes first now
    with pytest.raises(ValueError, match="without a caption"):
        es.replace(text_to_image=torch.zeros(8, dtype=torch.long)).paired()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": torch.randn(4)}, "image"),
        ({"text": torch.randn(8, 5)}, "text"),
        ({"text": torch.full((8, 8), float("nan"))}, "text"),
        ({"text_to_image": torch.arange(8)}, "text_to_image"),  # image 7 does not exist
        ({"text_to_image": torch.zeros(8)}, "text_to_image"),  # floats
        ({"captions": ["x"]}, "captions"),
        ({"labels": torch.tensor([0, 1, 5, 0])}, "labels"),
        ({"class_text": torch.randn(2, 8)}, "class_text"),
    ],
)
def test_validation_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _set().replace(**change)


def test_npz_round_trip(tmp_path: Path) -> None:
    for es in (_set(), _set(labelled=False)):
        path = tmp_path / "sub" / "emb.npz"
        es.save_npz(path)
        back = EmbeddingSet.load_npz(path)
        assert torch.equal(back.image, es.image) and torch.equal(back.text, es.text)
        assert torch.equal(back.text_to_image, es.text_to_image)
        assert back.captions == es.captions and back.classnames == es.classnames
        if es.labels is None:
            assert back.labels is None and back.class_text is None
        else:
            assert torch.equal(back.labels, es.labels)
            assert torch.equal(back.class_text, es.class_text)
        assert back.image.dtype == torch.float32 and back.text_to_image.dtype == torch.long
    assert [p.name for p in path.parent.iterdir()] == ["emb.npz"]  # no temporary left over


def test_numpy_inputs_are_accepted() -> None:
    es = _set()
    again = EmbeddingSet(
        image=es.image.double().numpy(),
        text=es.text.numpy(),
        text_to_image=es.text_to_image.numpy().astype(np.int32),
        captions=es.captions,
    )
    assert again.image.dtype == torch.float32 and again.text_to_image.dtype == torch.long


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EmbeddingSet.load_npz(tmp_path / "absent.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        EmbeddingSet.load_npz(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, image=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="lacks"):
        EmbeddingSet.load_npz(partial)
    mismatched = tmp_path / "mismatch.npz"
    np.savez(
        mismatched,
        image=np.zeros((2, 3), np.float32),
        text=np.zeros((2, 4), np.float32),
        text_to_image=np.arange(2),
        captions=np.array(["a", "b"]),
    )
    with pytest.raises(ValueError, match=r"mismatch\.npz.*text"):
        EmbeddingSet.load_npz(mismatched)
    truncated = tmp_path / "truncated.npz"
    _set().save_npz(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError):
        EmbeddingSet.load_npz(truncated)
    assert not zipfile.is_zipfile(corrupt)
