"""Run directory: resolved config, weights (safetensors), routing (json), metrics, log.

Layout::

    .dlsa_prod          marker: {"kind": "run", version, host, pid, files} (``--force`` replaces only marked
                        dirs holding nothing but the files listed there)
    config.yaml         resolved configuration (data paths absolute)
    meta.json           feature dim, classes, trained depth, train class counts, versions,
                        sha256 of every weights file and settings_sha256 of every config setting but
                        paths and device (both checked on load: an edited setting is refused)
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
  that kind, or a file or directory inside that the marker does not list), the current
  directory, or a directory holding one of the command's inputs;
* ``StagingDir(target, force, kind=..., tag=..., protected_paths=...)`` builds the output under
  ``.NAME.<tag>-PID`` (marked at creation), lists its files in the marker and renames it into place;
* ``remove_stale(parent)`` cleans ``.NAME.<tag>-PID`` leftovers of killed processes (only
  marked directories whose process is gone, on this host): a ``.NAME.old-PID`` whose NAME is
  missing (a kill between the two final renames) is renamed back to NAME, the rest are deleted.
"""

from __future__ import annotations

import json
import logging
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
from .config import ClassifierModelConfig, RunConfig, config_from_dict, config_to_yaml, load_yaml, settings_sha256
from .errors import RunDirError
from .bundle_spec import sha256_file
from .models import DLSAModel, FeatureClassifier

REQUIRED = ("config.yaml", "meta.json", "model.safetensors")
MARKER = ".dlsa_prod"
STAGING_TAGS = ("partial", "exporting", "reporting", "old")
log = logging.getLogger("dlsa_prod")
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)$")


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file next to PATH, then rename it to PATH; on any failure (a
    full disk included) the temporary file is removed and PATH is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # Path.write_text names no file
            exc.filename = str(path)
        raise


