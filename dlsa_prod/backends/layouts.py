"""How each bundle layout turns graph calls into (logits, exit_depth, loglik_1), for any backend
(loglik_1: depth 1's log p(x) of every row, for the input guard; None for the single layout).

A backend supplies one callable per graph (``feeds dict -> list of outputs`` in the spec's output
order) and an ``ArrayOps`` for the arrays it works on: numpy on the host (ONNX Runtime), or
device tensors (TensorRT), so staged routing happens on the device with host round trips only
where routing needs them (how many samples exit at a depth).
"""

from __future__ import annotations

import time

import numpy as np

from ..bundle_spec import BACKBONE, FUSED, REGULAR, SINGLE, classifier_name, filter_name


class NumpyOps:
    def full(self, n, value, like):
        return np.full(n, value, dtype=np.int64)

    def arange(self, n, like):
        return np.arange(n)

    def empty(self, shape, like):
        return np.empty(shape, dtype=like.dtype)

    def count(self, mask) -> int:
        return int(np.count_nonzero(mask))

    def rows(self, a) -> int:
        return int(a.shape[0])


NUMPY = NumpyOps()


class TorchOps:
    """The same operations on torch tensors of one device (torch backend, TensorRT on torch CUDA memory)."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    def full(self, n, value, like):
        return self.torch.full((n,), value, dtype=self.torch.int64, device=self.device)

    def arange(self, n, like):
        return self.torch.arange(n, device=self.device)

    def empty(self, shape, like):
        return self.torch.empty(shape, dtype=like.dtype, device=self.device)

    def count(self, mask) -> int:
        return int(mask.sum())

    def rows(self, a) -> int:
        return int(a.shape[0])


class Timer:
    """Accumulates seconds per graph name (thread-safe enough: one dict update per call under the GIL
    is not atomic, so a lock guards it)."""

    def __init__(self):
        import threading

        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def clear(self) -> None:
        with self._lock:
            self.seconds.clear()


def _call(calls, specs, name, args, timer):
    feeds = {t.name: a for t, a in zip(specs[name].inputs, args)}
    if timer is None:
        return calls[name](feeds)
    t0 = time.perf_counter()
    out = calls[name](feeds)
    timer.add(name, time.perf_counter() - t0)
    return out


def run_layout(layout: str, calls: dict, specs: dict, x, thresholds, depth: int, ops=NUMPY, timer=None):
    """(logits, exit_depth, loglik_1) for graph-ready input X, as arrays of ``ops``."""
    if layout == FUSED:
        logits, _pred, exit_depth, ll = _call(calls, specs, FUSED, [x], timer)
        return logits, exit_depth, ll[:, 0]
    if layout == SINGLE:
        (logits,) = _call(calls, specs, SINGLE, [x], timer)
        return logits, ops.full(ops.rows(x), depth + 1, like=logits), None
    return run_staged(calls, specs, x, thresholds, depth, ops, timer)


def run_staged(calls, specs, x, thresholds, depth, ops=NUMPY, timer=None):
    """Each sample runs the filter of every depth it reaches and only the classifier it exits at."""
    if BACKBONE in specs:
        (x,) = _call(calls, specs, BACKBONE, [x], timer)
    b = ops.rows(x)
    logits = None
    exit_depth = ops.full(b, depth + 1, like=x)
    remaining = ops.arange(b, like=x)
    xr = x
    loglik_1 = None
    for d in range(1, depth + 1):
        if ops.rows(remaining) == 0:
            break
        ll, cluster = _call(calls, specs, filter_name(d), [xr], timer)
        if d == 1:
            loglik_1 = ll  # every row reaches depth 1
        out = ll >= thresholds[d - 1]
        n_out = ops.count(out)  # the one host round trip routing needs per depth
        if n_out:
            (lo,) = _call(calls, specs, classifier_name(d), [xr[out], cluster[out]], timer)
            if logits is None:
                logits = ops.empty((b, lo.shape[1]), like=lo)
            idx = remaining[out]
            logits[idx] = lo
            exit_depth[idx] = d
        if n_out == ops.rows(remaining):
            remaining = remaining[:0]
            break
        keep = ~out
        remaining = remaining[keep]
        xr = xr[keep]
    if ops.rows(remaining):
        (lr,) = _call(calls, specs, REGULAR, [xr], timer)
        if logits is None:
            logits = ops.empty((b, lr.shape[1]), like=lr)
        logits[remaining] = lr
    return logits, exit_depth, loglik_1
