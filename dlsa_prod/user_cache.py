"""The per-user cache directory: ``$DLSA_PROD_CACHE``, else ``$XDG_CACHE_HOME/dlsa_prod``, else
``~/.cache/dlsa_prod``.  Image runs cache backbone features under ``features/`` there (unless
``backbone.cache_dir`` names another directory); ONNX Runtime / TensorRT caches live there too."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    base = os.environ.get("DLSA_PROD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dlsa_prod")
    return Path(base)


def feature_cache_dir(configured: str | Path | None) -> Path:
    """``backbone.cache_dir`` when set, else USER_CACHE/features (never the current directory)."""
    return Path(configured) if configured else user_cache_dir() / "features"
