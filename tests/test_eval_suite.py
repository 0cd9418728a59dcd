"""evaluate(), the post-hoc baselines and the CLI on constructed EmbeddingSets."""

from __future__ import annotations

import json

import pytest
import torch

from cma.data import EmbeddingSet
from cma.eval import CAPTION_KEYS, FRACTION_KEYS, METRIC_KEYS, CaptionConfig, evaluate
from cma.eval import baselines as bl
from cma.eval.__main__ import main
from cma.gaps import gap_report

SHAPES = ["circle", "square", "star", "heart", "ring"]
COLOURS = ["red", "blue", "green"]
TINY = CaptionConfig(
    hidden=32, epochs=8, batch_size=32, max_captions=600, max_len=6, lr=1e-2, dropout=0.0
)


def _world(n: int, offset: float, seed: int, caps_per: int = 2) -> EmbeddingSet:
    """5 classes and 3 colours on orthonormal directions; image = class + 0.4 colour + u offset,
    text = class + 0.4 colour - u offset, each with 0.05 noise, L2-normalised; captions name the
    colour and the class."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(32, 9, generator=torch.Generator().manual_seed(7)))
    centres, colours, u = basis.T[:5], basis.T[5:8], basis.T[8]
    labels = torch.arange(n) % 5
    colour = torch.randint(0, 3, (n,), generator=gen)
    content = centres[labels] + 0.4 * colours[colour]
    image = content + offset * u + 0.05 * torch.randn(n, 32, generator=gen)
    t2i = torch.arange(n).repeat_interleave(caps_per)
    text = content[t2i] - offset * u + 0.05 * torch.randn(n * caps_per, 32, generator=gen)
    captions = [f"a {COLOURS[colour[i]]} {SHAPES[labels[i]]}" for i in t2i.tolist()]
    return EmbeddingSet(
        image=torch.nn.functional.normalize(image, dim=1),
        text=torch.nn.functional.normalize(text, dim=1),
        text_to_image=t2i,
        captions=captions,
        labels=labels,
        classnames=SHAPES,
        class_text=torch.nn.functional.normalize(centres - offset * u, dim=1),
    )


def _gaps(es: EmbeddingSet) -> dict[str, float]:
    return dict(gap_report(*es.paired(), normalize=False))


def test_centering_zeroes_the_centroid_gap_and_keeps_the_distribution_gap():
    train, test = _world(200, 0.5, seed=0), _world(100, 0.5, seed=1)
    before = _gaps(test)
    tr_c, te_c = bl.apply("centering", train, test)
    after = _gaps(te_c)
    assert before["centroid"] > 0.5
    assert after["centroid"] < 0.1 * before["centroid"]  # train means: sampling error
    assert after["distribution"] == pytest.approx(before["distribution"], rel=0.01)
    assert after["total"] < before["total"]
    torch.testing.assert_close(tr_c.image.mean(0), torch.zeros(32), atol=1e-6, rtol=0)


def test_centroid_shift_and_noise_baselines():
    train, test = _world(200, 0.5, seed=0), _world(100, 0.5, seed=1)
    _, te_s = bl.apply("centroid_shift", train, test)
    torch.testing.assert_close(te_s.image.norm(dim=1), torch.ones(100))
    assert _gaps(te_s)["centroid"] < 0.2 * _gaps(test)["centroid"]

    tr_c, te_c = bl.apply("centering", train, test)
    tr_n, te_n = bl.apply("centering_noise", train, test, seed=3)
    torch.testing.assert_close(te_n.image, te_c.image)  # the test set is only centred
    torch.testing.assert_close(tr_n.image, tr_c.image)
    noise = tr_n.text - tr_c.text
    assert noise.std().item() == pytest.approx(bl.residual_noise_std(train), rel=0.05)
    with pytest.raises(ValueError, match="unknown baseline"):
        bl.apply("whitening", train, test)


def test_evaluate_returns_the_metrics_and_sees_the_offset():
    aligned = evaluate(_world(300, 0.0, 0), _world(100, 0.0, 1), caption_cfg=TINY, progress=False)
    assert set(aligned) == set(METRIC_KEYS)
    assert all(isinstance(v, float) for v in aligned.values())
    assert all(0.0 <= aligned[k] <= 1.0 for k in FRACTION_KEYS)
    assert aligned["zeroshot_top1"] == 1.0 and aligned["ari"] > 0.9
    split = evaluate(_world(300, 0.8, 0), _world(100, 0.8, 1), caption_cfg=TINY, progress=False)
    assert split["gap_centroid"] > aligned["gap_centroid"] + 0.5
    assert split["ari"] < aligned["ari"] - 0.3
    assert aligned["cider"] > 3.0  # captions are fully determined by the embedding
    assert split["cider"] < aligned["cider"] - 0.5  # the decoder never saw image-like inputs
    again = evaluate(_world(300, 0.8, 0), _world(100, 0.8, 1), captioning=False, progress=False)
    assert again == {k: v for k, v in split.items() if k not in CAPTION_KEYS}  # deterministic


def test_evaluate_omits_what_needs_labels():
    test = _world(100, 0.3, 1).replace(labels=None, class_text=None, classnames=None)
    m = evaluate(test, test, captioning=False, progress=False)
    assert "ari" not in m and "zeroshot_top1" not in m and "cider" not in m
    assert {"gap_total", "retrieval_i2t_r1", "retrieval_t2i_r10"} <= set(m)


def test_cli_on_npz_with_baselines(tmp_path):
    _world(300, 0.5, 0).save_npz(tmp_path / "train.npz")
    _world(100, 0.5, 1).save_npz(tmp_path / "test.npz")
    out = tmp_path / "out"
    code = main(
        [
            "--embeddings",
            str(tmp_path / "test.npz"),
            "--train-embeddings",
            str(tmp_path / "train.npz"),
            "--baselines",
            "--decoder-epochs",
            "1",
            "--decoder-captions",
            "300",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(data)
    assert set(data["baselines"]) == set(bl.BASELINES)
    assert data["baselines"]["centering"]["gap_centroid"] < 0.1 * data["gap_centroid"]
    assert data["gap_reduction"]["centering"]["gap_centroid_reduction_pct"] > 90
    md = (out / "report.md").read_text()
    assert "| gap_total |" in md and "centroid_shift" in md and "R²" in md
    assert "| text_greedy |" in md  # the decoder's no-gap reference
    for png in ("gaps.png", "tasks.png", "captioning.png", "pca.png", "gap_task_scatter.png"):
        assert (out / png).stat().st_size > 5000


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--pretrained", "x.pt", "--output", str(tmp_path)]) == 2
    assert "--pretrained needs --model" in capsys.readouterr().err
    assert main(["--embeddings", str(tmp_path / "missing.npz"), "--output", str(tmp_path)]) == 2


def test_caption_pairs_and_the_paraphrase_floor():
    es = _world(60, 0.8, seed=2, caps_per=3)
    t1, t2 = es.caption_pairs()
    torch.testing.assert_close(t1, es.text[0::3])
    torch.testing.assert_close(t2, es.text[1::3])
    shuffled = es.replace(
        text=es.text.flip(0), text_to_image=es.text_to_image.flip(0), captions=es.captions[::-1]
    )
    s1, s2 = shuffled.caption_pairs()  # order within an image follows the text order
    torch.testing.assert_close(s1, es.text[2::3])
    torch.testing.assert_close(s2, es.text[1::3])

    got = evaluate(_world(300, 0.8, 0), _world(100, 0.8, 1), captioning=False, progress=False)
    # paraphrases differ only by 0.05 noise: far below the offset image–text gap
    assert 0.0 < got["gap_paraphrase"] < 0.25 * got["gap_total"]
    single = _world(100, 0.8, 1, caps_per=1)
    assert "gap_paraphrase" not in evaluate(
        _world(300, 0.8, 0), single, captioning=False, progress=False
    )


def test_protocol_names_what_cached_results_depend_on(monkeypatch):
    import cma.gaps
    from cma.eval import protocol

    before = protocol()
    assert "gap_paraphrase" in before["metric_keys"]
    monkeypatch.setattr(cma.gaps, "METRIC_TOL", before["gap_tol"] / 10)
    assert protocol() != before  # a tighter solver must not be served an old cached result
