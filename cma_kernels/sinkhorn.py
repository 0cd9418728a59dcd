r"""Debiased Sinkhorn divergence with ε-scaling and envelope-theorem gradients.

With the cost C_ij = ‖x_i − y_j‖² (not halved) and ε = blur²,

    OT_ε(x, y) = min_P ⟨P, C⟩ + ε·KL(P ‖ a⊗b) = ⟨a, f⟩ + ⟨b, g⟩   (dual value at convergence)
    S_ε(x, y)  = OT_ε(x, y) − ½·OT_ε(x, x) − ½·OT_ε(y, y)            (Feydy et al. 2019)

The potentials solve f = λ·softmin_ε(C, log b + g/ε), g = λ·softmin_ε(Cᵀ, log a + f/ε), with
λ = 1 (balanced) or λ = 1/(1 + ε/ρ) for unbalanced transport with ``reach`` (ρ = reach²: the
marginal constraints become penalties ρ·KL, Séjourné et al. 2019). The unbalanced debiased value is

    S_ε,ρ = (ρ + ε/2)·[⟨a, e^{−p/ρ} − e^{−f/ρ}⟩ + ⟨b, e^{−q/ρ} − e^{−g/ρ}⟩]

(p, q the self potentials), which tends to the balanced ⟨a, f − p⟩ + ⟨b, g − q⟩ as ρ → ∞.

**One loop for every problem.** The x↔y problem and both self problems (x↔x, y↔y — one
stacked launch when N = M) are annealed together: symmetric (averaged) updates while ε falls
from the cloud's diameter² to blur² by ``scaling²`` per step (GeomLoss's schedule), then at the
final ε alternating over-relaxed updates for x↔y (f ← (1−ω)f + ω·T(g), Thibault et al. 2017) and
symmetric ones for the self problems, each frozen once it meets ``tol``. The stopping test —
the fixed-point residual Σ_i w_i·|e^{(old_i − new_i)/ε} − 1|, for balanced problems exactly the
plan's L1 marginal error, read at no extra pass — is evaluated every ``check_every``
iterations: the only device→host syncs of a solve are that test and one read at the start
(the diameter, together with every data check of the inputs). Batches, sharding across
processes (:mod:`cma_kernels.sharded`) and the Triton/PyTorch backends all run this loop
through the :class:`~cma_kernels.cost.CostOperator` interface.

Gradients use the envelope theorem at the converged potentials — nothing is differentiated
through the iterations. With the plan's row masses r_i = a_i (balanced) or a_i·e^{−f_i/ρ}:

    ∂OT_ε/∂x_i = 2·r_i·(x_i − B_i),   B_i = Σ_j softmax_j(log b_j + (g_j − C_ij)/ε)·y_j
    ∂S_ε/∂x_i  = 2·r_i·(x_i − B_i) − 2·r^xx_i·(x_i − B^xx_i)

B is the barycentric projection (the plan's row normalised to its mass), robust before
convergence. Second derivatives are not supported (the backward is not itself
differentiable). The weights ``a``, ``b`` are treated as constants.

The forward and backward are registered as ``torch.library`` custom ops, so models using the
loss still compile with ``torch.compile`` (the solver is one opaque node), and autocast never
reaches inside (the solver computes in float32, float64 for float64 inputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from . import _checks, sharded
from .cost import CostOperator
from .dispatch import resolve_backend

DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 1000
#: Iterations between two stopping tests on accelerators (each test is a device→host sync).
#: CPU tensors test every iteration: there a host read costs nothing.
DEFAULT_CHECK_EVERY = 4
#: Over-relaxation ω of the x↔y updates at the final ε (falls back to 1 if the error grows).
OVERRELAX = 1.5


def epsilon_schedule(diameter: float, blur: float, scaling: float) -> list[float]:
    """ε values from diameter² down to blur², the blur shrinking by ``scaling`` each step.

    ``[diameter², (diameter·s)², (diameter·s²)², …, blur²]`` — GeomLoss's schedule with p = 2.
    """
    diameter = max(diameter, blur)
    steps = max(0, math.ceil(math.log(blur / diameter) / math.log(scaling)))
    return [(diameter * scaling**k) ** 2 for k in range(steps)] + [blur**2]


def damping(eps: float, reach: float | None) -> float:
    """λ = 1/(1 + ε/ρ), ρ = reach², the unbalanced soft-min's contraction (1 when balanced)."""
    return 1.0 if reach is None else 1.0 / (1.0 + eps / reach**2)


