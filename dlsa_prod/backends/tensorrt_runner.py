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

from ..bundle_spec import BundleError, BundleSpec, EngineSpec, GraphSpec
from ..errors import DLSAError
from .layouts import run_layout
from .tensorrt_build import import_tensorrt

REBUILD = "rebuild them with `dlsa-prod export --trt`"


def check_engine_metadata(spec: BundleSpec, trt_version: str, cc: str, precision: str | None = None) -> None:
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


class EngineRunner:
    """One engine, one execution context (guarded by a lock: contexts are not thread-safe)."""

    def __init__(self, trt, engine, graph: GraphSpec, espec: EngineSpec, memory, where: str):
        self.trt, self.engine, self.graph, self.memory = trt, engine, graph, memory
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(t.name for t in graph.inputs) or \
                sorted(outputs) != sorted(t.name for t in graph.outputs):
            raise BundleError(f"{where}: engine IO {inputs} -> {outputs} differs from graph {graph.name}; {REBUILD}")
        for t in graph.inputs:
            got = [list(s) for s in engine.get_tensor_profile_shape(t.name, 0)]
            want = [espec.profile[t.name][w] for w in ("min", "opt", "max")]
            if got != want:
                raise BundleError(f"{where}: engine profile of {t.name} is {got}, the manifest records {want}; {REBUILD}")
        self.max_rows = min(int(espec.profile[t.name]["max"][0]) for t in graph.inputs)
        self.opt_rows = min(int(espec.profile[t.name]["opt"][0]) for t in graph.inputs)
        self.context = engine.create_execution_context()
        self.lock = threading.Lock()
        self.graphs: dict[int, tuple] = {}

    def __call__(self, feeds: dict) -> list:
        first = feeds[self.graph.inputs[0].name]
        b = int(first.shape[0])
        if b <= self.max_rows:
            return self._execute(feeds, b)
        parts = [self._execute({k: v[s:s + self.max_rows] for k, v in feeds.items()}, min(self.max_rows, b - s))
                 for s in range(0, b, self.max_rows)]
        return [self.memory.concat([p[i] for p in parts]) for i in range(len(self.graph.outputs))]

    def _bind(self, context, feeds: dict) -> list:
        m = self.memory
        for t in self.graph.inputs:
            a = feeds[t.name]
            if not context.set_input_shape(t.name, tuple(int(d) for d in a.shape)):
                raise DLSAError(f"TensorRT rejected shape {tuple(a.shape)} for input {t.name} of {self.graph.name} "
                                f"(outside the engine's profile)")
            context.set_tensor_address(t.name, m.ptr(a))
        outs = []
        for t in self.graph.outputs:
            o = m.empty_dtype(tuple(context.get_tensor_shape(t.name)), t.dtype)
            context.set_tensor_address(t.name, m.ptr(o))
            outs.append(o)
        return outs

    def _execute(self, feeds: dict, b: int) -> list:
        with self.lock:
            if b in self.graphs:
                return self._replay(feeds, b)
            outs = self._bind(self.context, feeds)
            if not self.context.execute_async_v3(self.memory.stream()):
                raise DLSAError(f"TensorRT failed to execute {self.graph.name}")
            return outs

    def capture(self, b: int) -> None:
        """Capture one CUDA graph for batch size B (own context and static buffers)."""
        cuda = self.memory.graph_capture()
        if cuda is None:
            return
        ctx = self.engine.create_execution_context()
        static_in = {t.name: self.memory.empty_dtype(t.concrete(b), t.dtype) for t in self.graph.inputs}
        for a in static_in.values():
            a.zero_()
        outs = self._bind(ctx, static_in)
        ctx.execute_async_v3(self.memory.stream())  # TensorRT needs one run after shape changes before capture
        self.memory.synchronize()
        g = cuda.CUDAGraph()
        with cuda.graph(g, stream=self.memory._stream):
            ctx.execute_async_v3(self.memory.stream())
        self.graphs[b] = (ctx, static_in, outs, g)

    def _replay(self, feeds: dict, b: int) -> list:
        _ctx, static_in, outs, g = self.graphs[b]
        for name, a in static_in.items():
            a.copy_(feeds[name])
        g.replay()
        return [o.clone() for o in outs]


class TensorRTExecutor:
    def __init__(self, spec: BundleSpec, layout: str, memory=None, cuda_graphs: bool = False, warmup: bool = True,
                 precision: str | None = None):
        from .device_memory import default_memory

        trt = import_tensorrt()
        self.memory = memory or default_memory()
        check_engine_metadata(spec, str(trt.__version__), self.memory.compute_capability(), precision)
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
        if cuda_graphs and layout in ("fused", "single"):
            runner = self.runners[layout]
            for b in sorted({1, runner.opt_rows, runner.max_rows}):
                runner.capture(b)

    def _stream(self):
        cuda = self.memory.graph_capture()
        return cuda.stream(self.memory._stream) if cuda is not None else contextlib.nullcontext()

    def _warmup(self) -> None:
        import numpy as np

        first = next(iter(self.specs.values())).inputs[0]
        rows = min(r.opt_rows for r in self.runners.values())
        x = np.zeros(first.concrete(rows), np.float32)
        self.run(x)

    def describe(self) -> str:
        return f"tensorrt {self.precision} on {self.memory.device_name()}"

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
