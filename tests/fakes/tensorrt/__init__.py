"""A strict fake of the TensorRT 10 Python API subset dlsa_prod uses (tests only; see tests/test_deploy_tensorrt.py).

It enforces the contract that matters and executes engines by delegating to ONNX Runtime on the CPU:

* build: an explicit workspace limit, a timing cache, one builder config per network (a config
  that already built one network is refused), every dynamic input of the network in every
  optimisation profile with its rank and fixed dims, and min <= opt <= max;
* run: IO by name only (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); every input's shape set
  within the profile and every address set before execute;
* the TensorRT 8 calls removed in 10 (bindings, ``execute_v2``, ``build_engine``,
  ``max_workspace_size`` ...) raise AttributeError;
* "device" memory is host memory: addresses are read and written with ctypes (the runner's
  ``HostMemory`` seam).

``BUILDS`` records each build (flags, profiles, workspace) for assertions.
"""

from __future__ import annotations

import ctypes
import enum
import json

import numpy as np

__version__ = "10.99.0+fake"
BUILDS: list[dict] = []
_MAGIC = b"FAKETRT1"
_REMOVED = {"build_engine", "max_batch_size", "max_workspace_size", "num_bindings", "get_binding_index",
            "get_binding_name", "binding_is_input", "get_binding_shape", "get_binding_dtype", "execute",
            "execute_v2", "execute_async", "execute_async_v2", "set_binding_shape", "get_binding_shape",
            "all_binding_shapes_specified", "build_cuda_engine"}


class _Strict:
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
        self.network.onnx = bytes(model)
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
        self.entries = json.loads(data.decode()) if data else {}

    def serialize(self):
        return IHostMemory(json.dumps(self.entries).encode())


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
        self.profiles.append(profile)
        return len(self.profiles) - 1

    @property
    def num_optimization_profiles(self):
        return len(self.profiles)

    def create_timing_cache(self, data: bytes):
        return ITimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        assert isinstance(cache, ITimingCache) and isinstance(ignore_mismatch, bool)
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
        if network.onnx is None:
            raise RuntimeError("network is empty (parse an ONNX model first)")
        if config.used_by is not None and config.used_by is not network:
            raise RuntimeError("builder config already built another network: use one config per network")
        if MemoryPoolType.WORKSPACE not in config.pools:
            raise RuntimeError("contract: set an explicit workspace limit (set_memory_pool_limit)")
        if config.timing_cache is None:
            raise RuntimeError("contract: set a timing cache (set_timing_cache)")
        dynamic = [t for t in network.inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            raise RuntimeError("network has dynamic inputs but no optimization profile")
        for k, p in enumerate(config.profiles):
            for t in network.inputs:
                if t.name not in p.shapes:
                    if t in dynamic:
                        raise RuntimeError(f"optimization profile {k} does not cover dynamic input {t.name}")
                    continue
                for s in p.shapes[t.name]:
                    if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                        raise RuntimeError(f"profile {k} shape {s} does not fit input {t.name} {t.shape}")
            extra = set(p.shapes) - {t.name for t in network.inputs}
            if extra:
                raise RuntimeError(f"profile {k} names tensors that are not network inputs: {sorted(extra)}")
        config.used_by = network
        config.timing_cache.entries[str(len(config.timing_cache.entries))] = [t.name for t in network.inputs]
        header = {"version": __version__, "flags": sorted(f.name for f in config.flags),
                  "workspace": config.pools[MemoryPoolType.WORKSPACE],
                  "inputs": [[t.name, list(t.shape), t.dtype.value] for t in network.inputs],
                  "outputs": [[t.name, list(t.shape), t.dtype.value] for t in network.outputs],
                  "profiles": [{n: [list(s) for s in v] for n, v in p.shapes.items()} for p in config.profiles]}
        BUILDS.append(header)
        h = json.dumps(header).encode()
        return IHostMemory(_MAGIC + len(h).to_bytes(8, "little") + h + network.onnx)


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

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext(_Strict):
    def __init__(self, engine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

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
        feeds = {n: self._view(n, self.shapes[n]).copy() for n in inputs}
        outs = [n for n, _, _ in self.engine.header["outputs"]]
        results = self.engine.session().run(outs, feeds)
        for n, r in zip(outs, results):
            shape = self.get_tensor_shape(n)
            if tuple(r.shape) != shape:
                raise RuntimeError(f"output {n}: graph gave {r.shape}, engine shape {shape}")
            np.copyto(self._view(n, shape), r.astype(self.engine.io[n][2], copy=False))
        self.executions += 1
        return True


def nptype(dtype: DataType):
    return np.dtype(dtype.value).type
