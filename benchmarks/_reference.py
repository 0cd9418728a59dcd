r"""An independent float64 oracle for S_ε: ε-scaled Sinkhorn, then Newton's method.

On CLIP-like clouds at blur = 0.05 (ε = 0.0025) plain Sinkhorn converges slowly at the final ε
(the potentials still move by ~1e-5 after 1000 iterations at N = 1024), so "our solver at
tol = 1e-10" is not a usable reference. This module solves each of the three OT problems
(x↔y, x↔x, y↔y) to machine precision instead:

1. ε-scaling with symmetric updates (GeomLoss's schedule) for a warm start, then a few
   alternating Sinkhorn iterations at the final ε;
2. Newton's method on the semi-dual F(g) = ⟨a, f(g)⟩ + ⟨b, g⟩, f(g) = softmin_ε(C, log b + g/ε):
   ∇F = b − Pᵀ1 and −ε∇²F = diag(Pᵀ1) − Pᵀ diag(1/a) P (P the plan with exact row marginals),
   singular along 1, which a rank-one term removes (a 1e-12 relative ridge is added only if
   the solve still fails); backtracking line search on F;
   stop when ‖b − Pᵀ1‖₁ < ``marginal_tol``.

The value is OT_ε = ⟨a, f⟩ + ⟨b, g⟩ (cost ‖x − y‖², ε·KL(P ‖ a⊗b), SPEC §2). The gradient comes
from the envelope theorem: one soft-min recomputed with autograd while the other potential is
held fixed gives ∂OT/∂C = P exactly. Everything is dense float64 plain PyTorch — no code of
``cma_kernels`` is involved — so it needs O(N·M) memory and O(N³) time per Newton step: meant
for N ≤ 16384 (on a GPU beyond 4096).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _sqdist(x: Tensor, y: Tensor) -> Tensor:
    return ((x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2.0 * x @ y.T).clamp_min(0.0)


def _softmin(cost: Tensor, h: Tensor, eps: float) -> Tensor:
    """−ε·log Σ_j exp(h_j − C_ij/ε), over the last axis."""
    return -eps * torch.logsumexp(h - cost / eps, dim=-1)


def _schedule(diameter: float, blur: float, scaling: float) -> list[float]:
    steps = max(0, math.ceil(math.log(blur / max(diameter, blur)) / math.log(scaling)))
    return [(diameter * scaling**k) ** 2 for k in range(steps)] + [blur**2]


def _newton_solve(plan: Tensor, col: Tensor, a: Tensor, resid: Tensor) -> Tensor:
    """δ with (diag(Pᵀ1) − Pᵀ diag(1/a) P + ridge)·δ = resid.

    The matrix is singular along 1 and (numerically) along every group of points the plan
    decouples from the rest at this ε; the residual has no component there, so a 1e-12
    relative ridge is harmless. On a GPU the dense system is solved directly; on the CPU the
    plan is sparsified (entries below 1e-20·a_i dropped — at small ε almost all of them) and the
    sparse system is solved by SuperLU, which makes a step O(nnz) instead of O(N³). Only the
    step is approximate; the residual (hence the fixed point) is always computed densely.
    """
    ridge = 1e-12 * float(col.mean())
    if plan.is_cuda:
        hess = torch.diag(col) - plan.T @ (plan / a.unsqueeze(1))
        hess.diagonal().add_(ridge)
        step = torch.linalg.solve(hess, resid)
        if not bool(torch.isfinite(step).all()):
            step = torch.linalg.pinv(hess, hermitian=True) @ resid
        return step
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    rows, cols = (plan > 1e-20 * a.unsqueeze(1)).nonzero(as_tuple=True)
    vals = plan[rows, cols]
    n, m = plan.shape
    p = sp.csr_matrix((vals.numpy(), (rows.numpy(), cols.numpy())), shape=(n, m))
    hess = sp.diags(col.numpy()) - p.T @ sp.diags(1.0 / a.numpy()) @ p
    hess = (hess + ridge * sp.identity(m)).tocsc()
    step = spla.spsolve(hess, resid.numpy())
    return torch.from_numpy(np.asarray(step, dtype=np.float64))


def solve_ot(
    x: Tensor,
    y: Tensor,
    *,
    blur: float,
    scaling: float = 0.5,
    marginal_tol: float = 1e-9,
    max_newton: int = 50,
    sinkhorn_iters: int = 20,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Optimal potentials (f, g) of OT_ε(x, y) with uniform weights, float64, and solver facts."""
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    log_a = torch.full((n,), -math.log(n), dtype=x.dtype, device=x.device)
    log_b = torch.full((m,), -math.log(m), dtype=x.dtype, device=x.device)
    a = log_a.exp()
    cost = _sqdist(x, y)
    both = torch.cat([x, y])
    eps_list = _schedule(float((both.amax(0) - both.amin(0)).norm()), blur, scaling)
    f = _softmin(cost, log_b, eps_list[0])
    g = _softmin(cost.T, log_a, eps_list[0])
    for eps in eps_list[:-1]:
        f, g = (
            0.5 * (f + _softmin(cost, log_b + g / eps, eps)),
            0.5 * (g + _softmin(cost.T, log_a + f / eps, eps)),
        )
    eps = eps_list[-1]
    for _ in range(sinkhorn_iters):
        f = _softmin(cost, log_b + g / eps, eps)
        g = _softmin(cost.T, log_a + f / eps, eps)

    def semi_dual(g: Tensor) -> tuple[Tensor, Tensor]:
        f = _softmin(cost, log_b + g / eps, eps)
        return (a * f).sum() + (log_b.exp() * g).sum(), f

    b = log_b.exp()
    value, f = semi_dual(g)
    err = float("inf")
    steps = 0
    for steps in range(1, max_newton + 1):  # noqa: B007 - reported
        plan = torch.softmax(log_b + (g - cost) / eps, dim=1) * a.unsqueeze(1)  # rows sum to a
        col = plan.sum(0)
        resid = b - col
        err = float(resid.abs().sum())
        if err < marginal_tol:
            break
        direction = eps * _newton_solve(plan, col, a, resid)
        slope = float(resid @ direction)
        t = 1.0
        for _ in range(40):
            new_value, new_f = semi_dual(g + t * direction)
            if new_value >= value + 1e-4 * t * slope or abs(new_value - value) <= 1e-15:
                break
            t *= 0.5
        g = g + t * direction
        value, f = new_value, new_f
    return f, g, {"newton_steps": steps, "marginal_err": err, "eps": eps}


