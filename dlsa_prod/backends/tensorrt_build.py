"""Build native TensorRT engines for a bundle's graphs (TensorRT 10.x / 11.x Python API, imported lazily).

Per graph: its own network, parser and builder config (configs are never shared: a shared config
accumulates one optimisation profile per graph and profile 0 would not cover the next graph's
inputs); one optimisation profile that covers every dynamic input (batch axis, image dims,
``cluster``) with min <= opt <= max; an explicit workspace limit; precision ``fp32`` (TF32 flag
cleared, and checked to be clear: routing compares a log-likelihood of ~1e3 with a threshold),
``tf32`` or ``fp16``; a timing cache in the user cache directory, keyed by TensorRT version, compute
capability and GPU name, shared across builds.  Every graph is first checked against onnx-tensorrt's
operator support matrix (``tensorrt_support``).  Every bool, -1 or None the TensorRT API returns is
checked and turned into one line.

Everything is written into the export's staging directory; the caller renames the bundle into
place only after the engines are built and parity-checked.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..bundle_spec import BATCH, BundleSpec, GraphSpec, package_data
from ..errors import DLSAError

log = logging.getLogger("dlsa_prod")
from ..precisions import ENGINE_PRECISIONS
DEFAULT_WORKSPACE = 2 << 30  # bytes


class TensorRTUnavailable(DLSAError):
    pass


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU); "
                                  "the ONNX bundle itself needs no TensorRT") from None
    return trt


def batch_profile(batches: list[int]) -> dict:
    """min/opt/max batch from the batch sizes a deployment expects: opt is the middle one."""
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise DLSAError(f"batch sizes must be positive integers, got {batches}")
    bs = sorted(set(batches))
    return {"min": 1, "opt": bs[len(bs) // 2] if len(bs) > 2 else bs[-1], "max": bs[-1]}


def parse_batches(text: str, option: str = "--trt-batches") -> list[int]:
    """``1,64,256`` or a profile name from the package's tensorrt_profiles.yaml (``--trt-batches``,
    ``bench --batch``)."""
    import yaml

    named = yaml.safe_load(package_data("tensorrt_profiles.yaml").read_text())
    if text in named:
        return list(named[text])
    out = []
    for part in str(text).split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise DLSAError(f"{option}: {part.strip()!r} is not a positive integer "
                            f"(or a profile name: {', '.join(named)})") from None
        if v < 1:
            raise DLSAError(f"{option}: {v} is not a positive integer (e.g. {option} 1,64,256)")
        out.append(v)
    return out


def input_profile(t, graph: GraphSpec, batch: dict) -> dict:
    """min/opt/max shapes of one network input: the batch axis from ``batch``, every other axis from
    the spec (fixed image dims, feature width; ``cluster`` has only the batch axis)."""
    spec = next((s for s in graph.inputs if s.name == t.name), None)
    if spec is None:
        raise DLSAError(f"{graph.file}: TensorRT sees input {t.name!r}, which the bundle spec does not list")
    shape = list(t.shape)
    if len(shape) != len(spec.shape):
        raise DLSAError(f"{graph.file}: input {t.name} has rank {len(shape)} in TensorRT, {len(spec.shape)} in the spec")
    out = {}
    for which in ("min", "opt", "max"):
        dims = []
        for d_net, d_spec in zip(shape, spec.shape):
            if d_spec == BATCH:
                dims.append(int(batch[which]))
            else:
                if d_net not in (-1, int(d_spec)):
                    raise DLSAError(f"{graph.file}: input {t.name} dim {d_net} differs from the spec's {d_spec}")
                dims.append(int(d_spec))
        out[which] = dims
    return out


def device_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"


def timing_cache_path(trt, cc: str, device: str) -> Path:
    from ..user_cache import user_cache_dir

    return user_cache_dir() / "tensorrt" / f"timing-{trt.__version__}-sm{cc}-{device_slug(device)}.cache"


def check_engine_precision(precision: str) -> None:
    if precision not in ENGINE_PRECISIONS:
        raise DLSAError(f"--precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {precision!r}")


def set_precision(trt, config, precision: str) -> None:
    check_engine_precision(precision)
    has_tf32 = hasattr(trt.BuilderFlag, "TF32")
    if precision == "fp32":
        if has_tf32:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT
            _check_tf32_clear(trt, config)
    elif precision == "tf32":
        if not has_tf32:
            raise DLSAError(f"TensorRT {trt.__version__} has no TF32 builder flag; use --precision fp32")
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise DLSAError(f"TensorRT {trt.__version__} builds only strongly typed networks (no FP16 builder "
                            f"flag); fp16 engines need an fp16 graph, use --precision fp32")
        if has_tf32:
            config.clear_flag(trt.BuilderFlag.TF32)
            _check_tf32_clear(trt, config)
        config.set_flag(trt.BuilderFlag.FP16)


def _check_tf32_clear(trt, config) -> None:
    if config.get_flag(trt.BuilderFlag.TF32):
        raise DLSAError(f"TensorRT {trt.__version__} kept the TF32 builder flag set after clear_flag; refusing to "
                        f"build engines whose routing would run in TF32 (use --precision tf32 to accept it)")


def attach_timing_cache(trt, config, cache_bytes: bytes, where: str):
    """The shared timing cache, or a fresh one when TensorRT refuses it (another device's cache)."""
    cache = config.create_timing_cache(cache_bytes)
    if config.set_timing_cache(cache, False):
        return cache
    log.warning("TensorRT refused the timing cache for %s (made on another device); building with a fresh one", where)
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        raise DLSAError(f"TensorRT refused a fresh timing cache for {where}")
    return cache


def build_engine(trt, builder, logger, graph: GraphSpec, onnx_path: Path, batch: dict, precision: str,
                 workspace: int, cache_bytes: bytes):
    """One engine: (serialized bytes, per-input profile, timing cache bytes)."""
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DLSAError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()  # one config per network
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    set_precision(trt, config, precision)
    attach_timing_cache(trt, config, cache_bytes, onnx_path.name)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shapes[t.name] = input_profile(t, graph, batch)
        profile.set_shape(t.name, shapes[t.name]["min"], shapes[t.name]["opt"], shapes[t.name]["max"])
    if config.add_optimization_profile(profile) < 0:
        raise DLSAError(f"TensorRT refused the optimization profile for {onnx_path.name}: {shapes}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DLSAError(f"TensorRT failed to build an engine for {onnx_path.name} (see the TensorRT log above)")
    return bytes(serialized), shapes, bytes(config.get_timing_cache().serialize())


def build(staging: Path, spec: BundleSpec, options: dict) -> dict:
    """The registry's build step: engines for every layout of SPEC (options: batch, precision,
    workspace, memory); the manifest's ``engines`` entry."""
    return build_engines(staging, spec, spec.layouts, options["batch"], options.get("precision", "fp32"),
                         options.get("workspace", DEFAULT_WORKSPACE), options.get("memory"))


def build_engines(staging: Path, spec: BundleSpec, layouts, batch: dict, precision: str = "fp32",
                  workspace: int = DEFAULT_WORKSPACE, memory=None) -> dict:
    """Engines for every graph of LAYOUTS into STAGING/tensorrt; returns the manifest's ``engines`` entry."""
    from .device_memory import default_memory

    trt = import_tensorrt()
    check_graphs(staging, spec, layouts)
    memory = memory or default_memory()
    cc, device = memory.compute_capability(), memory.device_name()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_file = timing_cache_path(trt, cc, device)
    cache_bytes = cache_file.read_bytes() if cache_file.is_file() else b""
    (staging / "tensorrt").mkdir(exist_ok=True)
    engines = {}
    for layout in layouts:
        for name, graph in spec.graphs(layout).items():
            log.info("TensorRT: building %s/%s (%s)", layout, name, precision)
            data, shapes, cache_bytes = build_engine(trt, builder, logger, graph, staging / graph.file, batch,
                                                     precision, workspace, cache_bytes)
            rel = f"tensorrt/{layout}.{name}.engine"
            (staging / rel).write_bytes(data)
            engines[f"{layout}/{name}"] = {"file": rel, "profile": shapes}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp{os.getpid()}")
    tmp.write_bytes(cache_bytes)
    os.replace(tmp, cache_file)
    return {"tensorrt_version": str(trt.__version__), "compute_capability": cc, "device_name": device,
            "precision": precision, "workspace_bytes": int(workspace), "engines": engines, "parity": {}}


def check_graphs(staging: Path, spec: BundleSpec, layouts) -> None:
    """One line naming the first graph TensorRT's ONNX parser would not import, before any build."""
    from .tensorrt_support import unsupported

    for layout in layouts:
        for graph in spec.graphs(layout).values():
            problems = unsupported(staging / graph.file)
            if problems:
                raise DLSAError(f"{graph.file}: TensorRT's ONNX parser does not support {problems[0]}"
                                + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
