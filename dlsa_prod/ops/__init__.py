"""GMM log-likelihood and filtering ops: one entry point each, native kernels when built.

``gmm_loglik`` and ``filter_split`` dispatch to the ``dlsa_prod`` torch custom ops when the
C++/CUDA extension is built for the input's device, and to the pure-torch GEMM form otherwise.
Importing this package loads the extension (and registers its fake kernels) when it is built.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import native
from .filtering import filter_split_torch
from .gmm_torch import GMMOutput, gmm_loglik_broadcast, gmm_loglik_torch

__all__ = ["GMMOutput", "GMM_BACKENDS", "gmm_loglik", "filter_split", "gmm_loglik_torch", "gmm_loglik_broadcast",
           "native_available", "gmm_path"]

GMM_BACKENDS = ("auto", "native", "torch", "broadcast")


def native_available(device: str | torch.device = "cpu") -> bool:
    return native.available(device)


def gmm_path(device: str | torch.device = "cpu", backend: str = "auto") -> str:
    """One line naming the GMM implementation ``gmm_loglik(..., backend=backend)`` uses on device."""
    if backend == "auto":
        return native.gmm_path(device)
    if backend == "native":
        return native.gmm_path(device) if native.available(device) else f"native requested: {native.gmm_path(device)}"
    return {"torch": "pure-torch GEMM", "broadcast": "broadcast (B, K, D) reference"}[backend] + " (configured)"


def gmm_loglik(u: torch.Tensor, means: torch.Tensor, log_det: Optional[torch.Tensor] = None,
               return_log_probs: bool = False, backend: str = "auto") -> GMMOutput:
    """Per-sample GMM log-likelihood (B,), argmax cluster (B,) and optionally log p_k (B, K).

    ``backend``: "auto" (native op when built for u's device, else torch), "native", "torch",
    or "broadcast" (the research code's (B, K, D) form; reference and benchmarks only).
    The native op treats centres as fixed buffers; when ``means`` requires grad, the torch
    path is used so that their gradient is computed too.  Rows whose likelihood is not finite
    get loglik NaN (or -inf when every term is -inf) and cluster 0 on every path (gmm_torch.py).
    """
    if backend not in GMM_BACKENDS:
        raise ValueError(f"backend must be auto, native, torch or broadcast, got {backend!r}")
    if backend == "broadcast":
        return gmm_loglik_broadcast(u, means, log_det, return_log_probs)
    if backend in ("auto", "native") and not means.requires_grad and not torch.onnx.is_in_onnx_export():
        if native.available(u.device):
            return native.gmm_loglik_native(u, means, log_det, return_log_probs)
        if backend == "native":
            raise RuntimeError(f"dlsa_prod native ops are not built for device {u.device.type!r}")
    return gmm_loglik_torch(u, means, log_det, return_log_probs)


def filter_split(loglik: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(exit indices, continue indices), both in ascending order; NaN continues."""
    if not torch.onnx.is_in_onnx_export() and native.available(loglik.device):
        return native.filter_split_native(loglik, threshold)
    return filter_split_torch(loglik, threshold)
