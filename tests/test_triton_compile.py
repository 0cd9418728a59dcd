"""Every Triton kernel config compiles for sm_90 and sm_80 without register spills.

The interpreter (``TRITON_INTERPRET=1``, what the other Triton tests run) accepts programs the
GPU compiler rejects (``tl.dot`` tiles under 16, unsupported dtype mixes, constexpr branches that
do not type-check) and says nothing about registers. Triton compiles ahead of time without a
device: ``tests/scripts/compile_kernels.py`` lowers each (kernel, config, dot precision, input
type) with the config's own warps/stages/register cap to PTX and assembles it with the wheel's
``ptxas -v``, for both archs, on the CPU, in a subprocess without the interpreter. A spill (local
memory traffic in the inner loop) or a compile failure fails the test; docs/kernels.md holds the
register/shared-memory/occupancy table the same script prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from cma_kernels.triton import _config

ROOT = Path(__file__).resolve().parent.parent
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
ARCHS = (90, 80)


@pytest.mark.skipif(not PTXAS.is_file(), reason="this triton wheel has no bundled ptxas")
def test_every_kernel_config_compiles_without_spills() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    script = ROOT / "tests" / "scripts" / "compile_kernels.py"
    cmd = [sys.executable, str(script), "--arch", *map(str, ARCHS), "--jobs", str(os.cpu_count())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]

    def name(r: dict) -> str:
        return f"sm_{r['arch']} {r['kernel']} {r['config']} {r['prec']} {r['dtype']} {r['spec']}"

    assert {name(r): r["error"] for r in results if r["error"]} == {}
    spills = {name(r): r["spill_stores"] + r["spill_loads"] for r in results}
    assert {k: v for k, v in spills.items() if v} == {}
    assert all(r["ctas_per_sm"] >= 1 for r in results)  # shared memory within the CTA limit
    # every autotuned config of every role and selectable precision, on both archs
    expected = {
        (arch, role, prec, str(conf.kwargs), conf.num_warps, conf.num_stages, conf.maxnreg)
        for arch in ARCHS
        for role in _config.CONFIGS
        for prec in _config.DOT_PRECISIONS
        if prec != "ieee"
        for conf in _config.gpu_configs(role, prec)
    }
    fields = ("arch", "kernel", "prec", "blocks", "num_warps", "num_stages", "maxnreg")
    compiled = {tuple(str(r[f]) if f == "blocks" else r[f] for f in fields) for r in results}
    assert expected <= compiled
    kernels = {r["kernel"] for r in results}
    assert {"centroid", "rowterm0", "rowterm1", "rowterm2"} <= kernels
