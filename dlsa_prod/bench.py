"""Latency benchmark of a bundle: ONNX Runtime (fused / staged) vs PyTorch eager, one run.

Batches are drawn from the bundle's validation samples, so the staged layout sees the real
routing mix.  Reports p50/p90/p99 latency, throughput and, for staged, each stage's share.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .runtime import Runtime


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


def _row(name: str, batch: int, lat: list[float]) -> dict:
    a = np.asarray(lat) * 1e3
    return {"method": name, "batch": batch, "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "throughput": batch / (a.mean() / 1e3), "calls": len(lat)}


def run_bench(bundle: Path, batches: list[int], layouts: list[str], providers: list[str], warmup: float,
              duration: float, run_dir: Path | None = None, threads: int = 0) -> list[dict]:
    bundle = Path(bundle)
    runtimes = {lay: Runtime(bundle, layout=lay, providers=providers, threads=threads) for lay in layouts}
    manifest = next(iter(runtimes.values())).manifest
    samples = np.load(bundle / manifest["samples"])
    eager = None
    if run_dir is not None:
        import torch

        from .run_dir import load_run

        if threads:
            torch.set_num_threads(threads)
        run = load_run(run_dir, "cpu")
        model = run.model.eval()
        trunk, prep = None, None
        if run.meta.get("backbone"):
            from .images.stage import load_trained_backbone

            net, prep = load_trained_backbone(run_dir, run.meta)
            trunk = net.trunk

        def eager(x, _m=model):
            with torch.no_grad():
                t = torch.from_numpy(x if prep is None else prep.to_nchw(x))
                return _m(t if trunk is None else trunk(t))

    rows = []
    for b in batches:
        data = _batches(samples, b)
        if eager is not None:
            rows.append(_row("pytorch eager", b, _measure(eager, data, warmup, duration)))
        for lay, rt in runtimes.items():
            rt.stage_times.seconds.clear()
            lat = _measure(lambda x, _rt=rt: _rt.predict(x, profile=lay == "staged"), data, warmup, duration)
            row = _row(f"onnxruntime {lay}", b, lat)
            if lay == "staged":
                total = sum(rt.stage_times.seconds.values()) or 1.0
                row["stage_share"] = {k: v / total for k, v in sorted(rt.stage_times.seconds.items())}
            rows.append(row)
            if lay == "staged" and "backbone" in rt._stages:  # the backbone alone, for the heads' cost
                bb, prep = rt._stages["backbone"], rt.preprocess
                row_bb = _row("onnxruntime backbone only", b, _measure(
                    lambda x, _bb=bb, _p=prep: _bb.run(None, {"image": _p.to_nchw(x)}), data, warmup, duration))
                row["heads_added_vs_backbone"] = row["p50_ms"] / row_bb["p50_ms"] - 1.0
                rows.append(row_bb)
    base = {r["batch"]: r for r in rows if r["method"] == "pytorch eager"}
    for r in rows:
        if r["batch"] in base:
            r["p50_vs_eager"] = r["p50_ms"] / base[r["batch"]]["p50_ms"]
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| batch | method | p50 ms | p90 ms | p99 ms | samples/s | p50 vs eager | stage share |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    extra = []
    for r in rows:
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("stage_share", {}).items())
        vs = f"{r['p50_vs_eager']:.2f}x" if "p50_vs_eager" in r else ""
        lines.append(f"| {r['batch']} | {r['method']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['throughput']:.0f} | {vs} | {share} |")
        if "heads_added_vs_backbone" in r:
            extra.append(f"batch {r['batch']}: the DLSA heads add {100 * r['heads_added_vs_backbone']:.0f}% to the "
                         f"backbone's p50 latency (staged)")
    return "\n".join(lines + ([""] + extra if extra else []))
