"""Issue #14: labelled real data (--csv-label-key, --zeroshot-data) and the α = 0 control."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

import cma.eval.__main__ as eval_cli
import cma.train.runner as runner
from cma.data import (
    GENERIC_TEMPLATES,
    CsvCaptions,
    format_options,
    load_zeroshot,
    parse_classnames,
    parse_templates,
)
from cma.eval.suite import excess_gap, gap_reduction
from cma.train.config import TrainConfig, parse_config
from cma.train.control import alignment_effect, find_control

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 230)}


def make_images(root: Path, per_class: int = 4) -> dict[str, list[Path]]:
    """root/<color>/<i>.png: 32 px squares, a little different each."""
    out: dict[str, list[Path]] = {}
    for name, rgb in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True)
        out[name] = []
        for i in range(per_class):
            img = Image.new("RGB", (32, 32), (10 * i, 10 * i, 10 * i))
            img.paste(rgb, (4 + i, 4, 20 + i, 24))
            path = folder / f"{i}.png"
            img.save(path)
            out[name].append(path)
    return out


def make_csv(path: Path, images: dict[str, list[Path]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title", "class"])
        for name, paths in images.items():
            for i, p in enumerate(paths):
                rel = p.relative_to(path.parent)
                w.writerow([rel, f"a {name} square number {i}", name])
                w.writerow([rel, f"a square painted {name}", name])
    return path


@pytest.fixture()
def data(tmp_path: Path) -> dict[str, Path]:
    images = make_images(tmp_path / "imgs")
    folder = tmp_path / "zs"
    make_images(folder / "val")  # ImageNet-style: root/val/<class>/<image>
    names = tmp_path / "names.txt"
    names.write_text("crimson\nnavy\n")  # sorted folder order: blue, red
    return {
        "csv": make_csv(tmp_path / "pairs.csv", images),
        "folder": folder,
        "names": names,
        "cache": tmp_path / "cache",
    }


def spy_zeroshot(module: object, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the ``zeroshot`` set of every ``module.evaluate_detailed`` call."""
    seen: list = []
    original = module.evaluate_detailed

    def spy(train, test, **kw):
        seen.append(kw["zeroshot"])
        return original(train, test, **kw)

    monkeypatch.setattr(module, "evaluate_detailed", spy)
    return seen


# ------------------------------------------------------------------------ data options
def test_parse_classnames_and_templates(tmp_path: Path) -> None:
    assert parse_classnames("cat, dog ,bird") == ["cat", "dog", "bird"]
    f = tmp_path / "n.txt"
    f.write_text("x\ny\n")
    assert parse_classnames(str(f)) == str(f)  # files are read by the formats
    assert parse_templates(["a {}.", "the {}"]) == ["a {}.", "the {}"]
    t = tmp_path / "t.txt"
    t.write_text("a photo of a {}.\n\nart of the {}\n")
    assert parse_templates([str(t)]) == ["a photo of a {}.", "art of the {}"]
    with pytest.raises(ValueError, match=r"zeroshot_templates.*no braces"):
        parse_templates(["no braces"])
    assert parse_templates(None) is None and parse_classnames(None) is None


def test_format_options_route_labels(tmp_path: Path) -> None:
    opts = format_options("csv", csv_separator=",", csv_label_key="class", classnames=["a"])
    assert opts == {"sep": ",", "img_key": "filepath", "caption_key": "title",
                    "label_key": "class", "classnames": ["a"]}  # fmt: skip
    assert format_options("coco", coco_root="/c") == {"root": "/c"}
    assert format_options("imagefolder", templates=["x {}"]) == {"templates": ["x {}"]}
    with pytest.raises(ValueError, match="csv_label_key: only for --dataset-type csv"):
        format_options("coco", csv_label_key="class")
    with pytest.raises(ValueError, match="classnames: a coco set has no labels"):
        format_options("coco", classnames=["a"])
    with pytest.raises(ValueError, match="--csv-label-key"):
        format_options("csv", templates=["a {}"])  # a CSV without its label column


