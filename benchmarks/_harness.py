"""Benchmark harness: the session context (worker, cache, JSON extras) and the case runner.

Every case is first run once in a separate worker process (:mod:`benchmarks._worker`) that
records its peak memory, its accuracy against float64 and the time of that one call; a peer
that runs past ``CMA_BENCH_PEER_TIMEOUT`` seconds there is recorded as a timeout (and skipped
at larger N) instead of being waited for. Cases that pass are then timed in-process by
pytest-benchmark. Worker results are cached in ``benchmarks/.cache`` (keyed by the source of
``cma_kernels``, ``cma.losses``, the benchmark code and the library versions), so a rerun only
re-times. The JSON written by ``--benchmark-json`` gets a top-level ``"cma"`` entry with the
settings, the memory method and the cases that did not run (timeouts, OOM, errors).
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

from . import _backends, _config as cfg, _worker

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
    """Hash of everything a cached measurement depends on (code, versions, settings)."""
    h = hashlib.sha256()
    files = sorted((_ROOT / "cma_kernels").rglob("*.py"))
    files += [_ROOT / "cma" / "losses.py", *sorted((_ROOT / "cma" / "models").rglob("*"))]
    files += [Path(__file__).parent / f for f in (
        "_backends.py", "_config.py", "_worker.py", "_reference.py", "reference_values.json",
    )]
    for f in files:
        if f.is_file():
            h.update(f.relative_to(_ROOT).as_posix().encode())
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
        self.mem_method = _worker.CUDA_MEM_METHOD if self.dev.startswith("cuda") else (
            _worker.CPU_MEM_METHOD
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
        key = f"{self.dev}|{op}|{backend}|{n}|{self.d}|{cfg.SEED}|{bound:g}|{self.salt}"
        res = self.cache.get(key)
        if res is None:
            req = {"op": op, "backend": backend, "n": n, "d": self.d, "seed": cfg.SEED,
                   "device": self.dev}
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
            "device": self.dev,
            "device_name": _device_name(self.dev),
            "d": self.d,
            "sizes": list(cfg.sizes()),
            "settings": {
                "blur": cfg.BLUR, "eps": cfg.BLUR**2, "scaling": cfg.SCALING, "tol": cfg.TOL,
                "max_iter": cfg.MAX_ITER, "pot_stop_thr": cfg.POT_STOP_THR,
                "pot_max_iter": cfg.POT_MAX_ITER, "pot_lazy_batch": cfg.POT_LAZY_BATCH,
                "peer_timeout_s": cfg.peer_timeout(), "train": list(cfg.train_setup(self.dev)),
            },
            "mem_method": self.mem_method,
            "versions": _versions(),
            "load_avg_start": list(self.load_start),
            "load_avg_end": list(os.getloadavg()),
            "wall_s": time.time() - self.started,
            "not_run": self.not_run,
            "references": {str(n): r for n, r in self._refs.items()},
        }


def _rounds(call_s: float) -> tuple[int, int]:
    """(rounds, warm-up rounds) so that one case takes about 3 s of timing (≥ 1 round)."""
    if call_s >= 3.0:
        return 1, 0
    rounds = int(min(20, max(3, 3.0 / max(call_s, 1e-4))))
    return rounds, 1


def run_case(benchmark: Any, ctx: BenchContext, op: str, backend: str, n: int) -> None:
    """Measure (worker), then time (pytest-benchmark) one case; skip with the reason if needed."""
    benchmark.group = f"{op} N={n}"
    reason = _backends.unavailable(op, backend, ctx.dev)
    if reason:
        pytest.skip(reason)
    res = ctx.measure(op, backend, n)
    if res["status"] != "ok":
        if _backends.is_ours(backend) and res["status"] == "error":
            pytest.fail(f"{backend} failed: {res.get('note')}")
        ctx.not_run.append({"op": op, "backend": backend, "n": n, "d": ctx.d, **res})
        pytest.skip(f"{backend} N={n}: {res['status']} ({res.get('note', '')})")
    if op == "train":
        case = _backends.build_train(backend, ctx.dev)
    else:
        case = _backends.build(op, backend, *ctx.clouds(n))
    benchmark.extra_info.update({
        "op": op, "backend": backend, "n": n, "d": ctx.d, "device": ctx.dev,
        "peer": not _backends.is_ours(backend),
        **{k: res.get(k) for k in ("rel_err", "grad_rel_err", "peak_mb", "iters", "call_s",
                                   "value")},
        **({k: v for k, v in case.info.items() if k in ("model", "batch")}),
    })
    rounds, warmup = _rounds(res["call_s"])
    if op == "train":
        rounds, warmup = max(rounds, 7), 1
    benchmark.pedantic(case.run, rounds=rounds, warmup_rounds=warmup, iterations=1)


def params(op: str) -> list[Any]:
    """(backend, n) parameters of ``op``, N-major so that timeouts cascade to larger N."""
    return [
        pytest.param(backend, n, id=f"{backend}-N{n}")
        for n in cfg.sizes()
        for backend in _backends.OPS[op]
    ]
