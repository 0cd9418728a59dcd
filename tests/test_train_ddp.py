"""DDP: two gloo processes give the loss and gradients of one process with the doubled batch,
with the alignment solve sharded across the ranks (the default) and on gathered features."""

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from ddp_cmaloss import TwoTowers, batch

from cma.losses import CMALoss

WORKER = Path(__file__).parent / "scripts" / "ddp_cmaloss.py"
ROOT = Path(__file__).parent.parent


def test_two_process_ddp_matches_single_process_double_batch(tmp_path: Path) -> None:
    # PYTHONPATH: the workers import this checkout's code, not whichever one is installed
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OUT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model = TwoTowers()
    loss = CMALoss(weight=0.7, blur=0.3, tol=1e-6)
    out = loss(*model(*batch()))
    out["total"].backward()
    for rank in (0, 1):
        runs = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert set(runs) == {"sharded", "gathered"}
        assert runs["sharded"]["collectives"] > 0 and runs["gathered"]["collectives"] == 0
        for got in runs.values():
            for key in ("contrastive_loss", "alignment_loss", "total"):
                torch.testing.assert_close(
                    got["terms"][key], out[key].detach(), rtol=1e-4, atol=1e-5
                )
            for name, p in model.named_parameters():
                torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-3, atol=1e-5)
        # sharded and gathered runs agree with each other more tightly than with one process
        for key in ("alignment_loss", "total"):
            torch.testing.assert_close(
                runs["sharded"]["terms"][key], runs["gathered"]["terms"][key], rtol=1e-5, atol=1e-6
            )
        for name, g in runs["gathered"]["grads"].items():
            torch.testing.assert_close(runs["sharded"]["grads"][name], g, rtol=1e-4, atol=1e-6)
