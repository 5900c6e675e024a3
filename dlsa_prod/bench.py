"""Latency benchmark of a bundle: each backend/layout vs PyTorch eager, in one run.

Batches are drawn from the bundle's validation samples (samples.npy), so the staged layout sees
the real routing mix.  Reports p50/p90/p99 latency, throughput, the backend/provider that actually
ran and, for staged, each stage's share.  ONNX Runtime sessions and PyTorch eager run with the
same number of intra-op threads (``--threads``, default: the CPUs this process may use), one
after the other, with ONNX Runtime's spinning threads switched off so neither steals the other's
cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .bundle_spec import BACKBONE, BundleSpec, read_spec
from .errors import DLSAError
from .runtime import Runtime


def parse_batches(text: str) -> list[int]:
    """``--batch``: ``1,64,256`` or a profile name (online, batch, offline), as ``export --trt-batches``."""
    from .backends.tensorrt_build import parse_batches as parse_batch_sizes

    return parse_batch_sizes(text, "--batch")


def parse_seconds(text, option: str, allow_zero: bool = False) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise DLSAError(f"{option}: {text!r} is not a number of seconds") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise DLSAError(f"{option}: must be {'>= 0' if allow_zero else '> 0'} seconds, got {text}")
    return v


def resolve_threads(threads) -> int:
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise DLSAError(f"--threads: {threads!r} is not a non-negative integer") from None
    if n < 0:
        raise DLSAError(f"--threads: {n} is not a non-negative integer")
    if n == 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n


def _batches(samples: np.ndarray, size: int, count: int = 16) -> list[np.ndarray]:
    reps = int(np.ceil(size * count / len(samples)))
    pool = np.concatenate([samples] * max(reps, 1))
    return [np.ascontiguousarray(pool[i * size:(i + 1) * size]) for i in range(count)]


def _measure(fn, batches, warmup: float, duration: float) -> list[float]:
    t_end = time.perf_counter() + warmup
    i = 0
    while time.perf_counter() < t_end:
        fn(batches[i % len(batches)])
        i += 1
    lat = []
    t_end = time.perf_counter() + duration
    while time.perf_counter() < t_end or len(lat) < 5:
        b = batches[len(lat) % len(batches)]
        t0 = time.perf_counter()
        fn(b)
        lat.append(time.perf_counter() - t0)
    return lat


def _row(name: str, batch: int, lat: list[float], **extra) -> dict:
    a = np.asarray(lat) * 1e3
    return {"method": name, "batch": batch, "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "throughput": batch / (a.mean() / 1e3), "calls": len(lat), **extra}


def _eager(spec, run_dir, threads: int):
    """PyTorch eager of the exported model: from RUN_DIR, or from the bundle's own torch weights."""
    import torch

    torch.set_num_threads(threads)
    trunk, prep = None, None
    if run_dir is not None:
        from .run_dir import load_run

        run = load_run(run_dir, "cpu")
        name = spec.source["model"]
        model = run.model if name == "dlsa" else run.baselines[name]
        if run.meta.get("backbone"):
            from .images.stage import load_trained_backbone

            net, prep = load_trained_backbone(run_dir, run.meta)
            trunk = net.trunk.eval()
    elif spec.torch_dir is not None:
        from .backends.torch_backend import load_model

        model = load_model(spec, "cpu")
    else:
        return None

    def eager(x, _m=model.eval()):
        with torch.no_grad():
            t = torch.from_numpy(x if prep is None else prep.to_nchw(x))
            return _m(t if trunk is None else trunk(t))

    return eager


def run_bench(bundle: Path | BundleSpec, batches: list[int], layouts: list[str] | None = None, providers=("cpu",),
              warmup: float = 1.0, duration: float = 3.0, run_dir: Path | None = None, threads: int = 0,
              backends=("onnxruntime",), allow_fallback: bool = False, on_start=None,
              on_row=None, accept_precision_loss: bool = False) -> tuple[list[dict], dict]:
    """(rows, info); info names the thread count, what ran and the input guard's warning on the samples
    (or None).  BUNDLE: a path, or a spec already read.  ``on_start(info)`` is called once the runtimes
    are loaded and ``on_row(row)`` as each row finishes (the CLI prints them as they come)."""
    spec = bundle if isinstance(bundle, BundleSpec) else read_spec(bundle)
    layouts = list(layouts or spec.layouts)
    for lay in layouts:
        spec.graphs(lay)  # one line for a layout the bundle lacks
    threads = resolve_threads(threads)
    samples = spec.load_samples()
    runtimes = {}
    for backend in backends:
        for lay in layouts:
            opts = {"providers": list(providers), "allow_fallback": allow_fallback, "spinning": False,
                    "accept_precision_loss": accept_precision_loss} \
                if backend == "onnxruntime" else {}
            runtimes[(backend, lay)] = Runtime(spec, layout=lay, backend=backend, threads=threads, **opts)
    eager = _eager(spec, run_dir, threads)
    first = next(iter(runtimes.values()))
    info = {"threads": threads, "ran": sorted({rt.describe() for rt in runtimes.values()}),
            "eager": eager is not None, "guard_status": first.guard_status(),
            "input_guard": first.guard_warning(first.predict(samples), f"{spec.path} samples.npy")}
    if on_start is not None:
        on_start(info)
    rows = []

    def add(row: dict) -> None:
        base = next((r for r in rows if r["batch"] == row["batch"] and r["method"] == "pytorch eager"), None)
        if base is not None and base["p50_ms"] > 0:
            row["p50_vs_eager"] = row["p50_ms"] / base["p50_ms"]
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for b in batches:
        data = _batches(samples, b)
        if eager is not None:
            add(_row("pytorch eager", b, _measure(eager, data, warmup, duration), backend="torch eager"))
        for (backend, lay), rt in runtimes.items():
            rt.stage_times.clear()
            lat = _measure(lambda x, _rt=rt, _p=lay == "staged": _rt.predict(x, profile=_p), data, warmup, duration)
            row = _row(rt.describe(), b, lat, backend=backend, layout=lay)
            if lay == "staged":
                total = sum(rt.stage_times.seconds.values()) or 1.0
                row["stage_share"] = {k: v / total for k, v in sorted(rt.stage_times.seconds.items())}
            calls = getattr(rt.executor, "calls", {})
            if lay == "staged" and BACKBONE in calls and backend == "onnxruntime":
                name = rt.executor.specs[BACKBONE].inputs[0].name
                bb, prep = calls[BACKBONE], rt.preprocess
                row_bb = _row("onnxruntime backbone only", b, _measure(
                    lambda x, _bb=bb, _p=prep: _bb({name: _p.to_nchw(x)}), data, warmup, duration),
                    backend=backend, layout="backbone")
                row["heads_added_vs_backbone"] = row["p50_ms"] / row_bb["p50_ms"] - 1.0
                add(row)
                add(row_bb)
            else:
                add(row)
    return rows, info


