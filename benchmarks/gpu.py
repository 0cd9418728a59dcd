r"""The one GPU check (issue #12): everything a session lent a GPU measures, in one run.

    python -m benchmarks.gpu --out DIR              # on a CUDA machine (``bash ci/gpu.sh``)
    python -m benchmarks.gpu --out DIR --dry-run    # the same script on the CPU, tiny sizes

Sections, in this order (each one rewrites ``gpu.json`` and ``gpu.md`` in ``--out`` when it ends,
the Sinkhorn section after every case, so a run cut by its time limit keeps what it measured):

1. ``env``: GPU, driver, versions of torch / Triton / the peers, the ``tl.dot`` precision.
2. ``tests``: ``tests/test_triton_kernels.py`` and ``tests/test_triton_sinkhorn.py`` compiled
   for CUDA (``TRITON_INTERPRET=0``, exact fp32 products ``CMA_TRITON_DOT_PRECISION=ieee`` for
   the tests' tight tolerances, first config ``CMA_TRITON_AUTOTUNE=0``; every config is checked
   by section 6), in a subprocess with its own time limit; log in ``tests.log``.
3. ``sinkhorn``: ``sinkhorn_divergence`` forward (under ``no_grad``) and forward + backward at
   N = M ∈ {4096, 16384, 65536}, d = 512, float32 and bfloat16 inputs, for ours (Triton) and the
   peers of :mod:`benchmarks._backends` — flash-sinkhorn, GeomLoss (tensorized: pykeops is not
   installed, so no ``online``), our reference path (tensorized and chunked) and POT (log
   domain, forward, float32) — in the benchmarks' convention (C = ‖x − y‖², ε = blur²; GeomLoss
   runs at blur/√2 and its value is doubled, SPEC §3a). Each case: one warm-up call
   (compilation, autotuning; it also counts our solver's passes with ``CostOperator.passes``),
   then the best of ``reps`` timed calls and the peak memory of one of them. Accuracy: value and
   gradient against the float64 oracle of :mod:`benchmarks._reference` (N ≤ 16384; for bf16
   inputs the error includes their rounding), and every peer's value against ours at the same
   N. Ours runs first at every size, then the peers; a case whose time extrapolated from the
   previous size (∝ N²) does not fit in the time left is skipped, one that runs out of memory
   or past its time limit is recorded as such, and larger N of it are skipped.
4. ``training``: one training step of open_clip ``ViT-B-32`` (random weights, batch 1024,
   random images and tokens, AdamW) with ClipLoss and with CMALoss: model forward under bf16
   autocast, the losses in fp32 (:func:`benchmarks._backends.build_train`); median time per
   step and the overhead ratio.
5. ``autotune``: the config the Triton autotuner picked for every kernel and key it met in
   sections 3-4 (read from the autotuners' in-memory cache).
6. ``configs``: every config of the tuned kernels pinned in turn (``CMA_TRITON_AUTOTUNE=0``,
   exact fp32 products), ``sinkhorn_divergence`` and ``pairwise_sqdist`` on a shape that is no
   multiple of any block (N = 300, M = 517, d = 512) against the float64 reference path; the
   faster ``tl.dot`` precisions (tf32x3, tf32, fp16, bf16 operands: errors reported); a
   47000 × 47000 sqdist (int64 offsets).

``--dry-run`` runs all of it on the CPU with tiny sizes — what ``tests/test_gpu_script.py`` runs,
so the script cannot fail for a trivial reason on the day a GPU is lent: N ∈ {16, 32}, d = 16,
blur 0.5, one call per case (no separate warm-up); our reference path (``cma-chunked``) takes
the place of ours in section 3, the Triton kernels run under the interpreter in sections 2 (two
tests) and 6; peers that do not import (or need CUDA) are recorded as unavailable; section 4
trains ``cma-micro`` at batch 16.

The time budget (``--budget-s``) bounds the whole run; section 3 stops early enough to leave
time for 4-6. ``gc.freeze()`` after each section keeps the ``gc.collect()`` of every case cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import inspect
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("env", "tests", "sinkhorn", "training", "autotune", "configs")
TEST_FILES = ("tests/test_triton_kernels.py", "tests/test_triton_sinkhorn.py")
#: The ``-k`` selection of the kernel tests in a dry run (one quick test of each file).
DRY_TESTS = "test_interpreter_blocks_are_gpu_legal or test_public_primitives_on_triton"
#: Our backend in the Sinkhorn section (a dry run uses our reference path instead).
OURS, DRY_OURS = "cma-triton", "cma-chunked"
#: The peers, in priority order (the time budget cuts the tail first).
PEERS = ("flash", "geomloss", "cma-tensorized", "cma-chunked", "pot-log")
#: Peers run on float32 inputs only (POT would iterate in bf16).
FP32_ONLY = frozenset({"pot-log"})
#: Mode → the benchmark operation of :mod:`benchmarks._backends`.
MODES = {"fwd+bwd": "sinkhorn_grad", "fwd": "sinkhorn"}
#: Distributions whose versions the report lists.
DISTS = ("torch", "triton", "numpy", "geomloss", "flash-sinkhorn", "POT", "open_clip_torch")
SCHEMA = 1


class CaseTimeout(Exception):
    """A call ran past its time limit (raised by :func:`time_limit`)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the block once ``seconds`` have passed (SIGALRM).

    The signal is handled between Python bytecodes, so a long GPU kernel or library call
    finishes first; the solvers timed here are Python loops of short kernels.
    """
    if seconds <= 0:
        raise CaseTimeout("no time left")

    def fire(_sig: int, _frame: Any) -> None:
        raise CaseTimeout(f"past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failure(exc: BaseException) -> dict[str, Any]:
    """The record of a failed call: ``oom``, ``timeout`` or ``error`` with a short note."""
    import torch

    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
    chain: list[BaseException] = []  # a library may wrap ours (Triton's InterpreterError)
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    if any(isinstance(e, CaseTimeout) for e in chain) or "CaseTimeout" in text:
        return {"status": "timeout", "note": text}
    if any(isinstance(e, torch.OutOfMemoryError) for e in chain) or "out of memory" in text.lower():
        return {"status": "oom", "note": text}
    return {"status": "error", "note": text, "trace": traceback.format_exc()[-2000:]}


def free_memory() -> None:
    """Collect garbage and return cached CUDA memory (after a case, above all a failed one)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def extrapolate(seconds: float, n0: int, n: int, power: float = 2.0) -> float:
    """Cost at size n of something that took ``seconds`` at size n0, ∝ n^power."""
    return seconds * (n / n0) ** power


