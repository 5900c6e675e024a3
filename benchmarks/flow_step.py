"""One flow-filter training step (MAF forward, GMM log-likelihood, likelihood + purity +
balance losses, backward, SGD step) with the research code's broadcast GMM versus the
pure-torch GEMM form and the native op: same losses (relative difference), time, peak memory.

    python benchmarks/flow_step.py --device cpu --pairs 512          # 1024 rows through the flow
    python benchmarks/flow_step.py --device cuda --pairs 1024        # research batch: 1024 pos + 1024 neg
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import peak_extra_mb, time_interleaved_ms  # noqa: E402

from dlsa_prod.config import GMFlowConfig  # noqa: E402
from dlsa_prod.models import FlowGMM  # noqa: E402
from dlsa_prod.ops import native  # noqa: E402
from dlsa_prod.training.flow_trainer import flow_step_losses  # noqa: E402
from dlsa_prod.training.losses import BalanceLoss, class_weights  # noqa: E402


def with_backend(model0: FlowGMM, backend: str) -> FlowGMM:
    """A copy of model0 (default architecture: same weights, masks and centres, all in its state)
    whose GMM term uses `backend`."""
    model = FlowGMM(model0.means.shape[1], model0.num_cluster, 0.05, gmm_backend=backend)
    model.load_state_dict(model0.state_dict())
    return model.to(model0.means.device)


def make_step(model0: FlowGMM, backend: str, x_pos, y_pos, x_neg, weights, cfg: GMFlowConfig):
    """A closure running one full training step from the same initial weights each call."""
    model = with_backend(model0, backend)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    state = copy.deepcopy(model.state_dict())
    last = {}

    def step():
        model.load_state_dict(state)
        model.train()
        losses = flow_step_losses(model, x_pos, y_pos, x_neg, weights,
                                  BalanceLoss(model.num_cluster, cfg.loss.posterior_momentum), cfg)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        last["losses"] = {k: float(getattr(losses, k).detach()) for k in ("total", "likelihood", "purity", "balance")}

    return step, last


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--clusters", type=int, default=500)
    p.add_argument("--pairs", type=int, default=512, help="positive/negative pairs per step")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.manual_seed(0)
    cfg = GMFlowConfig()  # research ImageNet-LT loss weights and lr
    model0 = FlowGMM(args.dim, args.clusters, 0.05).to(device)
    g = torch.Generator().manual_seed(1)
    x_pos = torch.randn(args.pairs, args.dim, generator=g).to(device)
    x_neg = torch.randn(args.pairs, args.dim, generator=g).to(device)
    y_pos = torch.randint(args.classes, (args.pairs,), generator=g).to(device)
    counts = torch.randint(5, 1280, (args.classes,), generator=g)
    weights = class_weights(counts, cfg.data.weight_q).to(device)
    backends = ["broadcast", "torch"] + (["native"] if native.available(device) else [])
    steps = {b: make_step(model0, b, x_pos, y_pos, x_neg, weights, cfg) for b in backends}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; dim {args.dim}, K {args.clusters}, {args.pairs} pos + {args.pairs} neg rows; "
          f"native ops: {native.build_info()}", flush=True)
    times = {"broadcast": time_interleaved_ms({"broadcast": steps["broadcast"][0]}, device, 1, warmup=1)["broadcast"]}
    times.update(time_interleaved_ms({b: steps[b][0] for b in backends if b != "broadcast"}, device, args.repeat))
    peaks = {b: peak_extra_mb(steps[b][0], device) for b in backends}
    ref = steps["broadcast"][1]["losses"]
    rows = []
    print("| GMM form | step ms | peak extra MB | time vs broadcast | memory vs broadcast | total loss | "
          "max rel. loss diff vs broadcast |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b in backends:
        losses = steps[b][1]["losses"]
        # the balance loss is a KL near 0 formed as sum p log p + log K: its fp32 rounding is relative
        # to log K, not to its own (tiny) value (as in tests/test_flow_step_backends.py)
        scale = {k: max(abs(ref[k]), math.log(args.clusters) if k == "balance" else 1e-12) for k in ref}
        rel = max(abs(losses[k] - ref[k]) / scale[k] for k in ref)
        rows.append({"backend": b, "ms": times[b], "peak_mb": peaks[b], "losses": losses, "max_rel_diff": rel})
        print(f"| {b} | {times[b]:.1f} | {peaks[b]:.0f} | {times[b] / times['broadcast']:.3f}x | "
              f"{peaks[b] / peaks['broadcast']:.4f}x | {losses['total']:.6f} | {rel:.2e} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "args": vars(args), "rows": rows}, fh, indent=2)
    worst = max(r["max_rel_diff"] for r in rows)
    if worst > 1e-4:
        print(f"FAIL: losses differ from the broadcast form by {worst:.2e} relative (> 1e-4)")
        sys.exit(1)


if __name__ == "__main__":
    main()
