"""Export a trained run into a deployable bundle, gated by a parity check.

Layout of a bundle::

    manifest.json            format/versions, input spec, classes, thresholds, layouts, sha256, parity
    fused.onnx               every depth for the whole batch, exit selected with masks
    staged/filter_<d>.onnx   flow + GMM of depth d -> loglik, cluster
    staged/classifier_<d>.onnx   cluster-aided classifier of depth d (x, cluster -> logits)
    staged/regular.onnx      regular classifier
    samples.npy              validation features (up to 1024) for `dlsa-prod bench`

Everything is written into a temporary directory next to the target, checked, and renamed into
place: an export that fails (parity included) leaves no bundle.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data import load_splits, read_features
from ..errors import DLSAError
from ..metrics import shot_groups
from ..run_dir import load_run
from .graphs import BackboneGraph, FusedGraph, ImageInput, staged_graphs
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file
from .onnx_export import OPSET, export_onnx
from .parity import ParityError, compare, passed, reference

log = logging.getLogger("dlsa_prod")
LAYOUTS = ("fused", "staged")
MAX_SAMPLES = 1024


def parity_inputs(val: np.ndarray, n_random: int = 64, seed: int = 0) -> np.ndarray:
    """Validation features plus random inputs drawn with their per-dimension mean and std."""
    rng = np.random.default_rng(seed)
    mean, std = val.mean(0), val.std(0) + 1e-6
    rand = (mean + std * rng.standard_normal((n_random, val.shape[1]))).astype(np.float32)
    return np.concatenate([val.astype(np.float32), rand])


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"dlsa_prod": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": OPSET}


def export_bundle(run_dir: str | Path, out: str | Path, layouts=LAYOUTS, features: str | Path | None = None,
                  force: bool = False, class_names: list[str] | None = None, _after_export=None) -> dict:
    """Write a bundle for RUN_DIR at OUT; return its manifest.  ``_after_export(tmpdir)`` is a
    test hook called between graph export and the parity gate."""
    out = Path(out)
    if out.exists() and not force:
        raise DLSAError(f"{out}: bundle directory exists (use --force to replace it)")
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    if bad or not layouts:
        raise DLSAError(f"unknown layout(s) {bad or layouts}; choose from {', '.join(LAYOUTS)}")
    run = load_run(run_dir, "cpu")
    model = run.model.eval()
    meta = run.meta
    image = _image_parts(run) if meta.get("backbone") else None
    if class_names is None and meta.get("backbone"):
        class_names = meta["backbone"].get("class_names")  # ImageFolder class names, when known
    if image is not None:
        val, xs = image["samples"], image["inputs"]
    elif features is not None:
        val = read_features(features, meta["num_classes"], meta["dim"]).features
        xs = parity_inputs(val)
    else:
        try:
            val = load_splits(run.cfg.data, run.cfg.seed).val.features
        except DLSAError as exc:
            raise DLSAError(f"cannot load the run's validation features for the parity gate ({exc}); "
                            f"pass --features FILE") from None
        xs = parity_inputs(val)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.exporting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write(tmp, model, meta, layouts, val, xs, class_names, _after_export, image)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle written to %s (%s)", out, ", ".join(layouts))
    return manifest


def _image_parts(run) -> dict:
    """Backbone trunk, preprocessing and parity inputs (val images + random images) of an image run."""
    from ..images.backbone_stage import load_uint8
    from ..images.stage import load_trained_backbone, read_image_sets

    info = run.meta["backbone"]
    backbone, prep = load_trained_backbone(run.path, run.meta)
    try:
        val = read_image_sets(run.cfg)["val"]
    except DLSAError as exc:
        raise DLSAError(f"cannot read the run's validation images for the parity gate ({exc})") from None
    samples = np.ascontiguousarray(load_uint8(val, np.arange(min(len(val), MAX_SAMPLES)), prep))
    rand = np.random.default_rng(0).integers(0, 256, (32, *prep.size, prep.channels), dtype=np.uint8)
    inputs = prep.to_nchw(np.concatenate([samples[:256], rand]))
    return {"trunk": backbone.trunk.eval(), "prep": prep, "samples": samples, "inputs": inputs,
            "dim": int(info["dim"])}


def _write(tmp: Path, model, meta: dict, layouts, val, xs, class_names, after_export, image=None) -> dict:
    example = torch.from_numpy(xs[:4])
    entries = {}
    inp = "image" if image else "x"
    if "fused" in layouts:
        fused = ImageInput(image["trunk"], FusedGraph(model)) if image else FusedGraph(model)
        export_onnx(fused, (example,), tmp / "fused.onnx", [inp], ["logits", "pred", "exit_depth", "loglik"])
        entries["fused"] = {"file": "fused.onnx", "inputs": [inp],
                            "outputs": ["logits", "pred", "exit_depth", "loglik"]}
    if "staged" in layouts:
        (tmp / "staged").mkdir()
        stages = {}
        graphs = staged_graphs(model)
        if image:
            export_onnx(BackboneGraph(image["trunk"]), (example,), tmp / "staged" / "backbone.onnx", ["image"], ["x"])
            stages["backbone"] = {"file": "staged/backbone.onnx", "inputs": ["image"], "outputs": ["x"]}
            with torch.no_grad():
                example = image["trunk"](example)
        for name, (module, ins, outs) in graphs.items():
            args = (example,) if ins == ("x",) else (example, model.stages[0].route(example)[1])
            export_onnx(module, args, tmp / "staged" / f"{name}.onnx", ins, outs)
            stages[name] = {"file": f"staged/{name}.onnx", "inputs": list(ins), "outputs": list(outs)}
        entries["staged"] = {"stages": stages}
    samples = val[:MAX_SAMPLES] if image else val[:MAX_SAMPLES].astype(np.float32)
    np.save(tmp / "samples.npy", samples)
    if after_export is not None:
        after_export(tmp)
    counts = np.asarray(meta["train_class_counts"])
    groups = shot_groups(counts, meta.get("many_shot", 100), meta.get("few_shot", 20))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "input": ({"kind": "image", "dim": image["dim"], "dtype": "float32",
                   "image": {**image["prep"].to_dict(), "accepts": "uint8 (N, H, W, C) or (N, C, H, W), or float 0..1",
                             "graph_input": "normalised float32 (N, C, H, W)"}}
                  if image else {"kind": "features", "dim": int(meta["dim"]), "dtype": "float32", "image": None}),
        "classes": {"num_classes": int(meta["num_classes"]), "names": class_names,
                    "train_counts": counts.tolist(), "shot_groups": {k: v.tolist() for k, v in groups.items()}},
        "depth": model.depth, "thresholds": model.thresholds, "layouts": entries,
        "files": {}, "samples": "samples.npy", "parity": {}, "tensorrt": None,
    }
    manifest["files"] = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    manifest["parity"] = _gate(tmp, model, layouts, xs, image)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _gate(tmp: Path, model, layouts, xs, image=None) -> dict:
    from ..runtime import Runtime

    n_random = 32 if image else 64
    if image:
        with torch.no_grad():
            ref = reference(model, image["trunk"](torch.from_numpy(xs)).numpy())
    else:
        ref = reference(model, xs)
    thresholds = np.asarray(model.thresholds, dtype=np.float32)
    report = {"inputs": {"validation": int(len(xs) - n_random), "random": n_random}}
    for layout in layouts:
        pred = Runtime(tmp, layout=layout).predict_prepared(xs)
        report[layout] = compare(ref, pred.logits, pred.exit_depth, thresholds)
        if not passed(report[layout]):
            r = report[layout]
            raise ParityError(f"parity gate failed for the {layout} graph: prediction agreement "
                              f"{r['pred_agreement']:.4f}, exit agreement {r['exit_agreement']:.4f}, max logit "
                              f"relative error {r['max_logit_rel_err']:.2e} (limit 1e-4); no bundle written")
        log.info("parity %s: %s", layout, report[layout])
    return report
