"""End to end: ``sinkhorn_divergence`` and ``distribution_gap_loss`` on the Triton backend.

The solver loop, ε-scaling, tolerance stop and envelope gradients are shared
(:mod:`cma_kernels.sinkhorn`), so Triton and the reference run the same iterations: values and
gradients must agree to fp32 arithmetic. Under the interpreter these tests use 64-wide tiles
(one tile for N, M ≤ 64) to keep the ~hundreds of kernel launches of a blur = 0.05 solve cheap;
the multi-tile paths are covered by test_triton_kernels.py.

Most tests pin the iteration count (``FIXED``: tol far below fp32 noise, a small ``max_iter``)
so both backends run exactly the same iterations; then values and gradients agree to fp32
arithmetic. Gradient tolerances per input dtype: both backends compute in fp32 from the same
upcast inputs and the gradient is rounded back to the input dtype, so about one ulp of it.
One test runs the real tolerance stop (default tol = 1e-4 in cost units): there the two
backends may stop one iteration apart, so they agree only to solver tolerance (``SOLVER_TOL``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import cma_kernels
from cma_kernels import reference
from cma_kernels.dispatch import resolve_backend
from cma_kernels.triton import _config

pytestmark = pytest.mark.triton

#: CPU under the Triton interpreter (CI), CUDA when the kernels are compiled (ci/gpu.sh).
DEVICE = "cpu" if _config.interpreted() else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 or a CUDA device", allow_module_level=True)

N, M, D = 37, 53, 24
#: (rtol, atol) for values and gradients, per input dtype.
GRAD_TOL = {
    torch.float32: (1e-4, 1e-6),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-4),
}
VALUE_TOL = (1e-5, 1e-6)
#: (value rtol, gradient rtol) when each backend stops on its own at tol = 1e-4: one iteration
#: moves the potentials by ≤ tol, i.e. the plan by ~tol/ε relative.
SOLVER_TOL = (1e-4, 2e-2)


def fixed(max_iter: int) -> dict[str, Any]:
    """Solver settings that run exactly ``max_iter`` iterations at the final ε."""
    return {"tol": 1e-12, "max_iter": max_iter}


@pytest.fixture(autouse=True)
def one_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "INTERPRET_BLOCK", 64)


def cloud(n: int, seed: int, offset: float = 0.0, d: int = D) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    return (z / z.norm(dim=1, keepdim=True) + offset).to(DEVICE)


def weights(n: int, seed: int) -> Tensor:
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.1
    return (w / w.sum()).to(DEVICE)


def run_both(
    fn: Callable[..., Tensor], x0: Tensor, y0: Tensor, **kwargs: Any
) -> Iterator[tuple[float, Tensor, Tensor]]:
    """(value, ∂/∂x, ∂/∂y) for the reference, then the Triton backend."""
    for backend in ("reference", "triton"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        value = fn(x, y, backend=backend, **kwargs)
        value.backward()
        assert x.grad is not None and y.grad is not None
        yield float(value.detach()), x.grad, y.grad


def assert_match(
    results: Iterator[tuple[float, Tensor, Tensor]],
    dtype: torch.dtype,
    solver_tol: bool = False,
) -> None:
    (v_ref, gx_ref, gy_ref), (v_tri, gx_tri, gy_tri) = list(results)
    vtol = (SOLVER_TOL[0], VALUE_TOL[1]) if solver_tol else VALUE_TOL
    assert v_tri == pytest.approx(v_ref, rel=vtol[0], abs=vtol[1])
    rtol, atol = GRAD_TOL[dtype]
    if solver_tol:
        rtol, atol = SOLVER_TOL[1], SOLVER_TOL[1] * float(gx_ref.abs().max())
    assert gx_tri.dtype == dtype
    torch.testing.assert_close(gx_tri.float(), gx_ref.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gy_tri.float(), gy_ref.float(), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_divergence_blur_05(dtype: torch.dtype) -> None:
    x, y = cloud(N, 0).to(dtype), cloud(M, 1, 0.1).to(dtype)
    a, b = (weights(N, 2), weights(M, 3)) if dtype == torch.float32 else (None, None)
    assert_match(
        run_both(cma_kernels.sinkhorn_divergence, x, y, a=a, b=b, blur=0.5, **fixed(10)), dtype
    )


def test_divergence_blur_005_weighted() -> None:
    x, y = cloud(N, 4), cloud(M, 5, 0.05)
    a, b = weights(N, 6), weights(M, 7)
    assert_match(
        run_both(cma_kernels.sinkhorn_divergence, x, y, a=a, b=b, blur=0.05, **fixed(40)),
        torch.float32,
    )


def test_divergence_blur_005_tolerance_stop() -> None:
    """Full solve to the default tolerance at the default blur (~700 soft-min launches)."""
    x, y = cloud(N, 4), cloud(M, 5, 0.05)
    assert_match(
        run_both(cma_kernels.sinkhorn_divergence, x, y, blur=0.05), torch.float32, solver_tol=True
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_divergence_blur_005_half_inputs(dtype: torch.dtype) -> None:
    x, y = cloud(N, 8).to(dtype), cloud(M, 9, 0.05).to(dtype)
    assert_match(run_both(cma_kernels.sinkhorn_divergence, x, y, blur=0.05, **fixed(15)), dtype)


def test_ot_not_debiased() -> None:
    x, y = cloud(N, 10), cloud(M, 11, 0.1)
    assert_match(
        run_both(cma_kernels.sinkhorn_divergence, x, y, blur=0.05, debias=False, **fixed(15)),
        torch.float32,
    )


def test_float64_inputs_keep_their_dtype() -> None:
    x, y = cloud(N, 12).double(), cloud(M, 13, 0.1).double()
    v_tri = cma_kernels.sinkhorn_divergence(x, y, blur=0.5, backend="triton")
    v_ref = cma_kernels.sinkhorn_divergence(x, y, blur=0.5, backend="reference")
    assert v_tri.dtype == torch.float64
    assert float(v_tri) == pytest.approx(float(v_ref), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- alignment loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_distribution_gap_loss_matches_reference(dtype: torch.dtype) -> None:
    """Fused centring (shift) path, non-unit λ, default blur 0.05."""
    x, y = cloud(N, 14).to(dtype), cloud(M, 15, 0.3).to(dtype)
    assert_match(
        run_both(
            cma_kernels.distribution_gap_loss,
            x,
            y,
            lambda_centroid=0.7,
            lambda_distribution=1.3,
            **fixed(20),
        ),
        dtype,
    )


def test_decomposition_holds_on_triton() -> None:
    """G_T² = G_C² + G_D² (both λ = 1) to solver tolerance."""
    x, y = cloud(N, 16), cloud(M, 17, 0.3)
    total = cma_kernels.sinkhorn_divergence(x, y, blur=0.5, backend="triton", tol=1e-6)
    terms = cma_kernels.gap_terms(x, y, blur=0.5, backend="triton", tol=1e-6)
    assert float(terms.centroid + terms.distribution) == pytest.approx(float(total), abs=2e-5)


def test_public_primitives_on_triton() -> None:
    x, y = cloud(N, 18).half(), cloud(M, 19, 0.2).half()
    torch.testing.assert_close(
        cma_kernels.pairwise_sqdist(x, y, backend="triton"),
        cma_kernels.pairwise_sqdist(x, y, backend="reference"),
        rtol=1e-5,
        atol=2e-5,
    )
    st = cma_kernels.centroid_stats(x, y, weights(N, 20), None, backend="triton")
    sr = cma_kernels.centroid_stats(x, y, weights(N, 20), None, backend="reference")
    for got, want in zip(st, sr, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- dispatch


def test_auto_backend_picks_triton_for_cuda_tensors() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        xc = torch.empty(4, 3, device="cuda")
    assert resolve_backend("auto", xc, xc) == "triton"
    assert resolve_backend("auto", torch.zeros(4, 3)) == "reference"


def test_triton_backend_uses_no_reference_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("reference kernel called on the triton path")

    for name in ("make_cost", "sqdist", "centroid"):
        monkeypatch.setattr(reference, name, forbidden)
    x, y = cloud(N, 21).requires_grad_(), cloud(M, 22, 0.2).requires_grad_()
    cma_kernels.distribution_gap_loss(x, y, blur=0.5, backend="triton", max_iter=5).backward()


# ----------------------------------------------------------------------------- no N×M buffer


class AllocationRecorder(TorchDispatchMode):
    """Records the shape of every floating tensor any aten op returns, inside custom ops too.

    A dispatch mode is switched off while it handles an op, so the Python body of our own
    ``cma_kernels::*`` custom ops (the Sinkhorn solver, the kernels' launchers) is run here
    with the mode switched back on; every tensor PyTorch creates in them is then seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None
    ) -> Any:
        from torch._library.custom_ops import OPDEFS

        kwargs = kwargs or {}
        if func.namespace == "cma_kernels":
            with self:
                out = OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.is_floating_point():
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_n_by_m_allocation(backend: str) -> None:
    """The fused path creates no tensor with ≥ min(N, M)² elements; the reference does.

    d = 8 ≪ N, M, so any O(N·M) buffer (cost, plan, x↔x or y↔y cost) stands out against the
    O((N + M)·d) vectors and prologues. The reference run is the positive control.
    """
    n, m = 40, 56
    x, y = cloud(n, 23, d=8).requires_grad_(), cloud(m, 24, 0.2, d=8).requires_grad_()
    rec = AllocationRecorder()
    with rec:
        loss = cma_kernels.distribution_gap_loss(x, y, blur=0.5, backend=backend, max_iter=5)
        loss.backward()
    quadratic = [(f, s) for f, s in rec.shapes if torch.Size(s).numel() >= n * n]
    if backend == "reference":
        assert quadratic, "instrumentation saw no N×M tensor on the reference path"
    else:
        assert not quadratic, quadratic[:5]
        # (the kernels' operands pad d = 8 to a multiple of 16: triton._common.pack)
        assert max(torch.Size(s).numel() for _, s in rec.shapes) <= max(n, m) * 16


