"""Bundle manifest: constants, hashing and validation (no torch import: the runtime uses it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DLSAError

FORMAT = "dlsa-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "export" / "manifest.schema.json"


class BundleError(DLSAError):
    """A bundle is missing, corrupted, or from an incompatible version."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle: Path, verify_hashes: bool = True) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a dlsa_prod bundle ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version} is newer than this dlsa_prod supports "
                          f"({FORMAT_VERSION}); upgrade dlsa_prod or re-export")
    validate_schema(manifest, path)
    if verify_hashes:
        for name, digest in manifest["files"].items():
            f = bundle / name
            if not f.is_file():
                raise BundleError(f"{f}: missing from the bundle")
            if sha256_file(f) != digest:
                raise BundleError(f"{f}: sha256 mismatch (file changed or corrupted since export)")
    return manifest


def validate_schema(manifest: dict, where) -> None:
    """Validate against export/manifest.schema.json when jsonschema and the schema are present."""
    try:
        import jsonschema
    except ImportError:
        return
    if not SCHEMA_FILE.is_file():
        return
    schema = json.loads(SCHEMA_FILE.read_text())
    try:
        jsonschema.validate(manifest, schema)
    except jsonschema.ValidationError as exc:
        loc = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BundleError(f"{where}: manifest field {loc}: {exc.message}") from None
