"""``evaluate``: the whole protocol of SPEC section 5 on a (train, test) pair of EmbeddingSets."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from cma.eval._common import FLOOR_KEY, FRACTION_KEYS, GAP_KEYS, METRIC_KEYS, TASK_KEYS
from cma.eval.captioning import CaptionConfig, caption_metrics, references, train_captioner
from cma.eval.clustering import joint_ari
from cma.eval.retrieval import retrieval_recall
from cma.eval.zeroshot import zeroshot_accuracy


@dataclass
class EvalResult:
    """METRICS plus what a report may show: timings, greedy/beam/text-oracle captioning, samples."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


#: Bump when the protocol changes in a way the settings below do not show.
PROTOCOL_VERSION = 2


def protocol() -> dict[str, Any]:
    """What an evaluation's numbers depend on besides the data and the model: key it in caches.

    The version, the metric keys and the gap solver's settings, so that a cached result from
    an older protocol (other keys, another tolerance) is never served as a current one.
    """
    from cma import gaps

    return {
        "version": PROTOCOL_VERSION,
        "metric_keys": list(METRIC_KEYS),
        "gap_tol": gaps.METRIC_TOL,
        "gap_max_iter": gaps.METRIC_MAX_ITER,
    }


def evaluate_detailed(
    train,
    test,
    *,
    blur: float = 0.05,
    ari_seeds: int = 5,
    captioning: bool = True,
    caption_cfg: CaptionConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    zeroshot=None,
) -> EvalResult:
    """:func:`evaluate` that also returns details (see :class:`EvalResult`)."""
    from cma.gaps import gap_report

    t_start = time.perf_counter()
    details: dict[str, Any] = {"seconds": {}}
    metrics: dict[str, float] = {}

    def timed(key: str, t0: float) -> None:
        details["seconds"][key] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    x, y = test.paired()
    gaps = dict(gap_report(x, y, blur=blur, paired=True, normalize=False))
    metrics.update({key: float(gaps[key.removeprefix("gap_")]) for key in GAP_KEYS})
    t1, t2 = test.caption_pairs()
    if t1.shape[0] >= 2:
        metrics[FLOOR_KEY] = float(gap_report(t1, t2, blur=blur, normalize=False).total)
    timed("gaps", t0)
    shown = [k for k in (*GAP_KEYS, FLOOR_KEY) if k in metrics]
    _log(progress, "  gaps: " + ", ".join(f"{k}={metrics[k]:.4f}" for k in shown))

    labelled = test if zeroshot is None else zeroshot
    if zeroshot is not None and zeroshot.labels is None:
        raise ValueError("zeroshot: the zero-shot set has no labels")
    if labelled.labels is not None and labelled.class_text is not None:
        t0 = time.perf_counter()
        acc = zeroshot_accuracy(labelled.image, labelled.class_text, labelled.labels, topk=(1, 5))
        metrics["zeroshot_top1"], metrics["zeroshot_top5"] = acc[1], acc[5]
        timed("zeroshot", t0)

    t0 = time.perf_counter()
    rec = retrieval_recall(test.image, test.text, test.text_to_image, ks=(1, 5, 10))
    metrics.update({f"retrieval_{k}": v for k, v in rec.items()})
    timed("retrieval", t0)

    if labelled.labels is not None:
        t0 = time.perf_counter()
        lx, ly = (x, y) if zeroshot is None else zeroshot.paired()
        ari = joint_ari(lx, ly, labelled.labels, seeds=ari_seeds, seed=seed)
        metrics["ari"], metrics["ari_std"] = ari
        timed("ari", t0)
    _log(
        progress,
        "  tasks: " + ", ".join(f"{k}={metrics[k]:.3f}" for k in FRACTION_KEYS if k in metrics),
    )

    if captioning:
        if train.image.shape[1] != test.image.shape[1]:
            raise ValueError(
                f"train and test dimensions differ: {train.image.shape[1]} != {test.image.shape[1]}"
            )
        cfg = caption_cfg or CaptionConfig(seed=seed)
        n_caps = min(len(train.captions), cfg.max_captions)
        _log(progress, f"  training the caption decoder on {n_caps} text embeddings")
        cap = train_captioner(train.text, train.captions, cfg, progress=progress)
        details["seconds"]["decoder_train"] = round(cap.train_seconds, 3)
        details["decoder_losses"] = cap.losses
        t0 = time.perf_counter()
        refs = references(test.captions, test.text_to_image, test.image.shape[0])
        scores: dict[str, dict[str, float]] = {}
        samples: dict[str, list[str]] = {}
        for method in ("greedy", "beam"):
            samples[f"image_{method}"] = cap.generate(test.image, method=method)
            scores[f"image_{method}"] = caption_metrics(samples[f"image_{method}"], refs)
        # the oracle: the decoder fed the TEXT embedding of each image's first caption
        samples["text_greedy"] = cap.generate(y, method="greedy")
        scores["text_greedy"] = caption_metrics(samples["text_greedy"], refs)
        metrics.update(scores[f"image_{cfg.decode}"])
        details["captioning"] = {
            "decode": cfg.decode,
            "scores": scores,
            "vocab_size": len(cap.vocab),
        }
        details["samples"] = [
            {"references": refs[i][:3], **{k: v[i] for k, v in samples.items()}}
            for i in range(min(8, len(refs)))
        ]
        timed("caption_decode_score", t0)
        _log(
            progress,
            "  captioning: "
            + ", ".join(
                f"{k}: CIDEr {v['cider']:.3f} BLEU-4 {v['bleu4']:.3f}" for k, v in scores.items()
            ),
        )
    details["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    return EvalResult(metrics, details)


def evaluate(
    train,
    test,
    *,
    blur: float = 0.05,
    ari_seeds: int = 5,
    captioning: bool = True,
    caption_cfg: CaptionConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    zeroshot=None,
) -> dict[str, float]:
    """SPEC section 6 METRICS of ``test`` (the caption decoder learns from ``train``).

    Gaps on ``test.paired()`` as given (not renormalised: model embeddings are unit vectors,
    post-hoc baselines may move them off the sphere on purpose); zero-shot needs ``labels``
    and ``class_text``; ARI needs ``labels``; captioning (CIDEr-D, BLEU-4, ROUGE-L of the
    ``caption_cfg.decode`` decoding of the test IMAGE embeddings, decoder trained on ``train``
    TEXT embeddings) is skipped when ``captioning=False``. Keys that cannot be computed are
    omitted. Deterministic given ``seed``. ``zeroshot`` (a labelled EmbeddingSet, e.g. of an
    image folder whose captions are the class prompts) replaces ``test`` for zero-shot accuracy
    and the joint-clustering ARI (its images with their first captions).
    """
    return evaluate_detailed(
        train,
        test,
        blur=blur,
        ari_seeds=ari_seeds,
        captioning=captioning,
        caption_cfg=caption_cfg,
        seed=seed,
        progress=progress,
        zeroshot=zeroshot,
    ).metrics


def excess_gap(metrics: dict[str, float]) -> float:
    """``gap_total - gap_paraphrase``: how much farther images are from their captions than the
    captions of the same images are from each other (NaN when either is missing)."""
    if "gap_total" not in metrics or FLOOR_KEY not in metrics:
        return float("nan")
    return float(metrics["gap_total"]) - float(metrics[FLOOR_KEY])


def gap_reduction(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Changes from ``before`` to ``after`` METRICS (``before``: the base model, or the α = 0
    control for the alignment effect).

    - ``{gap}_reduction_pct = 100 (b - a) / b`` for each gap, and ``gap_reduction_pct`` for the
      total gap ("the gap" of SPEC section 2);
    - ``gap_excess_reduction_pct = 100 (e_b - e_a) / e_b`` with e = :func:`excess_gap`, the part
      of the gap above the paraphrase floor that was closed (when e_b > 0);
    - ``{task}_drop_points = 100 (b - a)`` for fraction metrics (accuracy points);
    - ``{task}_drop_rel_pct = 100 (b - a) / b`` for every task metric.
    Keys missing from either side, or with b = 0 for a ratio, are skipped.
    """
    out: dict[str, float] = {}
    for k in GAP_KEYS:
        if k in before and k in after and before[k] > 0:
            out[f"{k}_reduction_pct"] = 100.0 * (before[k] - after[k]) / before[k]
    if "gap_total_reduction_pct" in out:
        out["gap_reduction_pct"] = out["gap_total_reduction_pct"]
    eb, ea = excess_gap(before), excess_gap(after)
    if eb > 0 and math.isfinite(ea):
        out["gap_excess_reduction_pct"] = 100.0 * (eb - ea) / eb
    for k in TASK_KEYS:
        if k not in before or k not in after:
            continue
        if k in FRACTION_KEYS:
            out[f"{k}_drop_points"] = 100.0 * (before[k] - after[k])
        if before[k] != 0:
            out[f"{k}_drop_rel_pct"] = 100.0 * (before[k] - after[k]) / before[k]
    return out