# ------------------------------------------------------------------------------------------
# the run: settings, budget, report files
# ------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What one run measures (``--dry-run`` swaps in the tiny CPU values)."""

    out: Path
    dry_run: bool
    budget_s: float
    sizes: tuple[int, ...]
    dim: int
    dtypes: tuple[str, ...]
    sections: tuple[str, ...]
    ours: str
    peers: tuple[str, ...]
    peer_timeout_s: float
    ours_timeout_s: float
    ref_timeout_s: float
    reps: int
    large_reps: int
    tests_timeout_s: float
    train_model: str
    train_batch: int
    train_steps: int
    config_shape: tuple[int, int, int]
    config_max_iter: int

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def reserve_s(self) -> float:
        """Seconds section 3 leaves for sections 4-6 (section 4 leaves half of it to 5-6)."""
        return 15.0 if self.dry_run else 120.0


@dataclass
class Run:
    """The report being built, the deadline, and the writer of ``gpu.json`` / ``gpu.md``."""

    settings: Settings
    started: float = field(default_factory=time.perf_counter)
    report: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.settings.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        """Write ``gpu.json`` and ``gpu.md`` (atomically: a kill never leaves half a file)."""
        self.report["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        out = self.settings.out
        for name, text in (
            ("gpu.json", json.dumps(self.report, indent=1, default=str)),
            ("gpu.md", markdown(self.report)),
        ):
            tmp = out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(out / name)


def log(*args: object) -> None:
    print(*args, flush=True)


# ------------------------------------------------------------------------------------------
# 1. environment
# ------------------------------------------------------------------------------------------


def env_section(run: Run) -> dict[str, Any]:
    """Machine, versions, precision settings, which peers import."""
    import torch

    from . import _backends
    from . import _config as cfg

    s = run.settings
    versions = {}
    for dist in DISTS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": s.device,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "cpu_count": os.cpu_count(),
    }
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            out["nvidia_smi"] = smi.stdout.strip()
    try:
        from cma_kernels.triton import _config as tcfg

        out["dot_precision"] = tcfg.dot_precision()
    except Exception as exc:
        out["dot_precision"] = f"unavailable: {exc}"
    out["peers"] = {
        peer: _backends.unavailable("sinkhorn", peer, s.device) or "ok"
        for peer in ("geomloss", "flash", "pot-log")
    }
    out["keops"] = _imports("pykeops")
    out["open_clip"] = _imports("open_clip")
    out["settings"] = {**cfg.settings(), "seed": cfg.SEED}
    return out


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------------
# 2. kernel tests
# ------------------------------------------------------------------------------------------


