"""Run directory: resolved config, weights (safetensors), routing (json), metrics, log.

Layout::

    config.yaml         resolved configuration
    meta.json           feature dim, classes, trained depth, train class counts, versions
    model.safetensors   DLSAModel state (flows, GMM centres, thresholds, priors, classifiers)
    baseline_<LOSS>.safetensors   plain classifiers
    routing.json        per-depth thresholds and cluster priors (K x C)
    metrics.json        val/test metrics, routing shares, per-depth reports
    train.log           the run's log

Written into a hidden temporary directory next to the target and renamed into place at the
end, so an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import RunConfig, config_from_dict, config_to_yaml
from .errors import RunDirError
from .models import DLSAModel, FeatureClassifier

REQUIRED = ("config.yaml", "meta.json", "model.safetensors")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_module(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, path)


class StagingDir:
    """Build a directory under a temporary name; ``commit()`` renames it into place."""

    def __init__(self, target: Path, force: bool):
        self.target = Path(target)
        if self.target.exists() and not force:
            raise RunDirError(f"{self.target}: output directory exists (use --force to replace it)")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.target.parent / f".{self.target.name}.partial-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()

    def commit(self) -> Path:
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def save_run(path: Path, cfg: RunConfig, meta: dict, model: DLSAModel, baselines: dict[str, FeatureClassifier],
             metrics: dict) -> None:
    (path / "config.yaml").write_text(config_to_yaml(cfg))
    write_json(path / "meta.json", meta)
    save_module(model, path / "model.safetensors")
    for loss, clf in baselines.items():
        save_module(clf, path / f"baseline_{loss}.safetensors")
    write_json(path / "routing.json", {
        "thresholds": model.thresholds,
        "cluster_priors": [s.cluster_prior.cpu().tolist() for s in model.stages],
    })
    write_json(path / "metrics.json", metrics)


@dataclass
class LoadedRun:
    path: Path
    cfg: RunConfig
    meta: dict
    model: DLSAModel
    baselines: dict[str, FeatureClassifier]


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise RunDirError(f"{path / name}: missing (not a complete dlsa-prod run directory)")
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
    try:
        meta = json.loads((path / "meta.json").read_text())
        dim, c, depth = int(meta["dim"]), int(meta["num_classes"]), int(meta["depth"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / 'meta.json'}: unreadable ({exc})") from None
    model = DLSAModel.from_config(cfg, dim, c, depth)
    load_state(model, path / "model.safetensors")
    baselines = {}
    for loss in meta.get("baselines", []):
        clf = FeatureClassifier(dim, c, cfg.regcls.model, uses_prior=False)
        load_state(clf, path / f"baseline_{loss}.safetensors")
        baselines[loss] = clf.to(device).eval()
    return LoadedRun(path, cfg, meta, model.to(device).eval(), baselines)


def load_state(module: torch.nn.Module, file: Path) -> None:
    if not file.is_file():
        raise RunDirError(f"{file}: missing")
    try:
        state = load_file(str(file))
        module.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunDirError(f"{file}: does not match the run's config ({first})") from None
