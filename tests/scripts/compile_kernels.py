"""Compile every Triton kernel config of cma_kernels for real GPUs on the CPU; report resources.

Each case is one (kernel, GPU config, dot precision, input dtype, arch), compiled ahead of time
exactly as a launch would: the config's own ``num_warps``/``num_stages``, the signature and
16-divisibility specialisation of a d = 512 problem (aligned pointers, D and row strides
multiples of 16, odd row counts), for ``sm_90`` (H100/H200) and/or ``sm_80`` (A100).

Registers and spills come from the ptxas log of the compile itself: Triton runs the wheel's
``ptxas -v`` with its own flags and prints the log when ``knobs.nvidia.dump_ptxas_log`` is set
(``always_compile`` keeps the cache from skipping it). Shared memory per CTA is the compiled
kernel's ``metadata.shared``. Occupancy is computed from those with the SM limits below (the
CUDA occupancy calculator's rules: registers allocated per warp in units of 256, per
sub-partition; 1 KB of shared memory reserved per CTA).

Usage (without ``TRITON_INTERPRET``: under the interpreter ``@triton.jit`` returns no kernel)::

    python tests/scripts/compile_kernels.py [--arch 90 80] [--jobs N] [--only SUBSTR]
                                            [--json PATH] [--markdown PATH]

Prints one JSON object ``{"results": [...]}`` on the last line of stdout, one record per case
(``error`` is ``null`` when it compiled). ``--markdown`` writes the per-arch tables of
docs/kernels.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET=1"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cma_kernels.triton import _centroid, _common, _config, _sqdist, _streaming  # noqa: E402

#: Dot precisions a user can select on a GPU (``ieee`` is a debugging mode, not tuned).
PRECISIONS = tuple(p for p in _config.DOT_PRECISIONS if p != "ieee")
#: Element types of the embedding pointers (everything else is fp32).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INPUT_DTYPES = tuple(DTYPES)
#: Specialisations: ``packed`` (the streaming and sqdist kernels: pointers 16-byte-aligned, D and
#: row strides multiples of 16, vector loads), ``aligned`` (the same for the caller's tensors, e.g.
#: d = 512) and ``any`` (nothing divisible: d = 40 or a sliced view, scalar loads).
SPECS = ("packed", "aligned", "any")
#: Scalar arguments of float type (the other scalars are i32).
FLOAT_ARGS = ("scale2", "out_scale")
#: Integer arguments that are multiples of 16 in a d = 512 problem (Triton specialises them).
DIVISIBLE_ARGS = ("D", "stride_r", "stride_c", "stride_x", "stride_y", "stride_z", "cols_per_split")
DIVISIBLE_ARGS += ("stride_rb", "stride_cb", "stride_xb", "stride_yb", "stride_zb", "stride_sb")


@dataclass(frozen=True)
class Arch:
    """Per-SM limits used for occupancy."""

    regs: int  # 32-bit registers per SM
    warps: int  # resident warps per SM
    ctas: int  # resident CTAs per SM
    smem: int  # shared memory per SM available to CTAs, bytes
    smem_cta: int  # largest shared memory per CTA, bytes
    smem_reserved: int = 1024  # reserved by the system per CTA
    sub_partitions: int = 4  # register file split across the SM's four schedulers
    reg_unit: int = 256  # registers are allocated per warp in multiples of this


ARCHS = {
    90: Arch(regs=65536, warps=64, ctas=32, smem=228 * 1024, smem_cta=227 * 1024),
    80: Arch(regs=65536, warps=64, ctas=32, smem=164 * 1024, smem_cta=163 * 1024),
}


def occupancy(arch: Arch, regs: int, smem: int, num_warps: int) -> int:
    """Resident CTAs per SM allowed by registers, shared memory, warps and the CTA limit."""
    per_warp = -(-regs * 32 // arch.reg_unit) * arch.reg_unit
    warps_by_regs = (arch.regs // arch.sub_partitions // per_warp) * arch.sub_partitions
    by_regs = warps_by_regs // num_warps
    by_smem = arch.smem // (smem + arch.smem_reserved)
    by_warps = arch.warps // num_warps
    return min(by_regs, by_smem, by_warps, arch.ctas) if smem <= arch.smem_cta else 0


@dataclass
class Case:
    """One compile: kernel role, config, precision, input dtype and target."""

    kernel: str
    config: str
    prec: str
    dtype: str
    spec: str
    arch: int
    num_warps: int
    num_stages: int
    maxnreg: int | None
    blocks: dict[str, int]
    fn_name: str = field(repr=False)
    constexprs: dict[str, Any] = field(repr=False)
    pointers: dict[str, str] = field(repr=False)


KERNELS = {
    "stream": _streaming._stream_kernel,
    "sqdist": _sqdist._sqdist_kernel,
    "centroid": _centroid._centroid_kernel,
    "rowterm": _common._rowterm_kernel,
}


def config_id(conf: triton.Config) -> str:
    blocks = "-".join(f"{k.removeprefix('BLOCK_')}{v}" for k, v in conf.kwargs.items())
    return f"{blocks} w{conf.num_warps} s{conf.num_stages} r{conf.maxnreg}"


def _case(
    arch: int,
    kernel: str,
    conf: triton.Config,
    prec: str,
    dtype: str,
    spec: str,
    fn: str,
    const: dict[str, Any],
    ptrs: tuple[str, ...],
) -> Case:
    return Case(
        kernel, config_id(conf), prec, dtype, spec, arch, conf.num_warps, conf.num_stages,
        conf.maxnreg, dict(conf.kwargs), fn, {**const, **conf.kwargs},
        {p: f"*{dtype}" for p in ptrs},
    )  # fmt: skip


def cases(archs: tuple[int, ...], specs: tuple[str, ...] = SPECS) -> Iterator[Case]:
    """Every (kernel, config, precision, pointer type, specialisation, arch) a launch compiles.

    The streaming and sqdist launchers pack their clouds (:func:`_common.pack`), so they only
    ever see the ``packed`` specialisation, and the streaming kernel only the operand types the
    packing produces (fp16/bf16 precisions round the clouds once). The one-pass kernels read
    the caller's tensors.
    """
    for arch in archs:
        case = functools.partial(_case, arch)
        if "packed" in specs:
            for prec in PRECISIONS:
                ops = {_common.operand_dtype(prec, DTYPES[t]) for t in INPUT_DTYPES}
                for op in (t for t in INPUT_DTYPES if DTYPES[t] in ops):
                    split = prec == "tf32x3" and op == "fp32"  # as _common.pack
                    ptrs = ("r_ptr", "c_ptr", "rlo_ptr", "clo_ptr")
                    for role, bary in (("softmin", False), ("barycenter", True)):
                        const = {"PREC": prec, "SPLIT": split, "BARY": bary}
                        const.update(_streaming.role_constexprs(bary))
                        for conf in _config.gpu_configs(role, prec):
                            yield case(role, conf, prec, op, "packed", "stream", const, ptrs)
                for dtype in INPUT_DTYPES:
                    const = {"HAS_XS": True, "HAS_YS": True, "PREC": prec}
                    for conf in _config.gpu_configs("sqdist", prec):
                        ptrs = ("x_ptr", "y_ptr")
                        yield case("sqdist", conf, prec, dtype, "packed", "sqdist", const, ptrs)
            # the row terms of the cost operator's packed clouds (split: fp32 TF32 hi + lo)
            conf = _common.rowterm_gpu_config()
            for dtype, split in (("fp32", True), *((t, False) for t in INPUT_DTYPES)):
                for mode in (_common.MODE_PLAIN, _common.MODE_PLUS_SHIFT):
                    const = {"MODE": mode, "SPLIT": split}
                    ptrs = ("z_ptr", "zlo_ptr")
                    prec = "split" if split else "-"
                    yield case(
                        f"rowterm{mode}", conf, prec, dtype, "packed", "rowterm", const, ptrs
                    )
                const = {"MODE": _common.MODE_MINUS_TWO_SHIFT, "SPLIT": split}
                yield case("rowterm2", conf, prec, dtype, "packed", "rowterm", const, ptrs)
        for dtype, spec in itertools.product(INPUT_DTYPES, ("aligned", "any")):
            if spec in specs:
                conf = _centroid.gpu_config()
                ptrs = ("x_ptr", "y_ptr")
                yield case("centroid", conf, "-", dtype, spec, "centroid", {}, ptrs)


def signature(fn: Any, case: Case) -> tuple[dict[str, str], dict[tuple[int], list]]:
    """Argument types and the 16-divisibility attributes of a d = 512 launch."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in case.constexprs:
            sig[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            sig[name] = case.pointers.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
        if case.spec != "any" and (name.endswith("_ptr") or name in DIVISIBLE_ARGS):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)


