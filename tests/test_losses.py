"""CMALoss: the dict contract, its composition, and a real open_clip training step with it."""

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from cma.gaps import gap_report
from cma.losses import CMALoss
from cma_kernels import distribution_gap_loss


def features(n: int = 24, d: int = 16, offset: float = 0.4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    y = F.normalize(torch.randn(n, d, generator=g) + offset, dim=1)
    return x, y, torch.tensor(10.0)


def test_output_dict_terms_add_up_to_total() -> None:
    x, y, scale = features()
    out = CMALoss(weight=0.3, blur=0.2)(x, y, scale)
    assert set(out) == {"contrastive_loss", "alignment_loss", "total"}
    torch.testing.assert_close(out["total"], out["contrastive_loss"] + out["alignment_loss"])
    torch.testing.assert_close(out["contrastive_loss"], ClipLoss()(x, y, scale))
    expected = 0.3 * distribution_gap_loss(x, y, blur=0.2, lambda_centroid=1.0)
    torch.testing.assert_close(out["alignment_loss"], expected, rtol=1e-4, atol=1e-6)


def test_open_clip_loop_compat_sums_to_total() -> None:
    x, y, scale = features()
    loss = CMALoss(weight=0.5, with_total=False, lambda_centroid=2.0, blur=0.2)
    losses = loss(x, y, scale, output_dict=True)
    assert "total" not in losses
    total = CMALoss(weight=0.5, lambda_centroid=2.0, blur=0.2)(x, y, scale)["total"]
    torch.testing.assert_close(sum(losses.values()), total)
    torch.testing.assert_close(loss(x, y, scale, output_dict=False), total)


def test_per_call_weight_and_logged_terms() -> None:
    x, y, scale = features()
    loss = CMALoss(weight=0.5, blur=0.2)
    out = loss(x, y, scale, weight=0.0)
    assert float(out["alignment_loss"]) == 0.0
    parts = loss.last_terms
    assert parts["weight"] == 0.0
    assert abs(parts["align"] - (parts["centroid_gap_sq"] + parts["distribution_gap_sq"])) < 1e-5


def test_training_step_with_cmaloss_lowers_loss_and_gap() -> None:
    import open_clip

    import cma.models  # noqa: F401  (registers cma-micro with open_clip)

    torch.manual_seed(0)
    model = open_clip.create_model("cma-micro", pretrained=None)
    tokenizer = open_clip.get_tokenizer("cma-micro")
    images = torch.randn(16, 3, 32, 32)
    words = ["red", "green", "blue", "big", "small", "round", "square", "striped"]
    texts = tokenizer([f"a {words[i % 8]} {words[(3 * i + 1) % 8]} thing {i}" for i in range(16)])
    loss = CMALoss(weight=1.0, blur=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def gap() -> float:
        with torch.no_grad():
            x, y, _ = model(images, texts)[:3]
        return gap_report(x, y, blur=0.1)["total"]

    first_gap, totals = gap(), []
    for _ in range(25):
        out = loss(*model(images, texts)[:3])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        totals.append(float(out["total"].detach()))
    assert totals[-1] < 0.7 * totals[0]
    assert gap() < 0.7 * first_gap