def sinkhorn_reference(
    x: Tensor, y: Tensor, *, blur: float, scaling: float = 0.5
) -> tuple[float, Tensor, Tensor, dict[str, float]]:
    """(S_ε(x, y), ∂S/∂x, ∂S/∂y, facts) in float64, uniform weights, C = ‖x − y‖², ε = blur²."""
    x, y = x.detach().double(), y.detach().double()
    facts: dict[str, float] = {}
    value = 0.0
    grads = [torch.zeros_like(x), torch.zeros_like(y)]
    for key, (u, v, weight) in {"xy": (x, y, 1.0), "xx": (x, x, -0.5), "yy": (y, y, -0.5)}.items():
        _, g, info = solve_ot(u, v, blur=blur, scaling=scaling)
        facts[f"newton_steps_{key}"] = info["newton_steps"]
        facts[f"marginal_err_{key}"] = info["marginal_err"]
        eps = info["eps"]
        m = v.shape[0]
        # Envelope theorem: recompute f from the fixed g with autograd; ∂OT/∂C_ij = P_ij.
        uu = u.clone().requires_grad_(True)
        vv = uu if key != "xy" else v.clone().requires_grad_(True)
        f_diff = _softmin(_sqdist(uu, vv), g.detach() / eps - math.log(m), eps)
        ot = f_diff.mean() + g.mean()  # ⟨a, f⟩ + ⟨b, g⟩, uniform weights
        value += weight * float(ot.detach())
        if key == "xy":
            gx, gy = torch.autograd.grad(ot, (uu, vv))
            grads[0] += weight * gx
            grads[1] += weight * gy
        else:
            (gs,) = torch.autograd.grad(ot, (uu,))
            grads[0 if key == "xx" else 1] += weight * gs
    return value, grads[0], grads[1], facts


# ------------------------------------------------------------------------------------------
# stored reference values and gradient sketches
# ------------------------------------------------------------------------------------------

#: Committed reference values for the default sizes (regenerate: ``python -m
#: benchmarks._reference``); other sizes are computed on the fly and cached.
STORED = Path(__file__).resolve().parent / "reference_values.json"
#: Random directions of the gradient sketch.
SKETCH_DIM = 32
SKETCH_SEED = 1234


