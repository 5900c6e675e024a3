"""Device choice: 'auto' picks CUDA when available."""

from __future__ import annotations

import torch

from .errors import DLSAError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DLSAError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu)")
    return torch.device(name)