def test_labelled_csv_with_classnames_file_and_templates(data: dict[str, Path]) -> None:
    ds = CsvCaptions(data["csv"], sep=",", label_key="class")
    assert ds.classnames == ["blue", "red"] and ds.templates == GENERIC_TEMPLATES
    assert sorted(set(ds.labels)) == [0, 1] and len(ds) == 8 and len(ds.captions_of(0)) == 2
    ids = data["csv"].with_name("ids.csv")
    rows = [f"imgs/{c}/{i}.png,a thing,{k}\n" for k, c in enumerate(COLORS) for i in range(4)]
    ids.write_text("filepath,title,class\n" + "".join(rows))
    named = CsvCaptions(
        ids, sep=",", label_key="class", classnames=str(data["names"]), templates=["art of a {}"]
    )
    assert named.classnames == ["crimson", "navy"] and named.templates == ["art of a {}"]
    assert named.labels == [0] * 4 + [1] * 4


def test_trainer_flags_are_validated() -> None:
    cfg = parse_config(["--control", "--alpha-target", "0.5", "--seed", "2"])
    assert cfg.alpha_target == 0 and cfg.is_control and cfg.run_name == "tpc-control-s2"
    assert parse_config(["--schedule", "constant"]).run_name == "constant-a0.5-s0"
    with pytest.raises(ValueError, match="csv_label_key"):
        TrainConfig(csv_label_key="class")  # the embedded world
    with pytest.raises(ValueError, match="classnames/zeroshot_templates"):
        TrainConfig(classnames="a,b")
    with pytest.raises(ValueError, match="zeroshot_templates"):
        TrainConfig(zeroshot_data="x", zeroshot_templates=["no placeholder"])


def test_excess_gap_reduction() -> None:
    before = {"gap_total": 1.0, "gap_paraphrase": 0.6}
    after = {"gap_total": 0.7, "gap_paraphrase": 0.6}
    assert excess_gap(before) == pytest.approx(0.4)
    change = gap_reduction(before, after)
    assert change["gap_reduction_pct"] == pytest.approx(30.0)
    assert change["gap_excess_reduction_pct"] == pytest.approx(75.0)
    assert "gap_excess_reduction_pct" not in gap_reduction({"gap_total": 1.0}, after)