def tests_section(run: Run) -> dict[str, Any]:
    """The Triton kernel tests in a subprocess; counts and failing tests from its JUnit XML."""
    s = run.settings
    limit = max(1.0, min(s.tests_timeout_s, run.left() - s.reserve_s))
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider"]
        cmd += ["--durations=10", f"--junitxml={junit}"]
        if s.dry_run:
            cmd += ["-k", DRY_TESTS]
        env = {
            **os.environ,
            "TRITON_INTERPRET": "1" if s.dry_run else "0",
            "CMA_TRITON_DOT_PRECISION": "ieee",
            "CMA_TRITON_AUTOTUNE": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        shown = [c for c in cmd[1:] if not c.startswith("--junitxml")]
        out: dict[str, Any] = {"command": " ".join(shown), "limit_s": round(limit)}
        t0 = time.perf_counter()
        with open(s.out / "tests.log", "w") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
            try:
                out["returncode"] = proc.wait(timeout=limit)
                out["status"] = "passed" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                # Ctrl-C: pytest stops after the current test and still writes its summary and
                # the JUnit XML of the tests it ran
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                out["status"] = "timeout"
        out["seconds"] = round(time.perf_counter() - t0, 1)
        if junit.is_file():
            out.update(junit_counts(junit))
    return out


def junit_counts(path: Path) -> dict[str, Any]:
    """tests / passed / failed / errors / skipped and the failing test ids of a JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(x.get(k, 0)) for x in suites) for k in ("tests", "failures", "errors")}
    skipped = sum(int(x.get("skipped", 0)) for x in suites)
    failing = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "tests": counts["tests"],
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - skipped,
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": skipped,
        "failing": failing[:50],
    }


# ------------------------------------------------------------------------------------------
# 3. Sinkhorn timings
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def counting_passes() -> Iterator[dict[str, int | None]]:
    """Σ ``passes`` / ``cost_entries`` over the cost operators built in the block.

    Every ``CostOperator`` counts its reductions (``cma_kernels.cost``); the operators of one
    call are found by wrapping the base ``__init__``. Where the counters do not exist (an
    older ``cma_kernels``) both stay None.
    """
    from cma_kernels.cost import CostOperator

    made: list[Any] = []
    original = CostOperator.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    counts: dict[str, int | None] = {"passes": None, "cost_entries": None}
    CostOperator.__init__ = init  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        CostOperator.__init__ = original  # type: ignore[method-assign]
        if made and all(hasattr(op, "passes") for op in made):
            counts["passes"] = sum(int(op.passes) for op in made)
            counts["cost_entries"] = sum(int(getattr(op, "cost_entries", 0)) for op in made)
        made.clear()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def _grad_rel(grads: tuple[Any, ...], ref: tuple[Any, ...]) -> float:
    """‖(∂x, ∂y) − (∂x, ∂y)_ref‖ / ‖(∂x, ∂y)_ref‖ in float64."""
    import torch

    got = torch.cat([g.detach().double().flatten() for g in grads])
    want = torch.cat([g.double().flatten() for g in ref])
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


@dataclass
class SinkhornState:
    """Clouds, float64 references and per-(method, dtype, mode) history of one section run."""

    clouds: dict[int, Any] = field(default_factory=dict)
    refs: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    #: (method, dtype, mode) → (n, first call s, timed call s) of its last successful case.
    last_ok: dict[tuple[str, str, str], tuple[int, float, float]] = field(default_factory=dict)
    #: (method, dtype, mode) → "oom at N=…" once it failed: larger N are skipped.
    failed: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: (n, mode) → our float32 value (the peers' agreement is measured against it).
    ours: dict[tuple[int, str], float] = field(default_factory=dict)
    ref_cost: tuple[int, float] | None = None
    ours_method: str = OURS


def sinkhorn_section(run: Run) -> dict[str, Any]:
    """Ours at every size first, then the peers; see the module docstring (section 3)."""
    from . import _backends

    s = run.settings
    out: dict[str, Any] = {
        "ours": s.ours,
        "sizes": list(s.sizes),
        "d": s.dim,
        "dtypes": list(s.dtypes),
        "modes": list(MODES),
        "references": {},
        "unavailable": {},
        "runs": [],
    }
    run.report["sinkhorn"] = out
    state = SinkhornState(ours_method=s.ours)
    for method in (s.ours, *s.peers):
        reason = _backends.unavailable("sinkhorn", method, s.device)
        if reason:
            out["unavailable"][method] = reason
    plan = [
        (method, n, dtype, mode)
        for group in ([s.ours], list(s.peers))
        for n in s.sizes
        for dtype in s.dtypes
        for mode in MODES
        for method in group
        if method not in out["unavailable"]
        and method in _backends.OPS[MODES[mode]]
        and not (method in FP32_ONLY and dtype != "float32")
    ]
    for method, n, dtype, mode in plan:
        entry = {"method": method, "n": n, "d": s.dim, "dtype": dtype, "mode": mode}
        entry.update(sinkhorn_case(run, state, method, n, dtype, mode))
        out["runs"].append(entry)
        out["references"] = {
            str(k): {kk: vv for kk, vv in v.items() if kk != "grads"} if v else None
            for k, v in state.refs.items()
        }
        shown = {k: v for k, v in entry.items() if k not in ("trace", "all_s")}
        log("sinkhorn", json.dumps(shown, default=str))
        run.save()
    return out


def clouds(state: SinkhornState, s: Settings, n: int) -> Any:
    """The benchmark clouds (float32, on the device) of size n, made once."""
    from . import _config as cfg

    if n not in state.clouds:
        state.clouds[n] = cfg.make_clouds(n, s.dim, cfg.SEED, s.device)
    return state.clouds[n]


def reference(run: Run, state: SinkhornState, n: int) -> dict[str, Any] | None:
    """The float64 oracle (value, full gradients) at size n, if affordable; computed once."""
    from . import _config as cfg
    from . import _reference

    if n in state.refs:
        return state.refs[n]
    s = run.settings
    state.refs[n] = None
    if n > _reference.REF_MAX_N:
        return None
    left = run.left() - s.reserve_s
    if state.ref_cost is not None:
        # Dense float64: O(N²) soft-mins and O(N³) Newton solves, the N² part dominating on a
        # GPU up to N = 16384; the time limit below bounds a guess that was too low.
        guess = extrapolate(state.ref_cost[1], state.ref_cost[0], n)
        if guess > 0.25 * left:
            state.refs[n] = {"status": "skipped", "note": f"~{guess:.0f} s extrapolated"}
            return state.refs[n]
    x, y = clouds(state, s, n)
    t0 = time.perf_counter()
    try:
        with time_limit(min(s.ref_timeout_s, 0.25 * left)):
            value, gx, gy, facts = _reference.sinkhorn_reference(
                x, y, blur=cfg.BLUR, scaling=cfg.SCALING
            )
    except Exception as exc:
        state.refs[n] = failure(exc)
        free_memory()
        return state.refs[n]
    seconds = time.perf_counter() - t0
    state.ref_cost = (n, seconds)
    entry: dict[str, Any] = {
        "status": "ok",
        "value": value,
        "seconds": round(seconds, 2),
        "facts": facts,
        "grads": (gx, gy),
    }
    name = _reference.key(n, s.dim, cfg.SEED, cfg.BLUR, cfg.SCALING)
    stored = _reference.lookup(_reference.STORED, name, x, y)
    if stored is not None:  # the committed CPU value: checks the oracle on this device
        entry["stored_rel_diff"] = _rel(value, stored["value"])
    state.refs[n] = entry
    free_memory()
    return entry


def sinkhorn_case(
    run: Run, state: SinkhornState, method: str, n: int, dtype: str, mode: str
) -> dict[str, Any]:
    """Warm-up, timed calls, peak memory, passes and accuracy of one case (or why not)."""
    import torch

    s = run.settings
    key = (method, dtype, mode)
    if key in state.failed:
        return {"status": "skipped", "note": state.failed[key]}
    reps = s.large_reps if n >= 65536 else s.reps
    left = run.left() - s.reserve_s
    if left <= 0:
        return {"status": "skipped", "note": "time budget spent"}
    if key in state.last_ok:
        n0, first0, call0 = state.last_ok[key]
        guess = extrapolate(first0 + reps * call0, n0, n)
        if guess > left:
            return {"status": "skipped", "note": f"~{guess:.0f} s extrapolated, {left:.0f} s left"}
    ref = reference(run, state, n)
    x, y = clouds(state, s, n)
    if dtype != "float32":
        x, y = x.to(getattr(torch, dtype)), y.to(getattr(torch, dtype))
    per_call = s.ours_timeout_s if method == s.ours else s.peer_timeout_s
    out: dict[str, Any] = {}
    try:
        with time_limit(min(per_call * (1 + reps), run.left() - s.reserve_s)):
            out.update(_measure(state, method, n, dtype, mode, x, y, reps, ref))
    except Exception as exc:
        failed = failure(exc)
        if failed["status"] in ("oom", "timeout"):
            state.failed[key] = f"{failed['status']} at N={n}"
        out.update(failed)
    free_memory()
    if out.get("status") == "ok":
        state.last_ok[key] = (n, out["first_s"], out["seconds"])
    return out


def _measure(
    state: SinkhornState,
    method: str,
    n: int,
    dtype: str,
    mode: str,
    x: Any,
    y: Any,
    reps: int,
    ref: dict[str, Any] | None,
) -> dict[str, Any]:
    """The measurement of :func:`sinkhorn_case` (raises on OOM, timeout or error)."""
    from . import _backends
    from ._memory import PeakMemory

    case = _backends.build(MODES[mode], method, x, y)
    mem = PeakMemory(str(x.device))
    t0 = time.perf_counter()
    with counting_passes() as counts, mem if reps == 0 else contextlib.nullcontext():
        value, grads = case.run()
    first = time.perf_counter() - t0
    out = _accuracy(state, method, n, dtype, mode, value, grads, ref)
    del value, grads
    times = []
    for rep in range(reps):
        with mem if rep == 0 else contextlib.nullcontext():
            t0 = time.perf_counter()
            case.run()
            times.append(time.perf_counter() - t0)
    return {
        "status": "ok",
        "seconds": min(times) if times else first,  # reps = 0 (dry run): the first call
        "all_s": [round(t, 5) for t in times],
        "first_s": round(first, 4),
        "peak_mib": None if math.isnan(mem.peak_mb) else round(mem.peak_mb, 1),
        "nm_fp32_mib": round(n * n * 4 / 2**20, 1),
        "passes": counts["passes"],
        "cost_entries": counts["cost_entries"],
        **{k: v for k, v in case.info.items() if k.startswith("iters")},
        **out,
    }


def _accuracy(
    state: SinkhornState,
    method: str,
    n: int,
    dtype: str,
    mode: str,
    value: Any,
    grads: tuple[Any, ...] | None,
    ref: dict[str, Any] | None,
) -> dict[str, Any]:
    """Value (and gradient) errors vs the float64 oracle, and vs ours at float32."""
    v = float(value)
    out: dict[str, Any] = {"value": v}
    if ref is not None and ref.get("status") == "ok":
        out["rel_err"] = _rel(v, ref["value"])
        if grads is not None:
            out["grad_rel_err"] = _grad_rel(grads, ref["grads"])
    if method == state.ours_method and dtype == "float32":
        state.ours[(n, mode)] = v
    elif (n, mode) in state.ours:
        out["rel_diff_vs_ours"] = _rel(v, state.ours[(n, mode)])
    return out


# ------------------------------------------------------------------------------------------
# 4. training step
# ------------------------------------------------------------------------------------------


def training_section(run: Run) -> dict[str, Any]:
    """ClipLoss vs CMALoss training steps (:func:`benchmarks._backends.build_train`)."""
    from . import _backends
    from ._memory import PeakMemory

    s = run.settings
    out: dict[str, Any] = {
        "model": s.train_model,
        "batch": s.train_batch,
        "steps": s.train_steps,
        "amp": "bf16 autocast around the model forward; losses in fp32"
        if s.device == "cuda"
        else "fp32 (CPU)",
    }
    reason = _backends.unavailable("train", "cma", s.device)
    if reason:
        return {**out, "status": "unavailable", "note": reason}
    for backend in ("clip", "cma"):
        left = run.left() - s.reserve_s / 2  # the other half is section 6's
        try:
            with time_limit(left / 2 if backend == "clip" else left):
                case = _backends.build_train(
                    backend, s.device, model_name=s.train_model, batch=s.train_batch
                )
                for _ in range(1 if s.dry_run else 2):  # AdamW state, compilation, autotuning
                    case.run()
                times = []
                for _ in range(s.train_steps):
                    t0 = time.perf_counter()
                    loss, _ = case.run()
                    times.append(time.perf_counter() - t0)
                with PeakMemory(s.device) as mem:
                    case.run()
            times.sort()
            out[backend] = {
                "status": "ok",
                "median_s": times[len(times) // 2],
                "min_s": times[0],
                "all_s": [round(t, 5) for t in times],
                "loss": float(loss),
                "peak_mib": None if math.isnan(mem.peak_mb) else round(mem.peak_mb, 1),
            }
        except Exception as exc:
            out[backend] = failure(exc)
        case = None
        free_memory()
        log("training", backend, json.dumps(out[backend], default=str)[:500])
    if out["clip"].get("status") == "ok" and out["cma"].get("status") == "ok":
        out["overhead"] = out["cma"]["median_s"] / out["clip"]["median_s"] - 1.0
        out["status"] = "ok"
    else:
        out["status"] = "partial"
    return out


# ------------------------------------------------------------------------------------------
# 5. autotuner winners
# ------------------------------------------------------------------------------------------


def _tuned_function(tuner: Any) -> Any:
    """The Python function under an autotuner (through its ``JITFunction`` wrappers)."""
    fn = getattr(tuner, "base_fn", None) or tuner.fn
    while not inspect.isfunction(fn) and hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def find_autotuners() -> list[Any]:
    """The live ``triton`` autotuners of ``cma_kernels`` (one per kernel × config list)."""
    from triton.runtime.autotuner import Autotuner

    return [
        obj
        for obj in gc.get_objects()
        if issubclass(type(obj), Autotuner)  # type(), not isinstance: no lazy-module warnings
        and getattr(_tuned_function(obj), "__module__", "").startswith("cma_kernels")
    ]


def autotune_winners(tuners: Iterable[Any], lists: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One row per (autotuner, key): the kernel, its config list, the key and the winner.

    A Triton autotuner caches ``{key: best config}`` where the key is the values of its
    ``key`` arguments followed by the dtypes of the tensor arguments; ``lists`` names the
    config lists (``softmin/tf32x3`` …) to tell the two roles of one kernel apart.
    """
    named = {name: [str(c) for c in configs] for name, configs in lists.items()}
    rows = []
    for tuner in tuners:
        configs = [str(c) for c in tuner.configs]
        list_name = next((name for name, cs in named.items() if cs == configs), None)
        timings = getattr(tuner, "configs_timings", None) or {}
        names = list(getattr(tuner, "keys", []))
        for key, config in tuner.cache.items():
            rows.append(
                {
                    "kernel": getattr(_tuned_function(tuner), "__name__", "?"),
                    "configs": list_name,
                    "key": dict(zip(names, key[: len(names)], strict=False)),
                    "dtypes": [str(k) for k in key[len(names) :]],
                    "config": str(config),
                    "index": configs.index(str(config)) if str(config) in configs else None,
                }
            )
        if timings:  # the last key tuned: every config's time (ms), to see the margin
            rows[-1]["last_timings_ms"] = {str(c): _ms(t) for c, t in timings.items()}
    return rows


def _ms(t: Any) -> float | list[float]:
    return [float(v) for v in t] if isinstance(t, list | tuple) else float(t)


def autotune_section(run: Run) -> dict[str, Any]:
    """The autotuners' winners, read after sections 3-4 tuned every shape they met."""
    from cma_kernels.triton import _config as tcfg

    if tcfg.interpreted():
        return {"status": "interpreter", "note": "fixed interpreter blocks, no autotuning"}
    if not tcfg.autotune_enabled():
        return {"status": "disabled", "note": "CMA_TRITON_AUTOTUNE=0"}
    lists = tcfg.config_lists()
    gc.unfreeze()  # gc.get_objects() does not list frozen objects
    rows = autotune_winners(find_autotuners(), lists)
    return {"status": "ok", "dot_precision": tcfg.dot_precision(), "winners": rows}


# ------------------------------------------------------------------------------------------
# 6. every config against float64
# ------------------------------------------------------------------------------------------


def configs_section(run: Run) -> dict[str, Any]:
    """Each tuned config pinned in turn; S_ε, its gradient and sqdist vs float64.

    Every config runs with exact fp32 products (``ieee``: pass/fail at value 1e-4, gradient
    1e-3, sqdist 1e-4); the first configs then run with each faster ``tl.dot`` precision
    (errors reported, no verdict), and a last job writes a 47000 × 47000 sqdist (past 2³¹
    elements: int64 offsets). Under the interpreter (fixed blocks, exact products) one run.
    """
    import torch

    import cma_kernels
    from cma_kernels.triton import _config as tcfg

    from . import _config as cfg

    s = run.settings
    n, m, d = s.config_shape
    x, y = cfg.make_clouds(max(n, m), d, cfg.SEED + 2, s.device)
    x, y = x[:n].contiguous(), y[:m].contiguous()
    solver = {"blur": 0.25, "scaling": 0.5, "tol": 1e-12, "max_iter": s.config_max_iter}

    def divergence(a: Any, b: Any, backend: str) -> tuple[float, tuple[Any, ...]]:
        a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        value = cma_kernels.sinkhorn_divergence(a, b, backend=backend, **solver)
        return float(value.detach()), torch.autograd.grad(value, (a, b))

    ref_value, ref_grads = divergence(x.double(), y.double(), "reference")
    ref_sq = cma_kernels.pairwise_sqdist(x.double(), y.double(), backend="reference")
    lists = tcfg.config_lists()
    jobs = [(0, "ieee")]
    if not tcfg.interpreted():
        jobs = [(i, "ieee") for i in range(max(len(v) for v in lists.values()))]
        jobs += [(0, prec) for prec in tcfg.DOT_PRECISIONS if prec != "ieee"]
    out: dict[str, Any] = {"shape": [n, m, d], "solver": solver, "runs": []}
    saved_env = {k: os.environ.get(k) for k in ("CMA_TRITON_AUTOTUNE", "CMA_TRITON_DOT_PRECISION")}
    os.environ["CMA_TRITON_AUTOTUNE"] = "0"
    try:
        for i, prec in jobs:
            pinned = {name: configs[i % len(configs)] for name, configs in lists.items()}
            entry: dict[str, Any] = {
                "precision": prec,
                "pinned": {k: str(v) for k, v in pinned.items()},
            }
            os.environ["CMA_TRITON_DOT_PRECISION"] = prec
            for name, config in pinned.items():
                tcfg.set_configs(name, [config])
            try:
                with time_limit(run.left() - 2.0):
                    value, grads = divergence(x, y, "triton")
                    sq = cma_kernels.pairwise_sqdist(x, y, backend="triton")
                entry["value_rel_err"] = _rel(value, ref_value)
                entry["grad_rel_err"] = _grad_rel(grads, ref_grads)
                entry["sqdist_max_err"] = float((sq.double() - ref_sq).abs().max())
                exact = (
                    entry["value_rel_err"] <= 1e-4
                    and entry["grad_rel_err"] <= 1e-3
                    and entry["sqdist_max_err"] <= 1e-4
                )
                entry["ok"] = exact if prec == "ieee" else None  # faster precisions: reported
            except Exception as exc:
                entry.update({**failure(exc), "ok": False})
            finally:
                for name, configs in lists.items():
                    tcfg.set_configs(name, configs)
            out["runs"].append(entry)
            log("configs", json.dumps(entry, default=str)[:600])
            if entry.get("status") == "timeout":
                break
        if not tcfg.interpreted() and run.left() > 10.0:
            out["runs"].append(_sqdist_int64(run))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["failures"] = sum(r["ok"] is False for r in out["runs"])
    done = len(out["runs"]) >= len(jobs)
    out["status"] = "ok" if out["failures"] == 0 and done else "failed"
    return out


def _sqdist_int64(run: Run) -> dict[str, Any]:
    """A 47000 × 47000 fp32 sqdist (8.2 GiB, past 2³¹ elements): its last tile vs float64."""
    import cma_kernels

    from . import _config as cfg

    entry: dict[str, Any] = {"precision": "ieee", "pinned": {"sqdist": "N = M = 47000, d = 16"}}
    try:
        with time_limit(run.left() - 2.0):
            x, y = cfg.make_clouds(47000, 16, cfg.SEED + 3, run.settings.device)
            c = cma_kernels.pairwise_sqdist(x, y, backend="triton")
            tail = cma_kernels.pairwise_sqdist(
                x[-7:].double(), y[-5:].double(), backend="reference"
            )
            entry["sqdist_max_err"] = float((c[-7:, -5:].double() - tail).abs().max())
            entry["ok"] = tuple(c.shape) == (47000, 47000) and entry["sqdist_max_err"] <= 1e-4
            del c
    except Exception as exc:
        entry.update({**failure(exc), "ok": False})
    free_memory()
    log("configs", json.dumps(entry, default=str)[:600])
    return entry


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------


def _cell(entry: dict[str, Any] | None) -> str:
    """time · peak · passes · value/gradient error of one Sinkhorn case, or why not."""
    from .report import _fmt_err, _fmt_mb, _fmt_time

    if entry is None:
        return ""
    if entry.get("status") != "ok":
        note = str(entry.get("note", ""))[:40].replace("|", "/")
        return f"{entry.get('status')}: {note}" if note else str(entry.get("status"))
    parts = [_fmt_time(entry["seconds"]), f"{_fmt_mb(entry.get('peak_mib'))} MiB"]
    if entry.get("passes") is not None:
        parts.append(f"{entry['passes']} p")
    err = entry.get("rel_err", entry.get("rel_diff_vs_ours"))
    if err is not None:
        mark = "" if "rel_err" in entry else "≈"
        grad = entry.get("grad_rel_err")
        parts.append(mark + _fmt_err(err) + (f"/{_fmt_err(grad)}" if grad is not None else ""))
    return " · ".join(parts)


def sinkhorn_tables(sec: dict[str, Any]) -> list[str]:
    """One table per (dtype, mode): methods × N."""
    lines: list[str] = []
    sizes = sec.get("sizes", [])
    runs = sec.get("runs", [])
    for dtype in sec.get("dtypes", []):
        for mode in sec.get("modes", []):
            rows = [r for r in runs if r["dtype"] == dtype and r["mode"] == mode]
            if not rows:
                continue
            lines += [f"### {mode}, {dtype} inputs", ""]
            lines.append("| method | " + " | ".join(f"N = {n}" for n in sizes) + " |")
            lines.append("|---|" + "---|" * len(sizes))
            for method in dict.fromkeys(r["method"] for r in rows):
                by_n = {r["n"]: r for r in rows if r["method"] == method}
                cells = [_cell(by_n.get(n)) for n in sizes]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
            name = sec.get("ours", OURS)
            ours = {r["n"]: r for r in rows if r["method"] == name and r["status"] == "ok"}
            ratios = [
                f"{r['method']} {r['seconds'] / ours[r['n']]['seconds']:.2f}× at N = {r['n']}"
                for r in rows
                if r["method"] != name and r["status"] == "ok" and r["n"] in ours
            ]
            if ratios:
                lines += ["Peer time / ours: " + ", ".join(ratios) + ".", ""]
    refs = sec.get("references") or {}
    if refs:
        lines += [
            "float64 oracle: " + "; ".join(_ref_text(n, r) for n, r in refs.items()) + ".",
            "",
        ]
    if sec.get("unavailable"):
        lines += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in sec["unavailable"].items())]
        lines.append("")
    return lines


