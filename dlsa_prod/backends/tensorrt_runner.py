"""Run a bundle's native TensorRT engines: ``Runtime(bundle, backend="tensorrt")``.

Name-based IO only (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3`` on one CUDA stream).  Buffers are
torch CUDA tensors (see ``device_memory``); staged routing runs on the device between engines,
with one host round trip per depth (how many samples exit).  Batches above the profile maximum are
chunked; every engine is warmed up at load; ``cuda_graphs=True`` captures one CUDA graph per batch
size for the fused and single layouts.

At load the engines' metadata is checked against this machine (TensorRT version, GPU compute
capability) and against the bundle spec (IO names, profile ranges); a mismatch asks for a rebuild.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..bundle_spec import BundleError, BundleSpec, EngineSpec, GraphSpec
from ..errors import DLSAError
from .device_memory import ALIGNMENT, is_aligned
from .layouts import run_layout
from .tensorrt_build import import_tensorrt

REBUILD = "rebuild them with `dlsa-prod export --trt`"


def check_engine_metadata(spec: BundleSpec, trt_version: str, cc: str, device: str,
                          precision: str | None = None) -> None:
    """Engines run only where they were built: same TensorRT, compute capability and GPU model (H100 and
    H200 are both compute capability 9.0, and TensorRT tunes kernels per device)."""
    e = spec.engines
    if e is None:
        raise BundleError(f"{spec.path}: the bundle has no TensorRT engines (export with --trt)")
    if precision is not None and e.precision != precision:
        raise BundleError(f"{spec.path}: TensorRT engines are {e.precision}, {precision} was asked for; rebuild them "
                          f"with `dlsa-prod export --trt --precision {precision}`")
    if e.tensorrt_version != trt_version or e.compute_capability != cc:
        raise BundleError(f"{spec.path}: TensorRT engines were built with TensorRT {e.tensorrt_version} for compute "
                          f"capability {e.compute_capability}; this machine has TensorRT {trt_version}, compute "
                          f"capability {cc}: {REBUILD}")
    if e.device_name != device:
        raise BundleError(f"{spec.path}: TensorRT engines were built on {e.device_name or 'an unrecorded GPU'}; this "
                          f"machine has {device}: {REBUILD}")


class EngineRunner:
    """One engine, one execution context (guarded by a lock: contexts are not thread-safe).

    Every address handed to TensorRT is 256-byte aligned: inputs that are not (a view into a larger
    batch) and every chunk of a batch above the profile maximum are copied into this runner's static
    input buffers first.  Every bool TensorRT returns is checked and turned into one line."""

    def __init__(self, trt, engine, graph: GraphSpec, espec: EngineSpec, memory, where: str):
        self.trt, self.engine, self.graph, self.memory = trt, engine, graph, memory
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(t.name for t in graph.inputs) or \
                sorted(outputs) != sorted(t.name for t in graph.outputs):
            raise BundleError(f"{where}: engine IO {inputs} -> {outputs} differs from graph {graph.name}; {REBUILD}")
        for t in (*graph.inputs, *graph.outputs):
            got = engine_dtype(trt, engine, t.name)
            if got != t.dtype:
                raise BundleError(f"{where}: engine tensor {t.name} is {got}, graph {graph.name} has {t.dtype}; {REBUILD}")
        for t in graph.inputs:
            got = [list(s) for s in engine.get_tensor_profile_shape(t.name, 0)]
            want = [espec.profile[t.name][w] for w in ("min", "opt", "max")]
            if got != want:
                raise BundleError(f"{where}: engine profile of {t.name} is {got}, the manifest records {want}; {REBUILD}")
        self.max_rows = min(int(espec.profile[t.name]["max"][0]) for t in graph.inputs)
        self.opt_rows = min(int(espec.profile[t.name]["opt"][0]) for t in graph.inputs)
        self.context = engine.create_execution_context()
        self.lock = threading.RLock()
        self.static_in = {t.name: memory.empty_dtype(t.concrete(self.max_rows), t.dtype) for t in graph.inputs}
        self.graphs: dict[int, tuple] = {}

    def __call__(self, feeds: dict) -> list:
        first = feeds[self.graph.inputs[0].name]
        b = int(first.shape[0])
        with self.lock:
            if b <= self.max_rows:
                return self._execute(self._aligned(feeds, b), b)
            parts = []
            for s in range(0, b, self.max_rows):
                n = min(self.max_rows, b - s)
                parts.append(self._execute(self._staged_copy({k: v[s:s + n] for k, v in feeds.items()}, n), n))
            return [self.memory.concat([p[i] for p in parts]) for i in range(len(self.graph.outputs))]

    def _aligned(self, feeds: dict, n: int) -> dict:
        if all(is_aligned(self.memory, a) for a in feeds.values()):
            return feeds
        return self._staged_copy(feeds, n)

    def _staged_copy(self, feeds: dict, n: int) -> dict:
        """Copy N rows of each input into the static (aligned) input buffers; views of their first N rows."""
        out = {}
        for name, a in feeds.items():
            buf = self.static_in[name][:n]
            self.memory.copy_into(buf, a)
            out[name] = buf
        return out

    def _bind(self, context, feeds: dict) -> list:
        m = self.memory
        for t in self.graph.inputs:
            a = feeds[t.name]
            if not context.set_input_shape(t.name, tuple(int(d) for d in a.shape)):
                raise DLSAError(f"TensorRT rejected shape {tuple(a.shape)} for input {t.name} of {self.graph.name} "
                                f"(outside the engine's profile)")
            self._set_address(context, t.name, a)
        outs = []
        for t in self.graph.outputs:
            o = m.empty_dtype(tuple(context.get_tensor_shape(t.name)), t.dtype)
            self._set_address(context, t.name, o)
            outs.append(o)
        return outs

    def _set_address(self, context, name: str, a) -> None:
        if not context.set_tensor_address(name, self.memory.ptr(a)):
            raise DLSAError(f"TensorRT refused the address of {name} for {self.graph.name} (TensorRT needs "
                            f"{ALIGNMENT}-byte aligned device buffers)")

    def _enqueue(self, context) -> None:
        if not context.execute_async_v3(self.memory.stream()):
            raise DLSAError(f"TensorRT failed to execute {self.graph.name} (see the TensorRT log above)")

    def _execute(self, feeds: dict, b: int) -> list:
        if b in self.graphs:
            return self._replay(feeds, b)
        outs = self._bind(self.context, feeds)
        self._enqueue(self.context)
        return outs

    def capture(self, b: int, pool=None) -> None:
        """Capture one CUDA graph for batch size B (own context and static buffers), thread-local
        capture mode, in the executor's memory POOL."""
        cuda = self.memory.graph_capture()
        if cuda is None:
            return
        ctx = self.engine.create_execution_context()
        static_in = {t.name: self.memory.from_host(np.zeros(t.concrete(b), np.dtype(t.dtype)))
                     for t in self.graph.inputs}
        outs = self._bind(ctx, static_in)
        self._enqueue(ctx)  # TensorRT needs one run after shape changes before capture (trtexec does the same)
        self.memory.synchronize()
        g = cuda.CUDAGraph()
        with cuda.graph(g, pool=pool, stream=self.memory._stream, capture_error_mode="thread_local"):
            if not ctx.execute_async_v3(self.memory.stream()):
                raise DLSAError(f"TensorRT could not be captured into a CUDA graph for {self.graph.name}; "
                                f"load without cuda_graphs")
        self.graphs[b] = (ctx, static_in, outs, g)

    def _replay(self, feeds: dict, b: int) -> list:
        _ctx, static_in, outs, g = self.graphs[b]
        for name, a in static_in.items():
            self.memory.copy_into(a, feeds[name])
        g.replay()
        return [self.memory.copy(o) for o in outs]


