"""Benchmark the GMM log-likelihood: research broadcast form vs pure-torch GEMM form vs the
native dlsa_prod op, forward and forward+backward, with peak extra memory.

    python benchmarks/gmm_loglik.py --device cpu
    python benchmarks/gmm_loglik.py --device cuda --json gmm_cuda.json

Prints a markdown table; ratios are against the pure-torch GEMM form measured in the same run.
Each shape also times a one-op graph, (u*1).sum(), forward and forward+backward: the fixed
cost that any differentiable call pays on this machine (dispatch, autograd, engine start, and
on CUDA the hand-off to the autograd device thread), which no kernel can go below.
``--profile FILE`` writes torch.profiler tables of one forward+backward per method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import fp32_peak_tflops, peak_extra_mb, sync, time_interleaved_ms  # noqa: E402

from dlsa_prod.ops import gmm_loglik, native  # noqa: E402

# the three shapes, then two with smaller feature dims (where the row pass, not the GEMM, dominates)
FLOOR = "one-op graph (u*1).sum()"
DEFAULT_SHAPES = "1024x500x2048,64x1000x2048,4096x1000x2048,256x200x128,1024x500x256"


def methods(device: torch.device) -> list[tuple[str, str, str | None]]:
    """(name, gmm_loglik backend, CUDA forward kernel or None)."""
    out = [("broadcast", "broadcast", None), ("torch GEMM", "torch", None)]
    if native.available(device):
        if device.type == "cuda":
            out += [("native (tiled)", "native", "tiled"), ("native (cuBLAS+epilogue)", "native", "gemm")]
        else:
            out.append(("native", "native", None))
    return out


def make_inputs(b: int, k: int, d: int, device: torch.device):
    """Seeded u (B, D), centres (K, D) and log-det (B) on the device."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, generator=g).to(device)
    means = (torch.randn(k, d, generator=g) * 0.05).to(device)
    log_det = torch.randn(b, generator=g).to(device)
    return u, means, log_det


_DEFAULT_KERNEL = native.cuda_forward() if native.LOADED else None  # DLSA_PROD_CUDA_FWD, read once


def use_kernel(kernel: str | None) -> None:
    """Select a CUDA forward kernel ("tiled" / "gemm") for the calls that follow, or the default."""
    if native.LOADED:
        native.cuda_forward(kernel or _DEFAULT_KERNEL)


def forward_backward(u, means, log_det, backend: str) -> torch.Tensor:
    """One forward+backward through loglik.sum(); returns u's gradient."""
    uu = u.detach().requires_grad_()
    gmm_loglik(uu, means, log_det, backend=backend).loglik.sum().backward()
    return uu.grad


