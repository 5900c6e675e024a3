"""Triton Inference Server model repository for a bundle's fused (or single) graph, generated from
the bundle spec: the graph's real input names, dims and dtypes (``image`` [C, H, W] for image
bundles, ``x`` [dim] otherwise), ``max_batch_size`` with dynamic batching, ``KIND_GPU`` instance
groups (``KIND_CPU`` when asked) and optionally the TensorRT execution accelerator of Triton's
ONNX Runtime backend.

What each option computes (Triton's onnxruntime backend, ``src/onnxruntime.cc`` at 00fd3e8: every
``cuda`` accelerator parameter goes to ONNX Runtime's CUDA provider options; the ``tensorrt`` ones map
to the TensorRT provider's ``trt_*`` options):

* GPU instances always carry the ``cuda`` accelerator with ``use_tf32: 0``: ONNX Runtime's CUDA
  provider defaults to TF32 matrix products, which flip exits (the runtime clears it the same way).
  That makes the plain GPU config true fp32.
* ``tensorrt``: the TensorRT accelerator with min/opt/max profile shapes from the bundle spec and an
  engine and timing cache (``engine_cache_dir``), so it builds once instead of on every load and for
  every larger batch.  Its ``precision_mode: FP32`` is TensorRT's default, which allows TF32 (the
  provider has no switch to clear it); ``FP16`` (``fp16=True``) is half precision.  Both are
  reduced precision for routing: measure them with ``Runtime(bundle, providers=["tensorrt"])``,
  which applies the precision gate, before serving them.

Staged routing is not served by this repository: in Triton it would be an ensemble (which cannot
branch per sample, so every stage would run on the whole batch: the fused graph's cost plus
per-step overhead) or a BLS Python model calling the stage models (per-sample routing, one extra
request per stage and depth).  The fused graph is one model with no Python in the request path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..bundle_spec import FUSED, SINGLE, BundleSpec, GraphSpec, read_spec
from ..errors import DLSAError

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "float16": "TYPE_FP16",
                "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}


def served_graph(spec: BundleSpec) -> GraphSpec:
    for layout in (FUSED, SINGLE):
        if layout in spec.layouts:
            return next(iter(spec.graphs(layout).values()))
    raise DLSAError(f"{spec.path}: the Triton repository serves the fused graph; export with --layout fused or both")


def _tensor(t) -> str:
    dims = t.item_shape
    if dims:
        return f'  {{ name: "{t.name}", data_type: {TRITON_TYPES[t.dtype]}, dims: [ {", ".join(map(str, dims))} ] }}'
    # a per-sample scalar (pred, exit_depth): Triton needs >= 1 dim, reshape to the graph's []
    return f'  {{ name: "{t.name}", data_type: {TRITON_TYPES[t.dtype]}, dims: [ 1 ], reshape: {{ shape: [ ] }} }}'


def default_engine_cache(spec: BundleSpec, name: str) -> str:
    return f"/tmp/dlsa_prod-triton-trt/{name}-{spec.content_hash()}"


def _parameters(params: dict) -> list[str]:
    return [f'    parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items()]


def model_config(spec: BundleSpec, name: str = "dlsa", max_batch: int | None = None, instances: int = 1,
                 kind: str = "KIND_GPU", tensorrt: bool = False, fp16: bool = False,
                 engine_cache_dir: str | None = None) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    g = served_graph(spec)
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise DLSAError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind}")
    max_batch = int(max_batch or spec.batch_profile["max"])
    if max_batch < 1:
        raise DLSAError(f"max_batch_size must be a positive integer, got {max_batch}")
    prof = spec.batch_profile
    preferred = sorted({b for b in (prof["opt"], max_batch) if 1 <= b <= max_batch})
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
             "input [", ",\n".join(_tensor(t) for t in g.inputs), "]",
             "output [", ",\n".join(_tensor(t) for t in g.outputs), "]",
             "dynamic_batching {",
             f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
             "  max_queue_delay_microseconds: 100", "}",
             f"instance_group [ {{ count: {int(instances)}, kind: {kind} }} ]"]
    if tensorrt and kind != "KIND_GPU":
        raise DLSAError("the TensorRT accelerator needs KIND_GPU instances")
    if kind == "KIND_GPU":
        accelerators = []
        if tensorrt:
            from .ort import profile_shapes

            cache = engine_cache_dir or default_engine_cache(spec, name)
            trt = {"precision_mode": "FP16" if fp16 else "FP32", "max_workspace_size_bytes": str(2 << 30),
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": f"{cache}/engines",
                   "trt_timing_cache_enable": "1", "trt_timing_cache_path": f"{cache}/timing",
                   **profile_shapes(g, {**prof, "max": max_batch, "opt": min(prof["opt"], max_batch)})}
            accelerators.append(['    name : "tensorrt"', *_parameters(trt)])
        accelerators.append(['    name : "cuda"', *_parameters({"use_tf32": "0"})])
        lines += ["optimization { execution_accelerators {", "  gpu_execution_accelerator : [",
                  ",\n".join("  {\n" + "\n".join(a) + "\n  }" for a in accelerators), "  ]", "} }"]
    return "\n".join(lines) + "\n"


TRITON_KIND = "triton-model"  # the marker kind of a model directory this package wrote


def check_repository(repo: Path, name: str = "dlsa", force: bool = False, protected_paths=()) -> Path:
    """Refuse (one line, before any work) unless REPO/NAME is new or, with ``force``, a Triton model
    directory this package wrote; returns REPO/NAME."""
    from ..run_dir import check_replaceable

    return check_replaceable(Path(repo) / name, TRITON_KIND, protected_paths, force)


def build(bundle: Path, spec, options: dict) -> dict:
    """The registry's build step, after the bundle is in place (options: repo, force and
    ``model_config`` keywords): the repository entry for the export's report."""
    opts = dict(options)
    repo, force = opts.pop("repo"), opts.pop("force", False)
    return {"repository": str(write_repository(spec or bundle, repo, force=force, **opts))}


def write_repository(bundle, repo: Path, name: str = "dlsa", force: bool = False, **kwargs) -> Path:
    """REPO/NAME/{config.pbtxt, 1/model.onnx}, built next to the target and renamed into place.  An
    existing REPO/NAME is replaced only with ``force`` and only when this package wrote it."""
    from ..run_dir import StagingDir

    spec = bundle if isinstance(bundle, BundleSpec) else read_spec(bundle)
    g = served_graph(spec)
    config = model_config(spec, name, **kwargs)
    with StagingDir(Path(repo) / name, force, kind=TRITON_KIND, protected_paths=[spec.path]) as staging:
        (staging.path / "1").mkdir()
        shutil.copyfile(spec.path / g.file, staging.path / "1" / "model.onnx")
        (staging.path / "config.pbtxt").write_text(config)
        return staging.commit()
