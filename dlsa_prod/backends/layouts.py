"""How each bundle layout turns graph calls into (logits, exit_depth, loglik_1), for any backend
(loglik_1: depth 1's log p(x) of every row, for the input guard; None for the single layout).

A backend supplies one callable per graph (``feeds dict -> list of outputs`` in the spec's output
order) and an ``ArrayOps`` for the arrays it works on: numpy on the host (ONNX Runtime), or
device tensors (TensorRT), so staged routing happens on the device with host round trips only
where routing needs them (how many samples exit at a depth).
"""

from __future__ import annotations

import time


from ..array_ops import NUMPY
from ..bundle_spec import BACKBONE, FUSED, REGULAR, SINGLE, classifier_name, filter_name
from ..routing import regular_exit, staged_route


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
        return logits, ops.full(ops.rows(x), regular_exit(depth), like=logits), None
    return run_staged(calls, specs, x, thresholds, depth, ops, timer)


def run_staged(calls, specs, x, thresholds, depth, ops=NUMPY, timer=None):
    """Each sample runs the filter of every depth it reaches and only the classifier it exits at
    (``routing.staged_route`` over the backend's graph calls)."""
    if BACKBONE in specs:
        (x,) = _call(calls, specs, BACKBONE, [x], timer)
    first = {}

    def route(d, xr):
        return _call(calls, specs, filter_name(d), [xr], timer)

    def classify(d, xe, ce):
        return _call(calls, specs, classifier_name(d), [xe, ce], timer)[0]

    def regular(xr):
        return _call(calls, specs, REGULAR, [xr], timer)[0]

    def record(d, _remaining, ll):
        if d == 1:
            first["loglik"] = ll  # every row reaches depth 1

    logits, exit_depth = staged_route(route, classify, regular, x, thresholds, depth, ops, record)
    return logits, exit_depth, first.get("loglik")
