"""Training runs of a study in parallel worker processes (``python -m cma.study --jobs N``).

A small model trains faster as two single-threaded processes than as one process with two
threads (the embedded model on 2 CPU cores: 1.45× the steps per second), so on a CPU the study
runs its training variants ``jobs`` at a time, each worker with ``cores // jobs`` torch threads.
A run starts only once its α = 0 control (same schedule and seed) has finished, so its own
report states the alignment effect, exactly as in a sequential study. Workers are spawned
processes: a signal (Ctrl-C, SIGTERM) reaches every worker, whose trainer writes its checkpoint;
the study then raises :class:`~cma.train.loop.Interrupted` and a rerun resumes every run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import Any

import torch

from cma.study.plan import StudyConfig, Variant
from cma.train.loop import Interrupted, TrainingDiverged


def resolve_jobs(jobs: int | str, device: str | None) -> int:
    """``--jobs``: an int ≥ 1, or ``auto`` = 2 on a CPU with ≥ 2 cores, else 1 (one process per
    accelerator is what a GPU wants; more than 2 small runs gain little on few cores)."""
    if jobs == "auto":
        device = device or "auto"
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        return 2 if on_cpu and (os.cpu_count() or 1) >= 2 else 1
    n = int(jobs)
    if n < 1:
        raise ValueError(f"jobs: must be ≥ 1 or 'auto', got {jobs!r}")
    return n


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train(study: StudyConfig, v: Variant) -> dict[str, Any]:
    from cma.study.execute import run_training  # the worker's own import

    return run_training(study, v)


def control_of(v: Variant) -> Variant:
    """The α = 0 control a run reports against (same schedule and seed)."""
    return Variant(v.kind, v.seed, alpha=0.0)


def train_parallel(
    study: StudyConfig,
    variants: Sequence[Variant],
    jobs: int,
    on_start: Callable[[Variant], None],
    on_done: Callable[[Variant, dict[str, Any] | None, str | None], None],
) -> None:
    """Train ``variants`` (plan order) ``jobs`` at a time; a run waits for its control when the
    control is among ``variants``. ``on_done(v, record, error)``: ``error`` is the divergence
    message of a run that diverged (the others go on). Other errors propagate."""
    pending = list(variants)
    names = {v.name for v in pending}
    finished: set[str] = set()
    running: dict[Future, Variant] = {}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    quiet = replace(study, progress=False)  # interleaved progress bars help nobody
    stopped: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    def ready(v: Variant) -> bool:
        c = control_of(v)
        return v.is_control or c.name not in names or c.name in finished

    ctx = multiprocessing.get_context("spawn")
    previous = signal.signal(signal.SIGTERM, forward)
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
    try:
        while pending or running:
            while len(running) < jobs and not stopped:
                v = next((p for p in pending if ready(p)), None)
                if v is None:
                    break
                pending.remove(v)
                on_start(v)
                running[pool.submit(_train, quiet, v)] = v
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                v = running.pop(fut)
                finished.add(v.name)
                try:
                    on_done(v, fut.result(), None)
                except TrainingDiverged as err:
                    on_done(v, None, str(err))
    except KeyboardInterrupt:
        stopped.append(signal.SIGINT)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # workers finish their checkpoints
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        name = signal.Signals(stopped[0]).name
        raise Interrupted(f"study stopped by {name}: every running training run saved a checkpoint")
