r"""Every benchmarked (operation, backend) pair as a :class:`Case`: data in, one timed callable.

Conventions, so that all backends compute the same number (SPEC §2): cost C_ij = ‖x_i − y_j‖²
(not halved), ε = blur², S_ε = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) with
OT_ε = min_P ⟨P, C⟩ + ε·KL(P ‖ a⊗b) = ⟨a, f⟩ + ⟨b, g⟩ at the optimal potentials.

* **GeomLoss** (``SamplesLoss("sinkhorn", p=2)``) uses the cost C/2 and ε_g = blur_g². Since
  min_P ⟨P, C/2⟩ + ε_g·KL = ½·min_P ⟨P, C⟩ + 2ε_g·KL, GeomLoss(C/2, ε_g) = ½·OT(C, 2ε_g):
  with ``blur_g = blur/√2`` (ε_g = ε/2) our value is **2 × GeomLoss's**. Passing
  ``diameter = D/√2`` also makes its ε-schedule (D²/2·s^{2k} in its units) ours exactly
  (D²·s^{2k}). Only the ``tensorized`` backend runs here: pykeops is not installed, so the
  ``online`` / ``multiscale`` backends are unavailable.
* **POT** regularises with Σ P log P (not KL to a⊗b) and ``ot.sinkhorn2`` returns only the
  linear term ⟨P, M⟩. We therefore read the log-domain potentials (``log_u``, ``log_v``, with
  P_ij = exp(log_u_i + log_v_j − M_ij/ε)) and convert them to ours, f = ε·(log_u − log a),
  g = ε·(log_v − log b), so OT_ε = ⟨a, f⟩ + ⟨b, g⟩ is exactly our objective; S_ε is formed from
  the three problems. (The two entropy conventions differ by ε·(Σa log a + Σb log b), which
  cancels in S_ε anyway.) ``pot-log`` is ``ot.sinkhorn2(..., method="sinkhorn_log")`` on the
  dense torch cost ``ot.dist``; ``pot-lazy`` is ``ot.bregman.empirical_sinkhorn(...,
  isLazy=True)``, which recomputes the cost in row blocks. POT has no ε-scaling in either
  solver: it iterates at the final ε from zero potentials until its marginal-violation test
  (``stopThr``, checked every 10 iterations) passes.
* **flash-sinkhorn** (CUDA only): ``SamplesLoss("sinkhorn", blur, scaling, debias=True)`` with
  ``half_cost=False`` uses C = ‖x − y‖² and ε = blur², i.e. our convention directly; we pass
  ``allow_tf32=False`` so its dot products are fp32 like ours.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import _config as cfg

#: Backends of each operation. Ours start with ``cma``; the rest are the peers.
OPS: dict[str, tuple[str, ...]] = {
    "sqdist": ("cma", "cma-triton", "torch-cdist", "pot"),
    "centroid": ("cma", "cma-triton", "torch"),
    "sinkhorn": (
        "cma-tensorized",
        "cma-chunked",
        "cma-triton",
        "geomloss",
        "pot-log",
        "pot-lazy",
        "flash",
    ),
    "sinkhorn_grad": ("cma-tensorized", "cma-chunked", "cma-triton", "geomloss", "flash"),
    "gap_loss": ("cma", "cma-triton", "geomloss"),
    "train": ("clip", "cma"),
}

#: What each operation measures (used by the report).
OP_TITLES: dict[str, str] = {
    "sqdist": "pairwise_sqdist (N×M cost matrix)",
    "centroid": "centroid_stats",
    "sinkhorn": "sinkhorn_divergence forward",
    "sinkhorn_grad": "sinkhorn_divergence forward + backward",
    "gap_loss": "distribution_gap_loss forward + backward",
    "train": "training step (forward, loss, backward, AdamW)",
}

CUDA_ONLY = frozenset({"cma-triton", "flash"})
#: Peers that iterate to a stopping rule without ε-scaling and may run for minutes: each is
#: first run once in a worker process under a time bound (see ``_worker.py``).
GUARDED = frozenset({"pot-log", "pot-lazy"})
#: Operations compared against a float64 Sinkhorn reference (value and gradient).
SINKHORN_OPS = frozenset({"sinkhorn", "sinkhorn_grad", "gap_loss"})


def is_ours(backend: str) -> bool:
    """True for our backends (``cma*``) and for the training cases."""
    return backend.startswith("cma") or backend == "clip"


def unavailable(op: str, backend: str, dev: str) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``dev`` here, or None."""
    on_cuda = dev.startswith("cuda")
    if backend in CUDA_ONLY and not on_cuda:
        return f"{backend} runs on CUDA only (device is {dev})"
    if on_cuda and not torch.cuda.is_available():
        return "CUDA requested but not available"
    if op == "train":
        try:
            import cma.models  # noqa: F401  (registers cma-tiny; needs open_clip)
        except Exception as e:  # pragma: no cover - depends on the install
            return f"the training step needs open_clip and cma.models: {e}"
    module = {
        "geomloss": "geomloss",
        "pot": "ot",
        "pot-log": "ot",
        "pot-lazy": "ot",
        "flash": "flash_sinkhorn",
        "cma-triton": "cma_kernels.triton",
    }.get(backend)
    if module is not None:
        try:
            __import__(module)
        except Exception as e:  # pragma: no cover - depends on the install
            return f"{module} does not import: {e}"
    return None


