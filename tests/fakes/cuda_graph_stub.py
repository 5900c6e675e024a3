"""A CPU stand-in for the part of ``torch.cuda`` that CUDA-graph capture code uses (tests only).

It lets capture and replay run in CI, and refuses what a real capture refuses.  Each rule names
its source; rules marked *contract* are this package's own.

Capture (``with stub.graph(g, pool=..., stream=..., capture_error_mode=...)``):

* the capture stream is never the default stream: "Graph capture must occur on a non-default
  stream" (NVIDIA CUDA Graphs guide, "Constraints": https://docs.nvidia.com/dl-cuda-graph/
  cuda-graph-basics/constraints.html; cudaStreamBeginCapture on the legacy stream fails with
  cudaErrorStreamCaptureUnsupported).  ``torch.cuda.graph`` without ``stream`` captures on a side
  stream (torch/cuda/graphs.py), so only an explicit default stream is refused here;
* no host synchronisation inside a capture (same page, "No Host-Device Synchronization"): an aten
  ``_local_scalar_dense`` (``.item()``, ``int(t)``) raises;
* *contract*: ``capture_error_mode="thread_local"`` (torch's default "global" makes CUDA work of
  any other thread fail during the capture: torch.cuda.graph docs, cudaStreamCaptureModeGlobal),
  and one memory pool per executor (``pool``): the stub records both for the tests to assert.

What a capture records: every aten op run in the capturing thread (a ``TorchDispatchMode`` tape),
plus any engine launch registered with ``record_launch`` (the fake TensorRT's ``execute_async_v3``
on the capturing stream).  ``replay()`` re-runs the tape and copies each op's result into the
tensor the capture produced, which is what a CUDA graph does: the same kernels on the same
addresses, so the outputs of the capture are updated in place and inputs are read from the
captured (static) input tensors.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_local = threading.local()
_handles = itertools.count(1)


class Stream:
    def __init__(self, device=None, default=False):
        self.cuda_stream = 0 if default else next(_handles)

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


DEFAULT_STREAM = Stream(default=True)


def active_capture():
    """(stream handle, graph) of the capture running in this thread, or None."""
    return getattr(_local, "capture", None)


def record_launch(stream_handle: int, launch) -> bool:
    """Called by a fake engine's enqueue: True (and LAUNCH recorded) when this thread is capturing;
    an enqueue on another stream during a thread's capture is refused (it would not be captured)."""
    cap = active_capture()
    if cap is None:
        return False
    handle, graph = cap
    if stream_handle != handle:
        raise RuntimeError(f"enqueue on stream {stream_handle} while capturing stream {handle}: the work would "
                           f"run once now and never on replay (capture stub)")
    graph.steps.append(("launch", launch))
    return True


class _Tape(TorchDispatchMode):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("host synchronisation (.item()) inside a CUDA graph capture (capture stub)")
        out = func(*args, **kwargs)
        self.graph.steps.append(("op", func, args, kwargs, out))
        return out


class CUDAGraph:
    def __init__(self):
        self.steps: list = []
        self.captured = False
        self.pool = None
        self.mode = None
        self.replays = 0

    def replay(self):
        if not self.captured:
            raise RuntimeError("replay of a graph that was never captured (capture stub)")
        for step in self.steps:
            if step[0] == "launch":
                step[1]()
                continue
            _, func, args, kwargs, out = step
            new = func(*args, **kwargs)
            for dst, src in zip(_tensors(out), _tensors(new)):
                if dst is not src:
                    dst.copy_(src)
        self.replays += 1


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


class CaptureStub:
    """Passed where code takes ``torch.cuda`` for capture; records captures for assertions."""

    Stream = Stream
    CUDAGraph = CUDAGraph

    def __init__(self):
        self.captures: list[CUDAGraph] = []
        self.pools: list[object] = []
        self._lock = threading.Lock()

    def graph_pool_handle(self):
        pool = object()
        self.pools.append(pool)
        return pool

    def current_stream(self, device=None):
        return getattr(_local, "stream", DEFAULT_STREAM)

    @contextlib.contextmanager
    def stream(self, s):
        saved = getattr(_local, "stream", DEFAULT_STREAM)
        _local.stream = s if s is not None else saved
        try:
            yield
        finally:
            _local.stream = saved

    def synchronize(self, device=None):
        pass

    @contextlib.contextmanager
    def graph(self, g: CUDAGraph, pool=None, stream=None, capture_error_mode="global"):
        if stream is not None and stream.cuda_stream == 0:
            raise RuntimeError("CUDA graph capture on the default stream is not permitted (capture stub)")
        if active_capture() is not None:
            raise RuntimeError("nested CUDA graph capture in one thread (capture stub)")
        s = stream or Stream()
        g.pool, g.mode = pool, capture_error_mode
        _local.capture = (s.cuda_stream, g)
        try:
            with self.stream(s), _Tape(g):
                yield
        finally:
            _local.capture = None
        g.captured = True
        with self._lock:
            self.captures.append(g)
