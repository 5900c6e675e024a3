"""The bundle format, in one place: a typed view of ``manifest.json`` (no torch import).

Export writes bundles through it; the runtime, bench, the TensorRT builder/runner and the Triton
writer read them through it.  It sits below both ``dlsa_prod.export`` and ``dlsa_prod.runtime``.

A bundle::

    manifest.json            BundleSpec: format, input, classes, thresholds, layouts (graphs with
                             typed IO), file hashes, parity reports, engines, serving profile,
                             input_guard (optional: training log-likelihood quantiles)
    fused.onnx               layout "fused":  every depth, exit selected with masks
    staged/*.onnx            layout "staged": backbone (image bundles), filter_<d>, classifier_<d>, regular
    single.onnx              layout "single": one plain classifier (``export --best`` naming a baseline)
    tensorrt/*.engine        native TensorRT engines (``export --trt``)
    torch/                   the run's weights and config for ``Runtime(backend="torch")``
    samples.npy              validation inputs for ``dlsa-prod bench`` (optional: only bench reads it)

Reading a manifest validates it against the JSON schema shipped in the package, checks every
listed file's sha256, and cross-checks depth, thresholds, classes and graph IO against the values
embedded in each ONNX graph's ``metadata_props``: a manifest edited by hand is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import DLSAError

FORMAT = "dlsa-bundle"
# 3: graphs embed classes_sha256 (class names, train counts, shot groups); each backend's build output is
#    one entry of "artifacts" (2 had top-level "torch" and "engines")
FORMAT_VERSION = 3
OLDEST_READ_VERSION = 2  # read after ``upgrade_manifest`` (its graphs carry no classes hash)
MANIFEST = "manifest.json"
BUNDLE_KIND = "bundle"  # the run_dir marker kind of a bundle directory
LAYOUTS = ("fused", "staged", "single")
BATCH = "batch"  # the symbolic batch axis in a TensorSpec shape
METADATA_PREFIX = "dlsa."
BACKBONE, REGULAR, FUSED, SINGLE = "backbone", "regular", "fused", "single"
DEFAULT_BATCH_PROFILE = {"min": 1, "opt": 64, "max": 256}


def filter_name(depth: int) -> str:
    return f"filter_{depth}"


def classifier_name(depth: int) -> str:
    return f"classifier_{depth}"


class BundleError(DLSAError):
    """A bundle is missing, corrupted, edited, or from an incompatible version."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_data(name: str) -> Path:
    """A file shipped inside the package (manifest schema, TensorRT profiles)."""
    return Path(str(resources.files("dlsa_prod.export").joinpath("data", name)))


# ----------------------------------------------------------------------------- typed parts
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64
    shape: tuple  # ints, BATCH for the dynamic batch axis

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape without the batch axis (Triton's ``dims``)."""
        return tuple(int(d) for d in self.shape[1:])

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "GraphSpec":
        return cls(name, d["file"], tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]))


@dataclass(frozen=True)
class EngineSpec:
    """One serialized TensorRT engine and the optimisation profile it was built with."""
    name: str
    file: str
    profile: dict  # input name -> {"min": [...], "opt": [...], "max": [...]}


@dataclass(frozen=True)
class EnginesSpec:
    tensorrt_version: str
    compute_capability: str
    precision: str
    workspace_bytes: int
    engines: dict  # name -> EngineSpec
    parity: dict
    device_name: str | None = None  # the GPU the engines were built on (None: a bundle from before it was recorded)

    @classmethod
    def from_dict(cls, d: dict) -> "EnginesSpec":
        return cls(d["tensorrt_version"], d["compute_capability"], d["precision"], int(d["workspace_bytes"]),
                   {n: EngineSpec(n, e["file"], e["profile"]) for n, e in d["engines"].items()}, d.get("parity", {}),
                   d.get("device_name"))


