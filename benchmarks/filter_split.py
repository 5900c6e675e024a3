"""Why ``routing.split_indices`` keeps the native ``filter_split`` op: exit/continue index lists of one
depth, native op against mask + nonzero, on CPU at serving and training sizes (one thread, one run).

    python benchmarks/filter_split.py [--rows 256,4096,115357] [--reps 200]
"""

from __future__ import annotations

import argparse
import time

import torch

from dlsa_prod.ops import filter_split, native_available
from dlsa_prod.ops.filtering import filter_split_torch


def _time(fn, ll, reps: int) -> float:
    fn(ll, 0.0)
    best = float("inf")
    for _ in range(5):  # best of 5 rounds: the machine is shared
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(ll, 0.0)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="256,4096,115357")
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not native_available("cpu"):
        raise SystemExit("the native ops are not built (pip install --no-build-isolation -e .)")
    print("| rows | native filter_split us | mask + nonzero us | native / torch |")
    print("|---:|---:|---:|---:|")
    for n in (int(r) for r in args.rows.split(",")):
        ll = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 100
        a, b = _time(filter_split, ll, args.reps), _time(filter_split_torch, ll, args.reps)
        print(f"| {n} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
