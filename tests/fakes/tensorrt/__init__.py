"""A strict fake of the TensorRT 10 Python API subset dlsa_prod uses (tests only; see tests/test_deploy_tensorrt.py).

It executes engines on the CPU through ONNX Runtime, after computing what TensorRT would compute
where that differs from ONNX Runtime.  Every rule names its source: ``[H]`` the TensorRT headers
(NVIDIA/TensorRT ``include/NvInfer.h`` / ``NvInferRuntime.h`` at a892d22, TensorRT 11.1; the same
calls and comments as in 10.x), ``[P]`` onnx-tensorrt's importer (``onnxOpImporters.cpp``, branch
10.1-GA, commit 96e7811), ``[S]`` trtexec (NVIDIA/TensorRT ``samples/common/sampleInference.cpp``),
``[G]`` the NVIDIA CUDA Graphs guide ("Constraints" page), or *contract* for a rule of this package's
own (it would not fail on real TensorRT, but the package promises it).

Import (``OnnxParser.parse``):
* ReduceLogSumExp is imported as Log(ReduceSum(Exp(x))), with no max shift [P: DEFINE_BUILTIN_OP_IMPORTER
  (ReduceLogSumExp) -> unaryHelper(kEXP) + importReduceLogSum]; the fake rewrites the graph so.
* Network inputs keep their ONNX names, ranks and dtypes; dynamic dims are -1 [H: INetworkDefinition].

Build (``build_serialized_network``):
* returns None on any failure, never raises [H: IBuilder::buildSerializedNetwork returns nullptr];
  the reason goes to the log (``ERRORS`` here, stderr in TensorRT);
* one builder config per network, an explicit workspace limit and a timing cache: *contract*;
* every dynamic input in every optimization profile, with its rank and fixed dims [H: "This function
  must be called at least once if the network has dynamic or shape input tensors"];
* TF32 is on unless cleared [H: BuilderFlag::kTF32 "Enabled by default"]; while set, MatMul/Gemm
  inputs are rounded to 10-bit mantissas (round to nearest) and accumulated in fp32 [H: kTF32 "TF32
  computes inner products by rounding the inputs to 10-bit mantissas before multiplying, but
  accumulates the sum using 23-bit mantissas"];
* FP16: MatMul/Gemm inputs and outputs are rounded to half precision (an approximation: TensorRT may
  also run other layers in fp16, which only adds error) [H: BuilderFlag::kFP16];
* ``add_optimization_profile`` returns -1 for a profile that is not valid (no shapes set) [H:
  IBuilderConfig::addOptimizationProfile "-1 if the input is not valid"; IOptimizationProfile::isValid];
* ``set_timing_cache`` returns False for a cache made on another device unless ignore_mismatch [H:
  IBuilderConfig::setTimingCache "A failure will be reported if the CUDA device property in the
  provided cache is different from current environment ... return true if set successfully, false
  otherwise"].  The fake's device is ``DEVICE`` (tests change it).

Run:
* IO by name only (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) [H: the TensorRT 10 IO API];
  the TensorRT 8 calls removed in 10 raise AttributeError [H: no bindings API in 10.x];
* ``set_input_shape`` returns False outside the profile [H: "false if ... some other error occurred"];
* ``set_tensor_address`` returns False for an address that is not 256-byte aligned [H: "The pointer
  must have at least 256-byte alignment"];
* ``execute_async_v3`` needs every input shape and every address set [H: "each input must have a
  non-null address and each output must have a non-null address"];
* CUDA graph capture (through ``tests/fakes/cuda_graph_stub.py``): an enqueue while the calling thread
  captures is recorded, not run; it returns False unless the context ran once with the current shapes
  before the capture [S: "Avoid capturing initialization calls by executing the enqueue function at
  least once before starting CUDA graph capture"; "the enqueue call may return false if the current
  CUDA graph capture fails"]; the capture stream is never the default stream [G]; a replay whose
  context has other shapes or addresses than at capture raises, since a graph replays the captured
  launches on the captured addresses [G: a graph fixes its kernel parameters] (real TensorRT would
  silently compute on the old addresses).
* "device" memory is host memory: addresses are read and written with ctypes (the runner's
  ``HostMemory`` seam).

``BUILDS`` records each build (flags, profiles, workspace) for assertions; ``ERRORS`` the logged errors.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys

import numpy as np

__version__ = "10.99.0+fake"
BUILDS: list[dict] = []
ERRORS: list[str] = []  # what TensorRT would log at ERROR severity
DEVICE = "fake-gpu"  # the device property a timing cache is checked against
ALIGNMENT = 256  # bytes, for set_tensor_address [H]
USED: set[str] = set()  # every attribute of a fake object that code outside this module touched
# the fake's own knobs and records, which the real module does not have (tests/test_real_tensorrt_names.py)
FAKE_ONLY = {"BUILDS", "ERRORS", "DEVICE", "ALIGNMENT", "USED", "FAKE_ONLY"}


def _error(msg: str):
    ERRORS.append(msg)
    return None


# ----------------------------------------------------------------------------- graph rewrites
def _import_like_onnx_tensorrt(model):
    """[P] ReduceLogSumExp -> Log(ReduceSum(Exp(x))): TensorRT's import, without the max shift."""
    from onnx import helper

    nodes = []
    for n in model.graph.node:
        if n.op_type != "ReduceLogSumExp":
            nodes.append(n)
            continue
        e, r = n.output[0] + "__trt_exp", n.output[0] + "__trt_sum"
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        nodes += [helper.make_node("Exp", [n.input[0]], [e]),
                  helper.make_node("ReduceSum", [e, *n.input[1:]], [r], **attrs),
                  helper.make_node("Log", [r], list(n.output))]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _round_gemm_inputs(model, precision: str):
    """[H] TF32: MatMul/Gemm inputs A and B rounded to 10-bit mantissas (Veltkamp split with 2^13 + 1,
    exact round-to-nearest in fp32 arithmetic).  FP16: inputs and outputs rounded through float16."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, k = [], 0
    split = numpy_helper.from_array(np.array(8193.0, np.float32), "__trt_tf32_split")
    if precision == "tf32":
        model.graph.initializer.append(split)

    def rounded(name):
        nonlocal k
        k += 1
        if precision == "tf32":
            t, d, out = f"{name}__tf32_t{k}", f"{name}__tf32_d{k}", f"{name}__tf32_{k}"
            nodes.extend([helper.make_node("Mul", [name, split.name], [t]), helper.make_node("Sub", [t, name], [d]),
                          helper.make_node("Sub", [t, d], [out])])
        else:
            h, out = f"{name}__fp16_h{k}", f"{name}__fp16_{k}"
            nodes.extend([helper.make_node("Cast", [name], [h], to=TensorProto.FLOAT16),
                          helper.make_node("Cast", [h], [out], to=TensorProto.FLOAT)])
        return out

    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            ins = list(n.input)
            for i in range(min(2, len(ins))):
                ins[i] = rounded(ins[i])
            del n.input[:]
            n.input.extend(ins)
            if precision == "fp16":
                raw = n.output[0] + "__fp16_raw"
                final = n.output[0]
                n.output[0] = raw
                nodes.append(n)
                nodes.extend([helper.make_node("Cast", [raw], [raw + "_h"], to=TensorProto.FLOAT16),
                              helper.make_node("Cast", [raw + "_h"], [final], to=TensorProto.FLOAT)])
                continue
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
_MAGIC = b"FAKETRT1"
_REMOVED = {"build_engine", "max_batch_size", "max_workspace_size", "num_bindings", "get_binding_index",
            "get_binding_name", "binding_is_input", "get_binding_shape", "get_binding_dtype", "execute",
            "execute_v2", "execute_async", "execute_async_v2", "set_binding_shape", "get_binding_shape",
            "all_binding_shapes_specified", "build_cuda_engine"}


class _Strict:
    def __getattribute__(self, name):
        if not name.startswith("_") and sys._getframe(1).f_globals.get("__name__") != __name__:
            USED.add(name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name):
        if name in _REMOVED:
            raise AttributeError(f"{type(self).__name__}.{name} was removed in TensorRT 10 (fake tensorrt)")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (fake tensorrt)")


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=WARNING):
        self.min_severity = min_severity


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    UINT8 = "uint8"


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):
    FP16 = 0
    TF32 = 1
    INT8 = 2
    REFIT = 3


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL,
               2: DataType.UINT8}


class ITensor(_Strict):
    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class INetworkDefinition(_Strict):
    def __init__(self, flags):
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx: bytes | None = None

    @property
    def num_inputs(self):
        return len(self.inputs)

    @property
    def num_outputs(self):
        return len(self.outputs)

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


class OnnxParser(_Strict):
    def __init__(self, network, logger):
        assert isinstance(network, INetworkDefinition) and isinstance(logger, Logger)
        self.network, self.errors = network, []

    def parse(self, model: bytes, path=None) -> bool:
        import onnx

        if not isinstance(model, (bytes, bytearray)):
            raise TypeError("OnnxParser.parse takes the serialized model bytes")
        try:
            m = onnx.load_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"cannot parse ONNX: {exc}")
            return False
        inits = {i.name for i in m.graph.initializer}

        def tensor(v):
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            return ITensor(v.name, dims, _ONNX_TYPES[t.elem_type])

        self.network.inputs = [tensor(v) for v in m.graph.input if v.name not in inits]
        self.network.outputs = [tensor(v) for v in m.graph.output]
        self.network.onnx = _import_like_onnx_tensorrt(m).SerializeToString()
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class IOptimizationProfile(_Strict):
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's names
        lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not (len(lo) == len(mid) == len(hi)):
            raise ValueError(f"profile for {name}: min/opt/max ranks differ")
        if any(d < 0 for d in lo) or not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise ValueError(f"profile for {name}: need 0 <= min <= opt <= max, got {lo} {mid} {hi}")
        self.shapes[name] = (lo, mid, hi)

    def get_shape(self, name):
        return [list(s) for s in self.shapes[name]]


class IHostMemory(_Strict):
    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self):
        return self._data

    @property
    def nbytes(self):
        return len(self._data)


class ITimingCache(_Strict):
    def __init__(self, data: bytes):
        blob = json.loads(data.decode()) if data else {"device": DEVICE, "entries": {}}
        self.device, self.entries = blob["device"], blob["entries"]

    def serialize(self):
        return IHostMemory(json.dumps({"device": self.device, "entries": self.entries}).encode())


class IBuilderConfig(_Strict):
    def __init__(self):
        self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 by default
        self.pools: dict = {}
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.used_by = None

    def set_flag(self, flag):
        assert isinstance(flag, BuilderFlag)
        self.flags.add(flag)

    def clear_flag(self, flag):
        assert isinstance(flag, BuilderFlag)
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        if not isinstance(pool, MemoryPoolType) or int(size) <= 0:
            raise ValueError("set_memory_pool_limit(MemoryPoolType, positive size)")
        self.pools[pool] = int(size)

    def get_memory_pool_limit(self, pool):
        return self.pools.get(pool, 0)

    def add_optimization_profile(self, profile):
        if not isinstance(profile, IOptimizationProfile) or not profile.shapes:
            return -1  # [H] not valid
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self):
        return len(self.profiles)

    def create_timing_cache(self, data: bytes):
        return ITimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        assert isinstance(cache, ITimingCache) and isinstance(ignore_mismatch, bool)
        if cache.device != DEVICE and not ignore_mismatch:
            _error(f"timing cache was created on {cache.device!r}, this device is {DEVICE!r}")
            return False  # [H]
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return self.timing_cache


class Builder(_Strict):
    def __init__(self, logger):
        assert isinstance(logger, Logger)

    def create_network(self, flags=0):
        if int(flags) & ~int(NetworkDefinitionCreationFlag.STRONGLY_TYPED):
            raise ValueError(f"unknown network creation flags {flags} (EXPLICIT_BATCH is implied in TensorRT 10)")
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        """[H] None on failure (the reason is logged), the serialized engine otherwise."""
        problem = self._check(network, config)
        if problem:
            return _error(problem)
        config.used_by = network
        config.timing_cache.entries[str(len(config.timing_cache.entries))] = [t.name for t in network.inputs]
        header = {"version": __version__, "flags": sorted(f.name for f in config.flags),
                  "workspace": config.pools[MemoryPoolType.WORKSPACE],
                  "inputs": [[t.name, list(t.shape), t.dtype.value] for t in network.inputs],
                  "outputs": [[t.name, list(t.shape), t.dtype.value] for t in network.outputs],
                  "profiles": [{n: [list(s) for s in v] for n, v in p.shapes.items()} for p in config.profiles]}
        BUILDS.append(header)
        h = json.dumps(header).encode()
        return IHostMemory(_MAGIC + len(h).to_bytes(8, "little") + h + self._computed(network.onnx, config))

    @staticmethod
    def _computed(onnx_bytes: bytes, config) -> bytes:
        """The graph as the engine computes it under the config's precision flags."""
        import onnx

        if BuilderFlag.FP16 in config.flags:
            return _round_gemm_inputs(onnx.load_from_string(onnx_bytes), "fp16").SerializeToString()
        if BuilderFlag.TF32 in config.flags:
            return _round_gemm_inputs(onnx.load_from_string(onnx_bytes), "tf32").SerializeToString()
        return onnx_bytes

    @staticmethod
    def _check(network, config) -> str | None:
        if network.onnx is None:
            return "network is empty (parse an ONNX model first)"
        if config.used_by is not None and config.used_by is not network:
            return "builder config already built another network: use one config per network (contract)"
        if MemoryPoolType.WORKSPACE not in config.pools:
            return "contract: set an explicit workspace limit (set_memory_pool_limit)"
        if config.timing_cache is None:
            return "contract: set a timing cache (set_timing_cache)"
        dynamic = [t for t in network.inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            return "network has dynamic inputs but no optimization profile"
        for k, p in enumerate(config.profiles):
            for t in network.inputs:
                if t.name not in p.shapes:
                    if t in dynamic:
                        return f"optimization profile {k} does not cover dynamic input {t.name}"
                    continue
                for s in p.shapes[t.name]:
                    if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                        return f"profile {k} shape {s} does not fit input {t.name} {t.shape}"
            extra = set(p.shapes) - {t.name for t in network.inputs}
            if extra:
                return f"profile {k} names tensors that are not network inputs: {sorted(extra)}"
        return None


class Runtime(_Strict):
    def __init__(self, logger):
        assert isinstance(logger, Logger)

    def deserialize_cuda_engine(self, data):
        data = bytes(data)
        if not data.startswith(_MAGIC):
            return None
        n = int.from_bytes(data[8:16], "little")
        header = json.loads(data[16:16 + n])
        if header["version"] != __version__:
            return None
        return ICudaEngine(header, data[16 + n:])


class ICudaEngine(_Strict):
    def __init__(self, header, onnx_bytes):
        self.header = header
        self.io = {n: (TensorIOMode.INPUT, s, d) for n, s, d in header["inputs"]}
        self.io.update({n: (TensorIOMode.OUTPUT, s, d) for n, s, d in header["outputs"]})
        self.names = [n for n, _, _ in header["inputs"]] + [n for n, _, _ in header["outputs"]]
        self.onnx = onnx_bytes
        self._session = None

    @property
    def num_io_tensors(self):
        return len(self.names)

    @property
    def num_optimization_profiles(self):
        return len(self.header["profiles"])

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.io[name][0] if name in self.io else TensorIOMode.NONE

    def get_tensor_dtype(self, name):
        return DataType(self.io[name][2])

    def get_tensor_shape(self, name):
        return tuple(self.io[name][1])

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self.header["profiles"][profile_index][name]]

    def create_execution_context(self):
        return IExecutionContext(self)

    def _ort_session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()  # run the rewritten arithmetic exactly as written
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self._session = ort.InferenceSession(self.onnx, opts, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext(_Strict):
    def __init__(self, engine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self._ran_with: dict | None = None  # the shapes of the last enqueue outside a capture

    def set_input_shape(self, name, shape) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        shape = tuple(int(d) for d in shape)
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False  # TensorRT logs an error and returns False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        mode, shape, _ = self.engine.io[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, tuple(shape))
        inputs = [n for n, _, _ in self.engine.header["inputs"]]
        if any(n not in self.shapes for n in inputs):
            raise RuntimeError("contract: set every input shape before asking for output shapes")
        batch = self.shapes[inputs[0]][0]
        return tuple(batch if d == -1 else d for d in shape)

    def set_tensor_address(self, name, ptr) -> bool:
        if name not in self.engine.io:
            return False
        if int(ptr) % ALIGNMENT:
            _error(f"address of {name} is not {ALIGNMENT}-byte aligned")
            return False  # [H]
        self.addresses[name] = int(ptr)
        return True

    def _view(self, name, shape):
        dtype = np.dtype(self.engine.io[name][2])
        n = int(np.prod(shape)) * dtype.itemsize
        buf = (ctypes.c_char * max(n, 1)).from_address(self.addresses[name])
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def execute_async_v3(self, stream_handle) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3 takes a CUDA stream handle (int)")
        inputs = [n for n, _, _ in self.engine.header["inputs"]]
        for n in inputs:
            if n not in self.shapes:
                raise RuntimeError(f"contract: set_input_shape({n!r}) before execute_async_v3")
        missing = [n for n in self.engine.names if n not in self.addresses]
        if missing:
            raise RuntimeError(f"contract: set_tensor_address for {missing} before execute_async_v3")
        from fakes.cuda_graph_stub import active_capture, record_launch  # one module: tests import it so too

        if active_capture() is not None:
            if self._ran_with != self.shapes:
                _error("enqueue during capture before one enqueue with these shapes [S]")
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)

            def launch():
                if self.shapes != shapes or self.addresses != addresses:
                    raise RuntimeError("CUDA graph replay after the context's shapes or addresses changed [G]")
                self._run(inputs)

            record_launch(int(stream_handle), launch)
            return True
        self._run(inputs)
        self._ran_with = dict(self.shapes)
        return True

    def _run(self, inputs):
        feeds = {n: self._view(n, self.shapes[n]).copy() for n in inputs}
        outs = [n for n, _, _ in self.engine.header["outputs"]]
        results = self.engine._ort_session().run(outs, feeds)
        for n, r in zip(outs, results):
            shape = self.get_tensor_shape(n)
            if tuple(r.shape) != shape:
                raise RuntimeError(f"output {n}: graph gave {r.shape}, engine shape {shape}")
            np.copyto(self._view(n, shape), r.astype(self.engine.io[n][2], copy=False))
        self.executions += 1


def nptype(dtype: DataType):
    return np.dtype(dtype.value).type