# ----------------------------------------------------------------------------- torch.compile


def test_torch_compile_distribution_gap_loss() -> None:
    """A model calling the loss compiles (aot_eager); input checks make it graph-break."""
    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 8).to(DEVICE)
    x, y = torch.randn(40, 8, device=DEVICE), torch.randn(56, 8, device=DEVICE)

    def step(x: Tensor, y: Tensor) -> Tensor:
        return cma_kernels.distribution_gap_loss(
            lin(x), lin(y), blur=0.5, backend="triton", max_iter=5
        )

    eager = step(x, y)
    eager.backward()
    g_eager = lin.weight.grad.clone()
    lin.weight.grad = None
    compiled = torch.compile(step, backend="aot_eager")(x, y)
    compiled.backward()
    assert float(compiled) == pytest.approx(float(eager), rel=1e-6)
    torch.testing.assert_close(lin.weight.grad, g_eager)


def test_torch_compile_fullgraph_custom_ops() -> None:
    """The Triton custom ops themselves trace into one graph (fake impls, registered backward)."""
    from cma_kernels import triton as tk

    torch._dynamo.reset()
    a, b = weights(N, 25), weights(M, 26)

    def f(x: Tensor, y: Tensor) -> Tensor:
        st = tk.centroid(x, y, a, b)
        c = tk.sqdist(x, y, st.mu_x, st.mu_y)
        return c.mean() + st.gap2

    x0, y0 = cloud(N, 27), cloud(M, 28, 0.2)
    grads = []
    for fn in (f, torch.compile(f, backend="aot_eager", fullgraph=True)):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        fn(x, y).backward()
        grads.append((x.grad, y.grad))
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)
