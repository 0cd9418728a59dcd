"""A persistent worker process for the cases that must be bounded in time.

POT's solvers iterate at the final ε without ε-scaling until their stopping rule holds (its
log-domain Sinkhorn took 352 s at N = 4096 here). Such a peer is first run once in this worker:
if it does not answer within ``CMA_BENCH_PEER_TIMEOUT`` seconds the parent kills the worker,
records a timeout and starts a fresh worker for the next request, instead of waiting. The
worker also computes missing float64 references (:mod:`benchmarks._reference`). It serves JSON
requests, one per line on stdin, and answers one JSON line each on its original stdout.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def compute_reference(req: dict[str, Any]) -> dict[str, Any]:
    """Make sure the float64 reference of size ``req["n"]`` exists (stored, cached, computed)."""
    from . import _reference

    entry = _reference.reference_entry(req["n"], req["d"], req["seed"], req["device"], compute=True)
    if entry is None:
        return {
            "status": "ok",
            "source": "none",
            "note": f"no float64 reference beyond N = {_reference.REF_MAX_N}",
        }
    return {
        "status": "ok",
        "source": entry["source"],
        "value": entry["value"],
        "seconds": entry["seconds"],
    }


def measure(req: dict[str, Any]) -> dict[str, Any]:
    """One call of case ``req["op"]`` × ``req["backend"]``: time, peak memory, accuracy."""
    import torch

    from . import _backends
    from . import _config as cfg
    from ._memory import PeakMemory

    op, backend, dev = req["op"], req["backend"], req["device"]
    small = cfg.make_clouds(64, req["d"], req["seed"] + 1, dev)
    _backends.build(op, backend, *small).run()  # warm-up: imports, first-call work
    x, y = cfg.make_clouds(req["n"], req["d"], req["seed"], dev)
    case = _backends.build(op, backend, x, y)
    try:
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            value, grads = case.run()
            seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError as e:
        return {"status": "oom", "note": str(e).splitlines()[0][:200]}
    result: dict[str, Any] = {
        "status": "ok",
        "call_s": seconds,
        "peak_mb": mem.peak_mb,
        "mem_method": mem.method,
        **case.info,
    }
    result.update(_backends.accuracy(op, x, y, value, grads, req["seed"]))
    return result


def serve() -> None:
    """Answer JSON requests from stdin, one per line, on the original stdout."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    import torch  # import once, before the first request

    from . import _config as cfg
    from ._memory import pin_malloc

    pin_malloc()
    if cfg.threads():
        torch.set_num_threads(cfg.threads())

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


class WorkerClient:
    """Starts the worker on demand; :meth:`request` bounds each call by a timeout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker"],
            cwd=root,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"op": "ping"}) + "\n")  # wait for the imports: a
        proc.stdin.flush()  # fresh worker's start-up is not counted in any bound
        proc.stdout.readline()
        return proc

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's answer, or ``{"status": "timeout"}`` after ``timeout`` seconds.

        The bound covers the request's warm-up call at N = 64 and data generation too.
        """
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
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