def run_shape(b: int, k: int, d: int, device: torch.device, repeat: int, max_broadcast_gb: float) -> list[dict]:
    u, means, log_det = make_inputs(b, k, d, device)
    shape = f"{b}x{k}x{d}"
    bcast_gb = 3 * b * k * d * 4 / 2**30  # diff, square and gradient temporaries
    rows, fwd, fwd_bwd = [], {}, {}
    for name, backend, kernel in methods(device):
        if backend == "broadcast" and bcast_gb > max_broadcast_gb:
            rows.append({"shape": shape, "method": name, "skipped": f"needs ~{bcast_gb:.0f} GB"})
            continue

        def with_kernel(fn, kernel=kernel):
            def call():
                use_kernel(kernel)
                return fn()
            return call

        def f(backend=backend):
            with torch.no_grad():
                return gmm_loglik(u, means, log_det, backend=backend).loglik

        fwd[name] = with_kernel(f)
        fwd_bwd[name] = with_kernel(lambda backend=backend: forward_backward(u, means, log_det, backend))
        rows.append({"shape": shape, "method": name})

    # The fixed cost any differentiable op pays here (dispatch, autograd graph, engine start,
    # and on CUDA the hand-off to the device thread): a one-op graph on the same u.
    def floor_f():
        with torch.no_grad():
            return (u * 1.0).sum()

    def floor_fb():
        uu = u.detach().requires_grad_()
        (uu * 1.0).sum().backward()
        return uu.grad

    fwd[FLOOR], fwd_bwd[FLOOR] = floor_f, floor_fb
    rows.append({"shape": shape, "method": FLOOR})
    # the broadcast form is orders of magnitude slower: time it on its own, fewer times
    slow = {n for n in fwd if n == "broadcast"}
    t_fwd = time_interleaved_ms({n: f for n, f in fwd.items() if n not in slow}, device, repeat)
    t_fb = time_interleaved_ms({n: f for n, f in fwd_bwd.items() if n not in slow}, device, repeat)
    for n in slow:
        t_fwd[n] = time_interleaved_ms({n: fwd[n]}, device, 2, warmup=1)[n]
        t_fb[n] = time_interleaved_ms({n: fwd_bwd[n]}, device, 2, warmup=1)[n]
    for r in rows:
        n = r["method"]
        if n in fwd:
            r.update(fwd_ms=t_fwd[n], fwd_bwd_ms=t_fb[n], fwd_peak_mb=peak_extra_mb(fwd[n], device),
                     fwd_bwd_peak_mb=peak_extra_mb(fwd_bwd[n], device))
    use_kernel(None)
    base = next(r for r in rows if r["method"] == "torch GEMM")
    for r in rows:
        if "fwd_ms" in r:
            r["fwd_vs_gemm"] = r["fwd_ms"] / base["fwd_ms"]
            r["fwd_bwd_vs_gemm"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
    return rows


def write_profile(path: str, shapes: list[str], device: torch.device) -> None:
    """Per shape and GEMM-form method, the top ops of one forward+backward (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for shape in shapes:
        b, k, d = (int(v) for v in shape.lower().split("x"))
        u, means, log_det = make_inputs(b, k, d, device)
        for name, backend, kernel in methods(device):
            if backend == "broadcast":
                continue
            use_kernel(kernel)
            for _ in range(3):
                forward_backward(u, means, log_det, backend)
            sync(device)
            with profile(activities=acts) as prof:
                for _ in range(5):
                    forward_backward(u, means, log_det, backend)
                sync(device)
            parts.append(f"## {shape} {name} (5 calls)\n\n```\n{prof.key_averages().table(sort_by=sort, row_limit=18)}\n```\n")
    use_kernel(None)
    with open(path, "w") as fh:
        fh.write("\n".join(parts))
    print(f"profile written to {path}")


def table(rows: list[dict], floor: dict | None) -> str:
    lines = ["| B x K x D | method | fwd ms | fwd+bwd ms | fwd peak MB | fwd+bwd peak MB | fwd / GEMM | fwd+bwd / GEMM |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['shape']} | {r['method']} | skipped ({r['skipped']}) | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['method']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | "
                     f"{r['fwd_peak_mb']:.1f} | {r['fwd_bwd_peak_mb']:.1f} | {r['fwd_vs_gemm']:.2f}x | "
                     f"{r['fwd_bwd_vs_gemm']:.2f}x |")
    if floor:
        lines.append("")
        lines.append(f"Measured IEEE-fp32 GEMM peak: {floor['peak_tflops']:.1f} TFLOP/s.")
        for shape, f in floor["shapes"].items():
            lines.append(f"- {shape}: fp32 floor {f['floor_ms']:.4f} ms for 2*B*K*D flops; best native forward "
                         f"{f['best_native_ms']:.4f} ms = {f['floor_ms'] / f['best_native_ms'] * 100:.0f}% of the floor rate")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of BxKxD")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement (default cpu 15, cuda 100)")
    p.add_argument("--max-broadcast-gb", type=float, default=None,
                   help="skip the broadcast form above this estimated size (default cpu 14, cuda 60)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--profile", help="write a torch.profiler table of one forward+backward per method and shape here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    repeat = args.repeat or (100 if device.type == "cuda" else 15)
    max_gb = args.max_broadcast_gb or (60.0 if device.type == "cuda" else 14.0)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; native ops: {native.build_info()}")
    rows = []
    for shape in args.shapes.split(","):
        b, k, d = (int(v) for v in shape.lower().split("x"))
        rows += run_shape(b, k, d, device, repeat, max_gb)
        print(f"  measured {shape}", flush=True)
    floor = None
    if device.type == "cuda":
        peak = fp32_peak_tflops(device)
        floor = {"peak_tflops": peak, "shapes": {}}
        for shape in args.shapes.split(","):
            b, k, d = (int(v) for v in shape.lower().split("x"))
            best = min(r["fwd_ms"] for r in rows if r["shape"] == shape and r["method"].startswith("native"))
            floor["shapes"][shape] = {"floor_ms": 2 * b * k * d / (peak * 1e12) * 1e3, "best_native_ms": best}
    print(table(rows, floor))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "rows": rows, "floor": floor}, fh, indent=2)
    if args.profile:
        try:
            write_profile(args.profile, args.shapes.split(","), device)
        except Exception as exc:  # the profiler (CUPTI) can be missing; the timings above stand
            print(f"profile failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
