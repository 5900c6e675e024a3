"""Training speed at the ImageNet-LT shape: synthetic long-tailed features, 115,357 x 2048,
1000 classes (counts 1280 * rank^-0.82 rescaled to 115,357), K 500, flow batch 1024.

Phases, each timed with its peak memory:
  flow      one flow fine-tuning epoch (per-epoch cluster scoring included, as in the research code)
  classifier  one regular-classifier epoch (linear XZ, BSM, batch 128)
  e2e       the research ImageNet-LT config end to end: depth 3, flow 50 epochs, classifiers 150
            epochs, plus the plain BSM baseline (150 epochs)

GPU: the full shape and epoch counts.  CPU (2 cores cannot do an ImageNet-scale epoch in
minutes): --rows-scale trains on a share of the rows (per-epoch time is linear in the rows; the
table also shows the linear extrapolation, marked as such) and --epochs-scale shortens e2e.

    python benchmarks/imagenet_shape_train.py --device cuda --json bench_out/train_speed.json
    nice python benchmarks/imagenet_shape_train.py --device cpu --rows-scale 0.02 --epochs-scale 0.02
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import sync  # noqa: E402

from dlsa_prod.config import config_from_dict  # noqa: E402
from dlsa_prod.data import FeatureSet, Splits  # noqa: E402
from dlsa_prod.logs import setup_logging  # noqa: E402
from dlsa_prod.training.classifier_trainer import ClassifierData, train_classifier  # noqa: E402
from dlsa_prod.training.flow_trainer import train_flow  # noqa: E402
from dlsa_prod.training.options import TrainOptions  # noqa: E402

ROWS, DIM, CLASSES = 115_357, 2048, 1000


def longtail_counts(total: int, classes: int) -> np.ndarray:
    raw = 1280.0 * np.arange(1, classes + 1) ** -0.82
    counts = np.maximum(np.round(raw * total / raw.sum()).astype(np.int64), 1)
    counts[0] += total - counts.sum()
    return counts


def synthetic(counts: np.ndarray, centres: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.from_numpy(counts))
    x = centres[y] + torch.randn(len(y), centres.shape[1], generator=g)
    return x, y


def research_config(flow_epochs: int, cls_epochs: int) -> dict:
    cls = {"eval_freq": 5, "model": {"type": "linear"}, "loss": {"type": "BSM"}, "data": {"batchsize": 128},
           "optim": {"lr": 0.01, "epoch": cls_epochs, "momentum": 0.9}}
    return {
        "seed": 0, "device": "cpu", "max_depth": 3, "baselines": ["BSM"],
        "data": {"train": "unused.npz", "test": "unused.npz"},
        "gmflow": {"model": {"num_cluster": 500, "gmm_center_std": 0.05}, "data": {"batchsize": 1024},
                   "optim": {"lr": 0.2, "epoch": flow_epochs}, "eval_freq": 1},
        "filter": {"llh_proportion": 0.3, "min_remaining": 1},
        "cacls": {**cls, "model": {"type": "linear", "inputs": "XZP"}},
        "regcls": {**cls, "model": {"type": "linear", "inputs": "XZ"}},
    }


class Phase:
    """Wall time (CUDA-synchronised) and peak memory of a block: CUDA allocator peak beyond what was
    allocated before (the data), or on CPU the process's peak resident set so far."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0
        if self.device.type == "cuda":
            self.peak_gib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**30
            self.peak_kind = "GPU peak beyond data"
        else:
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            self.peak_kind = "process peak RSS"