@dataclass
class BundleSpec:
    """A validated manifest, with typed accessors.  ``path`` is the bundle directory."""
    path: Path
    manifest: dict = field(repr=False)

    # --- scalar facts
    @property
    def kind(self) -> str:
        return self.manifest["input"]["kind"]

    @property
    def dim(self) -> int:
        return int(self.manifest["input"]["dim"])

    @property
    def depth(self) -> int:
        return int(self.manifest["depth"])

    @property
    def thresholds(self) -> list[float]:
        return [float(t) for t in self.manifest["thresholds"]]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["classes"]["num_classes"])

    @property
    def class_names(self):
        return self.manifest["classes"].get("names")

    @property
    def preprocess(self) -> dict | None:
        return self.manifest["input"].get("image")

    @property
    def source(self) -> dict:
        return self.manifest["source"]

    @property
    def batch_profile(self) -> dict:
        return self.manifest["serving"]["batch_profile"]

    @property
    def layouts(self) -> list[str]:
        return [lay for lay in LAYOUTS if lay in self.manifest["layouts"]]

    def graphs(self, layout: str) -> dict[str, GraphSpec]:
        if layout not in self.manifest["layouts"]:
            raise BundleError(f"{self.path}: layout {layout!r} not in this bundle (has: {', '.join(self.layouts)})")
        return {n: GraphSpec.from_dict(n, g) for n, g in self.manifest["layouts"][layout]["graphs"].items()}

    def all_graphs(self) -> list[GraphSpec]:
        return [g for lay in self.layouts for g in self.graphs(lay).values()]

    @property
    def input_guard(self):
        """``InputGuard`` with the training log-likelihood quantiles, or None (older bundle, baseline)."""
        from .input_guard import InputGuard

        return InputGuard.from_dict(self.manifest.get("input_guard"))

    def artifact(self, backend: str) -> dict | None:
        """What BACKEND's build step wrote into the bundle (its manifest fragment), or None."""
        return self.manifest["artifacts"].get(backend)

    @property
    def engines(self) -> EnginesSpec | None:
        e = self.artifact("tensorrt")
        return EnginesSpec.from_dict(e) if e else None

    @property
    def torch_dir(self) -> Path | None:
        t = self.artifact("torch")
        return self.path / t["dir"] if t else None

    def content_hash(self) -> str:
        """Identity of the bundle's graphs (keys caches such as ONNX Runtime's TensorRT engine cache)."""
        return hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()[:24]

    def load_samples(self):
        """The validation samples bench measures on (checked against their recorded sha256)."""
        s = self.manifest.get("samples")
        if not s:
            raise BundleError(f"{self.path}: the bundle has no validation samples (re-export it to bench it)")
        return self._checked_array(s["file"], s["sha256"])

    def load_sample_labels(self):
        """Labels of the validation samples, or None for a bundle without them (image bundles, older exports)."""
        s = self.manifest.get("samples") or {}
        return self._checked_array(s["labels_file"], s["labels_sha256"]) if s.get("labels_file") else None

    def _checked_array(self, name: str, digest: str):
        import numpy as np

        f = self.path / name
        if not f.is_file():
            raise BundleError(f"{f}: missing (bench needs the bundle's validation samples, and so does the precision gate)")
        if sha256_file(f) != digest:
            raise BundleError(f"{f}: sha256 mismatch (file changed or corrupted since export)")
        return np.load(f, allow_pickle=False)


