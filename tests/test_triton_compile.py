"""Every Triton kernel, with every config a GPU launch can use, compiles for a real GPU.

The interpreter (``TRITON_INTERPRET=1``, what the other Triton tests run) accepts programs the
GPU compiler rejects (``tl.dot`` tiles under 16, unsupported dtype mixes, shared memory over the
limit, constexpr branches that do not type-check). Triton compiles ahead of time without a
device: ``tests/scripts/compile_kernels.py`` lowers each kernel to PTX and assembles it with the
wheel's ``ptxas`` into an sm_90 (H100/H200) cubin, here on the CPU, in a subprocess without the
interpreter.
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


@pytest.mark.skipif(not PTXAS.is_file(), reason="this triton wheel has no bundled ptxas")
def test_every_kernel_config_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "compile_kernels.py"), "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    expected = (
        2 * len(_config.SOFTMIN_CONFIGS)
        + len(_config.DOT_PRECISIONS)
        + 2 * len(_config.BARYCENTER_CONFIGS)
        + 2 * len(_config.SQDIST_CONFIGS)
        + 1
        + 3
    )
    assert len(result["compiled"]) == expected
