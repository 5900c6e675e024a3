"""TensorRT engines for the staged graphs (TensorRT's Python API, imported lazily).

fp32 throughout (flows and the GMM must not drop to fp16/TF32); one explicit optimisation
profile (min/opt/max batch) per engine; a timing cache shared across builds.  Engines are tied
to the TensorRT version and GPU compute capability recorded in the manifest; loading them
elsewhere raises a clear "rebuild" error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DLSAError


class TensorRTUnavailable(DLSAError):
    pass


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU); "
                                  "the ONNX bundle itself needs no TensorRT") from None
    return trt


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def shape(self, which: str, dim: int) -> tuple[int, int]:
        return (getattr(self, which), dim)


def batch_profile(batches: list[int]) -> BatchProfile:
    """min/opt/max from the batch sizes a deployment expects: opt is the most common large one."""
    if not batches or any(b < 1 for b in batches):
        raise DLSAError(f"batch sizes must be positive integers, got {batches}")
    bs = sorted(set(batches))
    opt = bs[len(bs) // 2] if len(bs) > 2 else bs[-1]
    return BatchProfile(1, opt, bs[-1])


def cache_key(onnx_file: Path, trt_version: str, compute_capability: str, profile: BatchProfile) -> str:
    """Engine identity: graph bytes + TensorRT version + GPU + profile."""
    h = hashlib.sha256(Path(onnx_file).read_bytes())
    h.update(f"|trt={trt_version}|sm={compute_capability}|{profile.min},{profile.opt},{profile.max}".encode())
    return h.hexdigest()[:32]


def check_engine_compatible(entry: dict, trt_version: str, compute_capability: str) -> None:
    if entry.get("tensorrt_version") != trt_version or entry.get("compute_capability") != compute_capability:
        raise DLSAError(f"TensorRT engines were built with TensorRT {entry.get('tensorrt_version')} for compute "
                        f"capability {entry.get('compute_capability')}; this machine has TensorRT {trt_version}, "
                        f"compute capability {compute_capability}: rebuild them with `dlsa-prod export --trt`")


def build_engines(bundle: Path, stages: dict, dims: dict, profile: BatchProfile, timing_cache: Path) -> dict:
    """Build one fp32 engine per staged graph; returns the manifest's ``tensorrt`` entry."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT engines need an NVIDIA GPU; none is visible")
    cc = "%d.%d" % torch.cuda.get_device_capability()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    engines = {}
    for name, entry in stages.items():
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        onnx_path = bundle / entry["file"]
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DLSAError(f"TensorRT could not parse {onnx_path}: {errors}")
        opt_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            width = dims.get(tensor.name)
            shapes = [(getattr(profile, w),) if width is None else (getattr(profile, w), width)
                      for w in ("min", "opt", "max")]
            opt_profile.set_shape(tensor.name, *shapes)
        config.add_optimization_profile(opt_profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DLSAError(f"TensorRT failed to build an engine for {onnx_path}")
        out = bundle / "tensorrt" / f"{name}.engine"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(bytes(serialized))
        engines[name] = {"file": f"tensorrt/{name}.engine",
                         "cache_key": cache_key(onnx_path, trt.__version__, cc, profile)}
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, "compute_capability": cc, "precision": "fp32",
            "profile": {"min": profile.min, "opt": profile.opt, "max": profile.max}, "engines": engines}


def load_engines(bundle: Path, manifest: dict) -> dict:
    """Deserialize a bundle's TensorRT engines, refusing engines built for another TensorRT or GPU."""
    entry = manifest.get("tensorrt")
    if not entry:
        raise DLSAError(f"{bundle}: the bundle has no TensorRT engines (export with --trt)")
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT engines need an NVIDIA GPU; none is visible")
    check_engine_compatible(entry, trt.__version__, "%d.%d" % torch.cuda.get_device_capability())
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engines = {}
    for name, e in entry["engines"].items():
        engine = runtime.deserialize_cuda_engine((Path(bundle) / e["file"]).read_bytes())
        if engine is None:
            raise DLSAError(f"{Path(bundle) / e['file']}: TensorRT could not load the engine; rebuild it with "
                            f"`dlsa-prod export --trt`")
        engines[name] = engine
    return engines
