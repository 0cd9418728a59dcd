"""Triton kernel primitives against their PyTorch reference twins.

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (tests/conftest.py) and unchanged on CUDA.
Shapes are deliberately not multiples of the blocks (N=37, M=53, d=24 or 40 against 32-wide
tiles), so every kernel sees partial row, column and feature tiles, several column tiles (the
online max/sum rescaling) and, for d = 40, several feature chunks. The cost operator and the
centroid are batched — (B, N, d) clouds, one launch per reduction for the whole batch — and are
checked at B = 1 and B = 3 (different data, sizes and shifts per item: a wrong batch stride
shows).

Tolerances. The kernels load any float dtype and compute in fp32; fp16/bf16 inputs are compared
with the float64 reference evaluated on the *same* (exactly upcast) values, so every dtype gets
the fp32 arithmetic tolerance of ``TOL`` (scaled to the quantity). The loss of the half-precision
inputs themselves is checked separately against the unrounded fp32 data (``HALF_INPUT_TOL``).
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from torch import Tensor

import cma_kernels
from cma_kernels import reference
from cma_kernels import triton as tk
from cma_kernels.triton import _common, _config

pytestmark = pytest.mark.triton

#: CPU under the Triton interpreter (CI), CUDA when the kernels are compiled (ci/gpu.sh).
DEVICE = "cpu" if _config.interpreted() else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need TRITON_INTERPRET=1 or a CUDA device", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: (rtol, atol) of Triton vs float64 reference on identical input values, per input dtype.
TOL = {
    torch.float32: (1e-5, 2e-5),
    torch.float16: (1e-5, 2e-5),
    torch.bfloat16: (1e-5, 2e-5),
}
#: Relative error of a squared distance caused by rounding unit-norm inputs to the dtype.
HALF_INPUT_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
#: ε values: blur 0.5 and blur 0.05.
EPSILONS = [0.25, 0.0025]
N, M = 37, 53


def cloud(
    n: int, d: int, seed: int, offset: float = 0.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """n unit-norm points in R^d (CLIP-like), plus ``offset`` on every coordinate."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True) + offset
    return z.to(device=DEVICE, dtype=dtype)


