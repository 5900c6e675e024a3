"""Export a trained run into a deployable bundle, gated by parity checks (format: ``dlsa_prod.bundle_spec``).

Steps, all inside a staging directory ``.NAME.exporting-PID`` next to the target:

1. the graphs of each layout (fused / staged, or single for a baseline), each carrying the
   manifest's depth, thresholds, classes and source in its ONNX metadata_props;
2. samples.npy (validation inputs for bench) and, for feature bundles, the run's weights for the
   torch backend;
3. manifest.json, then the parity gate: ONNX Runtime and the torch backend against the PyTorch model;
4. with ``trt``: native TensorRT engines for the staged graphs (and fused), their own parity gate;
5. rename into place.  Any failure leaves the previous bundle untouched and no staging directory.

``--force`` replaces only a bundle this package wrote (``run_dir`` marker), never the run it is
exported from, the current directory or a directory holding an input.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..bundle_spec import (BACKBONE, BUNDLE_KIND, DEFAULT_BATCH_PROFILE, FORMAT, FORMAT_VERSION, FUSED, LAYOUTS,
                           SINGLE, BundleSpec, GraphSpec, graph_metadata, hash_files, onnx_io, read_spec,
                           sha256_file, write_manifest)
from ..backends import get_backend
from ..errors import DLSAError
from ..metrics import shot_groups
from ..run_dir import StagingDir, check_replaceable, load_run
from ..models.exportable import check_exportable
from ..models.graphs import BackboneGraph, FusedGraph, ImageInput, RegularGraph, staged_graphs
from ..selection import shipped_model
from .onnx_export import OPSET, embed_metadata, export_onnx
from ..backends.precision_gate import judge, routing_report
from .parity import (MAX_VALIDATION, RANDOM_IMAGES, VALIDATION_IMAGES, ParityError, ParityInputs, compare,
                     feature_inputs, passed, reference)

log = logging.getLogger("dlsa_prod")
DLSA = "dlsa"
SAMPLE_FILES = ("samples.npy", "samples_labels.npy")  # checked by their own sha256 in manifest["samples"]


@dataclass
class TrtOptions:
    """``--trt``: native TensorRT engines built into the bundle before it is renamed into place."""
    batches: list[int] = field(default_factory=lambda: [1, 64, 256])
    precision: str = "fp32"
    workspace: int = 2 << 30
    memory: object = None  # device-memory seam (tests: HostMemory); default torch CUDA
    accept_precision_loss: bool = False  # write tf32/fp16 engines that fail the precision gate


def resolve_model(run_meta: dict, best: bool, model: str | None, meta_file: Path) -> str:
    """Which model to export: DLSA, a named baseline, or (``best``) the one meta.json names best on val."""
    if best:
        name = shipped_model(run_meta.get("best_on_val"))  # a record, or a plain name in older runs
        if name is None:
            raise DLSAError(f"{meta_file}: has no best_on_val entry (re-train with this version, or export without --best)")
    else:
        name = model or DLSA
    if name != DLSA and name not in run_meta.get("baselines", []):
        raise DLSAError(f"{meta_file}: {name!r} is neither 'dlsa' nor one of the run's baselines "
                        f"({', '.join(run_meta.get('baselines', [])) or 'none'})")
    return name


def check_options(layouts, trt: TrtOptions | None, triton: bool) -> None:
    """Option combinations, checked before any export work starts."""
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    if bad or not layouts:
        raise DLSAError(f"unknown layout(s) {bad or list(layouts)}; choose from fused, staged")
    if trt is not None:
        if "staged" not in layouts and SINGLE not in layouts:
            raise DLSAError("--trt builds engines for the staged graphs: export with --layout staged or both")
        from ..backends.device_memory import default_memory
        from ..backends.tensorrt_build import batch_profile, check_engine_precision, import_tensorrt

        check_engine_precision(trt.precision)
        batch_profile(trt.batches)
        import_tensorrt()
        if trt.memory is None:
            trt.memory = default_memory()  # one line when no GPU is visible
    if triton and FUSED not in layouts and SINGLE not in layouts:
        raise DLSAError("--triton serves the fused graph: export with --layout fused or both")


def export_bundle(run_dir: str | Path, out: str | Path, layouts=("fused", "staged"), features: str | Path | None = None,
                  force: bool = False, class_names: list[str] | None = None, model: str | None = None,
                  best: bool = False, trt: TrtOptions | None = None, triton: bool = False,
                  _after_export=None) -> dict:
    """Write a bundle for RUN_DIR at OUT; return its manifest.  ``_after_export(staging)`` is a test
    hook called between graph export and the parity gate."""
    out, run_dir = Path(out), Path(run_dir)
    layouts = tuple(layouts)
    check_options(layouts, trt, triton)
    check_replaceable(out, BUNDLE_KIND, [run_dir, features], force)
    run = load_run(run_dir, "cpu")
    name = resolve_model(run.meta, best, model, run_dir / "meta.json")
    if name == DLSA:
        check_exportable(run.cfg)  # issue 17: soft exit gates are not in the graphs
    if name != DLSA:
        layouts = (SINGLE,)
        check_options(layouts, trt, triton)
    image = _image_parts(run) if run.meta.get("backbone") else None
    if class_names is None and run.meta.get("backbone"):
        class_names = run.meta["backbone"].get("class_names")  # ImageFolder class names, when known
    inputs = image["parity"] if image else _feature_parity_inputs(run, features)
    with StagingDir(out, force, kind=BUNDLE_KIND, tag="exporting", protected_paths=[run_dir, features]) as staging:
        manifest = _write(staging.path, run, name, layouts, inputs, class_names, image, trt, _after_export)
        staging.commit()
    log.info("bundle written to %s (%s)", out, ", ".join(layouts))
    return manifest


def _feature_parity_inputs(run, features) -> ParityInputs:
    from ..data import load_splits, read_features

    if features is not None:
        fs = read_features(features, run.meta["num_classes"], run.meta["dim"])
    else:
        try:
            fs = load_splits(run.cfg.data, run.cfg.seed).val
        except DLSAError as exc:
            raise DLSAError(f"cannot load the run's validation features for the parity gate ({exc}); "
                            f"pass --features FILE") from None
    return feature_inputs(fs.features, fs.labels)


def _image_parts(run) -> dict:
    """Backbone trunk, preprocessing, bench samples and parity inputs of an image run."""
    from ..images.backbone_stage import load_uint8
    from ..images.stage import load_trained_backbone, read_image_sets

    info = run.meta["backbone"]
    backbone, prep = load_trained_backbone(run.path, run.meta)
    try:
        val = read_image_sets(run.cfg)["val"]
    except DLSAError as exc:
        raise DLSAError(f"cannot read the run's validation images for the parity gate ({exc})") from None
    samples = np.ascontiguousarray(load_uint8(val, np.arange(min(len(val), MAX_VALIDATION)), prep))
    rand = np.random.default_rng(0).integers(0, 256, (RANDOM_IMAGES, *prep.size, prep.channels), dtype=np.uint8)
    x = prep.to_nchw(np.concatenate([samples[:VALIDATION_IMAGES], rand]))
    return {"trunk": backbone.trunk.eval(), "prep": prep, "samples": samples, "dim": int(info["dim"]),
            "parity": ParityInputs(x, RANDOM_IMAGES)}


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"dlsa_prod": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": OPSET}


def _header(run, name: str, class_names, image, batch: dict) -> dict:
    meta = run.meta
    counts = np.asarray(meta["train_class_counts"])
    groups = shot_groups(counts, *[meta[k] for k in ("many_shot", "few_shot") if k in meta])
    dlsa = name == DLSA
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "source": {"model": name, "run_meta_sha256": sha256_file(run.path / "meta.json")},
        "input": ({"kind": "image", "dim": image["dim"], "dtype": "float32", "image": image["prep"].to_dict()}
                  if image else {"kind": "features", "dim": int(meta["dim"]), "dtype": "float32", "image": None}),
        "classes": {"num_classes": int(meta["num_classes"]), "names": class_names,
                    "train_counts": counts.tolist(), "shot_groups": {k: v.tolist() for k, v in groups.items()}},
        "depth": run.model.depth if dlsa else 0, "thresholds": run.model.thresholds if dlsa else [],
        "layouts": {}, "files": {}, "samples": None, "parity": {},
        "serving": {"batch_profile": dict(batch)}, "artifacts": {},
        "input_guard": meta.get("input_guard") if dlsa else None,
    }


def _export_graph(module, example, staging: Path, rel: str, ins, outs, header: dict, layout: str, name: str) -> dict:
    path = staging / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, example, path, ins, outs)
    embed_metadata(path, graph_metadata(header, layout, name))
    inputs, outputs, _ = onnx_io(path)
    return GraphSpec(name, rel, tuple(inputs), tuple(outputs)).to_dict()


def _graphs(staging: Path, run, name: str, layouts, header: dict, x_example, image) -> dict:
    model = run.model.eval()
    example = torch.from_numpy(x_example[:4])
    inp = "image" if image else "x"
    trunk = image["trunk"] if image else None
    out = {}
    if name != DLSA:
        module = RegularGraph(run.baselines[name])
        module = ImageInput(trunk, module) if image else module
        out[SINGLE] = {"graphs": {SINGLE: _export_graph(module, (example,), staging, "single.onnx", [inp], ["logits"],
                                                         header, SINGLE, SINGLE)}}
        return out
    if FUSED in layouts:
        module = ImageInput(trunk, FusedGraph(model)) if image else FusedGraph(model)
        out[FUSED] = {"graphs": {FUSED: _export_graph(module, (example,), staging, "fused.onnx", [inp],
                                                       ["logits", "pred", "exit_depth", "loglik"], header, FUSED, FUSED)}}
    if "staged" in layouts:
        graphs = {}
        feats = example
        if image:
            graphs[BACKBONE] = _export_graph(BackboneGraph(trunk), (example,), staging, "staged/backbone.onnx",
                                             ["image"], ["x"], header, "staged", BACKBONE)
            with torch.no_grad():
                feats = trunk(example)
        for gname, (module, ins, outs) in staged_graphs(model).items():
            args = (feats,) if len(ins) == 1 else (feats, model.stages[0].route(feats)[1])
            graphs[gname] = _export_graph(module, args, staging, f"staged/{gname}.onnx", ins, outs, header,
                                          "staged", gname)
        out["staged"] = {"graphs": graphs}
    return out


def _write(staging: Path, run, name, layouts, inputs: ParityInputs, class_names, image, trt, after_export) -> dict:
    from ..backends.tensorrt_build import batch_profile

    batch = batch_profile(trt.batches) if trt else dict(DEFAULT_BATCH_PROFILE)
    manifest = _header(run, name, class_names, image, batch)
    manifest["layouts"] = _graphs(staging, run, name, layouts, manifest, inputs.x, image)
    samples = image["samples"] if image else inputs.x[:inputs.n_validation]
    np.save(staging / "samples.npy", samples)
    if not image:
        manifest["artifacts"]["torch"] = get_backend("torch").build(staging, None, {"run": run, "model": name})
    if after_export is not None:
        after_export(staging)
    manifest["samples"] = {"file": "samples.npy", "sha256": sha256_file(staging / "samples.npy")}
    if inputs.labels is not None and not image:  # lets a runtime precision gate measure accuracy
        np.save(staging / "samples_labels.npy", np.asarray(inputs.labels[:inputs.n_validation], np.int64))
        manifest["samples"].update(labels_file="samples_labels.npy",
                                   labels_sha256=sha256_file(staging / "samples_labels.npy"))
    manifest["files"] = hash_files(staging, exclude=SAMPLE_FILES)
    write_manifest(staging, manifest)
    torch_model = run.model if name == DLSA else run.baselines[name]
    ref = _reference(torch_model, inputs.x, image)
    spec = read_spec(staging, require_parity=False)  # the gate writes the parity reports
    manifest["parity"] = _gate(spec, ref, inputs, "onnxruntime", {})
    if "torch" in manifest["artifacts"]:
        manifest["parity"]["torch"] = _gate(spec, ref, inputs, "torch", {"device": "cpu"})
    write_manifest(staging, manifest)
    if trt is not None:
        engines = manifest["artifacts"]["tensorrt"] = get_backend("tensorrt").build(staging, spec, {
            "batch": batch, "precision": trt.precision, "workspace": trt.workspace, "memory": trt.memory})
        manifest["files"] = hash_files(staging, exclude=SAMPLE_FILES)
        write_manifest(staging, manifest)
        spec = read_spec(staging, require_parity=False)
        engines["parity"] = _gate(spec, ref, inputs, "tensorrt", {"memory": trt.memory},
                                              strict=trt.precision == "fp32",
                                              accept_loss=trt.accept_precision_loss)
        write_manifest(staging, manifest)
    return manifest


def _reference(model, x: np.ndarray, image) -> dict:
    if image:
        with torch.no_grad():
            x = image["trunk"](torch.from_numpy(x)).numpy()
    return reference(model, x)


def _gate(spec: BundleSpec, ref: dict, inputs: ParityInputs, backend: str, options: dict, strict: bool = True,
          accept_loss: bool = False) -> dict:
    """Each layout's outputs on BACKEND against the PyTorch reference; fails the export when not equal
    (``strict``), or, for reduced-precision engines, unless routing agreement and accuracy change pass
    the precision gate (``backends.precision_gate``) or the loss is accepted."""
    from ..runtime import Runtime

    thresholds = np.asarray(spec.thresholds, dtype=np.float32)
    report = {"inputs": inputs.counts()}
    for layout in spec.layouts:
        rt = Runtime(spec, layout=layout, backend=backend, **options)
        pred = rt.predict_prepared(inputs.x)
        if not strict:
            report[layout] = judge(routing_report(ref, pred.logits, pred.exit_depth, inputs.labels),
                                   f"{backend} {spec.engines.precision if spec.engines else ''} {layout} engines",
                                   accept_loss)
            log.info("precision gate %s %s: %s", backend, layout, report[layout])
            continue
        report[layout] = compare(ref, pred.logits, pred.exit_depth, thresholds)
        if not passed(report[layout]):
            r = report[layout]
            raise ParityError(f"parity gate failed for the {layout} graph on {backend}: prediction agreement "
                              f"{r['pred_agreement']:.4f}, exit agreement {r['exit_agreement']:.4f}, max logit "
                              f"relative error {r['max_logit_rel_err']:.2e} (limit 1e-4); no bundle written")
        log.info("parity %s %s: %s", backend, layout, report[layout])
    return report


def summary(manifest: dict) -> str:
    """One line: where parity stands for each layout."""
    p = manifest["parity"]
    parts = [f"{lay} pred {p[lay]['pred_agreement']:.4f} exit {p[lay]['exit_agreement']:.4f} "
             f"max logit rel err {p[lay]['max_logit_rel_err']:.1e}" for lay in LAYOUTS if lay in p]
    e = manifest["artifacts"].get("tensorrt")
    if e:
        parts += [f"tensorrt {e['precision']} {lay} pred {r['pred_agreement']:.4f} exit {r['exit_agreement']:.4f}"
                  for lay, r in e["parity"].items() if lay in LAYOUTS]
    return "parity: " + ", ".join(parts)

