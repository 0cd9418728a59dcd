"""Pure evaluation functions on constructed geometry (no model, no gap solver needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cma.eval.analysis import gap_task_r2, linear_fit
from cma.eval.captioning import (
    CaptionConfig,
    Vocabulary,
    caption_metrics,
    references,
    tokenize,
    train_captioner,
)
from cma.eval.clustering import joint_ari
from cma.eval.report import format_table, write_run_report
from cma.eval.retrieval import retrieval_ranks, retrieval_recall
from cma.eval.suite import gap_reduction
from cma.eval.zeroshot import zeroshot_accuracy


def _l2n(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=1, keepdim=True)


def _classes(k: int, d: int, seed: int = 0) -> torch.Tensor:
    """k orthonormal class directions in R^d."""
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def test_zeroshot_separable_toy_is_perfect_and_shuffled_labels_are_not():
    centres = _classes(6, 32)
    labels = torch.arange(300) % 6
    gen = torch.Generator().manual_seed(1)
    image = _l2n(centres[labels] + 0.1 * torch.randn(300, 32, generator=gen))
    acc = zeroshot_accuracy(image, centres, labels, topk=(1, 5))
    assert acc == {1: 1.0, 5: 1.0}
    wrong = zeroshot_accuracy(image, centres, (labels + 1) % 6, topk=(1, 5))
    assert wrong[1] == 0.0 and 0.0 < wrong[5] < 1.0


def test_zeroshot_rejects_bad_shapes():
    with pytest.raises(ValueError, match="class_text"):
        zeroshot_accuracy(torch.randn(4, 8), torch.randn(3, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        zeroshot_accuracy(torch.randn(4, 8), torch.randn(3, 8), torch.tensor([0, 1, 2, 3]))


def test_retrieval_counts_any_caption_of_an_image():
    # 3 images on the axes; image 0 has two captions: caption 0 lies nearer image 1 than
    # image 1's own caption 2 does, caption 1 lies at image 0
    image = torch.eye(3)
    text = torch.tensor([[0.1, 1.0, 0.0], [1.0, 0.0, 0.2], [0.5, 1.0, 0.0], [0.0, 0.3, 1.0]])
    t2i = torch.tensor([0, 0, 1, 2])
    rank_i2t, rank_t2i = retrieval_ranks(image, text, t2i)
    assert rank_i2t.tolist() == [0, 1, 0]  # image 0 is found through caption 1
    assert rank_t2i.tolist() == [1, 0, 0, 0]
    rec = retrieval_recall(image, text, t2i, ks=(1, 2))
    assert rec == pytest.approx({"i2t_r1": 2 / 3, "i2t_r2": 1.0, "t2i_r1": 0.75, "t2i_r2": 1.0})


def test_retrieval_perfect_on_aligned_pairs_and_chunking_agrees():
    centres = _classes(50, 64)
    gen = torch.Generator().manual_seed(0)
    t2i = torch.arange(150) % 50
    text = _l2n(centres[t2i] + 0.05 * torch.randn(150, 64, generator=gen))
    rec = retrieval_recall(centres, text, t2i)
    assert all(v == 1.0 for v in rec.values())
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(centres, text, torch.full((150,), 50))


def _two_modalities(offset: float, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """5 well-separated classes; image/text = class centre ± 0.05 noise, ± offset along u."""
    gen = torch.Generator().manual_seed(seed)
    basis = _classes(6, 32, seed)
    centres, u = basis[:5], basis[5]
    labels = torch.arange(400) % 5
    x = centres[labels] + 0.05 * torch.randn(400, 32, generator=gen) + offset * u
    y = centres[labels] + 0.05 * torch.randn(400, 32, generator=gen) - offset * u
    return x, y, labels


def test_ari_near_one_when_aligned_and_lower_with_constant_offset():
    aligned, aligned_std = joint_ari(*_two_modalities(0.0), seeds=5)
    split, _ = joint_ari(*_two_modalities(1.5), seeds=5)
    assert aligned > 0.95 and aligned_std < 0.05
    assert split < aligned - 0.3


def test_ari_validates_pairing():
    with pytest.raises(ValueError, match="paired"):
        joint_ari(torch.randn(5, 3), torch.randn(4, 3), torch.arange(5) % 2)


_REFS = [
    ["a red circle on the left", "there is a red disc", "a small red circle"],
    ["a blue square at the top", "a big blue box shape", "the square is blue"],
    ["a green star in the middle", "a green five pointed star"],
]
_HYPS = ["a red circle", "a blue square on a gray background", "a green star in the middle"]


def test_caption_metrics_equal_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = dict(enumerate(_REFS))
    res = {i: [h] for i, h in enumerate(_HYPS)}
    ours = caption_metrics([h.upper() + "." for h in _HYPS], _REFS)  # tokenisation is ours
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    assert ours["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert ours["rougeL"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    perfect = caption_metrics([r[0] for r in _REFS], _REFS)
    assert perfect["cider"] > ours["cider"]


def test_tokenize_vocabulary_and_references():
    assert tokenize("A Red, five-pointed STAR!") == ["a", "red", "five", "pointed", "star"]
    vocab = Vocabulary.build(["a b b", "b c"], min_count=2)
    assert vocab.itos[4:] == ["b"]
    assert vocab.decode(vocab.encode("b c b", max_len=2)) == "b"  # c unknown, cut after 2 words
    assert references(["x", "y", "z"], torch.tensor([1, 0, 1]), 3) == [["y"], ["x", "z"], []]


def _caption_toy(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Captions '<colour> <shape>' whose embedding is the sum of two word directions."""
    colours, shapes = ["red", "green", "blue", "pink"], ["circle", "square", "star"]
    words = _classes(7, 16, seed=42)
    rng = np.random.default_rng(seed)
    ci, si = rng.integers(0, 4, n), rng.integers(0, 3, n)
    emb = _l2n(words[ci] + words[4 + si])
    return emb, [f"a {colours[c]} {shapes[s]}." for c, s in zip(ci, si, strict=True)]


