"""The reproduction study (issue #7): ``python -m cma.study``.

For one base model and dataset it runs the base model, the post-hoc baselines, TPC-CMA over a
range of α_target and the constant-schedule ablation (one ``cma.train`` run each), evaluates
everything with the full suite, fits the gap ↔ task regressions and writes ``study.json``,
``study.md`` and plots. Finished variants are reused, interrupted runs resumed. See docs/study.md.

Modules: :mod:`~cma.study.plan` (variants, configurations), :mod:`~cma.study.execute` (running,
resuming), :mod:`~cma.study.aggregate` (mean ± std, changes, R², targets),
:mod:`~cma.study.report` (study.json/md, plots), :mod:`~cma.study.cli`.
"""

from cma.study.aggregate import mean_std, summarize
from cma.study.cli import build_parser, main, run_study
from cma.study.plan import StudyConfig, Variant, build_plan, train_config

__all__ = [
    "StudyConfig",
    "Variant",
    "build_parser",
    "build_plan",
    "main",
    "mean_std",
    "run_study",
    "summarize",
    "train_config",
]
