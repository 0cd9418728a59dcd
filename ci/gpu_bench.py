"""GPU checks and timings of the fused Triton Sinkhorn path (run by ci/gpu_check.sh).

Sections, each writing into ``--out`` as soon as it finishes (partial results survive a timeout):

1. ``sweep``: every GPU block config of the three tuned kernels (soft-min, barycenter, sqdist),
   launched alone on awkward shapes (N=300, M=517, d=512 and d=40) against the float64
   reference, for each dot precision (ieee must match to fp32 accuracy; tf32x3/tf32 errors are
   reported).
2. ``fused``: ``distribution_gap_loss(x, y)`` on CUDA tensors with ``backend="auto"`` at
   N = M = 65536, d = 64: checks the Triton cost operator ran and the peak memory stays below
   1/16 of one N×M fp32 matrix (the O(N·d) tensors are 16 MiB each, the matrix 16 GiB).
3. ``bench``: fwd+bwd of ``sinkhorn_divergence`` (d = 512, blur 0.05, debiased) at
   N = M = 4096, 16384, 65536 for ours (tol stop; and ``max_iter=1``, the GeomLoss-like
   schedule), the reference tensorized path, GeomLoss (tensorized) and flash-sinkhorn when they
   import; wall time (best of reps, after a warm-up that includes compilation/autotuning), peak
   memory above the inputs, soft-min passes, and value/gradient agreement with the reference.
   A time budget skips runs whose extrapolated cost would not fit.

``--smoke`` runs every section on tiny CPU problems under the Triton interpreter (no timings
worth reading) so the script itself can be checked without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

Result = tuple[float, Tensor, Tensor]


def log(*args: object) -> None:
    print(*args, flush=True)


def make_clouds(n: int, d: int, device: str, seed: int) -> tuple[Tensor, Tensor]:
    """Two unit-norm CLIP-like clouds with a modality gap (different mean directions)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shift = torch.zeros(d)
    shift[0] = 0.35 * math.sqrt(d)
    x = torch.randn(n, d, generator=g) + shift
    y = torch.randn(n, d, generator=g) - shift.roll(1)
    x = x / x.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    return x.to(device), y.to(device)


@contextlib.contextmanager
def count_passes() -> Iterator[dict[str, int]]:
    """Counts TritonCost soft-min and barycenter calls (each is one streaming pass)."""
    from cma_kernels.triton.cost import TritonCost

    counts = {"softmin": 0, "barycenter": 0}
    saved = {}
    for name, key in (
        ("softmin_rows", "softmin"),
        ("softmin_cols", "softmin"),
        ("barycenter_rows", "barycenter"),
        ("barycenter_cols", "barycenter"),
    ):
        orig = getattr(TritonCost, name)
        saved[name] = orig

        def wrapped(self: Any, *a: Any, _orig: Any = orig, _key: str = key, **k: Any) -> Tensor:
            counts[_key] += 1
            return _orig(self, *a, **k)

        setattr(TritonCost, name, wrapped)
    try:
        yield counts
    finally:
        for name, orig in saved.items():
            setattr(TritonCost, name, orig)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, y0: Tensor) -> Result:
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    value = fn(x, y)
    value.backward()
    assert x.grad is not None and y.grad is not None
    return float(value.detach()), x.grad, y.grad


def measure(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, reps: int, device: str
) -> tuple[dict[str, Any], Result]:
    """Warm-up (compile/autotune) then ``reps`` timed fwd+bwd runs; peak memory above inputs."""
    sync(device)
    t0 = time.perf_counter()
    res = run_once(fn, x, y)
    sync(device)
    first = time.perf_counter() - t0
    times, peaks = [], []
    with count_passes() as counts:
        for _ in range(reps):
            res = None  # type: ignore[assignment]  # free the previous gradients first
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            sync(device)
            t0 = time.perf_counter()
            res = run_once(fn, x, y)
            sync(device)
            times.append(time.perf_counter() - t0)
            if device == "cuda":
                peaks.append(torch.cuda.max_memory_allocated() - base)
    out = {
        "seconds": min(times) if times else first,
        "all_seconds": times,
        "first_seconds": first,
        "peak_bytes": max(peaks) if peaks else None,
        "softmin_passes": counts["softmin"] // max(reps, 1),
        "barycenter_passes": counts["barycenter"] // max(reps, 1),
        "value": res[0],
    }
    return out, res


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------- sections


