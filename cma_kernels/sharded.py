r"""The Sinkhorn solve sharded across data-parallel processes (``torch.distributed``).

Each of W processes holds its own shard of both clouds: x_r (B, N_r, d), y_r (B, M_r, d), with
N = Σ N_r and M = Σ M_r (shards may be uneven). Per solve (and per backward), every process
gathers the other processes' points once (without gradient; the self problems reuse them) and
then computes only the potentials of its own points against the whole other cloud:

    f_r = λ·softmin_ε(C(x_r, Y), log b + g/ε),     g_r = λ·softmin_ε(C(y_r, X), log a + f/ε),

so the per-process work is O((N_r·M + M_r·N)·d) = O(N·M·d / W) for even shards. Each soft-min
pass all-gathers the vector it reduces against (O(N + M) numbers, never O(N·d)); the solver's
scalars (dual values, stopping residuals, weight sums) are all-reduced. The self problems and
the envelope-theorem backward (each process the barycenters of its own points) run the same
way. All of it is :class:`ShardedCost`, a :class:`~cma_kernels.cost.CostOperator` wrapping the
backend's own operators (Triton or reference), so the one solver loop of
:mod:`cma_kernels.sinkhorn` runs unchanged.

Gradients follow the DDP convention: each process gets W × the gradient of the whole-batch
value with respect to its own points, so that DDP's averaging of parameter gradients yields
the whole batch's gradient (the same convention as gathering the features with gradients,
``torch.distributed.nn.all_gather``).

Communication is counted in :data:`COUNTERS` (bytes this process contributed to collectives).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .cost import CostOperator

#: Groups registered by :func:`register`, by id (the custom ops take an int).
_GROUPS: dict[int, Any] = {}
#: Bytes this process sent into all-gathers / all-reduces, the number of collectives, and how
#: many of them gathered a cloud's points (2 per solve or backward: x and y).
COUNTERS = {"bytes": 0, "collectives": 0, "cloud_gathers": 0}


def register(group: object, x: Tensor, y: Tensor) -> int:
    """An id for ``group`` (−1: not sharded). ``True`` means the default process group."""
    if group is None or group is False:
        return -1
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group: torch.distributed is not initialised (init_process_group first)")
    if group is True:
        group = dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return -1
    for key, known in _GROUPS.items():
        if known is group:
            return key
    key = len(_GROUPS)
    _GROUPS[key] = group
    return key


def world_size(group_id: int) -> int:
    """Processes sharing the problem (1 when not sharded)."""
    return 1 if group_id < 0 else dist.get_world_size(_GROUPS[group_id])


def _count(t: Tensor) -> None:
    COUNTERS["bytes"] += t.numel() * t.element_size()
    COUNTERS["collectives"] += 1


def _all_reduce(t: Tensor, group: Any, op: Any) -> Tensor:
    out = t.clone()
    _count(out)
    dist.all_reduce(out, op=op, group=group)
    return out


def total_fn(group_id: int) -> Callable[[Tensor], Tensor]:
    """Σ over processes of a per-process partial result (identity when not sharded)."""
    if group_id < 0:
        return lambda t: t
    return functools.partial(_all_reduce, group=_GROUPS[group_id], op=dist.ReduceOp.SUM)


def _sizes(group: Any, *local: int) -> list[tuple[int, ...]]:
    """Every process's ``local`` sizes, in rank order (one small all-gather)."""
    mine = torch.tensor(local, dtype=torch.int64)
    if dist.get_backend(group) == "nccl":
        mine = mine.cuda()
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    _count(mine)
    dist.all_gather(out, mine, group=group)
    return [tuple(int(v) for v in t.tolist()) for t in out]


def _gather(group: Any, t: Tensor, sizes: list[int], dim: int) -> Tensor:
    """Concatenation along ``dim`` of every process's ``t`` (uneven lengths padded, then cut)."""
    longest = max(sizes)
    pad = list(t.shape)
    pad[dim] = longest - t.shape[dim]
    padded = torch.cat([t, t.new_zeros(pad)], dim=dim) if pad[dim] else t.contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    _count(padded)
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim=dim)


def global_sizes(group_id: int, x: Tensor, y: Tensor) -> tuple[int, int]:
    """(N, M): the whole clouds' sizes (the local ones when not sharded)."""
    if group_id < 0:
        return x.shape[-2], y.shape[-2]
    sizes = _sizes(_GROUPS[group_id], x.shape[-2], y.shape[-2])
    return sum(s[0] for s in sizes), sum(s[1] for s in sizes)


