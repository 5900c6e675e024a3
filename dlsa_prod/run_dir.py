"""Run directory: resolved config, weights (safetensors), routing (json), metrics, log.

Layout::

    .dlsa_prod          marker: {"kind": "run", version, host, pid} (``--force`` replaces only marked dirs)
    config.yaml         resolved configuration (data paths absolute)
    meta.json           feature dim, classes, trained depth, train class counts, versions,
                        sha256 of every weights file (checked on load)
    model.safetensors   DLSAModel state (flows, GMM centres, thresholds, priors, classifiers)
    baseline_<LOSS>.safetensors   plain classifiers
    routing.json        per-depth thresholds and cluster priors (K x C)
    metrics.json        val/test metrics, routing shares, per-depth reports
    train.log           the run's log

Written into a hidden temporary directory next to the target and renamed into place at the
end, so an interrupted run never leaves a directory that looks complete.

Output directories (runs, bundles, reports) share three helpers:

* ``check_replaceable(out, kind, protected_paths, force)`` refuses, with one line and before any
  work starts, to write over anything this package did not write (no ``.dlsa_prod`` marker of
  that kind), the current directory, or a directory holding one of the command's inputs;
* ``StagingDir(target, force, kind=..., tag=..., protected_paths=...)`` builds the output under
  ``.NAME.<tag>-PID`` (marked at creation) and renames it into place;
* ``remove_stale(parent)`` deletes ``.NAME.<tag>-PID`` leftovers of killed processes (only
  marked directories whose process is gone, on this host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import yaml

from . import __version__
from .config import ClassifierModelConfig, RunConfig, config_from_dict, config_to_yaml
from .errors import RunDirError
from .bundle_spec import sha256_file
from .models import DLSAModel, FeatureClassifier

REQUIRED = ("config.yaml", "meta.json", "model.safetensors")
MARKER = ".dlsa_prod"
STAGING_TAGS = ("partial", "exporting", "reporting", "old")
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)$")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_module(module: torch.nn.Module, path: Path) -> None:
    """Write a module's state as safetensors (temp file, then rename)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- output directories
def write_marker(directory: Path, kind: str) -> None:
    """Mark DIRECTORY as written by dlsa_prod (``kind``: run, bundle, report ...)."""
    write_json(Path(directory) / MARKER, {"kind": kind, "dlsa_prod_version": __version__,
                                          "host": socket.gethostname(), "pid": os.getpid()})


