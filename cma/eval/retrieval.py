"""Cross-modal retrieval recall@K with several captions per image.

Scores are cosine similarities ``s_ij = cos(x_i, y_j)``.
- text→image: caption j (of image t(j)) is correct at K when fewer than K images score higher
  than its own: ``rank_j = #{i : s_ij > s_t(j)j} < K``.
- image→text: image i is correct at K when ANY of its captions is in the top K:
  ``rank_i = #{j : s_ij > max_{j' : t(j') = i} s_ij'} < K``. Images without captions are skipped.
Ties count in favour of the correct item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cma.eval._common import as_index, as_matrix, l2n

_CHUNK = 4096


def retrieval_ranks(image: Tensor, text: Tensor, text_to_image: Tensor) -> tuple[Tensor, Tensor]:
    """0-based ranks ``(rank_i2t (N',), rank_t2i (M,))`` as defined in the module docstring.

    ``rank_i2t`` covers only the images that have at least one caption.
    """
    image = l2n(as_matrix("image", image))
    text = l2n(as_matrix("text", text, dim=image.shape[1]))
    n, m = image.shape[0], text.shape[0]
    t2i = as_index("text_to_image", text_to_image, length=m, upper=n)
    best = torch.full((n,), -torch.inf)  # best similarity of each image to one of its captions
    rank_t2i = torch.empty(m, dtype=torch.long)
    for s in range(0, m, _CHUNK):
        sims = text[s : s + _CHUNK] @ image.T  # (chunk, N)
        idx = t2i[s : s + _CHUNK]
        own = sims.gather(1, idx[:, None])
        rank_t2i[s : s + _CHUNK] = (sims > own).sum(1)
        best.scatter_reduce_(0, idx, own[:, 0], reduce="amax")
    has_caption = torch.isfinite(best)
    rank_i2t = torch.zeros(n, dtype=torch.long)
    for s in range(0, m, _CHUNK):
        sims = image @ text[s : s + _CHUNK].T  # (N, chunk)
        rank_i2t += (sims > best[:, None]).sum(1)
    return rank_i2t[has_caption], rank_t2i


def retrieval_recall(
    image: Tensor, text: Tensor, text_to_image: Tensor, *, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways: ``{"i2t_r{K}": frac, "t2i_r{K}": frac}`` (fractions of queries)."""
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    rank_i2t, rank_t2i = retrieval_ranks(image, text, text_to_image)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = (rank_i2t < k).double().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = (rank_t2i < k).double().mean().item()
    return out
