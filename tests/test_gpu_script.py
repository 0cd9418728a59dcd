"""The one GPU script (``bash ci/gpu.sh`` → ``python -m benchmarks.gpu``) in its CPU dry run.

The dry run is the same script end to end at tiny sizes (Triton under the interpreter, our
reference path in the place of the Triton backend in the timings, cma-micro for the training
step), so that it cannot fail for a trivial reason on the day a GPU is lent. The helpers that
the dry run cannot reach (autotuner cache, time limits, the budget) are tested directly.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import triton
import triton.language as tl

from benchmarks import gpu
from cma_kernels.cost import CostOperator
from cma_kernels.triton import _config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """(gpu.json, gpu.md, folder) of one ``bash ci/gpu.sh --dry-run``."""
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "ci/gpu.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    return report, (out / "gpu.md").read_text(), out


def test_dry_run_writes_every_section(dry_run: tuple[dict[str, Any], str, Path]) -> None:
    report, md, out = dry_run
    assert report["dry_run"] is True
    assert set(report["sections"]) == set(gpu.SECTIONS)
    for name, state in report["sections"].items():
        assert state["status"] not in ("error", "failed"), (name, state)
        assert name in report
    assert {"gpu.json", "gpu.md", "gpu.log", "tests.log"} <= {p.name for p in out.iterdir()}
    for heading in (
        "## Kernel tests",
        "## sinkhorn_divergence",
        "## Training step",
        "## Autotuned configs",
        "## Every config vs float64",
    ):
        assert heading in md
    assert 0 < report["elapsed_s"] < report["budget_s"]


def test_dry_run_kernel_tests_ran(dry_run: tuple[dict[str, Any], str, Path]) -> None:
    tests = dry_run[0]["tests"]
    assert tests["status"] == "passed"
    assert tests["passed"] == 2 and tests["failed"] == tests["errors"] == 0


def test_dry_run_sinkhorn_cases(dry_run: tuple[dict[str, Any], str, Path]) -> None:
    sec = dry_run[0]["sinkhorn"]
    ours = sec["ours"]
    runs = {(r["method"], r["n"], r["dtype"], r["mode"]): r for r in sec["runs"]}
    counters = "passes" in inspect.getsource(CostOperator)
    for n in sec["sizes"]:
        assert sec["references"][str(n)]["status"] == "ok"
        for dtype in ("float32", "bfloat16"):
            for mode in ("fwd", "fwd+bwd"):
                r = runs[(ours, n, dtype, mode)]
                assert r["status"] == "ok", r
                assert r["seconds"] > 0 and r["value"] > 0
                assert r["rel_err"] < 0.05  # tol = 0.1 stop: about 1e-2 here
                if mode == "fwd+bwd":
                    assert r["grad_rel_err"] < 0.1
                if counters:
                    assert r["passes"] > 0 and r["cost_entries"] >= r["passes"] * n * n
                else:
                    assert r["passes"] is None
            if counters:  # the backward adds barycenter passes
                fwd, both = runs[(ours, n, dtype, "fwd")], runs[(ours, n, dtype, "fwd+bwd")]
                assert both["passes"] > fwd["passes"]
        # the tensorized reference solves the same problem as the chunked one
        tens = runs[("cma-tensorized", n, "float32", "fwd+bwd")]
        assert tens["status"] == "ok" and tens["rel_diff_vs_ours"] < 1e-5
    assert sec["unavailable"]["flash"].startswith("flash runs on CUDA only")
    for r in sec["runs"]:
        assert r["status"] == "ok", r
        assert math.isfinite(r["value"])


def test_dry_run_training_and_configs(dry_run: tuple[dict[str, Any], str, Path]) -> None:
    report = dry_run[0]
    train = report["training"]
    assert train["model"] == "cma-micro" and train["status"] == "ok"
    for backend in ("clip", "cma"):
        assert train[backend]["median_s"] > 0 and math.isfinite(train[backend]["loss"])
    assert train["cma"]["loss"] > train["clip"]["loss"] - 1e-6  # CMALoss adds β·L_align ≥ 0
    assert math.isfinite(train["overhead"]) and train["overhead"] > -1
    assert report["autotune"]["status"] == "interpreter"
    configs = report["configs"]
    assert configs["status"] == "ok" and configs["failures"] == 0 and configs["runs"]
    assert configs["runs"][0]["value_rel_err"] < 1e-4


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


def test_autotune_winners_reads_the_autotuner_cache() -> None:
    configs = _config.gpu_configs("softmin", "tf32x3")
    tuner = triton.autotune(configs=configs, key=["n"])(_copy_kernel)
    tuner.cache[(300, "torch.float32", "torch.float32")] = configs[2]
    rows = gpu.autotune_winners([tuner], {"softmin/tf32x3": configs, "OTHER": configs[:1]})
    assert rows == [
        {
            "kernel": "_copy_kernel",
            "configs": "softmin/tf32x3",
            "key": {"n": 300},
            "dtypes": ["torch.float32", "torch.float32"],
            "config": str(configs[2]),
            "index": 2,
        }
    ]
    assert all(t is not tuner for t in gpu.find_autotuners())  # only cma_kernels' tuners


def test_time_limit_interrupts_a_python_loop() -> None:
    t0 = time.perf_counter()
    with pytest.raises(gpu.CaseTimeout), gpu.time_limit(0.05):
        while True:
            time.sleep(0.001)
    assert time.perf_counter() - t0 < 1.0
    with gpu.time_limit(5.0):  # no alarm left behind
        time.sleep(0.01)
    with pytest.raises(gpu.CaseTimeout), gpu.time_limit(0.0):
        pass


def test_failures_are_classified() -> None:
    assert gpu.failure(gpu.CaseTimeout("past its 5 s limit"))["status"] == "timeout"
    assert gpu.failure(torch.OutOfMemoryError("CUDA out of memory. Tried"))["status"] == "oom"
    assert gpu.failure(RuntimeError("cusolver: out of memory"))["status"] == "oom"
    try:
        try:
            raise gpu.CaseTimeout("past its 5 s limit")
        except gpu.CaseTimeout as inner:
            raise RuntimeError("InterpreterError") from inner
    except RuntimeError as wrapped:
        assert gpu.failure(wrapped)["status"] == "timeout"
    err = gpu.failure(ValueError("x: expected (N, d)"))
    assert err["status"] == "error" and err["note"] == "x: expected (N, d)"


def test_budget_skips_extrapolated_and_failed_cases(tmp_path: Path) -> None:
    run = gpu.Run(gpu.parse(["--dry-run", "--out", str(tmp_path)]))
    state = gpu.SinkhornState()
    state.last_ok[("geomloss", "float32", "fwd")] = (16, 2.0, 1.0)
    skipped = gpu.sinkhorn_case(run, state, "geomloss", 4096, "float32", "fwd")
    assert skipped["status"] == "skipped" and "extrapolated" in skipped["note"]
    assert gpu.extrapolate(2.0, 16, 4096) == pytest.approx(2.0 * 256**2)
    state.failed[("flash", "bfloat16", "fwd+bwd")] = "oom at N=16384"
    assert gpu.sinkhorn_case(run, state, "flash", 65536, "bfloat16", "fwd+bwd") == {
        "status": "skipped",
        "note": "oom at N=16384",
    }
    spent = gpu.Run(gpu.parse(["--dry-run", "--out", str(tmp_path), "--budget-s", "0"]))
    case = gpu.sinkhorn_case(spent, gpu.SinkhornState(), "cma-chunked", 16, "float32", "fwd")
    assert case == {"status": "skipped", "note": "time budget spent"}


def test_report_of_a_partial_run() -> None:
    partial = {
        "sections": {"env": {"status": "ok", "seconds": 1.0}},
        "sinkhorn": {
            "ours": "cma-triton",
            "sizes": [4096, 65536],
            "dtypes": ["float32"],
            "modes": ["fwd"],
            "runs": [
                {"method": "cma-triton", "n": 4096, "dtype": "float32", "mode": "fwd"}
                | {"status": "ok", "seconds": 0.01, "peak_mib": 40.0, "passes": 60}
                | {"value": 1.42, "rel_err": 3e-4},
                {"method": "geomloss", "n": 4096, "dtype": "float32", "mode": "fwd"}
                | {"status": "oom", "note": "CUDA out of memory"},
            ],
        },
    }
    md = gpu.markdown(partial)
    assert "| cma-triton | 10.0 ms · 40.0 MiB · 60 p · 3.0e-04 |  |" in md
    assert "| geomloss | oom: CUDA out of memory |  |" in md
    assert gpu.markdown({}).startswith("# GPU check")


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu.parse(["--sections", "env,warp", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        gpu.parse(["--peers", "keops", "--out", str(tmp_path)])