def compile_case(case: Case) -> dict[str, Any]:
    """Compile one case; its record with registers, spills, shared memory and occupancy."""
    fn = KERNELS[case.fn_name]
    record: dict[str, Any] = {
        k: v for k, v in asdict(case).items() if k not in ("fn_name", "constexprs", "pointers")
    }
    sig, attrs = signature(fn, case)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(
                ASTSource(fn, sig, case.constexprs, attrs),
                target=GPUTarget("cuda", case.arch, 32),
                options={
                    "num_warps": case.num_warps,
                    "num_stages": case.num_stages,
                    "maxnreg": case.maxnreg,
                },
            )
        text = log.getvalue()
        regs, spill = PTXAS_REGS.search(text), PTXAS_SPILL.search(text)
        assert regs and spill and kernel.asm["cubin"], f"no ptxas log: {text[-500:]!r}"
    except Exception as e:  # every failure is reported by case
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
        return record
    smem = int(kernel.metadata.shared)
    ctas = occupancy(ARCHS[case.arch], int(regs[1]), smem, case.num_warps)
    record.update(
        error=None,
        regs=int(regs[1]),
        stack=int(spill[1]),
        spill_stores=int(spill[2]),
        spill_loads=int(spill[3]),
        smem=smem,
        ctas_per_sm=ctas,
        warps_per_sm=ctas * case.num_warps,
    )
    return record