def sketch(grad_x: Tensor, grad_y: Tensor, k: int = SKETCH_DIM) -> list[float]:
    """⟨(∂x, ∂y), v_k⟩ for k seeded standard-normal directions v_k (float64, CPU).

    For an error e, mean_k ⟨e, v_k⟩² is an unbiased estimate of ‖e‖² (±25 % at k = 32), so
    the gradient error can be measured against a stored reference of 32 numbers instead of
    the full (N + M)·d gradient.
    """
    gen = torch.Generator().manual_seed(SKETCH_SEED)
    gx, gy = grad_x.detach().double().cpu(), grad_y.detach().double().cpu()
    out = []
    for _ in range(k):
        vx = torch.randn(gx.shape, generator=gen, dtype=torch.float64)
        vy = torch.randn(gy.shape, generator=gen, dtype=torch.float64)
        out.append(float((gx * vx).sum() + (gy * vy).sum()))
    return out


def grad_rel_err(entry: dict, grad_x: Tensor, grad_y: Tensor) -> float:
    """Estimated ‖∇ − ∇_ref‖ / ‖∇_ref‖ from the sketches (see :func:`sketch`)."""
    mine = sketch(grad_x, grad_y, len(entry["grad_sketch"]))
    diff2 = sum((u - v) ** 2 for u, v in zip(mine, entry["grad_sketch"], strict=True))
    return math.sqrt(diff2 / len(mine)) / entry["grad_norm"]


def key(n: int, d: int, seed: int, blur: float, scaling: float) -> str:
    """Key of a reference entry."""
    return f"n{n}-d{d}-seed{seed}-blur{blur:g}-scaling{scaling:g}"


def compute_entry(x: Tensor, y: Tensor, *, blur: float, scaling: float) -> dict[str, Any]:
    """The reference entry (value, gradient norm and sketch, data fingerprint, solver facts)."""
    from ._config import fingerprint

    t0 = time.perf_counter()
    value, gx, gy, facts = sinkhorn_reference(x, y, blur=blur, scaling=scaling)
    grad_norm = float(torch.cat([gx.flatten(), gy.flatten()]).norm())
    return {
        "value": value,
        "grad_norm": grad_norm,
        "grad_sketch": sketch(gx, gy),
        "fingerprint": fingerprint(x, y),
        "facts": facts,
        "seconds": time.perf_counter() - t0,
        "device": str(x.device),
    }


def lookup(path: Path, name: str, x: Tensor, y: Tensor) -> dict[str, Any] | None:
    """The stored entry ``name`` of ``path`` if it exists and matches the clouds."""
    from ._config import fingerprint

    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(name)
    if entry is None:
        return None
    ok = all(
        abs(u - v) <= 1e-9 * max(1.0, abs(v))
        for u, v in zip(fingerprint(x, y), entry["fingerprint"], strict=True)
    )
    return entry if ok else None


def store(path: Path, name: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` under ``name`` in the JSON file ``path``."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


#: Largest N for which the dense float64 reference is computed (O(N²) memory).
REF_MAX_N = 16384


def reference_entry(n: int, d: int, seed: int, dev: str, compute: bool) -> dict[str, Any] | None:
    """The reference of the benchmark clouds: stored, cached, or (``compute``) computed+cached."""
    from . import _config as cfg

    x, y = cfg.make_clouds(n, d, seed, dev)
    name = key(n, d, seed, cfg.BLUR, cfg.SCALING)
    cache = cfg.CACHE_DIR / "reference_values.json"
    for path, source in ((STORED, "stored"), (cache, "cached")):
        entry = lookup(path, name, x, y)
        if entry is not None:
            return {**entry, "source": source}
    if not compute or n > REF_MAX_N:
        return None
    entry = compute_entry(x, y, blur=cfg.BLUR, scaling=cfg.SCALING)
    store(cache, name, entry)
    return {**entry, "source": "computed"}


def main(argv: list[str] | None = None) -> None:
    """Recompute the stored reference values: ``python -m benchmarks._reference [sizes]``."""
    import argparse

    from . import _config as cfg

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sizes", nargs="*", type=int, default=list(cfg.DEFAULT_SIZES))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for n in args.sizes:
        x, y = cfg.make_clouds(n, cfg.dim(), cfg.SEED, args.device)
        entry = compute_entry(x, y, blur=cfg.BLUR, scaling=cfg.SCALING)
        store(STORED, key(n, cfg.dim(), cfg.SEED, cfg.BLUR, cfg.SCALING), entry)
        print(f"N={n}: S={entry['value']!r} ({entry['seconds']:.0f} s, {entry['facts']})")


if __name__ == "__main__":
    main()