def test_captioner_learns_toy_captions_deterministically_and_beam1_is_greedy():
    emb, caps = _caption_toy(1000, seed=0)
    cfg = CaptionConfig(
        hidden=48, epochs=6, batch_size=50, lr=1e-2, max_len=6, beam_size=1, dropout=0.0
    )
    cap = train_captioner(emb, caps, cfg)
    test_emb, test_caps = _caption_toy(40, seed=1)
    greedy = cap.generate(test_emb, method="greedy")
    assert sum(g == c.rstrip(".") for g, c in zip(greedy, test_caps, strict=True)) >= 38
    assert cap.generate(test_emb, method="beam") == greedy  # a beam of 1 is greedy search
    again = train_captioner(emb, caps, cfg)
    assert again.losses == cap.losses
    assert cap.losses[-1] < cap.losses[0]


def test_caption_config_validates():
    with pytest.raises(ValueError, match="decode"):
        CaptionConfig(decode="sample")
    with pytest.raises(ValueError, match="hidden"):
        CaptionConfig(hidden=0)


def test_gap_reduction_arithmetic():
    before = {"gap_total": 0.8, "gap_centroid": 0.5, "zeroshot_top1": 0.9, "cider": 2.0}
    after = {"gap_total": 0.2, "gap_centroid": 0.0, "zeroshot_top1": 0.85, "cider": 2.2}
    red = gap_reduction(before, after)
    assert red["gap_reduction_pct"] == pytest.approx(75.0)
    assert red["gap_centroid_reduction_pct"] == pytest.approx(100.0)
    assert red["zeroshot_top1_drop_points"] == pytest.approx(5.0)
    assert red["zeroshot_top1_drop_rel_pct"] == pytest.approx(100 * 0.05 / 0.9)
    assert red["cider_drop_rel_pct"] == pytest.approx(-10.0)
    assert "cider_drop_points" not in red


def test_linear_fit_and_gap_task_r2():
    slope, intercept, r2 = linear_fit([0, 1, 2], [1, 3, 5])
    assert (slope, intercept, r2) == pytest.approx((2.0, 1.0, 1.0))
    g, t = [0.1, 0.4, 0.3, 0.9], [0.8, 0.5, 0.7, 0.2]
    assert linear_fit(g, t)[2] == pytest.approx(np.corrcoef(g, t)[0, 1] ** 2)
    variants = {
        f"v{i}": {"gap_total": a, "gap_raw": 1.0, "ari": b}
        for i, (a, b) in enumerate(zip(g, t, strict=True))
    }
    rows = {(r["gap"], r["task"]): r for r in gap_task_r2(variants)}
    assert rows[("gap_total", "ari")]["r2"] == pytest.approx(linear_fit(g, t)[2])
    assert math.isnan(rows[("gap_raw", "ari")]["r2"])  # a constant gap explains nothing
    with pytest.raises(ValueError, match="3"):
        gap_task_r2(dict(list(variants.items())[:2]))


def test_format_table_and_run_report(tmp_path):
    before = {
        "gap_total": 0.8,
        "gap_raw": 1.1,
        "gap_centroid": 0.6,
        "gap_distribution": 0.5,
        "zeroshot_top1": 0.9,
        "ari": 0.4,
        "ari_std": 0.01,
        "cider": 1.5,
    }
    after = {**before, "gap_total": 0.3, "zeroshot_top1": 0.88}
    plain = format_table({"before": before, "after": after}, markdown=False)
    assert "gap_total" in plain and "-0.5000" in plain and "|" not in plain
    run = {
        "backend": "reference",
        "alpha_target": 0.5,
        "schedule": "tpc",
        "before": before,
        "after": after,
        "seconds": 12.0,
    }
    paths = write_run_report(tmp_path, run)
    import json

    assert json.loads(paths["metrics"].read_text()) == run
    md = paths["report"].read_text()
    assert "| gap_total | 0.8000 | 0.3000 | -0.5000 |" in md
    assert "| gap_total_reduction_pct | 62.5000 |" in md and "alpha_target" in md
    for key in ("gaps_png", "tasks_png", "captioning_png"):
        assert paths[key].stat().st_size > 5000
