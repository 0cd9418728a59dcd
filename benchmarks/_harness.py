"""Benchmark harness: the session context (worker, cache, JSON extras) and the case runner.

Every case is timed in-process by pytest-benchmark; its first call (the warm-up round, or the
only round of a slow case) also gives the peak memory (:mod:`benchmarks._memory`), the solver
iterations and the output, compared with float64 (:mod:`benchmarks._reference`). POT's
solvers, which can run for minutes, are first run once in a worker process
(:mod:`benchmarks._worker`) under ``CMA_BENCH_PEER_TIMEOUT``: a timeout is recorded (and larger
N skipped) instead of waited for. Worker results are cached in ``benchmarks/.cache`` (keyed by
the benchmark code, the references and the library versions), so a rerun does not wait for
the same timeouts again. The JSON written by ``--benchmark-json`` gets a top-level ``"cma"``
entry with the settings, the memory method and the cases that did not run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from . import _backends, _memory, _worker
from . import _config as cfg
from ._memory import PeakMemory, trim

_ROOT = Path(__file__).resolve().parent.parent


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "geomloss", "POT", "flash-sinkhorn", "open_clip_torch", "triton"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _source_hash() -> str:
    """Hash of what a cached worker result depends on (benchmark code, references, versions)."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in (
        "_backends.py",
        "_config.py",
        "_worker.py",
        "_reference.py",
        "_memory.py",
        "reference_values.json",
    ):
        f = here / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    h.update(json.dumps(_versions(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _device_name(dev: str) -> str:
    if dev.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class BenchContext:
    """Session state: the worker, cached results, generated clouds and the cases not run."""

    def __init__(self) -> None:
        self.dev = cfg.device()
        self.d = cfg.dim()
        self.client = _worker.WorkerClient()
        self.salt = _source_hash()
        self.cache_path = cfg.CACHE_DIR / "measurements.json"
        self.cache: dict[str, Any] = {}
        if cfg.cache_enabled() and self.cache_path.is_file():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except (OSError, json.JSONDecodeError):
                self.cache = {}
        self.results: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.not_run: list[dict[str, Any]] = []
        self.mem_method = (
            _memory.CUDA_METHOD if self.dev.startswith("cuda") else (_memory.CPU_METHOD)
        )
        self.load_start = os.getloadavg()
        self.started = time.time()
        self._clouds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._refs: dict[int, dict[str, Any]] = {}

    # -- data ------------------------------------------------------------------------------
    def clouds(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The benchmark clouds of size n on the device (only the latest size is kept)."""
        if n not in self._clouds:
            self._clouds.clear()
            self._clouds[n] = cfg.make_clouds(n, self.d, cfg.SEED, self.dev)
        return self._clouds[n]

    # -- cache -----------------------------------------------------------------------------
    def _save_cache(self) -> None:
        if not cfg.cache_enabled():
            return
        cfg.CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1, sort_keys=True))
        tmp.replace(self.cache_path)

    def reference(self, n: int) -> None:
        """Make sure the float64 reference of size n exists (stored, cached or computed)."""
        if n in self._refs:
            return
        req = {"op": "reference", "n": n, "d": self.d, "seed": cfg.SEED, "device": self.dev}
        res = self.client.request(req, timeout=max(cfg.ours_timeout(), 1800.0))
        if res.get("status") != "ok":
            pytest.fail(f"float64 reference at N={n} failed: {res}")
        self._refs[n] = res

    # -- measurement -----------------------------------------------------------------------
    def measure(self, op: str, backend: str, n: int) -> dict[str, Any]:
        """Worker result for one case: cached, or skipped if a smaller N already failed."""
        for (op0, be0, n0), res0 in self.results.items():
            if (op0, be0) == (op, backend) and n0 < n and res0["status"] in ("timeout", "oom"):
                res = {"status": "skipped", "note": f"{res0['status']} at N={n0}"}
                self.results[(op, backend, n)] = res
                return res
        ours = _backends.is_ours(backend)
        bound = cfg.ours_timeout() if ours else cfg.peer_timeout()
        key = f"{cfg.device_label(self.dev)}|{op}|{backend}|{n}|{self.d}|{cfg.SEED}|{bound:g}|"
        key += self.salt
        res = self.cache.get(key)
        if res is None:
            req = {
                "op": op,
                "backend": backend,
                "n": n,
                "d": self.d,
                "seed": cfg.SEED,
                "device": self.dev,
            }
            if op in _backends.SINKHORN_OPS:
                self.reference(n)
            res = self.client.request(req, timeout=bound)
            res["bound_s"] = bound
            if res["status"] in ("ok", "timeout", "oom"):
                self.cache[key] = res
                self._save_cache()
        self.results[(op, backend, n)] = res
        return res

    def summary(self) -> dict[str, Any]:
        """The ``"cma"`` entry of the benchmark JSON."""
        return {
            "device": cfg.device_label(self.dev),
            "device_name": _device_name(self.dev),
            "d": self.d,
            "sizes": list(cfg.sizes()),
            "settings": {
                **cfg.settings(),
                "peer_timeout_s": cfg.peer_timeout(),
                "train": list(cfg.train_setup(self.dev)),
            },
            "mem_method": self.mem_method,
            "versions": _versions(),
            "load_avg_start": list(self.load_start),
            "load_avg_end": list(os.getloadavg()),
            "wall_s": time.time() - self.started,
            "not_run": self.not_run,
            "references": {str(n): r for n, r in self._refs.items()},
        }


#: A guarded peer whose one call in the worker took this long is not re-timed in-process: that
#: call (its time, memory and accuracy) is the measurement, reported with status worker-timed.
WORKER_TIMED_S = 5.0


def _rounds(op: str, n: int, call_s: float | None) -> tuple[int, int]:
    """(rounds, warm-up rounds): about 3 s of timing per case, one round for slow cases.

    ``call_s`` (known for the guarded peers, which ran once in the worker) decides when given;
    otherwise the size does: the Sinkhorn cases take seconds at N = 1024 and about a minute at
    N = 4096 on a 2-core CPU, so they get 3 rounds and 1 round there.
    """
    if call_s is not None:
        if call_s >= 3.0:
            return 1, 0
        return int(min(20, max(3, 3.0 / max(call_s, 1e-4)))), 1
    if op in ("sqdist", "centroid"):
        return (10, 1) if n <= 4096 else (3, 1)
    if op == "train":
        return 10, 0  # after one untimed step; the first timed step gives the memory
    if n <= 256:
        return 5, 1
    if n <= 1024 or ctx_is_cuda():
        return 3, 1
    return 1, 0


def ctx_is_cuda() -> bool:
    """Whether the benchmark device is a GPU (everything is fast enough for 3 rounds)."""
    return cfg.device().startswith("cuda")


def run_case(benchmark: Any, ctx: BenchContext, op: str, backend: str, n: int) -> None:
    """Time one case with pytest-benchmark; its first call also gives memory and accuracy.

    Guarded peers (POT) first run once in the worker under the time bound: a timeout is
    recorded (and larger N skipped) instead of waited for. Every other case runs in-process:
    the first call — the warm-up round, or the only round for slow cases — is wrapped in
    :class:`~benchmarks._memory.PeakMemory` and its output compared with float64.
    """
    benchmark.group = f"{op} N={n}"
    reason = _backends.unavailable(op, backend, ctx.dev)
    if reason:
        pytest.skip(reason)
    res: dict[str, Any] | None = None
    if backend in _backends.GUARDED:
        res = ctx.measure(op, backend, n)
        if res["status"] != "ok":
            ctx.not_run.append({"op": op, "backend": backend, "n": n, "d": ctx.d, **res})
            pytest.skip(f"{backend} N={n}: {res['status']} ({res.get('note', '')})")
        if res["call_s"] >= WORKER_TIMED_S:  # one call is the measurement: do not redo it
            ctx.not_run.append(
                {
                    "op": op,
                    "backend": backend,
                    "n": n,
                    "d": ctx.d,
                    **res,
                    "status": "worker-timed",
                    "note": "one call in the worker (not re-timed)",
                }
            )
            pytest.skip(f"{backend} N={n}: {res['call_s']:.1f} s for one call (worker)")
    elif op in _backends.SINKHORN_OPS:
        ctx.reference(n)
    if op == "train":
        case = _backends.build_train(backend, ctx.dev)
        case.run()  # one untimed step: AdamW's state exists before the measured step
        x = y = None
    else:
        small = cfg.make_clouds(64, ctx.d, cfg.SEED + 1, ctx.dev)
        _backends.build(op, backend, *small).run()  # warm-up: imports, first-call work
        x, y = ctx.clouds(n)
        case = _backends.build(op, backend, x, y)
    first: dict[str, Any] = {}
    mem = PeakMemory(ctx.dev)

    def timed() -> Any:
        if first:
            return case.run()
        with _backends.count_iterations(first), mem:
            out = case.run()
        first["out"] = out
        return out

    rounds, warmup = _rounds(op, n, None if res is None else res["call_s"])
    trim()
    try:
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    except torch.OutOfMemoryError as e:
        ctx.not_run.append(
            {
                "op": op,
                "backend": backend,
                "n": n,
                "d": ctx.d,
                "status": "oom",
                "note": str(e).splitlines()[0][:200],
            }
        )
        pytest.skip(f"{backend} N={n}: out of memory")
    extra: dict[str, Any] = {
        "op": op,
        "backend": backend,
        "n": n,
        "d": ctx.d,
        "device": cfg.device_label(ctx.dev),
        "peer": not _backends.is_ours(backend),
    }
    if res is not None:  # guarded peer: memory and accuracy from its worker run
        extra.update(
            {
                k: res.get(k)
                for k in ("rel_err", "grad_rel_err", "peak_mb", "iters", "sweeps", "value")
            }
        )
        extra["mem_where"] = "worker"
    else:
        value, grads = first["out"]
        extra["peak_mb"] = mem.peak_mb
        extra["iters"] = first.get("iters", case.info.get("iters"))
        extra["sweeps"] = first.get("sweeps")
        if op != "train":
            extra.update(_backends.accuracy(op, x, y, value, grads, cfg.SEED))
        else:
            extra["value"] = float(value)
    extra.update({k: v for k, v in case.info.items() if k in ("model", "batch")})
    benchmark.extra_info.update(extra)


def params(op: str) -> list[Any]:
    """(backend, n) parameters of ``op``, N-major so that timeouts cascade to larger N."""
    return [
        pytest.param(backend, n, id=f"{backend}-N{n}")
        for n in cfg.sizes()
        for backend in _backends.OPS[op]
    ]
