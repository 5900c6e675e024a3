"""Export a module to ONNX (torch.export-based exporter) with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from ..errors import DLSAError

OPSET = 18


def export_onnx(module: torch.nn.Module, example: tuple, path: Path, input_names, output_names) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = tuple({0: batch} for _ in example)
    module.eval()
    # the exporter narrates every step on stdout; keep the CLI output readable
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            # every input shares the one batch Dim, so torch notes that the name "batch" is not reused
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used", category=UserWarning)
            torch.onnx.export(module, example, str(path), input_names=list(input_names),
                              output_names=list(output_names), dynamic_shapes=dynamic, dynamo=True,
                              opset_version=OPSET, external_data=False)
    except Exception as exc:  # the exporter raises many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DLSAError(f"ONNX export of {path.name} failed: {first}") from exc
    return path


def embed_metadata(path: Path, props: dict[str, str]) -> None:
    """Write PROPS into the ONNX file's metadata_props (the bundle reader cross-checks them)."""
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
