"""Evaluation suite (SPEC section 5): gaps, zero-shot, retrieval, joint-clustering ARI,
captioning through the shared space, post-hoc baselines, gap <-> task analysis and reports.

Everything works on ``cma.data.EmbeddingSet`` pairs ``(train, test)``; :func:`evaluate` returns
the METRICS of SPEC section 6. CLI: ``python -m cma.eval --help``.
"""

from cma.eval._common import CAPTION_KEYS, FRACTION_KEYS, GAP_KEYS, METRIC_KEYS, TASK_KEYS
from cma.eval.analysis import gap_task_r2, plot_gap_task_scatter
from cma.eval.baselines import BASELINES
from cma.eval.captioning import CaptionConfig, caption_metrics, train_captioner
from cma.eval.clustering import joint_ari
from cma.eval.report import format_table, write_run_report
from cma.eval.retrieval import retrieval_recall
from cma.eval.suite import (
    EvalResult,
    evaluate,
    evaluate_detailed,
    excess_gap,
    gap_reduction,
    protocol,
)
from cma.eval.zeroshot import zeroshot_accuracy

__all__ = [
    "BASELINES",
    "CAPTION_KEYS",
    "FRACTION_KEYS",
    "GAP_KEYS",
    "METRIC_KEYS",
    "TASK_KEYS",
    "CaptionConfig",
    "EvalResult",
    "caption_metrics",
    "evaluate",
    "evaluate_detailed",
    "excess_gap",
    "format_table",
    "gap_reduction",
    "gap_task_r2",
    "joint_ari",
    "plot_gap_task_scatter",
    "protocol",
    "retrieval_recall",
    "train_captioner",
    "write_run_report",
    "zeroshot_accuracy",
]
