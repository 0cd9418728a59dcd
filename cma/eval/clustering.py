"""Joint clustering of both modalities: how well classes, not modalities, organise the space.

KMeans with k = number of classes runs on the stacked paired embeddings ``[x; y]`` (2N rows)
with the labels duplicated ``[l; l]``; the score is the adjusted Rand index (ARI) between the
cluster assignment and the labels, mean ± std (population) over seeds. A constant offset
between the modalities makes KMeans split by modality and drives the ARI down.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from torch import Tensor

from cma.eval._common import as_index, as_matrix


def joint_ari(
    image: Tensor,
    text: Tensor,
    labels: Tensor,
    *,
    n_clusters: int | None = None,
    seeds: int = 5,
    seed: int = 0,
) -> tuple[float, float]:
    """``(mean, std)`` of ARI(KMeans_s([x; y]), [l; l]) over ``seeds`` KMeans seeds.

    ``image`` and ``text`` are paired, (N, d) each; ``n_clusters`` defaults to the number of
    distinct labels. Each KMeans run uses one k-means++ initialisation seeded ``seed + s``.
    """
    image = as_matrix("image", image)
    text = as_matrix("text", text, dim=image.shape[1])
    if text.shape[0] != image.shape[0]:
        raise ValueError(f"image and text must be paired: {image.shape[0]} != {text.shape[0]} rows")
    labels = as_index("labels", labels, length=image.shape[0], upper=2**62)
    k = int(torch.unique(labels).numel()) if n_clusters is None else int(n_clusters)
    if k < 2:
        raise ValueError(f"need at least 2 clusters, got {k}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    points = torch.cat([image, text]).double().numpy()
    truth = np.concatenate([labels.numpy(), labels.numpy()])
    scores = [
        adjusted_rand_score(truth, KMeans(k, n_init=1, random_state=seed + s).fit_predict(points))
        for s in range(seeds)
    ]
    return float(np.mean(scores)), float(np.std(scores))