def format_ratio(v: float) -> str:
    """Three significant digits, so a large speed-up never prints as 0.00x."""
    return f"{v:.3g}x"


def format_header(info: dict | None) -> list[str]:
    lines = []
    if info:
        lines.append(f"threads: {info['threads']} (ONNX Runtime intra-op and PyTorch, measured one after the "
                     f"other, ONNX Runtime spinning off)")
        lines.append("ran: " + "; ".join(info["ran"]))
        if info.get("guard_status"):
            lines.append(info["guard_status"])
        if not info["eager"]:
            lines.append("no PyTorch eager baseline (image bundle without --run)")
        lines.append("")
    return lines + ["| batch | method | p50 ms | p90 ms | p99 ms | samples/s | p50 vs eager | stage share |",
                    "|---:|---|---:|---:|---:|---:|---:|---|"]


def format_row(r: dict) -> str:
    share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("stage_share", {}).items())
    vs = format_ratio(r["p50_vs_eager"]) if "p50_vs_eager" in r else ""
    return (f"| {r['batch']} | {r['method']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['throughput']:.0f} | {vs} | {share} |")


def format_footer(rows: list[dict]) -> list[str]:
    extra = [f"batch {r['batch']}: the DLSA heads add {100 * r['heads_added_vs_backbone']:.0f}% to the "
             f"backbone's p50 latency (staged)" for r in rows if "heads_added_vs_backbone" in r]
    return [""] + extra if extra else []


def format_rows(rows: list[dict], info: dict | None = None) -> str:
    return "\n".join(format_header(info) + [format_row(r) for r in rows] + format_footer(rows))


def check_bundle_path(bundle) -> None:
    """A run directory given where a bundle is expected: name the bundle inside it (or how to make one)."""
    bundle = Path(bundle)
    if (bundle / "meta.json").is_file() and not (bundle / "manifest.json").is_file():
        if (bundle / "bundle" / "manifest.json").is_file():
            raise DLSAError(f"{bundle}: is a run directory, not a bundle; did you mean {bundle / 'bundle'}?")
        raise DLSAError(f"{bundle}: is a run directory, not a bundle; export it first: dlsa-prod export {bundle}")


def bench_command(bundle, batches: str, providers, layout: str | None, warmup, duration, run_dir, threads,
                  backends, allow_fallback: bool, echo=None,
                  accept_precision_loss: bool = False) -> tuple[list[dict], str]:
    """The CLI's ``bench``: validate every option first (one line, exit 2), then measure.  With ECHO
    (a print function), the header, each row as it finishes and the input guard's warning are printed
    as they come; the returned text is the whole table either way."""
    sizes = parse_batches(batches)
    warm = parse_seconds(warmup, "--warmup", allow_zero=True)
    dur = parse_seconds(duration, "--duration")
    threads = resolve_threads(threads)
    check_bundle_path(bundle)
    spec = read_spec(bundle)
    layouts = None if layout in (None, "all") else (["fused", "staged"] if layout == "both" else [layout])
    if run_dir is None and (Path(bundle).parent / "meta.json").is_file():
        run_dir = Path(bundle).parent
    def start(info):
        if echo is not None:
            if info["input_guard"]:
                echo(info["input_guard"], err=True)
            for line in format_header(info):
                echo(line)

    rows, info = run_bench(spec, sizes, layouts, list(providers), warm, dur, run_dir, threads,
                           list(backends), allow_fallback, on_start=start,
                           on_row=None if echo is None else (lambda r: echo(format_row(r))),
                           accept_precision_loss=accept_precision_loss)
    if echo is not None:
        for line in format_footer(rows):
            echo(line)
    return rows, format_rows(rows, info)