@dataclass
class Case:
    """One benchmark case: ``run()`` does the timed work and returns (value, grads or None).

    ``info`` is filled by ``run`` with backend facts (iterations) when known.
    """

    run: Callable[[], tuple[Tensor, tuple[Tensor, ...] | None]]
    info: dict[str, Any] = field(default_factory=dict)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _with_grad(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, grad: bool
) -> Callable[[], tuple[Tensor, tuple[Tensor, ...] | None]]:
    """A runner computing fn(x, y) and, if ``grad``, its gradient in (x, y); synchronised."""
    if not grad:

        def run() -> tuple[Tensor, None]:
            with torch.no_grad():
                value = fn(x, y)
            _sync(x.device)
            return value, None

        return run
    xg = x.detach().clone().requires_grad_(True)
    yg = y.detach().clone().requires_grad_(True)

    def run_grad() -> tuple[Tensor, tuple[Tensor, ...]]:
        value = fn(xg, yg)
        grads = torch.autograd.grad(value, (xg, yg))
        _sync(x.device)
        return value.detach(), grads

    return run_grad


# ------------------------------------------------------------------------------------------
# Sinkhorn adapters (value in OUR convention, see the module docstring)
# ------------------------------------------------------------------------------------------


def _diameter(x: Tensor, y: Tensor) -> float:
    """Bounding-box diagonal of both clouds (GeomLoss's and our ε-schedule start)."""
    both = torch.cat([x.detach(), y.detach()])
    return float((both.amax(0) - both.amin(0)).norm())


def _geomloss_divergence(x: Tensor, y: Tensor) -> Tensor:
    """2 × GeomLoss(C/2, blur/√2) = our S_ε(x, y) (see the module docstring)."""
    from geomloss import SamplesLoss

    loss = SamplesLoss(
        "sinkhorn",
        p=2,
        blur=cfg.BLUR / math.sqrt(2.0),
        scaling=cfg.SCALING,
        debias=True,
        backend="tensorized",
        diameter=_diameter(x, y) / math.sqrt(2.0),
    )
    return 2.0 * loss(x, y)


def geomloss_eps_steps(x: Tensor, y: Tensor) -> int:
    """Number of ε values in GeomLoss's schedule for these clouds (one update per value)."""
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule

    d = _diameter(x, y) / math.sqrt(2.0)
    return len(epsilon_schedule(2, d, cfg.BLUR / math.sqrt(2.0), cfg.SCALING))


def _pot_ot(x: Tensor, y: Tensor, lazy: bool, info: dict[str, Any], key: str) -> Tensor:
    """OT_ε(x, y) in our convention from POT's log-domain potentials."""
    import ot

    eps = cfg.BLUR**2
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=y.dtype, device=y.device)
    if lazy:
        log_u, log_v, log = ot.bregman.empirical_sinkhorn(
            x,
            y,
            eps,
            a,
            b,
            metric="sqeuclidean",
            numIterMax=cfg.POT_MAX_ITER,
            stopThr=cfg.POT_STOP_THR,
            isLazy=True,
            batchSize=cfg.POT_LAZY_BATCH,
            log=True,
            warn=False,
        )
    else:
        cost = ot.dist(x, y, metric="sqeuclidean")
        _, log = ot.sinkhorn2(
            a,
            b,
            cost,
            eps,
            method="sinkhorn_log",
            numItermax=cfg.POT_MAX_ITER,
            stopThr=cfg.POT_STOP_THR,
            log=True,
            warn=False,
        )
        log_u, log_v = log["log_u"], log["log_v"]
    info[f"iters_{key}"] = int(log["niter"]) + 1
    f = eps * (log_u - a.log())
    g = eps * (log_v - b.log())
    return a @ f + b @ g


