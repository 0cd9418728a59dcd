"""Turn pytest-benchmark JSON into Markdown tables, target verdicts and a log-log PNG.

    python -m benchmarks.report bench.json [gpu.json ...] --out docs/benchmarks.md \\
        --png docs/benchmarks.png

Several JSON files (a CPU and a GPU run) may be given; each table row names its device. If the
``--out`` file exists and contains ``<!-- benchmarks:begin -->`` … ``<!-- benchmarks:end -->``,
only the text between the markers is replaced, so hand-written notes around it survive;
otherwise the file is written whole. Without ``--out`` the Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._backends import OP_TITLES, OPS, is_ours

BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
#: Peers whose memory grows with N·M (they hold the dense cost matrix).
TENSORIZED_PEERS = ("geomloss", "pot-log")
#: A peer is "at equal accuracy" when its value error is at most this multiple of ours.
ACCURACY_SLACK = 3.0


def load(paths: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, run descriptions) from pytest-benchmark JSON files, not-run cases included."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        cma = data.get("cma", {})
        runs.append(
            {
                "path": str(path),
                "datetime": data.get("datetime"),
                "commit": data.get("commit_info", {}),
                **cma,
            }
        )
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if "op" not in info:
                continue
            rows.append(
                {
                    **info,
                    "status": "ok",
                    "median_s": b["stats"]["median"],
                    "rounds": b["stats"]["rounds"],
                }
            )
        for nr in cma.get("not_run", []):
            rows.append(
                {
                    **nr,
                    "device": cma.get("device", "?"),
                    # a slow guarded peer's one call in the worker is its measurement
                    "median_s": nr.get("call_s") if nr["status"] == "worker-timed" else None,
                    "peer": not is_ours(nr["backend"]),
                }
            )
    return rows, runs


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _fmt_err(e: float | None) -> str:
    return "—" if e is None or (isinstance(e, float) and math.isnan(e)) else f"{e:.1e}"


def _fmt_mb(m: float | None) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    return f"{m:,.1f}" if m < 100 else f"{m:,.0f}"


def _order(op: str, backend: str) -> int:
    try:
        return OPS[op].index(backend)
    except (KeyError, ValueError):
        return 99


def best_peer(rows: list[dict[str, Any]], op: str, n: int, device: str) -> dict | None:
    """The fastest peer row for (op, N, device), or None."""
    peers = [
        r
        for r in rows
        if r["op"] == op
        and r["n"] == n
        and r["device"] == device
        and r.get("peer")
        and r["median_s"] is not None
    ]
    return min(peers, key=lambda r: r["median_s"]) if peers else None


def find(rows: list[dict[str, Any]], op: str, backend: str, n: int, device: str) -> dict | None:
    """The row of one case, or None."""
    for r in rows:
        if (r["op"], r["backend"], r["n"], r["device"]) == (op, backend, n, device):
            return r
    return None


def table(rows: list[dict[str, Any]], op: str) -> str:
    """The Markdown table of one operation."""
    sel = [r for r in rows if r["op"] == op]
    if not sel:
        return ""
    train = op == "train"
    head = "| device | N | backend | median time | vs best peer | rel. error | "
    head += "grad rel. error | peak memory (MiB) | iterations | N×M sweeps | note |"
    if train:
        head = "| device | batch | loss | median time | vs ClipLoss | peak memory (MiB) | note |"
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    sel.sort(key=lambda r: (r["device"], r["n"], _order(op, r["backend"])))
    for r in sel:
        if r["status"] == "ok":
            note = ""
        elif r["status"] == "worker-timed":
            note = "one call, timed in the worker"
        else:
            note = f"**{r['status']}**: {r.get('note', '')}"
        if train:
            base = find(rows, op, "clip", r["n"], r["device"])
            ratio = (
                f"{r['median_s'] / base['median_s']:.3f}×"
                if base and r["median_s"] and base["median_s"]
                else "—"
            )
            label = "ClipLoss" if r["backend"] == "clip" else "CMALoss"
            model = r.get("model", "")
            lines.append(
                f"| {r['device']} | {r['n']} | {label} ({model}) | "
                f"{_fmt_time(r['median_s'])} | {ratio} | {_fmt_mb(r.get('peak_mb'))} | "
                f"{note} |"
            )
            continue
        best = best_peer(rows, op, r["n"], r["device"])
        ratio = f"{r['median_s'] / best['median_s']:.2f}×" if best and r["median_s"] else "—"
        name = f"**{r['backend']}**" if not r.get("peer") else r["backend"]
        iters, sweeps = r.get("iters"), r.get("sweeps")
        lines.append(
            f"| {r['device']} | {r['n']} | {name} | {_fmt_time(r['median_s'])} | {ratio} | "
            f"{_fmt_err(r.get('rel_err'))} | {_fmt_err(r.get('grad_rel_err'))} | "
            f"{_fmt_mb(r.get('peak_mb'))} | {'—' if iters is None else iters} | "
            f"{'—' if sweeps is None else f'{sweeps:g}'} | {note} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked against whatever the JSON files contain."""
    out: list[str] = []
    cpus = sorted({r["device"] for r in rows if r["device"].startswith("cpu")})
    for cpu in cpus:
        for op in ("sinkhorn", "sinkhorn_grad"):
            ours = find(rows, op, "cma-chunked", 4096, cpu)
            if not ours or not ours["median_s"]:
                continue
            # "at equal accuracy": peers whose value error is at most ACCURACY_SLACK × ours
            err = ours.get("rel_err") or 0.0
            peers = [
                r
                for r in rows
                if r["op"] == op
                and r["n"] == 4096
                and r["device"] == cpu
                and r.get("peer")
                and r["median_s"]
                and r.get("rel_err") is not None
                and r["rel_err"] <= ACCURACY_SLACK * err
            ]
            best = min(peers, key=lambda r: r["median_s"]) if peers else None
            overall = best_peer(rows, op, 4096, cpu)
            if best:
                ratio = ours["median_s"] / best["median_s"]
                line = (
                    f"- {cpu} {OP_TITLES[op]}, N = M = 4096, d = 512: cma-chunked "
                    f"{_fmt_time(ours['median_s'])} (value error "
                    f"{_fmt_err(ours.get('rel_err'))}) vs the fastest peer at equal accuracy, "
                    f"{best['backend']}, "
                    f"{_fmt_time(best['median_s'])} (value error {_fmt_err(best.get('rel_err'))}): "
                    f"{ratio:.2f}× — {'**met**' if ratio <= 1 else '**missed**'} (target ≤ 1×)"
                )
                if overall and overall is not best:
                    line += (
                        f"; the fastest peer regardless of accuracy is {overall['backend']} "
                        f"({_fmt_time(overall['median_s'])}, value error "
                        f"{_fmt_err(overall.get('rel_err'))})"
                    )
                out.append(line + ".")
            tens = [find(rows, op, p, 4096, cpu) for p in TENSORIZED_PEERS]
            tens = [t for t in tens if t and t.get("peak_mb")]
            if ours.get("peak_mb") and tens:
                ref = min(tens, key=lambda t: t["peak_mb"])
                ratio = ours["peak_mb"] / ref["peak_mb"]
                others = ", ".join(f"{t['backend']} {_fmt_mb(t['peak_mb'])} MiB" for t in tens)
                out.append(
                    f"- {cpu} {OP_TITLES[op]} peak memory, N = 4096: cma-chunked "
                    f"{_fmt_mb(ours['peak_mb'])} MiB vs the smallest tensorized peer ({others}): "
                    f"{ratio:.3f} — {'**met**' if ratio <= 0.1 else '**missed**'} (target ≤ 0.1)."
                )
    for dev in sorted({r["device"] for r in rows if r["op"] == "train"}):
        limit = 0.15 if dev.startswith("cpu") else 0.05
        clip = [
            r
            for r in rows
            if r["op"] == "train"
            and r["backend"] == "clip"
            and r["device"] == dev
            and r["median_s"]
        ]
        for c in clip:
            cma = find(rows, "train", "cma", c["n"], dev)
            if cma and cma["median_s"]:
                over = cma["median_s"] / c["median_s"] - 1.0
                out.append(
                    f"- {dev.upper()} training-step overhead of CMALoss over ClipLoss "
                    f"({c.get('model', '?')}, batch {c['n']}): {over * 100:+.1f} % — "
                    f"{'**met**' if over <= limit else '**missed**'} "
                    f"(target ≤ {limit * 100:.0f} %)."
                )
    for dev in sorted({r["device"] for r in rows if r["device"].startswith("cuda")}):
        tri = find(rows, "sinkhorn", "cma-triton", 16384, dev)
        flash = find(rows, "sinkhorn", "flash", 16384, dev)
        ref = find(rows, "sinkhorn", "cma-tensorized", 16384, dev)
        if tri and tri["median_s"]:
            if flash and flash["median_s"]:
                r1 = flash["median_s"] / tri["median_s"]
                out.append(
                    f"- GPU N = 16384: Triton is {r1:.2f}× flash-sinkhorn's speed — "
                    f"{'**met**' if r1 >= 1 else '**missed**'} (target ≥ 1×)."
                )
            if ref and ref["median_s"]:
                r2 = ref["median_s"] / tri["median_s"]
                out.append(
                    f"- GPU N = 16384: Triton is {r2:.1f}× the tensorized reference — "
                    f"{'**met**' if r2 >= 10 else '**missed**'} (target ≥ 10×)."
                )
    return out or ["- (no case of the targets in these files)"]


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]], png: str | None) -> str:
    """The whole generated section."""
    parts = ["## Runs", ""]
    for run in runs:
        s = run.get("settings", {})
        load0, load1 = run.get("load_avg_start"), run.get("load_avg_end")
        load = (
            f"; 1-min load average {load0[0]:.1f} at start, {load1[0]:.1f} at end"
            if load0 and load1
            else ""
        )
        parts.append(
            f"- `{Path(run['path']).name}`: {run.get('device', '?')} — "
            f"{run.get('device_name', '?')}; {run.get('datetime', '')}; commit "
            f"{run.get('commit', {}).get('id', '?')[:10]}"
            f"{' (dirty)' if run.get('commit', {}).get('dirty') else ''}; "
            f"wall {run.get('wall_s', 0) / 60:.1f} min{load}."
        )
        if s:
            parts.append(
                f"  Settings: blur {s.get('blur')} (ε = {s.get('eps'):.4g}), ε-scaling "
                f"{s.get('scaling')}, our tol {s.get('tol')} / max_iter {s.get('max_iter')}, "
                f"POT stopThr {s.get('pot_stop_thr')} / numItermax {s.get('pot_max_iter')}, "
                f"peer time bound {s.get('peer_timeout_s'):g} s, d = {run.get('d')}."
            )
        if run.get("mem_method"):
            parts.append(f"  Peak memory: {run['mem_method']}.")
        v = run.get("versions")
        if v:
            parts.append("  Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    parts += ["", "## Targets", "", *verdicts(rows), ""]
    for op in OPS:
        t = table(rows, op)
        if t:
            parts += [f"## {OP_TITLES[op]}", "", t, ""]
    if png:
        parts += [f"![time and peak memory vs N]({png})", ""]
    return "\n".join(parts)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Log-log time and peak memory vs N of the Sinkhorn forward and forward+backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in ("sinkhorn", "sinkhorn_grad") if any(r["op"] == op for r in rows)]
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 4.2 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        series: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in rows:
            if r["op"] == op and r["median_s"] is not None:
                series[(r["device"], r["backend"])].append(r)
        for (dev, backend), pts in sorted(series.items()):
            pts.sort(key=lambda r: r["n"])
            ns = [r["n"] for r in pts]
            style = "-o" if is_ours(backend) else "--s"
            label = f"{backend} ({dev})"
            axes[i][0].plot(ns, [r["median_s"] for r in pts], style, label=label)
            mem = [(r["n"], r["peak_mb"]) for r in pts if r.get("peak_mb")]
            if mem:
                axes[i][1].plot(*zip(*mem, strict=True), style, label=label)
        for j, (ylabel, title) in enumerate(
            (("median time (s)", "time"), ("peak memory (MiB)", "peak memory"))
        ):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N = M (d = 512)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{OP_TITLES[op]}: {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[i][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(text: str, out: Path) -> None:
    """Write ``text`` into ``out`` between the markers (or the whole file)."""
    block = f"{BEGIN}\n{text}\n{END}"
    if out.is_file():
        old = out.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            out.write_text(head + block + tail)
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Benchmarks\n\n" + block + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--out", type=Path, help="Markdown file (markers kept); default stdout")
    parser.add_argument("--png", type=Path, help="log-log plot of time and memory vs N")
    args = parser.parse_args(argv)
    rows, runs = load(args.json)
    png_ref = None
    if args.png:
        plot(rows, str(args.png))
        base = args.out.parent if args.out else Path.cwd()
        try:
            png_ref = args.png.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            png_ref = str(args.png)
    text = markdown(rows, runs, png_ref)
    if args.out:
        write(text, args.out)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
