"""Post-hoc gap-closing baselines applied to embeddings (no training of the encoders).

Means are estimated on the TRAIN set (``mu_x`` over train images, ``mu_y`` over train
captions) and applied to both sets, class weights moving with the text:
- ``centering`` (I0T-post, C3 "collapse"): ``x' = x - mu_x``, ``y' = y - mu_y``. A pure
  translation of each modality: the centroid gap goes to ~0, the distribution gap
  ``sqrt(S(x - mu_x, y - mu_y))`` is unchanged. Not renormalised by default (I0T-post
  renormalises: ``renormalize=True``).
- ``centering_noise`` (C3 "collapse + corrupt"): centering, plus Gaussian noise
  ``N(0, sigma^2 I)`` on the TRAIN text embeddings only (what the caption decoder learns
  from); the test set is as for centering. Default sigma (*ours*): the per-coordinate RMS of
  the centred paired residual on train, ``sigma^2 = mean_i ||(x_i - mu_x) - (y_i - mu_y)||^2 / d``.
- ``centroid_shift`` (Liang et al. 2022): move both modalities half-way along the centroid
  difference, ``x' = x + lam/2 (mu_y - mu_x)``, ``y' = y - lam/2 (mu_y - mu_x)`` (lam = 1
  closes the gap), then L2-renormalise as Liang et al. do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cma.eval._common import l2n

BASELINES: tuple[str, ...] = ("centering", "centering_noise", "centroid_shift")


def _with(es, image_shift: Tensor, text_shift: Tensor, renormalize: bool):
    """``es`` with ``image + image_shift``, ``text/class_text + text_shift`` (optionally L2n)."""

    def move(t: Tensor | None, shift: Tensor) -> Tensor | None:
        if t is None:
            return None
        out = t.float() + shift
        return l2n(out) if renormalize else out

    return es.replace(
        image=move(es.image, image_shift),
        text=move(es.text, text_shift),
        class_text=move(es.class_text, text_shift),
    )


def residual_noise_std(train) -> float:
    """``sqrt(mean_i ||(x_i - mu_x) - (y_i - mu_y)||^2 / d)`` on ``train.paired()``."""
    x, y = (t.float() for t in train.paired())
    r = (x - x.mean(0)) - (y - y.mean(0))
    return float(r.pow(2).sum(1).mean().div(x.shape[1]).sqrt())


def apply(
    name: str,
    train,
    test,
    *,
    seed: int = 0,
    renormalize: bool | None = None,
    noise_std: float | None = None,
    shift: float = 1.0,
):
    """Apply baseline ``name`` (one of :data:`BASELINES`) to ``(train, test)`` EmbeddingSets.

    Returns the transformed ``(train', test')``. ``renormalize`` defaults to the method's own
    choice (False for the centering variants, True for ``centroid_shift``); ``noise_std`` only
    matters for ``centering_noise``; ``shift`` is Liang et al.'s lambda.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
    if train.image.shape[1] != test.image.shape[1]:
        raise ValueError(
            f"train and test dimensions differ: {train.image.shape[1]} != {test.image.shape[1]}"
        )
    mu_x, mu_y = train.image.float().mean(0), train.text.float().mean(0)
    if name == "centroid_shift":
        half = 0.5 * shift * (mu_y - mu_x)
        norm = True if renormalize is None else renormalize
        return _with(train, half, -half, norm), _with(test, half, -half, norm)
    norm = bool(renormalize)
    train2, test2 = _with(train, -mu_x, -mu_y, norm), _with(test, -mu_x, -mu_y, norm)
    if name == "centering_noise":
        sigma = residual_noise_std(train) if noise_std is None else float(noise_std)
        if sigma < 0:
            raise ValueError(f"noise_std must be >= 0, got {sigma}")
        gen = torch.Generator().manual_seed(seed)
        noise = sigma * torch.randn(train2.text.shape, generator=gen)
        train2 = train2.replace(text=train2.text + noise)
    return train2, test2
