"""A persistent worker process that measures one case at a time: peak memory, accuracy, time.

Running each case in a separate process keeps the peak-memory figure clean and lets the parent
stop a peer that runs past its time bound (POT's log-domain Sinkhorn took 352 s at N = 4096)
without waiting for it: the parent kills the worker and starts a fresh one. The worker serves
JSON requests, one per line on stdin, and answers one JSON line each.

Peak memory:

* CPU: the process's peak resident set size during the call, from ``VmHWM`` in
  ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs`` ("5"), minus
  ``VmRSS`` just before the call (inputs excluded). glibc's mmap threshold is pinned at 64 KiB
  (``mallopt``) so that freed tensors go back to the OS and every call starts from live memory.
  Where clear_refs is not writable the figure falls back to the growth of ``ru_maxrss``.
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the call.

Accuracy: the case's value (and gradient, for the backward cases) against the float64 reference
of :mod:`benchmarks._reference` (ε-scaled Sinkhorn + Newton, independent of ``cma_kernels``);
the gradient error is estimated from a 32-direction sketch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CPU_MEM_METHOD = (
    "peak RSS of a worker process during one call (VmHWM reset via /proc/self/clear_refs) "
    "minus its RSS before the call; glibc mmap threshold pinned at 64 KiB"
)
CUDA_MEM_METHOD = "torch.cuda.max_memory_allocated during one call minus memory allocated before"


# ------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _pin_malloc() -> None:
    """Large frees go back to the OS at once (M_MMAP_THRESHOLD = 64 KiB, M_TRIM_THRESHOLD)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also disables its dynamic growth)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _PeakMemory:
    """Context manager measuring the peak extra memory (MiB) of the enclosed call."""

    def __init__(self, dev: str) -> None:
        self.cuda = dev.startswith("cuda")
        self.peak_mb = float("nan")
        self.method = CUDA_MEM_METHOD if self.cuda else CPU_MEM_METHOD

    def __enter__(self) -> _PeakMemory:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _trim()
        self._base = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "growth of ru_maxrss of a worker process during one call (lower bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._hwm:
            self.peak_mb = max(0, _status_kb("VmHWM") - self._base) / 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mb = max(0, peak - self._base) / 1024


def _patch_iteration_counter(info: dict[str, Any]) -> None:
    """Record the iterations of our solver at the final ε (x↔y problem) into ``info``."""
    from cma_kernels import sinkhorn

    original = getattr(sinkhorn._solve_pair, "__wrapped_original__", sinkhorn._solve_pair)

    def counted(*args: Any, **kwargs: Any) -> Any:
        f, g, iters = original(*args, **kwargs)
        info["iters"] = iters
        return f, g, iters

    counted.__wrapped_original__ = original  # type: ignore[attr-defined]
    sinkhorn._solve_pair = counted


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


#: Largest N for which the dense float64 reference is computed (O(N²) memory).
REF_MAX_N = 16384


def _ref_entry(n: int, d: int, seed: int, dev: str, compute: bool) -> dict[str, Any] | None:
    """The float64 reference of the benchmark clouds: stored, cached, or computed and cached."""
    from . import _config as cfg, _reference

    x, y = cfg.make_clouds(n, d, seed, dev)
    name = _reference.key(n, d, seed, cfg.BLUR, cfg.SCALING)
    cache = cfg.CACHE_DIR / "reference_values.json"
    for path, source in ((_reference.STORED, "stored"), (cache, "cached")):
        entry = _reference.lookup(path, name, x, y)
        if entry is not None:
            return {**entry, "source": source}
    if not compute or n > REF_MAX_N:
        return None
    entry = _reference.compute_entry(x, y, blur=cfg.BLUR, scaling=cfg.SCALING)
    _reference.store(cache, name, entry)
    return {**entry, "source": "computed"}


