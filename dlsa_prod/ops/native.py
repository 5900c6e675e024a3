"""Loader for the compiled extension ``dlsa_prod._C`` (filled in by the native-kernel work)."""

from __future__ import annotations

import torch


def available(device: str | torch.device = "cpu") -> bool:
    return False


def build_info() -> str:
    return "not built (pure-torch GEMM path in use)"