class Potentials(NamedTuple):
    """Dual potentials at the final ε, each (B, ·): (f, g) for x↔y, p for x↔x, q for y↔y (empty
    if not debiased); iterations at the final ε; the cost operators' passes and cost entries."""

    f: Tensor
    g: Tensor
    p: Tensor
    q: Tensor
    iterations: int
    passes: int
    cost_entries: int


def residual(cost: CostOperator, log_w: Tensor, old: Tensor, new: Tensor, eps: float) -> Tensor:
    """Σ_i w_i·|e^{(old_i − new_i)/ε} − 1| per batch item (B,), over every process.

    If ``new`` is the (balanced) update of ``old``, the plan built from ``old`` has row sums
    r_i = w_i·e^{(old_i − new_i)/ε}, so this is the L1 marginal error Σ_i |r_i − w_i|.
    """
    return cost.total((log_w.exp() * torch.expm1((old - new) / eps).abs()).sum(dim=-1))


class SelfProblems:
    """OT_ε(x, x) and OT_ε(y, y), advanced together by symmetric updates p ← ½(p + λT(p)).

    When both clouds have the same shape they are stacked into one operator of batch 2B, so
    each update is a single reduction (one kernel launch) for both problems.
    """

    def __init__(self, make: Callable[..., CostOperator], x: Tensor, y: Tensor, stack: bool):
        self.batch = x.shape[0]
        if stack:
            # a sharded factory stacks its already-gathered clouds too (no new all-gather)
            both = make.stack(x, y) if hasattr(make, "stack") else torch.cat([x, y])
            self.costs = [make(both, both)]
        else:
            self.costs = [make(x, x), make(y, y)]

    def _split(self, t: Tensor) -> list[Tensor]:
        return list(t.split(self.batch)) if len(self.costs) == 1 else [t]

    def _join(self, parts: list[Tensor]) -> list[Tensor]:
        return [torch.cat(parts)] if len(self.costs) == 1 else parts

    def softmin(self, h: list[Tensor], eps: float) -> list[Tensor]:
        """[softmin over x of h_x, softmin over y of h_y]."""
        out = [c.softmin_rows(hc, eps) for c, hc in zip(self.costs, self._join(h), strict=True)]
        return [part for t in out for part in self._split(t)]

    def barycenter(self, h: list[Tensor], eps: float) -> list[Tensor]:
        """[barycenters of x against x, of y against y] for the plans exp(h − C/ε)."""
        out = [c.barycenter_rows(hc, eps) for c, hc in zip(self.costs, self._join(h), strict=True)]
        return [part for t in out for part in self._split(t)]

    @property
    def passes(self) -> int:
        return sum(c.passes for c in self.costs)

    @property
    def cost_entries(self) -> int:
        return sum(c.cost_entries for c in self.costs)


def _iterate(
    cost: CostOperator,
    selfs: SelfProblems | None,
    log_a: Tensor,
    log_b: Tensor,
    eps_list: list[float],
    reach: float | None,
    tol: float,
    max_iter: int,
    check_every: int,
) -> tuple[Tensor, Tensor, list[Tensor], int]:
    """The one solver loop: returns (f, g, [p, q], iterations at the final ε)."""
    logs = [log_a, log_b]
    lam = damping(eps_list[0], reach)
    f = lam * cost.softmin_rows(log_b, eps_list[0])
    g = lam * cost.softmin_cols(log_a, eps_list[0])
    s = [lam * t for t in selfs.softmin(logs, eps_list[0])] if selfs else []
    for eps in eps_list[:-1]:  # annealing: symmetric updates of every problem
        lam = damping(eps, reach)
        f, g = (
            0.5 * (f + lam * cost.softmin_rows(log_b + g / eps, eps)),
            0.5 * (g + lam * cost.softmin_cols(log_a + f / eps, eps)),
        )
        if selfs:
            new = selfs.softmin([lw + p / eps for lw, p in zip(logs, s, strict=True)], eps)
            s = [0.5 * (p + lam * n) for p, n in zip(s, new, strict=True)]
    eps = eps_list[-1]
    lam = damping(eps, reach)
    omega, last_err, self_done = OVERRELAX, math.inf, selfs is None
    for it in range(max_iter):
        check = it % check_every == 0
        f_new = lam * cost.softmin_rows(log_b + g / eps, eps)
        if not self_done:
            h = [lw + p / eps for lw, p in zip(logs, s, strict=True)]
            new = [lam * n for n in selfs.softmin(h, eps)]
        if check:  # one host read for every problem's residual
            errs = [residual(cost, log_a, f, f_new, eps).amax()]
            if not self_done:
                errs += [
                    residual(cost, lw, p, n, eps).amax()
                    for lw, p, n in zip(logs, s, new, strict=True)
                ]
            host = torch.stack(errs).tolist()
            if not all(math.isfinite(e) for e in host):
                raise FloatingPointError("the Sinkhorn iterations diverged (non-finite residual)")
            if not self_done and max(host[1:]) <= tol:  # freeze the converged self problems
                self_done, s = True, new
            if host[0] <= tol and self_done:
                return f_new, g, s, it
            if host[0] > last_err:
                omega = 1.0
            last_err = host[0]
        if not self_done:
            s = [0.5 * (p + n) for p, n in zip(s, new, strict=True)]
        f = torch.lerp(f, f_new, omega) if omega != 1.0 else f_new
        g_new = lam * cost.softmin_cols(log_a + f / eps, eps)
        g = torch.lerp(g, g_new, omega) if omega != 1.0 else g_new
    return f, g, s, max_iter