# ------------------------------------------------------------------------------ cma.eval
def test_eval_cli_on_a_labelled_csv_and_a_zeroshot_folder(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--model", "cma-micro", "--dataset-type", "csv", "--val-data", str(data["csv"]),
              "--csv-separator", ",", "--no-captioning", "--quiet", "--ari-seeds", "2",
              "--cache-dir", str(data["cache"])]  # fmt: skip
    assert eval_cli.main([*common, "--output", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "zeroshot_top1" not in plain and "ari" not in plain  # unlabelled without the flag

    assert (
        eval_cli.main([*common, "--csv-label-key", "class", "--output", str(tmp_path / "l")]) == 0
    )
    labelled = json.loads((tmp_path / "l" / "metrics.json").read_text())
    assert 0.0 <= labelled["zeroshot_top1"] <= 1.0 and -1.0 <= labelled["ari"] <= 1.0

    seen = spy_zeroshot(eval_cli, monkeypatch)
    argv = [*common, "--zeroshot-data", str(data["folder"]), "--classnames", str(data["names"]),
            "--zeroshot-templates", "a {} square.", "--output", str(tmp_path / "zs"),
            "--baselines"]  # fmt: skip
    assert eval_cli.main(argv) == 0
    zs = seen[0]
    assert zs.classnames == ["crimson", "navy"] and zs.image.shape[0] == 8
    assert zs.captions[0] == "a crimson square." and zs.labels.tolist() == [0] * 4 + [1] * 4
    assert len(seen) == 4 and all(s is not None for s in seen)  # the baselines too
    out = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert out["source"]["zeroshot_data"] == str(data["folder"])
    assert 0.0 <= out["zeroshot_top1"] <= 1.0 and "ari" in out  # from the folder: CSV unlabelled


# ---------------------------------------------------------------- cma.train and the control
def train_config(data: dict[str, Path], out: Path, **kw) -> TrainConfig:
    base = dict(
        model="cma-micro", dataset_type="csv", train_data=str(data["csv"]),
        val_data=str(data["csv"]), csv_separator=",", csv_label_key="class", steps=4,
        batch_size=4, warmup=1, captioning=False, output=str(out), progress=False,
        cache_dir=str(data["cache"]), blur=0.1, probe_every=2, eval_train_images=8,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def log_column(out: Path, name: str) -> list[float]:
    with (out / "train_log.csv").open() as f:
        return [float(r[name]) for r in csv.DictReader(f) if r[name] not in ("", None)]


def test_control_run_and_the_alignment_effect(data: dict[str, Path], tmp_path: Path) -> None:
    control_out = tmp_path / "runs" / "tpc-control-s0"
    control = runner.run(train_config(data, control_out, alpha_target=0.0))
    assert control["alpha_target"] == 0 and "control" not in control  # no control of a control
    assert set(log_column(control_out, "weight")) == {0.0}  # β held at 0 throughout
    for when in ("before", "after"):  # the CSV's label column gives zero-shot and ARI
        assert {"zeroshot_top1", "ari"} <= set(control[when])

    run_out = tmp_path / "runs" / "tpc-a0.5-s0"
    run = runner.run(train_config(data, run_out, alpha_target=0.5))
    assert run["control_run"] == str(control_out / "metrics.json")
    assert run["control"] == pytest.approx(control["after"])
    expected = gap_reduction(control["after"], run["after"])
    assert run["alignment_effect"]["vs_control"] == pytest.approx(expected)
    assert run["alignment_effect"]["delta"]["gap_total"] == pytest.approx(
        run["after"]["gap_total"] - control["after"]["gap_total"]
    )
    # the same run: same learning rates and, in the anchor phase (α = 0 in both), same losses
    assert log_column(run_out, "lr") == log_column(control_out, "lr")
    first = log_column(control_out, "loss_contrastive")[0]
    assert log_column(run_out, "loss_contrastive")[0] == pytest.approx(first, rel=1e-6)
    assert max(log_column(run_out, "weight")) > 0
    report = (run_out / "report.md").read_text()
    assert "Alignment effect: this run against its α = 0 control" in report
    assert "control (α=0)" in report

    other = train_config(data, tmp_path / "runs" / "x", alpha_target=0.5, steps=5)
    assert find_control(other, tmp_path / "runs" / "x") is None  # auto: other steps, skipped
    explicit = train_config(data, tmp_path / "y", steps=5, control_run=str(control_out))
    with pytest.raises(ValueError, match=r"not this run's control.*steps"):
        find_control(explicit, tmp_path / "y")
    missing = train_config(data, tmp_path / "y", control_run=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="--control"):
        find_control(missing, tmp_path / "y")
    assert find_control(train_config(data, run_out, control_run="none"), run_out) is None


def test_zeroshot_folder_with_any_training_format(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_zeroshot(runner, monkeypatch)
    cfg = train_config(
        data, tmp_path / "run", csv_label_key=None, zeroshot_data=str(data["folder"]),
        classnames="crimson,navy", zeroshot_templates=["art of a {}"], steps=2,
    )  # fmt: skip
    metrics = runner.run(cfg)
    assert len(seen) == 2 and all(s is not None and s.image.shape[0] == 8 for s in seen)
    assert seen[0].classnames == ["crimson", "navy"] and seen[0].captions[0] == "art of a crimson"
    for when in ("before", "after"):
        assert 0.0 <= metrics[when]["zeroshot_top1"] <= 1.0 and "ari" in metrics[when]
    ds = load_zeroshot(data["folder"], classnames=["c", "n"], templates=["{}"])
    assert ds.classnames == ["c", "n"] and len(ds) == 8


def test_alignment_effect_helper() -> None:
    control = {"gap_total": 0.8, "gap_paraphrase": 0.5, "zeroshot_top1": 0.9, "note": "x"}
    run = {"gap_total": 0.56, "gap_paraphrase": 0.5, "zeroshot_top1": 0.88}
    effect = alignment_effect(control, run)
    assert effect["delta"]["zeroshot_top1"] == pytest.approx(-0.02)
    assert effect["vs_control"]["gap_reduction_pct"] == pytest.approx(30.0)
    assert effect["vs_control"]["gap_excess_reduction_pct"] == pytest.approx(80.0)
    assert effect["vs_control"]["zeroshot_top1_drop_points"] == pytest.approx(2.0)
    assert "note" not in effect["delta"]