def read_marker(directory: Path) -> dict | None:
    """The marker of DIRECTORY, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_replaceable(out: str | Path, kind: str, protected_paths: Iterable[str | Path | None] = (),
                      force: bool = True) -> Path:
    """Refuse (RunDirError, one line) unless OUT may be written as a ``kind`` directory.

    OUT may be written when it does not exist, or when ``force`` is set and it is a directory
    carrying this package's marker of the same ``kind``.  OUT is never the current directory or
    one of its parents, never a symbolic link, and never equal to or a parent of any of
    ``protected_paths`` (the command's inputs: config file, data files, the run a bundle is
    exported from; None entries are skipped).  Call it before any work starts.  Returns OUT.
    """
    out = Path(out)
    target = out.resolve()
    if _contains(target, Path.cwd().resolve()):
        raise RunDirError(f"{out}: is the current directory or holds it; choose a new output directory")
    for p in protected_paths:
        if p is not None and _contains(target, Path(p).resolve()):
            raise RunDirError(f"{out}: {'is' if target == Path(p).resolve() else 'holds'} {p}, an input of this "
                              f"command; choose another output directory")
    if out.is_symlink():
        raise RunDirError(f"{out}: is a symbolic link; refusing to replace it")
    if not out.exists():
        return out
    if not force:
        raise RunDirError(f"{out}: output directory exists (use --force to replace it)")
    if not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory; refusing to replace it")
    marker = read_marker(out)
    if marker is None:
        raise RunDirError(f"{out}: not written by dlsa-prod (no {MARKER} marker); only dlsa-prod {kind} "
                          f"directories are replaced, remove or rename it yourself")
    if marker["kind"] != kind:
        raise RunDirError(f"{out}: is a dlsa-prod {marker['kind']} directory, not a {kind}; refusing to replace it")
    return out


def _process_gone(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive under another user
        return False
    return False


def remove_stale(parent: str | Path, tags: Iterable[str] = STAGING_TAGS) -> list[Path]:
    """Delete ``.NAME.<tag>-PID`` directories in PARENT left by killed processes.

    Only directories that carry this package's marker, were made on this host, and whose process
    no longer exists are removed; returns them."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    host = socket.gethostname()
    for entry in parent.iterdir():
        m = _STAGING_NAME.match(entry.name)
        if m is None or m["tag"] not in tags or entry.is_symlink() or not entry.is_dir():
            continue
        marker = read_marker(entry)
        if marker is None or marker.get("host", host) != host or not _process_gone(int(m["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


class StagingDir:
    """Build a directory under ``.NAME.<tag>-PID`` next to TARGET; ``commit()`` renames it into place.

    The constructor runs ``check_replaceable`` (so refusals come before any work), removes stale
    staging directories of killed runs in the same parent, and marks the new directory with
    ``kind`` at once (so a kill leaves only marked, removable leftovers)."""

    def __init__(self, target: Path, force: bool, kind: str = "run", tag: str = "partial",
                 protected_paths: Iterable[str | Path | None] = ()):
        self.target = Path(target)
        self.kind = kind
        self.force = force
        self.protected = [p for p in protected_paths if p is not None]
        check_replaceable(self.target, kind, self.protected, force)
        parent = self.target.parent.absolute()
        self._made = [p for p in (parent, *parent.parents) if not p.exists()]  # removed again by abort()
        self.path = self.target.parent / f".{self.target.name}.{tag}-{os.getpid()}"
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.target.parent)
            if self.path.exists():  # left by an earlier process with this PID
                if read_marker(self.path) is None:
                    raise RunDirError(f"{self.path}: exists and was not written by dlsa-prod; remove or rename it")
                shutil.rmtree(self.path)
            self.path.mkdir()
            write_marker(self.path, kind)
        except OSError as exc:
            self.abort()
            raise RunDirError(f"{self.target}: cannot create the output directory here "
                              f"({exc.strerror or type(exc).__name__}: {exc.filename or self.path})") from None

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving the ``with`` block by an exception (KeyboardInterrupt included) aborts; the block
        itself calls ``commit()`` once everything is written."""
        if exc_type is not None:
            self.abort()

    def commit(self) -> Path:
        check_replaceable(self.target, self.kind, self.protected, self.force)  # nothing appeared meanwhile
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            if old.is_dir() and not old.is_symlink() and read_marker(old) is not None:
                shutil.rmtree(old)  # left by an earlier process with this PID
            os.replace(self.target, old)
        try:
            os.replace(self.path, self.target)
        except OSError:
            if old is not None:  # put the previous directory back
                os.replace(old, self.target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def abort(self) -> None:
        """Remove the staging directory and the parent directories the constructor created (if empty)."""
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self._made:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


# ----------------------------------------------------------------------------- runs
def save_run(path: Path, cfg: RunConfig, meta: dict, model: DLSAModel, baselines: dict[str, FeatureClassifier],
             metrics: dict) -> None:
    """Write a run's files into PATH; meta.json records the sha256 of every weights file in PATH."""
    (path / "config.yaml").write_text(config_to_yaml(cfg))
    save_module(model, path / "model.safetensors")
    for loss, clf in baselines.items():
        save_module(clf, path / f"baseline_{loss}.safetensors")
    weights = {f.name: sha256_file(f) for f in sorted(path.glob("*.safetensors"))}
    write_json(path / "meta.json", {**meta, "sha256": weights})
    write_json(path / "routing.json", {
        "thresholds": model.thresholds,
        "cluster_priors": [s.cluster_prior.cpu().tolist() for s in model.stages],
    })
    write_json(path / "metrics.json", metrics)
    if read_marker(path) is None:
        write_marker(path, "run")


@dataclass
class LoadedRun:
    path: Path
    cfg: RunConfig
    meta: dict
    model: DLSAModel
    baselines: dict[str, FeatureClassifier]


def read_run_meta(path: str | Path) -> tuple[RunConfig, dict]:
    """(config, meta) of a run directory, with one-line errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    for name in REQUIRED:
        if not (path / name).is_file():
            raise RunDirError(f"{path / name}: missing (not a complete dlsa-prod run directory)")
    try:
        tree = yaml.safe_load((path / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path / 'config.yaml'}: unreadable ({str(exc).splitlines()[0]})") from None
    cfg = config_from_dict(tree, str(path / "config.yaml"))
    try:
        meta = json.loads((path / "meta.json").read_text())
        int(meta["dim"]), int(meta["num_classes"]), int(meta["depth"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / 'meta.json'}: unreadable ({exc})") from None
    return cfg, meta


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    path = Path(path)
    cfg, meta = read_run_meta(path)
    dim, c, depth = int(meta["dim"]), int(meta["num_classes"]), int(meta["depth"])
    model = DLSAModel.from_config(cfg, dim, c, depth)
    load_state(model, path / "model.safetensors", weights_sha256(meta, "model.safetensors"))
    baselines = {}
    # the classifier settings the baselines were trained with: tune's run keeps the config as given's
    # (its DLSA may use others); runs written before this was recorded used cfg.regcls.model
    recorded = meta.get("baseline_model")
    try:
        bmodel = ClassifierModelConfig(**recorded) if isinstance(recorded, dict) else cfg.regcls.model
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise RunDirError(f"{path / 'meta.json'}: baseline_model unreadable ({str(exc).splitlines()[0]})") from None
    for loss in meta.get("baselines", []):
        clf = FeatureClassifier(dim, c, bmodel, uses_prior=False)
        name = f"baseline_{loss}.safetensors"
        load_state(clf, path / name, weights_sha256(meta, name))
        baselines[loss] = clf.to(device).eval()
    return LoadedRun(path, cfg, meta, model.to(device).eval(), baselines)


def weights_sha256(meta: dict, name: str) -> str | None:
    """The sha256 meta.json records for weights file NAME (None for runs written before it was recorded)."""
    digests = meta.get("sha256")
    return digests.get(name) if isinstance(digests, dict) else None


def load_state(module: torch.nn.Module, file: Path, sha256: str | None = None) -> None:
    """Load FILE (safetensors) into MODULE strictly; one-line RunDirError when the file is missing,
    differs from the recorded ``sha256``, is not readable safetensors, or does not fit the module."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise RunDirError(f"{file}: missing")
    if sha256 is not None and sha256_file(file) != sha256:
        raise RunDirError(f"{file}: sha256 differs from the one recorded in meta.json "
                          f"(file corrupted or replaced since training)")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RunDirError(f"{file}: not a readable safetensors file (truncated or corrupted: {first})") from None
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise RunDirError(f"{file}: does not match the run's config ({detail})") from None