def _ref_text(n: str, ref: dict[str, Any] | None) -> str:
    from .report import _fmt_time

    if not ref:
        return f"N = {n}: not computed"
    if ref.get("status") != "ok":
        return f"N = {n}: {ref.get('status')} ({ref.get('note', '')})"
    text = f"N = {n}: S = {ref['value']:.8f} in {_fmt_time(ref['seconds'])}"
    if "stored_rel_diff" in ref:
        text += f" (vs the stored CPU value {ref['stored_rel_diff']:.1e})"
    return text


def markdown(rep: dict[str, Any]) -> str:
    """The Markdown report of a (possibly partial) ``gpu.json``."""
    from .report import _fmt_err, _fmt_mb, _fmt_time

    env = rep.get("env", {})
    gpu = env.get("gpu", {})
    lines = [
        "# GPU check" + (" (dry run, CPU)" if rep.get("dry_run") else ""),
        "",
        f"{gpu.get('name', env.get('device', '?'))}, torch {env.get('versions', {}).get('torch')}"
        f", triton {env.get('versions', {}).get('triton')}, dot precision "
        f"{env.get('dot_precision')}; elapsed {rep.get('elapsed_s')} s of "
        f"{rep.get('budget_s')} s. Settings: {json.dumps(env.get('settings', {}))}.",
        "",
        "| section | status | seconds |",
        "|---|---|---|",
    ]
    for name, st in rep.get("sections", {}).items():
        lines.append(f"| {name} | {st.get('status')} | {st.get('seconds', '')} |")
    lines.append("")
    tests = rep.get("tests")
    if tests:
        lines += ["## Kernel tests on the device", ""]
        lines.append(
            f"{tests.get('status')}: {tests.get('passed', '?')} passed, "
            f"{tests.get('failed', '?')} failed, {tests.get('errors', '?')} errors, "
            f"{tests.get('skipped', '?')} skipped in {tests.get('seconds')} s "
            f"(`{tests.get('command')}`; log: tests.log)."
        )
        lines += [f"- FAILED {t}" for t in tests.get("failing", [])]
        lines.append("")
    sec = rep.get("sinkhorn")
    if sec:
        lines += [
            "## sinkhorn_divergence",
            "",
            "Cell: best time · peak memory above the inputs · cost passes of one call (ours) · "
            "value/gradient relative error vs the float64 oracle (≈: value vs ours, float32, "
            "where there is no oracle).",
            "",
            *sinkhorn_tables(sec),
        ]
    train = rep.get("training")
    if train:
        lines += [
            "## Training step",
            "",
            f"{train.get('model')}, batch {train.get('batch')}, {train.get('amp')}.",
            "",
            "| loss | status | median s/step | min s/step | peak MiB | loss value |",
            "|---|---|---|---|---|---|",
        ]
        for backend in ("clip", "cma"):
            r = train.get(backend) or {}
            lines.append(
                f"| {'ClipLoss' if backend == 'clip' else 'CMALoss'} | {r.get('status')} | "
                f"{_fmt_time(r.get('median_s'))} | {_fmt_time(r.get('min_s'))} | "
                f"{_fmt_mb(r.get('peak_mib'))} | {r.get('loss', r.get('note', ''))} |"
            )
        if "overhead" in train:
            lines.append(f"\nCMALoss overhead: {100 * train['overhead']:+.1f} % per step.")
        elif train.get("note"):
            lines.append(f"\n{train['note']}")
        lines.append("")
    tune = rep.get("autotune")
    if tune:
        lines += ["## Autotuned configs", ""]
        winners = tune.get("winners", [])
        if not winners:
            lines.append(f"{tune.get('status')}: {tune.get('note', 'no autotuned launches')}")
        else:
            lines += [
                "| kernel | configs | key | dtypes | winner (index) |",
                "|---|---|---|---|---|",
            ]
            for w in winners:
                lines.append(
                    f"| {w['kernel']} | {w['configs']} | {w['key']} | {w['dtypes']} | "
                    f"{w['config']} ({w['index']}) |"
                )
        lines.append("")
    conf = rep.get("configs")
    if conf:
        lines += [
            "## Every config vs float64",
            "",
            f"Shape (N, M, d) = {conf.get('shape')}, solver {conf.get('solver')}; "
            f"{conf.get('failures')} failure(s).",
            "",
            "| precision | pinned | value err | grad err | sqdist err | ok |",
            "|---|---|---|---|---|---|",
        ]
        for r in conf.get("runs", []):
            pinned = "; ".join(f"{k}: {v}" for k, v in r.get("pinned", {}).items())
            lines.append(
                f"| {r.get('precision')} | {pinned} | {_fmt_err(r.get('value_rel_err'))} | "
                f"{_fmt_err(r.get('grad_rel_err'))} | {_fmt_err(r.get('sqdist_max_err'))} | "
                f"{r.get('ok')} {r.get('note', '')} |"
            )
        lines.append("")
    for name, st in rep.get("sections", {}).items():
        if st.get("error"):
            lines += [f"Section {name} failed: `{st['error']}`", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------

SECTION_FNS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "env": env_section,
    "tests": tests_section,
    "sinkhorn": sinkhorn_section,
    "training": training_section,
    "autotune": autotune_section,
    "configs": configs_section,
}


