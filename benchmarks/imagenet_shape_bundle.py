"""Serving latency at the research code's ImageNet-LT shape: dim 2048, K 500, 1000 classes,
depth 3, on synthetic long-tailed features (latency does not depend on what was learned).

Trains a short run (1 flow epoch per depth), exports the bundle (parity-gated) and runs the
same measurement as `dlsa-prod bench`: PyTorch eager vs ONNX Runtime fused and staged.

    python benchmarks/imagenet_shape_bundle.py --out bench_out/imagenet_shape

``--torch-backend DEVICE`` measures instead the torch backend (``Runtime(bundle, backend="torch")``'s
executor: fused = the masked all-depths form, one CUDA graph per batch bucket on CUDA; staged =
per-sample routing with one CUDA graph per stage and bucket) against
``DLSAModel`` eager in the same run, at the same shape with an untrained cascade whose thresholds
let about 30% of the remaining samples exit per depth (latency does not depend on training), and
counts exit mismatches against eager over every measured batch:

    python benchmarks/imagenet_shape_bundle.py --torch-backend cuda --json bench_out/torch_backend.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dlsa_prod.bench import format_rows, run_bench
from dlsa_prod.config import config_from_dict
from dlsa_prod.data import FeatureSet, write_features
from dlsa_prod.data.longtail import longtail_counts
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.logs import setup_logging
from dlsa_prod.pipeline import run_training


def synthetic(counts, dim, rng, centres):
    y = np.repeat(np.arange(len(counts)), counts)
    x = centres[y] + rng.standard_normal((len(y), dim)).astype(np.float32)
    return FeatureSet(x.astype(np.float32), y)


def torch_backend_latency(device: str, batches: list[int], duration: float, dim=2048, k=500, classes=1000, depth=3,
                          exit_share=0.3, calls_min=50) -> list[dict]:
    """p50/p99 of DLSAModel eager vs the torch backend executor, and exit mismatches, in one run."""
    import time

    import torch

    from dlsa_prod.backends.torch_backend import TorchExecutor
    from dlsa_prod.bundle_spec import BundleSpec
    from dlsa_prod.models import DLSAModel
    from dlsa_prod.ops.precision import ieee_fp32

    torch.manual_seed(0)
    cfg = config_from_dict({"max_depth": depth, "gmflow": {"model": {"num_cluster": k, "gmm_center_std": 0.05}},
                            "data": {"train": "unused.npz", "test": "unused.npz"}})
    model = DLSAModel.from_config(cfg, dim, classes, depth).to(device).eval()
    x_all = torch.randn(4096, dim, device=device)
    with torch.no_grad(), ieee_fp32():  # thresholds: exit_share of the remaining samples exit per depth
        remaining = x_all
        for stage in model.stages:
            ll, _ = stage.route(remaining)
            stage.threshold.fill_(float(torch.quantile(ll, 1 - exit_share)))
            remaining = remaining[ll < stage.threshold]
    def t(name, dtype, *shape):
        return {"name": name, "dtype": dtype, "shape": ["batch", *shape]}

    x_in, out = [t("x", "float32", dim)], [t("logits", "float32", classes)]
    staged = {"regular": {"file": "-", "inputs": x_in, "outputs": out}}
    for d in range(1, depth + 1):
        staged[f"filter_{d}"] = {"file": "-", "inputs": x_in, "outputs": [t("loglik", "float32"), t("cluster", "int64")]}
        staged[f"classifier_{d}"] = {"file": "-", "inputs": x_in + [t("cluster", "int64")], "outputs": out}
    spec = BundleSpec(Path("."), {"input": {"kind": "features", "dim": dim, "image": None}, "depth": depth,
                                  "thresholds": model.thresholds, "classes": {"num_classes": classes},
                                  "source": {"model": "dlsa"}, "layouts": {"staged": {"graphs": staged}},
                                  "serving": {"batch_profile": {"min": 1, "opt": 64, "max": max(batches)}}})
    graphed = TorchExecutor(spec, "fused", device=device, cuda_graphs=True, model=model)
    graphed_staged = TorchExecutor(spec, "staged", device=device, cuda_graphs=True, model=model)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def eager(x):
        with torch.no_grad(), ieee_fp32():
            out = model(torch.from_numpy(x).to(device))
            return out.logits.cpu().numpy(), out.exit_depth.cpu().numpy()

    rows = []
    for b in batches:
        xs = [x_all[i * b % 4096:][:b].cpu().numpy() for i in range(8)]
        xs = [x if len(x) == b else x_all[:b].cpu().numpy() for x in xs]
        mismatches = {ex: sum(int((eager(x)[1] != ex.run(x)[1]).sum()) for x in xs) for ex in (graphed, graphed_staged)}
        for name, fn, ex in (("DLSAModel eager", eager, None), (f"{graphed.describe()} fused", graphed.run, graphed),
                             (f"{graphed_staged.describe()} staged", graphed_staged.run, graphed_staged)):
            for x in xs[:3]:
                fn(x)  # warm-up (and graph capture)
            sync()
            lat, t_end = [], time.perf_counter() + duration
            while time.perf_counter() < t_end or len(lat) < calls_min:
                x = xs[len(lat) % len(xs)]
                t0 = time.perf_counter()
                fn(x)
                sync()
                lat.append(time.perf_counter() - t0)
            a = np.asarray(lat) * 1e3
            rows.append({"batch": b, "method": name, "p50_ms": float(np.percentile(a, 50)),
                         "p99_ms": float(np.percentile(a, 99)), "calls": len(lat),
                         "exit_mismatches_vs_eager": mismatches[ex] if ex is not None else 0,
                         "samples_compared": b * len(xs)})
    base = {r["batch"]: r["p50_ms"] for r in rows if r["method"] == "DLSAModel eager"}
    for r in rows:
        r["p50_vs_eager"] = r["p50_ms"] / base[r["batch"]]
    for r in rows:
        r["shape"] = f"dim {dim}, K {k}, {classes} classes, depth {depth}, ~{100 * exit_share:.0f}% exit per depth"
    return rows


def format_torch_rows(rows, device) -> str:
    lines = [f"torch backend vs DLSAModel eager on {device} (fp32, IEEE matmuls; {rows[0]['shape']})", "",
             "| batch | method | p50 ms | p99 ms | p50 vs eager | exit mismatches vs eager |", "|---:|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['method']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['p50_vs_eager']:.3g}x | "
                     f"{r['exit_mismatches_vs_eager']} of {r['samples_compared']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out/imagenet_shape"))
    p.add_argument("--batch", default="1,64,256")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--torch-backend", choices=["cpu", "cuda"], help="measure the torch backend vs eager instead")
    p.add_argument("--small", action="store_true", help="with --torch-backend: dim 64, K 20, 10 classes (a smoke run)")
    p.add_argument("--json", type=Path, help="with --torch-backend: write the rows here")
    args = p.parse_args(argv)
    setup_logging()
    if args.torch_backend:
        shape = {"dim": 64, "k": 20, "classes": 10} if args.small else {}
        rows = torch_backend_latency(args.torch_backend, [int(b) for b in args.batch.split(",")], args.duration, **shape)
        print(format_torch_rows(rows, args.torch_backend))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
        return
    rng = np.random.default_rng(0)
    dim, classes = 2048, 1000
    centres = (rng.standard_normal((classes, dim)) * 0.5).astype(np.float32)
    feat = args.out / "features"
    write_features(feat / "feature_train.h5", synthetic(longtail_counts(40, classes, 20), dim, rng, centres))
    write_features(feat / "feature_val.h5", synthetic(np.full(classes, 2), dim, rng, centres))
    write_features(feat / "feature_test.h5", synthetic(np.full(classes, 2), dim, rng, centres))
    cls = {"eval_freq": 1, "model": {"type": "linear"}, "loss": {"type": "BSM"}, "data": {"batchsize": 256},
           "optim": {"lr": 0.01, "epoch": 2, "momentum": 0.9}}
    cfg = config_from_dict({
        "seed": 0, "device": "cpu", "max_depth": 3, "baselines": ["BSM"], "data": {"feat_dir": str(feat)},
        "gmflow": {"model": {"num_cluster": 500, "gmm_center_std": 0.05}, "data": {"batchsize": 1024},
                   "optim": {"lr": 0.2, "epoch": 1}},
        "filter": {"llh_proportion": 0.3, "min_remaining": 1},
        "cacls": {**cls, "model": {"type": "linear", "inputs": "XZP"}},
        "regcls": {**cls, "model": {"type": "linear", "inputs": "XZ"}},
    })
    run_training(cfg, args.out / "run", force=True)
    export_bundle(args.out / "run", args.out / "run" / "bundle", force=True)
    rows, info = run_bench(args.out / "run" / "bundle", [int(b) for b in args.batch.split(",")], ["fused", "staged"],
                           ["cpu"], warmup=1.0, duration=args.duration, run_dir=args.out / "run")
    table = format_rows(rows, info)
    print(table)
    by = {(r["method"], r["batch"]): r for r in rows}
    big = max(int(b) for b in args.batch.split(","))
    staged = by[("onnxruntime CPUExecutionProvider staged", big)]
    ratio = staged["throughput"] / by[("onnxruntime CPUExecutionProvider fused", big)]["throughput"]
    print(f"staged / fused throughput at batch {big}: {ratio:.2f}x")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=2))
    (args.out / "bench.md").write_text(table + f"\n\nstaged / fused throughput at batch {big}: {ratio:.2f}x\n")


if __name__ == "__main__":
    main()