# ----------------------------------------------------------------------------- graph metadata
def graph_metadata(manifest: dict, layout: str, name: str) -> dict[str, str]:
    """What export embeds in each ONNX graph's metadata_props (and reading cross-checks)."""
    version = manifest.get("format_version", FORMAT_VERSION)
    return {f"{METADATA_PREFIX}format_version": str(version), f"{METADATA_PREFIX}layout": layout,
            f"{METADATA_PREFIX}graph": name, f"{METADATA_PREFIX}depth": str(manifest["depth"]),
            f"{METADATA_PREFIX}thresholds": json.dumps([float(t) for t in manifest["thresholds"]]),
            f"{METADATA_PREFIX}num_classes": str(manifest["classes"]["num_classes"]),
            f"{METADATA_PREFIX}dim": str(manifest["input"]["dim"]),
            f"{METADATA_PREFIX}source": manifest["source"]["model"],
            **({f"{METADATA_PREFIX}classes_sha256": classes_sha256(manifest["classes"])} if version >= 3 else {}),
            # optional (bundles before the input guard have none): the guard's quantiles, so an edit is refused
            **({f"{METADATA_PREFIX}input_guard": json.dumps(manifest["input_guard"], sort_keys=True)}
               if manifest.get("input_guard") else {})}


def classes_sha256(classes: dict) -> str:
    """sha256 of the manifest's ``classes`` (num_classes, names, train_counts, shot_groups), canonical JSON."""
    return hashlib.sha256(json.dumps(classes, sort_keys=True).encode()).hexdigest()


_FIELD_LABELS = {"classes_sha256": "classes (names, train_counts, shot_groups)"}


_ONNX_DTYPES = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 9: "bool", 2: "uint8"}


def onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, str]]:
    """(inputs, outputs, metadata_props) of an ONNX file; symbolic dims become BATCH."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        shape = tuple(BATCH if d.dim_param or not d.HasField("dim_value") else int(d.dim_value) for d in t.shape.dim)
        return TensorSpec(v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), shape)

    inits = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    return inputs, [spec(v) for v in model.graph.output], {p.key: p.value for p in model.metadata_props}


def check_graphs(spec: BundleSpec) -> None:
    """Every ONNX graph's embedded metadata and IO must agree with the manifest."""
    for layout in spec.layouts:
        for g in spec.graphs(layout).values():
            f = spec.path / g.file
            try:
                inputs, outputs, meta = onnx_io(f)
            except Exception as exc:  # onnx raises DecodeError and others on a damaged file
                raise BundleError(f"{f}: not a readable ONNX graph ({type(exc).__name__})") from None
            expected = graph_metadata(spec.manifest, layout, g.name)
            guard_key = f"{METADATA_PREFIX}input_guard"
            if guard_key in meta and guard_key not in expected:
                raise BundleError(f"{spec.path / MANIFEST}: input_guard is missing from the manifest but recorded in "
                                  f"{g.file} (manifest edited; re-export)")
            for key, value in expected.items():
                if meta.get(key) != value:
                    field_name = key[len(METADATA_PREFIX):]
                    if field_name in _FIELD_LABELS:
                        raise BundleError(f"{spec.path / MANIFEST}: {_FIELD_LABELS[field_name]} differ from the "
                                          f"ones embedded in {g.file} (manifest edited or graph replaced; re-export)")
                    raise BundleError(f"{spec.path / MANIFEST}: {field_name} is {value} in the manifest but "
                                      f"{meta.get(key)} in {g.file} (manifest edited or graph replaced; re-export)")
            if list(inputs) != list(g.inputs) or list(outputs) != list(g.outputs):
                raise BundleError(f"{spec.path / MANIFEST}: the IO of graph {g.name} differs from {g.file} "
                                  f"(manifest edited or graph replaced; re-export)")


# ----------------------------------------------------------------------------- read / write
def validate_schema(manifest: dict, where) -> None:
    """Validate against the schema shipped in the package (always: jsonschema is a dependency)."""
    import jsonschema

    schema = json.loads(package_data("manifest.schema.json").read_text())
    try:
        jsonschema.validate(manifest, schema)
    except jsonschema.ValidationError as exc:
        loc = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BundleError(f"{where}: manifest field {loc}: {exc.message}") from None