def engine_dtype(trt, engine, name: str) -> str:
    """The numpy name of an engine tensor's dtype (``get_tensor_dtype``)."""
    return np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name


class TensorRTExecutor:
    def __init__(self, spec: BundleSpec, layout: str, memory=None, cuda_graphs: bool = False, warmup: bool = True,
                 precision: str | None = None):
        from .device_memory import default_memory

        trt = import_tensorrt()
        self.memory = memory or default_memory()
        check_engine_metadata(spec, str(trt.__version__), self.memory.compute_capability(), self.memory.device_name(),
                              precision)
        self.spec, self.layout = spec, layout
        self.specs = spec.graphs(layout)
        engines = spec.engines
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.runners = {}
        for name, graph in self.specs.items():
            key = f"{layout}/{name}"
            if key not in engines.engines:
                raise BundleError(f"{spec.path}: no TensorRT engine for the {layout} graph {name}; {REBUILD}")
            es = engines.engines[key]
            f = spec.path / es.file
            engine = runtime.deserialize_cuda_engine(f.read_bytes())
            if engine is None:
                raise BundleError(f"{f}: TensorRT could not load the engine; {REBUILD}")
            self.runners[name] = EngineRunner(trt, engine, graph, es, self.memory, str(f))
        self.precision = engines.precision
        self.max_rows = None  # runners chunk above their profile maximum themselves
        self.calls = dict(self.runners)
        if warmup:
            self._warmup()
        self.captured = []
        cuda = self.memory.graph_capture()
        if cuda_graphs and layout in ("fused", "single") and cuda is not None:
            runner = self.runners[layout]
            pool = cuda.graph_pool_handle()  # one memory pool for every graph of this executor
            for b in sorted({1, runner.opt_rows, runner.max_rows}):
                runner.capture(b, pool)
                self.captured.append(b)

    def _stream(self):
        cuda = self.memory.graph_capture()
        return cuda.stream(self.memory._stream) if cuda is not None else contextlib.nullcontext()

    def _warmup(self) -> None:
        first = next(iter(self.specs.values())).inputs[0]
        rows = min(r.opt_rows for r in self.runners.values())
        x = np.zeros(first.concrete(rows), np.float32)
        self.run(x)

    def describe(self) -> str:
        graphs = f", CUDA graphs for batch {'/'.join(map(str, self.captured))}" if self.captured else ""
        return f"tensorrt {self.precision} on {self.memory.device_name()}{graphs}"

    def run(self, x, timer=None):
        m = self.memory
        with self._stream():
            logits, exit_depth, loglik_1 = run_layout(self.layout, self.calls, self.specs, m.from_host(x),
                                                      self.spec.thresholds, self.spec.depth, m, timer)
            out = (m.host(logits), m.host(exit_depth).astype("int64", copy=False),
                   None if loglik_1 is None else m.host(loglik_1))
        return out


def load(spec: BundleSpec, layout: str, options: dict) -> TensorRTExecutor:
    return TensorRTExecutor(spec, layout, options.get("memory"), options.get("cuda_graphs", False),
                            options.get("warmup", True), options.get("precision"))
