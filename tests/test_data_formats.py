"""Real data formats read from small fixture files written here: CSV, COCO, image folder, wds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from cma.data import (
    CocoCaptions,
    CsvCaptions,
    ImageFolderCaptions,
    WebDatasetCaptions,
    iter_records,
    load_dataset,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)
    return path


def _png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for i, c in enumerate(COLOURS):
        _png(tmp_path / "img" / f"{i}.png", c)
    (tmp_path / "img" / "broken.png").write_bytes(b"this is not a png")
    return tmp_path


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 4) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tol


def _write_csv(root: Path, rows: list[str], name: str = "data.csv") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- CSV


def test_csv_reads_rows_groups_captions_and_skips_broken_ones(images: Path) -> None:
    path = _write_csv(
        images,
        [
            "filepath\ttitle",
            "img/0.png\ta red square",
            "img/0.png\ta crimson block",  # second caption of the same image
            "img/1.png\ta green square",
            "img/2.png\t   ",  # empty caption -> skipped
            "img/missing.png\tno file",  # missing image -> skipped
            "img/broken.png\tbroken file",  # unreadable image -> skipped
            "img/3.png",  # malformed row (no caption column) -> skipped
        ],
    )
    with pytest.warns(UserWarning, match="skipped 4"):
        ds = CsvCaptions(path)
    assert len(ds) == 2
    assert ds.captions_of(0) == ["a red square", "a crimson block"]
    image, caption, label = ds[0]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == COLOURS[0]
    assert caption == "a red square" and label == -1 and ds.classnames is None
    assert ds.skipped == {
        "empty caption": 1,
        "missing image": 1,
        "unreadable image": 1,
        "malformed row": 1,
    }
    # a DataLoader with workers meets only valid files
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=lambda b: b)
    assert [len(b) for b in loader] == [2]
    with pytest.raises(ValueError, match=r"empty caption for .*2\.png"):
        CsvCaptions(path, on_error="raise")


def test_csv_options_labels_and_separator_hint(images: Path) -> None:
    path = _write_csv(
        images,
        [
            "image,text,cls",
            "img/0.png,a red one,red",
            "img/1.png,a green one,green",
            "img/2.png,a blue one,blue",
        ],
    )
    ds = load_dataset("csv", path, sep=",", img_key="image", caption_key="text", label_key="cls")
    assert ds.classnames == ["blue", "green", "red"]
    assert [ds[i][2] for i in range(3)] == [2, 1, 0]
    with pytest.raises(ValueError, match="separator"):
        CsvCaptions(path)  # tab separator on a comma file: one column
    with pytest.raises(FileNotFoundError):
        CsvCaptions(images / "nope.csv")
    # relative paths resolve against `root`
    other = _write_csv(images / "sub", ["filepath\ttitle", "img/1.png\tgreen"])
    assert len(CsvCaptions(other, root=images)) == 1


def test_file_that_breaks_after_loading_names_itself(images: Path) -> None:
    path = _write_csv(images, ["filepath\ttitle", "img/0.png\tred", "img/1.png\tgreen"])
    ds = CsvCaptions(path)
    (images / "img" / "1.png").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"1\.png"):
        ds[1]


# ---------------------------------------------------------------- COCO


def test_coco_official_json_several_captions_per_image(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "val2017" / f"{i:012d}.jpg", COLOURS[i])
    ann = {
        "images": [{"id": 10 + i, "file_name": f"{i:012d}.jpg"} for i in range(3)]
        + [{"id": 99, "file_name": "lonely.jpg"}],
        "annotations": [
            {"image_id": 10 + i, "id": 100 + 5 * i + k, "caption": f"image {i} caption {k}"}
            for i in range(3)
            for k in range(5)
        ]
        + [{"image_id": 11, "id": 1, "caption": ""}],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps(ann))
    with pytest.warns(UserWarning, match="skipped"):
        ds = CocoCaptions(path)  # image root found as ../val2017
    assert len(ds) == 3 and ds.classnames is None
    assert ds.captions_of(1) == [f"image 1 caption {k}" for k in range(5)]
    assert ds.skipped == {"empty caption": 1, "image without caption": 1}
    assert _close(ds[2][0].getpixel((0, 0)), COLOURS[2])  # jpeg: lossy
    # a folder resolves to annotations/captions_<split>2017.json
    with pytest.warns(UserWarning):
        assert len(load_dataset("coco", tmp_path, split="val")) == 3


def test_coco_karpathy_splits(tmp_path: Path) -> None:
    splits = ["train", "restval", "val", "test", "test"]
    for i in range(5):
        _png(tmp_path / "val2014" / f"im{i}.jpg", COLOURS[i % 4])
    data = {
        "images": [
            {
                "filepath": "val2014",
                "filename": f"im{i}.jpg",
                "split": s,
                "cocoid": i,
                "sentences": [{"raw": f"im {i} says {k}", "tokens": []} for k in range(5)],
            }
            for i, s in enumerate(splits)
        ]
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    assert len(CocoCaptions(path, split="train")) == 2
    assert len(CocoCaptions(path, split="train", restval=False)) == 1
    test = load_dataset("coco", tmp_path, split="test")
    assert len(test) == 2 and test.captions_of(1)[4] == "im 4 says 4"
    with pytest.raises(ValueError, match="split"):
        CocoCaptions(path, split="dev")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        CocoCaptions(path)


# ---------------------------------------------------------------- image folder


def test_image_folder_with_class_names_and_prompts(tmp_path: Path) -> None:
    for cls, colour in [("n01_golden_retriever", COLOURS[0]), ("n02_tabby_cat", COLOURS[1])]:
        for k in range(2):
            _png(tmp_path / "val" / cls / f"{k}.png", colour)
    (tmp_path / "val" / "n02_tabby_cat" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", tmp_path, split="val", templates=["a photo of a {}."])
    assert ds.classnames == ["n01 golden retriever", "n02 tabby cat"]
    assert len(ds) == 4 and [ds[i][2] for i in range(4)] == [0, 0, 1, 1]
    names = tmp_path / "names.txt"
    names.write_text("golden retriever\ntabby cat\n")
    ds = ImageFolderCaptions(tmp_path / "val", classnames=names)
    assert ds.classnames == ["golden retriever", "tabby cat"]
    assert ds[3][1] == "a photo of a tabby cat." and len(ds.captions_of(3)) == len(ds.templates)
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n01_golden_retriever": "dog", "n02_tabby_cat": "cat"}))
    assert ImageFolderCaptions(tmp_path / "val", classnames=mapping).classnames == ["dog", "cat"]
    with pytest.raises(ValueError, match="class names"):
        ImageFolderCaptions(tmp_path / "val", classnames=["just one"])
    with pytest.raises(FileNotFoundError):
        ImageFolderCaptions(tmp_path / "nowhere")


# ---------------------------------------------------------------- webdataset


def test_webdataset_shards_skip_bad_samples(tmp_path: Path) -> None:
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{shard:06d}.tar")) as sink:
            for k in range(3):
                i = 3 * shard + k
                sink.write(
                    {
                        "__key__": f"s{i:04d}",
                        "png": _png_bytes(COLOURS[i % 4]),
                        "txt": f"caption {i}\nsecond caption {i}",
                        "cls": str(i % 2),
                    }
                )
            sink.write({"__key__": "nocap", "png": _png_bytes(COLOURS[0])})
            sink.write({"__key__": "badimg", "png": b"garbage", "txt": "x"})
            sink.write(
                {
                    "__key__": "json",
                    "jpg": _png_bytes(COLOURS[1]),
                    "json": json.dumps({"captions": ["from json"], "label": 1}),
                }
            )
    ds = load_dataset("webdataset", str(tmp_path / "shard-{000000..000001}.tar"))
    with pytest.warns(UserWarning, match="skipped 4"):
        records = list(iter_records(ds))
    assert len(records) == 8
    assert records[0][1] == ["caption 0", "second caption 0"] and records[0][2] == 0
    assert records[3][1] == ["from json"] and records[3][2] == 1
    assert ds.skipped == {"sample without caption": 2, "unreadable image": 2}
    with pytest.warns(UserWarning):
        items = list(WebDatasetCaptions(tmp_path))  # a folder of shards
    assert items[1][1] == "caption 1" and items[1][0].mode == "RGB"
    with pytest.raises(FileNotFoundError, match="not found"):
        WebDatasetCaptions(str(tmp_path / "shard-{000000..000005}.tar"))


def test_load_dataset_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="embedded"):
        load_dataset("parquet", "x")
    with pytest.raises(ValueError, match="path"):
        load_dataset("csv")
    assert torch.utils.data.Dataset in type(load_dataset("embedded", size=2)).__mro__