def parse(argv: list[str] | None) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/cma-gpu"), help="output folder")
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU run of the same script")
    ap.add_argument("--budget-s", type=float, help="time for the whole run (420; dry run 300)")
    ap.add_argument("--sizes", help="N = M values (4096,16384,65536; dry run 16,32)")
    ap.add_argument("--dim", type=int, help="d (512; dry run 16)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--peer-timeout-s", type=float, default=60.0)
    ap.add_argument("--train-model", help="open_clip model (ViT-B-32; dry run cma-micro)")
    ap.add_argument("--train-batch", type=int, help="batch (1024; dry run 16)")
    args = ap.parse_args(argv)
    dry = args.dry_run

    def pick(value: Any, gpu: Any, cpu: Any) -> Any:
        return value if value is not None else (cpu if dry else gpu)

    sections = tuple(x for x in args.sections.split(",") if x)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {sorted(unknown)}; expected some of {SECTIONS}")
    peers = tuple(x for x in args.peers.split(",") if x)
    if set(peers) - set(PEERS):
        ap.error(f"--peers: unknown {sorted(set(peers) - set(PEERS))}; expected some of {PEERS}")
    dtypes = tuple(x for x in args.dtypes.split(",") if x)
    if set(dtypes) - {"float32", "bfloat16", "float16"}:
        ap.error(f"--dtypes: expected float32, bfloat16 or float16, got {dtypes}")
    return Settings(
        out=Path(args.out),
        dry_run=dry,
        budget_s=pick(args.budget_s, 420.0, 300.0),
        sizes=tuple(int(v) for v in pick(args.sizes, "4096,16384,65536", "16,32").split(",")),
        dim=pick(args.dim, 512, 16),
        dtypes=dtypes,
        sections=sections,
        ours=DRY_OURS if dry else OURS,
        peers=tuple(p for p in peers if p != (DRY_OURS if dry else OURS)),
        peer_timeout_s=args.peer_timeout_s,
        ours_timeout_s=pick(None, 120.0, 60.0),
        ref_timeout_s=pick(None, 90.0, 30.0),
        reps=pick(None, 3, 0),
        large_reps=pick(None, 1, 0),
        tests_timeout_s=pick(None, 150.0, 60.0),
        train_model=pick(args.train_model, "ViT-B-32", "cma-micro"),
        train_batch=pick(args.train_batch, 1024, 16),
        train_steps=pick(None, 10, 2),
        config_shape=pick(None, (300, 517, 512), (40, 56, 24)),
        config_max_iter=pick(None, 20, 3),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the sections in order; exit status 1 if a test, config or section failed."""
    s = parse(argv)
    # before anything imports triton or reads the benchmark settings
    os.environ["TRITON_INTERPRET"] = "1" if s.dry_run else "0"
    if s.dry_run:
        os.environ.setdefault("CMA_BENCH_BLUR", "0.5")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if s.device == "cuda" and not torch.cuda.is_available():
        log("no CUDA device: run with --dry-run on a CPU")
        return 2
    s.out.mkdir(parents=True, exist_ok=True)
    run = Run(s)
    run.report.update(
        {
            "schema": SCHEMA,
            "dry_run": s.dry_run,
            "budget_s": s.budget_s,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv[1:] if argv is None else argv,
            "sections": {},
        }
    )

    def stop(_sig: int, _frame: Any) -> None:
        raise SystemExit("terminated")

    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        for name in s.sections:
            log(f"== {name} ({run.left():.0f} s left)")
            t0 = time.perf_counter()
            state: dict[str, Any] = {}
            try:
                run.report[name] = SECTION_FNS[name](run)
                state["status"] = run.report[name].get("status", "ok")
            except Exception as exc:
                state.update({"status": "error", "error": repr(exc)[:300]})
                log(traceback.format_exc())
            state["seconds"] = round(time.perf_counter() - t0, 1)
            run.report["sections"][name] = state
            status |= state["status"] in ("error", "failed")
            run.save()
            # Park what exists now (modules of torch, open_clip, …) out of the collector's
            # reach: gc.collect(), run after every case, then takes ms instead of ~1 s.
            gc.freeze()
    except SystemExit as exc:
        run.report["interrupted"] = str(exc)
        status = 1
    finally:
        run.save()
    log(f"gpu check done in {run.report['elapsed_s']} s, status {status}: {s.out}/gpu.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
