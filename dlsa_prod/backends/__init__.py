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
from dataclasses import dataclass

from ..errors import DLSAError


@dataclass(frozen=True)
class Backend:
    name: str
    loader: str | None  # "module:function" (spec, layout, options) -> executor
    builder: str | None  # "module:function", see each module
    summary: str


BACKENDS = {
    "onnxruntime": Backend("onnxruntime", "dlsa_prod.backends.ort:load", None,
                           "ONNX Runtime sessions (providers cpu, cuda, tensorrt)"),
    "tensorrt": Backend("tensorrt", "dlsa_prod.backends.tensorrt_runner:load",
                        "dlsa_prod.backends.tensorrt_build:build_engines", "native TensorRT engines"),
    "triton": Backend("triton", None, "dlsa_prod.backends.triton:write_repository",
                      "Triton Inference Server model repository"),
    "torch": Backend("torch", "dlsa_prod.backends.torch_backend:load", "dlsa_prod.backends.torch_backend:add_weights",
                     "the PyTorch cascade (CUDA graphs per batch bucket on GPU)"),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise DLSAError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None


def _resolve(ref: str):
    module, fn = ref.split(":")
    return getattr(importlib.import_module(module), fn)


def load_executor(name: str, spec, layout: str, options: dict):
    b = get_backend(name)
    if b.loader is None:
        raise DLSAError(f"backend {name!r} is served by its own server ({b.summary}); it cannot run in-process")
    return _resolve(b.loader)(spec, layout, options)


def builder(name: str):
    b = get_backend(name)
    if b.builder is None:
        raise DLSAError(f"backend {name!r} needs no build step")
    return _resolve(b.builder)