def weights(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    return (w / w.sum()).float().to(DEVICE)


def close(actual: Tensor, expected: Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=atol * scale, check_dtype=False
    )


@pytest.fixture
def split2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split the soft-min's columns over two programs (exercises the chunk merge)."""
    monkeypatch.setattr(_config, "INTERPRET_SPLIT", 2)


# ----------------------------------------------------------------------------- API surface


def test_same_primitives_as_reference() -> None:
    for name in ("sqdist", "centroid", "make_cost"):
        assert callable(getattr(tk, name))
    cost = tk.make_cost(cloud(5, 16, 0)[None], cloud(7, 16, 1)[None], None, strategy="chunked")
    assert isinstance(cost, tk.TritonCost)
    assert isinstance(cost, cma_kernels.CostOperator)


def test_cost_rejects_unbatched_or_mismatched_clouds() -> None:
    x, y = cloud(5, 16, 0), cloud(7, 16, 1)
    with pytest.raises(ValueError, match="x, y"):
        tk.make_cost(x, y)
    with pytest.raises(ValueError, match="x, y"):
        tk.make_cost(x[None], torch.stack([y, y]))
    with pytest.raises(ValueError, match="shift"):
        tk.make_cost(x[None], y[None], torch.zeros(16, device=DEVICE))


def test_interpreter_blocks_are_gpu_legal() -> None:
    for d in (1, 7, 24, 40, 512):
        bk = _config.interpret_block_k(d)
        assert bk >= 16 and bk & (bk - 1) == 0
    b = _config.INTERPRET_BLOCK
    assert b >= 16 and b & (b - 1) == 0


# ----------------------------------------------------------------------------- sqdist


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shifts", ["none", "x", "y", "both"])
def test_sqdist_matches_reference(dtype: torch.dtype, shifts: str) -> None:
    x, y = cloud(N, 24, 0, dtype=dtype), cloud(M, 24, 1, 0.1, dtype=dtype)
    xs = cloud(1, 24, 2)[0] * 0.3 if shifts in ("x", "both") else None
    ys = cloud(1, 24, 3)[0] * 0.3 if shifts in ("y", "both") else None
    got = tk.sqdist(x, y, xs, ys)
    assert got.shape == (N, M) and got.dtype == torch.float32
    want = reference.sqdist(
        x.double(),
        y.double(),
        None if xs is None else xs.double(),
        None if ys is None else ys.double(),
    )
    close(got, want, dtype, scale=4.0)
    assert bool((got >= 0).all())


def test_sqdist_feature_chunks_and_halves_against_fp32_truth() -> None:
    """d = 40 walks two feature chunks; half inputs lose only their own rounding."""
    x, y = cloud(N, 40, 4), cloud(M, 40, 5, 0.05)
    xs = torch.full((40,), 0.02, device=DEVICE)
    close(
        tk.sqdist(x, y, xs, -xs),
        reference.sqdist(x.double(), y.double(), xs.double(), -xs.double()),
        torch.float32,
        4.0,
    )
    truth = reference.sqdist(x.double(), y.double())
    for dtype, rel in HALF_INPUT_TOL.items():
        got = tk.sqdist(x.to(dtype), y.to(dtype)).double()
        assert float((got - truth).abs().max()) <= rel * float(truth.max())


def test_sqdist_self_distance_clamped_at_zero() -> None:
    x = cloud(N, 24, 6, 3.0)  # large offset: cancellation in ‖x‖² + ‖y‖² − 2⟨x, y⟩
    c = tk.sqdist(x, x)
    assert bool((c >= 0).all())
    assert float(c.diagonal().abs().max()) < 1e-4


def test_sqdist_backward_matches_reference() -> None:
    x0, y0 = cloud(N, 24, 7), cloud(M, 24, 8, 0.1)
    s0, t0 = cloud(1, 24, 9)[0] * 0.2, cloud(1, 24, 10)[0] * 0.2
    g = torch.randn(N, M, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    grads = []
    for fn in (tk.sqdist, reference.sqdist):
        x, y, s, t = (v.clone().requires_grad_() for v in (x0, y0, s0, t0))
        (fn(x, y, s, t) * g).sum().backward()
        grads.append([v.grad for v in (x, y, s, t)])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sqdist_half_input_gradient_dtype() -> None:
    x = cloud(N, 24, 12, dtype=torch.bfloat16).requires_grad_()
    y = cloud(M, 24, 13, dtype=torch.bfloat16).requires_grad_()
    tk.sqdist(x, y).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    xr, yr = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    reference.sqdist(xr, yr).sum().backward()
    torch.testing.assert_close(x.grad.float(), xr.grad, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------- centroid


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_centroid_forward_backward(dtype: torch.dtype, weighted: bool, batch: int | None) -> None:
    """Unbatched (n, d) and batched (B, n, d) clouds, one launch; exact backward."""
    shape = () if batch is None else (batch,)
    k = 1 if batch is None else batch
    x0 = torch.stack([cloud(N, 40, 14 + i, dtype=dtype) for i in range(k)]).reshape(*shape, N, 40)
    y0 = torch.stack([cloud(M, 40, 15 + i, 0.2 * i, dtype=dtype) for i in range(k)])
    y0 = y0.reshape(*shape, M, 40)
    if weighted:
        a = torch.stack([weights(N, 16 + i) for i in range(k)]).reshape(*shape, N)
        b = torch.stack([weights(M, 17 + i) for i in range(k)]).reshape(*shape, M)
    else:
        a = torch.full((*shape, N), 1.0 / N, device=DEVICE)
        b = torch.full((*shape, M), 1.0 / M, device=DEVICE)
    up = torch.randn(k, 81, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    up = up.reshape(*shape, 81).to(DEVICE)
    results = []
    for fn, cast in ((tk.centroid, lambda t: t), (reference.centroid, lambda t: t.double())):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        st = fn(cast(x), cast(y), cast(a), cast(b))
        loss = (st.mu_x * up[..., :40]).sum() + (st.mu_y * up[..., 40:80]).sum()
        loss = loss + (st.gap2 * up[..., 80]).sum()
        loss.backward()
        results.append((st, x.grad, y.grad))
    (got, gx, gy), (want, wx, wy) = results
    assert got.mu_x.shape == (*shape, 40) and got.gap2.shape == shape
    for g_, w_ in zip(got, want, strict=True):
        close(g_, w_, dtype)
    rtol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.double(), wx.double(), rtol=rtol, atol=rtol * 1e-1)
    torch.testing.assert_close(gy.double(), wy.double(), rtol=rtol, atol=rtol * 1e-1)


# ----------------------------------------------------------------------------- cost operator


def _problem(
    dtype: torch.dtype, batch: int = 1, d: int = 24, shifted: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """x (B, N, d), y (B, M, d), shift (B, d) or None: different clouds and shifts per item."""
    x = torch.stack([cloud(N, d, 20 + i, dtype=dtype) for i in range(batch)])
    y = torch.stack([cloud(M, d, 30 + i, 0.05 * (i + 1), dtype=dtype) for i in range(batch)])
    shift = torch.stack([cloud(1, d, 40 + i)[0] * 0.25 for i in range(batch)]) if shifted else None
    return x, y, shift


def _potentials(eps: float, batch: int = 1) -> tuple[Tensor, Tensor]:
    """Column vectors h = log w + g/ε (B, M) and (B, N) of a plausible size for ε."""
    g = torch.Generator().manual_seed(23)
    hb = torch.stack([weights(M, 24 + i).log() for i in range(batch)])
    ha = torch.stack([weights(N, 34 + i).log() for i in range(batch)])
    hb = hb + 0.03 * torch.randn(batch, M, generator=g).to(DEVICE) / math.sqrt(eps)
    ha = ha + 0.03 * torch.randn(batch, N, generator=g).to(DEVICE) / math.sqrt(eps)
    return hb, ha


def _reference(x: Tensor, y: Tensor, shift: Tensor | None) -> reference.TensorizedCost:
    """The float64 reference operator on the same (exactly upcast) values."""
    return reference.TensorizedCost(
        x.double(), y.double(), None if shift is None else shift.double()
    )


def _check_reductions(
    tc: tk.TritonCost, rc: reference.TensorizedCost, eps: float, dtype: torch.dtype
) -> None:
    """All four reductions against the reference, shapes and dtypes included."""
    batch, d = tc.batch, tc.d
    hb, ha = _potentials(eps, batch)
    f, g = tc.softmin_rows(hb, eps), tc.softmin_cols(ha, eps)
    assert f.shape == (batch, N) and g.shape == (batch, M) and f.dtype == torch.float32
    close(f, rc.softmin_rows(hb.double(), eps), dtype)
    close(g, rc.softmin_cols(ha.double(), eps), dtype)
    # the barycenters amplify cost rounding by 1/ε; unit-norm data keeps it ~1e-4 at ε=0.0025
    scale = 1.0 / (400 * eps)
    br, bc = tc.barycenter_rows(hb, eps), tc.barycenter_cols(ha, eps)
    assert br.shape == (batch, N, d) and bc.shape == (batch, M, d)
    close(br, rc.barycenter_rows(hb.double(), eps), dtype, scale=scale)
    close(bc, rc.barycenter_cols(ha.double(), eps), dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_cost_reductions_match_reference(
    dtype: torch.dtype, eps: float, shifted: bool, batch: int
) -> None:
    x, y, shift = _problem(dtype, batch, shifted=shifted)
    tc, rc = tk.make_cost(x, y, shift), _reference(x, y, shift)
    _check_reductions(tc, rc, eps, dtype)
    diameter = tc.diameter()
    assert diameter.shape == () and diameter.device == x.device
    assert float(diameter) == pytest.approx(float(rc.diameter()), rel=1e-5)
    assert tc.passes == 4 and tc.cost_entries == 4 * batch * N * M


def test_one_launch_per_reduction_for_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """B = 3: each reduction is one streaming launch whose grid's third axis is the batch."""
    grids: list[tuple[int, ...]] = []
    launch = _config.launch

    def counting(kernel, role, key, grid, args, interpret, **const):
        grids.append(grid(interpret))
        return launch(kernel, role, key, grid, args, interpret, **const)

    monkeypatch.setattr(_config, "launch", counting)
    x, y, shift = _problem(torch.float32, 3)
    tc = tk.make_cost(x, y, shift)
    hb, ha = _potentials(0.25, 3)
    tc.softmin_rows(hb, 0.25), tc.softmin_cols(ha, 0.25)
    tc.barycenter_rows(hb, 0.25), tc.barycenter_cols(ha, 0.25)
    assert len(grids) == 4 and all(g[2] == 3 for g in grids)


@pytest.mark.parametrize("eps", EPSILONS)
def test_cost_feature_chunks(eps: float) -> None:
    """d = 40: two BLOCK_K chunks in the cost and two BLOCK_V output blocks in the barycenter."""
    x, y, shift = _problem(torch.float32, 2, d=40)
    _check_reductions(tk.make_cost(x, y, shift), _reference(x, y, shift), eps, torch.float32)


@pytest.mark.parametrize("eps", EPSILONS)
def test_softmin_column_split_merge(eps: float, split2: None) -> None:
    """Two column chunks per row block and batch item, merged by a (B, split, N) LSE."""
    x, y, shift = _problem(torch.float32, 3)
    tc, rc = tk.make_cost(x, y, shift), _reference(x, y, shift)
    hb, ha = _potentials(eps, 3)
    close(tc.softmin_rows(hb, eps), rc.softmin_rows(hb.double(), eps), torch.float32)
    close(tc.softmin_cols(ha, eps), rc.softmin_cols(ha.double(), eps), torch.float32)


def test_self_problem_shares_the_prologue() -> None:
    x = torch.stack([cloud(N, 24, 26), cloud(N, 24, 27, 0.1)])
    tc, rc = tk.make_cost(x, x), _reference(x, x, None)
    assert tc.v is tc.u and tc._yk is tc._xk
    h = torch.stack([weights(N, 28).log(), weights(N, 29).log()])
    for eps in EPSILONS:
        close(tc.softmin_rows(h, eps), rc.softmin_rows(h.double(), eps), torch.float32)
        close(
            tc.barycenter_rows(h, eps),
            rc.barycenter_rows(h.double(), eps),
            torch.float32,
            1 / (400 * eps),
        )


def test_zero_weights_and_empty_tiles() -> None:
    """h = −inf (zero weight) on a whole 32-column tile of one item: no NaN, as the reference."""
    x, y, shift = _problem(torch.float32, 2)
    b = torch.stack([weights(M, 28), weights(M, 29)])
    b[0, :32] = 0.0
    b[1, 32:] = 0.0
    hb = (b / b.sum(dim=1, keepdim=True)).log()
    tc, rc = tk.make_cost(x, y, shift), _reference(x, y, shift)
    for eps in EPSILONS:
        f = tc.softmin_rows(hb, eps)
        assert bool(torch.isfinite(f).all())
        close(f, rc.softmin_rows(hb.double(), eps), torch.float32)
        close(
            tc.barycenter_rows(hb, eps),
            rc.barycenter_rows(hb.double(), eps),
            torch.float32,
            1 / (400 * eps),
        )


def test_float64_inputs_computed_in_fp32() -> None:
    x, y, shift = _problem(torch.float64, 2)
    tc, rc = tk.make_cost(x, y, shift), _reference(x, y, shift)
    hb, _ = _potentials(0.25, 2)
    f = tc.softmin_rows(hb.double(), 0.25)
    assert f.dtype == torch.float64
    close(f, rc.softmin_rows(hb.double(), 0.25), torch.float32)


def test_mixed_input_dtypes_share_one_operand_type() -> None:
    x, y, shift = _problem(torch.float32, 1)
    tc = tk.make_cost(x, y.half(), shift)
    assert tc._xk[0].dtype == tc._yk[0].dtype == torch.float32
    _check_reductions(tc, _reference(x, y.half(), shift), 0.25, torch.float32)


# ----------------------------------------------------------------------------- custom ops


def test_custom_ops_pass_opcheck() -> None:
    """Schema, autograd registration, fake tensors and AOT dispatch of both custom ops."""
    from cma_kernels.triton import ops

    x, y = cloud(N, 24, 29).requires_grad_(), cloud(M, 24, 30).requires_grad_()
    xs = (cloud(1, 24, 31)[0] * 0.1).requires_grad_()
    torch.library.opcheck(ops._sqdist_op, (x, y, xs, None))
    xb = torch.stack([cloud(N, 24, 32), cloud(N, 24, 33)]).requires_grad_()
    yb = torch.stack([cloud(M, 24, 34), cloud(M, 24, 35)]).requires_grad_()
    a = torch.stack([weights(N, 36), weights(N, 37)])
    b = torch.stack([weights(M, 38), weights(M, 39)])
    torch.library.opcheck(ops._centroid_op, (xb, yb, a, b))


# ----------------------------------------------------------------------------- dot precisions

#: Precisions the interpreter runs (it computes bf16 dots wrongly: bf16 is checked on a GPU).
PRECISIONS = ["tf32x3", "tf32", "fp16"] + ([] if _config.interpreted() else ["bf16"])
HALF_DTYPES = [torch.float16] + ([] if _config.interpreted() else [torch.bfloat16])
_DTYPE_NAME = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _set_precision(monkeypatch: pytest.MonkeyPatch, prec: str) -> None:
    """Select a dot precision (the interpreter otherwise always runs exact ``ieee`` products)."""
    if _config.interpreted():
        monkeypatch.setattr(_config, "dot_precision", lambda: prec)
    else:
        monkeypatch.setenv("CMA_TRITON_DOT_PRECISION", prec)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_dot_precisions(monkeypatch: pytest.MonkeyPatch, prec: str, dtype: torch.dtype) -> None:
    """Every selectable precision on fp32 and half clouds (B = 2, d = 40).

    Exact products (fp32 tolerance, ε = 0.0025): tf32x3 (pre-split TF32 hi/lo operands, p split
    in the kernel), half clouds at tf32 (native fp16/bf16 products), and the cost of fp16 (bf16)
    clouds at fp16 (bf16). Rounded operands (atol 1e-2): the other fp16/bf16 cases, and fp32
    clouds at tf32 on a GPU; their barycenters at ε = 0.25 (rounding the cost by ~1e-3 moves a
    plan at ε = 0.0025 by e^0.4).
    """
    _set_precision(monkeypatch, prec)
    x, y, shift = _problem(dtype, 2, d=40)
    tc, rc = tk.make_cost(x, y, shift), _reference(x, y, shift)
    assert tc.prec == prec
    tf32_exact = dtype != torch.float32 or _config.interpreted()
    exact_cost = prec == "tf32x3" or (prec == "tf32" and tf32_exact) or prec == _DTYPE_NAME[dtype]
    exact_plan = prec == "tf32x3" or (prec == "tf32" and tf32_exact)
    hb, ha = _potentials(0.0025, 2)
    for got, want in (
        (tc.softmin_rows(hb, 0.0025), rc.softmin_rows(hb.double(), 0.0025)),
        (tc.softmin_cols(ha, 0.0025), rc.softmin_cols(ha.double(), 0.0025)),
    ):
        if exact_cost:
            close(got, want, dtype)
        else:
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-2)
    eps = 0.0025 if exact_plan else 0.25
    hb, ha = _potentials(eps, 2)
    for got, want in (
        (tc.barycenter_rows(hb, eps), rc.barycenter_rows(hb.double(), eps)),
        (tc.barycenter_cols(ha, eps), rc.barycenter_cols(ha.double(), eps)),
    ):
        if exact_plan:
            close(got, want, dtype)
        else:
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-2)
    exact_sqdist = prec == "tf32x3" or (prec == "tf32" and _config.interpreted())
    got, want = tk.sqdist(x[0], y[0]), reference.sqdist(x[0].double(), y[0].double())
    if exact_sqdist:
        close(got, want, dtype, scale=4.0)
    else:
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-3)


# ----------------------------------------------------------------------------- operands


def test_pack_pads_aligns_rounds_and_keeps_ready_clouds() -> None:
    x = torch.stack([cloud(N, 40, 40), cloud(N, 40, 41)])
    xp, lo = _common.pack(x, "tf32")
    assert lo is None and xp.shape == (2, N, 48) and xp.is_contiguous()
    assert xp.data_ptr() % (_common.ALIGN * 4) == 0
    assert torch.equal(xp[..., :40], x) and bool((xp[..., 40:] == 0).all())
    z = torch.stack([cloud(N, 32, 42), cloud(N, 32, 43)])
    assert _common.pack(z, "tf32")[0] is z  # contiguous, aligned, d multiple of 16: no copy
    view = torch.stack([cloud(N, 48, 44)])[..., 8:40]  # strided view
    zp = _common.pack(view, "tf32")[0]
    assert zp.is_contiguous() and torch.equal(zp, view)
    assert _common.pack(x.double(), "tf32")[0].dtype == torch.float32
    for prec, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        zq, none = _common.pack(z, prec)
        assert none is None and zq.dtype == dt and torch.equal(zq, z.to(dt))  # one rounding
    assert _common.pack(z.half(), "tf32x3")[1] is None  # half clouds are exact in TF32
    hi, lo = _common.pack(x, "tf32x3")
    assert hi.shape == lo.shape == (2, N, 48) and torch.equal(hi[..., :40] + lo[..., :40], x)


def test_tf32_split_rounds_to_nearest() -> None:
    special = torch.tensor([0.0, -1.0, 1e-30, 7.5e4], device=DEVICE)
    z = torch.cat([cloud(N, 40, 43).flatten() * 3.0, special])
    hi, lo = _common.tf32_split(z)
    assert torch.equal(hi + lo, z)  # the split is exact
    assert bool(((hi.view(torch.int32) & 0x1FFF) == 0).all())  # 10 mantissa bits
    assert bool((lo.abs() <= hi.abs() * 2.0**-11).all())  # nearest: |lo| ≤ half a TF32 ulp


@triton.jit
def _tf32_hi_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, _common._tf32_hi(tl.load(x_ptr + offs)))


def test_kernel_tf32_rounding_matches_its_torch_twin() -> None:
    """``_tf32_hi`` (the barycenter's in-kernel split of p) rounds exactly as ``tf32_split``."""
    p = torch.rand(256, generator=torch.Generator().manual_seed(44)).to(DEVICE)
    p[:4] = torch.tensor([0.0, 1.0, 2.0**-20, 0.99999994], device=DEVICE)
    out = torch.empty_like(p)
    _tf32_hi_kernel[(1,)](p, out, BLOCK=256)
    assert torch.equal(out, _common.tf32_split(p)[0])