def sweep(device: str, smoke: bool) -> dict[str, Any]:
    """Each tuned config alone vs the float64 reference, on shapes that are not block multiples.

    Every config runs with exact fp32 products (``ieee``, pass/fail at 1e-4); the first config
    of each kernel also runs at d = 40 and with tf32x3 / tf32 / fp16 / bf16 operands (errors
    reported only). A last job writes a 47000 × 47000 sqdist (past 2³¹ elements: int64 offsets).
    """
    from cma_kernels import reference
    from cma_kernels import triton as tk
    from cma_kernels.triton import _config

    lists = ("SOFTMIN_CONFIGS", "BARYCENTER_CONFIGS", "SQDIST_CONFIGS")
    saved = {name: getattr(_config, name) for name in lists}
    jobs: list[tuple[tuple[int, int, int], str, str, int]] = []
    for name in lists:
        if smoke:
            jobs.append(((37, 53, 24), "ieee", name, 0))
            continue
        jobs += [((300, 517, 512), "ieee", name, i) for i in range(len(saved[name]))]
        jobs.append(((300, 517, 40), "ieee", name, 0))
        jobs += [((300, 517, 512), p, name, 0) for p in ("tf32x3", "tf32", "fp16", "bf16")]
    refs: dict[tuple[int, int, int], dict[str, Any]] = {}

    def reference_data(shape: tuple[int, int, int]) -> dict[str, Any]:
        n, m, d = shape
        x, y = make_clouds(max(n, m), d, device, 1)
        x, y = x[:n].contiguous(), y[:m].contiguous()
        shift = (x.mean(0) - y.mean(0)).contiguous()
        rc = reference.TensorizedCost(x.double(), y.double(), shift.double())
        data: dict[str, Any] = {"x": x, "y": y, "shift": shift}
        data["sqdist"] = reference.sqdist(x.double(), y.double(), x.mean(0).double(), None)
        for eps in (0.25, 0.0025):
            ha = torch.full((n,), -math.log(n), device=device, dtype=torch.float64)
            hb = torch.full((m,), -math.log(m), device=device, dtype=torch.float64)
            hb = hb + rc.softmin_cols(ha, eps) / eps  # one Sinkhorn step: realistic potentials
            ha = ha + rc.softmin_rows(hb, eps) / eps
            data[eps] = {
                "ha": ha.float(),
                "hb": hb.float(),
                "f": rc.softmin_rows(hb.float().double(), eps),
                "g": rc.softmin_cols(ha.float().double(), eps),
                "br": rc.barycenter_rows(hb.float().double(), eps),
                "bc": rc.barycenter_cols(ha.float().double(), eps),
            }
        return data

    out: dict[str, Any] = {}
    failures = 0
    old_env = {k: os.environ.get(k) for k in ("CMA_TRITON_AUTOTUNE", "CMA_TRITON_DOT_PRECISION")}
    os.environ["CMA_TRITON_AUTOTUNE"] = "0"
    try:
        for shape, prec, name, i in jobs:
            if shape not in refs:
                refs[shape] = reference_data(shape)
            data = refs[shape]
            x, y, shift = data["x"], data["y"], data["shift"]
            os.environ["CMA_TRITON_DOT_PRECISION"] = prec
            setattr(_config, name, [saved[name][i]])
            try:
                tc = tk.make_cost(x, y, shift)
                errs = []
                for eps in (0.25, 0.0025):
                    r = data[eps]
                    if name == "SOFTMIN_CONFIGS":
                        errs.append(float((tc.softmin_rows(r["hb"], eps) - r["f"]).abs().max()))
                        errs.append(float((tc.softmin_cols(r["ha"], eps) - r["g"]).abs().max()))
                    elif name == "BARYCENTER_CONFIGS":
                        errs.append(rel_err(tc.barycenter_rows(r["hb"], eps), r["br"]))
                        errs.append(rel_err(tc.barycenter_cols(r["ha"], eps), r["bc"]))
                if name == "SQDIST_CONFIGS":
                    errs.append(float((tk.sqdist(x, y, x.mean(0)) - data["sqdist"]).abs().max()))
                err = max(errs)
                ok = err <= 1e-4 or prec != "ieee"
                entry = {"max_err": err, "ok": ok}
            except Exception:
                ok, entry = False, {"error": traceback.format_exc()[-1500:]}
            finally:
                setattr(_config, name, saved[name])
            failures += not ok
            key = f"{name}[{i}] n,m,d={shape} {prec}"
            out[key] = {**entry, "config": str(saved[name][i])}
            log(f"sweep {key}: {entry.get('max_err', 'ERROR')} {'ok' if ok else 'FAIL'}")
    finally:
        for name, value in saved.items():
            setattr(_config, name, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not smoke:  # int64 offsets: an N×M output past 2³¹ elements (N = M = 47000, 8.2 GiB)
        try:
            x, y = make_clouds(47000, 16, device, 4)
            c = tk.sqdist(x, y)
            tail = reference.sqdist(x[-7:].double(), y[-5:].double())
            err = float((c[-7:, -5:].double() - tail).abs().max())
            ok = c.shape == (47000, 47000) and err <= 1e-4
            out["sqdist_int64_offsets"] = {"max_err_last_tile": err, "ok": ok}
            del c
            torch.cuda.empty_cache()
        except Exception:
            ok, out["sqdist_int64_offsets"] = False, {"error": traceback.format_exc()[-1500:]}
        failures += not ok
        log("sweep int64", out["sqdist_int64_offsets"])
    out["failures"] = failures
    return out


def fused_check(device: str, smoke: bool) -> dict[str, Any]:
    """distribution_gap_loss on CUDA: Triton cost operator used, no N×M-sized peak memory."""
    import cma_kernels

    # d = 64 keeps the O(N·d) tensors (16 MiB each) far from one N×M fp32 matrix (16 GiB)
    n, d = (64, 16) if smoke else (65536, 64)
    x, y = make_clouds(n, d, device, 2)
    backend = "triton" if smoke else "auto"
    fn = lambda a, b: cma_kernels.distribution_gap_loss(a, b, backend=backend)  # noqa: E731
    stats, _ = measure(fn, x, y, reps=1, device=device)
    nm_bytes = n * n * 4
    out = {
        "n": n,
        "d": d,
        "softmin_passes": stats["softmin_passes"],
        "barycenter_passes": stats["barycenter_passes"],
        "peak_bytes": stats["peak_bytes"],
        "nm_fp32_bytes": nm_bytes,
        "seconds": stats["seconds"],
    }
    out["ok"] = stats["softmin_passes"] > 0 and (
        stats["peak_bytes"] is None or stats["peak_bytes"] < nm_bytes / 16
    )
    log("fused", json.dumps(out))
    return out


def peers(blur: float) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """The comparison implementations that import here (missing ones are skipped)."""
    import cma_kernels

    methods: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "triton": lambda x, y: cma_kernels.sinkhorn_divergence(x, y, blur=blur, backend="triton"),
        "triton_max_iter1": lambda x, y: cma_kernels.sinkhorn_divergence(
            x, y, blur=blur, backend="triton", max_iter=1
        ),
        "reference_tensorized": lambda x, y: cma_kernels.sinkhorn_divergence(
            x, y, blur=blur, backend="reference", strategy="tensorized"
        ),
    }
    try:
        from geomloss import SamplesLoss

        # GeomLoss uses C = ‖x − y‖²/2 and ε = blur²: S_ours(blur) = 2·S_geomloss(blur/√2).
        gl = SamplesLoss(
            "sinkhorn",
            p=2,
            blur=blur / math.sqrt(2),
            scaling=0.5,
            debias=True,
            backend="tensorized",
        )
        methods["geomloss_tensorized"] = lambda x, y: 2.0 * gl(x, y)
    except Exception as exc:
        log(f"geomloss unavailable: {exc!r}")
    try:
        import flash_sinkhorn

        fs = flash_sinkhorn.SamplesLoss(
            loss="sinkhorn", blur=blur, scaling=0.5, debias=True, half_cost=False
        )
        methods["flash_sinkhorn"] = lambda x, y: fs(x, y)
    except Exception as exc:
        log(f"flash-sinkhorn unavailable: {exc!r}")
    return methods