class ShardedCost(CostOperator):
    """This process's rows of C(X, Y + s): its x_r against all of Y, its y_r against all of X.

    ``softmin_rows(h)`` takes h for this process's y_r and returns f for its x_r (and so on):
    the solver sees only local vectors; the all-gathers happen here.
    """

    def __init__(
        self,
        group: Any,
        make: Callable[..., CostOperator],
        x: Tensor,
        y: Tensor,
        shift: Tensor | None = None,
        gather: Callable[[Tensor, list[int]], Tensor] | None = None,
    ) -> None:
        super().__init__(x, y, shift)
        self.group = group
        sizes = _sizes(group, x.shape[-2], y.shape[-2])
        self.x_sizes = [s[0] for s in sizes]
        self.y_sizes = [s[1] for s in sizes]
        if gather is None:
            gather = functools.partial(_gather_points, group)
        with torch.no_grad():
            xs = gather(x, self.x_sizes)
            self_problem = y is x and shift is None
            ys = xs if self_problem else gather(y, self.y_sizes)
            self.rows = make(x, ys, shift)  # x_r against Y + s
            neg = None if shift is None else -shift
            self.cols = self.rows if self_problem else make(y, xs, neg)  # y_r against X − s

    @property
    def passes(self) -> int:
        return self.rows.passes + (0 if self.cols is self.rows else self.cols.passes)

    @property
    def cost_entries(self) -> int:
        own = 0 if self.cols is self.rows else self.cols.cost_entries
        return self.rows.cost_entries + own

    def _count(self) -> None:  # the wrapped operators count their own work
        pass

    def _softmin_rows(self, h: Tensor, eps: float) -> Tensor:
        return self.rows.softmin_rows(_gather(self.group, h, self.y_sizes, dim=-1), eps)

    def _softmin_cols(self, h: Tensor, eps: float) -> Tensor:
        return self.cols.softmin_rows(_gather(self.group, h, self.x_sizes, dim=-1), eps)

    def _barycenter_rows(self, h: Tensor, eps: float) -> Tensor:
        return self.rows.barycenter_rows(_gather(self.group, h, self.y_sizes, dim=-1), eps)

    def _barycenter_cols(self, h: Tensor, eps: float) -> Tensor:
        out = self.cols.barycenter_rows(_gather(self.group, h, self.x_sizes, dim=-1), eps)
        return out if self.shift is None else out.add_(self.shift.unsqueeze(-2))  # X − s + s

    def total(self, t: Tensor) -> Tensor:
        return _all_reduce(t, self.group, dist.ReduceOp.SUM)

    def reduce_max(self, t: Tensor) -> Tensor:
        return _all_reduce(t, self.group, dist.ReduceOp.MAX)

    def diameter(self) -> Tensor:
        """The whole problem's bounding-box diagonal (the same number as one process's)."""
        ys = self.y_shifted
        hi = torch.maximum(self.x.amax(-2), ys.amax(-2))
        lo = torch.minimum(self.x.amin(-2), ys.amin(-2))
        box = self.reduce_max(torch.stack([hi, -lo]))
        return (box[0] + box[1]).norm(dim=-1).amax()


def _gather_points(group: Any, t: Tensor, sizes: list[int]) -> Tensor:
    COUNTERS["cloud_gathers"] += 1
    return _gather(group, t, sizes, dim=-2)


class ShardedFactory:
    """``make(x, y, shift=None)`` building :class:`ShardedCost` operators for one solve (or one
    backward), all-gathering each cloud once: the x↔y problem and the self problems share the
    gathered copies, and :meth:`stack` builds the stacked self problems' cloud from them."""

    def __init__(self, group: Any, make_local: Callable[..., CostOperator]) -> None:
        self.group, self.make_local = group, make_local
        self._gathered: dict[int, tuple[Tensor, Tensor]] = {}  # id → (cloud, gathered cloud)

    def _known(self, t: Tensor) -> Tensor | None:
        hit = self._gathered.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def gather(self, t: Tensor, sizes: list[int]) -> Tensor:
        """Every process's points of ``t`` (B, ΣN_r, d), gathered on first use."""
        known = self._known(t)
        if known is None:
            known = _gather_points(self.group, t, sizes)
            self._gathered[id(t)] = (t, known)
        return known

    def stack(self, x: Tensor, y: Tensor) -> Tensor:
        """cat([x, y]) along the batch; once x and y are gathered, its gathered copy is the
        cat of theirs (equal shards: the solver stacks only then), so no new all-gather."""
        both = torch.cat([x, y])
        gx, gy = self._known(x), self._known(y)
        if gx is not None and gy is not None and gx.shape == gy.shape:
            self._gathered[id(both)] = (both, torch.cat([gx, gy]))
        return both

    def __call__(self, x: Tensor, y: Tensor, shift: Tensor | None = None) -> ShardedCost:
        return ShardedCost(self.group, self.make_local, x, y, shift, gather=self.gather)


def cost_factory(group_id: int, ops: Any, strategy: str) -> ShardedFactory:
    """make(x, y, shift=None) building a :class:`ShardedCost` over the backend's operators."""

    def make_local(x: Tensor, y: Tensor, shift: Tensor | None = None) -> CostOperator:
        return ops.make_cost(x, y, shift, strategy)

    return ShardedFactory(_GROUPS[group_id], make_local)


def all_reduce_with_grad(t: Tensor, group_id: int) -> Tensor:
    """Σ over processes of ``t``, differentiable (its backward sums the gradients: the DDP
    convention of :mod:`cma_kernels.sharded`)."""
    if group_id < 0:
        return t
    import torch.distributed.nn.functional as dist_nn

    _count(t)
    return dist_nn.all_reduce(t, group=_GROUPS[group_id])