def public_path(path: str | Path) -> Path:
    """PATH with a staging component ``.NAME.<tag>-PID`` shown as the NAME it becomes (for messages)."""
    parts = [m["name"] if (m := _STAGING_NAME.match(part)) else part for part in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def save_module(module: torch.nn.Module, path: Path) -> None:
    """Write a module's state as safetensors (temp file, then rename).  A write error (safetensors
    reports it as SafetensorError) comes back as OSError with its errno, e.g. ENOSPC."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    def write(tmp: Path) -> None:
        try:
            save_file(state, str(tmp))
        except SafetensorError as exc:
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None

    write_atomic(path, write)


# ----------------------------------------------------------------------------- output directories
def write_marker(directory: Path, kind: str, files: list[str] | None = None) -> None:
    """Mark DIRECTORY as written by dlsa_prod (``kind``: run, bundle, report ...); FILES: the paths
    (relative, POSIX) of everything inside that this package wrote (``--force`` replaces nothing else)."""
    write_json(Path(directory) / MARKER, {"kind": kind, "dlsa_prod_version": __version__,
                                          "host": socket.gethostname(), "pid": os.getpid(),
                                          "files": sorted(files or [])})


def list_tree(directory: Path) -> list[str]:
    """Relative POSIX paths of every file and directory under DIRECTORY, except the top marker."""
    directory = Path(directory)
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.relative_to(directory).as_posix() != MARKER)


def first_foreign(directory: Path) -> Path | None:
    """The first file or directory inside marked DIRECTORY that its marker does not list (a
    subdirectory with its own marker, e.g. RUN/bundle, is checked against its own list); None if none."""
    directory = Path(directory)
    marker = read_marker(directory) or {}
    listed = set(marker.get("files") or [])

    def walk(d: Path) -> Path | None:
        for entry in sorted(d.iterdir()):
            rel = entry.relative_to(directory).as_posix()
            if rel == MARKER:
                continue
            real_dir = entry.is_dir() and not entry.is_symlink()
            if rel in listed and not entry.is_symlink():
                found = walk(entry) if real_dir else None
            elif real_dir and read_marker(entry) is not None:  # written by a later command (RUN/bundle)
                found = None if _STAGING_NAME.match(entry.name) else first_foreign(entry)  # or its leftover
            else:
                return entry
            if found is not None:
                return found
        return None

    return walk(directory)


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
    if "files" not in marker and any(p.name != MARKER for p in out.iterdir()):
        raise RunDirError(f"{out}: its {MARKER} marker lists no files (written by an older dlsa-prod), so what "
                          f"inside is yours is unknown; remove or rename it yourself")
    foreign = first_foreign(out)
    if foreign is not None:
        raise RunDirError(f"{foreign}: was not written by dlsa-prod; --force replaces {out} only when it holds "
                          f"nothing else: move it out first")
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
    for entry in sorted(parent.iterdir(), key=lambda e: ".old-" not in e.name):  # restorable ones first
        m = _STAGING_NAME.match(entry.name)
        if m is None or m["tag"] not in tags or entry.is_symlink() or not entry.is_dir():
            continue
        marker = read_marker(entry)
        if marker is None or marker.get("host", host) != host or not _process_gone(int(m["pid"])):
            continue
        target = parent / m["name"]
        if m["tag"] == "old" and not target.exists() and not target.is_symlink():
            os.replace(entry, target)  # killed between the two renames of commit(): put the previous one back
            log.warning("%s: restored from %s, left by a process killed while replacing it", target, entry.name)
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
        write_marker(self.path, self.kind, list_tree(self.path))
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
    write_atomic(path / "config.yaml", lambda tmp: tmp.write_text(config_to_yaml(cfg)))
    save_module(model, path / "model.safetensors")
    for loss, clf in baselines.items():
        save_module(clf, path / f"baseline_{loss}.safetensors")
    weights = {f.name: sha256_file(f) for f in sorted(path.glob("*.safetensors"))}
    write_json(path / "meta.json", {**meta, "sha256": weights, "settings_sha256": settings_sha256(cfg)})
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


def read_run_meta(path: str | Path, required: tuple[str, ...] = REQUIRED) -> tuple[RunConfig, dict]:
    """(config, meta) of a run directory (or a bundle's torch/ copy of one, whose REQUIRED files are
    fewer), with one-line errors for missing or unreadable files."""
    path = Path(path)
    if not path.exists():
        remove_stale(path.parent, tags=("old",))  # a kill while replacing it: restore the previous run
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    for name in required:
        if not (path / name).is_file():
            raise RunDirError(f"{path / name}: missing (not a complete dlsa-prod run directory)")
    try:
        tree = load_yaml((path / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path / 'config.yaml'}: unreadable ({' '.join(str(exc).split())})") from None
    cfg = config_from_dict(tree, str(path / "config.yaml"))
    try:
        meta = json.loads((path / "meta.json").read_text())
        int(meta["dim"]), int(meta["num_classes"]), int(meta["depth"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / 'meta.json'}: unreadable ({exc})") from None
    recorded = meta.get("settings_sha256")  # absent in runs written before it was recorded
    if recorded is not None and recorded != settings_sha256(cfg, tree if isinstance(tree, dict) else None):
        raise RunDirError(f"{path / 'config.yaml'}: settings differ from the ones this run was trained with "
                          f"(settings_sha256 in meta.json); only data paths, output and device may be edited: "
                          f"re-train to change the model")
    return cfg, meta


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    path = Path(path)
    cfg, meta = read_run_meta(path)
    model = trained_model(cfg, meta, "dlsa", path, weights_sha256(meta, "model.safetensors"))
    baselines = {}
    for loss in meta.get("baselines", []):
        clf = trained_model(cfg, meta, loss, path, weights_sha256(meta, weights_file(loss)))
        baselines[loss] = clf.to(device).eval()
    return LoadedRun(path, cfg, meta, model.to(device).eval(), baselines)


def weights_file(model_name: str) -> str:
    """The weights file of the DLSA cascade ("dlsa") or of a baseline, inside a run (or a bundle's torch/)."""
    return "model.safetensors" if model_name == "dlsa" else f"baseline_{model_name}.safetensors"


def trained_model(cfg: RunConfig, meta: dict, model_name: str, directory: Path, sha256: str | None):
    """The one loader of a trained model, for run directories and the torch backend's bundle copy alike:
    the DLSA cascade ("dlsa") or baseline MODEL_NAME rebuilt from the run's config and meta.json and
    loaded strictly from DIRECTORY's weights file (checked against SHA256)."""
    dim, c, depth = int(meta["dim"]), int(meta["num_classes"]), int(meta["depth"])
    if model_name == "dlsa":
        model = DLSAModel.from_config(cfg, dim, c, depth)
    else:
        model = FeatureClassifier(dim, c, baseline_model_config(cfg, meta, directory), uses_prior=False)
    load_state(model, Path(directory) / weights_file(model_name), sha256)
    return model


def baseline_model_config(cfg: RunConfig, meta: dict, directory: Path) -> ClassifierModelConfig:
    """The classifier settings the baselines were trained with: tune's run keeps the config as given's
    (its DLSA may use others); runs written before this was recorded used cfg.regcls.model."""
    recorded = meta.get("baseline_model")
    try:
        return ClassifierModelConfig(**recorded) if isinstance(recorded, dict) else cfg.regcls.model
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise RunDirError(f"{Path(directory) / 'meta.json'}: baseline_model unreadable "
                          f"({str(exc).splitlines()[0]})") from None


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
