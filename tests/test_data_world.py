"""The embedded world: determinism, splits, caption variety, unambiguous classes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from cma.data import EmbeddedWorld, load_dataset
from cma.data.world import COLORS, SHAPE_SYNONYMS, SHAPES

N = 120


@pytest.fixture(scope="module")
def train() -> EmbeddedWorld:
    return EmbeddedWorld("train", size=N)


def test_item_protocol(train: EmbeddedWorld) -> None:
    image, caption, label = train[7]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64)
    assert isinstance(caption, str) and caption == train.captions_of(7)[0]
    assert label == int(train.labels[7]) and 0 <= label < len(train.classnames)
    assert len(train) == N and len(train.labels) == N
    assert len(train.classnames) >= 8 and len(set(train.classnames)) == len(train.classnames)
    assert train[-1][2] == train[N - 1][2]
    with pytest.raises(IndexError):
        train[N]


def test_deterministic_for_a_seed(train: EmbeddedWorld) -> None:
    again = EmbeddedWorld("train", size=N)
    other = EmbeddedWorld("train", size=N, seed=1)
    assert np.array_equal(train.images, again.images)
    assert [train.captions_of(i) for i in range(N)] == [again.captions_of(i) for i in range(N)]
    assert not np.array_equal(train.images, other.images)
    # a prefix of a bigger world is the smaller world; a lone image equals the batch render
    bigger = EmbeddedWorld("train", size=N + 30)
    assert np.array_equal(bigger.images[:N], train.images)
    assert np.array_equal(EmbeddedWorld("train", size=N).image_array(5), train.images[5])


def test_splits_are_disjoint(train: EmbeddedWorld) -> None:
    test = EmbeddedWorld("test", size=N)
    val = load_dataset("embedded", split="val", size=N)
    digests = [{im.tobytes() for im in w.images} for w in (train, val, test)]
    assert all(len(d) == N for d in digests)  # no duplicate image inside a split
    assert not (digests[0] & digests[1]) and not (digests[0] & digests[2])
    assert not (digests[1] & digests[2])
    assert len(EmbeddedWorld("test").labels) == 1000 and len(EmbeddedWorld("val")) == 1000


def test_captions_are_varied_and_describe_the_class(train: EmbeddedWorld) -> None:
    all_caps = [c for i in range(N) for c in train.captions_of(i)]
    assert all(3 <= len(train.captions_of(i)) <= 5 for i in range(N))
    assert len(set(all_caps)) > 20 * len(train.classnames)
    assert len({c for i in range(N) for c in train.captions_of(i)[:1]}) > 0.9 * N
    for i in range(N):
        shape = train.classnames[train.labels[i]]
        words = [shape, *SHAPE_SYNONYMS[shape]]
        for cap in train.captions_of(i):
            assert any(w in cap.lower() for w in words), cap
            assert cap.lower() not in train.classnames  # never just the class name
            assert " a a" not in cap.lower() and " a o" not in cap.lower()  # articles fixed


def test_classes_balanced_and_attributes_vary(train: EmbeddedWorld) -> None:
    counts = np.bincount(train.labels, minlength=len(SHAPES))
    assert counts.max() - counts.min() <= 1
    attrs = [train.attributes_of(i) for i in range(N)]
    assert len(attrs[0]) >= 5
    for key in attrs[0]:
        assert len({a[key] for a in attrs}) >= 3, key
    assert {a["color"] for a in attrs} <= set(COLORS)


def test_object_colour_is_visible(train: EmbeddedWorld) -> None:
    for i in range(20):
        rgb = np.array(COLORS[train.attributes_of(i)["color"]])
        dist = np.abs(train.images[i].astype(int) - rgb).sum(-1)
        assert (dist < 60).sum() >= 20, i  # at least 20 pixels of the object's colour


def test_other_image_size_and_errors() -> None:
    small = EmbeddedWorld("val", size=4, image_size=32)
    assert small[0][0].size == (32, 32) and small.images.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="split"):
        EmbeddedWorld("dev")
    with pytest.raises(ValueError, match="size"):
        EmbeddedWorld("train", size=0)


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    EmbeddedWorld("train", size=1000).images  # noqa: B018 - renders
    assert time.perf_counter() - start < 3.0 * 1.5  # 20k in < 1 min means 1k in < 3 s
