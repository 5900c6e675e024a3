"""The CLI's ``export``: turn options into an export, checked before any work starts."""

from __future__ import annotations

from pathlib import Path

from ..errors import DLSAError


def export_command(run_dir: Path, out: Path | None, layout: str, features, best: bool, trt: bool, trt_batches: str,
                   precision: str, triton_dir: Path | None, triton_tensorrt: bool, force: bool,
                   accept_precision_loss: bool = False) -> list[str]:
    """Run the export; return the lines the CLI prints."""
    from .bundle import DLSA, TrtOptions, export_bundle, resolve_model, summary

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "bundle"
    layouts = ("fused", "staged") if layout == "both" else (layout,)
    if triton_tensorrt and not triton_dir:
        raise DLSAError("--triton-tensorrt configures the Triton repository: pass --triton DIR too")
    if not trt and (precision != "fp32" or trt_batches != "1,64,256" or accept_precision_loss):
        raise DLSAError("--precision, --trt-batches and --accept-precision-loss configure TensorRT engines: "
                        "pass --trt too")
    if triton_dir:  # refused before any export work unless new or a model directory dlsa-prod wrote
        from ..backends.triton import check_repository

        check_repository(triton_dir, force=force, protected_paths=[run_dir, out])
    lines = []
    if best:
        from ..run_dir import read_run_meta

        _cfg, meta = read_run_meta(run_dir)
        name = resolve_model(meta, True, None, run_dir / "meta.json")
        if name == DLSA:
            lines.append("best on validation (meta.json): DLSA; exporting the DLSA cascade")
        else:
            lines.append(f"best on validation (meta.json): baseline {name}; exporting it as a single-classifier "
                         f"bundle (no routing)")
    options = None
    if trt:
        from ..backends.tensorrt_build import parse_batches

        options = TrtOptions(batches=parse_batches(trt_batches), precision=precision,
                             accept_precision_loss=accept_precision_loss)
    manifest = export_bundle(run_dir, out, layouts, features, force, best=best, trt=options,
                             triton=triton_dir is not None)
    if triton_dir:
        from ..backends import get_backend

        built = get_backend("triton").build(out, None, {"repo": triton_dir, "force": force,
                                                        "tensorrt": triton_tensorrt})
        lines.append(f"Triton model repository: {built['repository']}")
    lines.append(f"bundle: {out}  " + summary(manifest))
    return lines
