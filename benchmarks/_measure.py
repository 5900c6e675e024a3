"""Timing and peak-memory helpers shared by the benchmark scripts (CPU and CUDA)."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds (CUDA: synchronised around each call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_interleaved_ms(fns: dict, device: torch.device, repeat: int, warmup: int = 2) -> dict:
    """Median time of each fn in ms, calling them round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def peak_extra_mb(fn, device: torch.device) -> float:
    """Peak tensor memory fn() allocates beyond what is already allocated, in MB.

    CUDA: torch's allocator peak.  CPU: the running sum of the allocation and free events
    that torch's profiler records (profile_memory=True), in time order.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.cpu_memory_usage
        peak = max(peak, level)
    return peak / 2**20


def fp32_peak_tflops(device: torch.device, n: int = 8192) -> float:
    """Measured IEEE-fp32 GEMM rate (TF32 off) on this device, the 'peak' used for floors."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    knob = torch.backends.cuda.matmul
    saved = knob.fp32_precision
    knob.fp32_precision = "ieee"
    try:
        ms = time_ms(lambda: a @ b, device, repeat=5)
    finally:
        knob.fp32_precision = saved
    return 2 * n**3 / (ms * 1e-3) / 1e12