def parse_manifest(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path.parent}: not a dlsa_prod bundle ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{path}: format_version must be an integer (this dlsa_prod reads {FORMAT_VERSION}), "
                          f"got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version} is newer than this dlsa_prod supports "
                          f"({FORMAT_VERSION}); upgrade dlsa_prod or re-export")
    if version < OLDEST_READ_VERSION:
        raise BundleError(f"{path}: bundle format version {version} is older than this dlsa_prod reads "
                          f"({OLDEST_READ_VERSION}..{FORMAT_VERSION}); re-export it with `dlsa-prod export`")
    return upgrade_manifest(manifest)


def upgrade_manifest(manifest: dict) -> dict:
    """A version-2 manifest in version 3's shape (in memory only; ``format_version`` stays 2, so its
    graphs are checked against what version 2 embedded): top-level ``torch`` and ``engines`` move
    under ``artifacts``."""
    if manifest["format_version"] >= 3:
        return manifest
    m = {k: v for k, v in manifest.items() if k not in ("torch", "engines")}
    m["artifacts"] = {name: manifest[key] for key, name in (("torch", "torch"), ("engines", "tensorrt"))
                      if manifest.get(key)}
    return m


def read_spec(bundle: str | Path, verify: bool = True, require_parity: bool = True) -> BundleSpec:
    """Read and validate a bundle; with ``verify``, check file hashes and the graphs' embedded metadata;
    with ``require_parity`` (all but export's own gate), a parity report for every layout and backend
    the bundle serves (an export killed during its parity check leaves none)."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    manifest = parse_manifest(path)
    validate_schema(manifest, path)
    spec = BundleSpec(bundle, manifest)
    _check_consistency(spec, path)
    if require_parity:
        check_parity_reports(spec, path)
    if verify:
        for name, digest in manifest["files"].items():
            f = bundle / name
            if not f.is_file():
                raise BundleError(f"{f}: missing from the bundle")
            if sha256_file(f) != digest:
                raise BundleError(f"{f}: sha256 mismatch (file changed or corrupted since export)")
        check_graphs(spec)
    return spec


def check_parity_reports(spec: BundleSpec, where: Path) -> None:
    """Every layout the bundle serves has a parity report on ONNX Runtime, on the torch backend (when the
    bundle carries its weights) and on TensorRT (for each layout with engines)."""
    m = spec.manifest
    served = [("onnxruntime", m["parity"], spec.layouts)]
    if spec.artifact("torch"):
        served.append(("torch", m["parity"].get("torch"), spec.layouts))
    e = spec.engines
    if e:
        served.append(("tensorrt", e.parity, sorted({name.split("/")[0] for name in e.engines})))
    for backend, reports, layouts in served:
        for layout in layouts:
            if not isinstance(reports, dict) or not isinstance(reports.get(layout), dict) or not reports[layout]:
                raise BundleError(f"{where}: no parity report for the {layout} layout on {backend} (export "
                                  f"interrupted, or manifest edited); re-export")


def _check_consistency(spec: BundleSpec, where: Path) -> None:
    m = spec.manifest
    if len(m["thresholds"]) != spec.depth:
        raise BundleError(f"{where}: thresholds has {len(m['thresholds'])} entries for depth {spec.depth}")
    files = set(m["files"])
    for g in spec.all_graphs():
        if g.file not in files:
            raise BundleError(f"{where}: graph file {g.file} is not listed under files")
    e = spec.engines
    for eng in (e.engines.values() if e else ()):
        if eng.file not in files:
            raise BundleError(f"{where}: engine file {eng.file} is not listed under files")


def write_manifest(directory: Path, manifest: dict) -> None:
    """Validate, then write manifest.json atomically (temp file + rename)."""
    validate_schema(manifest, Path(directory) / MANIFEST)
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)


def hash_files(directory: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under DIRECTORY (relative POSIX paths), except the manifest, the
    package's marker and EXCLUDE."""
    directory = Path(directory)
    skip = {MANIFEST, ".dlsa_prod", *exclude}
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in skip}