def _pot_divergence(lazy: bool, info: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(x: Tensor, y: Tensor) -> Tensor:
        ot_xy = _pot_ot(x, y, lazy, info, "xy")
        ot_xx = _pot_ot(x, x, lazy, info, "xx")
        ot_yy = _pot_ot(y, y, lazy, info, "yy")
        info["iters"] = max(info["iters_xy"], info["iters_xx"], info["iters_yy"])
        return ot_xy - 0.5 * ot_xx - 0.5 * ot_yy

    return fn


def _flash_divergence(x: Tensor, y: Tensor) -> Tensor:
    from flash_sinkhorn import SamplesLoss

    loss = SamplesLoss(
        "sinkhorn",
        blur=cfg.BLUR,
        scaling=cfg.SCALING,
        debias=True,
        allow_tf32=False,
    )
    return loss(x, y)


def _cma_divergence(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    from cma_kernels import sinkhorn_divergence

    if backend == "cma-triton":
        kwargs: dict[str, Any] = {"backend": "triton"}
    else:
        kwargs = {"backend": "reference", "strategy": backend.removeprefix("cma-")}

    def fn(x: Tensor, y: Tensor) -> Tensor:
        return sinkhorn_divergence(
            x, y, blur=cfg.BLUR, scaling=cfg.SCALING, tol=cfg.TOL, max_iter=cfg.MAX_ITER, **kwargs
        )

    return fn


def sinkhorn_fn(backend: str, info: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """S_ε(x, y) by ``backend``, in our convention."""
    if backend.startswith("cma"):
        return _cma_divergence(backend)
    if backend == "geomloss":
        return _geomloss_divergence
    if backend in ("pot-log", "pot-lazy"):
        return _pot_divergence(backend == "pot-lazy", info)
    if backend == "flash":
        return _flash_divergence
    raise ValueError(f"unknown sinkhorn backend {backend!r}")


def gap_loss_fn(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    """λ_C·G_C² + λ_D·S_ε(x − μ_x, y − μ_y) with λ = 1 (= S_ε(x, y) exactly)."""
    if backend.startswith("cma"):
        from cma_kernels import distribution_gap_loss

        kind = "triton" if backend == "cma-triton" else "reference"

        def ours(x: Tensor, y: Tensor) -> Tensor:
            return distribution_gap_loss(
                x,
                y,
                blur=cfg.BLUR,
                scaling=cfg.SCALING,
                tol=cfg.TOL,
                max_iter=cfg.MAX_ITER,
                backend=kind,
            )

        return ours
    if backend == "geomloss":

        def peer(x: Tensor, y: Tensor) -> Tensor:
            mu_x, mu_y = x.mean(0), y.mean(0)
            gap2 = (mu_x - mu_y).pow(2).sum()
            return gap2 + _geomloss_divergence(x - mu_x, y - mu_y)

        return peer
    raise ValueError(f"unknown gap_loss backend {backend!r}")


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------


def _sqdist_fn(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    if backend.startswith("cma"):
        from cma_kernels import pairwise_sqdist

        kind = "triton" if backend == "cma-triton" else "reference"
        return lambda x, y: pairwise_sqdist(x, y, backend=kind)
    if backend == "torch-cdist":
        return lambda x, y: torch.cdist(x, y).square_()
    if backend == "pot":
        import ot

        return lambda x, y: ot.dist(x, y, metric="sqeuclidean")
    raise ValueError(f"unknown sqdist backend {backend!r}")


def _centroid_fn(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    if backend.startswith("cma"):
        from cma_kernels import centroid_stats

        kind = "triton" if backend == "cma-triton" else "reference"
        return lambda x, y: centroid_stats(x, y, backend=kind).gap2
    if backend == "torch":
        return lambda x, y: (x.mean(0) - y.mean(0)).pow(2).sum()
    raise ValueError(f"unknown centroid backend {backend!r}")


def build(op: str, backend: str, x: Tensor, y: Tensor) -> Case:
    """The case ``op`` × ``backend`` on clouds x, y (already on the benchmark device)."""
    info: dict[str, Any] = {}
    if op == "sqdist":
        fn = _sqdist_fn(backend)
        return Case(_with_grad(fn, x, y, grad=False), info)
    if op == "centroid":
        return Case(_with_grad(_centroid_fn(backend), x, y, grad=False), info)
    if op in ("sinkhorn", "sinkhorn_grad"):
        fn = sinkhorn_fn(backend, info)
        if backend == "geomloss":
            info["iters"] = geomloss_eps_steps(x, y)
        return Case(_with_grad(fn, x, y, grad=op == "sinkhorn_grad"), info)
    if op == "gap_loss":
        return Case(_with_grad(gap_loss_fn(backend), x, y, grad=True), info)
    raise ValueError(f"unknown op {op!r}")


def build_train(
    backend: str,
    dev: str,
    seed: int = cfg.SEED,
    *,
    model_name: str | None = None,
    batch: int | None = None,
) -> Case:
    """One training step of a small CLIP with ClipLoss (``clip``) or CMALoss (``cma``).

    The model is ``cma.models.create_model`` of :func:`benchmarks._config.train_setup` (random
    weights; ``model_name`` / ``batch`` override it), AdamW, random images and tokens. On CUDA
    the model forward runs under bf16 autocast and the loss (the alignment term's solver
    included) in fp32 on the features cast back; on CPU everything is fp32.
    """
    from open_clip.loss import ClipLoss

    from cma.models import create_model

    default_name, default_batch = cfg.train_setup(dev)
    name = model_name or default_name
    batch = batch or default_batch
    torch.manual_seed(seed)
    model = create_model(name, device=dev)[0].train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g).to(dev)
    texts = torch.randint(0, model.vocab_size, (batch, model.context_length), generator=g).to(dev)
    loss_fn: torch.nn.Module
    if backend == "clip":
        loss_fn = ClipLoss()
    else:
        try:
            from cma.losses import CMALoss

            loss_fn = CMALoss(blur=cfg.BLUR)  # the solver defaults a user gets
        except ImportError:  # pragma: no cover - fallback while cma.losses is written
            loss_fn = _FallbackCMALoss()
    on_cuda = dev.startswith("cuda")
    device = torch.device(dev)

    def run() -> tuple[Tensor, None]:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            image_features, text_features, logit_scale = model(images, texts)
        out = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
        total = out["total"] if isinstance(out, dict) else out
        total.backward()
        opt.step()
        _sync(device)
        return total.detach(), None

    return Case(run, {"model": name, "batch": batch})


class _FallbackCMALoss(torch.nn.Module):
    """ClipLoss + 0.5·distribution_gap_loss, used only if ``cma.losses`` does not import."""

    def __init__(self) -> None:
        super().__init__()
        from open_clip.loss import ClipLoss

        self.clip = ClipLoss()

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> dict:
        from cma_kernels import distribution_gap_loss

        contrastive = self.clip(image_features, text_features, logit_scale)
        align = distribution_gap_loss(image_features, text_features, blur=cfg.BLUR)
        return {"total": contrastive + 0.5 * align}


# ------------------------------------------------------------------------------------------
# measurement helpers: iterations of our solver, accuracy against float64
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def count_iterations(info: dict[str, Any]) -> Iterator[None]:
    """Within the block, record the work of the last solve in ``info``.

    Ours: ``iters`` at the final ε, ``passes`` (reductions: kernel launches on the Triton path)
    and ``sweeps`` (cost entries over B·N·M: full N×M soft-min passes of the forward solve).
    GeomLoss (tensorized): ``sweeps``, its soft-min calls, each one N×M pass.
    """
    from cma_kernels import sinkhorn

    original = sinkhorn.solve

    def counted(x: Tensor, y: Tensor, *args: Any, **kwargs: Any) -> Any:
        pot = original(x, y, *args, **kwargs)
        info["iters"] = pot.iterations
        info["passes"] = pot.passes
        info["sweeps"] = pot.cost_entries / (x.shape[0] * x.shape[-2] * y.shape[-2])
        return pot

    with contextlib.ExitStack() as stack:
        sinkhorn.solve = counted
        stack.callback(setattr, sinkhorn, "solve", original)
        try:
            from geomloss._legacy import sinkhorn_samples
        except ImportError:
            sinkhorn_samples = None
        if sinkhorn_samples is not None:
            softmin = sinkhorn_samples.softmin_tensorized

            def counted_softmin(*args: Any, **kwargs: Any) -> Any:
                info["sweeps"] = info.get("sweeps", 0) + 1
                return softmin(*args, **kwargs)

            sinkhorn_samples.softmin_tensorized = counted_softmin
            stack.callback(setattr, sinkhorn_samples, "softmin_tensorized", softmin)
        yield


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def accuracy(
    op: str, x: Tensor, y: Tensor, value: Tensor, grads: tuple[Tensor, ...] | None, seed: int
) -> dict[str, Any]:
    """Relative errors of one output against float64 (``rel_err``, ``grad_rel_err``).

    sqdist: max |C − C64| / max |C64|; centroid: |G_C² − exact| / exact; the Sinkhorn cases:
    value and gradient against :mod:`benchmarks._reference` (gradient error estimated from a
    32-direction sketch); S_ε's reference also serves the distribution-gap loss, which equals
    S_ε(x, y) exactly when λ_C = λ_D = 1.
    """
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
    if op not in SINKHORN_OPS:
        return out
    entry = _reference.reference_entry(x.shape[0], x.shape[1], seed, str(x.device), compute=False)
    if entry is None:
        return out
    out["rel_err"] = _rel(float(value), entry["value"])
    if grads is not None:
        out["grad_rel_err"] = _reference.grad_rel_err(entry, grads[0], grads[1])
    return out