def bench(
    device: str,
    sizes: list[int],
    d: int,
    blur: float,
    budget_s: float,
    smoke: bool,
    sink: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Time every method at every size (reference first, so the others compare against it)."""
    methods = peers(blur)
    if device != "cuda":
        methods.pop("flash_sinkhorn", None)
    # priority order (the budget may cut the tail at the largest size): the two targets first
    variants: list[tuple[str, str | None]] = [
        (name, None)
        for name in ("reference_tensorized", "triton", "triton_max_iter1", "flash_sinkhorn")
        if name in methods
    ]
    if not smoke:  # ours again with plain TF32 (flash-sinkhorn's default) and fp16 operands
        variants += [("triton", "tf32"), ("triton", "fp16")]
    variants += [(name, None) for name in methods if (name, None) not in variants]
    results: dict[str, Any] = {}
    start = time.perf_counter()
    last_time: dict[str, tuple[int, float]] = {}
    for n in sizes:
        x, y = make_clouds(n, d, device, 3)
        ref: Result | None = None
        for name, prec in variants:
            label = name if prec is None else f"{name}_{prec}"
            key = f"{label}@{n}"
            left = budget_s - (time.perf_counter() - start)
            reps = 1 if n >= 65536 else 2
            if label in last_time:
                n0, t0 = last_time[label]
                guess = t0 * (n / n0) ** 2 * (reps + 1.3)  # warm-up (+ autotune) and reps
                if guess > left:
                    results[key] = {"skipped": f"~{guess:.0f}s extrapolated > {left:.0f}s left"}
                    log(key, results[key])
                    continue
            if prec is not None:
                os.environ["CMA_TRITON_DOT_PRECISION"] = prec
            try:
                stats, res = measure(methods[name], x, y, reps, device)
                last_time[label] = (n, stats["seconds"])
                if name == "reference_tensorized":
                    ref = res
                elif ref is not None and name == "triton":  # same solver settings
                    stats["value_rel_err_vs_reference"] = abs(res[0] - ref[0]) / abs(ref[0])
                    stats["grad_rel_err_vs_reference"] = max(
                        rel_err(res[1], ref[1]), rel_err(res[2], ref[2])
                    )
                results[key] = stats
                del res
            except torch.cuda.OutOfMemoryError:
                results[key] = {"skipped": "out of memory"}
            except Exception as exc:
                results[key] = {"error": repr(exc), "trace": traceback.format_exc()[-2000:]}
            finally:
                os.environ.pop("CMA_TRITON_DOT_PRECISION", None)
                if device == "cuda":
                    torch.cuda.empty_cache()
            log(key, {k: v for k, v in results[key].items() if k != "trace"})
            sink(results)
        del ref, x, y
    return results


def summary_table(results: dict[str, Any], sizes: list[int]) -> str:
    labels = sorted({k.split("@")[0] for k in results})
    lines = [
        "| method | " + " | ".join(f"N={n}: s / peak MiB / passes" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for label in labels:
        cells = []
        for n in sizes:
            e = results.get(f"{label}@{n}")
            if e is None:
                cells.append("-")
            elif "seconds" in e:
                mib = "-" if e.get("peak_bytes") is None else f"{e['peak_bytes'] / 2**20:.0f}"
                cells.append(f"{e['seconds']:.3f} / {mib} / {e.get('softmin_passes', '-')}")
            else:
                cells.append(str(e.get("skipped", e.get("error", "?")))[:40])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = []
    for n in sizes:
        ours, ref = results.get(f"triton@{n}", {}), results.get(f"reference_tensorized@{n}", {})
        fs = results.get(f"flash_sinkhorn@{n}", {})
        sched = results.get(f"triton_max_iter1@{n}", {})
        if "seconds" in ours and "seconds" in ref:
            ratios.append(f"N={n}: reference/triton = {ref['seconds'] / ours['seconds']:.2f}x")
        if "seconds" in sched and "seconds" in fs:
            ratios.append(
                f"N={n}: flash_sinkhorn/triton_max_iter1 = {fs['seconds'] / sched['seconds']:.2f}x"
            )
    return "\n".join([*lines, "", *ratios]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--sizes", default="4096,16384,65536")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--blur", type=float, default=0.05)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--sections", default="sweep,fused,bench")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run under the interpreter")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        args.sizes, args.dim, args.budget_s, args.blur = "48,80", 16, 120.0, 0.5
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log("no CUDA device")
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (interpreter)",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except Exception:
        report["triton"] = None

    def write(section: str, value: Any) -> None:
        report[section] = value
        (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=str))

    sections = args.sections.split(",")
    status = 0
    if "sweep" in sections:
        try:
            write("sweep", sweep(device, args.smoke))
            status |= report["sweep"]["failures"] > 0
        except Exception:
            write("sweep", {"error": traceback.format_exc()})
            status = 1
    if "fused" in sections:
        try:
            write("fused", fused_check(device, args.smoke))
            status |= not report["fused"]["ok"]
        except Exception:
            write("fused", {"error": traceback.format_exc()})
            status = 1
    if "bench" in sections:
        results = bench(
            device,
            sizes,
            args.dim,
            args.blur,
            args.budget_s,
            args.smoke,
            lambda r: write("bench", r),
        )
        write("bench", results)
        table = summary_table(results, sizes)
        (out_dir / "bench.md").write_text(table)
        log(table)
    log(f"gpu_bench status {status}")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
