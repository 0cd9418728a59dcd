r"""``SamplesLoss``: GeomLoss's front end on top of our solver — switching is one import.

    from geomloss import SamplesLoss          # before
    from cma_kernels import SamplesLoss       # after: same arguments, same values

    loss = SamplesLoss("sinkhorn", p=2, blur=0.05, reach=None, scaling=0.5, debias=True)
    value = loss(x, y)            # (N, d), (M, d) → 0-dim;  (B, N, d), (B, M, d) → (B,)
    value = loss(a, x, b, y)      # with weights (N,) / (B, N) (or (N, 1) / (B, N, 1))

**Conventions.** GeomLoss's Sinkhorn loss with p = 2 uses the cost C = ½‖x − y‖², ε = blur²
and ρ = reach². With that cost (``cost=None`` or ``"half"``, the default),

    value = ½·S(√2·blur, √2·reach),      potentials = ½·(f − p, g − q),

where S, f, g, p, q are :func:`~cma_kernels.sinkhorn_divergence`'s value and
:func:`~cma_kernels.sinkhorn_potentials`' potentials in our convention (C = ‖x − y‖², ε =
blur², ρ = reach²): min_P ⟨P, C/2⟩ + ε·KL + ρ·KL(marginals) = ½·min_P ⟨P, C⟩ + 2ε·KL +
2ρ·KL(marginals). A given ``diameter`` is scaled by √2 too (GeomLoss starts its ε-schedule at
diameter² in its own units). ``cost="full"`` uses our convention as is: value = S(blur, reach).

The debiased value is S = OT(x, y) − ½·OT(x, x) − ½·OT(y, y); with ``reach`` it is Séjourné
et al.'s unbalanced divergence (ρ + ε/2)·[⟨a, e^{−p/ρ} − e^{−f/ρ}⟩ + ⟨b, e^{−q/ρ} − e^{−g/ρ}⟩],
as GeomLoss computes it. ``potentials=True`` returns GeomLoss's dual vectors F = f_ba − f_aa,
G = g_ab − g_bb (debiased) or f_ba, g_ab (``debias=False``), in the chosen cost's units.

**Kernel losses** (``"energy"``, ``"gaussian"``, ``"laplacian"``), exactly as GeomLoss defines
them: ½‖α − β‖²_k = ½⟨α, K_xx α⟩ + ½⟨β, K_yy β⟩ − ⟨α, K_xy β⟩ with k(x, y) = −‖x − y‖
(energy), exp(−‖x − y‖²/2σ²) (gaussian), exp(−‖x − y‖/σ) (laplacian), σ = blur, distances
clamped at √1e-8 as GeomLoss does; ``potentials=True`` gives (K_xx α − K_xy β, K_yy β − K_yx α).
They are computed with dense (B, N, M) kernel matrices on PyTorch, whatever the backend.

**Backends** (GeomLoss's names → ours):

==============  ===================================================================
``"auto"``      ours ``"auto"``: Triton on CUDA tensors, else the reference (tensorized
                or chunked by size)
``"tensorized"`` reference path, dense (B, N, M) cost (as GeomLoss's)
``"online"``    Triton on CUDA (fused, O((N + M)·d) memory: GeomLoss's KeOps analogue),
                else the chunked reference path
``"multiscale"`` as ``"online"``: the exact solve, no clustering or kernel truncation
``"triton"``, ``"reference"``  ours, explicitly
==============  ===================================================================

**Differences from GeomLoss** (measured in ``tests/test_samples_loss.py`` and
``docs/benchmarks.md``):

* We iterate at the final ε until the stopping test ``tol`` passes (the plan's L1 marginal
  error, :data:`~cma_kernels.sinkhorn.DEFAULT_TOL`); GeomLoss runs one symmetric update per ε
  of its schedule and stops there, so its value carries an error of order (1 − scaling) of the
  annealing lag (about 1-5 % at the default scaling 0.5 on the test clouds). ``scaling`` and
  ``diameter`` only set our schedule (speed), not the converged value.
* Unbalanced gradients: GeomLoss's autograd gives (ρ + ε/2)/(ρ + ε) times the gradient of its
  own value (its ``UnbalancedWeight.backward`` is never called by autograd); ours is the exact
  envelope-theorem gradient, checked against finite differences.
* Weights must be non-negative and sum to 1 per batch item (an error otherwise, naming ``a``
  or ``b``), balanced or not; GeomLoss accepts any masses.
* Weights are constants: weights that require gradients are an error (GeomLoss differentiates
  them). Potentials are returned without gradient.
* Not supported, each a ValueError naming the argument: p ≠ 2, ``"hausdorff"``, custom
  ``cost``/``kernel`` functions, the six-argument call with cluster labels. ``truncate``,
  ``cluster_scale`` and ``verbose`` (multiscale-only knobs) are accepted and ignored.
* float16/bfloat16 inputs give float32 results (GeomLoss keeps the input dtype).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _checks, reference
from .sinkhorn import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    prepare,
    sinkhorn_divergence,
    sinkhorn_potentials,
)

#: The losses implemented; GeomLoss's ``"hausdorff"`` is not.
LOSSES = ("sinkhorn", "energy", "gaussian", "laplacian")
#: GeomLoss's (and our) backend names → (our backend, reference-path strategy).
BACKENDS: dict[str, tuple[str, str]] = {
    "auto": ("auto", "auto"),
    "tensorized": ("reference", "tensorized"),
    "online": ("auto", "chunked"),
    "multiscale": ("auto", "chunked"),
    "reference": ("reference", "auto"),
    "triton": ("triton", "auto"),
}
#: Cost conventions: GeomLoss's ½‖x − y‖² (``None`` or ``"half"``) or our ‖x − y‖² (``"full"``).
COSTS = (None, "half", "full")
#: GeomLoss's clamp of squared distances before a square root.
_DIST_FLOOR = 1e-8


class SamplesLoss(nn.Module):
    """GeomLoss's ``SamplesLoss`` (Sinkhorn with p = 2, energy/gaussian/laplacian kernels).

    Args:
        loss: ``"sinkhorn"`` (debiased Sinkhorn divergence), ``"energy"``, ``"gaussian"`` or
            ``"laplacian"`` (kernel norms); ``"hausdorff"`` raises.
        p: the exponent of the Sinkhorn cost; only 2 (C = ½‖x − y‖², or ‖x − y‖² with
            ``cost="full"``).
        blur: ε = blur² for Sinkhorn; the kernels' σ.
        reach: unbalanced transport, ρ = reach² (Sinkhorn only); ``None`` is balanced.
        diameter: start of the ε-schedule (default: the clouds' bounding-box diagonal).
        scaling: ε-scaling factor on the blur, in (0, 1).
        truncate, cluster_scale, verbose: GeomLoss's multiscale knobs, ignored (exact solve).
        cost: ``None``/``"half"`` (GeomLoss's ½‖x − y‖²) or ``"full"`` (‖x − y‖², as
            :func:`~cma_kernels.sinkhorn_divergence`); a function raises.
        kernel: must be ``None`` (custom kernels are not supported).
        debias: the debiased divergence S (else OT_ε).
        potentials: return the dual vectors (F, G) instead of the value.
        backend: see the module docstring for the mapping.
        tol, max_iter: our stopping rule at the final ε (L1 marginal error) and its cap.

    Call as ``loss(x, y)`` or ``loss(a, x, b, y)``; x (N, d) or (B, N, d). Returns a 0-dim
    tensor or (B,) (or the pair of potentials, shaped like the weights). See the module
    docstring for the formulas and every difference from GeomLoss.
    """

    def __init__(
        self,
        loss: str = "sinkhorn",
        p: int = 2,
        blur: float = 0.05,
        reach: float | None = None,
        diameter: float | None = None,
        scaling: float = 0.5,
        truncate: float | None = 5,
        cost: str | None = None,
        kernel: object = None,
        cluster_scale: float | None = None,
        debias: bool = True,
        potentials: bool = False,
        verbose: bool = False,
        backend: str = "auto",
        *,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
    ) -> None:
        super().__init__()
        if loss == "hausdorff":
            raise ValueError(
                "loss: 'hausdorff' is not implemented in cma_kernels "
                f"(choose one of {LOSSES}, or use geomloss)"
            )
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        if loss == "sinkhorn" and p != 2:
            raise ValueError(
                f"p: only p = 2 (the squared Euclidean cost) is implemented, got {p!r}"
            )
        if cost not in COSTS:
            kind = "a custom cost function" if callable(cost) else repr(cost)
            raise ValueError(f"cost: expected None, 'half' or 'full', got {kind}")
        if cost == "full" and loss != "sinkhorn":
            raise ValueError(f"cost: 'full' applies to loss='sinkhorn' only, not {loss!r}")
        if kernel is not None:
            raise ValueError("kernel: custom kernels are not supported (pass kernel=None)")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {tuple(BACKENDS)}, got {backend!r}")
        if backend == "triton" and loss != "sinkhorn":
            raise ValueError(f"backend: 'triton' has no {loss!r} kernel (use 'auto')")
        self.loss = loss
        self.p = p
        self.blur = _checks.check_positive("blur", blur)
        self.reach = None if reach is None else _checks.check_positive("reach", reach)
        self.diameter = None if diameter is None else _checks.check_positive("diameter", diameter)
        self.scaling = _checks.check_scaling(scaling)
        self.truncate = truncate
        self.cost = cost
        self.kernel = kernel
        self.cluster_scale = cluster_scale
        self.debias = bool(debias)
        self.potentials = bool(potentials)
        self.verbose = verbose
        self.backend = backend
        self.tol = _checks.check_positive("tol", tol)
        self.max_iter = _checks.check_count("max_iter", max_iter)

    def extra_repr(self) -> str:
        reach = "" if self.reach is None else f", reach={self.reach}"
        return (
            f"loss={self.loss!r}, blur={self.blur}{reach}, scaling={self.scaling}, "
            f"debias={self.debias}, cost={self.cost or 'half'!r}, backend={self.backend!r}"
        )

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``loss(x, y)`` or ``loss(a, x, b, y)``: the value, or the potentials (F, G)."""
        a, x, b, y = _parse_args(args)
        x, y = _checks.check_pair(x, y)
        a_shape = None if a is None else tuple(a.shape)
        b_shape = None if b is None else tuple(b.shape)
        a, b = _squeeze_weight("a", a, x), _squeeze_weight("b", b, y)
        solver = self._sinkhorn if self.loss == "sinkhorn" else self._kernel
        out = solver(x, y, a, b)
        if not self.potentials:
            return out
        f, g = out
        return f.reshape(a_shape or x.shape[:-1]), g.reshape(b_shape or y.shape[:-1])

    # -- Sinkhorn --------------------------------------------------------------------------
    def _sinkhorn(
        self, x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None
    ) -> Tensor | tuple[Tensor, Tensor]:
        scale = 1.0 if self.cost == "full" else math.sqrt(2.0)  # lengths in our convention
        backend, strategy = BACKENDS[self.backend]
        kwargs = {
            "blur": self.blur * scale,
            "scaling": self.scaling,
            "reach": None if self.reach is None else self.reach * scale,
            "debias": self.debias,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "backend": backend,
            "strategy": strategy,
            "diameter": None if self.diameter is None else self.diameter * scale,
        }
        unit = 1.0 if self.cost == "full" else 0.5  # our values → the chosen cost's units
        if not self.potentials:
            return unit * sinkhorn_divergence(x, y, a, b, **kwargs)
        pot = sinkhorn_potentials(x, y, a, b, **kwargs)
        f, g = (pot.f - pot.p, pot.g - pot.q) if self.debias else (pot.f, pot.g)
        return unit * f, unit * g

    # -- kernel norms ----------------------------------------------------------------------
    def _kernel(
        self, x: Tensor, y: Tensor, a: Tensor | None, b: Tensor | None
    ) -> Tensor | tuple[Tensor, Tensor]:
        prob = prepare(x, y, a, b, None, "reference")
        if prob.x.device.type == "cpu":
            _checks.check_data({"x": prob.x, "y": prob.y}, {"a": prob.a, "b": prob.b})
        a, b = prob.a.unsqueeze(-1), prob.b.unsqueeze(-1)  # (B, N, 1), (B, M, 1)
        k_xx = self._gram(prob.x, prob.x)
        k_yy = self._gram(prob.y, prob.y)
        k_xy = self._gram(prob.x, prob.y)
        a_x, b_y, b_x = k_xx @ a, k_yy @ b, k_xy @ b
        if self.potentials:
            a_y = k_xy.mT @ a
            f, g = (a_x - b_x).squeeze(-1), (b_y - a_y).squeeze(-1)
            return f, g
        value = (a * (0.5 * a_x - b_x)).sum(dim=(-2, -1)) + 0.5 * (b * b_y).sum(dim=(-2, -1))
        return value if prob.batched else value[0]

    def _gram(self, x: Tensor, y: Tensor) -> Tensor:
        """k(x_i, y_j) (B, N, M) for the kernel loss, as GeomLoss computes it."""
        if self.loss == "gaussian":
            return torch.exp(-0.5 * reference.sqdist(x / self.blur, y / self.blur))
        if self.loss == "laplacian":
            sq = reference.sqdist(x / self.blur, y / self.blur)
            return torch.exp(-sq.clamp_min(_DIST_FLOOR).sqrt())
        return -reference.sqdist(x, y).clamp_min(_DIST_FLOOR).sqrt()  # energy


def _parse_args(args: tuple[Tensor, ...]) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]:
    """(a, x, b, y) from ``(x, y)`` or ``(a, x, b, y)``."""
    if len(args) == 2:
        return None, args[0], None, args[1]
    if len(args) == 4:
        return args[0], args[1], args[2], args[3]
    if len(args) == 6:
        raise ValueError(
            "args: the six-argument call (l_x, a, x, l_y, b, y) with cluster labels is "
            "GeomLoss's multiscale backend; cma_kernels solves exactly, call loss(a, x, b, y)"
        )
    raise ValueError(f"args: expected (x, y) or (a, x, b, y), got {len(args)} arguments")


def _squeeze_weight(name: str, w: Tensor | None, cloud: Tensor) -> Tensor | None:
    """GeomLoss's (N, 1) / (B, N, 1) weights as (N,) / (B, N); weights needing grad raise."""
    if w is None:
        return None
    if isinstance(w, Tensor) and w.dim() == cloud.dim() and w.shape[-1] == 1:
        w = w.squeeze(-1)
    if isinstance(w, Tensor) and w.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name}: weights that require gradients are not supported (cma_kernels treats "
            f"the weights as constants, GeomLoss differentiates them); pass {name}.detach()"
        )
    return w