def _backend_ops(backend: str):
    if backend == "triton":
        from . import triton as ops
    else:
        from . import reference as ops
    return ops


def _cost_factory(backend: str, strategy: str, group_id: int) -> Callable[..., CostOperator]:
    """make(x, y, shift=None) for the backend, sharded across processes when ``group_id`` ≥ 0."""
    ops = _backend_ops(backend)
    if group_id >= 0:
        return sharded.cost_factory(group_id, ops, strategy)
    return lambda x, y, shift=None: ops.make_cost(x, y, shift, strategy)


def _log_weights(a: Tensor, b: Tensor, group_id: int) -> tuple[Tensor, Tensor]:
    """log a, log b of the weights normalised to sum 1 (over every process when sharded)."""
    total = sharded.total_fn(group_id)
    return _checks.normalized(a, total).log(), _checks.normalized(b, total).log()


def _stackable(cost: CostOperator) -> bool:
    """Stack the self problems when both clouds (every shard of them) have the same shape and
    the operator allows it (:attr:`CostOperator.stacks_self_problems`)."""
    if isinstance(cost, sharded.ShardedCost):
        return cost.x_sizes == cost.y_sizes
    return cost.stacks_self_problems and cost.x.shape == cost.y.shape


def solve(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    *,
    blur: float,
    scaling: float,
    reach: float | None,
    tol: float,
    max_iter: int,
    check_every: int,
    debias: bool,
    backend: str,
    strategy: str = "auto",
    group_id: int = -1,
    diameter: float | None = None,
) -> Potentials:
    """Converged potentials of the x↔(y + shift) problem and, if ``debias``, the self problems.

    x (B, N, d), y (B, M, d), a (B, N), b (B, M), shift (B, d) or None. Raises a ValueError
    naming the input if any data check fails (read in the same host sync as the diameter).
    ``diameter`` (if given) replaces the clouds' measured diameter as the ε-schedule's start.
    """
    make = _cost_factory(backend, strategy, group_id)
    cost = make(x, y, shift)
    clouds = {"x": x, "y": y} | ({} if shift is None else {"shift": shift})
    weights = {"a": a, "b": b}
    findings = _checks.data_problems(clouds, weights, total=cost.total)
    head = torch.cat([cost.diameter().reshape(1).to(findings), findings])
    host = cost.reduce_max(head).tolist()  # the one host read before the loop
    where = " on at least one rank" if group_id >= 0 else ""
    _checks.raise_problems(host[1:], clouds, weights, where)
    if not math.isfinite(host[0]):
        raise ValueError("x: the clouds' diameter is not finite (values too large?)")
    eps_list = epsilon_schedule(host[0] if diameter is None else diameter, blur, scaling)
    log_a, log_b = _log_weights(a, b, group_id)
    selfs = SelfProblems(make, x, y, _stackable(cost)) if debias else None
    f, g, s, iters = _iterate(
        cost, selfs, log_a, log_b, eps_list, reach, tol, max_iter, check_every
    )
    p, q = s if debias else (x.new_empty(0), x.new_empty(0))
    passes = cost.passes + (selfs.passes if selfs else 0)
    entries = cost.cost_entries + (selfs.cost_entries if selfs else 0)
    return Potentials(f, g, p, q, iters, passes, entries)


