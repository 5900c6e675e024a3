"""Triton Inference Server model repository for a bundle's fused graph (ONNX Runtime backend)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DLSAError
from .manifest import read_manifest

TEMPLATE = Path(__file__).resolve().parents[2] / "export" / "triton" / "config.pbtxt.template"

DEFAULT_TEMPLATE = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {{ name: "x", data_type: TYPE_FP32, dims: [ {dim} ] }}
]
output [
  {{ name: "logits", data_type: TYPE_FP32, dims: [ {num_classes} ] }},
  {{ name: "pred", data_type: TYPE_INT64, dims: [ 1 ], reshape: {{ shape: [ ] }} }},
  {{ name: "exit_depth", data_type: TYPE_INT64, dims: [ 1 ], reshape: {{ shape: [ ] }} }},
  {{ name: "loglik", data_type: TYPE_FP32, dims: [ {depth} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""


def write_triton_repository(bundle: Path, repo: Path, name: str = "dlsa", max_batch: int = 1024) -> Path:
    manifest = read_manifest(bundle)
    if "fused" not in manifest["layouts"]:
        raise DLSAError(f"{bundle}: the Triton repository serves the fused graph; export with --layout fused")
    template = TEMPLATE.read_text() if TEMPLATE.is_file() else DEFAULT_TEMPLATE
    model_dir = Path(repo) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle / manifest["layouts"]["fused"]["file"], model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(template.format(
        name=name, max_batch=max_batch, dim=manifest["input"]["dim"],
        num_classes=manifest["classes"]["num_classes"], depth=manifest["depth"]))
    return model_dir