def compute_reference(req: dict[str, Any]) -> dict[str, Any]:
    """Make sure the float64 reference of size ``req["n"]`` exists (see :mod:`._reference`).

    With λ_C = λ_D = 1 the distribution-gap loss equals S_ε(x, y) exactly (SPEC §2), so one
    reference serves the ``sinkhorn``, ``sinkhorn_grad`` and ``gap_loss`` cases.
    """
    entry = _ref_entry(req["n"], req["d"], req["seed"], req["device"], compute=True)
    if entry is None:
        return {"status": "ok", "source": "none", "note": f"no reference beyond N={REF_MAX_N}"}
    return {"status": "ok", "source": entry["source"], "value": entry["value"],
            "seconds": entry["seconds"]}


def _accuracy(op: str, x: Any, y: Any, value: Any, grads: Any, req: dict[str, Any]) -> dict:
    """Relative errors of one output against float64."""
    from cma_kernels import reference

    from . import _reference

    if op == "sqdist":
        x64, y64 = x.double(), y.double()
        worst, scale = 0.0, 0.0
        for s in range(0, x.shape[0], 1024):
            exact = reference.sqdist(x64[s : s + 1024], y64)
            worst = max(worst, float((value[s : s + 1024].double() - exact).abs().max()))
            scale = max(scale, float(exact.abs().max()))
        return {"rel_err": worst / scale}
    out: dict[str, Any] = {"value": float(value)}
    if op == "centroid":
        exact = float((x.double().mean(0) - y.double().mean(0)).pow(2).sum())
        out["rel_err"] = _rel(float(value), exact)
        return out
    if op == "train":
        return out
    entry = _ref_entry(req["n"], req["d"], req["seed"], req["device"], compute=False)
    if entry is None:
        return out
    out["rel_err"] = _rel(float(value), entry["value"])
    if grads is not None:
        out["grad_rel_err"] = _reference.grad_rel_err(entry, grads[0], grads[1])
    return out


def measure(req: dict[str, Any]) -> dict[str, Any]:
    """One call of case ``req["op"]`` × ``req["backend"]``: peak memory, time, accuracy."""
    import torch

    from . import _backends, _config as cfg

    op, backend, dev = req["op"], req["backend"], req["device"]
    info: dict[str, Any] = {}
    if backend.startswith("cma"):
        _patch_iteration_counter(info)
    if op == "train":
        case = _backends.build_train(backend, dev, req["seed"])
        case.run()  # warm-up (first-call allocations of AdamW state are not a per-step cost)
        x = y = None
    else:
        small = cfg.make_clouds(64, req["d"], req["seed"] + 1, dev)
        _backends.build(op, backend, *small).run()  # warm-up: imports, kernel compilation
        x, y = cfg.make_clouds(req["n"], req["d"], req["seed"], dev)
        case = _backends.build(op, backend, x, y)
    info.clear()
    try:
        with _PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            value, grads = case.run()
            seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        return {"status": "oom", "note": str(e).splitlines()[0][:200]}
    result: dict[str, Any] = {
        "status": "ok", "call_s": seconds, "peak_mb": mem.peak_mb, "mem_method": mem.method,
    }
    result.update(_accuracy(op, x, y, value, grads, req))
    result.update({k: v for k, v in {**case.info, **info}.items() if k == "iters"})
    return result


def serve() -> None:
    """Answer JSON requests from stdin, one per line, on the original stdout."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    _pin_malloc()
    import torch  # noqa: F401  (import once, before the first request)

    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["op"] == "ping":
                result = {"status": "ok"}
            elif req["op"] == "reference":
                result = compute_reference(req)
            else:
                result = measure(req)
        except Exception as e:  # reported, the worker stays up
            result = {"status": "error", "note": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(result) + "\n")


# ------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------


class WorkerClient:
    """Starts the worker on demand; :meth:`request` bounds each call by a timeout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker"], cwd=root, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's answer, or ``{"status": "timeout"}`` after ``timeout`` seconds.

        The bound covers the worker's warm-up and setup too (a fresh worker first imports
        torch; that start-up is not counted).
        """
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
            self.proc.stdin.write(json.dumps({"op": "ping"}) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            self.proc.stdout.readline()  # type: ignore[union-attr]  # waits for the imports
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            return {"status": "timeout", "note": f"one call took more than {timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            return {"status": "error", "note": "the worker died (out of memory?)"}
        return json.loads(line)

    def close(self) -> None:
        """Stop the worker (it is killed if it is busy)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    serve()
