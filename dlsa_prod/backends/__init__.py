"""Backends behind one small registry: each is a builder (export-time artifacts) and/or a loader
(an executor ``Runtime`` drives), imported lazily by module path so that choosing one backend never
imports another's libraries.

=============  ==========================================  =========================================
name           builder (``export``)                          loader (``Runtime(bundle, backend=...)``)
=============  ==========================================  =========================================
onnxruntime    the ONNX graphs themselves                    ONNX Runtime sessions: CPU, CUDA (TF32
                                                             off) or its TensorRT provider
tensorrt       native TensorRT engines (``--trt``)           TensorRT engine runner
triton         a Triton model repository (``--triton``)      (served by Triton, not loaded here)
torch          the run's weights inside the bundle           the PyTorch cascade, CUDA graphs on GPU
=============  ==========================================  =========================================

An executor has ``run(x, timer) -> (logits, exit_depth)`` on graph-ready float32 numpy input,
``describe() -> str`` (what actually ran) and ``max_rows`` (None or the largest batch it takes).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import DLSAError


@dataclass(frozen=True)
class Backend:
    """One deployment backend, after mmdeploy's backend managers: ``build`` writes its export-time
    artifact and returns the manifest fragment describing it, ``load`` returns an executor for a
    bundle, ``is_available`` says whether this machine can use it.  Implementations are referenced
    by "module:function" and imported only when used."""
    name: str
    summary: str
    loader: str | None = None  # (spec, layout, options) -> executor
    builder: str | None = None  # (target, spec, options) -> manifest fragment
    requires: tuple[str, ...] = ()  # modules it needs importable
    export_option: str | None = None  # the export CLI option that builds it
    options: tuple[str, ...] = ()  # keyword options its loader reads (``Runtime(..., **options)``)

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def build(self, target, spec, options: dict) -> dict:
        if self.builder is None:
            raise DLSAError(f"backend {self.name!r} needs no build step")
        return _resolve(self.builder)(target, spec, options)

    def load(self, spec, layout: str, options: dict):
        if self.loader is None:
            raise DLSAError(f"backend {self.name!r} is served by its own server ({self.summary}); it cannot run "
                            f"in-process")
        return _resolve(self.loader)(spec, layout, options)


BACKENDS = {
    "onnxruntime": Backend("onnxruntime", "ONNX Runtime sessions (providers cpu, cuda, tensorrt)",
                           loader="dlsa_prod.backends.ort:load", requires=("onnxruntime",),
                           options=("fp16", "spinning", "accept_precision_loss")),
    "tensorrt": Backend("tensorrt", "native TensorRT engines", loader="dlsa_prod.backends.tensorrt_runner:load",
                        builder="dlsa_prod.backends.tensorrt_build:build", requires=("tensorrt", "torch"),
                        export_option="--trt", options=("memory", "cuda_graphs", "warmup", "precision")),
    "triton": Backend("triton", "Triton Inference Server model repository",
                      builder="dlsa_prod.backends.triton:build", export_option="--triton DIR"),
    "torch": Backend("torch", "the PyTorch cascade (CUDA graphs per batch bucket on GPU)",
                     loader="dlsa_prod.backends.torch_backend:load", builder="dlsa_prod.backends.torch_backend:build",
                     requires=("torch",), options=("device", "cuda_graphs", "max_bucket", "model", "graph_capture_with")),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise DLSAError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None


def loadable() -> list[str]:
    """Backends that run in-process (the CLI's ``--backend`` choices)."""
    return [n for n, b in BACKENDS.items() if b.loader]


def _resolve(ref: str):
    module, fn = ref.split(":")
    return getattr(importlib.import_module(module), fn)


def load_executor(name: str, spec, layout: str, options: dict):
    return get_backend(name).load(spec, layout, options)
