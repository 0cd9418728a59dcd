"""Compile every Triton kernel of cma_kernels for a real GPU target, on the CPU; print JSON.

Run without ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` returns a Python
function, not a compilable kernel). Each case is (kernel, constexprs, pointer dtypes); the
output is ``{"compiled": [ids], "failed": {id: error}}``.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET=1"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cma_kernels.triton import _centroid, _common, _config, _sqdist, _streaming  # noqa: E402

FLOAT_ARGS = ("scale2", "out_scale")


def signature(fn, constexprs: dict, dtypes: dict[str, str]) -> dict[str, str]:
    """Pointers fp32 unless ``dtypes`` says otherwise, floats fp32, other arguments i32."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = dtypes.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def cases():
    """(id, kernel, constexprs, pointer dtypes) for every config a GPU launch can use."""

    def cid(conf):
        return "-".join(f"{k.removeprefix('BLOCK_')}{v}" for k, v in conf.kwargs.items())

    stream, sqdist = _streaming._stream_kernel, _sqdist._sqdist_kernel
    soft = {"BARY": False, "BLOCK_V": 16}  # as _streaming.stream launches the two roles
    bary = {"BARY": True}
    for conf in _config.SOFTMIN_CONFIGS:
        for prec in ("tf32", "bf16"):
            yield f"softmin-{cid(conf)}-{prec}", stream, {"PREC": prec, **soft, **conf.kwargs}, {}
    half = {"r_ptr": "*fp16", "c_ptr": "*fp16"}
    for prec in _config.DOT_PRECISIONS:  # half inputs, every dot precision
        first = _config.SOFTMIN_CONFIGS[0].kwargs
        yield f"softmin-fp16in-{prec}", stream, {"PREC": prec, **soft, **first}, half
    for conf in _config.BARYCENTER_CONFIGS:
        for prec in ("tf32", "bf16"):
            yield f"bary-{cid(conf)}-{prec}", stream, {"PREC": prec, **bary, **conf.kwargs}, {}
    for conf in _config.SQDIST_CONFIGS:
        for shift in (False, True):
            flags = {"HAS_XS": shift, "HAS_YS": shift, "PREC": "tf32"}
            yield f"sqdist-{cid(conf)}-shift{int(shift)}", sqdist, {**flags, **conf.kwargs}, {}
    blocks = {"BLOCK_R": _config.ROWS_BLOCK, "BLOCK_D": _centroid.GPU_BLOCK_D}
    yield "centroid", _centroid._centroid_kernel, blocks, {}
    for mode in (_common.MODE_PLAIN, _common.MODE_PLUS_SHIFT, _common.MODE_MINUS_TWO_SHIFT):
        blocks = {"BLOCK_R": _config.ROWS_BLOCK, "BLOCK_K": _config.FEATURES_BLOCK}
        yield f"rowterm-mode{mode}", _common._rowterm_kernel, {"MODE": mode, **blocks}, {}


def main() -> None:
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    target = GPUTarget("cuda", arch, 32)
    compiled, failed = [], {}
    for name, fn, constexprs, dtypes in cases():
        try:
            kernel = triton.compile(
                ASTSource(fn, signature(fn, constexprs, dtypes), constexprs), target=target
            )
            assert kernel.asm["cubin"], "empty cubin"
            compiled.append(name)
        except Exception as e:  # every failure is reported by name
            failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
    print(json.dumps({"compiled": compiled, "failed": failed}))


if __name__ == "__main__":
    main()
