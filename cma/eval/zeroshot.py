"""Zero-shot classification from prompt-ensembled class embeddings.

The class weights ``w_k`` (``EmbeddingSet.class_text``) are built by
``cma.models.class_embeddings``: the normalised mean of the normalised text embeddings of the
class name in each prompt template ("a photo of a {}." ...). An image ``x`` is predicted as
``argmax_k cos(x, w_k)``; top-k accuracy counts the true class among the k largest cosines.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from cma.eval._common import as_index, as_matrix, l2n


def zeroshot_accuracy(
    image: Tensor, class_text: Tensor, labels: Tensor, *, topk: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy of ``argsort_k cos(image_i, class_text_k)`` against ``labels``.

    Returns ``{k: fraction}``; k larger than the number of classes counts as all classes (1.0).
    """
    image = as_matrix("image", image)
    class_text = as_matrix("class_text", class_text, dim=image.shape[1])
    labels = as_index("labels", labels, length=image.shape[0], upper=class_text.shape[0])
    if not topk or min(topk) < 1:
        raise ValueError(f"topk must be positive integers, got {tuple(topk)}")
    logits = l2n(image) @ l2n(class_text).T
    kmax = min(max(topk), class_text.shape[0])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred == labels[:, None]
    return {k: hit[:, : min(k, kmax)].any(1).double().mean().item() for k in topk}