def dual_value(
    a: Tensor,
    b: Tensor,
    pot: Potentials,
    eps: float,
    reach: float | None,
    debias: bool,
    total: Callable[[Tensor], Tensor] = lambda t: t,
) -> Tensor:
    """S_ε (or OT_ε) from the potentials, per batch item (B,) — see the module docstring."""

    def dot(w: Tensor, v: Tensor) -> Tensor:
        return total((w * v).sum(dim=-1))

    if reach is None:
        value = dot(a, pot.f) + dot(b, pot.g)
        return value - dot(a, pot.p) - dot(b, pot.q) if debias else value
    rho = reach**2
    weight = rho + eps / 2

    def mass(v: Tensor) -> Tensor:
        return torch.exp(-v / rho)

    if debias:
        return weight * (dot(a, mass(pot.p) - mass(pot.f)) + dot(b, mass(pot.q) - mass(pot.g)))
    return weight * (dot(a, 1 - mass(pot.f)) + dot(b, 1 - mass(pot.g)))


# --------------------------------------------------------------------------------------
# custom ops: one opaque forward node and its envelope-theorem backward
# --------------------------------------------------------------------------------------


@torch.library.custom_op("cma_kernels::sinkhorn_forward", mutates_args=())
def _sinkhorn_forward(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    blur: float,
    scaling: float,
    reach: float | None,
    tol: float,
    max_iter: int,
    check_every: int,
    debias: bool,
    backend: str,
    strategy: str,
    group_id: int,
    diameter: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(value (B,), f, g, p, q): S_ε (or OT_ε) and the converged potentials."""
    with torch.no_grad():
        pot = solve(
            x, y, a, b, shift, blur=blur, scaling=scaling, reach=reach, tol=tol,
            max_iter=max_iter, check_every=check_every, debias=debias, backend=backend,
            strategy=strategy, group_id=group_id, diameter=diameter,
        )  # fmt: skip
        log_a, log_b = _log_weights(a, b, group_id)
        total = sharded.total_fn(group_id)
        value = dual_value(log_a.exp(), log_b.exp(), pot, blur * blur, reach, debias, total)
    return value, pot.f, pot.g, pot.p, pot.q


@_sinkhorn_forward.register_fake
def _(x, y, a, b, shift, blur, scaling, reach, tol, max_iter, check_every, debias, backend,
      strategy, group_id, diameter):  # fmt: skip
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    return (
        x.new_empty(batch),
        x.new_empty(batch, n),
        x.new_empty(batch, m),
        x.new_empty(batch, n) if debias else x.new_empty(0),
        x.new_empty(batch, m) if debias else x.new_empty(0),
    )


def _row_mass(w: Tensor, potential: Tensor, reach: float | None) -> Tensor:
    """The plan's row masses r_i = w_i (balanced) or w_i·e^{−f_i/ρ}, as a (B, n, 1) column."""
    r = w if reach is None else w * torch.exp(-potential / reach**2)
    return r.unsqueeze(-1)


@torch.library.custom_op("cma_kernels::sinkhorn_backward", mutates_args=())
def _sinkhorn_backward(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    shift: Tensor | None,
    f: Tensor,
    g: Tensor,
    p: Tensor,
    q: Tensor,
    eps: float,
    reach: float | None,
    debias: bool,
    backend: str,
    strategy: str,
    group_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(∂/∂x, ∂/∂y, ∂/∂shift) of Σ_b grad_b·value_b, from the plans' barycenters.

    ∂OT(x, ỹ)/∂x_i = 2r_i(x_i − B_i), ∂OT/∂ỹ_j = 2c_j(ỹ_j − B^y_j) (ỹ = y + shift); the self
    terms give −2r^xx_i(x_i − B^xx_i). Sharded: the local rows' gradients, times the number of
    processes (the DDP convention: their average is the whole batch's gradient).
    """
    make = _cost_factory(backend, strategy, group_id)
    log_a, log_b = _log_weights(a, b, group_id)
    a, b = log_a.exp(), log_b.exp()
    cost = make(x, y, shift)
    scale = (2.0 * sharded.world_size(group_id)) * grad.view(-1, 1, 1)
    y_sh = y if shift is None else y + shift.unsqueeze(-2)
    # 2r(x − B^x) and 2c(ỹ − B^y), built in place on the barycenter buffers
    grad_x = cost.barycenter_rows(log_b + g / eps, eps).neg_().add_(x)
    grad_x.mul_(_row_mass(a, f, reach) * scale)
    grad_y = cost.barycenter_cols(log_a + f / eps, eps).neg_().add_(y_sh)
    grad_y.mul_(_row_mass(b, g, reach) * scale)
    stack = _stackable(cost)
    del cost
    # the shift's gradient is this process's part (sharded: summed by the means' all-reduce)
    grad_shift = grad_y.sum(dim=-2) if shift is not None else x.new_zeros(x.shape[0], x.shape[-1])
    if debias:
        selfs = SelfProblems(make, x, y, stack)
        bxx, byy = selfs.barycenter([log_a + p / eps, log_b + q / eps], eps)
        grad_x.sub_(bxx.neg_().add_(x).mul_(_row_mass(a, p, reach) * scale))
        del bxx
        grad_y.sub_(byy.neg_().add_(y).mul_(_row_mass(b, q, reach) * scale))
    return grad_x, grad_y, grad_shift


@_sinkhorn_backward.register_fake
def _(grad, x, y, a, b, shift, f, g, p, q, eps, reach, debias, backend, strategy, group_id):
    return torch.empty_like(x), torch.empty_like(y), x.new_empty(x.shape[0], x.shape[-1])


_SETTINGS = ("blur", "scaling", "reach", "tol", "max_iter", "check_every", "debias", "backend",
             "strategy", "group_id", "diameter")  # fmt: skip


def _setup_context(ctx, inputs, output) -> None:
    x, y, a, b, shift, *settings = inputs
    _value, f, g, p, q = output
    ctx.save_for_backward(x, y, a, b, shift, f, g, p, q)
    ctx.settings = dict(zip(_SETTINGS, settings, strict=True))
    ctx.has_shift = shift is not None


def _backward(ctx, grad_value, *_unused):
    x, y, a, b, shift, f, g, p, q = ctx.saved_tensors
    s = ctx.settings
    gx, gy, gs = _sinkhorn_backward(
        grad_value, x, y, a, b, shift, f, g, p, q, s["blur"] ** 2, s["reach"], s["debias"],
        s["backend"], s["strategy"], s["group_id"],
    )  # fmt: skip
    return (gx, gy, None, None, gs if ctx.has_shift else None) + (None,) * len(_SETTINGS)


_sinkhorn_forward.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """Validated inputs of a solve, batched: x (B, N, d), y (B, M, d), a (B, N), b (B, M)."""

    x: Tensor
    y: Tensor
    a: Tensor
    b: Tensor
    shift: Tensor | None
    batched: bool
    backend: str
    group_id: int


def prepare(
    x: Tensor,
    y: Tensor,
    a: Tensor | None,
    b: Tensor | None,
    shift: Tensor | None,
    backend: str,
    group: object = None,
) -> Problem:
    """Structural checks, dtype, batch axis and weights (uniform over every process's points)."""
    x, y = _checks.check_pair(x, y)
    resolved = resolve_backend(backend, x, y)
    dtype = _checks.compute_dtype(x, y)
    batched = x.dim() == 3
    a = _checks.check_weights("a", a, x, dtype)
    b = _checks.check_weights("b", b, y, dtype)
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
        a = None if a is None else a.unsqueeze(0)
        b = None if b is None else b.unsqueeze(0)
    group_id = sharded.register(group, x, y)
    n_total, m_total = sharded.global_sizes(group_id, x, y)
    a = _checks.uniform(x, dtype, n_total) if a is None else a
    b = _checks.uniform(y, dtype, m_total) if b is None else b
    if shift is not None:
        want = (x.shape[0], x.shape[-1]) if batched else (x.shape[-1],)
        if not isinstance(shift, Tensor) or tuple(shift.shape) != want:
            raise ValueError(f"shift: expected a tensor of shape {want}")
        shift = shift.to(dtype).reshape(x.shape[0], x.shape[-1])
    return Problem(x.to(dtype), y.to(dtype), a, b, shift, batched, resolved, group_id)


def sinkhorn_divergence(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    blur: float = 0.05,
    scaling: float = 0.5,
    reach: float | None = None,
    debias: bool = True,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    check_every: int | None = None,
    backend: str = "auto",
    strategy: str = "auto",
    shift: Tensor | None = None,
    group: object = None,
    diameter: float | None = None,
) -> Tensor:
    r"""Debiased Sinkhorn divergence S_ε(x, y) (or OT_ε(x, y) with ``debias=False``).

    S_ε(x, y) = OT_ε(x, y) − ½·OT_ε(x, x) − ½·OT_ε(y, y),   C_ij = ‖x_i − y_j‖²,   ε = blur².

    Args:
        x: (N, d) or batched (B, N, d) points; y: (M, d) or (B, M, d) (fp16/bf16 are computed
            in float32).
        a, b: optional non-negative weights summing to 1, shape (N,) / (B, N) (default
            uniform); constants.
        blur: length scale of the entropic blur, ε = blur².
        scaling: ε-scaling factor on the blur per annealing step, in (0, 1).
        reach: unbalanced transport: the marginal constraints become penalties reach²·KL
            (Séjourné et al. 2019); ``None`` (default) is balanced.
        debias: subtract the self terms (S_ε ≥ 0, S_ε(x, x) = 0); else return OT_ε.
        tol: stop at the final ε when every problem's fixed-point residual (for balanced
            problems the plan's L1 marginal error Σ_i |Σ_j P_ij − a_i|) is ≤ tol.
        max_iter: cap on iterations at the final ε.
        check_every: iterations between stopping tests (host syncs); default 1 on the CPU,
            ``DEFAULT_CHECK_EVERY`` on accelerators.
        backend: "auto" (Triton on CUDA, else reference), "triton" or "reference".
        strategy: reference path only: "tensorized", "chunked" or "auto" (by size).
        shift: optional (d,) — or (B, d) — translation of y, differentiable: S_ε(x, y + shift).
        group: a ``torch.distributed`` process group (or ``True`` for the default group): x and
            y are this process's shards of the clouds, every process gets the whole problem's
            value, and the gradients of its own points scaled by the number of processes (so
            that DDP's gradient averaging yields the whole batch's gradient). See
            :mod:`cma_kernels.sharded`.
        diameter: start of the ε-schedule (ε₀ = diameter²) instead of the clouds' measured
            bounding-box diagonal (GeomLoss's ``diameter``).

    Returns:
        A 0-dim tensor (shape (B,) for batched inputs), float64 for float64 inputs, else
        float32; differentiable in x, y (and ``shift``) through the envelope theorem.
    """
    prob = prepare(x, y, a, b, shift, backend, group)
    settings = _solver_settings(blur, scaling, reach, tol, max_iter, check_every, prob.x)
    value, *_ = _sinkhorn_forward(
        prob.x, prob.y, prob.a, prob.b, prob.shift, *settings, debias, prob.backend, strategy,
        prob.group_id, None if diameter is None else _checks.check_positive("diameter", diameter),
    )  # fmt: skip
    return value if prob.batched else value[0]


def _solver_settings(
    blur: float,
    scaling: float,
    reach: float | None,
    tol: float,
    max_iter: int,
    check_every: int | None,
    like: Tensor,
) -> tuple[float, float, float | None, float, int, int]:
    """Validated (blur, scaling, reach, tol, max_iter, check_every)."""
    blur = _checks.check_positive("blur", blur)
    scaling = _checks.check_scaling(scaling)
    reach = None if reach is None else _checks.check_positive("reach", reach)
    tol = _checks.check_positive("tol", tol)
    max_iter = _checks.check_count("max_iter", max_iter)
    if check_every is None:
        check_every = 1 if like.device.type == "cpu" else DEFAULT_CHECK_EVERY
    check_every = _checks.check_count("check_every", check_every)
    return blur, scaling, reach, tol, max_iter, check_every


def sinkhorn_potentials(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    blur: float = 0.05,
    scaling: float = 0.5,
    reach: float | None = None,
    debias: bool = True,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    check_every: int | None = None,
    backend: str = "auto",
    strategy: str = "auto",
    diameter: float | None = None,
) -> Potentials:
    """The converged dual potentials (no gradient) of :func:`sinkhorn_divergence`'s problem.

    f (B, N) and g (B, M) for x↔y, p and q for the self problems (empty unless ``debias``);
    2-D inputs give B = 1. The debiased potentials of GeomLoss are f − p and g − q.
    """
    prob = prepare(x, y, a, b, None, backend)
    blur, scaling, reach, tol, max_iter, check_every = _solver_settings(
        blur, scaling, reach, tol, max_iter, check_every, prob.x
    )
    with torch.no_grad():
        return solve(
            prob.x, prob.y, prob.a, prob.b, None, blur=blur, scaling=scaling, reach=reach,
            tol=tol, max_iter=max_iter, check_every=check_every, debias=debias,
            backend=prob.backend, strategy=strategy,
            diameter=None if diameter is None else _checks.check_positive("diameter", diameter),
        )  # fmt: skip