def profile_flow_epoch(x, y, cfg, device, path: Path, options: TrainOptions) -> dict:
    """One flow epoch under torch.profiler: synchronisations, host-device copies, kernel launches."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_flow(x, y, CLASSES, cfg.gmflow, cfg.filter, torch.Generator().manual_seed(1), desc="profiled flow", options=options)
    names = {}
    for e in prof.events():
        names[e.name] = names.get(e.name, 0) + 1
    counts = {k: names.get(k, 0) for k in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
                                           "cudaLaunchKernel", "aten::item", "aten::_local_scalar_dense")}
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=25) + "\n\n" + json.dumps(counts, indent=2))
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows-scale", type=float, default=1.0, help="share of the 115,357 training rows")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="share of the e2e epochs (50 flow, 150 classifier)")
    p.add_argument("--flow-epochs", type=int, default=3, help="epochs timed in the flow phase (per-epoch = total / n)")
    p.add_argument("--classifier-epochs", type=int, default=5)
    p.add_argument("--phases", default="flow,classifier,e2e")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the forward passes")
    p.add_argument("--profile", type=Path, help="also profile one flow epoch into this file")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    setup_logging()
    device = torch.device(args.device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rows = max(int(ROWS * args.rows_scale), 4 * CLASSES)
    counts = longtail_counts(rows, CLASSES)
    centres = torch.randn(CLASSES, DIM, generator=g) * 0.5
    x, y = synthetic(counts, centres, g)
    xv, yv = synthetic(np.full(CLASSES, 20 if args.rows_scale >= 1 else 2), centres, g)
    x, y, xv, yv = x.to(device), y.to(device), xv.to(device), yv.to(device)
    data_gib = (x.numel() + xv.numel()) * 4 / 2**30
    print(f"device {device}, train {tuple(x.shape)} ({data_gib:.2f} GiB with val), counts {counts.max()}..{counts.min()}, "
          f"precision {args.precision}, compile {args.compile}")
    cfg = config_from_dict(research_config(max(1, round(50 * args.epochs_scale)), max(1, round(150 * args.epochs_scale))))
    phases = args.phases.split(",")
    results = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__, "rows": rows, "rows_scale": rows / ROWS, "precision": args.precision,
               "compile": args.compile, "data_gib": data_gib, "phases": {}}
    opts = TrainOptions(precision=args.precision, compile=args.compile)
    if device.type == "cuda":  # warm-up: CUDA context, cuBLAS handles, the native op
        w = cfg.gmflow.model_copy(deep=True)
        w.optim.epoch = 1
        train_flow(x[:4096], y[:4096], CLASSES, w, cfg.filter, torch.Generator().manual_seed(2), desc="warm-up", options=opts)
    if "flow" in phases:
        fcfg = cfg.gmflow.model_copy(deep=True)
        fcfg.optim.epoch = args.flow_epochs
        with Phase(device) as ph:
            train_flow(x, y, CLASSES, fcfg, cfg.filter, torch.Generator().manual_seed(1), desc="flow", options=opts)
        results["phases"]["flow_epoch"] = {"seconds": ph.seconds / args.flow_epochs, "peak_gib": ph.peak_gib,
                                           "peak_kind": ph.peak_kind, "epochs_timed": args.flow_epochs}
    if "classifier" in phases:
        ccfg = cfg.regcls.model_copy(deep=True)
        ccfg.optim.epoch = args.classifier_epochs
        with Phase(device) as ph:
            train_classifier(ClassifierData(x, y), ClassifierData(xv, yv), CLASSES, ccfg,
                             torch.Generator().manual_seed(1), uses_prior=False, desc="classifier", options=opts)
        results["phases"]["classifier_epoch"] = {"seconds": ph.seconds / args.classifier_epochs,
                                                 "peak_gib": ph.peak_gib, "peak_kind": ph.peak_kind,
                                                 "epochs_timed": args.classifier_epochs}
    if "e2e" in phases:
        from dlsa_prod.pipeline import train_models

        splits = Splits(FeatureSet(x.cpu().numpy(), y.cpu().numpy()), FeatureSet(xv.cpu().numpy(), yv.cpu().numpy()),
                        FeatureSet(xv.cpu().numpy(), yv.cpu().numpy()), CLASSES)
        with Phase(device) as ph:
            train_models(splits, cfg, device, torch.Generator().manual_seed(0), options=opts)
        results["phases"]["e2e"] = {"seconds": ph.seconds, "peak_gib": ph.peak_gib, "peak_kind": ph.peak_kind,
                                    "flow_epochs": cfg.gmflow.optim.epoch, "classifier_epochs": cfg.regcls.optim.epoch}
    if args.profile:
        fcfg = cfg.gmflow.model_copy(deep=True)
        fcfg.optim.epoch = 1
        pc = cfg.model_copy(update={"gmflow": fcfg})
        results["profile_counts"] = profile_flow_epoch(x, y, pc, device, args.profile, opts)
    lines = [f"| phase | seconds | {'extrapolated to 115,357 rows' if rows < ROWS else ''} | peak GiB |",
             "|---|---:|---:|---:|"]
    for name, r in results["phases"].items():
        full = r["seconds"] * ROWS / rows
        lines.append(f"| {name} | {r['seconds']:.3f} | {full:.1f} s (linear) | {r['peak_gib']:.2f} ({r['peak_kind']}) |"
                     if rows < ROWS else f"| {name} | {r['seconds']:.3f} | | {r['peak_gib']:.2f} ({r['peak_kind']}) |")
    print("\n".join(lines))
    if "profile_counts" in results:
        print("profile counts (one flow epoch):", results["profile_counts"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