def _init_worker() -> None:
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True


def run(
    archs: tuple[int, ...], specs: tuple[str, ...], jobs: int, only: str = ""
) -> list[dict[str, Any]]:
    """Compile every case (``only``: those whose description contains it) on ``jobs`` processes."""
    todo = [c for c in cases(archs, specs) if only in f"{c.kernel} {c.config} {c.prec} {c.dtype}"]
    if jobs <= 1:
        _init_worker()
        return [compile_case(c) for c in todo]
    with ProcessPoolExecutor(jobs, initializer=_init_worker) as pool:
        return list(pool.map(compile_case, todo, chunksize=1))


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per arch, a row per (kernel, config, precision).

    Registers are listed per operand type; spills are the worst over them, shared memory the
    largest, CTAs and warps per SM the smallest (the occupancy every operand type reaches).
    """
    out = []
    for arch in sorted({r["arch"] for r in results}, reverse=True):
        out += [
            f"#### sm_{arch}",
            "",
            "| kernel | config | dot | registers by operand | spill B | smem KB | CTAs/SM "
            "| warps/SM |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for r in results:
            if r["arch"] == arch:
                rows.setdefault((r["kernel"], r["config"], r["prec"]), []).append(r)
        for (kernel, conf, prec), rs in rows.items():
            if any(r["error"] for r in rs):
                out.append(f"| {kernel} | {conf} | {prec} | compile error | | | | |")
                continue
            regs = ", ".join(f"{r['dtype']}{'/' + r['spec'] if r['spec'] != 'packed' else ''} "
                             f"{r['regs']}" for r in rs)  # fmt: skip
            spill = max(r["spill_stores"] + r["spill_loads"] for r in rs)
            smem = max(r["smem"] for r in rs) / 1024
            ctas = min(r["ctas_per_sm"] for r in rs)
            warps = min(r["warps_per_sm"] for r in rs)
            cells = (kernel, conf, prec, regs, spill, f"{smem:.1f}", ctas, warps)
            out.append("| " + " | ".join(map(str, cells)) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(ARCHS))
    parser.add_argument("--spec", nargs="+", default=list(SPECS), choices=SPECS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default="", help="keep cases whose description contains this")
    parser.add_argument("--json", help="also write the records to this file")
    parser.add_argument("--markdown", help="write the per-arch tables to this file")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="cma-compile-")
    os.environ["TRITON_CACHE_DIR"] = cache  # always_compile still writes the cache: keep it apart
    try:
        results = run(tuple(args.arch), tuple(args.spec), args.jobs, args.only)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for r in results:
        status = r["error"] or (
            f"regs {r['regs']:3d} spill {r['spill_stores'] + r['spill_loads']:5d} "
            f"smem {r['smem'] / 1024:5.1f}K ctas/SM {r['ctas_per_sm']} warps/SM {r['warps_per_sm']}"
        )
        case = f"{r['kernel']:10s} {r['config']:30s} {r['prec']:6s} {r['dtype']:4s} {r['spec']:7s}"
        print(f"sm_{r['arch']} {case} {status}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
