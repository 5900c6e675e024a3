"""Threshold split of a batch: which samples exit at this depth, which continue deeper."""

from __future__ import annotations

import torch


def filter_split_torch(loglik: torch.Tensor, threshold: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (stable, ascending) with loglik >= threshold, and the rest."""
    keep = loglik >= threshold
    return torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
